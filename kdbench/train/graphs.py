"""`options.cuda_graphs`: a cohort's whole training step captured once as a CUDA graph and
replayed for every step after.

The step (teacher forward, every member's forward, loss, backward and SGD step, and the
on-device accumulators) launches hundreds of small kernels per member; at batch 64 the GPU
waits on those launches (docs/gpu.md). A replay launches them all at once and runs the same
kernels with the same arguments, so the arithmetic is eager's (`tests/test_graphs.py`
checks bit for bit in the deterministic mode).

What a replay can't change is baked in at capture: the LR of the epoch, the `epoch` the
methods see (their warm-up factors, CTKD's λ), the batch shape. So a `StepGraph` serves
one epoch; the cohort makes a new one each epoch. Its first steps run eagerly, on a side
stream, as the capture's warm-up (they are real training steps: momentum buffers, the
accumulators and cuDNN's workspaces exist before capture); the step after is captured and
then replayed, with its batch copied into the graph's static input buffers and the step
number into a device scalar (the accumulators record the first non-finite step). A batch of
another shape (the last, partial one) runs eagerly. Failures: a member that fails in an
eager step leaves the graph, which is captured again without it; anything that raises
during a capture (a host sync in a method, an op CUDA graphs can't capture) turns graphs off
for the cohort with one warning, and that step and all after it run eagerly. Non-finite
losses are read from the accumulators once per epoch, as without graphs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch import Tensor

from kdbench.core.once import warn_once

#: CUDA compute capabilities on which `cuda_graphs: auto` captures, with the check that
#: verified it (bench/gpu_check.sh: replay equal to eager bit for bit, and faster). None
#: yet: no GPU has run it.
VERIFIED: dict[tuple[int, int], str] = {}

#: Eager steps before the first capture of a process (cuBLAS, cuDNN and the allocator warm
#: up), and before each later one (the epoch's accumulators are allocated by its first step).
FIRST_WARMUP, WARMUP = 3, 1

#: Counts of what graphs did in this process (`captures`, `replays`, `eager`, `fallbacks`), for
#: `kdbench doctor` and the tests.
STATS: Counter[str] = Counter()
_captured_once = False

#: The step a `StepGraph` runs: (images by view, targets, step number, capturing, *baked).
StepFn = Callable[..., None]


def unsupported(device: torch.device, precision: str, compiled: bool, distributed: bool) -> str | None:
    """Why a cohort's step can't be captured here (None: it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if precision == "fp16":
        return "fp16's gradient scalers decide on the host which steps to skip"
    if distributed:
        return "DDP's collectives are not captured"
    if compiled:
        return "options.compile makes graphs of its own"
    return None


def enabled(option: bool | str, device: torch.device, precision: str, compiled: bool = False,
            distributed: bool = False) -> bool:
    """Whether `cuda_graphs` (`auto`, true or false) captures here; `true` where it can't gives
    one warning and trains eagerly."""
    if option is False or option == "false":
        return False
    reason = unsupported(device, precision, compiled, distributed)
    if option == "auto":
        return reason is None and torch.cuda.get_device_capability(device) in VERIFIED
    if reason is not None:
        warn_once(f"options.cuda_graphs: {reason}; training eagerly")
        return False
    return True


class StepGraph:
    """Runs `fn` eagerly for the first steps, then as one captured CUDA graph replayed each step."""

    def __init__(self, fn: StepFn, device: torch.device, warmup: int | None = None):
        self.fn, self.device = fn, device
        self.warmup = (WARMUP if _captured_once else FIRST_WARMUP) if warmup is None else warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.disabled = False
        self.static: tuple[dict[str, Tensor], Tensor, Tensor] | None = None
        self.shape: tuple[Any, ...] | None = None
        self.side = torch.cuda.Stream(device)

    def __call__(self, step: int, images: dict[str, Tensor], targets: Tensor, *baked: Any) -> None:
        shape = (tuple((v, t.shape) for v, t in images.items()), targets.shape, baked)
        if self.shape is None:
            self.shape = shape
        if self.disabled or shape != self.shape:
            STATS["eager"] += 1
            self.fn(images, targets, step, False, *baked)
        elif self.graph is not None:
            static_images, static_targets, static_step = self.static  # type: ignore[misc]
            for view, tensor in images.items():
                static_images[view].copy_(tensor)
            static_targets.copy_(targets)
            static_step.fill_(step)
            self.graph.replay()
            STATS["replays"] += 1
        elif self.warmup > 0:
            self.warmup -= 1
            self._eager_on_side_stream(step, images, targets, baked)
        else:
            self._capture(step, images, targets, baked)

    def _eager_on_side_stream(self, step: int, images: dict[str, Tensor], targets: Tensor, baked: tuple) -> None:
        # As PyTorch's notes on whole-network capture do: warm-up off the ambient stream.
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self.fn(images, targets, step, False, *baked)
        current.wait_stream(self.side)
        STATS["eager"] += 1

    def _capture(self, step: int, images: dict[str, Tensor], targets: Tensor, baked: tuple) -> None:
        global _captured_once
        static = ({v: t.clone() for v, t in images.items()}, targets.clone(),
                  torch.full((), step, dtype=torch.long, device=self.device))
        graph = torch.cuda.CUDAGraph()
        ambient = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.fn(static[0], static[1], static[2], True, *baked)
        except Exception as exc:  # noqa: BLE001 -- whatever can't be captured trains eagerly
            # A failed capture_end skips restoring the stream the capture ran on: restore it.
            torch.cuda.set_stream(ambient)
            torch.cuda.synchronize(self.device)
            self.disabled = True
            STATS["fallbacks"] += 1
            warn_once(f"options.cuda_graphs: the cohort's step can't be captured ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); this cohort trains eagerly")
            self.fn(images, targets, step, False, *baked)
            return
        self.graph, self.static = graph, static
        _captured_once = True
        STATS["captures"] += 1
        graph.replay()  # capturing ran nothing: this replay is the step
        STATS["replays"] += 1

    def invalidate(self) -> None:
        """Drop the graph (a member left the step); the next step of this shape captures anew."""
        self.close()
        self.warmup = 0

    def close(self) -> None:
        """Release the graph and its memory."""
        if self.graph is not None:
            self.graph.reset()
        self.graph, self.static = None, None
