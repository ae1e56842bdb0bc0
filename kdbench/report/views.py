"""The comparison views: the main table and the gains over the baseline.

Each view is a function `Prepared -> View`: a tidy frame (one row per variant and pair,
plus an `Average` row per variant), its notes, and the grid function that lays the frame
out. Every number shown comes from the frame.
"""

from __future__ import annotations

import math
from typing import Any, Hashable

import numpy as np
import pandas as pd

from kdbench.report import stats
from kdbench.report.layout import Cell, Grid, View, finite, pivot
from kdbench.report.prepare import TEACHER_ROW, Prepared, text

__all__ = ["AVERAGE", "GAIN", "MAIN", "best_of", "flag", "gain_view", "main_view", "paired_test", "seed_values"]

AVERAGE = "Average"
# View names (and file stems), imported by the figures and the HTML page.
MAIN = "main"
GAIN = "gain"


def flag(x: Any) -> bool:
    """True only for a true boolean (NaN and None are False)."""
    return x is True or (isinstance(x, np.bool_) and bool(x))


def seed_values(prep: Prepared, variant: str, column: str) -> dict[Any, float]:
    """Seed → value for one cell (duplicate runs of a seed are averaged)."""
    sel = prep.runs[(prep.runs["variant"] == variant) & (prep.runs["column"] == column)]
    return {seed: float(g["value"].mean()) for seed, g in sel.groupby("seed", sort=True)}


def _cell_stats(prep: Prepared) -> dict[tuple[str, str], tuple[float, float, int, dict]]:
    out = {}
    for variant in prep.variants:
        for column in prep.columns:
            values = seed_values(prep, variant, column)
            if values:
                mean, std, n = stats.mean_std(list(values.values()))
                out[(variant, column)] = (mean, std, n, values)
    return out


def paired_test(prep: Prepared, cells: dict, variant: str, column: str) -> stats.PairedTest | None:
    """The paired test of `variant` against the baseline in `column`, on their shared seeds."""
    if variant == prep.baseline or (variant, column) not in cells or (prep.baseline, column) not in cells:
        return None
    ours, base = cells[(variant, column)][3], cells[(prep.baseline, column)][3]
    shared = sorted(set(ours) & set(base))
    return stats.paired_ttest([ours[s] for s in shared], [base[s] for s in shared])


def best_of(values: dict[str, float]) -> set[str]:
    """Keys whose value, rounded as displayed, equals the largest: ties are all best."""
    shown = {k: round(v, 2) for k, v in values.items() if finite(v)}
    if not shown:
        return set()
    top = max(shown.values())
    return {k for k, v in shown.items() if v == top}


def _significance_notes(prep: Prepared, tests: list[stats.PairedTest]) -> list[str]:
    notes = []
    if prep.max_seeds < 2:
        notes.append("One seed per cell: no std and no significance test (a paired t-test needs at least 2 seeds).")
    elif not prep.has_baseline:
        notes.append(f"Baseline `{prep.baseline}` has no done run in this grid: no significance marks "
                     "(choose one with --baseline).")
    else:
        notes.append(
            f"↑ / ↓: significantly better / worse than `{prep.baseline}` by a paired two-sided t-test across seeds "
            f"(runs paired by pair and seed; df = n − 1; α = {prep.alpha:g}), each cell on its own, with no "
            "multiple-comparison correction. No mark: not significant, or fewer than 2 shared seeds."
        )
        if any(t.testable and t.std_diff == 0 and t.mean_diff != 0 for t in tests):
            notes.append("Some differences were identical on every seed (zero variance): counted as significant (p = 0).")
    return notes


def _pairs_note(k: int, total: int) -> str:
    return f"({k}/{total} pairs)" if 0 < k < total else ""


def _ordered(frame: pd.DataFrame, key: str) -> list[str]:
    return [x for x in dict.fromkeys(frame[key]) if x != AVERAGE]


# ---------------------------------------------------------------------------- main


