"""`kdbench report`: comparison tables (Markdown, LaTeX, CSV) with paired t-tests, and plots.

Pipeline: `results.load()` → `prepare()` (done runs, the chosen metric, table columns)
→ one `Table` per view (`main_table`, `gain_table`, `reproduction_table`,
`teacher_split_table`, `cost_table`, `not_done_table`) → `to_markdown` / `to_latex` /
`to_csv` → files under `--out`; `plots.py` draws the figures.

Decisions worth knowing:

- Only runs with status `done` are averaged. `running` and `failed` runs are listed in
  their own table with the failure reason.
- Significance is a paired two-sided t-test against the baseline variant. Runs are
  paired by (pair, seed); this is valid because the members of a cohort share the data
  order and, for the same student architecture, the initial weights.
- A run without a teacher (pair `"->student"`, e.g. a shared vanilla run) fills the
  vanilla cell of every pair with that student.
- Variants and pairs are ordered as in the grid file when a copy of it is at
  `<results>/<grid>/grid.yaml`; otherwise rows are vanilla, the baseline, then
  alphabetical, and columns alphabetical.
- Several grids under the results folder and no `--grid`: each grid gets its own report
  in `<results>/<grid>/report` (or `<out>/<grid>`).
"""

from __future__ import annotations

import argparse
import io
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from kdbench import atomic, results, stats
from kdbench.errors import KdbenchError
from kdbench.tables import Cell, Table, finite, to_csv, to_latex, to_markdown

__all__ = [
    "METRICS", "Cell", "Prepared", "Report", "Table", "build_report", "cli_report", "cost_table", "gain_table",
    "load_published", "main_table", "not_done_table", "prepare", "reproduction_table", "teacher_split_table",
    "to_csv", "to_latex", "to_markdown", "write_report",
]

DEFAULT_BASELINE = "kd"
TEACHER_ROW = "Teacher"
VANILLA = "vanilla"


@dataclass(frozen=True)
class MetricInfo:
    """How one `--metric` choice reads and names its number."""

    column: str
    short: str
    caption: str


METRICS: dict[str, MetricInfo] = {
    "last": MetricInfo("final_top1", "last epoch", "Test top-1 (%) at the last epoch"),
    "best": MetricInfo(
        "best_top1", "best epoch on the test set — optimistic",
        "Test top-1 (%) at the best epoch on the test set — optimistic: the epoch is chosen on the test set itself",
    ),
    "val": MetricInfo(
        "val_selected_top1", "epoch chosen on validation",
        "Test top-1 (%) at the epoch with the best validation top-1",
    ),
}


# ---------------------------------------------------------------------------- preparing runs


def _pair_label(teacher: str, student: str, dataset: str | None = None) -> str:
    label = f"{teacher}→{student}" if teacher else f"{student} (no teacher)"
    return f"{dataset}: {label}" if dataset else label


