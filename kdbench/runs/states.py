"""A run's derived state (done, failed, running, partial, new, damaged) from its files and lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdbench.runs import records
from kdbench.runs.locks import LockState, LockWatch
from kdbench.grid.plan import config_hash
from kdbench.runs.records import Layout, RecordError, RunState, Status


def config_problem(run_dir: Path) -> str | None:
    """Why the run folder's `config.yaml` does not belong to its run id, or None (also when absent)."""
    path = Path(run_dir) / records.CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: unreadable ({exc})"
    try:
        stored: Any = yaml.safe_load(text)
        found = config_hash(stored)
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        return f"{path}: not a run config ({type(exc).__name__})"
    if found != Path(run_dir).name:
        return f"{path}: hashes to {found}, not to its run id {Path(run_dir).name} (edited by hand?)"
    return None


def run_state(layout: Layout, run_id: str, watch: LockWatch | None = None) -> tuple[RunState, int]:
    """(state, epochs done) of a run: the record's final status, else running (a live lock),
    partial (finished epochs) or new; damaged when its record can't be trusted."""
    run_dir = layout.run_dir(run_id)
    if config_problem(run_dir):
        return RunState.DAMAGED, records.epochs_recorded(run_dir)
    try:
        summary = records.read_summary(run_dir)
        metrics = records.read_metrics(run_dir)
    except RecordError:
        return RunState.DAMAGED, records.epochs_recorded(run_dir)
    if summary is not None and summary.status in (Status.DONE, Status.FAILED):
        if summary.status == Status.DONE and len(metrics) != summary.epochs_done:
            return RunState.DAMAGED, len(metrics)
        return RunState(summary.status.value), summary.epochs_done
    view = (watch or LockWatch()).observe(layout.lock(run_id))
    if view.state == LockState.LIVE:
        return RunState.RUNNING, len(metrics)
    return (RunState.PARTIAL if metrics or (run_dir / records.CHECKPOINT).exists() else RunState.NEW), len(metrics)


def final(state: RunState) -> bool:
    """True for the states that need no more training."""
    return state in (RunState.DONE, RunState.FAILED)
