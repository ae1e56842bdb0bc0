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

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast for those precisions; nothing for fp32."""
    if precision in _DTYPES:
        return torch.autocast(device.type, dtype=_DTYPES[precision])
    if precision != "fp32":
        raise KdbenchError(f"options.precision: expected {', '.join(PRECISIONS)}, got {precision!r}")
    return contextlib.nullcontext()


def check(device: torch.device | str, precision: str) -> None:
    """A one-line `KdbenchError` when `device` can't train in `precision`."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise KdbenchError(f"options.precision: expected {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        raise KdbenchError(f"options.precision: bf16 is not supported on {name} (compute capability {major}.{minor}); "
                           "use fp16 (with a gradient scaler) or fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
