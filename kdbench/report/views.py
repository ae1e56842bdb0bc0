"""The comparison views: the main table, the gains over the baseline, and the seeds a gain needs.

Each view is a function `(Prepared, cells) -> View`: a tidy frame, its notes, and the grid
function that lays the frame out. Every number shown comes from the frame; the frames
read the one `cells.cell_frame`, so the views can't disagree with each other.
"""

from __future__ import annotations

import math
from typing import Any, Hashable

import numpy as np
import pandas as pd

from kdbench.report import stats
from kdbench.report.cells import teacher_top1
from kdbench.report.layout import Cell, Grid, View, finite, pivot
from kdbench.report.prepare import MIXED_MARK, TEACHER_ROW, Prepared, text

__all__ = ["AVERAGE", "GAIN", "MAIN", "SEEDS", "best_of", "flag", "gain_view", "main_view", "protocol_label",
           "protocol_notes", "seeds_view", "significance_notes"]

AVERAGE = "Average"
# View names (and file stems), imported by the figures and the HTML page.
MAIN = "main"
GAIN = "gain"
SEEDS = "seeds_needed"
POWER = 0.8  # the power of the seeds-needed view
DAGGER = "†"
HOLM = "Holm 1979, Scandinavian Journal of Statistics 6:65–70"
READING = "kdbench README, “Reading a report”"


def flag(x: Any) -> bool:
    """True only for a true boolean (NaN and None are False)."""
    return x is True or (isinstance(x, np.bool_) and bool(x))


def best_of(values: dict[str, float]) -> set[str]:
    """Keys whose value, rounded as displayed, equals the largest: ties are all best."""
    shown = {k: round(v, 2) for k, v in values.items() if finite(v)}
    if not shown:
        return set()
    top = max(shown.values())
    return {k for k, v in shown.items() if v == top}


def protocol_label(variant: str, protocol: Any) -> str:
    """A row label with † when the row has a protocol of its own."""
    return f"{variant} {DAGGER}" if text(protocol) else variant


def protocol_notes(prep: Prepared, variants: list[str] | None = None) -> list[str]:
    """One note per variant with a protocol of its own."""
    shown = variants if variants is not None else prep.variants
    return [f"{DAGGER} `{v}`: {prep.protocols[v]}" for v in shown if v in prep.protocols]


def significance_notes(prep: Prepared, cells: pd.DataFrame) -> list[str]:
    """What ↑/↓ mean (test, pairing, correction, α), or why there are none."""
    if prep.max_seeds < 2:
        return ["One seed per cell: no std and no significance test (a paired t-test needs at least 2 seeds)."]
    if not prep.has_baseline:
        return [f"Baseline `{prep.baseline}` has no done run in this grid: no significance marks "
                "(choose one with --baseline)."]
    if prep.correction == "holm":
        correction = (f"Holm–Bonferroni correction over the methods compared with `{prep.baseline}` in each pair "
                      f"({HOLM})")
    else:
        correction = "each cell on its own, with no multiple-comparison correction (--correction none)"
    notes = [f"↑ / ↓: significantly better / worse than `{prep.baseline}` by a paired two-sided t-test across seeds "
             f"(runs paired by pair and seed; df = n − 1), {correction}; significant when the "
             f"{'adjusted ' if prep.correction == 'holm' else ''}p-value is below α = {prep.alpha:g}. "
             "No mark: not significant, or fewer than 2 shared seeds."]
    if bool(cells["zero_variance"].any()):
        notes.append("Some differences were identical on every seed (zero variance): decided without dividing by "
                     "zero (p = 0 for a nonzero difference, 1 for none).")
    return notes


def _pairs_note(k: int, total: int) -> str:
    return f"({k}/{total} pairs)" if 0 < k < total else ""


def _ordered(frame: pd.DataFrame, key: str) -> list[str]:
    return [x for x in dict.fromkeys(frame[key]) if x != AVERAGE]


def _int(x: Any) -> int:
    return int(x) if finite(x) else 0


# ---------------------------------------------------------------------------- main