def _text(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


@dataclass
class Prepared:
    """Done runs ready for tables: `runs` has `variant`, `column` (table column label), `seed`, `value`.

    `runs` repeats a teacherless run once per pair column that has its student.
    `done` is one row per done run with its own `column` (for costs); `not_done` holds the
    running and failed runs.
    """

    runs: pd.DataFrame
    done: pd.DataFrame
    not_done: pd.DataFrame
    columns: list[str]
    variants: list[str]
    metric: str
    baseline: str
    alpha: float
    notes: list[str] = field(default_factory=list)

    @property
    def has_baseline(self) -> bool:
        """Whether the baseline variant has any done run."""
        return self.baseline in self.variants

    @property
    def max_seeds(self) -> int:
        """The largest number of seeds in any cell."""
        if self.runs.empty:
            return 0
        return int(self.runs.groupby(["variant", "column"])["seed"].nunique().max())


def _order(found: Iterable[str], preferred: Sequence[str] | None, first: Sequence[str] = ()) -> list[str]:
    found = list(dict.fromkeys(found))
    head = [x for x in dict.fromkeys(preferred or first) if x in found]
    return head + sorted((x for x in found if x not in head), key=lambda x: (x.lower(), x))


def prepare(runs: pd.DataFrame, *, metric: str = "last", baseline: str = DEFAULT_BASELINE, alpha: float = 0.05,
            variant_order: Sequence[str] | None = None, pair_order: Sequence[str] | None = None) -> Prepared:
    """Select done runs, read `metric` into `value`, and give every run its table column.

    `pair_order` holds pairs as `"teacher->student"`. Raises `KdbenchError` for
    `metric="val"` when no done run has a validation split.
    """
    if metric not in METRICS:
        raise KdbenchError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    if not 0 < alpha < 1:
        raise KdbenchError(f"--alpha: expected a number between 0 and 1, got {alpha}")
    frame = runs.copy()
    frame["variant"] = [_text(v) or _text(m) or "?" for v, m in zip(frame["variant"], frame["method"])]
    frame["teacher"] = [_text(t) for t in frame["teacher"]]
    frame["student"] = [_text(s) for s in frame["student"]]
    frame["dataset"] = [_text(d) for d in frame["dataset"]]
    multi_dataset = frame["dataset"].nunique() > 1

    def label(row) -> str:
        return _pair_label(row["teacher"], row["student"], row["dataset"] if multi_dataset else None)

    frame["column"] = [label(r) for _, r in frame.iterrows()] if len(frame) else []
    is_done = frame["status"].astype(object).eq("done")
    not_done = frame[~is_done].copy()
    done = frame[is_done].copy()
    notes: list[str] = []

    info = METRICS[metric]
    done["value"] = pd.to_numeric(done[info.column], errors="coerce")
    if metric == "val" and done["value"].notna().sum() == 0 and len(done):
        raise KdbenchError(
            "--metric val: no done run has a validation split (val_selected_top1 is null in every summary); "
            "set data.val_size in the grid, or use --metric last"
        )
    missing = int(done["value"].isna().sum())
    if missing:
        why = "have no validation split" if metric == "val" else f"have no {info.column}"
        notes.append(f"{missing} done run(s) {why} and are left out.")
    done = done[done["value"].notna()].copy()

    # A teacherless run (a shared vanilla run) counts in every pair column with its student.
    with_teacher = done[done["teacher"] != ""]
    expanded = [with_teacher]
    for _, row in done[done["teacher"] == ""].iterrows():
        targets = with_teacher.loc[(with_teacher["student"] == row["student"]) & (with_teacher["dataset"] == row["dataset"]), "column"].unique()
        if len(targets) == 0:
            expanded.append(row.to_frame().T)
        for col in targets:
            copy = row.copy()
            copy["column"] = col
            expanded.append(copy.to_frame().T)
    table_runs = pd.concat(expanded, ignore_index=True) if len(done) else done
    table_runs["value"] = pd.to_numeric(table_runs["value"])
    table_runs["teacher_top1"] = pd.to_numeric(table_runs["teacher_top1"], errors="coerce")

    preferred_pairs = None
    if pair_order:
        preferred_pairs = []
        for p in pair_order:
            t, _, s = str(p).replace("→", "->").partition("->")
            preferred_pairs += [c for c in table_runs["column"].unique() if c == _pair_label(t, s) or c.endswith(": " + _pair_label(t, s))]
    columns = _order(table_runs["column"], preferred_pairs)
    variants = _order(table_runs["variant"], ([VANILLA] + list(variant_order)) if variant_order else None,
                      first=(VANILLA, baseline))
    return Prepared(runs=table_runs, done=done, not_done=not_done, columns=columns, variants=variants,
                    metric=metric, baseline=baseline, alpha=alpha, notes=notes)


# ---------------------------------------------------------------------------- statistics per cell


def _seed_values(prep: Prepared, variant: str, column: str) -> dict[Any, float]:
    """Seed → value for one cell (duplicate runs of a seed are averaged)."""
    sel = prep.runs[(prep.runs["variant"] == variant) & (prep.runs["column"] == column)]
    return {seed: float(g["value"].mean()) for seed, g in sel.groupby("seed", sort=True)}


def _cell_stats(prep: Prepared) -> dict[tuple[str, str], tuple[float, float, int, dict]]:
    out = {}
    for variant in prep.variants:
        for column in prep.columns:
            values = _seed_values(prep, variant, column)
            if values:
                mean, std, n = stats.mean_std(list(values.values()))
                out[(variant, column)] = (mean, std, n, values)
    return out


def _paired(prep: Prepared, cells: dict, variant: str, column: str) -> stats.PairedTest | None:
    if variant == prep.baseline or (variant, column) not in cells or (prep.baseline, column) not in cells:
        return None
    ours, base = cells[(variant, column)][3], cells[(prep.baseline, column)][3]
    shared = sorted(set(ours) & set(base))
    return stats.paired_ttest([ours[s] for s in shared], [base[s] for s in shared])


def _best(values: dict[str, float]) -> set[str]:
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


# ---------------------------------------------------------------------------- tables


def main_table(prep: Prepared) -> Table:
    """Variants × pairs (+ Average): mean ± std over seeds of the metric, best bold, ↑/↓ vs the baseline."""
    info = METRICS[prep.metric]
    cells = _cell_stats(prep)
    header = ["Method"] + prep.columns + ["Average"]
    student_rows = prep.variants
    n_max = {c: max((cells[(v, c)][2] for v in student_rows if (v, c) in cells), default=0) for c in prep.columns}
    multi_seed = prep.max_seeds >= 2

    # Averages over the pairs a row has; complete when it has every column.
    averages = {}
    for v in student_rows:
        means = [cells[(v, c)][0] for c in prep.columns if (v, c) in cells]
        averages[v] = (sum(means) / len(means), len(means)) if means else (math.nan, 0)
    complete = [v for v in student_rows if averages[v][1] == len(prep.columns)]
    best_avg = _best({v: averages[v][0] for v in (complete or student_rows)})
    best = {c: _best({v: cells[(v, c)][0] for v in student_rows if (v, c) in cells}) for c in prep.columns}

    data, rows, tests = [], [], []
    # Teacher row: the measured teacher accuracy, mean over the column's runs.
    teacher_row = [Cell(text=TEACHER_ROW)]
    teacher_means = []
    for c in prep.columns:
        vals = prep.runs.loc[prep.runs["column"] == c, "teacher_top1"].dropna()
        mean, std, n = stats.mean_std(vals.tolist())
        std = std if finite(std) and std > 0.005 else None  # one checkpoint: no spread to show
        teacher_row.append(Cell(value=mean, std=std))
        if finite(mean):
            teacher_means.append(mean)
        data.append({"variant": TEACHER_ROW, "column": c, "mean": mean, "std": std if std else math.nan, "n": n})
    t_avg = sum(teacher_means) / len(teacher_means) if teacher_means else math.nan
    t_note = f"({len(teacher_means)}/{len(prep.columns)} pairs)" if teacher_means and len(teacher_means) < len(prep.columns) else ""
    teacher_row.append(Cell(value=t_avg, note=t_note))
    data.append({"variant": TEACHER_ROW, "column": "Average", "mean": t_avg, "n": len(teacher_means),
                 "complete": len(teacher_means) == len(prep.columns)})
    rows.append(teacher_row)

    for v in student_rows:
        row_label = f"{v} (baseline)" if v == prep.baseline and prep.has_baseline else v
        row = [Cell(text=row_label)]
        for c in prep.columns:
            if (v, c) not in cells:
                row.append(Cell())
                data.append({"variant": v, "column": c, "n": 0, "n_max": n_max[c]})
                continue
            mean, std, n, _ = cells[(v, c)]
            test = _paired(prep, cells, v, c) if multi_seed else None
            mark = test.mark(prep.alpha) if test else ""
            if test:
                tests.append(test)
            row.append(Cell(value=mean, std=std if n >= 2 else None, n=n, show_n=n < n_max[c], mark=mark, bold=v in best[c]))
            data.append({
                "variant": v, "column": c, "mean": mean, "std": std, "n": n, "n_max": n_max[c],
                "p_value": test.p if test and test.testable else math.nan,
                "t_stat": test.t if test and test.testable else math.nan,
                "n_paired": test.n if test else math.nan, "mark": mark, "best": v in best[c],
            })
        avg, k = averages[v]
        row.append(Cell(value=avg, bold=v in best_avg, note=f"({k}/{len(prep.columns)} pairs)" if 0 < k < len(prep.columns) else ""))
        data.append({"variant": v, "column": "Average", "mean": avg, "n": k, "complete": k == len(prep.columns),
                     "best": v in best_avg})
        rows.append(row)

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
    # The teacher row (first) is a reference, not a competitor: rule it off.
    return Table(name="main", title=f"Test top-1 (%), {info.short}", header=header, rows=rows,
                 data=frame, notes=notes, rule_after=(0,))


def gain_table(prep: Prepared) -> Table | None:
    """Per variant × pair: mean ± std of the paired differences to the baseline (None without a baseline)."""
    if not prep.has_baseline:
        return None
    cells = _cell_stats(prep)
    header = ["Method"] + prep.columns + ["Average"]
    tests = {(v, c): _paired(prep, cells, v, c) for v in prep.variants for c in prep.columns}
    n_max = {c: max((t.n for (v, cc), t in tests.items() if cc == c and t), default=0) for c in prep.columns}
    rows, data = [], []
    multi_seed = prep.max_seeds >= 2
    for v in prep.variants:
        if v == prep.baseline:
            continue
        row, means = [Cell(text=v)], []
        for c in prep.columns:
            t = tests[(v, c)]
            if t is None or t.n == 0:
                row.append(Cell())
                data.append({"variant": v, "column": c, "n": 0})
                continue
            mark = t.mark(prep.alpha) if multi_seed else ""
            means.append(t.mean_diff)
            row.append(Cell(value=t.mean_diff, std=t.std_diff if t.n >= 2 else None, n=t.n, show_n=t.n < n_max[c],
                            mark=mark, signed=True))
            data.append({"variant": v, "column": c, "mean_diff": t.mean_diff, "std_diff": t.std_diff, "n": t.n,
                         "t_stat": t.t if t.testable else math.nan, "p_value": t.p if t.testable else math.nan, "mark": mark})
        avg = sum(means) / len(means) if means else math.nan
        row.append(Cell(value=avg, signed=True, note=f"({len(means)}/{len(prep.columns)} pairs)" if 0 < len(means) < len(prep.columns) else ""))
        data.append({"variant": v, "column": "Average", "mean_diff": avg, "n": len(means)})
        rows.append(row)
    frame = pd.DataFrame(data).reindex(columns=["variant", "column", "mean_diff", "std_diff", "n", "t_stat", "p_value", "mark"])
    frame.insert(2, "metric", prep.metric)
    frame["baseline"] = prep.baseline
    notes = [f"Gain over `{prep.baseline}` in points of {METRICS[prep.metric].short} top-1: mean ± std of the "
             "per-seed differences (runs paired by pair and seed); n = shared seeds."]
    notes += _significance_notes(prep, [t for t in tests.values() if t])
    return Table(name="gain", title=f"Gain over {prep.baseline} (points, {METRICS[prep.metric].short})",
                 header=header, rows=rows, data=frame, notes=notes)


# Published method → (kdbench method, hyper-parameters that must match). A variant matches
# when its method is the same and every listed hyper-parameter has this value (a missing
# `standardize` counts as False); other hyper-parameters are not compared, since each paper
# tunes them per pair (see research/methods.md §4).
PUBLISHED_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "kd": ("kd", {"standardize": False}),
    "kd+ls": ("kd", {"standardize": True}),
    "dkd": ("dkd", {"standardize": False}),
    "dkd+ls": ("dkd", {"standardize": True}),
    "rld": ("rld", {"standardize": False}),
}


