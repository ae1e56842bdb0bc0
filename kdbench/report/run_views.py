"""Views of per-run facts: the runs themselves, best-on-test against last epoch, accuracy where the
teacher is wrong / right, cost, and the runs not done."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Hashable

import pandas as pd

from kdbench.report import stats
from kdbench.report.layout import Cell, Grid, View, finite, number, pivot
from kdbench.report.prepare import Prepared, order, text

__all__ = ["COST", "NOT_DONE", "RUNS", "SELECTION", "TEACHER_SPLIT", "cost_view", "duration", "not_done_view", "runs_view", "selection_view",
           "teacher_split_view"]

RUNS = "runs"
COST = "cost"
NOT_DONE = "not_done"
SELECTION = "best_vs_last"
TEACHER_SPLIT = "teacher_wrong_right"
LAST_EPOCH_WHY = ("kdbench README, “What is measured, and why last-epoch”; megvii-research/mdistiller#30, "
                  "sunshangquan/logit-standardization-KD#23")


def _two(x: Any) -> str:
    return number(x) if finite(x) else "—"


def _teacher_split_grid(frame: pd.DataFrame) -> Grid:
    def cell(r: pd.Series, i: Hashable) -> Cell:
        return Cell(text=f"{_two(r['teacher_wrong_mean'])} / {_two(r['teacher_right_mean'])}")

    return pivot(frame, rows=list(dict.fromkeys(frame["variant"])), columns=list(dict.fromkeys(frame["pair"])),
                 cell=cell)


def teacher_split_view(prep: Prepared) -> View | None:
    """Per variant × pair: last-epoch top-1 on the samples the teacher gets wrong / right (None without data)."""
    runs = prep.runs.copy()
    for col in ("final_top1_teacher_wrong", "final_top1_teacher_right"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    if runs[["final_top1_teacher_wrong", "final_top1_teacher_right"]].notna().sum().sum() == 0:
        return None
    data = []
    for v in prep.variants:
        for c in prep.pairs:
            sel = runs[(runs["variant"] == v) & (runs["pair"] == c)]
            wrong, right = sel["final_top1_teacher_wrong"].dropna(), sel["final_top1_teacher_right"].dropna()
            if wrong.empty and right.empty:
                continue
            data.append({"variant": v, "pair": c, "teacher_wrong_mean": wrong.mean() if len(wrong) else math.nan,
                         "teacher_right_mean": right.mean() if len(right) else math.nan, "n": len(sel)})
    notes = ["Last-epoch test top-1 (%) on the test samples the teacher classifies wrongly / correctly; mean over seeds."]
    frame = pd.DataFrame(data, columns=["variant", "pair", "teacher_wrong_mean", "teacher_right_mean", "n"])
    return View(name=TEACHER_SPLIT, title="Top-1 where the teacher is wrong / right (last epoch)",
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
        rows.append([Cell(text=r["pair"]), Cell(text=str(int(r["runs"]))), Cell(text=str(int(r["cohorts"]))),
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
        data.append({"pair": label, "runs": len(sel), "cohorts": sel["cohort"].astype(str).nunique(),
                     "wall_per_cohort_s": cohort_wall.mean(), "per_run_s": sel["per_run"].mean(),
                     **{f"{k.lower()}_hours": sel.loc[sel["kind"] == k, "per_run"].sum() / 3600 for k in kinds}})

    pairs = order(done["pair"], prep.pairs)
    for c in pairs:
        add(c, done[done["pair"] == c])
    if len(pairs) > 1:
        add("Total", done)
    notes = ["Members of a cohort share one teacher forward and the cohort's wall time; a run's cost is amortised as "
             "cohort wall time / cohort size. Method costs within a cohort are not separable: see `kdbench bench`.",
             "; ".join(_KIND_NOTES.get(k, f"{k}-hours: runs on {k.lower()} devices") for k in kinds) + ". Done runs only."]
    return View(name=COST, title="Cost", frame=pd.DataFrame(data), notes=notes, grid=_cost_grid, metric_free=True)


def _not_done_grid(frame: pd.DataFrame) -> Grid:
    with_log = bool(frame["error_log"].map(text).ne("").any())
    rows = []
    for _, r in frame.iterrows():
        epochs = f"{text(r['epochs_done']).split('.')[0] or '0'}/{text(r['epochs']).split('.')[0] or '?'}"
        row = [Cell(text=text(r["run_id"])), Cell(text=r["pair"]), Cell(text=r["variant"]),
               Cell(text=text(r["seed"])), Cell(text=text(r["status"]) or "?"), Cell(text=epochs),
               Cell(text=text(r["failure_reason"]) or "—")]
        rows.append(row + ([Cell(text=text(r["error_log"]) or "—")] if with_log else []))
    header = ["Run", "Pair", "Method", "Seed", "Status", "Epochs", "Failure"] + (["Error log"] if with_log else [])
    return Grid(header=header, rows=rows)


def not_done_view(prep: Prepared) -> View | None:
    """Runs that are running or failed, with the failure reason and error log (None when every run is done)."""
    nd = prep.not_done
    if nd.empty:
        return None
    data = []
    nd = nd.sort_values(["status", "pair", "variant", "seed"], key=lambda s: s.astype(str))
    for _, r in nd.iterrows():
        failure = r.get("failure") if isinstance(r.get("failure"), dict) else {}
        reason = text(failure.get("reason"))
        if failure.get("epoch") is not None:
            reason += f" (epoch {failure['epoch']})"
        log = text(failure.get("error_log"))
        if log and text(r.get("path")):
            log = str(Path(text(r["path"])) / log)  # the run folder's file, as the results folder was given
        data.append({"run_id": r["run_id"], "pair": r["pair"], "variant": r["variant"], "seed": r["seed"],
                     "status": r["status"], "epochs_done": r["epochs_done"], "epochs": r["epochs"],
                     "failure_reason": reason, "error_log": log})
    notes = ["Re-run `kdbench run GRID` to resume running or failed runs."]
    if any(d["error_log"] for d in data):
        notes.append("Error log: the traceback of the exception that failed the run.")
    return View(name=NOT_DONE, title="Runs not done (not averaged)", frame=pd.DataFrame(data), notes=notes,
                grid=_not_done_grid, metric_free=True)


def runs_view(prep: Prepared) -> View:
    """Every value averaged in the report: one row per run and pair (a teacherless run once per pair it fills)."""
    frame = prep.runs[["variant", "pair", "teacher", "student", "seed", "value", "run_id"]].copy()
    frame.insert(5, "metric", prep.metric)
    return View(name=RUNS, title=f"Runs ({prep.info.short})", frame=frame.reset_index(drop=True))


_SELECTION_HEADER = ["Method", "Runs", "Last epoch", "Best on test", "Best − last", "Median", "Max",
                     "Best epoch ≠ last"]


def _selection_grid(frame: pd.DataFrame) -> Grid:
    rows = []
    for i, r in frame.iterrows():
        rows.append([Cell(text=r["variant"]), Cell(text=str(int(r["runs"]))),
                     Cell(value=r["last_mean"], source=(i, "last_mean")),
                     Cell(value=r["best_mean"], source=(i, "best_mean")),
                     Cell(value=r["optimism_mean"], std=r["optimism_std"] if finite(r["optimism_std"]) else None,
                          signed=True, source=(i, "optimism_mean")),
                     Cell(value=r["optimism_median"], signed=True, source=(i, "optimism_median")),
                     Cell(value=r["optimism_max"], signed=True, source=(i, "optimism_max")),
                     Cell(text=f"{int(r['best_not_last'])}/{int(r['runs'])}")])
    return Grid(header=list(_SELECTION_HEADER), rows=rows, rule_after=(len(rows) - 2,) if len(rows) > 2 else ())


def selection_view(prep: Prepared) -> View | None:
    """Per method: last-epoch against best-epoch-on-test top-1 of the same runs, and their difference.

    The difference is how much choosing the epoch on the test set adds (None without both numbers).
    """
    done = prep.done.copy()
    for column in ("final_top1", "best_top1", "best_epoch", "epochs_done"):
        done[column] = pd.to_numeric(done[column], errors="coerce")
    done = done[done["final_top1"].notna() & done["best_top1"].notna()]
    if done.empty:
        return None
    done["optimism"] = done["best_top1"] - done["final_top1"]
    data = []

    def add(label: str, sel: pd.DataFrame) -> None:
        mean, std, n = stats.mean_std(sel["optimism"].tolist())
        not_last = (sel["best_epoch"].notna() & (sel["best_epoch"] < sel["epochs_done"])).sum()
        data.append({"variant": label, "runs": n, "last_mean": sel["final_top1"].mean(),
                     "best_mean": sel["best_top1"].mean(), "optimism_mean": mean, "optimism_std": std,
                     "optimism_median": sel["optimism"].median(), "optimism_max": sel["optimism"].max(),
                     "best_not_last": int(not_last)})

    for v in order(done["variant"], prep.variants):
        add(v, done[done["variant"] == v])
    if done["variant"].nunique() > 1:
        add("All runs", done)
    notes = ["Test top-1 (%) of the same done runs at the last epoch and at their best epoch chosen on the test set, "
             "mean over runs (every pair and seed); Best − last: mean ± std, median and max over runs. "
             "Choosing the epoch on the test set is selection on the test set: this is what it adds to the numbers "
             f"of papers that report the best epoch ({LAST_EPOCH_WHY})."]
    return View(name=SELECTION, title="Best epoch on the test set against the last epoch", frame=pd.DataFrame(data),
                notes=notes, grid=_selection_grid, metric_free=True)
