"""A named registry shared by methods, models and datasets.

Lookups of unknown names fail with a one-line `KdbenchError` that lists what exists and
suggests the closest name; registering a name twice from two different files fails too.
"""

from __future__ import annotations

import difflib
import os
from typing import Generic, TypeVar

from kdbench.errors import KdbenchError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The choice most similar to `name` (case-insensitive), or None if nothing is close."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or an empty string."""
    guess = closest(name, choices)
    return f" (did you mean '{guess}'?)" if guess else ""


class Registry(Generic[T]):
    """Entries of one kind (`method`, `model`, `dataset`) by name, with where each came from."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, source: str = "<unknown>", aliases: tuple[str, ...] = ()) -> None:
        """Register `entry` under `name`; the same name from a different file is an error."""
        if not isinstance(name, str) or not name:
            raise KdbenchError(f"{source}: {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not _same_file(self._sources[name], source):
            raise KdbenchError(
                f"{self.kind} '{name}' is registered twice: in {self._sources[name]} and in {source}"
            )
        self._entries[name] = entry
        self._sources[name] = source
        for alias in aliases:
            if alias != name:
                self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Forget `name` and its aliases (a method registered for one test, say); unknown names raise."""
        name = self.canonical(name)
        del self._entries[name], self._sources[name]
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases; unknown names raise."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        names = self.names()
        listing = ", ".join(names) if names else "none"
        raise KdbenchError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, names + list(self._aliases))}; "
            f"available: {listing}"
        )

    def get(self, name: str) -> T:
        """The entry registered as `name` (or an alias of it)."""
        return self._entries[self.canonical(name)]

    def source(self, name: str) -> str:
        """The file that registered `name`."""
        return self._sources[self.canonical(name)]

    def names(self) -> list[str]:
        """All registered names, sorted case-insensitively."""
        return sorted(self._entries, key=str.lower)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b
