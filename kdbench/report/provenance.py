"""Where the numbers come from: the software and devices the runs used, and the teacher files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.report.layout import Cell, Grid, View, finite
from kdbench.report.prepare import Prepared, text

__all__ = ["ENVIRONMENT", "TEACHERS", "environment_view", "shown_path", "teachers_view"]

ENVIRONMENT = "environment"
TEACHERS = "teachers"
# summary.json `environment` fields shown, in display order (kdbench.runs.environment.environment);
# fields a run does not record (an older kdbench) are left out.
_FIELDS = [("kdbench", "kdbench"), ("torch", "torch"), ("cuda", "CUDA"), ("cudnn", "cuDNN"), ("driver", "Driver"),
           ("device_name", "Device"), ("matmul_allow_tf32", "TF32 matmul"), ("git_commit", "Git commit"),
           ("git_dirty", "Uncommitted changes"), ("python", "Python"), ("hostname", "Host")]


def _env(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _records_grid(columns: list[tuple[str, str]]):
    def grid(frame: pd.DataFrame) -> Grid:
        rows = []
        for i, r in frame.iterrows():
            rows.append([Cell(value=r[c], source=(i, c)) if c == "teacher_top1" and finite(r[c])
                         else Cell(text=text(r[c]) or "—") for c, _ in columns])
        return Grid(header=[h for _, h in columns], rows=rows, align=["l"] * (len(columns) - 1) + ["r"])
    return grid


def environment_view(prep: Prepared) -> View:
    """One row per distinct software and device set-up of the done runs, with how many runs used it."""
    done = prep.done
    records = []
    for _, r in done.iterrows():
        env = _env(r.get("environment"))
        record = {key: text(env.get(key)) for key, _ in _FIELDS}
        record["device"] = text(r.get("device"))
        records.append(record)
    keys = [key for key, _ in _FIELDS] + ["device"]
    frame = pd.DataFrame(records, columns=keys)
    frame = frame.groupby(keys, sort=False, dropna=False).size().reset_index(name="runs")
    frame = frame.loc[:, [k for k in keys if frame[k].ne("").any()] + ["runs"]]
    columns = [(k, h) for k, h in _FIELDS + [("device", "Device string")] if k in frame.columns] + [("runs", "Runs")]
    notes = ["From each done run's `summary.json` (`environment`, `device`): the versions, device and git commit "
             "it trained with; a run resumed elsewhere lists the set-up of its last session."]
    return View(name=ENVIRONMENT, title="Provenance: software and devices", frame=frame, notes=notes,
                grid=_records_grid(columns), metric_free=True)


def shown_path(path: str, results_dir: str | Path | None) -> str:
    """`path` relative to `results_dir` when it lies inside it (a teacher trained in the grid), else as recorded.

    A report is shared beyond the machine it was made on: a path inside the results folder
    says more, and reveals less, relative to that folder.
    """
    if not path or results_dir is None:
        return path
    try:
        return Path(path).resolve().relative_to(Path(results_dir).resolve()).as_posix()
    except ValueError:
        return path


def teachers_view(prep: Prepared, results_dir: str | Path | None = None) -> View | None:
    """One row per teacher file: architecture, checkpoint, SHA-256, measured top-1, runs (None without teachers).

    Checkpoints inside `results_dir` are shown relative to it (`shown_path`).
    """
    done = prep.done[prep.done["teacher"] != ""]
    if done.empty:
        return None
    keys = ["teacher", "teacher_checkpoint", "teacher_sha256"]
    frame = done.assign(**{k: done[k].map(text) for k in keys})
    frame["teacher_checkpoint"] = frame["teacher_checkpoint"].map(lambda p: shown_path(p, results_dir))
    frame = frame.groupby(keys, sort=False).agg(teacher_top1=("teacher_top1", "mean"),
                                                 runs=("run_id", "size")).reset_index()
    columns = [("teacher", "Teacher"), ("teacher_checkpoint", "Checkpoint"), ("teacher_sha256", "SHA-256"),
               ("runs", "Runs"), ("teacher_top1", "Test top-1")]
    frame = frame[[c for c, _ in columns]]
    notes = ["The teacher checkpoint each run loaded (relative to the results folder when it lies inside it), "
             "its SHA-256 and the test top-1 (%) kdbench measured on it."]
    return View(name=TEACHERS, title="Provenance: teachers", frame=frame, notes=notes,
                grid=_records_grid(columns), metric_free=True)
