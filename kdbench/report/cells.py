"""The statistics of every cell (variant × pair), computed once for all views.

A cell holds the seeds of one variant in one pair. Against the baseline, a cell gets
the paired t-test on the seeds both have, its confidence interval, and the p-value
adjusted over the methods compared with the baseline in that pair (Holm–Bonferroni by
default). The main, gain and seeds-needed views all read this one frame.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from kdbench.report import stats
from kdbench.report.prepare import Prepared

__all__ = ["COLUMNS", "adjust", "cell_frame", "compare_seeds", "seed_values", "teacher_top1"]

# One row per cell with a done run.
COLUMNS = ["variant", "pair", "seeds", "values", "n", "mean", "std", "n_paired", "mean_diff", "std_diff", "ci_low",
           "ci_high", "t_stat", "df", "p_value", "p_adjusted", "mark", "zero_variance"]


def compare_seeds(ours: Mapping[Any, float], base: Mapping[Any, float], alpha: float, *,
                  welch_fallback: bool = False) -> dict[str, Any]:
    """`ours − base`: the paired test on the seeds both have, as frame fields.

    With `welch_fallback`, fewer than 2 shared seeds fall back to Welch's test on all
    the values (`kdbench compare` of runs that do not share seeds).
    """
    shared = sorted(set(ours) & set(base), key=str)
    if welch_fallback and len(shared) < 2:
        test = stats.welch_ttest(list(ours.values()), list(base.values()))
    else:
        test = stats.paired_ttest([ours[s] for s in shared], [base[s] for s in shared])
    low, high = test.interval(alpha)
    return {"n_paired": test.n if test.paired else 0, "mean_diff": test.mean_diff,
            "std_diff": test.std_diff, "ci_low": low, "ci_high": high,
            "t_stat": test.t if test.testable else math.nan, "df": test.df if test.testable else math.nan,
            "p_value": test.p if test.testable else math.nan, "paired": test.paired,
            "zero_variance": test.zero_variance, "_test": test}


def adjust(frame: pd.DataFrame, by: str, alpha: float, correction: str) -> pd.DataFrame:
    """Fill `p_adjusted` and `mark` of `frame` (rows with a `_test`), correcting within each `by` group."""
    frame = frame.copy()
    frame["p_adjusted"] = math.nan
    frame["mark"] = ""
    tested = frame["_test"].notna()
    for _, group in frame[tested].groupby(by, sort=False):
        raw = group["p_value"].tolist()
        adjusted = stats.holm(raw) if correction == "holm" else raw
        for index, p in zip(group.index, adjusted):
            frame.at[index, "p_adjusted"] = p
            frame.at[index, "mark"] = frame.at[index, "_test"].mark(alpha, p=p)
    return frame


def seed_values(prep: Prepared) -> dict[tuple[str, str], dict[Any, float]]:
    """(variant, pair) → {seed: value}, seeds in sorted order.

    Duplicate runs of one seed (the same run in two grids' copies) are averaged.
    """
    return {(variant, pair): {seed: float(g["value"].mean()) for seed, g in group.groupby("seed", sort=True)}
            for (variant, pair), group in prep.runs.groupby(["variant", "pair"], sort=False)}


def teacher_top1(prep: Prepared, pair: str) -> tuple[float, float, int]:
    """`(mean, std, n)` of the teacher top-1 recorded by the runs of `pair` (`stats.mean_std`)."""
    return stats.mean_std(prep.runs.loc[prep.runs["pair"] == pair, "teacher_top1"].dropna().tolist())


def cell_frame(prep: Prepared) -> pd.DataFrame:
    """One row per (variant, pair) with a done run: seeds, mean ± std, and the test against the baseline."""
    rows = []
    cells = seed_values(prep)
    for pair in prep.pairs:
        base = cells.get((prep.baseline, pair))
        for variant in prep.variants:
            values = cells.get((variant, pair))
            if values is None:
                continue
            mean, std, n = stats.mean_std(list(values.values()))
            row: dict[str, Any] = {"variant": variant, "pair": pair, "seeds": tuple(values),
                                   "values": tuple(values.values()), "n": n, "mean": mean, "std": std, "_test": None}
            if base is not None and variant != prep.baseline:
                row.update(compare_seeds(values, base, prep.alpha))
            rows.append(row)
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS + ["_test"])
    frame = adjust(frame, "pair", prep.alpha, prep.correction)
    frame["zero_variance"] = [x is True or x == 1.0 for x in frame["zero_variance"]]
    return frame