def load_published() -> pd.DataFrame:
    """The bundled published numbers: columns dataset, teacher, student, method, top1, source."""
    text = resources.files("kdbench").joinpath("published_results.csv").read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text), dtype={"top1": float})


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", _text(name).lower())


def _norm_model(name: Any) -> str:
    # "resnet34_imagenet" (kdbench's ImageNet zoo) matches the papers' "ResNet34".
    return _norm(name).removesuffix("imagenet")


def _variant_matches(runs: pd.DataFrame, variant: str, published_method: str) -> bool:
    spec = PUBLISHED_METHODS.get(published_method)
    if spec is None:
        return False
    method, required = spec
    sel = runs[runs["variant"] == variant]
    if sel.empty or any(_text(m) != method for m in sel["method"]):
        return False
    for hp in sel["hparams"]:
        hp = hp if isinstance(hp, dict) else {}
        if any(bool(hp.get(k, False)) != v if isinstance(v, bool) else hp.get(k) != v for k, v in required.items()):
            return False
    return True


def reproduction_table(prep: Prepared, published: pd.DataFrame | None = None) -> Table | None:
    """Ours minus published, for each pair and variant with a bundled published number (None if none match)."""
    published = load_published() if published is None else published
    cells = _cell_stats(prep)
    pub = published.assign(_key=[(_norm(d), _norm_model(t), _norm_model(s)) for d, t, s in
                                  zip(published["dataset"], published["teacher"], published["student"])])
    rows, data = [], []
    refs: dict[str, int] = {}  # source → reference number, in order of first use
    for c in prep.columns:
        col_runs = prep.runs[prep.runs["column"] == c]
        with_teacher = col_runs[col_runs["teacher"] != ""]  # a shared vanilla run has no teacher
        first = (with_teacher if len(with_teacher) else col_runs).iloc[0]
        key = (_norm(first["dataset"]), _norm_model(first["teacher"]), _norm_model(first["student"]))
        matches = pub[pub["_key"] == key]
        if matches.empty:
            continue
        for _, p in matches.iterrows():
            if p["method"] == "teacher":
                mean, std, n = stats.mean_std(col_runs["teacher_top1"].dropna().tolist())
                candidates = [(TEACHER_ROW, mean, None, None)] if finite(mean) else []
            else:
                candidates = [(v, *cells[(v, c)][:3]) for v in prep.variants
                              if (v, c) in cells and _variant_matches(col_runs, v, p["method"])]
            for who, mean, std, n in candidates:
                gap = mean - p["top1"]
                ours = Cell(value=mean, std=std if n and n >= 2 else None, n=n, show_n=n is not None)
                ref = refs.setdefault(p["source"], len(refs) + 1)
                rows.append([Cell(text=c), Cell(text=who), Cell(text=p["method"]), ours, Cell(value=p["top1"]),
                             Cell(value=gap, signed=True), Cell(text=f"[{ref}]")])
                data.append({"column": c, "variant": who, "published_method": p["method"], "ours_mean": mean,
                             "ours_std": std, "n": n, "published": p["top1"], "gap": gap, "source_ref": ref,
                             "source": p["source"]})
    if not rows:
        return None
    info = METRICS[prep.metric]
    protocol = ("Published numbers mostly report the best test epoch averaged over the papers' trials "
                "(research/methods.md §8); " + ("ours uses the same epoch choice." if prep.metric == "best" else
                                                f"ours is {info.short}, so compare with --metric best for like for like."))
    notes = [
        f"Gap = ours ({info.short}, mean over seeds) − published, in points.",
        protocol,
        "A variant is compared when its method matches and its `standardize` flag equals the published "
        "method's (+LS = logit standardization); other hyper-parameters are not checked.",
        "Sources marked [3rd-party] were quoted by another repository and not checked against the paper.",
    ] + [f"[{k}] {source}" for source, k in refs.items()]
    return Table(name="reproduction", title=f"Reproduction gap: ours − published ({info.short})",
                 header=["Pair", "Row", "Published method", "Ours", "Published", "Gap", "Source"],
                 rows=rows, data=pd.DataFrame(data), notes=notes, align=["l", "l", "l", "r", "r", "r", "c"])


