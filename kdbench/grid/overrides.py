"""`--set key.path=value`: change a grid file's mapping from the command line.

Each override sets one key of the file's YAML mapping before validation, so the result is
checked exactly like a file, and an error caused by an override names it as its source::

    --set schedule.epochs=x: schedule.epochs: expected int >= 1, got 'x' (str)

Paths are keys joined by dots; list items are `[N]` or `.N` (`pairs[0].student`,
`pairs.0.student`; `[len]` appends an item). A variant label with dots is matched whole
when it exists (`methods.kd.v2.beta`). Where the schema has a short form, setting a key
inside it expands it: `dataset: cifar100` becomes `{name: cifar100}` for
`--set dataset.train_size=512`, a pair's `teacher: resnet56` becomes `{arch: resnet56}`.
Values are YAML with the grid rules (`5e-4` is a float; flow lists and mappings such as
`[tensorboard]` or `{beta: 2}`); a mapping value replaces the whole mapping. Later
overrides win.

A grid loaded with overrides is named `<name>+set-<hash of the overrides>` (unless one
sets `name`), so a quick `--set schedule.epochs=1` never mixes into the real results, and
`Grid.text` is the effective grid as YAML, for `results/<name>/grid.yaml`. The overrides
stay plain strings (`Grid.overrides`) so they travel to worker processes and jobs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kdbench.grid import config, yaml_io
from kdbench.grid.schema import Grid
from kdbench.grid.checker import describe_value
from kdbench.errors import KdbenchError

_PATH_RE = re.compile(r"[^.\[\]]+((\.[^.\[\]]+)|(\[\d+\]))*")
_TOKEN_RE = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")
# Short forms of the schema, expanded when an override sets a key inside them.
_SHORT_FORMS = ((re.compile(r"dataset"), "name"), (re.compile(r"pairs\[\d+\]\.teacher"), "arch"))


@dataclass(frozen=True)
class Override:
    """One parsed `--set`: the text as given, the path's tokens (str keys, int `[N]` indices), the value."""

    text: str
    keys: tuple[str | int, ...]
    value: Any

    @property
    def source(self) -> str:
        """How error messages name this override."""
        return f"--set {self.text}"


def parse_override(text: str) -> Override:
    """Parse `key.path=value`; a malformed one raises a one-line `KdbenchError` naming it."""
    source = f"--set {text}"
    path, eq, value = text.partition("=")
    path = path.strip()
    if not eq or not path:
        raise KdbenchError(f"{source}: expected key.path=value")
    if not _PATH_RE.fullmatch(path):
        raise KdbenchError(f"{source}: expected key.path=value; {path!r} is not a key path "
                           "(keys joined by '.', list items as [N] or .N)")
    keys = tuple(int(index) if index else key for index, key in _TOKEN_RE.findall(path))
    return Override(text=text, keys=keys, value=yaml_io.parse_yaml(value, source))


def parse_overrides(texts: Sequence[str]) -> list[Override]:
    """`parse_override` of each text, in order."""
    return [parse_override(t) for t in texts]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> tuple[dict[str, Any], list[str]]:
    """A deep copy of the grid mapping `raw` with `overrides` applied in order, and each
    override's key path as the validator spells it (`pairs[0].student`)."""
    root = copy.deepcopy(raw)
    return root, [_apply(root, o) for o in overrides]


