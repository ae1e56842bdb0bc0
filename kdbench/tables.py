"""Tables rendered three ways: Markdown, LaTeX (booktabs, ready to `\\input`) and CSV.

A `Table` holds rows of `Cell`s (a number with its std, seed count, significance mark and
bold flag, or plain text), notes to print under it, and a DataFrame of the same numbers
for the CSV.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["Cell", "Table", "finite", "to_csv", "to_latex", "to_markdown"]


@dataclass
class Cell:
    """One table cell: a number with optional std, seed count, mark and bold; or plain text."""

    value: float | None = None
    std: float | None = None
    n: int | None = None
    show_n: bool = False
    mark: str = ""
    bold: bool = False
    note: str = ""  # shown after the number, e.g. "(3/4 pairs)"
    text: str | None = None
    signed: bool = False

    def plain(self) -> str:
        """The cell as plain text (no bold markup)."""
        return _render_cell(self, bold=lambda s: s, pm=" ± ", arrow=lambda a: a)


def finite(x: Any) -> bool:
    """True for a finite int or float (not None, NaN or inf)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _render_cell(cell: Cell, *, bold, pm: str, arrow, text=lambda s: s, dash: str = "—") -> str:
    if cell.text is not None:
        return text(cell.text)
    if not finite(cell.value):
        return dash
    core = f"{cell.value:+.2f}" if cell.signed else f"{cell.value:.2f}"
    if finite(cell.std):
        core += f"{pm}{cell.std:.2f}"
    parts = [bold(core) if cell.bold else core]
    if cell.mark:
        parts.append(arrow(cell.mark))
    if cell.show_n and cell.n is not None:
        parts.append(f"(n={cell.n})")
    if cell.note:
        parts.append(text(cell.note))
    return " ".join(parts)


@dataclass
class Table:
    """A rendered view: header, rows of cells, notes to print under it, and its CSV data.

    `align` holds one LaTeX column spec per column (`l`, `r`, `c` or `p{...}`); Markdown
    alignment follows it.
    """

    name: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    data: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    align: list[str] | None = None
    rule_after: tuple[int, ...] = ()  # rows followed by a rule in LaTeX (e.g. the teacher row)

    def column_specs(self) -> list[str]:
        """LaTeX column specs, defaulting to `l` then `r`."""
        return self.align or ["l"] + ["r"] * (len(self.header) - 1)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    """The table as GitHub-flavoured Markdown: a `###` title, the table, then the notes as a list."""
    sep = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in table.header) + " |")
    lines.append("|" + "|".join(sep.get(spec[0], ":--") for spec in table.column_specs()) + "|")
    for row in table.rows:
        cells = [_render_cell(c, bold=lambda s: f"**{s}**", pm=" ± ", arrow=lambda a: a, text=_md_escape) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in table.notes)
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "→": r"$\rightarrow$", "—": "---", "–": "--", "−": "$-$", "α": r"$\alpha$",
    "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "·": r"$\cdot$", "…": r"\dots{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", "’": "'", "“": "``", "”": "''",
}


def _latex_escape(s: str) -> str:
    out = []
    for ch in s:
        if ch in _LATEX_CHARS:
            out.append(_LATEX_CHARS[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:  # anything else pdflatex may not know: its ASCII skeleton, or nothing
            out.append(unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode())
    return "".join(out)


def _latex_inline(s: str) -> str:
    """Escape `s` for LaTeX, turning Markdown `code` into \\texttt and **bold** into \\textbf."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", s)):
        if i % 2:
            out.append(r"\texttt{" + _latex_escape(part) + "}")
        else:
            pieces = re.split(r"\*\*([^*]+)\*\*", part)
            out.extend(r"\textbf{" + _latex_escape(p) + "}" if j % 2 else _latex_escape(p) for j, p in enumerate(pieces))
    return "".join(out)


def _latex_header(h: str) -> str:
    # Pair labels are long: stack "teacher" over "→ student" in a nested tabular.
    if "→" in h:
        head, _, tail = h.partition("→")
        if head.strip():
            return r"\begin{tabular}[b]{@{}c@{}}" + _latex_escape(head) + r"\\$\rightarrow$" + _latex_escape(tail) + r"\end{tabular}"
    return _latex_escape(h)


def to_latex(table: Table, *, label: str | None = None) -> str:
    """The table as a booktabs `table` float, ready to `\\input` (needs only `\\usepackage{booktabs}`)."""
    specs = table.column_specs()
    lines = [
        r"\begin{table}[htbp]", r"\centering", r"\small",
        r"\caption{" + _latex_inline(table.title) + "}",
    ]
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\begin{tabular}{" + "".join(specs) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(_latex_header(h) for h in table.header) + r" \\")
    lines.append(r"\midrule")
    for i, row in enumerate(table.rows):
        cells = [_render_cell(c, bold=lambda s: r"\textbf{" + s + "}", pm=r" $\pm$ ",
                              arrow=lambda a: _LATEX_CHARS[a], text=_latex_escape, dash="---") for c in row]
        lines.append(" & ".join(cells) + r" \\")
        if i in table.rule_after:
            lines.append(r"\midrule")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    if table.notes:
        lines.append(r"\par\smallskip")
        lines.append(r"{\footnotesize\raggedright")
        lines.extend(_latex_inline(note) + r"\par" for note in table.notes)
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table's machine-readable data (one number per column) as CSV text."""
    return table.data.to_csv(index=False, float_format="%.10g", lineterminator="\n")
