"""`kdbench compare A B`: the difference B − A of every cell two runs of a grid share.

Cells are matched by pair and method variant. Within a cell the runs pair by seed when
both sides have at least two seeds in common (the same grid run twice, on another GPU or
with another kdbench version, has the same seeds), so the paired t-test and its interval
apply; otherwise Welch's test compares all their runs. Marks are corrected over the
methods of each pair, as in the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Hashable

import pandas as pd

from kdbench import results
from kdbench.runs import records
from kdbench.errors import KdbenchError
from kdbench.report import stats
from kdbench.report.cells import adjust, compare_seeds, seed_values
from kdbench.report.layout import Cell, Grid, View, finite, pivot
from kdbench.report.prepare import TEACHER_ROW, Prepared, order, text
from kdbench.report.views import AVERAGE, HOLM

__all__ = ["COMPARE", "compare_view", "differences", "locate", "summary"]

COMPARE = "compare"


def locate(path: str | Path, grid: str | None) -> tuple[Path, str]:
    """`(results folder, grid)` of a compare argument: a grid's folder (holding `runs/`), or a results folder.

    A results folder with several grids needs `grid`; one with a single grid uses it.
    """
    path = Path(path)
    if records.Layout(path.parent, path.name).runs_dir.is_dir():
        return path.parent, path.name
    grids = results.grid_names(path)
    if grid is not None:
        if grid not in grids:
            raise KdbenchError(f"{path}/{grid}: no such grid in {path}/ (grids there: {', '.join(grids) or 'none'})")
        return path, grid
    if not grids:
        raise KdbenchError(f"no results under {path}/: give a results folder or a grid's folder (RESULTS/GRID)")
    if len(grids) > 1:
        raise KdbenchError(f"{path}: holds several grids ({', '.join(grids)}): choose one with --grid, "
                           f"or give the grid's folder ({path}/GRID)")
    return path, grids[0]


def _teacher(prep: Prepared, pair: str) -> float:
    values = prep.runs.loc[prep.runs["pair"] == pair, "teacher_top1"].dropna()
    return float(values.mean()) if len(values) else math.nan


def differences(a: Prepared, b: Prepared) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One row per shared (variant, pair): A's and B's means and the test of B − A; plus what only one side has."""
    pairs = [p for p in a.pairs if p in set(b.pairs)]
    variants = [v for v in order(a.variants + b.variants, a.variants) if v in set(a.variants) & set(b.variants)]
    cells_a, cells_b = seed_values(a), seed_values(b)
    rows = []
    for p in pairs:
        ta, tb = _teacher(a, p), _teacher(b, p)
        if finite(ta) or finite(tb):
            rows.append({"variant": TEACHER_ROW, "pair": p, "mean_a": ta, "mean_b": tb, "mean_diff": tb - ta,
                         "test": "none", "_test": None})
        for v in variants:
            va, vb = cells_a.get((v, p)), cells_b.get((v, p))
            if not va or not vb:
                continue
            ma, mb = stats.mean_std(list(va.values())), stats.mean_std(list(vb.values()))
            fields = compare_seeds(vb, va, a.alpha, welch_fallback=True)
            test = fields["_test"]
            kind = "paired" if test.paired else "welch"
            if not test.testable:
                kind = "none"
            rows.append({"variant": v, "pair": p, "n_a": ma[2], "mean_a": ma[0], "std_a": ma[1], "n_b": mb[2],
                         "mean_b": mb[0], "std_b": mb[1], "test": kind, **fields})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, {}
    frame["_test"] = frame["_test"].where(frame["test"] != "none", None)
    frame = adjust(frame, "pair", a.alpha, a.correction)
    only = {"pairs only in A": [p for p in a.pairs if p not in pairs],
            "pairs only in B": [p for p in b.pairs if p not in pairs],
            "methods only in A": [v for v in a.variants if v not in set(b.variants)],
            "methods only in B": [v for v in b.variants if v not in set(a.variants)]}
    return frame, {k: v for k, v in only.items() if v}


