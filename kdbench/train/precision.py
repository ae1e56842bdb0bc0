"""Mixed precision: what a device runs natively, `precision: auto` resolved for it, the autocast
context of a precision, its gradient scaler, and a one-line error where a device can't run it.

`auto` is bf16 where the device has bf16 natively (CUDA compute capability ≥ 8.0; a CPU with
AVX512-BF16 or AMX) and fp32 elsewhere: emulated bf16 trains several times slower than fp32.
A run config keeps `auto` as written, so run ids do not depend on the machine; the run's
summary records what it resolved to.

fp16 needs a gradient scaler. Each member gets its own, so one member skipping a step
never touches the others, and its optimizer is the fused SGD, which takes the scaler's
inf check as a tensor: `GradScaler.step` then never reads it on the host.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from kdbench.errors import KdbenchError

#: Each precision and the dtype its matmuls and convolutions run in.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)
AUTO = "auto"
#: What `options.precision` accepts: a precision, or `auto` (resolved per device by `resolve`).
PRECISION_OPTIONS = (AUTO, *PRECISIONS)

# The CPU instructions that give native kernels: (torch.cpu probe, /proc/cpuinfo flag, name).
_CPU_INSTRUCTIONS = {
    "bf16": [("_is_amx_tile_supported", "amx_bf16", "AMX"), ("_is_avx512_bf16_supported", "avx512_bf16", "AVX512-BF16")],
    "fp16": [("_is_amx_fp16_supported", "amx_fp16", "AMX-FP16"), (None, "avx512_fp16", "AVX512-FP16")],
}
_CPU_MISSING = {"bf16": "AVX512-BF16 or AMX", "fp16": "AVX512-FP16 or AMX-FP16"}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast for those precisions; nothing for fp32."""
    _known(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def check(device: torch.device | str, precision: str) -> None:
    """A one-line `KdbenchError` when `device` can't train in `precision` (`auto` always can)."""
    device = torch.device(device)
    if precision == AUTO:
        resolve(device, precision)  # an unknown device: one line
        return
    _known(precision)
    if device.type == "cuda" and precision == "bf16" and not gpu_has_native_bf16():
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        raise KdbenchError(f"options.precision: bf16 is not supported on {name} (compute capability {major}.{minor}); "
                           "use fp16 (with a gradient scaler) or fp32")


def resolve(device: torch.device | str, precision: str) -> str:
    """The precision a run trains in on `device`: `precision` itself, or for `auto` bf16 where
    the device has it natively and fp32 elsewhere."""
    if precision != AUTO:
        _known(precision)
        return precision
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise KdbenchError(f"options.precision: auto does not know which precisions {device.type} runs natively; "
                           "set fp32, bf16 or fp16")
    return "bf16" if is_native(device, "bf16") else "fp32"


def is_native(device: torch.device | str, precision: str) -> bool:
    """Whether `device` runs `precision`'s matmuls and convolutions natively (fp32 always)."""
    device = torch.device(device)
    if precision == "fp32":
        return True
    if device.type == "cuda":
        if precision == "bf16":
            return gpu_has_native_bf16()
        return torch.cuda.get_device_capability(device) >= (7, 0)  # fp16 tensor cores
    return bool(cpu_instructions(precision))


def cpu_instructions(precision: str) -> list[str]:
    """The instruction sets of this CPU that run `precision` (bf16, fp16) natively, e.g. ["AVX512-BF16"]."""
    flags = _cpuinfo_flags()
    found = []
    for probe, flag, name in _CPU_INSTRUCTIONS.get(precision, []):
        known = _cpu_probe(probe)
        if known if known is not None else flag in flags:
            found.append(name)
    return found


def emulation_warning(device: torch.device | str, precision: str) -> str | None:
    """One line when `device` would emulate an explicit `precision` (slower than fp32), else None."""
    device = torch.device(device)
    if precision in (AUTO, "fp32") or device.type not in ("cpu", "cuda") or is_native(device, precision):
        return None
    if device.type == "cpu":
        what = f"this CPU has no {_CPU_MISSING[precision]}"
    else:
        major, minor = torch.cuda.get_device_capability(device)
        what = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no fp16 tensor cores"
    return (f"warning: options.precision: {precision} is emulated on {device.type} ({what}), several times slower "
            f"than fp32; use precision: fp32 (or auto, which picks {resolve(device, AUTO)} here)")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def gpu_has_native_bf16() -> bool:
    """Whether the current GPU runs bf16 natively (not emulated, which is slower than fp32)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no emulation argument
        return torch.cuda.is_bf16_supported()


def _cpu_probe(name: str | None) -> bool | None:
    """A private torch.cpu capability probe (`_is_avx512_bf16_supported`...), None if this torch lacks it."""
    probe = getattr(torch.cpu, name, None) if name else None
    try:
        return bool(probe()) if probe is not None else None
    except Exception:  # noqa: BLE001
        return None


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    """The CPU flags Linux reports (empty elsewhere): the fallback where torch has no probe."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _known(precision: str) -> None:
    if precision not in PRECISIONS:
        raise KdbenchError(f"options.precision: expected {', '.join(PRECISION_OPTIONS)}, got {precision!r}")