def _main_grid(frame: pd.DataFrame) -> Grid:
    pairs = _ordered(frame, "pair")
    variants = list(dict.fromkeys(frame["variant"]))
    baseline = text(frame["baseline"].iloc[0])
    protocol = frame.groupby("variant", sort=False)["protocol"].agg(lambda s: "".join(s.map(text))).to_dict()

    def cell(r: pd.Series, i: Hashable) -> Cell:
        n = _int(r["n"])
        if r["pair"] == AVERAGE:
            note = "" if flag(r["complete"]) else _pairs_note(n, len(pairs))
            return Cell(value=r["mean"], bold=flag(r["best"]), note=note, source=(i, "mean"))
        if r["variant"] == TEACHER_ROW:
            return Cell(value=r["mean"], std=r["std"] if finite(r["std"]) else None, source=(i, "mean"))
        if n == 0:
            return Cell()
        return Cell(value=r["mean"], std=r["std"] if n >= 2 else None, n=n, show_n=n < r["n_max"],
                    mark=text(r["mark"]), bold=flag(r["best"]), source=(i, "mean"))

    def label(v: str) -> str:
        shown = f"{v} (baseline)" if v == baseline and v != TEACHER_ROW else v
        return protocol_label(shown, protocol.get(v))

    grid = pivot(frame, rows=variants, columns=pairs + [AVERAGE], cell=cell, label=label)
    grid.rule_after = (0,)  # the teacher row is a reference, not a competitor
    return grid


def main_view(prep: Prepared, cells: pd.DataFrame) -> View:
    """Variants × pairs (+ Average): mean ± std over seeds of the metric, best bold, ↑/↓ vs the baseline.

    The frame also carries each cell's gain over the baseline with its interval, so the
    HTML page's long table reads one frame.
    """
    info = prep.info
    by_cell = {(r.variant, r.pair): r for r in cells.itertuples()}
    n_max = cells.groupby("pair")["n"].max().to_dict()
    pair_of = prep.runs.drop_duplicates("pair").set_index("pair")
    averages = {}
    for v in prep.variants:
        means = [by_cell[(v, p)].mean for p in prep.pairs if (v, p) in by_cell]
        averages[v] = (sum(means) / len(means), len(means)) if means else (math.nan, 0)
    complete = [v for v in prep.variants if averages[v][1] == len(prep.pairs)]
    best_avg = best_of({v: averages[v][0] for v in (complete or prep.variants)})
    best = {p: best_of({v: by_cell[(v, p)].mean for v in prep.variants if (v, p) in by_cell}) for p in prep.pairs}

    def where(p: str) -> dict[str, str]:
        return {"teacher": text(pair_of.at[p, "teacher"]), "student": text(pair_of.at[p, "student"])}

    data = []
    teacher_means = []
    for p in prep.pairs:
        mean, std, n = teacher_top1(prep, p)
        std = std if finite(std) and std > 0.005 else math.nan  # one checkpoint: no spread to show
        if finite(mean):
            teacher_means.append(mean)
        data.append({"variant": TEACHER_ROW, "pair": p, **where(p), "mean": mean, "std": std, "n": n})
    data.append({"variant": TEACHER_ROW, "pair": AVERAGE,
                 "mean": sum(teacher_means) / len(teacher_means) if teacher_means else math.nan,
                 "n": len(teacher_means), "complete": len(teacher_means) == len(prep.pairs)})
    for v in prep.variants:
        for p in prep.pairs:
            c = by_cell.get((v, p))
            row = {"variant": v, "pair": p, **where(p), "n": 0, "n_max": n_max.get(p, 0),
                   "protocol": prep.protocols.get(v, "")}
            if c is not None:
                row.update({"mean": c.mean, "std": c.std, "n": c.n, "gain": c.mean_diff, "gain_low": c.ci_low,
                            "gain_high": c.ci_high, "n_paired": c.n_paired, "p_value": c.p_value,
                            "p_adjusted": c.p_adjusted, "best": v in best[p],
                            "mark": text(c.mark) + (MIXED_MARK if (v, p) in prep.mixed_teachers else "")})
            data.append(row)
        avg, k = averages[v]
        data.append({"variant": v, "pair": AVERAGE, "mean": avg, "n": k, "complete": k == len(prep.pairs),
                     "best": v in best_avg, "protocol": prep.protocols.get(v, "")})
    frame = pd.DataFrame(data).reindex(columns=[
        "variant", "pair", "teacher", "student", "metric", "mean", "std", "n", "n_max", "gain", "gain_low", "gain_high",
        "n_paired", "p_value", "p_adjusted", "mark", "best", "complete", "baseline", "alpha", "correction", "protocol"])
    frame = frame.assign(metric=prep.metric, baseline=prep.baseline, alpha=prep.alpha, correction=prep.correction)
    frame["protocol"] = frame["protocol"].map(text)
    frame["mark"] = frame["mark"].map(text)

    spread = "mean ± std (sample std, ddof = 1) over seeds" if prep.max_seeds >= 2 else "one run per cell"
    notes = [f"{info.caption}; {spread}. Teacher: measured test top-1 of the checkpoint."]
    notes += significance_notes(prep, cells)
    notes.append("**Bold**: best student per column (ties all bold). (n=k): fewer seeds than the column's maximum. "
                 "Average: mean over pairs of the cell means; (k/m pairs) when a row lacks some pairs.")
    notes += protocol_notes(prep)
    if len(prep.not_done):
        notes.append(f"{len(prep.not_done)} run(s) not done (running or failed) are left out; see the runs-not-done table.")
    notes += prep.notes
    return View(name=MAIN, title=f"Test top-1 (%), {info.short}", frame=frame, notes=notes, grid=_main_grid)


