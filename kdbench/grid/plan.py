"""A grid expands into runs (pair × variant × seed), and runs group into cohorts.

A run's config is everything that decides what is trained, fully resolved; its `run_id`
is the first 12 hex digits of the SHA-256 of that config's canonical JSON. Grid names,
variant labels, evaluation batch size, cohort limits and the data root are not part of it,
so editing them (or adding seeds, pairs and variants) leaves existing runs' ids alone.

A cohort is the runs that can train together: one teacher forward per batch, shared by
members with the same dataset, teacher, seed, epoch count, batch size and speed options.
Members keep their own optimizer and LR schedule.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from kdbench import methods
from kdbench.grid import epoch_hparams
from kdbench.grid.schema import Grid, Pair
from kdbench.errors import KdbenchError
from kdbench.grid.recipe import merge_schedule, resolve_schedule, run_options

def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the text that ids hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any) -> str:
    """The first 12 hex digits of the SHA-256 of `obj`'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:12]


def teacher_training_config(grid: Grid, pair: Pair) -> dict[str, Any]:
    """What training `pair`'s teacher in the grid means: arch, dataset spec, seed and resolved schedule.

    Its `teacher_training_id` names the cache folder `<results>/teachers/<id>/`; it goes
    into the run config of every student of a `checkpoint: train` teacher.
    """
    if pair.teacher is None:
        raise ValueError(f"pairs[{pair.index}] has no teacher")
    return _json_clean({
        "arch": pair.teacher.arch,
        "dataset": grid.dataset,
        "seed": pair.teacher.seed,
        "schedule": resolve_schedule(pair.teacher.arch, pair.teacher.schedule),
        "options": run_options(grid.options),
    })


def teacher_training_id(grid: Grid, pair: Pair) -> str:
    """The hash of `teacher_training_config(grid, pair)`."""
    return config_hash(teacher_training_config(grid, pair))


def teacher_config(grid: Grid, pair: Pair) -> dict[str, Any] | None:
    """The teacher as a run config holds it: `{arch, checkpoint}` (plus `train_id` for trained ones), or None."""
    if pair.teacher is None:
        return None
    out: dict[str, Any] = {"arch": pair.teacher.arch, "checkpoint": pair.teacher.checkpoint}
    if pair.teacher.checkpoint == "train":
        out["train_id"] = teacher_training_id(grid, pair)
    elif pair.teacher.checkpoint == "random":
        out["seed"] = pair.teacher.seed
    return out


def run_schedule(grid: Grid, pair: Pair, label: str) -> dict[str, Any]:
    """The resolved schedule a run of `pair` and variant `label` trains under (its method's own
    for `protocol: own`)."""
    variant = grid.variant(label)
    own = methods.own_schedules(variant.method)[pair.name] if variant.protocol == "own" else {}
    merged = merge_schedule(grid.schedule, pair.schedule, own, derived_milestones=grid.derived_milestones)
    return resolve_schedule(pair.student, merged)


def trained_hparams(grid: Grid, pair: Pair, label: str,
                    epochs: int) -> tuple[dict[str, Any], list[epoch_hparams.Scaled]]:
    """The hyper-parameters a run of `pair` and `label` trains with over `epochs` epochs (the
    grid's epoch rule applied to those it does not set), and what the rule changed."""
    variant = grid.variant(label)
    given = {*variant.given, *pair.methods.get(variant.base, {})}
    return epoch_hparams.apply(variant.method, pair.hparams[label], given, epochs, grid.epoch_hparams)


def run_config(grid: Grid, pair: Pair, label: str, seed: int) -> dict[str, Any]:
    """The fully resolved config of one run: what `run_id` hashes and `config.yaml` holds."""
    variant = grid.variant(label)
    schedule = run_schedule(grid, pair, label)
    config = {
        "dataset": grid.dataset,
        "teacher": teacher_config(grid, pair),
        "student": pair.student,
        "method": variant.method,
        "hparams": trained_hparams(grid, pair, label, schedule["epochs"])[0],
        "seed": seed,
        "schedule": schedule,
        "options": run_options(grid.options),
    }
    if variant.protocol == "own":
        config["protocol"] = "own"  # only then: the run ids of every other run stay as they were
    return _json_clean(config)


