"""The `Check` record of `kdbench doctor`, and its checks of the software and the device:
Python and PyTorch, whether the device trains, its precisions (bf16, fp16, TF32), and
torch.compile's toolchain. What is on disk is checked in `doctor_disk`, training in `doctor_quick`.

Each check function yields `Check`s; only the device check is `critical` (the device can't train).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from kdbench.runs import environment as provenance
from kdbench.train.precision import DTYPES, cpu_instructions, gpu_has_native_bf16
from kdbench.train.trainee import build_student

MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 1)
#: The fix of a check that fails where kdbench itself is wrong.
BUG_FIX = "this is a kdbench bug: please report it with the output of kdbench doctor"


@dataclass
class Check:
    """One line of `kdbench doctor`: what was checked, whether it passed, and how to fix it.

    `critical`: failing it means the device can't train (`kdbench doctor` exits 1).
    `seconds` is filled in by the runner.
    """

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    critical: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The check as the summary's JSON holds it."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix,
                "seconds": round(self.seconds, 3)}


def passed(name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str, critical: bool = False) -> Check:
    """A check that failed, with its one-line fix."""
    return Check(name, False, detail, fix, critical)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`TypeName: message` on one line, at most `limit` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:2])


# ----------------------------------------------------------------------------- versions


def versions(env: dict[str, Any]) -> dict[str, Any]:
    """The versions the summary reports: from `env` (`provenance.environment`), plus torchvision."""
    keys = ("kdbench", "python", "torch", "cuda", "cudnn", "driver", "git_commit", "git_dirty")
    out = {k: env[k] for k in keys}
    out["torchvision"] = installed_version("torchvision")
    out["platform"] = f"{platform.system()} {platform.machine()}"
    return out


def version_checks() -> Iterator[Check]:
    """Python and PyTorch are recent enough for kdbench."""
    py = platform.python_version()
    if sys.version_info[:2] >= MIN_PYTHON:
        yield passed("python", f"{py} ({platform.python_implementation()}, {sys.executable})")
    else:
        yield failed("python", f"{py} is older than kdbench needs ({'.'.join(map(str, MIN_PYTHON))})",
                     "install Python ≥ 3.10 and a fresh virtual environment")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    build = "CPU-only build"
    if torch.version.cuda:
        build = f"built for CUDA {torch.version.cuda}" + (f", cuDNN {cudnn}" if cudnn else "")
    detail = f"{torch.__version__} ({build}), torchvision {installed_version('torchvision')}"
    if _version_tuple(torch.__version__) >= MIN_TORCH:
        yield passed("torch", detail)
    else:
        yield failed("torch", f"{detail}: older than kdbench needs (2.1)", "pip install -U torch torchvision")


# ----------------------------------------------------------------------------- the device


def describe_device(device: torch.device) -> str:
    """The device in words: the GPU and its memory, or the CPU model, its vector ISA and threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = provenance.driver_version()
        return (f"{device}: {props.name}, compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s) visible"
                f"{f', driver {driver}' if driver else ''}")
    isa = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"cpu: {provenance.cpu_name() or platform.machine()} ({isa}), {torch.get_num_threads()} threads"


def device_check(device: torch.device) -> Iterator[Check]:
    """One SGD step of a small student on the device: whether it can train at all."""
    try:
        about = describe_device(device)
        model = build_student("resnet8", 0, 10, 3).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(8, 3, 16, 16, generator=g).to(device)
        targets = torch.randint(0, 10, (8,), generator=g).to(device)
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        value = loss.item()
    except Exception as exc:  # noqa: BLE001 -- any failure here is the answer
        yield failed("device", f"{device}: a training step fails: {one_line(exc)}",
                     "check the driver and the PyTorch build for this device (nvidia-smi; pytorch.org), "
                     "or use --device cpu", critical=True)
        return
    if value != value or abs(value) == float("inf"):
        yield failed("device", f"{about}: a training step gives a non-finite loss ({value})",
                     "the device computes wrongly: check the driver and the PyTorch build, or use --device cpu",
                     critical=True)
        return
    yield passed("device", f"{about}; a training step runs")


