"""The view of what top-1 leaves out: the student's agreement with its teacher, its
calibration error and its negative log-likelihood, at the last epoch, per method and pair."""

from __future__ import annotations

from typing import Hashable

import pandas as pd

from kdbench.report import stats
from kdbench.report.layout import Cell, Grid, View
from kdbench.report.prepare import Prepared

__all__ = ["AGREEMENT", "METRICS", "agreement_view"]

AGREEMENT = "agreement_calibration"
#: (frame column prefix, summary field, header), in the table's order.
METRICS = (
    ("agreement", "test_agreement", "Agreement (%)"),
    ("agreement_teacher_wrong", "test_agreement_teacher_wrong", "Agreement where the teacher is wrong (%)"),
    ("ece", "test_ece", "ECE (%)"),
    ("nll", "test_nll", "NLL (nats)"),
)
COLUMNS = ["variant", "pair", "seeds"] + [f"{m}_{s}" for m, _, _ in METRICS for s in ("mean", "std", "n")]


def _grid(frame: pd.DataFrame) -> Grid:
    rows = []
    for i, r in frame.iterrows():
        seeds = int(r["seeds"])
        line = [Cell(text=r["pair"]), Cell(text=r["variant"]), Cell(text=str(seeds))]
        for name, _, _ in METRICS:
            n = int(r[f"{name}_n"])
            line.append(Cell(value=r[f"{name}_mean"], std=r[f"{name}_std"] if n >= 2 else None, n=n,
                             show_n=0 < n < seeds, source=(i, f"{name}_mean")))
        rows.append(line)
    header = ["Pair", "Method", "Seeds"] + [h for _, _, h in METRICS]
    return Grid(header=header, rows=rows, align=["l", "l", "r"] + ["r"] * len(METRICS))


def agreement_view(prep: Prepared) -> View | None:
    """Per pair and variant: mean ± std over seeds of the last epoch's agreement with the teacher (on every
    test sample and where the teacher is wrong), ECE and NLL. None when no run recorded any of them.

    A missing number stays missing (NaN in the frame, — in the tables), never zero: runs
    without a teacher have no agreement, and runs recorded before kdbench measured these
    have none of them.
    """
    runs = prep.runs.copy()
    fields = [field for _, field, _ in METRICS]
    for field in fields:
        runs[field] = pd.to_numeric(runs[field], errors="coerce") if field in runs.columns else float("nan")
    if runs.empty or runs[fields].notna().sum().sum() == 0:
        return None
    # One value per seed (duplicate runs of a seed averaged, as in the main table's cells).
    per_seed = runs.groupby(["variant", "pair", "seed"], sort=False)[fields].mean().reset_index()
    cells = {key: group for key, group in per_seed.groupby(["variant", "pair"], sort=False)}
    data = []
    for pair in prep.pairs:
        for variant in prep.variants:
            cell = cells.get((variant, pair))
            if cell is None:
                continue
            row: dict[str, Hashable] = {"variant": variant, "pair": pair, "seeds": len(cell)}
            for name, field, _ in METRICS:
                mean, std, n = stats.mean_std(cell[field].dropna().tolist())
                row.update({f"{name}_mean": mean, f"{name}_std": std, f"{name}_n": n})
            data.append(row)
    notes = [
        "Last epoch, mean ± std (sample std, ddof = 1) over seeds; (n=k): only k of the cell's seeds recorded the "
        "number; —: none did (runs without a teacher have no agreement, and runs recorded before kdbench measured "
        "these have none of them).",
        "Agreement: the share of test images where the student's top-1 class is the teacher's (Stanton et al., "
        "NeurIPS 2021, arXiv:2106.05945), on every image and on those the teacher gets wrong, where agreeing "
        "means making the teacher's mistake.",
        "ECE: expected calibration error in percent: the test images binned by confidence (the top softmax "
        "probability) into 15 equal-width bins, and the mean over bins, weighted by their share of images, of "
        "|accuracy − mean confidence| (Guo et al., ICML 2017, arXiv:1706.04599); torchmetrics' "
        "`MulticlassCalibrationError(norm=\"l1\")` × 100. NLL: the mean cross-entropy of the test labels (nats). "
        "Lower is better for both.",
    ]
    return View(name=AGREEMENT, title="Agreement with the teacher and calibration (last epoch)",
                frame=pd.DataFrame(data, columns=COLUMNS), notes=notes, grid=_grid, metric_free=True)
