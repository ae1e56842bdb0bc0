"""Run records: reading `results/<grid>/runs/<run_id>/` into pandas frames.

Loading (this part): `load(results_dir, grid=None)` gives one row per run from every
`summary.json`; `load_metrics(results_dir, grid=None)` gives one row per finished epoch
from every `metrics.jsonl`. A file that cannot be read or parsed is skipped with a
`ResultsWarning`, never a crash: a run may be writing its record while we read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from kdbench.runs import records
from kdbench.errors import KdbenchError

__all__ = [
    "METRIC_COLUMNS", "SUMMARY_COLUMNS", "ResultsWarning", "grid_names", "load", "load_metrics",
]

# Every summary.json field (kdbench.runs.records.Summary, documented in docs/design.md); missing
# ones become NaN/None so that downstream code can rely on the columns existing.
SUMMARY_COLUMNS = list(records.SUMMARY_FIELDS)
_NUMERIC = [
    "teacher_top1", "epochs", "epochs_done", "final_top1", "final_top5", "best_top1", "best_epoch",
    "val_selected_top1", "best_val_epoch", "final_top1_teacher_wrong", "final_top1_teacher_right",
    "test_agreement", "test_agreement_teacher_wrong", "test_ece", "test_nll", "wall_seconds", "cohort_size",
]
# Columns every metrics frame has, whatever the epochs hold.
METRIC_COLUMNS = ["grid", "run_id", "epoch"]


class ResultsWarning(UserWarning):
    """A run record that could not be read and was skipped."""


grid_names = records.grid_names


def _run_dirs(results_dir: str | os.PathLike, grid: str | None) -> Iterator[tuple[str, Path]]:
    root = Path(results_dir)
    grids = grid_names(root)
    if grid is not None:
        if grid not in grids:
            known = ", ".join(grids) if grids else "none"
            raise KdbenchError(f"{root}/{grid}: no such grid in {root}/ (grids there: {known})")
        grids = [grid]
    for name in grids:
        for run in sorted((root / name / "runs").iterdir()):
            if run.is_dir():
                yield name, run


def _no_results(results_dir: str | os.PathLike) -> KdbenchError:
    return KdbenchError(f"no results under {Path(results_dir)}/: run `kdbench run GRID` first")


def _read_summary(run: Path) -> dict[str, Any] | None:
    try:
        summary = records.read_summary(run)
    except records.RecordError as exc:
        warnings.warn(f"{run / records.SUMMARY}: skipped, {exc.why}", ResultsWarning, stacklevel=3)
        return None
    return None if summary is None else summary.to_json()


def load(results_dir: str | os.PathLike = "results", grid: str | None = None) -> pd.DataFrame:
    """One row per run: every `<results_dir>/<grid>/runs/<run_id>/summary.json`.

    Columns are the summary fields (`SUMMARY_COLUMNS`, missing ones filled with NaN)
    plus `path` (the run folder) and `failure_reason`. Nested objects (`hparams`,
    `schedule`, `options`, `failure`, `environment`, `dataset_spec`) stay dict columns.
    `grid` is the grid folder's name. `run_id` defaults to the folder name.

    Raises `KdbenchError` when there is no readable summary at all, or when `grid` is
    given and is not a grid folder under `results_dir`.
    """
    rows = []
    for grid_name, run in _run_dirs(results_dir, grid):
        record = _read_summary(run)
        if record is None:
            continue  # no summary yet, or a damaged one (`kdbench verify` says why)
        record = dict(record)
        record["grid"] = grid_name
        record.setdefault("run_id", run.name)
        record["path"] = str(run)
        failure = record.get("failure")
        record["failure_reason"] = failure.get("reason") if isinstance(failure, dict) else None
        rows.append(record)
    if not rows:
        raise _no_results(results_dir)
    frame = pd.DataFrame(rows)
    for column in SUMMARY_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in _NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    order = SUMMARY_COLUMNS + ["path", "failure_reason"]
    return frame[order + [c for c in frame.columns if c not in order]].reset_index(drop=True)


def _read_metrics(run: Path) -> list[dict[str, Any]] | None:
    try:
        return records.read_metrics(run)  # the one reader: what `verify` calls damaged is skipped here
    except records.RecordError as exc:
        warnings.warn(f"{run / records.METRICS}: skipped, {exc.why}", ResultsWarning, stacklevel=3)
        return None


def load_metrics(results_dir: str | os.PathLike = "results", grid: str | None = None) -> pd.DataFrame:
    """One row per finished epoch: every `metrics.jsonl` under `results_dir` (or one grid).

    Columns: `grid`, `run_id` (the run folder's name), then the per-epoch fields of
    `docs/design.md` ("Run record"). Join with `load()` on `run_id` for the variant,
    pair and seed. An empty frame (with the `METRIC_COLUMNS`) when no run has metrics yet.
    """
    frames = []
    for grid_name, run in _run_dirs(results_dir, grid):
        rows = _read_metrics(run)
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        frame.insert(0, "run_id", run.name)
        frame.insert(0, "grid", grid_name)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["epoch"] = pd.to_numeric(out["epoch"], errors="coerce")
    return out