def _main_grid(frame: pd.DataFrame) -> Grid:
    columns = _ordered(frame, "column")
    variants = list(dict.fromkeys(frame["variant"]))
    baseline = text(frame["baseline"].iloc[0])

    def cell(r: pd.Series, i: Hashable) -> Cell:
        n = int(r["n"]) if finite(r["n"]) else 0
        if r["column"] == AVERAGE:
            note = "" if flag(r["complete"]) else _pairs_note(n, len(columns))
            return Cell(value=r["mean"], bold=flag(r["best"]), note=note, source=(i, "mean"))
        if r["variant"] == TEACHER_ROW:
            return Cell(value=r["mean"], std=r["std"] if finite(r["std"]) else None, source=(i, "mean"))
        if n == 0:
            return Cell()
        return Cell(value=r["mean"], std=r["std"] if n >= 2 else None, n=n, show_n=n < r["n_max"],
                    mark=text(r["mark"]), bold=flag(r["best"]), source=(i, "mean"))

    students = [v for v in variants if v != TEACHER_ROW]
    grid = pivot(frame, rows=variants, columns=columns + [AVERAGE], column_key="column", cell=cell,
                 label=lambda v: f"{v} (baseline)" if v == baseline and baseline in students else v)
    grid.rule_after = (0,)  # the teacher row is a reference, not a competitor
    return grid


def main_view(prep: Prepared) -> View:
    """Variants × pairs (+ Average): mean ± std over seeds of the metric, best bold, ↑/↓ vs the baseline."""
    info = prep.info
    cells = _cell_stats(prep)
    student_rows = prep.variants
    n_max = {c: max((cells[(v, c)][2] for v in student_rows if (v, c) in cells), default=0) for c in prep.columns}
    multi_seed = prep.max_seeds >= 2

    averages = {}
    for v in student_rows:
        means = [cells[(v, c)][0] for c in prep.columns if (v, c) in cells]
        averages[v] = (sum(means) / len(means), len(means)) if means else (math.nan, 0)
    complete = [v for v in student_rows if averages[v][1] == len(prep.columns)]
    best_avg = best_of({v: averages[v][0] for v in (complete or student_rows)})
    best = {c: best_of({v: cells[(v, c)][0] for v in student_rows if (v, c) in cells}) for c in prep.columns}

    data, tests = [], []
    teacher_means = []
    for c in prep.columns:
        vals = prep.runs.loc[prep.runs["column"] == c, "teacher_top1"].dropna()
        mean, std, n = stats.mean_std(vals.tolist())
        std = std if finite(std) and std > 0.005 else math.nan  # one checkpoint: no spread to show
        if finite(mean):
            teacher_means.append(mean)
        data.append({"variant": TEACHER_ROW, "column": c, "mean": mean, "std": std, "n": n})
    t_avg = sum(teacher_means) / len(teacher_means) if teacher_means else math.nan
    data.append({"variant": TEACHER_ROW, "column": AVERAGE, "mean": t_avg, "n": len(teacher_means),
                 "complete": len(teacher_means) == len(prep.columns)})

    for v in student_rows:
        for c in prep.columns:
            if (v, c) not in cells:
                data.append({"variant": v, "column": c, "n": 0, "n_max": n_max[c]})
                continue
            mean, std, n, _ = cells[(v, c)]
            test = paired_test(prep, cells, v, c) if multi_seed else None
            mark = test.mark(prep.alpha) if test else ""
            if test:
                tests.append(test)
            data.append({
                "variant": v, "column": c, "mean": mean, "std": std, "n": n, "n_max": n_max[c],
                "p_value": test.p if test and test.testable else math.nan,
                "t_stat": test.t if test and test.testable else math.nan,
                "n_paired": test.n if test else math.nan, "mark": mark, "best": v in best[c],
            })
        avg, k = averages[v]
        data.append({"variant": v, "column": AVERAGE, "mean": avg, "n": k, "complete": k == len(prep.columns),
                     "best": v in best_avg})

    frame = pd.DataFrame(data)
    frame.insert(2, "metric", prep.metric)
    frame["baseline"] = prep.baseline
    frame["alpha"] = prep.alpha
    frame = frame.reindex(columns=["variant", "column", "metric", "mean", "std", "n", "n_max", "p_value", "t_stat",
                                   "n_paired", "mark", "best", "complete", "baseline", "alpha"])
    spread = "mean ± std (sample std, ddof = 1) over seeds" if multi_seed else "one run per cell"
    notes = [f"{info.caption}; {spread}. Teacher: measured test top-1 of the checkpoint."]
    notes += _significance_notes(prep, tests)
    notes.append("**Bold**: best student per column (ties all bold). (n=k): fewer seeds than the column's maximum. "
                 "Average: mean over pairs of the cell means; (k/m pairs) when a row lacks some pairs.")
    if prep.not_done is not None and len(prep.not_done):
        notes.append(f"{len(prep.not_done)} run(s) not done (running or failed) are left out; see the runs-not-done table.")
    notes += prep.notes
    return View(name=MAIN, title=f"Test top-1 (%), {info.short}", frame=frame, notes=notes, grid=_main_grid)