def teacher_split_table(prep: Prepared) -> Table | None:
    """Per variant × pair: last-epoch top-1 on the samples the teacher gets wrong / right (None without data)."""
    runs = prep.runs.copy()
    for col in ("final_top1_teacher_wrong", "final_top1_teacher_right"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    if runs[["final_top1_teacher_wrong", "final_top1_teacher_right"]].notna().sum().sum() == 0:
        return None
    rows, data = [], []
    for v in prep.variants:
        row = [Cell(text=v)]
        for c in prep.columns:
            sel = runs[(runs["variant"] == v) & (runs["column"] == c)]
            wrong, right = sel["final_top1_teacher_wrong"].dropna(), sel["final_top1_teacher_right"].dropna()
            if wrong.empty and right.empty:
                row.append(Cell())
                continue
            w = f"{wrong.mean():.2f}" if len(wrong) else "—"
            r = f"{right.mean():.2f}" if len(right) else "—"
            row.append(Cell(text=f"{w} / {r}"))
            data.append({"variant": v, "column": c, "teacher_wrong_mean": wrong.mean() if len(wrong) else math.nan,
                         "teacher_right_mean": right.mean() if len(right) else math.nan, "n": len(sel)})
        rows.append(row)
    notes = ["Last-epoch test top-1 (%) on the test samples the teacher classifies wrongly / correctly; mean over seeds."]
    return Table(name="teacher_wrong_right", title="Top-1 where the teacher is wrong / right (last epoch)",
                 header=["Method"] + prep.columns, rows=rows, data=pd.DataFrame(data), notes=notes)


def _device_kind(device: Any) -> str:
    d = _text(device).lower()
    if d.startswith("cuda"):
        return "GPU"
    if d.startswith("cpu") or not d:
        return "CPU"
    return d.split(":")[0].upper()


_KIND_NOTES = {"GPU": "GPU-hours: runs on cuda devices", "CPU": "CPU-hours: runs on the CPU (not GPU time)"}


def _duration(seconds: float) -> str:
    if not finite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.1f} min"
    return f"{int(minutes // 60)}h {int(round(minutes % 60)):02d}m"


