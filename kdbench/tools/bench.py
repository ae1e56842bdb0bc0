"""`kdbench bench`: training throughput of a cohort versus the same methods one at a time;
and the measured costs (`step_costs`, `loss_costs`, `strong_costs`, `data_costs`) that
`kdbench run --dry-run` turns into a grid's time estimate.

Random data stands in for a dataset, so nothing needs to be on disk; for methods that
train on more than one view (MLKD), a second random batch stands in for the strong view,
so `bench` times the device's work, not the host's strong augmentation (`strong_costs`
measures that); a teacher artifact (WKD-L's) is built from a synthetic teacher, and members
with `regions` (SDD) get the teacher's region logits from its one forward. The cohort runs the teacher once per batch and view for all students; the
separate baseline gives each method its own teacher forwards, as one-run-per-process
trainers do. Both use the real training step of `kdbench.train.cohort`.

Timings are the minimum over a few windows of steps after a warm-up: the first calls of a
shape are slow (oneDNN and cuDNN pick their kernels), and on a shared machine other jobs
only ever make a window slower.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Callable

import torch

from kdbench import methods, models
from kdbench.methods import artifacts
from kdbench.core import devices
from kdbench.train.compiling import Compiled
from kdbench.core.console import console
from kdbench.errors import KdbenchError
from kdbench.train.precision import DTYPES, autocast, resolve
from kdbench.grid.recipe import Options, Schedule
from kdbench.train.trainee import STRONG, WEAK, Member, Trainee, build_student

#: `--methods all`: every registered method.
ALL = "all"


class _Setup:
    """A teacher and one trainee per method, on random data of the right shape (one batch per view)."""

    def __init__(self, teacher: str, student: str, method_names: list[str], device: torch.device,
                 options: Options, batch_size: int, num_classes: int, in_channels: int, image_size: int):
        fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        self.device, self.options = device, options
        self.teacher = models.build(teacher, num_classes=num_classes, in_channels=in_channels)
        self.teacher = self.teacher.to(device, memory_format=fmt).eval().requires_grad_(False)
        self.teacher_forward = Compiled(self.teacher, options.compile, "teacher's forward")
        self.trainees = []
        for name in method_names:
            member = Member(run_id=name, student=student, method=name, hparams={},
                            schedule=Schedule(batch_size=batch_size).resolve(student))
            model = build_student(student, 0, num_classes, in_channels).to(device, memory_format=fmt).train()
            method = artifacts.with_synthetic_artifact(methods.build(name), num_classes).to(device)
            self.trainees.append(Trainee(member, model, method, device, options))
        views = list(dict.fromkeys(v for t in self.trainees for v in t.views))
        unknown = [v for v in views if v not in (WEAK, STRONG)]
        if unknown:
            raise KdbenchError(f"--methods: unknown view '{unknown[0]}'; views are {WEAK}, {STRONG}")
        g = torch.Generator(device="cpu").manual_seed(0)
        self.images = {v: torch.randn(batch_size, in_channels, image_size, image_size, generator=g).to(device)
                       .contiguous(memory_format=fmt) for v in views}
        self.targets = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
        self.teacher_views = [v for v in views if any(t.needs_teacher and v in t.views for t in self.trainees)]
        self.teacher_regions = Compiled(models.RegionForward(self.teacher), options.compile, "teacher's region logits") \
            if any(t.region_scales for t in self.trainees) else None
        self.step_count = 0

    def teacher_logits(self, views: list[str]) -> dict[str, torch.Tensor]:
        with torch.no_grad(), autocast(self.device, self.options.precision):
            return {v: self.teacher_forward(self.images[v]) for v in views}

    def teacher_pass(self, views: list[str], trainees: list[Trainee]) -> tuple[dict, dict]:
        """The teacher's logits per view and, for members with `regions`, its region logits per scales."""
        scales = tuple(dict.fromkeys(t.region_scales for t in trainees if t.region_scales and t.needs_teacher))
        if not scales:
            return self.teacher_logits(views), {}
        logits = self.teacher_logits([v for v in views if v != WEAK])
        with torch.no_grad(), autocast(self.device, self.options.precision):
            logits[WEAK], regions = self.teacher_regions(self.images[WEAK], scales)
        return logits, dict(zip(scales, regions))

    def cohort_step(self) -> None:
        self.step_count += 1
        logits, regions = self.teacher_pass(self.teacher_views, self.trainees)
        for trainee in self.trainees:
            trainee.step(self.images, self.targets, logits, 30, self.step_count, self.options.precision,
                         teacher_regions=regions)

    def separate_step(self, trainee: Trainee) -> None:
        self.step_count += 1
        logits, regions = self.teacher_pass(list(trainee.views) if trainee.needs_teacher else [], [trainee])
        trainee.step(self.images, self.targets, logits, 30, self.step_count, self.options.precision,
                     teacher_regions=regions)


