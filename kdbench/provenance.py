"""Provenance of a run (versions, hardware, numerics flags) and the deterministic mode.

`environment(device)` is what every summary records under `environment`. The deterministic
mode (`options.deterministic: true`) is `set_deterministic(device)`; ops that PyTorch can
only run non-deterministically still run (warn_only) and `NondeterminismRecorder` collects
their names for the run record::

    provenance.set_deterministic(device, options["deterministic"])   # before building models
    with provenance.NondeterminismRecorder() as recorder:
        ...train...                       # recorder.ops: names, in order of first use
    summary["environment"] = provenance.environment(device)
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch

#: cuBLAS workspace settings under which cuBLAS is deterministic (NVIDIA's cuBLAS docs).
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")
#: What a launcher puts in a worker's environment for `options.deterministic: true`, so
#: cuBLAS reads it before CUDA initialises in that process.
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

_PACKAGE_DIR = Path(__file__).resolve().parent
_SMI_TIMEOUT = 2.0  # seconds; a hung driver must not hold up a run


class DeterminismWarning(RuntimeWarning):
    """The deterministic mode could not be fully set up."""


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, hardware and numerics flags, as every run summary records them.

    Keys: kdbench, torch, cuda (CUDA version torch was built with), device_name (GPU or CPU
    model), git_commit, git_dirty, python, hostname, threads, interop_threads, cpu_name,
    cpu_count, cudnn (version, or None), gpu_count, gpu_name and gpu_capability (None off a
    GPU), driver (NVIDIA driver version, or None), the flags matmul_allow_tf32,
    cudnn_allow_tf32, float32_matmul_precision, cudnn_enabled, cudnn_benchmark,
    cudnn_deterministic, deterministic_algorithms, deterministic_warn_only, and
    cublas_workspace_config. Cheap: the slow parts (git, the driver) are read once per process.
    """
    from kdbench import __version__

    device = torch.device(device)
    on_gpu = device.type == "cuda"
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_name = capability = None
    if on_gpu:
        gpu_name = torch.cuda.get_device_name(device)
        capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
    commit, dirty = _git_state()
    cudnn = torch.backends.cudnn
    return {
        "kdbench": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "device_name": gpu_name if on_gpu else (cpu_name() or platform.machine()),
        "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
        "hostname": socket.gethostname(), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "cpu_name": cpu_name(), "cpu_count": os.cpu_count(),
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "gpu_count": gpu_count, "gpu_name": gpu_name, "gpu_capability": capability,
        "driver": driver_version() if gpu_count else None,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_allow_tf32": cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_enabled": cudnn.enabled, "cudnn_benchmark": cudnn.benchmark, "cudnn_deterministic": cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


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


# -- slow facts, read once ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def driver_version() -> str | None:
    """The NVIDIA driver version (pynvml if installed, else nvidia-smi with a 2 s limit), or None."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 -- not installed, no driver: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=_SMI_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


@functools.lru_cache(maxsize=None)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the kdbench checkout this code runs from, or (None, None).

    Read once: the code a process runs is the code it imported at its start.
    """
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=_PACKAGE_DIR)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # An installed copy inside some other repository (a venv in a project) is not a checkout.
    if not top or Path(top).resolve() != _PACKAGE_DIR.parent:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") or None, None if status is None else bool(status)


@functools.lru_cache(maxsize=None)
def cpu_name() -> str | None:
    """The CPU model from /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
