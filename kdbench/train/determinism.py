"""The deterministic mode (`options.deterministic: true`) and the recorder of the ops that ran
without a deterministic implementation::

    determinism.set_deterministic(device, options["deterministic"])   # before building models
    with determinism.NondeterminismRecorder() as recorder:
        ...train...                       # recorder.ops: names, in order of first use
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import torch

#: cuBLAS workspace settings under which cuBLAS is deterministic (NVIDIA's cuBLAS docs).
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")
#: What a launcher puts in a worker's environment for `options.deterministic: true`, so
#: cuBLAS reads it before CUDA initialises in that process.
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


class DeterminismWarning(RuntimeWarning):
    """The deterministic mode could not be fully set up."""


def set_deterministic(device: torch.device | str, enabled: bool = True) -> None:
    """Turn the deterministic mode on (or, with `enabled=False`, back to PyTorch's defaults).

    On: `torch.use_deterministic_algorithms(True, warn_only=True)`, cuDNN benchmark off and
    deterministic on, and `CUBLAS_WORKSPACE_CONFIG=:4096:8` when it is not already one of the
    deterministic settings. cuBLAS reads that variable once, when CUDA first uses it, so it
    is set only while CUDA is not yet initialised in this process. If CUDA is already
    initialised and the variable is missing, it is left unset, a `DeterminismWarning` says so
    (on a GPU), and PyTorch's own alert at the first cuBLAS call is recorded as a
    non-deterministic op by `NondeterminismRecorder`; setting the variable late would hide
    that alert without making cuBLAS deterministic. Launchers avoid this by starting workers
    with `DETERMINISTIC_ENV`. The process-wide state depends only on `enabled`, so a worker
    can call this before every cohort.
    """
    device = torch.device(device)
    torch.use_deterministic_algorithms(enabled, warn_only=enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
    if not enabled or os.environ.get("CUBLAS_WORKSPACE_CONFIG") in CUBLAS_DETERMINISTIC_CONFIGS:
        return
    if not torch.cuda.is_initialized():
        os.environ.update(DETERMINISTIC_ENV)
    elif device.type == "cuda":
        warnings.warn(
            "deterministic mode: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set, so cuBLAS may not be "
            "deterministic in this process; start it with CUBLAS_WORKSPACE_CONFIG=:4096:8",
            DeterminismWarning, stacklevel=2,
        )


# PyTorch's warn_only alerts: "<op> does not have a deterministic implementation, but you
# set ..." and, for cuBLAS without a deterministic workspace, "Deterministic behavior was
# enabled with ... but this operation is not deterministic because it uses CuBLAS ...".
_ALERT = re.compile(r"(?s)(.*?) does not have a deterministic implementation")
_CUBLAS_ALERT = "Deterministic behavior was enabled"
_FILTERS = (r".*does not have a deterministic implementation", _CUBLAS_ALERT)
CUBLAS_OP = "cuBLAS (CUBLAS_WORKSPACE_CONFIG is not :4096:8 or :16:8)"


class NondeterminismRecorder:
    """A context manager collecting the ops that ran without a deterministic implementation.

    Inside it, PyTorch's warn_only alerts are recorded (`ops`: distinct op names in order
    of first use) instead of printed; other warnings pass through as usual. Warnings
    module state is process-wide: use one recorder at a time, around a cohort's training.
    """

    def __init__(self) -> None:
        self.ops: list[str] = []
        self._catcher: Any = None

    def __enter__(self) -> "NondeterminismRecorder":
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()  # also resets the once-per-location registries
        previous = warnings.showwarning

        def show(message: Any, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            op = alert_op(str(message))
            if op is None:
                previous(message, category, filename, lineno, file, line)
            elif op not in self.ops:
                self.ops.append(op)

        warnings.showwarning = show
        for pattern in _FILTERS:
            # "default": each distinct alert reaches `show` once per location, whatever
            # filters the caller set (even "error" or "ignore" for UserWarning).
            warnings.filterwarnings("default", message=pattern, category=UserWarning)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)


def alert_op(message: str) -> str | None:
    """The op named by one of PyTorch's non-determinism alerts, or None for any other message."""
    if message.startswith(_CUBLAS_ALERT) and "CuBLAS" in message:
        return CUBLAS_OP
    match = _ALERT.match(message)
    return match.group(1).strip() if match else None
