"""Grid YAML → a validated, resolved `Grid`, with one-line errors that name the file and key.

The keys, their meaning and defaults are in `kdbench.grid.schema` (and docs/grid-reference.md,
generated from it); `kdbench.grid.overrides` applies `--set` overrides before this validation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from kdbench.errors import KdbenchError
from kdbench.core.registry import did_you_mean
from kdbench.grid.checker import describe_value
from kdbench.grid.recipe import DEFAULT_EPOCH_HPARAM_RULE, EPOCH_HPARAM_RULES, SINK_NAMES, merge_schedule
from kdbench.grid.schema import (OPTION_DEFAULTS, SCHEDULE_DEFAULTS, TEACHER_DEFAULTS, TOP_LEVEL_KEYS, Grid,
                                 TeacherDefaults, _NAME_RE, _OPTION_TYPES)
from kdbench.grid.variants import PairsAndMethods
from kdbench.grid.yaml_io import dump_yaml, parse_yaml, read_text

__all__ = ["dump_yaml", "load_grid", "parse_grid", "parse_yaml", "read_text"]


def load_grid(path: str | Path) -> Grid:
    """Read and validate the grid YAML at `path`; every mistake raises a one-line `KdbenchError`.

    `kdbench.grid.overrides.load_grid(path, overrides)` does the same with `--set` overrides.
    """
    text = read_text(path)
    return replace(parse_grid(parse_yaml(text, str(path)), str(path)), text=text)


def parse_grid(obj: Any, source: str = "<grid>", source_of: Callable[[str], str] | None = None) -> Grid:
    """Validate an already-parsed grid (a dict as `yaml.safe_load` returns it); `source` prefixes errors.

    `source_of(key_path)`, when given, names the source of an error at `key_path` instead
    (`--set` overrides use it to blame the override that set the key).
    """
    return _Parser(source, source_of).grid(obj)


class _Parser(PairsAndMethods):
    """A whole grid: its sections, in order."""

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
        """Tracking sink names: a list (or one name) of `kdbench.grid.recipe.SINK_NAMES`, each once."""
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

    def teacher_defaults(self, raw: Any, schedule: dict[str, Any]) -> TeacherDefaults:
        section = self.mapping(raw, "teachers", ("checkpoint", "seed", "schedule"))
        checkpoint = self.checkpoint(section.get("checkpoint", TEACHER_DEFAULTS["checkpoint"]), "teachers.checkpoint")
        seed = self.typed(section.get("seed", TEACHER_DEFAULTS["seed"]), int, "teachers.seed", 0)
        overrides = self.schedule_overrides(section.get("schedule"), "teachers.schedule")
        self.check_schedule(self.merged(schedule, overrides), "teachers.schedule")
        return TeacherDefaults(checkpoint=checkpoint, seed=seed, schedule=overrides)
