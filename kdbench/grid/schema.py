"""The grid file's schema: every key with its meaning and default, and the dataclasses of a validated grid.

A grid file describes teacher→student pairs, method variants and seeds; `kdbench.grid.plan`
expands it into runs (pair × variant × seed) and cohorts. Every key::

    name: cifar100_grid            # required; letters, digits, _ . -  (results/<name>/)
    dataset: cifar100              # required; a dataset name, or a mapping of its spec:
                                   #   {name: synthetic, num_classes: 10, train_size: 512, ...}
                                   #   shared keys: train_size, val_size, split_seed
    data:
      root: /path/to/data          # optional data root (as written: relative to the working
                                   #   folder); --data-dir and $KDBENCH_DATA take precedence
    seeds: [0, 1, 2]               # optional, default [0]; distinct ints >= 0
    schedule:                      # optional; each key defaults to the reference recipe
      epochs: 240                  #   int >= 1
      batch_size: 64               #   int >= 1
      lr: auto                     #   auto: 0.01 for ShuffleV1/ShuffleV2/MobileNetV2 students,
                                   #   else 0.05; or a number > 0
      momentum: 0.9                #   SGD momentum
      weight_decay: 5.0e-4
      milestones: [150, 180, 210]  #   strictly ascending; the LR of 1-based epoch e is
                                   #   lr * lr_decay ** (number of milestones < e). Not set: the
                                   #   reference milestones scaled to `epochs` (kdbench.grid.recipe.
                                   #   scaled_milestones; [150, 180, 210] at 240 epochs, [4, 5, 6]
                                   #   at 7), also for a pair or teacher that sets its own epochs;
                                   #   milestones at or past the last epoch never lower the LR
                                   #   (a warning)
      lr_decay: 0.1
      epoch_hparams: scale         #   how method hyper-parameters that count epochs (DKD's and
                                   #   RLD's warmup, CTKD's lambda_epochs) follow a schedule of
                                   #   another length than the one they were set for (240):
                                   #   scale: v -> max(1, round(v * epochs / 240)), 0 stays 0;
                                   #   keep: as they are. Values set in `methods:` are used as
                                   #   given. Only here, not in a pair's or teacher's schedule
    teachers:                      # optional defaults for every pair's teacher
      checkpoint: mdistiller       #   mdistiller: the reference release under the data root;
                                   #   train: train it in the grid (cached by its config hash);
                                   #   torchvision: torchvision's pretrained weights;
                                   #   random: the architecture's own initialisation under
                                   #   the teacher's seed, a control (does a method's gain
                                   #   need a trained teacher?); its pair is "arch (random)";
                                   #   or a file path (it must contain '/' or a '.'), hashed as
                                   #   written, relative to the working folder
      seed: 0                      #   seed of teachers trained in the grid (checkpoint: train)
                                   #   or initialised at random (checkpoint: random)
      schedule: {epochs: 240}      #   schedule of teachers trained in the grid: these keys
                                   #   over the grid's schedule (default: the grid's schedule)
    pairs:                         # required, non-empty; runs follow this order
      - {teacher: resnet32x4, student: resnet8x4}
      - teacher: {arch: wrn_40_2, checkpoint: train, seed: 1, schedule: {lr: 0.05}}
        student: wrn_16_2          #   a mapping teacher overrides the `teachers` defaults
      - teacher: resnet56
        student: resnet20
        methods: {dkd: {beta: 2}}  #   per-pair hyper-parameter overrides, by variant label
        schedule: {lr: 0.01}       #   per-pair schedule overrides (students only)
        variants: [kd, dkd]        #   run only these variants (labels of `methods`, or
                                   #   expanded sweep labels like 'rld(beta=2)'); default: all
      - {teacher: null, student: resnet8, variants: [vanilla]}
                                   #   a pair without teacher: `teacher` is required, write null;
                                   #   it must list its variants, and only methods that need no
                                   #   teacher (vanilla) may run in it, else it is an error
    methods:                       # required, non-empty: variant label → hyper-parameters
      vanilla: {}                  #   the label names the method unless `method:` is given
      kd: {temperature: 4}
      dkd: {beta: 8}
      rld: {beta: [2, 4, 8]}       #   a list sweeps: variants rld(beta=2), rld(beta=4),
                                   #   rld(beta=8); several lists sweep their product
      kd_ls: {method: kd, standardize: true, temperature: 2, kd_weight: 9}
                                   #   labels: letters, digits, _ . + -
      mlkd_own: {method: mlkd, protocol: own}
                                   #   protocol: grid (default: the grid's schedule) or own:
                                   #   the method's official schedule for each pair (its
                                   #   `own_schedules`; MLKD has them); reports mark such rows
    options:
      precision: auto              # auto: bf16 where the device has it natively (CUDA compute
                                   #   capability >= 8.0, CPUs with AVX512-BF16 or AMX), else fp32
                                   #   (what new grids should write); fp32 (the default, so that
                                   #   older grids keep their run ids) | bf16 (autocast) | fp16
                                   #   (autocast, gradient scaler). bf16 or fp16 on a device that
                                   #   would emulate them is a warning
      channels_last: false
      compile: false               # torch.compile the models
      val_size: 0                  # shorthand for the dataset's val_size; setting both to
                                   #   different values is an error
      eval_batch_size: 256        # test-time batch (256 is fastest on CPUs, fine on GPUs)
      max_cohort_size: 0           # 0: no limit; bigger cohorts split evenly
      deterministic: false         # deterministic algorithms, cuDNN deterministic, cuBLAS
                                   #   workspace config: can change GPU numbers, so in run ids
      log: []                      # tracking sinks fed once per epoch: tensorboard, wandb
                                   #   (kdbench[tensorboard], kdbench[wandb]); not in run ids
      cuda_graphs: auto            # capture each cohort step as one CUDA graph and replay it
                                   #   (the same kernels: eager's numbers); auto: on the CUDA
                                   #   devices where it was verified (kdbench.train.graphs.
                                   #   VERIFIED), never on a CPU; not in run ids
      fuse_students: auto          # train a cohort's members of one architecture as one stacked
                                   #   model, each with its own weights, BatchNorm statistics,
                                   #   momentum and loss (equal up to rounding); each run records
                                   #   fused_with; auto: where measured faster (not on CPUs, whose
                                   #   grouped convolutions are slower); not in run ids

Rules: unknown keys are refused with a did-you-mean suggestion. Two variants (or, after
per-pair overrides, two variants of one pair) that resolve to the same method and
hyper-parameters are an error, and so are two pairs with the same teacher, student and
schedule. Numbers like `5e-4` are read as floats (plain YAML 1.1 would read a string), and
a key repeated in one mapping is an error. `kdbench run/status/verify --set key.path=value`
changes the file's mapping before this validation (`kdbench.grid.overrides`).

`python -m kdbench.grid.schema docs/grid-reference.md` writes this reference as the docs page
(a test keeps the two equal).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdbench.grid.recipe import DEFAULT_EPOCH_HPARAM_RULE, option_defaults, schedule_defaults

TOP_LEVEL_KEYS = ("name", "dataset", "data", "seeds", "schedule", "teachers", "pairs", "methods", "options")

# The recipe's defaults, as a grid file would spell them out (kdbench.grid.recipe is their home).
SCHEDULE_DEFAULTS: dict[str, Any] = schedule_defaults()
OPTION_DEFAULTS: dict[str, Any] = option_defaults()

TEACHER_SOURCES = ("mdistiller", "train", "torchvision", "random")
#: How a pair's name marks a randomly initialised teacher (`checkpoint: random`, a control).
RANDOM_TEACHER = " (random)"
TEACHER_DEFAULTS: dict[str, Any] = {"checkpoint": "mdistiller", "seed": 0}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")

# (type, lower bound, bound inclusive?) for the numeric schedule and option keys.
_SCHEDULE_TYPES: dict[str, tuple[Any, float | None, bool]] = {
    "epochs": (int, 1, True),
    "batch_size": (int, 1, True),
    "lr": (typing.Union[Literal["auto"], float], 0, False),
    "momentum": (float, 0, True),
    "weight_decay": (float, 0, True),
    "milestones": (list[int], 1, True),
    "lr_decay": (float, 0, False),
}
_OPTION_TYPES: dict[str, tuple[Any, float | None, bool]] = {
    "precision": (Literal["auto", "fp32", "bf16", "fp16"], None, True),
    "channels_last": (bool, None, True),
    "compile": (bool, None, True),
    "val_size": (int, 0, True),
    "eval_batch_size": (int, 1, True),
    "max_cohort_size": (int, 0, True),
    "deterministic": (bool, None, True),
    "cuda_graphs": (typing.Union[Literal["auto"], bool], None, True),
    "fuse_students": (typing.Union[Literal["auto"], bool], None, True),
}


@dataclass(frozen=True)
class Teacher:
    """A pair's teacher: its architecture, where its weights come from, and how to train it.

    `seed` and `schedule` (the grid's schedule with the teacher overrides; `lr` may be
    "auto") matter only when `checkpoint` is "train".
    """

    arch: str
    checkpoint: str
    seed: int
    schedule: dict[str, Any]


@dataclass(frozen=True)
class TeacherDefaults:
    """The `teachers:` section: defaults for every pair's teacher."""

    checkpoint: str
    seed: int
    schedule: dict[str, Any]  # overrides over the grid's schedule, as validated


