"""`kdbench bench`: training throughput of a cohort versus the same methods one at a time.

Random data stands in for a dataset, so nothing needs to be on disk. The cohort runs the
teacher once per batch for all students; the separate baseline gives each method its own
teacher forward, as one-run-per-process trainers do. Both use the real training step of
`kdbench.train`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from kdbench import devices, methods, models
from kdbench.compiling import Compiled
from kdbench.console import console
from kdbench.precision import DTYPES, autocast
from kdbench.recipe import Options, Schedule
from kdbench.trainee import WEAK, Member, Trainee, build_student


class _Setup:
    """A teacher and one trainee per method, on random data of the right shape."""

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
            self.trainees.append(Trainee(member, model, methods.build(name).to(device), device, options))
        g = torch.Generator(device="cpu").manual_seed(0)
        self.images = torch.randn(batch_size, in_channels, image_size, image_size, generator=g).to(device)
        self.images = self.images.contiguous(memory_format=fmt)
        self.targets = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
        self.step_count = 0

    def teacher_logits(self) -> dict[str, torch.Tensor]:
        with torch.no_grad(), autocast(self.device, self.options.precision):
            return {WEAK: self.teacher_forward(self.images)}

    def cohort_step(self) -> None:
        self.step_count += 1
        logits = self.teacher_logits()
        for trainee in self.trainees:
            trainee.step({WEAK: self.images}, self.targets, logits, 30, self.step_count, self.options.precision)

    def separate_step(self, trainee: Trainee) -> None:
        self.step_count += 1
        trainee.step({WEAK: self.images}, self.targets, self.teacher_logits(), 30, self.step_count,
                     self.options.precision)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    devices.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    devices.synchronize(device)
    return time.perf_counter() - start


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
) -> dict[str, Any]:
    """Training images per second of a cohort, and of the same methods trained one at a time."""
    dev = devices.parse(device)
    method_names = method_names or ["kd", "dkd", "normkd", "label_swap", "rld"]
    for name in method_names:
        methods.method_class(name)
    steps = steps or (20 if dev.type == "cpu" else 200)
    warmup = warmup_steps if warmup_steps is not None else (3 if dev.type == "cpu" else 20)
    options = Options(precision=precision, channels_last=channels_last, compile=compile)
    setup = _Setup(teacher, student, method_names, dev, options, batch_size, num_classes, in_channels, image_size)
    k = len(method_names)
    cohort_seconds = _timed(setup.cohort_step, steps, warmup, dev)
    result: dict[str, Any] = {
        "teacher": models.canonical(teacher), "student": models.canonical(student), "methods": method_names,
        "cohort_size": k, "batch_size": batch_size, "steps": steps, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": precision, "channels_last": channels_last,
        "compile": compile, "torch": torch.__version__,
        "student_images_per_s": k * batch_size * steps / cohort_seconds,
    }
    if separate:
        separate_seconds = sum(
            _timed(lambda t=t: setup.separate_step(t), steps, warmup, dev) for t in setup.trainees
        )
        result["separate_student_images_per_s"] = k * batch_size * steps / separate_seconds
        result["speedup"] = result["student_images_per_s"] / result["separate_student_images_per_s"]
    teacher_macs = models.count_macs(setup.teacher, in_channels, image_size)  # the eager module; compiling wraps it
    student_macs = models.count_macs(models.build(student, num_classes, in_channels), in_channels, image_size)
    # Training a student costs about 3 forwards (forward + backward); the teacher 1.
    flops_per_step = 2 * batch_size * (teacher_macs + 3 * k * student_macs)
    result["cohort_tflops"] = flops_per_step * steps / cohort_seconds / 1e12
    result["gemm_peak_tflops"] = gemm_peak_tflops(dev, precision)
    result["share_of_gemm_peak"] = result["cohort_tflops"] / result["gemm_peak_tflops"]
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
    seconds = _timed(lambda: a @ b, repeats, 2, device)
    return 2 * size**3 * repeats / seconds / 1e12


def step_costs(archs: list[str], *, device: str | torch.device, batch_size: int, precision: str,
               channels_last: bool, num_classes: int, in_channels: int, image_size: int,
               steps: int = 2) -> dict[str, dict[str, float]]:
    """Seconds per batch of a forward pass and of a training step, per architecture.

    `kdbench run --dry-run` combines these into a grid's time estimate.
    """
    dev = torch.device(device)
    options = Options(precision=precision, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch_size, in_channels, image_size, image_size, device=dev).contiguous(memory_format=fmt)
    targets = torch.randint(0, num_classes, (batch_size,), device=dev)
    costs = {}
    for arch in archs:
        member = Member(run_id=arch, student=arch, method="vanilla", hparams={}, schedule=Schedule().resolve(arch))
        model = build_student(arch, 0, num_classes, in_channels).to(dev, memory_format=fmt)
        trainee = Trainee(member, model, methods.build("vanilla"), dev, options)
        train_s = _timed(lambda: trainee.step({WEAK: images}, targets, {}, 1, 1, precision), steps, 1, dev) / steps

        def forward() -> None:
            with torch.no_grad(), autocast(dev, precision):
                model(images)

        model.eval()
        forward_s = _timed(forward, steps, 1, dev) / steps
        costs[arch] = {"forward_s": forward_s, "train_s": train_s}
    return costs


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
        args.teacher, args.student, [m.strip() for m in args.methods.split(",") if m.strip()],
        batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps, device=args.device,
        precision=args.precision, compile=args.compile, channels_last=args.channels_last,
        num_classes=args.num_classes, separate=not args.no_separate,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    _print_result(result)
    return 0


def _print_result(r: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{r['teacher']} → {r['student']}, batch {r['batch_size']}, {r['device']} "
                        f"({r['device_name']}), {r['precision']}"
                        f"{', channels-last' if r['channels_last'] else ''}{', compiled' if r['compile'] else ''}")
    table.add_column("mode")
    table.add_column("students", justify="right")
    table.add_column("images/s, all students", justify="right")
    table.add_column("images/s per student", justify="right")
    k = r["cohort_size"]
    table.add_row("cohort (one teacher forward)", str(k), f"{r['student_images_per_s']:,.1f}",
                  f"{r['student_images_per_s'] / k:,.1f}")
    if "separate_student_images_per_s" in r:
        table.add_row("one at a time", str(k), f"{r['separate_student_images_per_s']:,.1f}",
                      f"{r['separate_student_images_per_s'] / k:,.1f}")
    console().print(table)
    if "speedup" in r:
        console().print(f"cohort speed-up: {r['speedup']:.2f}×")
    console().print(f"achieved: {r['cohort_tflops'] * 1e3:,.1f} GFLOP/s (from the models' MACs), "
                    f"{100 * r['share_of_gemm_peak']:.0f}% of this device's {r['precision']} matmul peak "
                    f"({r['gemm_peak_tflops'] * 1e3:,.1f} GFLOP/s, a large GEMM measured in the same run)")