def cohort_key_of(config: dict[str, Any]) -> dict[str, Any]:
    """What members of one cohort share, read from a run config."""
    return {
        "dataset": config["dataset"],
        "teacher": config["teacher"],
        "seed": config["seed"],
        "epochs": config["schedule"]["epochs"],
        "batch_size": config["schedule"]["batch_size"],
        "options": config["options"],
    }


@dataclass(frozen=True)
class Run:
    """One training run. `config` is the resolved run config (treat it as read-only).

    `pair` is `"teacher->student"` (`"->student"` without a teacher), `variant` the
    table row label, `teacher_arch` the teacher's architecture or None, `cohort_key` the
    hash of `cohort_key_of(config)`.
    """

    run_id: str
    config: dict[str, Any]
    pair: str
    variant: str
    method: str
    student: str
    teacher_arch: str | None
    seed: int
    cohort_key: str
    epoch_hparams: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash(self.run_id)

    def summary_fields(self, grid_name: str) -> dict[str, Any]:
        """The summary fields the plan knows (for records written without training the run)."""
        cfg = self.config
        return {"grid": grid_name, "pair": self.pair, "teacher": self.teacher_arch, "student": self.student,
                "method": self.method, "variant": self.variant, "hparams": cfg["hparams"], "seed": self.seed,
                "schedule": cfg["schedule"], "options": cfg["options"], "epochs": cfg["schedule"]["epochs"],
                "dataset": cfg["dataset"]["name"], "dataset_spec": cfg["dataset"], "epoch_hparams": self.epoch_hparams}


def plan(grid: Grid) -> list[Run]:
    """Every run of `grid`: pairs in file order, then variants in file order, then seeds."""
    runs: list[Run] = []
    where: dict[str, str] = {}
    for pair in grid.pairs:
        for label in pair.variants:
            for seed in grid.seeds:
                config = run_config(grid, pair, label, seed)
                scaled = trained_hparams(grid, pair, label, config["schedule"]["epochs"])[1]
                run = Run(
                    run_id=config_hash(config), config=config, pair=pair.name, variant=label,
                    method=config["method"], student=pair.student,
                    teacher_arch=pair.teacher.arch if pair.teacher else None, seed=seed,
                    cohort_key=config_hash(cohort_key_of(config)),
                    epoch_hparams=epoch_hparams.record(config["method"], grid.epoch_hparams, scaled),
                )
                here = f"pairs[{pair.index}] variant '{label}' seed {seed}"
                if run.run_id in where:  # config validation should make this impossible
                    raise KdbenchError(f"{grid.source}: {here} and {where[run.run_id]} are the same run ({run.run_id})")
                where[run.run_id] = here
                runs.append(run)
    return runs


def select(grid: Grid, only: str | None) -> list[Run]:
    """The grid's runs; with `only`, those whose pair, variant or run_id contains it."""
    runs = plan(grid)
    if only:
        runs = [r for r in runs if only in r.pair or only in r.variant or r.run_id.startswith(only)]
        if not runs:
            raise KdbenchError(f"--only {only}: no run's pair, variant or run_id matches")
    return runs


@dataclass(frozen=True)
class Cohort:
    """Runs trained together: one teacher (or none), one dataset, seed, epoch count and batch size.

    `key` is the members' shared `cohort_key`; `cohort_id` hashes it with the member
    run_ids, so a split cohort's parts have different ids. `teacher_config` is the teacher
    as run configs hold it (`kdbench.runs.teacher_files.TeacherRef.from_config` resolves it).
    """

    cohort_id: str
    key: str
    teacher_config: dict[str, Any] | None
    dataset: dict[str, Any]
    seed: int
    epochs: int
    batch_size: int
    options: dict[str, Any]
    runs: tuple[Run, ...]

    def __hash__(self) -> int:
        return hash(self.cohort_id)


