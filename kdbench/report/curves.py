"""Accuracy curves: test top-1 per epoch of every variant and pair, summarised over seeds."""

from __future__ import annotations

import pandas as pd

from kdbench.report.layout import View
from kdbench.report.prepare import Prepared

__all__ = ["CURVES", "curves_view"]

CURVES = "curves"
_COLUMNS = ["pair", "variant", "epoch", "mean", "std", "min", "max", "n"]


def curves_view(prep: Prepared, metrics: pd.DataFrame | None, metric: str = "test_top1") -> View | None:
    """One row per pair, variant and epoch: mean, std, min and max over seeds of `metric` (None without epochs).

    Only done runs count; a teacherless run is drawn in every pair it fills. A frame-only
    view: written as CSV and drawn by the figures and the HTML page.
    """
    if metrics is None or metrics.empty or metric not in metrics.columns:
        return None
    joined = metrics[["run_id", "epoch", metric]].merge(prep.runs[["run_id", "variant", "pair", "seed"]], on="run_id")
    joined[metric] = pd.to_numeric(joined[metric], errors="coerce")
    joined = joined.dropna(subset=[metric, "epoch"])
    if joined.empty:
        return None
    # One value per seed and epoch (duplicate runs of a seed are averaged), then over seeds.
    per_seed = joined.groupby(["pair", "variant", "epoch", "seed"], sort=False)[metric].mean().reset_index()
    frame = (per_seed.groupby(["pair", "variant", "epoch"], sort=False)[metric]
             .agg(["mean", "std", "min", "max", "count"]).reset_index().rename(columns={"count": "n"}))
    frame["epoch"] = frame["epoch"].astype(int)
    rank_pair = {p: i for i, p in enumerate(prep.pairs)}
    rank_variant = {v: i for i, v in enumerate(prep.variants)}
    frame = frame.sort_values(["pair", "variant", "epoch"], key=lambda s: s.map(rank_pair) if s.name == "pair"
                              else s.map(rank_variant) if s.name == "variant" else s, kind="stable")
    notes = [f"`{metric}` per epoch of the done runs: mean, std (ddof = 1), min and max over seeds."]
    return View(name=CURVES, title="Test top-1 per epoch", frame=frame[_COLUMNS].reset_index(drop=True), notes=notes,
                metric_free=True)