@dataclass(frozen=True)
class Variant:
    """One method variant: the table row label, the registered method and its full hyper-parameters.

    `base` is the `methods:` key it came from (per-pair overrides and `variants:` lists
    name it); `sweep` holds the swept keys and this variant's values (empty without a sweep).
    """

    label: str
    method: str
    hparams: dict[str, Any]
    base: str
    sweep: dict[str, Any] = field(default_factory=dict)
    protocol: str = "grid"  # "own": the method's official per-pair schedule (`own_schedules`)
    given: tuple[str, ...] = ()  # the hyper-parameters `methods.<base>` sets (the rest are defaults)


@dataclass(frozen=True)
class Pair:
    """One teacher→student pair, with what it runs.

    `schedule` and `methods` are the per-pair overrides as written (validated);
    `variants` are the labels this pair runs, in the grid's order; `hparams` maps each of
    them to its full hyper-parameters with the per-pair overrides applied.
    """

    index: int
    teacher: Teacher | None
    student: str
    schedule: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    variants: tuple[str, ...]
    hparams: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        """`"teacher->student"` (`"teacher (random)->student"` for a random teacher), or `"->student"` without one."""
        if self.teacher is None:
            return f"->{self.student}"
        return f"{self.teacher.arch}{RANDOM_TEACHER if self.teacher.checkpoint == 'random' else ''}->{self.student}"


