"""Provenance of a run: the versions, hardware and numerics flags every summary records under
`environment` (`environment(device)`), with the CPU's name and the NVIDIA driver's version.
The deterministic mode that some of these flags report lives in `kdbench.train.determinism`.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # kdbench/
_SMI_TIMEOUT = 2.0  # seconds; a hung driver must not hold up a run


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