def cohorts(runs: list[Run], max_size: int = 0) -> list[Cohort]:
    """Group `runs` by `cohort_key` in first-seen order; with `max_size` > 0 split bigger groups evenly.

    A group of n runs splits into ceil(n / max_size) parts whose sizes differ by at most
    one, members kept in order. A pure function of its arguments.
    """
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.cohort_key, []).append(run)
    out: list[Cohort] = []
    for key, members in groups.items():
        parts = math.ceil(len(members) / max_size) if max_size else 1
        size, extra = divmod(len(members), parts)
        start = 0
        for i in range(parts):
            end = start + size + (1 if i < extra else 0)
            out.append(_cohort(key, members[start:end]))
            start = end
    return out


def _cohort(key: str, members: list[Run]) -> Cohort:
    shared = cohort_key_of(members[0].config)
    return Cohort(
        cohort_id=config_hash({"key": key, "runs": sorted(r.run_id for r in members)}),
        key=key, teacher_config=shared["teacher"], dataset=shared["dataset"], seed=shared["seed"],
        epochs=shared["epochs"], batch_size=shared["batch_size"], options=shared["options"],
        runs=tuple(members),
    )


def protocol_lines(grid: Grid, runs: list[Run]) -> list[str]:
    """What `run` and `run --dry-run` say about the recipe around the losses, one line each:
    every variant whose epoch-counting hyper-parameters the grid's rule changed, and warnings
    for values that exceed their schedule and for milestones that never lower the LR."""
    lines, scaled, over = [], {}, {}
    for run in runs:
        epochs = run.config["schedule"]["epochs"]
        for key, (reference, trained) in ((run.epoch_hparams or {}).get("scaled") or {}).items():
            scaled.setdefault(run.variant, {}).setdefault((key, reference, trained, epochs), None)
        for key, value in epoch_hparams.overruns(run.method, run.config["hparams"], epochs):
            over.setdefault((run.variant, key, value, epochs), None)
    for variant, changes in scaled.items():
        method = grid.variant(variant).method
        text = ", ".join(f"{key} {reference} → {trained} for {epochs} epochs" for key, reference, trained, epochs in changes)
        lines.append(f"{variant}: {text} (set for {methods.reference_epochs(method)}; schedule.epoch_hparams: "
                     f"{grid.epoch_hparams})")
    for variant, key, value, epochs in over:
        lines.append(f"warning: {variant}: {key} {value} exceeds the {epochs}-epoch schedule, so it never completes "
                     f"(set by the grid{'' if grid.epoch_hparams == 'scale' else ' or kept by schedule.epoch_hparams: keep'})")
    schedules = [("schedule", grid.schedule)] + [(f"pairs[{p.index}].teacher.schedule", p.teacher.schedule)
                                                 for p in grid.pairs if p.teacher and p.teacher.checkpoint == "train"]
    schedules += [(f"{r.pair} {r.variant}", r.config["schedule"]) for r in runs]
    warned = set()
    for where, schedule in schedules:
        late = [m for m in schedule["milestones"] if m >= schedule["epochs"]]
        key = (tuple(late), schedule["epochs"])
        if late and key not in warned:
            warned.add(key)
            lines.append(f"warning: {where}: milestones {', '.join(map(str, late))} lie at or past the last epoch "
                         f"({schedule['epochs']}): the LR never decays there")
    return lines


def describe_plan(runs: list[Run], cohorts: list[Cohort]) -> list[dict[str, Any]]:
    """One row per run for the dry-run table: run_id, pair, variant, seed, cohort (its cohort_id)."""
    cohort_of = {r.run_id: c.cohort_id for c in cohorts for r in c.runs}
    return [
        {"run_id": r.run_id, "pair": r.pair, "variant": r.variant, "seed": r.seed, "cohort": cohort_of.get(r.run_id)}
        for r in runs
    ]


def _json_clean(obj: Any) -> Any:
    # Round-trip through JSON (key order kept) so that tuples become lists and the dict
    # equals what config.yaml reads back: the hash and the stored config never disagree.
    return json.loads(json.dumps(obj, allow_nan=False))
