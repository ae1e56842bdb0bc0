"""The training checks of `kdbench doctor --quick`.

The method contract of every registered method; a small synthetic cohort (teacher, and
students trained with a few methods, one of them with a learnable parameter) trained for
two epochs with the real harness, in fp32 and in bf16 (or fp16 where the GPU has no bf16);
exact resume after a stop (deterministic mode on a GPU); torch.compile of a small model;
and a short `kdbench bench`. Files go to a folder the caller provides (a temporary one).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from kdbench import data, methods
from kdbench.tools import bench
from kdbench.methods import conformance
from kdbench.core import devices
from kdbench.train import determinism
from kdbench.doctor.checks import BUG_FIX, Check, failed, one_line, passed
from kdbench.doctor import graphs_check
from kdbench.train.precision import gpu_has_native_bf16
from kdbench.grid.recipe import Options, Schedule
from kdbench.runs.records import CHECKPOINT, Status
from kdbench.runs.teacher_files import TeacherRef, TeacherSource
from kdbench.train.cohort import TrainingInterrupted, train_cohort
from kdbench.train.trainee import CohortSpec, Member, MemberResult, build_method, build_student



@dataclass(frozen=True)
class BenchSpec:
    """The `kdbench bench` measurement the quick checks make."""

    teacher: str
    student: str
    methods: tuple[str, ...]
    batch_size: int = 64
    steps: int = 5
    warmup: int = 2
    num_classes: int = 100
    image_size: int = 32


@dataclass(frozen=True)
class Scale:
    """How much the quick checks train and measure: `QUICK` for `--quick`, `TINY` for tests."""

    methods: tuple[str, ...] = ("kd", "dkd", "ctkd")  # ctkd: a learnable temperature
    student: str = "resnet8"
    teacher: str = "resnet8"  # random weights: the check is the harness, not the accuracy
    num_classes: int = 10
    train_size: int = 256
    test_size: int = 128
    image_size: int = 16
    batch_size: int = 64
    epochs: int = 2
    compile_model: str | None = "resnet8"  # None: a conv-BN-linear model, quicker to compile
    bench_cpu: BenchSpec = BenchSpec("resnet20", "resnet8", ("kd", "dkd"))
    bench_cuda: BenchSpec = BenchSpec("resnet32x4", "resnet8x4", ("kd", "dkd", "normkd", "label_swap", "rld"),
                                      steps=50, warmup=10)

    def dataset(self) -> dict[str, Any]:
        """The synthetic dataset spec."""
        return {"name": "synthetic", "num_classes": self.num_classes, "train_size": self.train_size,
                "test_size": self.test_size, "image_size": self.image_size, "channels": 3}

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_size // self.batch_size)


QUICK = Scale()
TINY = Scale(methods=("kd", "ctkd"), train_size=64, test_size=32, image_size=8, batch_size=32, compile_model=None,
             bench_cpu=BenchSpec("resnet8", "resnet8", ("kd",), batch_size=16, steps=1, warmup=1,
                                     num_classes=10, image_size=8))


def reduced_precision(device: torch.device) -> str:
    """The precision `--quick` trains in besides fp32: bf16, or fp16 on a GPU without native bf16."""
    return "bf16" if device.type != "cuda" or gpu_has_native_bf16() else "fp16"


# ----------------------------------------------------------------------------- the method contract


def conformance_check() -> Iterator[Check]:
    """`conformance.check` on every registered method (no training)."""
    names = methods.available()
    problems = []
    for name in names:
        try:
            conformance.check(name)
        except AssertionError as exc:
            problems.append((name, " ".join(str(exc).split())))
        except Exception as exc:  # noqa: BLE001 -- a method that raises fails the contract too
            problems.append((name, one_line(exc)))
    if not problems:
        yield passed("conformance", f"all {len(names)} methods meet the method contract: {', '.join(names)}")
        return
    files = sorted({methods.describe(n).source for n, _ in problems})
    yield failed("conformance", f"{len(problems)} of {len(names)} methods fail the method contract: "
                                + "; ".join(f"{n}: {why}" for n, why in problems),
                 f"fix {', '.join(files)} (the contract: docs/design.md, Method contract)")


# ----------------------------------------------------------------------------- training


def _cohort(scale: Scale, precision: str, out: Path | None, deterministic: bool = False) -> CohortSpec:
    schedule = Schedule(epochs=scale.epochs, batch_size=scale.batch_size, lr=0.05, milestones=(scale.epochs,))
    members = [Member(run_id=name, student=scale.student, method=name, hparams={}, schedule=schedule,
                      out_dir=None if out is None else out / name,
                      config={"doctor": True, "method": name, "precision": precision})
               for name in scale.methods]
    teacher = build_student(scale.teacher, 1, scale.num_classes, 3).eval()
    return CohortSpec(dataset=scale.dataset(), seed=0, members=members,
                      teacher=TeacherRef(scale.teacher, TeacherSource.FILE, None), teacher_model=teacher,
                      options=Options(precision=precision, deterministic=deterministic))


def _splits(device: torch.device, scale: Scale, root: Path) -> Any:
    return data.build(scale.dataset(), root=root, device=device, seed=0, batch_size=scale.batch_size,
                      eval_batch_size=256)


def _failures(results: list[MemberResult]) -> list[str]:
    out = []
    for r in results:
        if r.status != Status.DONE:
            reason = r.summary.failure.reason if r.summary.failure else f"stopped at epoch {r.epochs_done}"
            out.append(f"{r.run_id}: {reason}")
    return out


def _learned(results: list[MemberResult]) -> list[tuple[str, str, float, float]]:
    """(run, scalar, before, after) of the per-epoch scalars of methods with learnable parameters."""
    out = []
    for r in results:
        method = build_method(r.summary.method, {}, 0)
        if not list(method.parameters()):
            continue
        for key, before in methods.epoch_scalars(method).items():
            after = r.history[-1].get(f"method_{key}")
            if after is not None:
                out.append((r.run_id, key, before, after))
    return out


def train_check(device: torch.device, precision: str, scale: Scale, workdir: Path) -> Iterator[Check]:
    """The cohort trained for `scale.epochs` epochs in `precision`; critical in fp32."""
    name, critical = f"train {precision}", precision == "fp32"
    what = (f"{', '.join(scale.methods)}: {scale.student} students of a {scale.teacher} teacher, {scale.epochs} epochs "
            f"× {scale.steps_per_epoch} steps on synthetic data")
    fix = ("training fails on this device in fp32: check the driver and the PyTorch build, or use --device cpu"
           if critical else f"use options.precision: fp32 on this device (or {'fp16' if precision == 'bf16' else 'bf16'})")
    try:
        results = train_cohort(_cohort(scale, precision, None), device, data=_splits(device, scale, workdir))
    except Exception as exc:  # noqa: BLE001 -- a cohort fault: the teacher, the device, the precision
        yield failed(name, f"{what}: {one_line(exc.__cause__ or exc)}", fix, critical)
        return
    problems = _failures(results)
    if problems:
        yield failed(name, f"{what}: " + "; ".join(problems), fix, critical)
        return
    top1 = ", ".join(f"{r.history[-1]['test_top1']:.1f}" for r in results)
    learned = _learned(results)
    still = [f"{run}'s {key}" for run, key, before, after in learned if before == after]
    if still:
        yield failed(name, f"{what}: {', '.join(still)} did not change: the method's parameters are not trained", BUG_FIX)
        return
    moved = "".join(f"; {run}'s learned {key} {before:.3f} → {after:.3f}" for run, key, before, after in learned)
    yield passed(name, f"{what}: test top-1 {top1}{moved}")


def _flat(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _flat(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _flat(value, f"{prefix}.{i}")


def state_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], int, float]:
    """(names of the tensors that differ bitwise, how many were compared, their max |Δ|) of two checkpoints'
    model, method and optimizer states."""
    left = dict(_flat({k: a.get(k) for k in ("model", "method", "optimizer")}))
    right = dict(_flat({k: b.get(k) for k in ("model", "method", "optimizer")}))
    differ, worst = sorted(set(left) ^ set(right)), 0.0
    for key in sorted(set(left) & set(right)):
        x, y = left[key].cpu(), right[key].cpu()
        if x.shape != y.shape or x.dtype != y.dtype:
            differ.append(key)
        elif not torch.equal(x, y):
            differ.append(key)
            if x.is_floating_point():
                worst = max(worst, (x.double() - y.double()).abs().max().item())
    return differ, len(left | right), worst


def _stop_and_resume(device: torch.device, scale: Scale, workdir: Path, stop_step: int,
                     deterministic: bool) -> str | None:
    """Train the cohort straight, and again with two stops; None, or what went wrong."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == stop_step

    splits = _splits(device, scale, workdir)
    straight = _failures(train_cohort(_cohort(scale, "fp32", workdir / "straight", deterministic), device,
                                      data=splits))
    if straight:
        return "trained straight: " + "; ".join(straight)
    again = lambda: _cohort(scale, "fp32", workdir / "resumed", deterministic)  # noqa: E731
    if any(r.epochs_done != 1 for r in train_cohort(again(), device, data=splits, until_epoch=1)):
        return "the first part did not stop after epoch 1"
    try:
        train_cohort(again(), device, data=splits, should_stop=stop)
    except TrainingInterrupted:
        pass
    else:
        return "the stop request was not honoured"
    problems = _failures(train_cohort(again(), device, data=splits))
    return "; ".join(problems) or None


