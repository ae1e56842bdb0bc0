"""What a view looks like on the page: a `Grid` of `Cell`s, derived from the view's frame.

A `Cell` is a number with its std, seed count, significance mark and bold flag, or plain
text. Every renderer (Markdown, LaTeX, HTML) draws the same `Grid`, so a number can't
differ between formats; `source` names the frame row and column a cell's number comes
from, which lets a test check each rendered cell against the frame.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import pandas as pd

__all__ = ["Cell", "Grid", "View", "finite", "inline_markup", "number", "pivot", "render_cell"]


@dataclass
class Cell:
    """One table cell: a number with optional std, interval, seed count, mark and bold; or plain text."""

    value: float | None = None
    std: float | None = None
    n: int | None = None
    show_n: bool = False
    mark: str = ""
    bold: bool = False
    note: str = ""  # shown after the number, e.g. "(3/4 pairs)"
    text: str | None = None
    signed: bool = False
    interval: tuple[float, float] | None = None  # shown as [low, high] after the number
    source: tuple[Hashable, str] | None = None  # (frame index label, frame column) of `value`


def finite(x: Any) -> bool:
    """True for a finite int or float (not None, NaN or inf)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def number(x: float, signed: bool = False) -> str:
    """`x` with 2 decimals, with its sign when `signed`."""
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def render_cell(cell: Cell, *, bold: Callable[[str], str], pm: str, arrow: Callable[[str], str],
                text: Callable[[str], str] = lambda s: s, dash: str = "—") -> str:
    """The cell as text, with the markup functions of one format."""
    if cell.text is not None:
        return text(cell.text)
    if not finite(cell.value):
        return dash
    core = number(cell.value, cell.signed)
    if finite(cell.std):
        core += f"{pm}{cell.std:.2f}"
    parts = [bold(core) if cell.bold else core]
    if cell.interval is not None and all(finite(x) for x in cell.interval):
        low, high = cell.interval
        parts.append(text(f"[{number(low, cell.signed)}, {number(high, cell.signed)}]"))
    if cell.mark:
        parts.append(arrow(cell.mark))
    if cell.show_n and cell.n is not None:
        parts.append(f"(n={cell.n})")
    if cell.note:
        parts.append(text(cell.note))
    return " ".join(parts)


def inline_markup(s: str, *, text: Callable[[str], str], code: Callable[[str], str],
                  bold: Callable[[str], str]) -> str:
    """`s` (a title or note) with its Markdown `code` and **bold** drawn by one format's functions.

    `code` and `bold` receive the raw inner text; everything else goes through `text`.
    """
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", s)):
        if i % 2:
            out.append(code(part))
        else:
            pieces = re.split(r"\*\*([^*]+)\*\*", part)
            out.extend(bold(p) if j % 2 else text(p) for j, p in enumerate(pieces))
    return "".join(out)


@dataclass
class Grid:
    """A view as rows of cells under a header.

    `align` holds one LaTeX column spec per column (`l`, `r`, `c` or `p{...}`); Markdown and
    HTML alignment follow it. `rule_after` lists rows followed by a rule (the teacher row).
    """

    header: list[str]
    rows: list[list[Cell]]
    align: list[str] | None = None
    rule_after: tuple[int, ...] = ()

    def column_specs(self) -> list[str]:
        """LaTeX column specs, defaulting to `l` then `r`."""
        return self.align or ["l"] + ["r"] * (len(self.header) - 1)


def pivot(frame: pd.DataFrame, *, rows: Sequence[str], columns: Sequence[str], row_key: str = "variant",
          column_key: str = "pair", cell: Callable[[pd.Series, Hashable], Cell],
          label: Callable[[str], str] = str, first: str = "Method") -> Grid:
    """A grid with one row per `rows` value and one column per `columns` value, from a tidy frame.

    `cell(record, index)` turns the frame row of a (row, column) pair into a `Cell`; a
    missing pair shows an empty cell.
    """
    index = {(r[row_key], r[column_key]): i for i, r in frame.iterrows()}
    out = []
    for r in rows:
        line = [Cell(text=label(r))]
        for c in columns:
            i = index.get((r, c))
            line.append(Cell() if i is None else cell(frame.loc[i], i))
        out.append(line)
    return Grid(header=[first, *columns], rows=out)


@dataclass
class View:
    """One view of a report: a tidy frame (the CSV, and the only source of every number), the
    notes to print under it, and how it is drawn.

    `grid(frame)` lays the frame out as a `Grid` for Markdown, LaTeX and HTML; a view
    without one (the curves) is written as CSV and drawn as figures only. `metric_free`
    views do not depend on `--metric` and keep one file name.
    """

    name: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    grid: Callable[[pd.DataFrame], Grid] | None = None
    metric_free: bool = False

    def layout(self) -> Grid | None:
        """The view's grid (None for a frame-only view)."""
        return self.grid(self.frame) if self.grid is not None else None