# ---------------------------------------------------------------------------- gains


def _gain_grid(frame: pd.DataFrame) -> Grid:
    pairs = _ordered(frame, "pair")
    per_pair = frame[frame["pair"] != AVERAGE]
    n_max = per_pair.groupby("pair")["n"].max().to_dict()
    average = frame[frame["pair"] == AVERAGE].set_index("variant")

    def cell(r: pd.Series, i: Hashable) -> Cell:
        n = _int(r["n"])
        if r["pair"] == AVERAGE:
            return Cell(value=r["mean_diff"], signed=True, interval=(r["ci_low"], r["ci_high"]),
                        note=_pairs_note(n, len(pairs)), source=(i, "mean_diff"))
        if n == 0:
            return Cell()
        return Cell(value=r["mean_diff"], signed=True, interval=(r["ci_low"], r["ci_high"]), n=n,
                    show_n=n < n_max[r["pair"]], mark=text(r["mark"]), source=(i, "mean_diff"))

    variants = list(dict.fromkeys(frame["variant"]))
    grid = pivot(frame, rows=variants, columns=pairs + [AVERAGE], cell=cell)
    grid.header[-1] = "Mean over pairs"
    grid.header.append("Won / tied / lost")
    for row, v in zip(grid.rows, variants):
        a = average.loc[v]
        untested = f" ({_int(a['untested'])} untested)" if _int(a["untested"]) else ""
        row.append(Cell(text=f"{_int(a['won'])} / {_int(a['tied'])} / {_int(a['lost'])}{untested}"))
    return grid


def gain_view(prep: Prepared, cells: pd.DataFrame) -> View | None:
    """Per variant × pair: the mean paired difference to the baseline with its interval (None without a baseline).

    The `Average` row of each variant is the mean of its per-pair gains with a t interval
    across pairs, and how many pairs it won, tied and lost (significant after correction).
    """
    if not prep.has_baseline:
        return None
    compared = cells[cells["_test"].notna()]
    data = []
    for v in prep.variants:
        if v == prep.baseline:
            continue
        mine = compared[compared["variant"] == v]
        for p in prep.pairs:
            c = mine[mine["pair"] == p]
            if c.empty:
                data.append({"variant": v, "pair": p, "n": 0})
                continue
            c = c.iloc[0]
            data.append({"variant": v, "pair": p, "n": c["n_paired"], **{k: c[k] for k in (
                "mean_diff", "std_diff", "ci_low", "ci_high", "t_stat", "df", "p_value", "p_adjusted", "mark")}})
        gains = [g for g in mine["mean_diff"] if finite(g)]
        mean, low, high, k = stats.mean_interval(gains, prep.alpha)
        marks = mine.loc[mine["p_value"].notna(), "mark"].tolist()
        data.append({"variant": v, "pair": AVERAGE, "n": k, "mean_diff": mean,
                     "std_diff": stats.mean_std(gains)[1], "ci_low": low, "ci_high": high,
                     "won": marks.count("↑"), "tied": marks.count(""), "lost": marks.count("↓"),
                     "untested": len(prep.pairs) - len(marks)})
    frame = pd.DataFrame(data).reindex(columns=[
        "variant", "pair", "metric", "n", "mean_diff", "std_diff", "ci_low", "ci_high", "t_stat", "df", "p_value",
        "p_adjusted", "mark", "won", "tied", "lost", "untested", "baseline", "alpha", "correction"])
    frame = frame.assign(metric=prep.metric, baseline=prep.baseline, alpha=prep.alpha, correction=prep.correction)
    frame["mark"] = frame["mark"].map(text)
    notes = [
        f"Gain over `{prep.baseline}` in points of {prep.info.short} top-1: the mean of the per-seed differences "
        f"(runs paired by pair and seed) with its {prep.confidence} confidence interval [low, high] (paired t, "
        "df = n − 1); (n=k): fewer shared seeds than the column's maximum.",
        f"Mean over pairs: the mean of the per-pair gains, with its {prep.confidence} t interval across pairs "
        "(df = pairs − 1; none with one pair). Won / tied / lost: pairs where the gain is significantly positive / "
        "not significant / significantly negative, by the marks below; untested: fewer than 2 shared seeds.",
    ] + significance_notes(prep, cells)
    return View(name=GAIN, title=f"Gain over {prep.baseline} (points, {prep.info.short})", frame=frame,
                notes=notes, grid=_gain_grid)


