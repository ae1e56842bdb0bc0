"""`--device` values: parsing, checking, the default, and waiting for a device to finish."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from kdbench.errors import KdbenchError


def default_device() -> str:
    """cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse(text: str | None) -> torch.device:
    """One device: cpu, cuda or cuda:N (default: cuda when available); a one-line error otherwise."""
    return torch.device(parse_many(text, many=False)[0])


def parse_many(text: str | None, many: bool = True) -> list[str]:
    """`--device`: cpu, cuda, cuda:N, or with `many` a comma-separated list of them."""
    if not text:
        return [default_device()]
    names = [d.strip() for d in text.split(",") if d.strip()] if many else [text.strip()]
    expected = "cpu, cuda or cuda:N" + (" (or a comma-separated list)" if many else "")
    if not names:
        raise KdbenchError(f"--device {text}: expected {expected}")
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise KdbenchError(f"--device {text}: '{name}' is not a device; expected {expected}") from None
        if device.type not in ("cpu", "cuda"):
            raise KdbenchError(f"--device {text}: '{name}' is not supported; expected {expected}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise KdbenchError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
    return names


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, calls: int, warmup: int = 0, windows: int = 1) -> float:
    """Seconds per call: the fastest of `windows` windows of `calls` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = math.inf
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best