def cost_table(prep: Prepared) -> Table | None:
    """Per pair: runs, cohorts, wall time per cohort, amortised time per run, device-hours (None if no times)."""
    done = prep.done.copy()
    done["wall_seconds"] = pd.to_numeric(done["wall_seconds"], errors="coerce")
    if done.empty or done["wall_seconds"].notna().sum() == 0:
        return None
    size = pd.to_numeric(done["cohort_size"], errors="coerce").fillna(1).clip(lower=1)
    done["per_run"] = done["wall_seconds"] / size
    done["kind"] = [_device_kind(d) for d in done["device"]]
    kinds = sorted(done["kind"].unique(), key=lambda k: (k != "GPU", k != "CPU", k))
    header = ["Pair", "Runs", "Cohorts", "Wall per cohort", "Per run (amortised)"] + [f"{k}-hours" for k in kinds]
    order = _order(done["column"], prep.columns)
    rows, data = [], []

    def add(label: str, sel: pd.DataFrame) -> None:
        hours = {k: sel.loc[sel["kind"] == k, "per_run"].sum() / 3600 for k in kinds}
        cohort_wall = sel.groupby(sel["cohort"].astype(str))["wall_seconds"].max()
        rows.append([Cell(text=label), Cell(text=str(len(sel))), Cell(text=str(sel["cohort"].astype(str).nunique())),
                     Cell(text=_duration(cohort_wall.mean())), Cell(text=_duration(sel["per_run"].mean()))]
                    + [Cell(value=hours[k]) for k in kinds])
        data.append({"column": label, "runs": len(sel), "cohorts": sel["cohort"].astype(str).nunique(),
                     "wall_per_cohort_s": cohort_wall.mean(), "per_run_s": sel["per_run"].mean(),
                     **{f"{k.lower()}_hours": hours[k] for k in kinds}})

    for c in order:
        add(c, done[done["column"] == c])
    if len(order) > 1:
        add("Total", done)
    notes = ["Members of a cohort share one teacher forward and the cohort's wall time; a run's cost is amortised as "
             "cohort wall time / cohort size. Method costs within a cohort are not separable: see `kdbench bench`.",
             "; ".join(_KIND_NOTES.get(k, f"{k}-hours: runs on {k.lower()} devices") for k in kinds) + ". Done runs only."]
    return Table(name="cost", title="Cost", header=header, rows=rows, data=pd.DataFrame(data), notes=notes)