def resume_check(device: torch.device, scale: Scale, workdir: Path,
                 deterministic: bool | None = None) -> Iterator[Check]:
    """Trained straight vs. stopped after epoch 1, resumed, stopped mid-epoch 2, resumed: bitwise equal?

    `deterministic` (default: on a GPU) trains in the deterministic mode (`options.deterministic`)."""
    deterministic = device.type == "cuda" if deterministic is None else deterministic
    stop_step = max(1, scale.steps_per_epoch // 2)
    mode = " in deterministic mode" if deterministic else ""
    what = f"{scale.epochs} epochs straight vs. stopped after epoch 1 and at epoch 2 step {stop_step}, resumed{mode}"
    try:
        problem = _stop_and_resume(device, scale, workdir, stop_step, deterministic)
    finally:
        determinism.set_deterministic(device, False)  # PyTorch's defaults again for the checks after this one
    if problem:
        yield failed("resume", f"{what}: {problem}", BUG_FIX)
        return
    differ, total, worst, ops = [], 0, 0.0, []
    for name in scale.methods:
        a, b = (torch.load(workdir / part / name / CHECKPOINT, map_location="cpu", weights_only=True)
                for part in ("straight", "resumed"))
        ops = list(dict.fromkeys(ops + [op for state in (a, b) for op in state.get("nondeterministic_ops") or []]))
        d, n, w = state_difference(a, b)
        differ += [f"{name}:{k}" for k in d]
        total, worst = total + n, max(worst, w)
    nondeterministic = f"; ops without a deterministic implementation ran: {', '.join(ops)}" if ops else ""
    if not differ:
        yield passed("resume", f"{what}: all {total} weight, method and optimizer tensors equal bit for bit"
                               f"{nondeterministic}")
        return
    fix = ("GPU runs repeat bit for bit only when no such op runs (docs/design.md, Provenance and determinism)"
           if ops else BUG_FIX)
    yield failed("resume", f"{what}: {len(differ)} of {total} tensors differ (max |Δ| {worst:.3g}; first: "
                           f"{', '.join(differ[:3])}){nondeterministic}", fix)


# ----------------------------------------------------------------------------- compile, bench


def _timed_step(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    devices.synchronize(device)
    start = time.perf_counter()
    logits = model(images)
    logits.float().sum().backward()
    devices.synchronize(device)
    return logits.detach(), time.perf_counter() - start


def _compile_subject(scale: Scale) -> torch.nn.Module:
    if scale.compile_model:
        return build_student(scale.compile_model, 0, scale.num_classes, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, scale.num_classes))


def compile_check(device: torch.device, scale: Scale) -> Iterator[Check]:
    """torch.compile a small student's forward (as `options.compile` does); compare it with eager."""
    arch = scale.compile_model or "a conv-BN-linear model"
    try:
        eager = _compile_subject(scale).to(device).train()
        model = copy.deepcopy(eager)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(scale.batch_size, 3, scale.image_size, scale.image_size, generator=g).to(device)
        _timed_step(eager, images, device)  # the first eager step pays for allocations and kernel choice
        expected, eager_s = _timed_step(eager, images, device)
        eager_s = min([eager_s] + [_timed_step(eager, images, device)[1] for _ in range(2)])
        compiled = torch.compile(model)
        logits, compile_s = _timed_step(compiled, images, device)
        step_s = min(_timed_step(compiled, images, device)[1] for _ in range(3))
    except Exception as exc:  # noqa: BLE001 -- platforms vary; the reason is the answer
        yield failed("compile", f"torch.compile of {arch} fails on {device}: {one_line(exc)}",
                     "options.compile: true then trains eagerly with a warning; set it to false, or fix the "
                     "toolchain (a C++ compiler on the CPU, Triton on a GPU)")
        return
    worst = (logits.float() - expected.float()).abs().max().item()
    tolerance = (1e-2 if device.type == "cuda" else 1e-3) * max(1.0, expected.abs().max().item())
    timing = (f"compiled in {compile_s:.1f} s (then {1e3 * step_s:.1f} ms a step, eager {1e3 * eager_s:.1f} ms; "
              "best of 3)")
    if not worst <= tolerance:
        yield failed("compile", f"{arch} forward {timing}, but its logits differ from eager's by {worst:.3g} "
                                f"(tolerance {tolerance:.1g})", "keep options.compile: false; " + BUG_FIX)
        return
    yield passed("compile", f"{arch} forward and backward {timing}; logits equal eager's within {tolerance:.1g} "
                            f"(max |Δ| {worst:.1g})")


def bench_check(device: torch.device, scale: Scale) -> Iterator[Check]:
    """A short `kdbench bench` (fp32): a cohort against the same students trained one at a time."""
    spec = scale.bench_cuda if device.type == "cuda" else scale.bench_cpu
    try:
        r = bench.measure(spec.teacher, spec.student, list(spec.methods), batch_size=spec.batch_size,
                          steps=spec.steps, warmup_steps=spec.warmup, device=str(device), precision="fp32",
                          num_classes=spec.num_classes, image_size=spec.image_size)
    except Exception as exc:  # noqa: BLE001
        yield failed("bench", f"kdbench bench fails on {device}: {one_line(exc)}", BUG_FIX)
        return
    flops = (f"; {1e3 * r['cohort_tflops']:,.1f} GFLOP/s, {100 * r['share_of_gemm_peak']:.0f}% of the fp32 matmul "
             "peak measured alongside")
    yield passed("bench", f"{r['teacher']}→{r['student']}, {_count(r['cohort_size'], 'student')} "
                          f"({', '.join(r['methods'])}), batch {r['batch_size']}, {_count(r['steps'], 'step')}, fp32: "
                          f"{r['student_images_per_s']:,.0f} student images/s as a cohort, {r['speedup']:.2f}× "
                          f"one at a time{flops}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def quick_checks(device: torch.device, scale: Scale, workdir: Path, precision: str | None = None,
                 can_train: bool = True) -> list[tuple[str, Iterator[Check]]]:
    """The quick checks, in order, as (name, checks) pairs. Without `can_train` (the device check
    failed) the training checks are reported as not run. `precision` replaces `reduced_precision(device)`."""
    second = precision or reduced_precision(device)
    plan: list[tuple[str, Iterator[Check]]] = [("conformance", conformance_check())]
    if not can_train:
        return plan + [(name, iter([failed(name, f"not run: {device} can't train (see the device check)",
                                           "fix the device first")]))
                       for name in ("train fp32", f"train {second}", "resume", "compile", "bench")]
    plan += [
        ("train fp32", train_check(device, "fp32", scale, workdir)),
        (f"train {second}", train_check(device, second, scale, workdir)),
        ("resume", resume_check(device, scale, workdir)),
        ("compile", compile_check(device, scale)),
        ("bench", bench_check(device, scale)),
    ]
    if device.type == "cuda":  # one CUDA graph per step: captured, and equal to eager bit for bit
        plan.append((graphs_check.NAME, graphs_check.graphs_check(
            device, lambda: _cohort(scale, "fp32", None, deterministic=True), lambda: _splits(device, scale, workdir))))
    return plan
