"""Views of per-run facts: accuracy where the teacher is wrong / right, cost, runs not done."""

from __future__ import annotations

import math
from typing import Any, Hashable

import pandas as pd

from kdbench.report.layout import Cell, Grid, View, finite, pivot
from kdbench.report.prepare import Prepared, order, text

__all__ = ["cost_view", "duration", "not_done_view", "teacher_split_view"]


def _two(x: Any) -> str:
    return f"{x:.2f}" if finite(x) else "—"


def _teacher_split_grid(frame: pd.DataFrame) -> Grid:
    def cell(r: pd.Series, i: Hashable) -> Cell:
        return Cell(text=f"{_two(r['teacher_wrong_mean'])} / {_two(r['teacher_right_mean'])}")

    return pivot(frame, rows=list(dict.fromkeys(frame["variant"])), columns=list(dict.fromkeys(frame["column"])),
                 column_key="column", cell=cell)


def teacher_split_view(prep: Prepared) -> View | None:
    """Per variant × pair: last-epoch top-1 on the samples the teacher gets wrong / right (None without data)."""
    runs = prep.runs.copy()
    for col in ("final_top1_teacher_wrong", "final_top1_teacher_right"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    if runs[["final_top1_teacher_wrong", "final_top1_teacher_right"]].notna().sum().sum() == 0:
        return None
    data = []
    for v in prep.variants:
        for c in prep.columns:
            sel = runs[(runs["variant"] == v) & (runs["column"] == c)]
            wrong, right = sel["final_top1_teacher_wrong"].dropna(), sel["final_top1_teacher_right"].dropna()
            if wrong.empty and right.empty:
                continue
            data.append({"variant": v, "column": c, "teacher_wrong_mean": wrong.mean() if len(wrong) else math.nan,
                         "teacher_right_mean": right.mean() if len(right) else math.nan, "n": len(sel)})
    notes = ["Last-epoch test top-1 (%) on the test samples the teacher classifies wrongly / correctly; mean over seeds."]
    frame = pd.DataFrame(data, columns=["variant", "column", "teacher_wrong_mean", "teacher_right_mean", "n"])
    return View(name="teacher_wrong_right", title="Top-1 where the teacher is wrong / right (last epoch)",
                frame=frame, notes=notes, grid=_teacher_split_grid, metric_free=True)


def _device_kind(device: Any) -> str:
    d = text(device).lower()
    if d.startswith("cuda"):
        return "GPU"
    if d.startswith("cpu") or not d:
        return "CPU"
    return d.split(":")[0].upper()


_KIND_NOTES = {"GPU": "GPU-hours: runs on cuda devices", "CPU": "CPU-hours: runs on the CPU (not GPU time)"}


def duration(seconds: float) -> str:
    """A wall time for people: `12.3 s`, `4.5 min`, `3h 05m`; `—` when unknown."""
    if not finite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.1f} min"
    return f"{int(minutes // 60)}h {int(round(minutes % 60)):02d}m"


def _cost_grid(frame: pd.DataFrame) -> Grid:
    kinds = [c.removesuffix("_hours") for c in frame.columns if c.endswith("_hours")]
    rows = []
    for i, r in frame.iterrows():
        rows.append([Cell(text=r["column"]), Cell(text=str(int(r["runs"]))), Cell(text=str(int(r["cohorts"]))),
                     Cell(text=duration(r["wall_per_cohort_s"])), Cell(text=duration(r["per_run_s"]))]
                    + [Cell(value=r[f"{k}_hours"], source=(i, f"{k}_hours")) for k in kinds])
    header = ["Pair", "Runs", "Cohorts", "Wall per cohort", "Per run (amortised)"] + [f"{k.upper()}-hours" for k in kinds]
    return Grid(header=header, rows=rows)


def cost_view(prep: Prepared) -> View | None:
    """Per pair: runs, cohorts, wall time per cohort, amortised time per run, device-hours (None if no times)."""
    done = prep.done.copy()
    done["wall_seconds"] = pd.to_numeric(done["wall_seconds"], errors="coerce")
    if done.empty or done["wall_seconds"].notna().sum() == 0:
        return None
    size = pd.to_numeric(done["cohort_size"], errors="coerce").fillna(1).clip(lower=1)
    done["per_run"] = done["wall_seconds"] / size
    done["kind"] = [_device_kind(d) for d in done["device"]]
    kinds = sorted(done["kind"].unique(), key=lambda k: (k != "GPU", k != "CPU", k))
    data = []

    def add(label: str, sel: pd.DataFrame) -> None:
        cohort_wall = sel.groupby(sel["cohort"].astype(str))["wall_seconds"].max()
        data.append({"column": label, "runs": len(sel), "cohorts": sel["cohort"].astype(str).nunique(),
                     "wall_per_cohort_s": cohort_wall.mean(), "per_run_s": sel["per_run"].mean(),
                     **{f"{k.lower()}_hours": sel.loc[sel["kind"] == k, "per_run"].sum() / 3600 for k in kinds}})

    columns = order(done["column"], prep.columns)
    for c in columns:
        add(c, done[done["column"] == c])
    if len(columns) > 1:
        add("Total", done)
    notes = ["Members of a cohort share one teacher forward and the cohort's wall time; a run's cost is amortised as "
             "cohort wall time / cohort size. Method costs within a cohort are not separable: see `kdbench bench`.",
             "; ".join(_KIND_NOTES.get(k, f"{k}-hours: runs on {k.lower()} devices") for k in kinds) + ". Done runs only."]
    return View(name="cost", title="Cost", frame=pd.DataFrame(data), notes=notes, grid=_cost_grid, metric_free=True)


_NOT_DONE_HEADER = ["Run", "Pair", "Method", "Seed", "Status", "Epochs", "Failure"]


def _not_done_grid(frame: pd.DataFrame) -> Grid:
    rows = []
    for _, r in frame.iterrows():
        epochs = f"{text(r['epochs_done']).split('.')[0] or '0'}/{text(r['epochs']).split('.')[0] or '?'}"
        rows.append([Cell(text=text(r["run_id"])), Cell(text=r["column"]), Cell(text=r["variant"]),
                     Cell(text=text(r["seed"])), Cell(text=text(r["status"]) or "?"), Cell(text=epochs),
                     Cell(text=text(r["failure_reason"]) or "—")])
    return Grid(header=list(_NOT_DONE_HEADER), rows=rows)


def not_done_view(prep: Prepared) -> View | None:
    """Runs that are running or failed, with the failure reason (None when every run is done)."""
    nd = prep.not_done
    if nd is None or nd.empty:
        return None
    data = []
    nd = nd.sort_values(["status", "column", "variant", "seed"], key=lambda s: s.astype(str))
    for _, r in nd.iterrows():
        failure = r.get("failure") if isinstance(r.get("failure"), dict) else {}
        reason = text(failure.get("reason"))
        if failure.get("epoch") is not None:
            reason += f" (epoch {failure['epoch']})"
        data.append({"run_id": r["run_id"], "column": r["column"], "variant": r["variant"], "seed": r["seed"],
                     "status": r["status"], "epochs_done": r["epochs_done"], "epochs": r["epochs"],
                     "failure_reason": reason})
    return View(name="not_done", title="Runs not done (not averaged)", frame=pd.DataFrame(data),
                notes=["Re-run `kdbench run GRID` to resume running or failed runs."], grid=_not_done_grid,
                metric_free=True)