def not_done_table(prep: Prepared) -> Table | None:
    """Runs that are running or failed, with the failure reason (None when every run is done)."""
    nd = prep.not_done
    if nd is None or nd.empty:
        return None
    rows, data = [], []
    nd = nd.sort_values(["status", "column", "variant", "seed"], key=lambda s: s.astype(str))
    for _, r in nd.iterrows():
        failure = r.get("failure") if isinstance(r.get("failure"), dict) else {}
        reason = _text(failure.get("reason"))
        if failure.get("epoch") is not None:
            reason += f" (epoch {failure['epoch']})"
        epochs = f"{_text(r['epochs_done']).split('.')[0] or '0'}/{_text(r['epochs']).split('.')[0] or '?'}"
        rows.append([Cell(text=_text(r["run_id"])), Cell(text=r["column"]), Cell(text=r["variant"]),
                     Cell(text=_text(r["seed"])), Cell(text=_text(r["status"]) or "?"), Cell(text=epochs),
                     Cell(text=reason or "—")])
        data.append({"run_id": r["run_id"], "column": r["column"], "variant": r["variant"], "seed": r["seed"],
                     "status": r["status"], "epochs_done": r["epochs_done"], "epochs": r["epochs"],
                     "failure_reason": reason})
    return Table(name="not_done", title="Runs not done (not averaged)",
                 header=["Run", "Pair", "Method", "Seed", "Status", "Epochs", "Failure"], rows=rows,
                 data=pd.DataFrame(data), notes=["Re-run `kdbench run GRID` to resume running or failed runs."])