def method_list(text: str) -> list[str]:
    """`--methods`: comma-separated names, or `all` for every registered method."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    return methods.available() if names == [ALL] else names


def measure(
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    method_names: list[str] | None = None,
    *,
    batch_size: int = 64,
    steps: int | None = None,
    warmup_steps: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    channels_last: bool = False,
    num_classes: int = 100,
    in_channels: int = 3,
    image_size: int = 32,
    separate: bool = True,
    gemm_peak: bool = True,
    cuda_graphs: bool = False, fuse_students: bool = False, fuse_backend: str | None = None,
) -> dict[str, Any]:
    """Training images per second of a cohort, and of the same methods trained one at a time.

    `precision` may be `auto` (resolved for the device). Without `gemm_peak` the matmul
    peak (a large GEMM, seconds on a CPU) is not measured nor the share of it reported.
    `fuse_students`, `cuda_graphs`: also time those modes, in turns with eager (`kdbench.tools.fusion_bench`).
    """
    dev = devices.parse(device)
    method_names = method_names or ["kd", "dkd", "normkd", "label_swap", "rld"]
    for name in method_names:
        methods.method_class(name)
    resolved = resolve(dev, precision)
    steps = steps or (20 if dev.type == "cpu" else 200)
    warmup = warmup_steps if warmup_steps is not None else (3 if dev.type == "cpu" else 20)
    options = Options(precision=resolved, channels_last=channels_last, compile=compile)
    setup = _Setup(teacher, student, method_names, dev, options, batch_size, num_classes, in_channels, image_size)
    k = len(method_names)
    step_seconds = devices.timed(setup.cohort_step, dev, steps, warmup)
    result: dict[str, Any] = {
        "teacher": models.canonical(teacher), "student": models.canonical(student), "methods": method_names,
        "cohort_size": k, "batch_size": batch_size, "steps": steps, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": resolved, "channels_last": channels_last,
        "compile": compile, "torch": torch.__version__,
        "student_images_per_s": k * batch_size / step_seconds,
        "views": {t.member.method: list(t.views) for t in setup.trainees if t.multi_view},
    }
    if precision != resolved:
        result["precision_requested"] = precision
    if separate:
        separate_step_seconds = sum(
            devices.timed(lambda t=t: setup.separate_step(t), dev, steps, warmup) for t in setup.trainees
        )
        result["separate_student_images_per_s"] = k * batch_size / separate_step_seconds
        result["speedup"] = result["student_images_per_s"] / result["separate_student_images_per_s"]
    teacher_macs = models.count_macs(setup.teacher, in_channels, image_size)  # the eager module; compiling wraps it
    student_macs = models.count_macs(models.build(student, num_classes, in_channels), in_channels, image_size)
    # Training a student costs about 3 forwards (forward + backward) per view; the teacher 1 per view.
    student_views = sum(len(t.views) for t in setup.trainees)
    flops_per_step = 2 * batch_size * (len(setup.teacher_views) * teacher_macs + 3 * student_views * student_macs)
    result["cohort_tflops"] = flops_per_step / step_seconds / 1e12
    if gemm_peak:
        result["gemm_peak_tflops"] = gemm_peak_tflops(dev, resolved)
        result["share_of_gemm_peak"] = result["cohort_tflops"] / result["gemm_peak_tflops"]
    if cuda_graphs or fuse_students:
        from kdbench.tools.fusion_bench import mode_results
        result["modes"] = mode_results(setup, result, cuda_graphs=cuda_graphs, fuse_students=fuse_students,
                                       backend=fuse_backend, steps=steps, warmup=warmup)
    return result


def gemm_peak_tflops(device: torch.device, precision: str, size: int | None = None, repeats: int | None = None) -> float:
    """This device's matmul peak in `precision`, measured now: a large square GEMM, TFLOP/s.

    The cohort's achieved FLOP/s is reported as a share of it: what the convolutions,
    normalisations and losses leave on the table, on this machine, in this run.
    """
    dtype = DTYPES[precision]
    # CPUs have no fast fp16 matmul (2048² would take minutes): a smaller GEMM shows its peak.
    size = size or (8192 if device.type == "cuda" else 256 if precision == "fp16" else 2048)
    repeats = repeats or (20 if device.type == "cuda" else 5)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    seconds = devices.timed(lambda: a @ b, device, repeats, warmup=2)
    return 2 * size**3 / seconds / 1e12


# ----------------------------------------------------------------- costs for the estimate


def windows(device: torch.device, quick: bool) -> tuple[int, int, int, float]:
    """(warm-up calls, calls per window, windows, seconds after which no new window starts).

    A quick probe times one window; a full measurement takes the fastest of several. A
    window of a few calls evens out the jitter of single calls (the fastest single call
    runs a tenth or more below the typical one), and the fastest window leaves out the
    spells in which other jobs held the cores.
    """
    if device.type == "cuda":
        return 10, 10, 1 if quick else 5, 2.0 if quick else 5.0
    return 3, 3, 1 if quick else 4, 1.0 if quick else 2.0


def settled_seconds(fn: Callable[[], Any], device: torch.device, quick: bool = False) -> tuple[float, float]:
    """(seconds per call, seconds the warm-up calls took beyond as many settled calls).

    Seconds per call are the fastest window's, after the warm-up: a busy machine only
    ever slows a window down, and the first calls of a shape choose kernels.
    """
    warmup, steps, repeats, budget = windows(device, quick)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    devices.synchronize(device)
    warm = time.perf_counter() - start
    best = math.inf
    for i in range(repeats):
        best = min(best, devices.timed(fn, device, steps))
        if i >= 1 and time.perf_counter() - start > budget:
            break
    return best, max(0.0, warm - warmup * best)


def step_costs(archs: list[str], *, device: str | torch.device, batch_size: int, precision: str,
               channels_last: bool, num_classes: int, in_channels: int, image_size: int,
               eval_batch_size: int = 256, compile: bool = False, quick: bool = False) -> dict[str, dict[str, float]]:
    """Seconds per architecture: `train_s` (a training step on a batch, the `vanilla` loss),
    `forward_s` (a no-grad forward of a batch, as the teacher's), `eval_s` (a no-grad forward
    of an evaluation batch), `warm_s` (what the first calls of these shapes take beyond
    settled ones) and `build_s` (building the model). `precision` may be `auto`.
    """
    dev = torch.device(device)
    precision = resolve(dev, precision)
    options = Options(precision=precision, channels_last=channels_last, compile=compile)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def batch(n: int) -> torch.Tensor:
        return torch.randn(n, in_channels, image_size, image_size, device=dev).contiguous(memory_format=fmt)

    images, eval_images = batch(batch_size), batch(eval_batch_size)
    targets = torch.randint(0, num_classes, (batch_size,), device=dev)
    costs = {}
    for arch in archs:
        started = time.perf_counter()
        model = build_student(arch, 0, num_classes, in_channels).to(dev, memory_format=fmt)
        build_s = time.perf_counter() - started
        member = Member(run_id=arch, student=arch, method="vanilla", hparams={}, schedule=Schedule().resolve(arch))
        trainee = Trainee(member, model, methods.build("vanilla"), dev, options)
        train_s, warm_train = settled_seconds(
            lambda: trainee.step({WEAK: images}, targets, {}, 1, 1, precision), dev, quick)
        model.eval()
        forward = Compiled(model, compile, "teacher's forward")

        def infer(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> None:
            with torch.no_grad(), autocast(dev, precision):
                fn(x)

        forward_s, warm_forward = settled_seconds(lambda: infer(forward, images), dev, quick)
        eval_s, warm_eval = settled_seconds(lambda: infer(model, eval_images), dev, quick)
        costs[arch] = {"train_s": train_s, "forward_s": forward_s, "eval_s": eval_s,
                       "warm_s": warm_train + warm_forward + warm_eval, "build_s": build_s}
    return costs


def loss_costs(method: str, hparams: dict[str, Any], *, device: str | torch.device, batch_size: int,
               num_classes: int, quick: bool = False) -> dict[str, float]:
    """`loss_s`: seconds of a method's loss, forward and backward, on a batch of random logits (all its views)."""
    dev = torch.device(device)
    loss = artifacts.with_synthetic_artifact(methods.build(method, **hparams), num_classes).to(dev)
    views = methods.views_of(loss)
    scales = methods.region_scales(loss)
    g = torch.Generator(device="cpu").manual_seed(0)

    def logits(grad: bool) -> torch.Tensor:
        return torch.randn(batch_size, num_classes, generator=g).to(dev).requires_grad_(grad)

    student = {v: logits(True) for v in views} if views else logits(True)
    teacher = {v: logits(False) for v in views} if views else logits(False)
    targets = torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)
    shape = (batch_size, num_classes, sum(s * s for s in scales or ()))
    extra = {} if scales is None else dict(zip(methods.REGION_KWARGS, (
        torch.randn(shape, generator=g).to(dev).requires_grad_(True), torch.randn(shape, generator=g).to(dev))))

    def step() -> None:
        sum(loss(student, teacher, targets, epoch=1, **extra).values()).backward()

    return {"loss_s": settled_seconds(step, dev, quick)[0]}


