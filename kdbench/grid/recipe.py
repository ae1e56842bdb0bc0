"""The training recipe: the SGD schedule, the speed options, and the LR rule, with their defaults.

This is the one place where the reference recipe is written down. The grid parser fills
missing keys from these defaults, the trainer reads `Schedule` and `Options`, and
`kdbench teachers train` starts from them. It imports nothing from kdbench.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: Students that the reference recipe (CRD, mdistiller) trains at LR 0.01 instead of 0.05.
SMALL_LR_STUDENTS = frozenset({"shufflev1", "shufflev2", "mobilenetv2"})
AUTO_LR = 0.05
AUTO_LR_SMALL = 0.01

#: The reference schedule's length and LR milestones (CRD, mdistiller: CIFAR-100, 240 epochs).
REFERENCE_EPOCHS = 240
REFERENCE_MILESTONES = (150, 180, 210)

#: How hyper-parameters that count epochs (DKD's warm-up, …) follow a schedule of another
#: length (`schedule.epoch_hparams`): `scale` keeps the reference recipe's shape, `keep` uses
#: the values as they are.
EPOCH_HPARAM_RULES = ("scale", "keep")
DEFAULT_EPOCH_HPARAM_RULE = "scale"


@dataclass(frozen=True)
class Schedule:
    """The SGD recipe of one run; the defaults are the reference CIFAR-100 recipe.

    `lr` is a number, or "auto" before `resolve` applies the LR rule for a student.
    """

    epochs: int = REFERENCE_EPOCHS
    batch_size: int = 64
    lr: float | str = "auto"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = REFERENCE_MILESTONES
    lr_decay: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """LR of 1-based `epoch`: lr · lr_decay^(number of milestones < epoch)."""
        if isinstance(self.lr, str):
            raise ValueError(f"the schedule's lr is {self.lr!r}; resolve it for a student first")
        return self.lr * self.lr_decay ** sum(m < epoch for m in self.milestones)

    def resolve(self, student: str) -> "Schedule":
        """This schedule with `lr` a number (the auto rule applied for `student`)."""
        return dataclasses.replace(self, lr=lr_for(student, self.lr))

    def to_dict(self) -> dict[str, Any]:
        """The schedule as a run config stores it (milestones as a list)."""
        return {**dataclasses.asdict(self), "milestones": list(self.milestones)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Schedule":
        """A schedule from a (resolved or partial) config mapping; missing keys take the defaults."""
        values = dict(values)
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)


def scale_epochs(value: int, epochs: int, reference: int = REFERENCE_EPOCHS) -> int:
    """An epoch count set for a `reference`-epoch schedule, scaled to one of `epochs`.

    The rule of `schedule.epoch_hparams: scale`: max(1, ⌊value·epochs/reference + ½⌋) (the
    nearest integer, halves up), and 0 stays 0 (no warm-up stays none). Equal lengths keep
    the value as it is.
    """
    if value <= 0 or epochs == reference:
        return value
    return max(1, math.floor(value * epochs / reference + 0.5))


def scaled_milestones(epochs: int) -> list[int]:
    """The reference milestones scaled to an `epochs`-long schedule (a schedule that sets
    `epochs` but not `milestones`).

    Each milestone is scaled by `scale_epochs`; milestones that coincide once rounded merge
    into one, and those at or past the last epoch (which would never lower the LR) are left
    out. At 240 epochs these are the reference milestones.
    """
    scaled = sorted({scale_epochs(m, epochs) for m in REFERENCE_MILESTONES})
    return [m for m in scaled if m < epochs]


def merge_schedule(base: dict[str, Any], *overrides: dict[str, Any], derived_milestones: bool) -> dict[str, Any]:
    """`base` with each of `overrides` applied in turn. With `derived_milestones` (no schedule
    of the grid sets `milestones`), milestones that no override sets follow the merged
    `epochs` (`scaled_milestones`)."""
    out = dict(base)
    for layer in overrides:
        out.update(layer)
    if derived_milestones and not any("milestones" in layer for layer in overrides):
        out["milestones"] = scaled_milestones(out["epochs"])
    return out


def schedule_defaults() -> dict[str, Any]:
    """The default schedule as a grid file would spell it out."""
    return Schedule().to_dict()


def lr_for(student: str, lr: float | str = "auto") -> float:
    """The base LR for `student`: `lr` itself, or for "auto" 0.01 (ShuffleV1/V2, MobileNetV2) or 0.05."""
    if lr == "auto":
        return AUTO_LR_SMALL if student.lower() in SMALL_LR_STUDENTS else AUTO_LR
    return float(lr)


def resolve_schedule(student: str, schedule: dict[str, Any]) -> dict[str, Any]:
    """A copy of the mapping `schedule` with `lr` a number (the auto rule applied for `student`)."""
    return {**schedule, "lr": lr_for(student, schedule.get("lr", "auto")), "milestones": list(schedule["milestones"])}


@dataclass(frozen=True)
class Options:
    """Grid options. The first three change what is trained and go into every run config
    (`RUN_OPTION_KEYS`), and so does `deterministic` when true (`run_options`); the others
    change only how fast, or where, things are run and written.
    """

    # auto (bf16 where the device has it natively, else fp32), fp32, bf16 (autocast) or fp16 (+ a gradient
    # scaler). Omitted it stays fp32, as in the first releases, so that their grids keep their run ids.
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    val_size: int = 0
    eval_batch_size: int = 256  # the fastest on CPUs, and fine on GPUs
    max_cohort_size: int = 0  # 0: no limit
    deterministic: bool = False  # deterministic algorithms (kdbench.runs.environment); can change GPU numbers
    log: tuple[str, ...] = ()  # tracking sinks (kdbench.train.tracking); never change results
    # Speed only, the same run ids: one CUDA graph per cohort step (kdbench.train.graphs) and same-architecture
    # members as one stacked model (kdbench.train.fused); auto: where measured to pay (on neither yet).
    cuda_graphs: bool | str = "auto"
    fuse_students: bool | str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """The options as a mapping."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Options":
        """Options from a mapping; keys that are not options (e.g. `processes`) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        if "log" in values:
            values["log"] = tuple(values["log"])
        return cls(**values)


#: The tracking sinks `options.log` may name (`kdbench.train.tracking` feeds them).
SINK_NAMES = ("tensorboard", "wandb")

#: The options that change what is trained: part of every run config, hence of run ids.
RUN_OPTION_KEYS = ("precision", "channels_last", "compile")


def run_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a run config holds: `RUN_OPTION_KEYS`, plus `deterministic` only when true,
    so that the run ids of grids written before it existed do not change."""
    out = {k: options[k] for k in RUN_OPTION_KEYS}
    if options.get("deterministic"):
        out["deterministic"] = True
    return out


def option_defaults() -> dict[str, Any]:
    """The default options as a grid file would spell them out."""
    return Options().to_dict()