# ---------------------------------------------------------------------------- report


@dataclass
class Report:
    """Every table of one grid's report, plus what the plots need."""

    grid: str
    prepared: Prepared
    tables: list[Table]
    metrics: pd.DataFrame


def build_report(runs: pd.DataFrame, metrics: pd.DataFrame | None = None, *, grid: str = "", metric: str = "last",
                 baseline: str = DEFAULT_BASELINE, alpha: float = 0.05, variant_order: Sequence[str] | None = None,
                 pair_order: Sequence[str] | None = None, published: pd.DataFrame | None = None) -> Report:
    """All tables for one grid's runs (a `results.load()` frame), in reading order."""
    prep = prepare(runs, metric=metric, baseline=baseline, alpha=alpha, variant_order=variant_order, pair_order=pair_order)
    if prep.runs.empty:
        raise KdbenchError(f"grid {grid or '?'}: no run is done yet ({len(prep.not_done)} running or failed); "
                           "run `kdbench status` to see them")
    builders = [main_table, gain_table, lambda p: reproduction_table(p, published), teacher_split_table,
                cost_table, not_done_table]
    tables = [t for t in (b(prep) for b in builders) if t is not None]
    if grid:
        for t in tables:
            t.title = f"{grid}: {t.title}"
    return Report(grid=grid, prepared=prep, tables=tables,
                  metrics=metrics if metrics is not None else pd.DataFrame(columns=results.METRIC_COLUMNS))


def _suffix(metric: str) -> str:
    return "" if metric == "last" else f"_{metric}"


# Tables whose numbers do not depend on --metric keep one file name.
_METRIC_FREE = {"teacher_wrong_right", "cost", "not_done"}