def override_name(name: str, overrides: Sequence[Override], paths: Sequence[str]) -> str:
    """The name of a grid loaded with overrides: `name+set-<6 hex digits>` hashing what they set.

    `name` is returned as is when there is nothing to hash (only `name` was set).
    """
    changes = [[path, o.value] for path, o in zip(paths, overrides) if path != "name"]
    if not changes:
        return name
    text = json.dumps(changes, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return f"{name}+set-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:6]}"


def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> Grid:
    """Read the grid YAML at `path`, apply the `--set` strings `overrides`, and validate.

    Without overrides this is `config.load_grid(path)`. With them, the Grid's `name` is the
    override name (see `override_name`) unless an override sets `name`, `overrides` holds
    the strings as given, and `text` the effective grid's YAML (the file with the overrides
    applied, headed by a comment naming them), which `load_grid` reads back to the same grid.
    Every mistake raises a one-line `KdbenchError` naming the file or the `--set` at fault.
    """
    if not overrides:
        return config.load_grid(path)
    parsed = parse_overrides(overrides)
    source = str(path)
    raw = yaml_io.parse_yaml(yaml_io.read_text(path), source)
    if not isinstance(raw, dict):
        return config.parse_grid(raw, source)  # the file's own error
    applied, paths = apply_overrides(raw, parsed)
    grid = _validate(raw, applied, source, parsed, paths)
    name = grid.name if "name" in paths else override_name(grid.name, parsed, paths)
    applied["name"] = name
    header = f"# The effective grid: {source} with\n" + "".join(
        f"#   --set {' '.join(o.text.splitlines())}\n" for o in parsed)
    return dataclasses.replace(grid, name=name, overrides=tuple(overrides), text=header + yaml_io.dump_yaml(applied))


def effective_grid_text(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """The effective grid's YAML, to keep as `results/<name>/grid.yaml`: `load_grid(path, overrides).text`."""
    text = load_grid(path, overrides).text
    assert text is not None  # loaded from a file
    return text


def _validate(raw: dict, applied: dict, source: str, parsed: Sequence[Override], paths: Sequence[str]) -> Grid:
    try:
        return config.parse_grid(applied, source, source_of=_blame(source, parsed, paths))
    except KdbenchError as exc:
        if not str(exc).startswith(f"{source}: "):
            raise  # an override's own error
        config.parse_grid(raw, source)  # the file's own error, if it has one
        # The file alone is valid: the overrides together made it invalid.
        sets = " ".join(o.source for o in parsed)
        raise KdbenchError(f"{source} with {sets}: {str(exc)[len(source) + 2:]}") from None


def _blame(source: str, parsed: Sequence[Override], paths: Sequence[str]) -> Callable[[str], str]:
    """The validator's `source_of`: the last override whose path contains, or is inside, the key path."""
    def source_of(key_path: str) -> str:
        for path, o in reversed(list(zip(paths, parsed))):
            if key_path and (_within(key_path, path) or _within(path, key_path)):
                return o.source
        return source
    return source_of


def _within(path: str, outer: str) -> bool:
    return path == outer or path.startswith((outer + ".", outer + "["))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _apply(root: dict[str, Any], o: Override) -> str:
    """Set `o.value` at `o.keys` in `root`; return the path as the validator spells it."""
    node: Any = root
    path = ""
    keys = list(o.keys)
    while keys:
        if isinstance(node, dict):
            key, keys = _mapping_key(node, keys, path, o)
        else:
            token, keys = keys[0], keys[1:]
            if not (isinstance(token, int) or token.isdigit()):
                raise KdbenchError(f"{o.source}: {path}: expected a list index ([N] or .N), got {token!r}")
            key = int(token)
            if key > len(node):
                raise KdbenchError(f"{o.source}: {path}[{key}]: no such item (the list has {len(node)}; "
                                   f"[{len(node)}] appends one)")
            if key == len(node):
                node.append(None)
        here = _join(path, key)
        if not keys:
            node[key] = o.value
            return here
        child = node[key] if isinstance(node, list) else node.get(key)
        for pattern, field in _SHORT_FORMS:
            if isinstance(child, str) and pattern.fullmatch(here):
                child = {field: child}
        if child is None and not isinstance(keys[0], int):
            child = {}
        if not isinstance(child, (dict, list)):
            what = f"a list to index with [{keys[0]}]" if isinstance(keys[0], int) else f"a mapping to set {keys[0]!r} in"
            raise KdbenchError(f"{o.source}: {here}: expected {what}, got {describe_value(child)}")
        if isinstance(keys[0], int) and isinstance(child, dict):
            raise KdbenchError(f"{o.source}: {here}: expected a list to index with [{keys[0]}], got a mapping")
        node[key] = child
        node, path = child, here
    raise AssertionError("an override path has at least one key")


def _mapping_key(node: dict, keys: list[str | int], path: str, o: Override) -> tuple[str, list[str | int]]:
    """The key of `node` the next tokens name: the longest run of dotted keys that exists, else the first."""
    if isinstance(keys[0], int):
        raise KdbenchError(f"{o.source}: {path}: expected a list to index with [{keys[0]}], got a mapping")
    run = 1
    while run < len(keys) and isinstance(keys[run], str):
        run += 1
    for n in range(run, 1, -1):
        joined = ".".join(str(k) for k in keys[:n])
        if joined in node:
            return joined, keys[n:]
    return str(keys[0]), keys[1:]
