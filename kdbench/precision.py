"""Mixed precision: the autocast context of a precision option, its gradient scaler, and a
one-line error where a device can't run it.

fp16 needs a gradient scaler. Each member gets its own, so one member skipping a step
never touches the others, and its optimizer is the fused SGD, which takes the scaler's
inf check as a tensor: `GradScaler.step` then never reads it on the host.
"""

from __future__ import annotations

import contextlib

import torch

from kdbench.errors import KdbenchError

#: Each precision option and the dtype its matmuls and convolutions run in.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast for those precisions; nothing for fp32."""
    _known(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def check(device: torch.device | str, precision: str) -> None:
    """A one-line `KdbenchError` when `device` can't train in `precision`."""
    device = torch.device(device)
    _known(precision)
    if device.type == "cuda" and precision == "bf16" and not gpu_has_native_bf16():
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        raise KdbenchError(f"options.precision: bf16 is not supported on {name} (compute capability {major}.{minor}); "
                           "use fp16 (with a gradient scaler) or fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def gpu_has_native_bf16() -> bool:
    """Whether the current GPU runs bf16 natively (not emulated, which is slower than fp32)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no emulation argument
        return torch.cuda.is_bf16_supported()


def _known(precision: str) -> None:
    if precision not in PRECISIONS:
        raise KdbenchError(f"options.precision: expected {', '.join(PRECISIONS)}, got {precision!r}")