# ---------------------------------------------------------------------------- seeds needed


_SEEDS_HEADER = ["Pair", "Method", "Seeds", "Gain", "Std of differences", "Detectable at these seeds",
                 "Seeds for this gain"]


def _seeds_grid(frame: pd.DataFrame) -> Grid:
    rows = []
    for i, r in frame.iterrows():
        needed = r["seeds_needed"]
        if finite(needed):
            needed_cell = Cell(text=str(int(needed)))
        else:
            needed_cell = Cell(text="never (no difference)" if needed == math.inf and r["mean_diff"] == 0 else
                               f"> {int(r['seeds_cap']):,}" if needed == math.inf else "—")
        rows.append([Cell(text=r["pair"]), Cell(text=r["variant"]), Cell(text=str(_int(r["n"]))),
                     Cell(value=r["mean_diff"], signed=True, source=(i, "mean_diff")),
                     Cell(value=r["std_diff"], source=(i, "std_diff")),
                     Cell(value=r["mdd"], note="points" if finite(r["mdd"]) else "", source=(i, "mdd")),
                     needed_cell])
    return Grid(header=list(_SEEDS_HEADER), rows=rows, align=["l", "l", "r", "r", "r", "r", "r"])


def seeds_view(prep: Prepared, cells: pd.DataFrame, max_seeds: int = 100_000) -> View | None:
    """Per pair and method: the smallest gain the paired test detects at the seeds run, and the seeds the observed gain needs.

    Both from the observed std of the paired differences, at the report's α, power 0.8.
    None without a baseline or without 2 shared seeds anywhere.
    """
    compared = cells[cells["_test"].notna() & (cells["n_paired"] >= 2)]
    if not prep.has_baseline or compared.empty:
        return None
    data = []
    for c in compared.itertuples():
        data.append({"pair": c.pair, "variant": c.variant, "n": c.n_paired, "mean_diff": c.mean_diff,
                     "std_diff": c.std_diff,
                     "mdd": stats.min_detectable_difference(c.std_diff, int(c.n_paired), prep.alpha, POWER),
                     "seeds_needed": stats.seeds_needed(c.mean_diff, c.std_diff, prep.alpha, POWER, max_seeds),
                     "seeds_cap": max_seeds})
    frame = pd.DataFrame(data).assign(metric=prep.metric, baseline=prep.baseline, alpha=prep.alpha, power=POWER)
    notes = [
        f"Detectable at these seeds: the smallest true gain over `{prep.baseline}` that a paired two-sided t-test "
        f"with this many seeds finds with probability {POWER:g} at α = {prep.alpha:g}, if the std of the per-seed "
        "differences is the one observed. Seeds for this gain: how many seeds that test needs to find the observed "
        "gain with that probability. Exact power of the paired t-test from the noncentral t distribution "
        f"(Lenth 1989, Applied Statistics 38:185–189); see {READING}.",
        "Both take the observed std as the truth, so with few seeds they are rough; a zero std (identical on "
        "every seed) gives no estimate. They ignore the multiple-comparison correction.",
    ]
    return View(name=SEEDS, title=f"Seeds needed: detectable gain over {prep.baseline} ({prep.info.short})",
                frame=frame, notes=notes, grid=_seeds_grid)