def write_report(report: Report, out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write every table as .md, .tex and .csv, a combined report .md, and (unless `plots=False`) the figures."""
    out = Path(out)
    written: list[Path] = []
    metric = report.prepared.metric
    for t in report.tables:
        stem = t.name if t.name in _METRIC_FREE else t.name + _suffix(metric)
        label = f"tab:kdbench-{report.grid}-{stem}".replace("_", "-") if report.grid else None
        for ext, text in (("md", to_markdown(t)), ("tex", to_latex(t, label=label)), ("csv", to_csv(t))):
            path = out / f"{stem}.{ext}"
            atomic.write_text(path, text)
            written.append(path)
    combined = out / f"report{_suffix(metric)}.md"
    atomic.write_text(combined, f"# kdbench report: {report.grid}\n\n" + "\n\n".join(to_markdown(t) for t in report.tables))
    written.append(combined)
    if plots:
        from kdbench import plots as plotting

        written += plotting.plot_report(report, out / "plots")
    return written


def _grid_order(results_dir: Path, grid: str) -> tuple[list[str] | None, list[str] | None]:
    """Variant and pair order (`"t->s"`) from a copy of the grid file at `<results>/<grid>/grid.yaml`.

    The file is read with `kdbench.config` (sweeps expanded, file order); if that refuses
    it (e.g. written by an older kdbench), its `methods:` keys and `pairs:` entries are
    read as written. No file, or nothing usable: `(None, None)`, and the report falls back
    to vanilla, baseline, alphabetical.
    """
    path = results_dir / grid / "grid.yaml"
    if not path.exists():
        return None, None
    try:
        from kdbench import config

        parsed = config.load_grid(path)
        return [v.label for v in parsed.variants], [p.name for p in parsed.pairs]
    except Exception:  # noqa: BLE001 - ordering is cosmetic: any failure falls back to the raw file
        pass
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    if not isinstance(spec, dict):
        return None, None
    methods = spec.get("methods")
    variants = [str(k) for k in methods] if isinstance(methods, dict) else None
    pairs = []
    for entry in spec.get("pairs") or []:
        if isinstance(entry, str):
            pairs.append(entry)
        elif isinstance(entry, dict) and "student" in entry:
            teacher = entry.get("teacher")
            teacher = teacher.get("arch") if isinstance(teacher, dict) else teacher
            pairs.append(f"{teacher or ''}->{entry['student']}")
    return variants or None, pairs or None


def cli_report(args: argparse.Namespace) -> int:
    """`kdbench report`: build and write the report of one grid, or of every grid; returns the exit code."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: do not squeeze the tables to 80 columns
    results_dir = Path(args.results_dir)
    grids = [args.grid] if args.grid else results.grid_names(results_dir)
    if not grids:
        raise KdbenchError(f"no results under {results_dir}/: run `kdbench run GRID` first")
    reported = 0
    for grid in grids:
        try:
            runs = results.load(results_dir, grid)
        except KdbenchError:
            if len(grids) == 1:
                raise
            console.print(f"grid {grid}: no results yet, skipped")
            continue
        variant_order, pair_order = _grid_order(results_dir, grid)
        rep = build_report(runs, results.load_metrics(results_dir, grid), grid=grid, metric=args.metric,
                           baseline=args.baseline, alpha=args.alpha, variant_order=variant_order, pair_order=pair_order)
        if args.baseline != DEFAULT_BASELINE and not rep.prepared.has_baseline:
            raise KdbenchError(f"--baseline {args.baseline}: no done run of that variant in grid {grid} "
                               f"(variants: {', '.join(rep.prepared.variants)})")
        if args.out:
            out = Path(args.out) / grid if len(grids) > 1 else Path(args.out)
        else:
            out = results_dir / grid / "report"
        for table in rep.tables:
            console.print(Markdown(to_markdown(table)))
            console.print()
        written = write_report(rep, out, plots=not args.no_plots)
        n_plots = sum(1 for p in written if p.parent.name == "plots")
        console.print(f"Wrote {len(written) - n_plots} table files" + (f" and {n_plots} plot files" if n_plots else "")
                      + f" to {out}/")
        reported += 1
    if not reported:
        raise KdbenchError(f"no results under {results_dir}/: run `kdbench run GRID` first")
    return 0
