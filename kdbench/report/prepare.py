"""Runs made ready for views: done runs with the chosen metric, each under its pair's label.

Decisions worth knowing:

- Only runs with status `done` are averaged; `running` and `failed` runs go to the
  runs-not-done view with their failure reason.
- A run without a teacher (pair `"->student"`, e.g. a shared vanilla run) fills the
  vanilla cell of every pair with that student.
- Variants and pairs are ordered as `variant_order` and `pair_order` say (the parsed grid
  file); any others follow in the order their first run started.
- A variant trained under a protocol of its own (another schedule, say) carries a note:
  the `protocol` field of its runs' `summary.json`, or `protocols[variant]`. Views mark
  its rows with † and print the note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from kdbench.grid.schema import RANDOM_TEACHER
from kdbench.runs import records
from kdbench.runs.teacher_files import RANDOM_INIT
from kdbench.errors import KdbenchError

__all__ = ["CORRECTIONS", "DEFAULT_BASELINE", "METRICS", "MIXED_MARK", "MetricInfo", "Prepared", "TEACHER_ROW", "VANILLA",
           "first_seen", "mixed_teachers", "order", "pair_label", "prepare", "text"]

DEFAULT_BASELINE = "kd"
CORRECTIONS = ("holm", "none")  # multiple-comparison corrections of the marks against the baseline
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
    """Done runs ready for views: `runs` has `variant`, `pair` (the pair's label), `seed`, `value`.

    `runs` repeats a teacherless run once per pair that has its student. `done` is one
    row per done run with its own `pair` (for costs); `not_done` holds the running and
    failed runs. `protocols` maps a variant to its protocol note (see the module docstring).
    """

    runs: pd.DataFrame
    done: pd.DataFrame
    not_done: pd.DataFrame
    pairs: list[str]
    variants: list[str]
    metric: str
    baseline: str
    alpha: float
    correction: str = "holm"
    protocols: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mixed_teachers: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def has_baseline(self) -> bool:
        """Whether the baseline variant has any done run."""
        return self.baseline in self.variants

    @property
    def max_seeds(self) -> int:
        """The largest number of seeds in any cell."""
        if self.runs.empty:
            return 0
        return int(self.runs.groupby(["variant", "pair"])["seed"].nunique().max())

    @property
    def info(self) -> MetricInfo:
        """How the chosen metric is read and named."""
        return METRICS[self.metric]

    @property
    def suffix(self) -> str:
        """The file-name suffix of what depends on the metric: none for `last`, else `_best` or `_val`."""
        return "" if self.metric == "last" else f"_{self.metric}"

    @property
    def confidence(self) -> str:
        """The confidence level of the intervals, e.g. `95%`."""
        return f"{100 * (1 - self.alpha):g}%"


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
            correction: str = "holm", variant_order: Sequence[str] | None = None,
            pair_order: Sequence[str] | None = None, protocols: Mapping[str, str] | None = None) -> Prepared:
    """Select done runs, read `metric` into `value`, and give every run its pair label.

    `pair_order` holds pairs as `"teacher->student"`. `protocols` adds protocol notes per
    variant (over those of the run records). Raises `KdbenchError` for `metric="val"` when
    no done run has a validation split.
    """
    if metric not in METRICS:
        raise KdbenchError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    if not 0 < alpha < 1:
        raise KdbenchError(f"--alpha: expected a number between 0 and 1, got {alpha}")
    if correction not in CORRECTIONS:
        raise KdbenchError(f"--correction: expected one of {', '.join(CORRECTIONS)}, got {correction!r}")
    frame = first_seen(runs).reset_index(drop=True)
    frame["variant"] = [text(v) or text(m) or "?" for v, m in zip(frame["variant"], frame["method"])]
    # A random teacher (a control) is a pair of its own: "arch (random)".
    random = [text(c).startswith(RANDOM_INIT) for c in frame.get("teacher_checkpoint", [None] * len(frame))]
    frame["teacher"] = [text(t) + (RANDOM_TEACHER if r and text(t) else "") for t, r in zip(frame["teacher"], random)]
    frame["student"] = [text(s) for s in frame["student"]]
    frame["dataset"] = [text(d) for d in frame["dataset"]]
    multi_dataset = frame["dataset"].nunique() > 1
    frame["pair"] = [pair_label(t, s, d if multi_dataset else None)
                       for t, s, d in zip(frame["teacher"], frame["student"], frame["dataset"])]
    is_done = frame["status"].astype(object).eq(records.Status.DONE.value)
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
    notes += epoch_hparam_notes(done)

    # A teacherless run (a shared vanilla run) counts in every pair with its student.
    with_teacher = done[done["teacher"] != ""]
    expanded = [with_teacher]
    for _, row in done[done["teacher"] == ""].iterrows():
        targets = with_teacher.loc[(with_teacher["student"] == row["student"])
                                   & (with_teacher["dataset"] == row["dataset"]), "pair"].unique()
        if len(targets) == 0:
            expanded.append(row.to_frame().T)
        for label in targets:
            copy = row.copy()
            copy["pair"] = label
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
            preferred_pairs += [c for c in table_runs["pair"].unique()
                                if c == pair_label(t, s) or c.endswith(": " + pair_label(t, s))]
    pairs = order(table_runs["pair"], preferred_pairs)
    variants = order(table_runs["variant"], variant_order)
    controls = sorted({t for t in table_runs["teacher"] if t.endswith(RANDOM_TEACHER)}) if len(table_runs) else []
    if controls:
        notes.append(f"Control: {', '.join(controls)} is a randomly initialised teacher (`checkpoint: random`, the "
                     "architecture's own initialisation under the teacher seed): its pairs ask whether a method's "
                     "gain needs a trained teacher.")
    mixed = mixed_teachers(table_runs)
    if mixed:
        notes.append(MIXED_MARK + " Cells whose runs were trained on different teacher files (their recorded SHA-256s "
                     "differ), so their seeds are not comparable: " + "; ".join(
                         f"{v}, {p}: " + ", ".join(f"run {run} (SHA-256 {sha[:16]}…)" for run, sha in found)
                         for (v, p), found in mixed.items()) + ".")
    return Prepared(runs=table_runs, done=done, not_done=not_done, pairs=pairs, variants=variants, metric=metric,
                    baseline=baseline, alpha=alpha, correction=correction,
                    protocols=_protocols(table_runs, protocols), notes=notes, mixed_teachers=mixed)


#: The mark of a cell whose runs recorded different teacher SHA-256s.
MIXED_MARK = "‡"


def mixed_teachers(runs: pd.DataFrame) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(variant, pair) → [(run_id, teacher SHA-256)] for every cell whose runs recorded more than one
    teacher SHA-256 (one run named per SHA-256)."""
    if "teacher_sha256" not in runs.columns or runs.empty:
        return {}
    out = {}
    for (variant, pair), group in runs.groupby(["variant", "pair"], sort=False):
        first: dict[str, str] = {}
        for run_id, sha in zip(group["run_id"], group["teacher_sha256"]):
            if isinstance(sha, str) and sha:
                first.setdefault(sha, str(run_id))
        if len(first) > 1:
            out[(str(variant), str(pair))] = [(run, sha) for sha, run in first.items()]
    return out


def epoch_hparam_notes(done: pd.DataFrame) -> list[str]:
    """How the runs' epoch-counting hyper-parameters (DKD's warm-up…) followed their schedules:
    the rule each run recorded (`epoch_hparams` in its summary) and the values it scaled."""
    if "epoch_hparams" not in done.columns:
        return []
    rules: dict[str, dict[str, None]] = {}
    for variant, record, epochs in zip(done["variant"], done["epoch_hparams"], done["epochs"]):
        if not isinstance(record, dict):
            continue  # a method without such hyper-parameters, or a run from before kdbench recorded them
        entry = rules.setdefault(str(record.get("rule")), {})
        for key, (reference, trained) in (record.get("scaled") or {}).items():
            entry.setdefault(f"{variant} {key} {reference} → {trained} ({epochs} epochs)", None)
    notes = []
    for rule, changes in rules.items():
        if rule == "scale":
            what = ("scaled to the schedule (`schedule.epoch_hparams: scale`: v → max(1, round(v·E/240)), 0 stays 0; "
                    "values the grid sets are used as given)")
        else:
            what = f"used as set for the reference schedule (`schedule.epoch_hparams: {rule}`)"
        listing = "; ".join(changes) if changes else "no value changed"
        notes.append(f"Hyper-parameters that count epochs (warm-ups, ramps) were {what}: {listing}.")
    return notes


#: The note of rows trained with `protocol: own` (their summaries say "own").
OWN_PROTOCOL = ("own protocol: trained under the method's official per-pair schedules (its `own_schedules`; "
                "kdbench docs, README \"MLKD's own protocol\"), not under this grid's common recipe")


def _protocols(runs: pd.DataFrame, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Variant → protocol note, from the runs' `protocol` field, then `extra`."""
    out: dict[str, str] = {}
    if "protocol" in runs.columns:
        for variant, group in runs.groupby("variant", sort=False):
            notes = [OWN_PROTOCOL if p == "own" else p for p in dict.fromkeys(group["protocol"].map(text)) if p]
            if notes:
                out[str(variant)] = "; ".join(notes)
    out.update({k: v for k, v in (extra or {}).items() if v})
    return out
