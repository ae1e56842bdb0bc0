"""Grid YAML → a validated, resolved `Grid`, with one-line errors that name the file and key.

A grid file describes teacher→student pairs, method variants and seeds; `kdbench.plan`
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
                                   #   reference milestones scaled to `epochs` (kdbench.recipe.
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
                                   #   or a file path (it must contain '/' or a '.'), hashed as
                                   #   written, relative to the working folder
      seed: 0                      #   seed of teachers trained in the grid (checkpoint: train)
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

Rules: unknown keys are refused with a did-you-mean suggestion. Two variants (or, after
per-pair overrides, two variants of one pair) that resolve to the same method and
hyper-parameters are an error, and so are two pairs with the same teacher, student and
schedule. Numbers like `5e-4` are read as floats (plain YAML 1.1 would read a string), and
a key repeated in one mapping is an error. `kdbench run/status --set key.path=value` changes
the file's mapping before this validation (`kdbench.overrides`).
"""

from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from kdbench.errors import KdbenchError
from kdbench.hparams import coerce, type_name
from kdbench import epoch_hparams
from kdbench.recipe import (DEFAULT_EPOCH_HPARAM_RULE, EPOCH_HPARAM_RULES, merge_schedule, option_defaults,
                            resolve_schedule, scaled_milestones, schedule_defaults)
from kdbench.registry import did_you_mean
from kdbench.tracking import SINK_NAMES

TOP_LEVEL_KEYS = ("name", "dataset", "data", "seeds", "schedule", "teachers", "pairs", "methods", "options")

# The recipe's defaults, as a grid file would spell them out (kdbench.recipe is their home).
SCHEDULE_DEFAULTS: dict[str, Any] = schedule_defaults()
OPTION_DEFAULTS: dict[str, Any] = option_defaults()

TEACHER_SOURCES = ("mdistiller", "train", "torchvision")
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
        """`"teacher->student"`, or `"->student"` without a teacher."""
        return f"{self.teacher.arch if self.teacher else ''}->{self.student}"


@dataclass(frozen=True)
class Grid:
    """A validated grid file with every default filled in.

    `dataset` is the resolved spec (with `options.val_size` merged in); `schedule` is the
    grid-level schedule (`lr` may still be "auto"; `kdbench.recipe.lr_for` resolves it per
    student); `variants` are in file order with sweeps expanded. `epoch_hparams` is the rule
    for hyper-parameters that count epochs (`kdbench.epoch_hparams`); `derived_milestones`
    says that no schedule of the grid sets milestones, so that they follow each schedule's
    epochs (`kdbench.recipe.merge_schedule`). `overrides` are the
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


# -- entry points ---------------------------------------------------------------------------


def load_grid(path: str | Path) -> Grid:
    """Read and validate the grid YAML at `path`; every mistake raises a one-line `KdbenchError`.

    `kdbench.overrides.load_grid(path, overrides)` does the same with `--set` overrides.
    """
    text = read_text(path)
    return replace(parse_grid(parse_yaml(text, str(path)), str(path)), text=text)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of the grid file at `path`; a missing or unreadable file is a one-line `KdbenchError`."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KdbenchError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise KdbenchError(f"{source}: is a folder, not a grid file") from None
    except UnicodeDecodeError as exc:
        raise KdbenchError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise KdbenchError(f"{source}: cannot read: {exc.strerror or exc}") from None


def parse_grid(obj: Any, source: str = "<grid>", source_of: Callable[[str], str] | None = None) -> Grid:
    """Validate an already-parsed grid (a dict as `yaml.safe_load` returns it); `source` prefixes errors.

    `source_of(key_path)`, when given, names the source of an error at `key_path` instead
    (`--set` overrides use it to blame the override that set the key).
    """
    return _Parser(source, source_of).grid(obj)


# -- YAML -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `5e-4` as a float and refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings `_Loader` would read as floats, so a dump reads back equal."""


