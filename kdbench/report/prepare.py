"""Runs made ready for views: done runs with the chosen metric, each in its table column.

Decisions worth knowing:

- Only runs with status `done` are averaged; `running` and `failed` runs go to the
  runs-not-done view with their failure reason.
- A run without a teacher (pair `"->student"`, e.g. a shared vanilla run) fills the
  vanilla cell of every pair with that student.
- Variants and pairs are ordered as `variant_order` and `pair_order` say (the parsed grid
  file); any others follow in the order their first run started.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from kdbench.errors import KdbenchError

__all__ = ["DEFAULT_BASELINE", "METRICS", "MetricInfo", "Prepared", "TEACHER_ROW", "VANILLA", "first_seen", "order",
           "pair_label", "prepare", "text"]

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


def pair_label(teacher: str, student: str, dataset: str | None = None) -> str:
    """The table label of a pair: `teacher→student`, `student (no teacher)`, prefixed by the dataset if given."""
    label = f"{teacher}→{student}" if teacher else f"{student} (no teacher)"
    return f"{dataset}: {label}" if dataset else label


def text(x: Any) -> str:
    """`x` as a string; None and NaN as the empty string."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


@dataclass
class Prepared:
    """Done runs ready for views: `runs` has `variant`, `column` (table column label), `seed`, `value`.

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

    @property
    def info(self) -> MetricInfo:
        """How the chosen metric is read and named."""
        return METRICS[self.metric]


def order(found: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    """`found` (deduplicated, in its own order), with the entries of `preferred` first, in that order."""
    found = list(dict.fromkeys(found))
    head = [x for x in dict.fromkeys(preferred or ()) if x in found]
    return head + [x for x in found if x not in head]


def first_seen(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` in the order they started (`started_at`, then `run_id`); runs without a start time last."""
    key = pd.DataFrame({"started": runs["started_at"].map(text), "run_id": runs["run_id"].map(text)}, index=runs.index)
    key["unknown"] = key["started"] == ""
    return runs.loc[key.sort_values(["unknown", "started", "run_id"], kind="stable").index]


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
    frame = first_seen(runs).reset_index(drop=True)
    frame["variant"] = [text(v) or text(m) or "?" for v, m in zip(frame["variant"], frame["method"])]
    frame["teacher"] = [text(t) for t in frame["teacher"]]
    frame["student"] = [text(s) for s in frame["student"]]
    frame["dataset"] = [text(d) for d in frame["dataset"]]
    multi_dataset = frame["dataset"].nunique() > 1
    frame["column"] = [pair_label(t, s, d if multi_dataset else None)
                       for t, s, d in zip(frame["teacher"], frame["student"], frame["dataset"])]
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
        targets = with_teacher.loc[(with_teacher["student"] == row["student"])
                                   & (with_teacher["dataset"] == row["dataset"]), "column"].unique()
        if len(targets) == 0:
            expanded.append(row.to_frame().T)
        for col in targets:
            copy = row.copy()
            copy["column"] = col
            expanded.append(copy.to_frame().T)
    # Back in start order (the index is the position in `frame`), so first-seen order holds.
    table_runs = pd.concat(expanded).sort_index(kind="stable").reset_index(drop=True) if len(done) else done
    table_runs["value"] = pd.to_numeric(table_runs["value"])
    table_runs["teacher_top1"] = pd.to_numeric(table_runs["teacher_top1"], errors="coerce")

    preferred_pairs = None
    if pair_order:
        preferred_pairs = []
        for p in pair_order:
            t, _, s = str(p).replace("→", "->").partition("->")
            preferred_pairs += [c for c in table_runs["column"].unique()
                                if c == pair_label(t, s) or c.endswith(": " + pair_label(t, s))]
    columns = order(table_runs["column"], preferred_pairs)
    variants = order(table_runs["variant"], variant_order)
    return Prepared(runs=table_runs, done=done, not_done=not_done, columns=columns, variants=variants,
                    metric=metric, baseline=baseline, alpha=alpha, notes=notes)
