"""The worker spec: everything a worker needs to know, built once from the command line.

Anything on the command line that changes what a worker trains belongs here, so that no
launch path (in process, one subprocess per device, submitit jobs) can drop it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from kdbench import methods
from kdbench.grid import config, overrides, schema


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to know, as plain data (it travels to subprocesses and jobs)."""

    grid_path: str
    results_dir: str = "results"
    data_dir: str | None = None  # as given on the command line
    device: str | None = None  # this worker's one device (None: the default)
    only: str | None = None
    retry_failed: bool = False
    methods_dirs: tuple[str, ...] = ()
    log_prefix: str = ""
    overrides: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "WorkerSpec":
        """The spec of `kdbench run`'s arguments (`device` as given, possibly a list)."""
        return cls(
            grid_path=str(args.grid), results_dir=str(args.results_dir), data_dir=args.data_dir,
            device=args.device, only=args.only, retry_failed=bool(args.retry_failed),
            methods_dirs=tuple(str(Path(d).resolve()) for d in getattr(args, "methods_dir", []) or []),
            log_prefix=getattr(args, "log_prefix", "") or "", overrides=tuple(getattr(args, "set", None) or ()),
        )

    def on(self, device: str, prefix: str = "") -> "WorkerSpec":
        """The same spec for one device, with a log prefix."""
        return dataclasses.replace(self, device=device, log_prefix=prefix)

    def argv(self) -> list[str]:
        """The `kdbench run --worker` command line of this spec."""
        cmd = [sys.executable, "-m", "kdbench", "run", self.grid_path, "--results-dir", self.results_dir,
               "--worker", "--log-prefix", self.log_prefix]
        if self.device:
            cmd += ["--device", self.device]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.only:
            cmd += ["--only", self.only]
        if self.retry_failed:
            cmd += ["--retry-failed"]
        for folder in self.methods_dirs:
            cmd += ["--methods-dir", folder]
        for override in self.overrides:
            cmd += ["--set", override]
        return cmd


def load_grid(spec: WorkerSpec) -> schema.Grid:
    """The grid the spec names, with its overrides applied."""
    if spec.overrides:
        return overrides.load_grid(spec.grid_path, spec.overrides)
    return config.load_grid(spec.grid_path)


def prepare_process(spec: WorkerSpec) -> None:
    """Set up a fresh process (a submitit job) as the command line would: plug-in method folders."""
    for folder in spec.methods_dirs:
        if Path(folder) not in methods.search_dirs():
            methods.add_search_path(folder)
