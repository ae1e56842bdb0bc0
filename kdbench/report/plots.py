"""Report figures (PNG and PDF): per-pair bar charts, test-accuracy curves, and a gain heatmap.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`), never
`pyplot`, so no global backend is touched and nothing needs a display. Every variant keeps
one style (hatch, marker, line style, colour) in every figure, so the plots stay readable
in black and white.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdbench.report.curves import CURVES
from kdbench.report.layout import View
from kdbench.report.prepare import TEACHER_ROW, VANILLA, Prepared
from kdbench.report.views import AVERAGE, GAIN, MAIN

__all__ = ["bar_chart", "curves_plot", "gain_heatmap", "palette", "plot_report", "slug"]

# Okabe-Ito colour-blind-safe palette; hatches, markers and line styles carry the
# distinction when printed in grey.
_COLORS = ["#999999", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
_HATCHES = ["", "//", "\\\\", "xx", "..", "oo", "++", "--", "||", "**"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
# Seven line styles against eight colours: the pair (colour, style) repeats only after 56 variants.
_LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2))]


_SVG_DASHES = ["", "6 4", "6 3 2 3", "2 3", "5 1", "3 1 1 1 1 1", "8 2 2 2"]  # the line styles above, for SVG


def palette() -> list[tuple[str, str]]:
    """(colour, SVG dash pattern) of style 0, 1, …: the figures' styles, for the HTML page's curves."""
    return [(_COLORS[i % len(_COLORS)], _SVG_DASHES[i % len(_SVG_DASHES)]) for i in range(56)]


def slug(label: str) -> str:
    """A file-name-safe version of a table column label (`a→b` → `a_to_b`)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label.replace("→", "_to_")).strip("_") or "pair"


def _style(i: int) -> dict:
    return {"color": _COLORS[i % len(_COLORS)], "hatch": _HATCHES[i % len(_HATCHES)],
            "marker": _MARKERS[i % len(_MARKERS)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)]}


def _save(fig: Figure, base: Path) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # no timestamp: the same runs give the same file
    return paths


def _wrap_pair(label: str) -> str:
    return label.replace("→", "\n→", 1) if "→" in label else label


