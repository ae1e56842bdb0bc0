"""Which faults are one member's and which stop a whole cohort; `KDBENCH_DEBUG` for debuggers.

A member's fault (a bug in its method, a corrupt checkpoint of its own, a non-finite loss)
fails that member and leaves the others training. A fault of the cohort (its teacher, out
of memory, a CUDA error that poisons the context, a collective that broke under DDP) stops
the cohort with every member left resumable.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from kdbench.errors import KdbenchError

#: Set to 1 to re-raise instead of recording failures, so that a debugger stops at the fault.
DEBUG_ENV = "KDBENCH_DEBUG"

# Messages of errors that leave the device or the process group unusable.
_CONTEXT_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "NCCL", "device-side assert",
                   "illegal memory access", "Connection closed by peer", "Connection reset by peer")


#: Write errors that no retry fixes: the disk is full, or the folder is read-only or not ours.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class CohortFault(Exception):
    """A fault that is not one member's: the cohort stops, its members stay resumable."""


class StorageFault(KdbenchError):
    """Results can't be written (disk full, read-only folder): the worker stops, exit code 2.

    Writes are atomic, so the last good checkpoint and records stay as they were and the
    same command resumes exactly once the cause is fixed.
    """


@contextmanager
def writing(path: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full disk or a read-only folder while writing `path` (default: the file the
    error names) into a one-line `StorageFault`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        where = Path(path) if path is not None else exc.filename
        raise StorageFault(f"cannot write {where}: {exc.strerror or exc}; fix that and run the same command "
                           "again to resume from the last checkpoint") from None


def is_cohort_fault(exc: BaseException) -> bool:
    """True for a `CohortFault` and for the faults of the machine (`is_resource_fault`)."""
    return isinstance(exc, CohortFault) or is_resource_fault(exc)


def is_resource_fault(exc: BaseException) -> bool:
    """True for faults of the machine rather than of the runs: out of memory (host or device),
    an error that poisons the CUDA context, a broken collective. Retrying the same cohort on
    the same settings meets them again; the runs themselves are sound."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError) and any(text in str(exc) for text in _CONTEXT_ERRORS):
        return True
    return type(exc).__name__ == "DistBackendError"


def debugging() -> bool:
    """True when `KDBENCH_DEBUG=1`: failures re-raise instead of being recorded."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def reraise_for_debugging() -> None:
    """Inside an `except` block: re-raise the exception being handled when debugging."""
    if debugging() and sys.exc_info()[1] is not None:
        raise
