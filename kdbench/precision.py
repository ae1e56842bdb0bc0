"""Mixed precision: the autocast context of a precision option."""

from __future__ import annotations

import contextlib

import torch

from kdbench.errors import KdbenchError

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `precision == "bf16"`, otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise KdbenchError(f"options.precision: expected {' or '.join(PRECISIONS)}, got {precision!r}")
    return contextlib.nullcontext()