# ---------------------------------------------------------------------------- gains


def _gain_grid(frame: pd.DataFrame) -> Grid:
    columns = _ordered(frame, "column")
    per_pair = frame[frame["column"] != AVERAGE]
    n_max = per_pair.groupby("column")["n"].max().to_dict()

    def cell(r: pd.Series, i: Hashable) -> Cell:
        n = int(r["n"]) if finite(r["n"]) else 0
        if r["column"] == AVERAGE:
            return Cell(value=r["mean_diff"], signed=True, note=_pairs_note(n, len(columns)), source=(i, "mean_diff"))
        if n == 0:
            return Cell()
        return Cell(value=r["mean_diff"], std=r["std_diff"] if n >= 2 else None, n=n, show_n=n < n_max[r["column"]],
                    mark=text(r["mark"]), signed=True, source=(i, "mean_diff"))

    return pivot(frame, rows=list(dict.fromkeys(frame["variant"])), columns=columns + [AVERAGE],
                 column_key="column", cell=cell)


def gain_view(prep: Prepared) -> View | None:
    """Per variant × pair: mean ± std of the paired differences to the baseline (None without a baseline)."""
    if not prep.has_baseline:
        return None
    cells = _cell_stats(prep)
    tests = {(v, c): paired_test(prep, cells, v, c) for v in prep.variants for c in prep.columns}
    data = []
    multi_seed = prep.max_seeds >= 2
    for v in prep.variants:
        if v == prep.baseline:
            continue
        means = []
        for c in prep.columns:
            t = tests[(v, c)]
            if t is None or t.n == 0:
                data.append({"variant": v, "column": c, "n": 0})
                continue
            mark = t.mark(prep.alpha) if multi_seed else ""
            means.append(t.mean_diff)
            data.append({"variant": v, "column": c, "mean_diff": t.mean_diff, "std_diff": t.std_diff, "n": t.n,
                         "t_stat": t.t if t.testable else math.nan, "p_value": t.p if t.testable else math.nan,
                         "mark": mark})
        avg = sum(means) / len(means) if means else math.nan
        data.append({"variant": v, "column": AVERAGE, "mean_diff": avg, "n": len(means)})
    frame = pd.DataFrame(data).reindex(columns=["variant", "column", "mean_diff", "std_diff", "n", "t_stat",
                                                "p_value", "mark"])
    frame.insert(2, "metric", prep.metric)
    frame["baseline"] = prep.baseline
    notes = [f"Gain over `{prep.baseline}` in points of {prep.info.short} top-1: mean ± std of the "
             "per-seed differences (runs paired by pair and seed); n = shared seeds."]
    notes += _significance_notes(prep, [t for t in tests.values() if t])
    return View(name=GAIN, title=f"Gain over {prep.baseline} (points, {prep.info.short})", frame=frame,
                notes=notes, grid=_gain_grid)