def bar_chart(cells: pd.DataFrame, variants: Sequence[str], title: str, ylabel: str, base: Path, *,
              teacher: float | None = None, vanilla: float | None = None, styles: dict[str, int] | None = None,
              mark_note: str | None = None) -> list[Path]:
    """Bars of one pair's variants (`cells`: variant, mean, std, mark) with std error bars and teacher / vanilla lines.

    `mark_note` explains the ↑/↓ marks under the axis when any bar has one.

    The y axis starts near the lowest bar, not at 0, so that differences of a point show;
    every bar is labelled with its value. Writes `base`.png and `base`.pdf.
    """
    cells = cells.set_index("variant")
    variants = [v for v in variants if v in cells.index]
    styles = styles or {v: i for i, v in enumerate(variants)}
    width = max(5.0, 0.8 * len(variants) + 2.8)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.add_subplot()
    means = [float(cells.loc[v, "mean"]) for v in variants]
    stds = [float(cells.loc[v, "std"]) if pd.notna(cells.loc[v, "std"]) else 0.0 for v in variants]
    for x, (v, m, s) in enumerate(zip(variants, means, stds)):
        st = _style(styles[v])
        ax.bar(x, m, width=0.7, color=st["color"], hatch=st["hatch"], edgecolor="black", linewidth=0.8, alpha=0.85)
        if s > 0:
            ax.errorbar(x, m, yerr=s, color="black", capsize=4, linewidth=1.0)
        mark = cells.loc[v, "mark"] if "mark" in cells.columns and isinstance(cells.loc[v, "mark"], str) else ""
        ax.annotate(f"{m:.2f}{mark}", (x, m + s), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    lows = [m - s for m, s in zip(means, stds)] + ([vanilla] if vanilla is not None else [])
    highs = [m + s for m, s in zip(means, stds)] + ([teacher] if teacher is not None else [])
    if teacher is not None:
        ax.axhline(teacher, color="black", linestyle="-", linewidth=1.3, label=f"teacher ({teacher:.2f})")
    if vanilla is not None:
        ax.axhline(vanilla, color="black", linestyle="--", linewidth=1.3, label=f"vanilla student ({vanilla:.2f})")
    lo, hi = min(lows), max(highs)
    span = max(hi - lo, 1.0)
    # An accuracy axis never goes below 0, however far a wide std bar reaches.
    ax.set_ylim(max(0.0, math.floor(lo - 0.25 * span)), hi + 0.2 * span)
    ax.set_xticks(range(len(variants)))
    long = max((len(v) for v in variants), default=0) > 6 or len(variants) > 6
    ax.set_xticklabels(variants, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if mark_note and "mark" in cells.columns and cells["mark"].fillna("").astype(str).str.len().gt(0).any():
        ax.set_xlabel(mark_note, fontsize=8)
    ax.grid(axis="y", linestyle=":", linewidth=0.6)
    ax.set_axisbelow(True)
    if teacher is not None or vanilla is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return _save(fig, base)


def curves_plot(curves: pd.DataFrame, variants: Sequence[str], title: str, base: Path, *,
                styles: dict[str, int] | None = None) -> list[Path]:
    """Test accuracy over epochs per variant: the mean over seeds, with the seeds' range (min to max) as a band.

    `curves` is one pair's rows of the curves view (variant, epoch, mean, min, max, n). A
    second panel zooms on the last quarter of training, where the variants separate.
    Writes `base`.png and `.pdf`.
    """
    agg = curves.dropna(subset=["mean"])
    variants = [v for v in variants if v in set(agg["variant"])]
    styles = styles or {v: i for i, v in enumerate(variants)}
    last = int(agg["epoch"].max())
    zoom = last >= 20
    fig = Figure(figsize=(11.0 if zoom else 6.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    start = int(last * 0.75)
    for ax_i, ax in enumerate(axes):
        window = agg if ax_i == 0 else agg[agg["epoch"] >= start]
        for v in variants:
            d = window[window["variant"] == v].sort_values("epoch")
            st = _style(styles[v])
            ax.plot(d["epoch"], d["mean"], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                    markevery=max(1, len(d) // 8), markersize=5, linewidth=1.4, label=v,
                    markeredgecolor="black", markeredgewidth=0.5)
            band = d[d["n"] >= 2]
            if len(band):
                ax.fill_between(band["epoch"], band["min"], band["max"], color=st["color"], alpha=0.18, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(linestyle=":", linewidth=0.6)
        if ax_i == 1:
            lo, hi = window["min"].fillna(window["mean"]).min(), window["max"].fillna(window["mean"]).max()
            pad = max(0.1 * (hi - lo), 0.2)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlim(start, last)
            ax.set_title(f"last quarter (epochs {start}–{last})", fontsize=10)
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].set_title("all epochs" if zoom else title, fontsize=10)
    if zoom:
        fig.suptitle(title)
    seeds = int(agg["n"].max())
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
                    title="mean; band: min–max over seeds" if seeds > 1 else "one seed", title_fontsize=8)
    return _save(fig, base)


def gain_heatmap(gains: pd.DataFrame, variants: Sequence[str], columns: Sequence[str], title: str,
                 cbar_label: str, base: Path) -> list[Path]:
    """Variants × pairs grid of gains (`gains`: variant, pair, mean_diff, mark), each cell annotated.

    Diverging colours centred on 0; the numbers and ↑/↓ marks carry the information
    without colour. Writes `base`.png and `base`.pdf.
    """
    table = gains.pivot_table(index="variant", columns="pair", values="mean_diff", aggfunc="first")
    marks = gains.pivot_table(index="variant", columns="pair", values="mark", aggfunc="first") \
        if "mark" in gains.columns else None
    variants = [v for v in variants if v in table.index]
    columns = [c for c in columns if c in table.columns]
    table = table.reindex(index=variants, columns=columns)
    values = table.to_numpy(dtype=float)
    finite = values[~pd.isna(values)]
    vlim = max(float(abs(finite).max()) if finite.size else 1.0, 0.1)
    # Many pairs: pairs go down the side, so the figure grows in height, not width.
    transpose = len(columns) > max(8, len(variants))
    rows, cols = (columns, variants) if transpose else (variants, columns)
    grid = values.T if transpose else values
    col_width = 1.15 if transpose else 1.45  # transposed: variant labels are rotated, cells hold "+0.00↑"
    fig = Figure(figsize=(max(4.5, col_width * len(cols) + 3.2), max(2.6, 0.5 * len(rows) + 1.9)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0.0, vmin=-vlim, vmax=vlim), aspect="auto")
    for i, v in enumerate(variants):
        for j, c in enumerate(columns):
            x = values[i, j]
            at = (i, j) if transpose else (j, i)
            if pd.isna(x):
                ax.text(*at, "—", ha="center", va="center", fontsize=9)
                continue
            mark = marks.loc[v, c] if marks is not None and v in marks.index and c in marks.columns else ""
            mark = mark if isinstance(mark, str) else ""
            ax.text(*at, f"{x:+.2f}{mark}", ha="center", va="center", fontsize=9,
                    color="white" if abs(x) > 0.6 * vlim else "black")
    ax.set_xticks(range(len(cols)))
    if transpose:
        long = max(len(c) for c in cols) > 10
        ax.set_xticklabels(cols, fontsize=9, rotation=30 if long else 0, ha="right" if long else "center")
    else:
        ax.set_xticklabels([_wrap_pair(c) for c in cols], fontsize=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=9)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=cbar_label, shrink=0.9)
    return _save(fig, base)


def plot_report(prep: Prepared, views: Mapping[str, View], out: Path) -> list[Path]:
    """Every figure of a report under `out`: bars and curves per pair, and the gain heatmap.

    `views` maps view names to the report's views; the figures draw their frames.
    """
    suffix = prep.suffix
    styles = {v: i for i, v in enumerate(prep.variants)}
    written: list[Path] = []
    correction = ", Holm-corrected" if prep.correction == "holm" else ""

    main = views[MAIN].frame
    for pair in prep.pairs:
        col = main[(main["pair"] == pair) & main["mean"].notna()]
        cells = col[col["variant"] != TEACHER_ROW]
        if cells.empty:
            continue
        teacher = col.loc[col["variant"] == TEACHER_ROW, "mean"]
        vanilla = cells.loc[cells["variant"] == VANILLA, "mean"]
        written += bar_chart(
            cells, prep.variants, pair, f"test top-1 (%), {prep.info.short}", out / f"bars{suffix}_{slug(pair)}",
            teacher=float(teacher.iloc[0]) if len(teacher) else None,
            vanilla=float(vanilla.iloc[0]) if len(vanilla) else None, styles=styles,
            mark_note=f"↑ / ↓: significantly better / worse than {prep.baseline} "
                      f"(paired t-test over seeds{correction}, α = {prep.alpha:g}); error bars: std over seeds",
        )

    if CURVES in views:
        curves = views[CURVES].frame
        for pair in prep.pairs:
            sel = curves[curves["pair"] == pair]
            if len(sel):
                written += curves_plot(sel, prep.variants, f"{pair}: test top-1 over training",
                                       out / f"curves_{slug(pair)}", styles=styles)

    if GAIN in views and not views[GAIN].frame.empty:
        gains = views[GAIN].frame
        gains = gains[gains["pair"] != AVERAGE]
        if gains["mean_diff"].notna().any():
            others = [v for v in prep.variants if v != prep.baseline]
            written += gain_heatmap(gains, others, prep.pairs,
                                    f"Gain over {prep.baseline} (points, {prep.info.short})",
                                    f"gain over {prep.baseline} (points)", out / f"gain_heatmap{suffix}")
    return written
