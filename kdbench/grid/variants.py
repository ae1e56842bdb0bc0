"""The grid validator's teachers, methods and pairs: variants with sweeps and protocols, per-pair
overrides, and the checks that no two variants or pairs train the same thing."""

from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from kdbench.core.registry import did_you_mean
from kdbench.errors import KdbenchError
from kdbench.grid import epoch_hparams
from kdbench.grid.checker import Checker, describe_value
from kdbench.grid.recipe import resolve_schedule
from kdbench.grid.schema import TEACHER_SOURCES, Pair, Teacher, TeacherDefaults, Variant

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class PairsAndMethods(Checker):
    """The `teachers:`, `methods:` and `pairs:` sections (the grid's epoch rule in `self.rule`)."""

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
