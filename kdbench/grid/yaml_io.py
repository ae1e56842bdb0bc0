"""Grid files as text: reading them, and YAML with the grid rules (`5e-4` is a float, a key repeated
in one mapping is an error, every error is one line)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import KdbenchError


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
        raise KdbenchError(one_line(f"{source}:{where} invalid YAML: {what}")) from None
    except yaml.YAMLError as exc:
        raise KdbenchError(one_line(f"{source}: invalid YAML: {exc}")) from None


def one_line(text: str) -> str:
    return " ".join(text.split())
