"""A view rendered as text: Markdown, LaTeX (booktabs, ready to `\\input`) and CSV.

Markdown and LaTeX draw the view's `Grid`; CSV is the view's frame itself. Both come from
the same frame, so they can't disagree.
"""

from __future__ import annotations

import unicodedata

from kdbench.report.layout import View, inline_markup, render_cell

__all__ = ["latex_escape", "to_csv", "to_latex", "to_markdown"]


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(view: View) -> str:
    """The view as GitHub-flavoured Markdown: a `###` title, the table, then the notes as a list."""
    grid = view.layout()
    lines = [f"### {view.title}", ""]
    if grid is not None:
        sep = {"l": ":--", "r": "--:", "c": ":-:"}
        lines.append("| " + " | ".join(_md_escape(h) for h in grid.header) + " |")
        lines.append("|" + "|".join(sep.get(spec[0], ":--") for spec in grid.column_specs()) + "|")
        for row in grid.rows:
            cells = [render_cell(c, bold=lambda s: f"**{s}**", pm=" ± ", arrow=lambda a: a, text=_md_escape)
                     for c in row]
            lines.append("| " + " | ".join(cells) + " |")
    if view.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in view.notes)
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "→": r"$\rightarrow$", "—": "---", "–": "--", "−": "$-$", "α": r"$\alpha$",
    "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "·": r"$\cdot$", "…": r"\dots{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", "’": "'", "“": "``", "”": "''", "†": r"\dag{}", "‡": r"\ddag{}",
    "≠": r"$\neq$",
}


def latex_escape(s: str) -> str:
    """`s` with LaTeX's special characters escaped and non-ASCII reduced to what pdflatex knows."""
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
    return inline_markup(s, text=latex_escape, code=lambda c: r"\texttt{" + latex_escape(c) + "}",
                         bold=lambda b: r"\textbf{" + latex_escape(b) + "}")


def _latex_header(h: str) -> str:
    # Pair labels are long: stack "teacher" over "→ student" in a nested tabular.
    if "→" in h:
        head, _, tail = h.partition("→")
        if head.strip():
            return (r"\begin{tabular}[b]{@{}c@{}}" + latex_escape(head) + r"\\$\rightarrow$" + latex_escape(tail)
                    + r"\end{tabular}")
    return latex_escape(h)


def to_latex(view: View, *, label: str | None = None) -> str:
    """The view as a booktabs `table` float, ready to `\\input` (needs only `\\usepackage{booktabs}`)."""
    grid = view.layout()
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", r"\caption{" + _latex_inline(view.title) + "}"]
    if label:
        lines.append(r"\label{" + label + "}")
    if grid is not None:
        lines.append(r"\begin{tabular}{" + "".join(grid.column_specs()) + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join(_latex_header(h) for h in grid.header) + r" \\")
        lines.append(r"\midrule")
        for i, row in enumerate(grid.rows):
            cells = [render_cell(c, bold=lambda s: r"\textbf{" + s + "}", pm=r" $\pm$ ",
                                 arrow=lambda a: _LATEX_CHARS[a], text=latex_escape, dash="---") for c in row]
            lines.append(" & ".join(cells) + r" \\")
            if i in grid.rule_after:
                lines.append(r"\midrule")
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
    if view.notes:
        lines.append(r"\par\smallskip")
        lines.append(r"{\footnotesize\raggedright")
        lines.extend(_latex_inline(note) + r"\par" for note in view.notes)
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(view: View) -> str:
    """The view's frame (one number per column) as CSV text."""
    return view.frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")