def _autocast_runs(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if a conv and a linear layer run forward and backward under autocast to `dtype`, else why not."""
    try:
        g = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv2d(3, 8, 3).to(device)
        linear = torch.nn.Linear(8, 4).to(device)
        x = torch.randn(2, 3, 8, 8, generator=g).to(device)
        with torch.autocast(device.type, dtype=dtype):
            out = linear(conv(x).mean(dim=(2, 3)))
        if out.dtype != dtype:
            return f"autocast gave {out.dtype}, not {dtype}"
        out.float().sum().backward()
        if not torch.isfinite(conv.weight.grad).all():
            return "non-finite gradients"
    except Exception as exc:  # noqa: BLE001
        return one_line(exc)
    return None


def _precision_check(device: torch.device, precision: str, native: bool, how: str, trains: str,
                     fixes: tuple[str, str]) -> Check:
    """`precision` passes where autocast runs and the device has native kernels; `fixes`: for (broken, emulated)."""
    broken = _autocast_runs(device, DTYPES[precision])
    if broken:
        return failed(precision, f"{precision} autocast fails on {device}: {broken}", fixes[0])
    if not native:
        return failed(precision, f"{how}: {precision} would be emulated, slower than fp32", fixes[1])
    return passed(precision, f"{how}; options.precision: {precision} trains {trains}")


def precision_checks(device: torch.device) -> Iterator[Check]:
    """bf16, fp16 and TF32: what this device runs natively, and what kdbench can train in."""
    cuda = device.type == "cuda"
    capability = torch.cuda.get_device_capability(device) if cuda else None
    where = f"compute capability {capability[0]}.{capability[1]}" if cuda else "this CPU"
    if cuda:
        native = gpu_has_native_bf16()
        how = "native bf16" if native else "no native bf16"
    else:
        isa = cpu_instructions("bf16")
        native = bool(isa)
        how = f"native bf16 ({', '.join(isa)})" if native else "no bf16 instructions (AVX512-BF16, AMX)"
    yield _precision_check(device, "bf16", native, f"{how} on {where}", "with autocast", (
        "use options.precision: fp32",
        "use options.precision: fp16 (a gradient scaler) on this GPU" if cuda
        else "keep options.precision: fp32 on this CPU"))
    if cuda:
        native = capability >= (7, 0)
        how = "fp16 tensor cores" if native else "no fp16 tensor cores (before Volta)"
    else:
        isa = cpu_instructions("fp16")
        native = bool(isa)
        how = f"native fp16 ({', '.join(isa)})" if native else "no fp16 instructions (AVX512-FP16, AMX-FP16)"
    yield _precision_check(device, "fp16", native, f"{how} on {where}", "with autocast and a gradient scaler", (
        "use options.precision: bf16 or fp32",
        "use options.precision: fp32 here" if cuda else "use options.precision: bf16 or fp32 here"))
    # TF32
    if not cuda:
        yield passed("tf32", "not used on the CPU: fp32 matmuls and convolutions run in full fp32")
        return
    flags = (f"torch.backends.cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
             f"torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    if capability >= (8, 0):
        yield passed("tf32", f"TF32 available on {where}; {flags} (PyTorch's defaults: False, True, so fp32 "
                             "convolutions use TF32; every run records these flags)")
    else:
        yield passed("tf32", f"no TF32 on {where} (before Ampere): fp32 runs in full fp32; {flags}")


def compile_toolchain_check(device: torch.device) -> Iterator[Check]:
    """Whether torch.compile's backend has what it needs here (without compiling; --quick compiles)."""
    try:
        import torch._dynamo as dynamo

        supported = dynamo.is_dynamo_supported()
    except Exception as exc:  # noqa: BLE001
        supported, why = False, one_line(exc)
    else:
        why = f"this Python ({platform.python_version()}) or platform"
    if not supported:
        yield failed("compile", f"torch.compile is not supported by {why}",
                     "keep options.compile: false (training runs eagerly)")
        return
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if importlib.util.find_spec("triton") is None:
            yield failed("compile", "Triton, which torch.compile needs on a GPU, is not installed",
                         "pip install triton (it comes with PyTorch's CUDA wheels), or keep options.compile: false")
        elif capability < (7, 0):
            yield failed("compile", f"Triton needs compute capability ≥ 7.0, this GPU has {capability[0]}.{capability[1]}",
                         "keep options.compile: false on this GPU")
        else:
            yield passed("compile", f"Triton {installed_version('triton') or ''} found; --quick compiles a model to be sure")
        return
    names = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    compiler = next((shutil.which(n) for n in names if n and shutil.which(n)), None)
    if compiler is None:
        yield failed("compile", "no C++ compiler found, which torch.compile needs on the CPU",
                     "install one (apt-get install g++), or keep options.compile: false")
        return
    yield passed("compile", f"C++ compiler {compiler} found; --quick compiles a model to be sure")


def installed_version(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