def strong_costs(in_channels: int, image_size: int, pad: int, flip: bool, quick: bool = False) -> dict[str, float]:
    """`image_s`: host seconds of MLKD's strong view of one image, on one core (`kdbench.data.strong`)."""
    import numpy as np

    from kdbench.data.strong import render

    rng = np.random.default_rng(0)
    side = image_size + 2 * pad
    store = rng.integers(0, 256, (64, side, side) + ((in_channels,) if in_channels != 1 else ()), dtype=np.uint8)
    out = np.empty((32, in_channels, image_size, image_size), dtype=np.uint8)
    seeds = iter(range(1 << 30))

    def batch() -> None:
        render(store, range(32), [next(seeds) for _ in range(32)], size=(image_size, image_size), pad=pad, flip=flip,
               out=out)

    return {"image_s": settled_seconds(batch, torch.device("cpu"), quick)[0] / 32}


def data_costs(spec: dict[str, Any], *, root: Any, device: str | torch.device, batch_size: int,
               eval_batch_size: int, channels_last: bool, quick: bool = False) -> dict[str, float]:
    """`build_s`: seconds to load the dataset onto the device (0 where its files are absent, or it
    streams from disk); `batch_s`: seconds the training loader takes to make a batch there."""
    from pathlib import Path

    from kdbench import data
    from kdbench.data.benchmark import measure_data_throughput

    dev = torch.device(device)
    dataset = data.instantiate(spec)
    if getattr(dataset, "shards_itself", False) or not dataset.presence(Path(root)).get("present"):
        # Not here to load, or not loaded at once: the on-device loader's rate at CIFAR's shape.
        rate = measure_data_throughput(str(dev), batch_size=batch_size, num_images=16 * batch_size,
                                       compare_dataloader=False)["data_images_per_s"]
        return {"build_s": 0.0, "batch_s": batch_size / rate}
    started = time.perf_counter()
    splits = data.build(spec, root=root, device=dev, seed=0, batch_size=batch_size,
                        eval_batch_size=eval_batch_size, channels_last=channels_last)
    devices.synchronize(dev)
    build_s = time.perf_counter() - started
    batches = iter(())

    def next_batch() -> None:
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = splits.train.epoch(0)
            next(batches)

    return {"build_s": build_s, "batch_s": settled_seconds(next_batch, dev, quick)[0]}