@dataclass(frozen=True)
class Grid:
    """A validated grid file with every default filled in.

    `dataset` is the resolved spec (with `options.val_size` merged in); `schedule` is the
    grid-level schedule (`lr` may still be "auto"; `kdbench.grid.recipe.lr_for` resolves it per
    student); `variants` are in file order with sweeps expanded. `epoch_hparams` is the rule
    for hyper-parameters that count epochs (`kdbench.grid.epoch_hparams`); `derived_milestones`
    says that no schedule of the grid sets milestones, so that they follow each schedule's
    epochs (`kdbench.grid.recipe.merge_schedule`). `overrides` are the
    `--set` strings it was loaded with; `text` is the effective grid as YAML, what
    `results/<name>/grid.yaml` keeps (None for a grid parsed from a mapping).
    """

    name: str
    source: str
    dataset: dict[str, Any]
    data_root: str | None
    seeds: list[int]
    schedule: dict[str, Any]
    teachers: TeacherDefaults
    pairs: list[Pair]
    variants: list[Variant]
    options: dict[str, Any]
    overrides: tuple[str, ...] = ()
    text: str | None = field(default=None, repr=False, compare=False)
    epoch_hparams: str = DEFAULT_EPOCH_HPARAM_RULE
    derived_milestones: bool = False

    def variant(self, label: str) -> Variant:
        """The variant labelled `label`."""
        for v in self.variants:
            if v.label == label:
                return v
        raise KeyError(label)


def reference_markdown() -> str:
    """docs/grid-reference.md: this module's key reference as a Markdown page."""
    import textwrap

    doc = __doc__ or ""
    intro, _, rest = doc.partition("Every key::")
    example, _, rules = rest.partition("\nRules:")
    rules = rules.split("\n\n`python -m")[0]
    return ("# Grid reference\n\n<!-- generated by `python -m kdbench.grid.schema docs/grid-reference.md` from "
            "kdbench/grid/schema.py; edit the docstring there -->\n\n"
            + " ".join(intro.split("\n", 2)[2].split()) + " Every key, with its meaning and default:\n\n"
            + "```yaml\n" + textwrap.dedent(example).strip("\n") + "\n```\n\n"
            + "Rules: " + " ".join(rules.split()) + "\n")


if __name__ == "__main__":
    import sys

    Path(sys.argv[1]).write_text(reference_markdown(), encoding="utf-8")