# YAML 1.1 wants a dot in a float ("5.0e-4"); people write "5e-4" and mean a number.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def dump_yaml(obj: Any) -> str:
    """`obj` as block YAML (short lists and mappings inline) that `parse_yaml` reads back equal."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text read with the grid rules (`5e-4` a float, no repeated keys); errors are one line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        what = exc.problem or exc.context or "malformed YAML"
        if exc.problem and exc.context:
            what += f" ({exc.context}"
            if exc.context_mark and exc.context_mark is not mark:
                what += f" started on line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            what += ")"
        raise KdbenchError(_one_line(f"{source}:{where} invalid YAML: {what}")) from None
    except yaml.YAMLError as exc:
        raise KdbenchError(_one_line(f"{source}: invalid YAML: {exc}")) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- validation -----------------------------------------------------------------------------


def describe_value(value: Any) -> str:
    """A value as error messages show it: `'ten' (str)`, `null`, a shortened repr for big ones."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _bound_text(tp: Any, low: float | None, inclusive: bool) -> str:
    name = type_name(tp)
    if low is None:
        return name
    return f"{name} {'>=' if inclusive else '>'} {low:g}"


class _Parser:
    """Validation with the file name and the key path in every message."""

    def __init__(self, source: str, source_of: Callable[[str], str] | None = None) -> None:
        self.source = source
        self.source_of = source_of

    def fail(self, path: str, message: str) -> KdbenchError:
        source = self.source_of(path) if self.source_of else self.source
        where = f"{source}: {path}: " if path else f"{source}: "
        return KdbenchError(_one_line(where + message))

    def wrap(self, path: str, exc: KdbenchError) -> KdbenchError:
        return self.fail(path, str(exc))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...] | None = None,
                required: tuple[str, ...] = (), what: str = "a mapping") -> dict:
        """`value` as a dict (null counts as empty), its keys checked against `allowed`."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected {what}, got {describe_value(value)}")
        for key in value:
            key_path = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise self.fail(key_path, f"expected a string key, got {describe_value(key)}")
            if allowed is not None and key not in allowed:
                hint = did_you_mean(key, list(allowed)) or f"; allowed: {', '.join(allowed)}"
                raise self.fail(key_path, f"unknown key{hint}")
        for key in required:
            if key not in value:
                raise self.fail(f"{path}.{key}" if path else key, "missing (required)")
        return value

    def typed(self, value: Any, tp: Any, path: str, low: float | None = None, inclusive: bool = True) -> Any:
        """`value` checked against annotation `tp` (and a lower bound), converted where lossless."""
        ok, converted = coerce(value, tp)
        if ok and low is not None:
            numbers = converted if isinstance(converted, (list, tuple)) else [converted]
            ok = all(not isinstance(n, (int, float)) or (n >= low if inclusive else n > low) for n in numbers)
        if not ok:
            raise self.fail(path, f"expected {_bound_text(tp, low, inclusive)}, got {describe_value(value)}")
        return list(converted) if isinstance(converted, tuple) else converted

    # -- sections ---------------------------------------------------------------------------

    def grid(self, obj: Any) -> Grid:
        if obj is None:
            raise self.fail("", "empty file; expected a mapping with name, dataset, pairs and methods")
        if not isinstance(obj, dict):
            raise self.fail("", f"expected a mapping at the top level, got {describe_value(obj)}")
        top = self.mapping(obj, "", TOP_LEVEL_KEYS, required=("name", "dataset", "pairs", "methods"))

        name = top["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail("name", f"expected a name of letters, digits, _ . + -, got {describe_value(name)}")

        options = self.options(top.get("options"))
        dataset = self.dataset(top["dataset"], top.get("options") or {}, options)
        options["val_size"] = dataset.get("val_size", options["val_size"])
        data_root = self.data(top.get("data"))
        seeds = self.seeds(top.get("seeds", [0]))
        raw_schedule = dict(self.mapping(top.get("schedule"), "schedule"))
        self.rule = self.epoch_rule(raw_schedule.pop("epoch_hparams", DEFAULT_EPOCH_HPARAM_RULE))
        given = self.schedule_overrides(raw_schedule, "schedule")
        self.derived_milestones = "milestones" not in given
        schedule = self.check_schedule(merge_schedule(SCHEDULE_DEFAULTS, given, derived_milestones=self.derived_milestones),
                                       "schedule")
        teachers = self.teacher_defaults(top.get("teachers"), schedule)
        variants = self.variants(top["methods"], schedule["epochs"])
        pairs = self.pairs(top["pairs"], teachers, schedule, variants)
        return Grid(
            name=name, source=self.source, dataset=dataset, data_root=data_root, seeds=seeds,
            schedule=schedule, teachers=teachers, pairs=pairs, variants=variants, options=options,
            epoch_hparams=self.rule, derived_milestones=self.derived_milestones,
        )

    def epoch_rule(self, value: Any) -> str:
        if value not in EPOCH_HPARAM_RULES:
            hint = did_you_mean(value, list(EPOCH_HPARAM_RULES)) if isinstance(value, str) else ""
            raise self.fail("schedule.epoch_hparams", f"expected {' or '.join(EPOCH_HPARAM_RULES)}, "
                                                      f"got {describe_value(value)}{hint}")
        return value

    def merged(self, base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
        """A schedule with overrides applied; derived milestones follow its epochs."""
        return merge_schedule(base, *overrides, derived_milestones=self.derived_milestones)

    def options(self, raw: Any) -> dict[str, Any]:
        given = self.mapping(raw, "options", tuple(OPTION_DEFAULTS))
        options = dict(OPTION_DEFAULTS)
        for key, value in given.items():
            if key == "log":
                options[key] = self.sinks(value, "options.log")
                continue
            tp, low, inclusive = _OPTION_TYPES[key]
            options[key] = self.typed(value, tp, f"options.{key}", low, inclusive)
        return options

    def sinks(self, value: Any, path: str) -> tuple[str, ...]:
        """Tracking sink names: a list (or one name) of `kdbench.tracking.SINK_NAMES`, each once."""
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list):
            raise self.fail(path, f"expected a list of tracking sinks ({', '.join(SINK_NAMES)}), "
                                  f"got {describe_value(value)}")
        for i, name in enumerate(names):
            where = path if isinstance(value, str) else f"{path}[{i}]"
            if not isinstance(name, str) or name not in SINK_NAMES:
                hint = (did_you_mean(name, list(SINK_NAMES)) if isinstance(name, str) else "") \
                    or f"; known: {', '.join(SINK_NAMES)}"
                shown = repr(name) if isinstance(name, str) else describe_value(name)
                raise self.fail(where, f"unknown tracking sink {shown}{hint}")
            if name in names[:i]:
                raise self.fail(where, f"sink '{name}' is listed twice")
        return tuple(names)

    def dataset(self, raw: Any, raw_options: dict, options: dict[str, Any]) -> dict[str, Any]:
        if isinstance(raw, str):
            spec: dict[str, Any] = {"name": raw}
        elif isinstance(raw, dict):
            spec = dict(self.mapping(raw, "dataset", required=("name",)))
            if not isinstance(spec["name"], str):
                raise self.fail("dataset.name", f"expected str, got {describe_value(spec['name'])}")
        else:
            raise self.fail("dataset", f"expected a dataset name or a mapping with name, got {describe_value(raw)}")
        if "val_size" in raw_options:
            if "val_size" in spec and spec["val_size"] != options["val_size"]:
                raise self.fail(
                    "options.val_size",
                    f"{options['val_size']} conflicts with dataset.val_size {spec['val_size']!r}; set it in one place",
                )
            spec["val_size"] = options["val_size"]
        from kdbench import data

        try:
            spec["name"] = data.dataset_class(spec["name"]).name
            keys = {p.name: p for p in data.spec_keys(spec["name"])}
        except KdbenchError as exc:
            raise self.wrap("dataset.name" if isinstance(raw, dict) else "dataset", exc) from None
        for key, value in spec.items():
            if key == "name":
                continue
            if key not in keys:
                hint = did_you_mean(key, list(keys)) or f"; dataset '{spec['name']}' takes: {', '.join(keys)}"
                raise self.fail(f"dataset.{key}", f"unknown key{hint}")
            spec[key] = self.typed(value, keys[key].type, f"dataset.{key}")
        try:
            return dict(data.resolve_spec(spec))
        except KdbenchError as exc:  # range checks of the dataset's constructor
            raise self.wrap("dataset", exc) from None

    def data(self, raw: Any) -> str | None:
        section = self.mapping(raw, "data", ("root",))
        root = section.get("root")
        if root is None:
            return None
        if not isinstance(root, str) or not root:
            raise self.fail("data.root", f"expected a folder path, got {describe_value(root)}")
        return root

    def seeds(self, raw: Any) -> list[int]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("seeds", f"expected a non-empty list of int, got {describe_value(raw)}")
        seeds: list[int] = []
        for i, seed in enumerate(raw):
            seed = self.typed(seed, int, f"seeds[{i}]", 0)
            if seed in seeds:
                raise self.fail(f"seeds[{i}]", f"seed {seed} is listed twice")
            seeds.append(seed)
        return seeds

    def schedule_overrides(self, raw: Any, path: str) -> dict[str, Any]:
        """The schedule keys given at `path`, each checked; cross-key checks come after merging."""
        if isinstance(raw, dict) and "epoch_hparams" in raw:
            raise self.fail(f"{path}.epoch_hparams", "the rule for epoch-counting hyper-parameters is set once, "
                                                     "in the grid's schedule (schedule.epoch_hparams)")
        given = self.mapping(raw, path, tuple(SCHEDULE_DEFAULTS))
        out: dict[str, Any] = {}
        for key, value in given.items():
            tp, low, inclusive = _SCHEDULE_TYPES[key]
            if key == "lr" and value != "auto":
                # Say "auto or a number" rather than the annotation's "'auto' | float".
                ok, _ = coerce(value, float)
                if not ok or value <= 0:
                    raise self.fail(f"{path}.lr", f"expected auto or a float > 0, got {describe_value(value)}")
            out[key] = self.typed(value, tp, f"{path}.{key}", low, inclusive)
        return out

    def check_schedule(self, schedule: dict[str, Any], path: str) -> dict[str, Any]:
        milestones = schedule["milestones"]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise self.fail(f"{path}.milestones", f"expected strictly ascending epochs, got {milestones!r}")
        return schedule

    def teacher_defaults(self, raw: Any, schedule: dict[str, Any]) -> TeacherDefaults:
        section = self.mapping(raw, "teachers", ("checkpoint", "seed", "schedule"))
        checkpoint = self.checkpoint(section.get("checkpoint", TEACHER_DEFAULTS["checkpoint"]), "teachers.checkpoint")
        seed = self.typed(section.get("seed", TEACHER_DEFAULTS["seed"]), int, "teachers.seed", 0)
        overrides = self.schedule_overrides(section.get("schedule"), "teachers.schedule")
        self.check_schedule(self.merged(schedule, overrides), "teachers.schedule")
        return TeacherDefaults(checkpoint=checkpoint, seed=seed, schedule=overrides)

    def checkpoint(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected {', '.join(TEACHER_SOURCES)} or a file path, got {describe_value(value)}")
        if value in TEACHER_SOURCES or "/" in value or "\\" in value or "." in value:
            return value
        raise self.fail(
            path,
            f"expected {', '.join(TEACHER_SOURCES)} or a file path (with '/' or a '.'), "
            f"got {value!r}{did_you_mean(value, list(TEACHER_SOURCES))}",
        )

    def model(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a model name, got {describe_value(value)}")
        from kdbench import models

        try:
            return models.canonical(value)
        except KdbenchError as exc:
            raise self.wrap(path, exc) from None

    # -- methods ----------------------------------------------------------------------------

    def variants(self, raw: Any, epochs: int) -> list[Variant]:
        section = self.mapping(raw, "methods", what="a mapping of variant label to hyper-parameters")
        if not section:
            raise self.fail("methods", "expected at least one method variant, got none")
        variants: list[Variant] = []
        for label, body in section.items():
            path = f"methods.{label}"
            if not _LABEL_RE.match(label):
                raise self.fail(path, "a variant label may hold only letters, digits, _ . + -")
            body = dict(self.mapping(body, path, what="a mapping of hyper-parameters"))
            method_path = f"{path}.method" if "method" in body else path
            method = self.method_name(body.pop("method", label), method_path)
            protocol = self.protocol(method, body.pop("protocol", "grid"), f"{path}.protocol")
            params = self.method_params(method, body, path, allow_sweeps=True)
            swept = [k for k, v in params.items() if isinstance(v, _Sweep)]
            # One variant per combination of swept values, the first swept key varying slowest.
            for picks in itertools.product(*(range(len(params[k].values)) for k in swept)):
                sweep = {k: params[k].values[i] for k, i in zip(swept, picks)}
                sub_label = label
                if sweep:
                    sub_label += "(" + ",".join(f"{k}={_label_value(params[k].raw[i])}" for k, i in zip(swept, picks)) + ")"
                hparams = self.resolve_hparams(method, {**params, **sweep}, path)
                variants.append(Variant(label=sub_label, method=method, hparams=hparams, base=label, sweep=sweep,
                                        protocol=protocol, given=tuple(params)))
        # Labels are unique by construction: base labels are mapping keys without parentheses.
        self.check_distinct([(v.label, v.method, self.trained(v.method, v.hparams, v.given, epochs), v.protocol)
                             for v in variants], "methods")
        return variants

    def trained(self, method: str, hparams: dict[str, Any], given: Any, epochs: int) -> dict[str, Any]:
        """The hyper-parameters a run of `epochs` epochs trains with, under the grid's epoch rule."""
        return epoch_hparams.apply(method, hparams, given, epochs, self.rule)[0]

    def protocol(self, method: str, value: Any, path: str) -> str:
        """`grid` (the grid's schedule, the default) or `own` (the method's official schedules)."""
        if value not in ("grid", "own"):
            raise self.fail(path, f"expected grid or own, got {describe_value(value)}")
        from kdbench import methods

        if value == "own" and not methods.own_schedules(method):
            raise self.fail(path, f"method '{method}' declares no schedule of its own (own_schedules); expected grid")
        return value

    def method_name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a method name, got {describe_value(value)}")
        from kdbench import methods

        try:
            methods.method_class(value)
        except KdbenchError as exc:
            raise self.wrap(path, exc) from None
        return value

    def method_params(self, method: str, body: dict[str, Any], path: str, allow_sweeps: bool) -> dict[str, Any]:
        """Each key of `body` checked as a hyper-parameter of `method`; lists become `_Sweep`s."""
        from kdbench import methods

        params = {p.name: p for p in methods.hparams_of(method)}
        counts_epochs = methods.epoch_hparams(method)
        out: dict[str, Any] = {}
        for key, value in body.items():
            key_path = f"{path}.{key}"
            if key not in params:
                hint = did_you_mean(key, list(params)) or f"; it takes: {', '.join(params) or 'nothing'}"
                raise self.fail(key_path, f"unknown hyper-parameter of method '{method}'{hint}")
            tp = params[key].type
            low = 0 if key in counts_epochs else None  # epochs: an int >= 0
            list_typed = typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)
            is_sweep = isinstance(value, list) and (not list_typed or (value and all(isinstance(x, list) for x in value)))
            if is_sweep and allow_sweeps:
                if not value:
                    raise self.fail(key_path, "an empty list sweeps nothing; give at least one value")
                items = [self.typed(x, tp, f"{key_path}[{i}]", low) for i, x in enumerate(value)]
                for i, item in enumerate(items):
                    if item in items[:i]:
                        raise self.fail(f"{key_path}[{i}]", f"value {value[i]!r} is listed twice")
                out[key] = _Sweep(items, value)
            else:
                out[key] = self.typed(value, tp, key_path, low)
        return out

    def resolve_hparams(self, method: str, values: dict[str, Any], path: str) -> dict[str, Any]:
        from kdbench import methods

        try:
            return methods.resolve_hparams(method, values)
        except KdbenchError as exc:
            raise self.wrap(path, exc) from None

    def check_distinct(self, entries: list[tuple[str, str, dict[str, Any], str]], path: str) -> None:
        """Refuse two labels whose (method, hyper-parameters, protocol) are the same."""
        seen: dict[str, str] = {}
        for label, method, hparams, protocol in entries:
            key = json.dumps([method, hparams, protocol], sort_keys=True, default=str)
            if key in seen:
                raise self.fail(
                    path,
                    f"variants '{seen[key]}' and '{label}' are identical ({method} with the same hyper-parameters); "
                    "remove one",
                )
            seen[key] = label

    # -- pairs ------------------------------------------------------------------------------

    def pairs(self, raw: Any, teachers: TeacherDefaults, schedule: dict[str, Any],
              variants: list[Variant]) -> list[Pair]:
        if not isinstance(raw, list):
            raise self.fail("pairs", f"expected a list of {{teacher, student}} mappings, got {describe_value(raw)}")
        if not raw:
            raise self.fail("pairs", "expected at least one {teacher, student} pair, got an empty list")
        pairs = [self.pair(i, item, teachers, schedule, variants) for i, item in enumerate(raw)]
        seen: dict[str, int] = {}
        for p in pairs:
            teacher = None if p.teacher is None else [p.teacher.arch, p.teacher.checkpoint, p.teacher.seed,
                                                       p.teacher.schedule if p.teacher.checkpoint == "train" else None]
            effective = resolve_schedule(p.student, self.merged(schedule, p.schedule))
            key = json.dumps([teacher, p.student, effective], sort_keys=True)
            if key in seen:
                raise self.fail(
                    f"pairs[{p.index}]",
                    f"same teacher, student and schedule as pairs[{seen[key]}] ({p.name}); "
                    "merge them (use `variants:` and `methods:` in one pair)",
                )
            seen[key] = p.index
        return pairs

    def pair(self, index: int, raw: Any, defaults: TeacherDefaults, schedule: dict[str, Any],
             variants: list[Variant]) -> Pair:
        path = f"pairs[{index}]"
        item = self.mapping(raw, path, ("teacher", "student", "methods", "schedule", "variants"),
                            required=("teacher", "student"), what="a {teacher, student} mapping")
        teacher = self.teacher(item["teacher"], f"{path}.teacher", defaults, schedule)
        student = self.model(item["student"], f"{path}.student")
        overrides = self.schedule_overrides(item.get("schedule"), f"{path}.schedule")
        epochs = self.check_schedule(self.merged(schedule, overrides), f"{path}.schedule")["epochs"]

        labels = self.pair_variants(item, path, variants, teacher is None)
        chosen = [v for v in variants if v.label in labels]
        if teacher is None:
            for v in chosen:
                if _needs_teacher(v.method):
                    raise self.fail(
                        f"{path}.variants" if "variants" in item else path,
                        f"pair without teacher cannot run variant '{v.label}' (method {v.method} needs a teacher)",
                    )

        bases = list(dict.fromkeys(v.base for v in variants))
        method_overrides: dict[str, dict[str, Any]] = {}
        for base, body in self.mapping(item.get("methods"), f"{path}.methods").items():
            o_path = f"{path}.methods.{base}"
            if base not in bases:
                raise self.fail(o_path, f"no such variant in methods{did_you_mean(base, bases)}; "
                                        f"per-pair overrides name a label of `methods`")
            members = [v for v in chosen if v.base == base]
            if not members:
                raise self.fail(o_path, f"variant '{base}' is not run by this pair (see {path}.variants)")
            body = self.mapping(body, o_path, what="a mapping of hyper-parameters")
            if "method" in body:
                raise self.fail(f"{o_path}.method", "a per-pair override cannot change the method")
            values = self.method_params(members[0].method, body, o_path, allow_sweeps=False)
            for key in values:
                if key in members[0].sweep:
                    raise self.fail(f"{o_path}.{key}", f"'{key}' is swept in methods.{base}; a per-pair value would "
                                                       "make the sweep's runs identical")
            method_overrides[base] = values

        hparams: dict[str, dict[str, Any]] = {}
        for v in chosen:
            extra = method_overrides.get(v.base)
            hparams[v.label] = (self.resolve_hparams(v.method, {**v.hparams, **extra}, f"{path}.methods.{v.base}")
                                if extra else v.hparams)
        self.check_distinct([(v.label, v.method, self.trained(v.method, hparams[v.label],
                                                               {*v.given, *method_overrides.get(v.base, {})}, epochs),
                              v.protocol) for v in chosen], f"{path}.methods")
        pair_name = f"{teacher.arch if teacher else ''}->{student}"
        for v in chosen:
            if v.protocol == "own":
                from kdbench import methods

                known = methods.own_schedules(v.method)
                if pair_name not in known:
                    raise self.fail(path, f"variant '{v.label}' trains under {v.method}'s own schedules, which have "
                                          f"none for {pair_name}; known: {', '.join(known)}")
        return Pair(index=index, teacher=teacher, student=student, schedule=overrides, methods=method_overrides,
                    variants=tuple(v.label for v in chosen), hparams=hparams)

    def pair_variants(self, item: dict, path: str, variants: list[Variant], no_teacher: bool) -> set[str]:
        """The labels a pair runs: its `variants:` list (base or expanded labels), or every variant."""
        if "variants" not in item:
            if no_teacher:
                raise self.fail(f"{path}.variants", "missing; a pair without teacher must list the variants it runs "
                                                    "(those whose method needs no teacher, e.g. [vanilla])")
            return {v.label for v in variants}
        raw = item["variants"]
        if not isinstance(raw, list) or not raw:
            raise self.fail(f"{path}.variants", f"expected a non-empty list of variant labels, got {describe_value(raw)}")
        labels = [v.label for v in variants]
        names = list(dict.fromkeys([v.base for v in variants] + labels))
        chosen: set[str] = set()
        for i, name in enumerate(raw):
            if not isinstance(name, str) or name not in names:
                hint = did_you_mean(name, names) if isinstance(name, str) else ""
                raise self.fail(f"{path}.variants[{i}]", f"no such variant {name!r}{hint}")
            members = {v.label for v in variants if v.label == name or v.base == name}
            if members <= chosen:
                raise self.fail(f"{path}.variants[{i}]", f"variant {name!r} is listed twice")
            chosen |= members
        return chosen

    def teacher(self, raw: Any, path: str, defaults: TeacherDefaults, schedule: dict[str, Any],
                arch_path: str | None = None) -> Teacher | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            return self.teacher({"arch": raw}, path, defaults, schedule, arch_path=path)
        item = self.mapping(raw, path, ("arch", "checkpoint", "seed", "schedule"), required=("arch",),
                            what="a model name, a mapping {arch, checkpoint, seed, schedule} or null")
        arch = self.model(item["arch"], arch_path or f"{path}.arch")
        checkpoint = (self.checkpoint(item["checkpoint"], f"{path}.checkpoint")
                      if "checkpoint" in item else defaults.checkpoint)
        seed = self.typed(item["seed"], int, f"{path}.seed", 0) if "seed" in item else defaults.seed
        overrides = self.schedule_overrides(item.get("schedule"), f"{path}.schedule")
        merged = self.check_schedule(self.merged(schedule, defaults.schedule, overrides), f"{path}.schedule")
        return Teacher(arch=arch, checkpoint=checkpoint, seed=seed, schedule=merged)


@dataclass(frozen=True)
class _Sweep:
    """The values of a swept hyper-parameter: converted (`values`) and as written (`raw`)."""

    values: list[Any]
    raw: list[Any]


def _label_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _needs_teacher(method: str) -> bool:
    from kdbench import methods

    return bool(getattr(methods.method_class(method), "needs_teacher", True))