_COLUMNS = ["variant", "pair", "metric", "n_a", "mean_a", "std_a", "n_b", "mean_b", "std_b", "test", "n_paired",
            "mean_diff", "std_diff", "ci_low", "ci_high", "t_stat", "df", "p_value", "p_adjusted", "mark",
            "changed_up", "changed_down", "alpha", "correction"]


def _grid(frame: pd.DataFrame) -> Grid:
    pairs = [p for p in dict.fromkeys(frame["pair"]) if p != AVERAGE]

    def cell(r: pd.Series, i: Hashable) -> Cell:
        if r["pair"] == AVERAGE:
            return Cell(value=r["mean_diff"], signed=True, interval=(r["ci_low"], r["ci_high"]),
                        source=(i, "mean_diff"))
        note = " (unpaired)" if r["test"] == "welch" else ""
        return Cell(value=r["mean_diff"], signed=True, interval=(r["ci_low"], r["ci_high"]), mark=text(r["mark"]),
                    note=note.strip(), source=(i, "mean_diff"))

    grid = pivot(frame, rows=list(dict.fromkeys(frame["variant"])), columns=pairs + [AVERAGE], cell=cell)
    grid.header[-1] = "Mean over pairs"
    return grid


def compare_view(a: Prepared, b: Prepared, label_a: str, label_b: str) -> View:
    """The comparison of B with A as a view: per method × shared pair, B − A with its interval and mark."""
    frame, only = differences(a, b)
    if frame.empty:
        raise KdbenchError(f"{label_a} and {label_b} share no pair and method with done runs: nothing to compare")
    data = [frame]
    for v in dict.fromkeys(frame["variant"]):
        mine = frame[frame["variant"] == v]
        mean, low, high, k = stats.mean_interval([d for d in mine["mean_diff"] if finite(d)], a.alpha)
        data.append(pd.DataFrame([{"variant": v, "pair": AVERAGE, "mean_diff": mean, "ci_low": low, "ci_high": high,
                                   "n_paired": k, "changed_up": int((mine["mark"] == "↑").sum()),
                                   "changed_down": int((mine["mark"] == "↓").sum())}]))
    frame = pd.concat(data, ignore_index=True).reindex(columns=_COLUMNS)
    frame = frame.assign(metric=a.metric, alpha=a.alpha, correction=a.correction)
    frame["mark"] = frame["mark"].map(text)
    corrected = (f"Holm–Bonferroni correction over the methods of each pair ({HOLM})" if a.correction == "holm"
                 else "no multiple-comparison correction")
    notes = [
        f"B − A in points of {a.info.short} top-1, A = `{label_a}`, B = `{label_b}`: the mean difference over "
        f"seeds with its {a.confidence} confidence interval [low, high]. Runs pair by seed when both sides share "
        "at least 2 seeds (paired t, df = n − 1); otherwise (unpaired) Welch's t-test on all their runs "
        "(Welch 1947, Biometrika 34:28–35). Teacher: the teachers' measured top-1, not tested.",
        f"↑ / ↓: B significantly above / below A, two-sided, {corrected}, at α = {a.alpha:g}. A difference "
        "identical on every seed (zero variance) is decided without dividing by zero: p = 0 unless it is 0.",
        "Mean over pairs: the mean of the per-pair differences with its t interval across pairs.",
    ]
    notes += [f"Not compared, {what}: {', '.join(f'`{x}`' for x in items)}." for what, items in only.items()]
    return View(name=COMPARE, title=f"Difference B − A ({a.info.short})", frame=frame, notes=notes, grid=_grid)


def summary(view: View) -> str:
    """One line: the cells that differ significantly, or that none does."""
    frame = view.frame[(view.frame["pair"] != AVERAGE) & (view.frame["variant"] != TEACHER_ROW)]
    marked = frame[frame["mark"] != ""]
    if marked.empty:
        largest = frame["mean_diff"].abs().max()
        return (f"No significant difference in {len(frame)} cells (largest |B − A|: {largest:.2f} points)."
                if finite(largest) else f"No significant difference in {len(frame)} cells.")
    items = [f"{r.variant} in {r.pair} ({r.mean_diff:+.2f}{r.mark})" for r in marked.itertuples()]
    return f"Significant differences (B − A) in {len(marked)} of {len(frame)} cells: " + "; ".join(items) + "."
