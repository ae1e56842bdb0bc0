"""The grid validator's base: one-line errors that name the file (or the `--set` override) and the
key path, and the checks of mappings and typed values every section uses."""

from __future__ import annotations

from typing import Any, Callable

from kdbench.core.hparams import coerce, type_name
from kdbench.core.registry import did_you_mean
from kdbench.errors import KdbenchError
from kdbench.grid.recipe import merge_schedule
from kdbench.grid.schema import SCHEDULE_DEFAULTS, _SCHEDULE_TYPES
from kdbench.grid.yaml_io import one_line


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


class Checker:
    """Validation with the file name and the key path in every message."""

    def __init__(self, source: str, source_of: Callable[[str], str] | None = None) -> None:
        self.source = source
        self.source_of = source_of
        self.rule = "scale"  # the grid's epoch rule and whether its milestones are derived, set by `grid()`
        self.derived_milestones = False

    def fail(self, path: str, message: str) -> KdbenchError:
        source = self.source_of(path) if self.source_of else self.source
        where = f"{source}: {path}: " if path else f"{source}: "
        return KdbenchError(one_line(where + message))

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

    def merged(self, base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
        """A schedule with overrides applied; derived milestones follow its epochs."""
        return merge_schedule(base, *overrides, derived_milestones=self.derived_milestones)

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
