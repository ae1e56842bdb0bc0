"""Hyper-parameters read from a constructor's signature, and checked against user values.

A method's (or dataset's) `__init__` keyword arguments *are* its hyper-parameters: their
annotations give the types and their defaults the defaults. Nothing is declared twice.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from kdbench.errors import KdbenchError
from kdbench.core.registry import did_you_mean

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its name, its type (or None if untyped) and its default."""

    name: str
    type: Any
    default: Any = _EMPTY

    @property
    def required(self) -> bool:
        """True when the constructor gives no default."""
        return self.default is _EMPTY

    def type_name(self) -> str:
        """The type as a user would write it: float, int, bool, str, float | None."""
        return type_name(self.type)


def signature_hparams(fn: Callable) -> list[HParam]:
    """The keyword hyper-parameters of `fn` (usually a class's `__init__`), in order."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = getattr(fn, "__annotations__", {})
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, None)
        if annotation is None and p.default is not _EMPTY and p.default is not None:
            annotation = type(p.default)
        params.append(HParam(p.name, annotation, p.default))
    return params


def type_name(tp: Any) -> str:
    """A short readable name for a type annotation."""
    if tp is None:
        return "any"
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{type_name(args[0])}]" if args else origin.__name__
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check `value` against annotation `tp`; return (ok, value converted where lossless)."""
    if tp is None or tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_type, *_) = typing.get_args(tp) or (None,)
        out = []
        for item in value:
            ok, converted = coerce(item, item_type)
            if not ok:
                return False, value
            out.append(converted)
        return True, origin(out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def resolve(kind: str, name: str, params: list[HParam], values: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults into `values` and check every key and type.

    Raises `KdbenchError` naming the kind, the name and the key for an unknown key, a
    missing required value, or a value of the wrong type.
    """
    known = {p.name: p for p in params}
    for key in values:
        if key not in known:
            choices = list(known)
            listing = ", ".join(choices) if choices else "none"
            raise KdbenchError(
                f"{kind} '{name}': unknown hyper-parameter '{key}'{did_you_mean(key, choices)}; "
                f"it takes: {listing}"
            )
    resolved: dict[str, Any] = {}
    for p in params:
        if p.name in values:
            ok, value = coerce(values[p.name], p.type)
            if not ok:
                raise KdbenchError(
                    f"{kind} '{name}': hyper-parameter '{p.name}' expects {p.type_name()}, "
                    f"got {values[p.name]!r} ({type(values[p.name]).__name__})"
                )
            resolved[p.name] = value
        elif p.required:
            raise KdbenchError(f"{kind} '{name}': missing hyper-parameter '{p.name}' ({p.type_name()})")
        else:
            resolved[p.name] = p.default
    return resolved


@dataclass(frozen=True)
class Description:
    """What `describe()` reports for a method or dataset: its name, the first line of its
    docstring, its hyper-parameters (types and defaults) and the file that registered it."""

    name: str
    summary: str
    hparams: list[HParam]
    source: str

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.summary}"]
        for p in self.hparams:
            default = "required" if p.required else repr(p.default)
            lines.append(f"  {p.name}: {p.type_name()} = {default}")
        return "\n".join(lines)


def describe_class(name: str, cls: type, source: str) -> Description:
    """The `Description` of a registered class, read from its docstring and `__init__`."""
    doc = inspect.getdoc(cls) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else "(no description)"
    return Description(name, summary, signature_hparams(cls.__init__), source)