def cli_bench(args: argparse.Namespace) -> int:
    """The `kdbench bench` subcommand."""
    if args.data_only:
        from kdbench.data.benchmark import measure_data_throughput

        result = measure_data_throughput(str(devices.parse(args.device)), batch_size=args.batch_size)
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                console().print(f"{key}: {value:,.1f}" if isinstance(value, float) else f"{key}: {value}")
        return 0
    result = measure(
        args.teacher, args.student, method_list(args.methods),
        batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps, device=args.device,
        precision=args.precision, compile=args.compile, channels_last=args.channels_last,
        num_classes=args.num_classes, separate=not args.no_separate,
        cuda_graphs=args.cuda_graphs, fuse_students=args.fuse_students, fuse_backend=args.fuse_backend,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    _print_result(result)
    return 0


def _print_result(r: dict[str, Any]) -> None:
    from rich.table import Table

    precision = r["precision"] + (f" ({r['precision_requested']})" if "precision_requested" in r else "")
    table = Table(title=f"{r['teacher']} → {r['student']}, batch {r['batch_size']}, {r['device']} "
                        f"({r['device_name']}), {precision}"
                        f"{', channels-last' if r['channels_last'] else ''}{', compiled' if r['compile'] else ''}")
    table.add_column("mode")
    table.add_column("students", justify="right")
    table.add_column("images/s, all students", justify="right")
    table.add_column("images/s per student", justify="right")
    k = r["cohort_size"]
    table.add_row("cohort (one teacher forward per view)", str(k), f"{r['student_images_per_s']:,.1f}",
                  f"{r['student_images_per_s'] / k:,.1f}")
    if "separate_student_images_per_s" in r:
        table.add_row("one at a time", str(k), f"{r['separate_student_images_per_s']:,.1f}",
                      f"{r['separate_student_images_per_s'] / k:,.1f}")
    console().print(table)
    for method, views in r.get("views", {}).items():
        console().print(f"{method} trains on {len(views)} views ({', '.join(views)}) per image; random images stand "
                        "in for the strong view (its host augmentation is not timed here)")
    if "speedup" in r:
        console().print(f"cohort speed-up: {r['speedup']:.2f}×")
    peak = ""
    if "gemm_peak_tflops" in r:
        peak = (f", {100 * r['share_of_gemm_peak']:.0f}% of this device's {r['precision']} matmul peak "
                f"({r['gemm_peak_tflops'] * 1e3:,.1f} GFLOP/s, a large GEMM measured in the same run)")
    console().print(f"achieved: {r['cohort_tflops'] * 1e3:,.1f} GFLOP/s (from the models' MACs){peak}")
    for m in r.get("modes", {}).values():  # timed in turns with an eager cohort of their own
        console().print(f"{m['label']}: {m['student_images_per_s']:,.1f} images/s, {m['speedup']:.2f}× eager"
                        + "".join(f"; {n}" for n in m["notes"]))
