"""How workers are started on this host or a cluster, from one `WorkerSpec` each.

The spec (`kdbench.launch.spec`) is built once from the command line and passed unchanged
to the in-process worker, the per-device subprocesses (as their command line) and the
submitit jobs (as their argument).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.core.console import console
from kdbench.errors import KdbenchError
from kdbench.core import devices
from kdbench.launch.worker import Worker
from kdbench.train.progress import GridProgress
from kdbench.launch.spec import WorkerSpec, prepare_process


def run_on_devices(spec: WorkerSpec, devices: list[str]) -> list[int]:
    """One worker process per device on this host; they share the claims. Returns their exit codes."""
    env = dict(os.environ)
    cpu_workers = sum(1 for d in devices if d == "cpu")
    if cpu_workers > 1 and "OMP_NUM_THREADS" not in env:
        # CPU workers share the cores: one thread pool each would oversubscribe them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
    procs = [subprocess.Popen(spec.on(device, f"[{device}] ").argv(), env=env) for device in devices]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        return [130] * len(procs)


@dataclass(frozen=True)
class SlurmOptions:
    """How to submit (not what to train): job count, partition, time limit, log folder, wait."""

    jobs: int | None = None
    partition: str | None = None
    timeout_min: int = 24 * 60
    folder: str | None = None
    wait: bool = False
    cluster: str | None = None  # None: Slurm if available, else local (submitit's AutoExecutor)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SlurmOptions":
        return cls(jobs=args.slurm_jobs, partition=args.slurm_partition, timeout_min=args.slurm_timeout_min,
                   folder=args.slurm_folder, wait=bool(getattr(args, "wait", False)))


def submit_slurm(spec: WorkerSpec, grid_name: str, num_cohorts: int, slurm: SlurmOptions) -> list[int] | None:
    """Submit worker jobs through submitit; they claim runs like local workers.

    With `slurm.wait`, waits and returns the jobs' exit codes (2 for a job that raised);
    otherwise returns None once they are submitted.
    """
    try:
        import submitit
    except ImportError:
        raise KdbenchError("--executor slurm needs submitit: pip install 'kdbench[slurm]'") from None
    folder = Path(slurm.folder or Path(spec.results_dir) / grid_name / "slurm")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=slurm.cluster)
    params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "name": f"kdbench-{grid_name}"}
    if executor.cluster == "slurm":
        params.update(slurm_gpus_per_node=1, slurm_ntasks_per_node=1)
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    count = slurm.jobs or num_cohorts
    job_spec = dataclasses.replace(spec, device=spec.device or ("cuda" if executor.cluster == "slurm" else None))
    jobs = executor.map_array(worker_job, [job_spec] * count)
    console().print(f"submitted {len(jobs)} worker jobs ({executor.cluster}); logs in {folder}. "
                    f"`kdbench status {spec.grid_path}` shows progress.")
    if not slurm.wait:
        return None
    codes = []
    for job in jobs:
        try:
            codes.append(int(job.result()["exit_code"]))
        except Exception as exc:  # the job itself crashed: submitit re-raises its error here
            console().print(f"job {job.job_id} failed: {' '.join(str(exc).split())[:300]}", markup=False)
            codes.append(2)
    return codes


def combined_exit_code(codes: list[int]) -> int:
    """One exit code for several workers: 2 if one could not run, else 130, else 1, else 0."""
    for code in (2, 130, 1):
        if code in codes:
            return code
    return max(codes, default=0)


def worker_job(spec: WorkerSpec) -> dict[str, Any]:
    """Entry point of a submitit job: one worker on this node's device."""
    progress = None
    try:
        prepare_process(spec)
        worker = Worker(dataclasses.replace(spec, device=devices.parse_many(spec.device, many=False)[0]))
        progress = GridProgress(len(worker.runs), 0, prefix=spec.log_prefix)
        outcome = worker.run(progress)
    except KdbenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return {"exit_code": 2, "trained": [], "failed": [], "error": str(exc)}
    finally:
        if progress is not None:
            progress.close()
    return {"exit_code": outcome.exit_code, "trained": outcome.trained, "failed": outcome.failed}
