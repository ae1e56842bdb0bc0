"""`report.html`: one self-contained page of a grid's report, for exploring rather than printing.

The page needs no network: the styles, the script (`assets/`, written for kdbench) and the
data are inline. Its parts come from the same views as the other formats:

- the main results as a long table (`long_frame`: one row per pair and method), sortable
  by any column and filterable by pair, method and teacher, with each cell's seeds as a
  tooltip (the per-seed values the cell statistics read, `cells.seed_values`);
- the accuracy curves of every pair, drawn in the browser from the curves view;
- every other table view, drawn from its grid like the Markdown, and its notes.

Every label is escaped (`html.escape` in markup, `\\u003c` in the inline JSON).
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any, Sequence

import pandas as pd

from kdbench import __version__
from kdbench.report.agreement import AGREEMENT
from kdbench.report.cells import seed_values
from kdbench.report.curves import CURVES
from kdbench.report.layout import Cell, Grid, View, finite, inline_markup, number, render_cell
from kdbench.report.plots import palette
from kdbench.report.prepare import TEACHER_ROW, Prepared, text
from kdbench.report.provenance import ENVIRONMENT, TEACHERS
from kdbench.report.published import REPRODUCTION
from kdbench.report.run_views import COST, NOT_DONE, SELECTION, TEACHER_SPLIT
from kdbench.report.views import AVERAGE, DAGGER, GAIN, MAIN, SEEDS, flag

__all__ = ["LONG_COLUMNS", "html_page", "long_frame", "long_table"]

# The long table: (frame column, header, sort type, alignment).
LONG_COLUMNS = [
    ("pair", "Pair", "text", "l"), ("teacher", "Teacher", "text", "l"), ("student", "Student", "text", "l"),
    ("variant", "Method", "text", "l"), ("teacher_top1", "Teacher top-1", "num", "r"), ("mean", "Top-1", "num", "r"),
    ("n", "n", "num", "r"), ("gain", "Gain", "num", "r"), ("gain_low", "CI low", "num", "r"),
    ("gain_high", "CI high", "num", "r"), ("p_adjusted", "p", "num", "r"),
]
FILTERS = [("pair", "Pair"), ("variant", "Method"), ("teacher", "Teacher")]


def esc(s: Any) -> str:
    """`s` as text safe inside HTML elements and attribute values."""
    return html.escape(text(s), quote=True)


def _inline(note: str) -> str:
    """A note's Markdown (`code`, **bold**) as HTML, everything else escaped."""
    return inline_markup(note, text=esc, code=lambda c: f"<code>{esc(c)}</code>",
                         bold=lambda b: f"<strong>{esc(b)}</strong>")


def _arrow(mark: str) -> str:
    return f'<span class="{"up" if mark == "↑" else "down"}">{esc(mark)}</span>'


def _cell_html(cell: Cell) -> str:
    return render_cell(cell, bold=lambda s: f"<strong>{s}</strong>", pm=" ± ", arrow=_arrow, text=esc)


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>"


def _heat(value: float, scale: float) -> str:
    """A diverging background (blue up, red down) that keeps the number readable."""
    if not finite(value) or scale <= 0:
        return ""
    alpha = min(abs(value) / scale, 1.0) * 0.42
    rgb = "33,102,172" if value > 0 else "178,24,43"
    return f' style="background:rgba({rgb},{alpha:.3f})"'


def grid_table(grid: Grid, *, heat: bool = False) -> str:
    """A view's grid as an HTML table (the same cells as its Markdown)."""
    specs = grid.column_specs()
    align = [{"r": ' class="r"', "c": ' class="c"'}.get(spec[0], "") for spec in specs]
    scale = max((abs(c.value) for row in grid.rows for c in row[1:] if finite(c.value)), default=0.0) if heat else 0
    head = "".join(f"<th{a}>{esc(h)}</th>" for h, a in zip(grid.header, align))
    body = []
    for i, row in enumerate(grid.rows):
        cells = []
        for j, (cell, a) in enumerate(zip(row, align)):
            style = _heat(cell.value, scale) if heat and j > 0 else ""
            cells.append(f"<td{a}{style}>{_cell_html(cell)}</td>")
        rule = ' class="rule"' if i in grid.rule_after else ""
        body.append(f"<tr{rule}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def long_frame(main: pd.DataFrame) -> pd.DataFrame:
    """The main view's student cells, one row per pair and method, with the pair's teacher top-1."""
    teachers = main[(main["variant"] == TEACHER_ROW) & (main["pair"] != AVERAGE)].set_index("pair")["mean"]
    rows = main[(main["variant"] != TEACHER_ROW) & (main["pair"] != AVERAGE) & (main["n"] > 0)].copy()
    rows["teacher_top1"] = rows["pair"].map(teachers)
    # One pair's methods together: pairs, then methods, in the main table's order.
    pair_rank = {p: i for i, p in enumerate(dict.fromkeys(main["pair"]))}
    variant_rank = {v: i for i, v in enumerate(dict.fromkeys(main["variant"]))}
    rows = rows.assign(_p=rows["pair"].map(pair_rank), _v=rows["variant"].map(variant_rank))
    return rows.sort_values(["_p", "_v"], kind="stable").drop(columns=["_p", "_v"]).reset_index(drop=True)


def _seed_titles(prep: Prepared) -> dict[tuple[str, str], str]:
    """(variant, pair) → "seed 0: 72.10" lines (a seed's duplicate runs averaged, as in the cells)."""
    return {cell: "\n".join(f"seed {text(s)}: {x:.2f}" for s, x in values.items())
            for cell, values in seed_values(prep).items()}


def _num(x: Any, signed: bool = False) -> tuple[str, str]:
    """(data-value, shown text) of a number cell."""
    if not finite(x):
        return "", "—"
    return repr(float(x)), number(float(x), signed)


def _p_text(p: Any) -> tuple[str, str]:
    if not finite(p):
        return "", "—"
    return repr(float(p)), "0" if p == 0 else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def long_table(main: pd.DataFrame, prep: Prepared) -> str:
    """The interactive long table with its filter bar."""
    frame = long_frame(main)
    titles = _seed_titles(prep)
    headers = []
    for key, header, kind, align in LONG_COLUMNS:
        if key == "p_adjusted":
            header = "p (Holm)" if prep.correction == "holm" else "p"
        cls = ' class="r"' if align == "r" else ""
        headers.append(f'<th data-key="{key}" data-type="{kind}"{cls}>{esc(header)}</th>')
    body = []
    for _, r in frame.iterrows():
        n = int(r["n"])
        cells = []
        for key, _, _, align in LONG_COLUMNS:
            cls = ' class="r"' if align == "r" else ""
            if key == "variant":
                protocol = text(r["protocol"])
                label = esc(r["variant"]) + (f' <span title="{esc(protocol)}">{DAGGER}</span>' if protocol else "")
                cells.append(f'<td data-value="{esc(r["variant"])}">{label}</td>')
            elif key in ("pair", "teacher", "student"):
                cells.append(f"<td>{esc(r[key])}</td>")
            elif key == "mean":
                cell = Cell(value=r["mean"], std=r["std"] if n >= 2 else None, mark=text(r["mark"]),
                            bold=flag(r["best"]))
                title = titles.get((r["variant"], r["pair"]), "")
                cells.append(f'<td class="r" data-value="{repr(float(r["mean"]))}" title="{esc(title)}">'
                             f"{_cell_html(cell)}</td>")
            elif key == "n":
                cells.append(f'<td class="r" data-value="{n}">{n}</td>')
            elif key == "p_adjusted":
                value, shown = _p_text(r["p_adjusted"])
                cells.append(f'<td class="r" data-value="{value}">{shown}</td>')
            else:
                value, shown = _num(r[key], signed=key != "teacher_top1")
                cells.append(f'<td{cls} data-value="{value}">{shown}</td>')
        attrs = "".join(f' data-{k}="{esc(r[k])}"' for k, _ in FILTERS)
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    selects = []
    for key, label in FILTERS:
        options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in dict.fromkeys(frame[key].map(text)))
        selects.append(f'<label>{esc(label)} <select data-filter="{key}"><option value="">all</option>'
                       f"{options}</select></label>")
    return (f'<div class="filters" data-table="results-table">{"".join(selects)}'
            '<button type="button" class="reset">Reset</button><span class="count"></span></div>'
            f'<div class="scroll"><table id="results-table" class="data sortable"><thead><tr>{"".join(headers)}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _curves_json(curves: pd.DataFrame, prep: Prepared) -> str:
    """The curves view as compact JSON: per pair, per variant, mean/min/max per epoch (2 decimals)."""
    colors = palette()
    styles = {v: {"color": colors[i % len(colors)][0], "dash": colors[i % len(colors)][1]}
              for i, v in enumerate(prep.variants)}  # index i: the same style as in the PNG figures
    pairs = []
    for pair in prep.pairs:
        sel = curves[curves["pair"] == pair]
        series = []
        for variant in prep.variants:
            s = sel[sel["variant"] == variant].sort_values("epoch")
            if s.empty:
                continue
            epochs = [int(e) for e in s["epoch"]]
            entry: dict[str, Any] = {"variant": variant}
            if epochs == list(range(epochs[0], epochs[0] + len(epochs))):
                entry["first"] = epochs[0]
            else:
                entry["epochs"] = epochs
            two = s["n"] >= 2
            entry["mean"] = [round(float(x), 2) for x in s["mean"]]
            entry["min"] = [round(float(x), 2) if t else None for x, t in zip(s["min"], two)]
            entry["max"] = [round(float(x), 2) if t else None for x, t in zip(s["max"], two)]
            series.append(entry)
        if series:
            pairs.append({"pair": pair, "series": series})
    payload = {"pairs": pairs, "variants": [v for v in prep.variants if v in set(curves["variant"])],
               "styles": styles}
    # Inside <script>, "</script>" or "<!--" in a label must not end the element.
    return (json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _curves_section(curves: pd.DataFrame, prep: Prepared) -> str:
    data = _curves_json(curves, prep)
    figures = "".join(f'<figure class="chart"><figcaption>{esc(p)}</figcaption>'
                      f'<svg id="curve-{i}" role="img" aria-label="{esc(p)}: test top-1 per epoch"></svg></figure>'
                      for i, p in enumerate(p for p in prep.pairs if p in set(curves["pair"])))
    zoom = " checked" if curves["epoch"].max() >= 20 else ""  # as the PNG's second panel
    return ('<div class="legend" id="curves-legend"><label class="zoom">'
            f'<input type="checkbox" id="curves-zoom"{zoom}> last quarter of training</label></div>'
            f'<div class="charts">{figures}</div>'
            '<ul class="notes"><li>Test top-1 per epoch: the line is the mean over seeds, the band the range (min to '
            "max) of the seeds. Click a method to hide it; hover for the values at an epoch.</li></ul>"
            f'<script type="application/json" id="curves-data">{data}</script>')


def _asset(name: str) -> str:
    return resources.files("kdbench.report").joinpath("assets", name).read_text(encoding="utf-8")


# Navigation labels of the sections, by view name; views sharing a label share a section.
_NAV = {MAIN: "Summary", GAIN: "Gains", SEEDS: "Seeds needed", SELECTION: "Best vs last",
        REPRODUCTION: "Reproduction", TEACHER_SPLIT: "Teacher wrong / right", AGREEMENT: "Agreement & calibration",
        COST: "Cost", ENVIRONMENT: "Provenance", TEACHERS: "Provenance", NOT_DONE: "Not done"}


def html_page(grid: str, prep: Prepared, views: Sequence[View]) -> str:
    """The whole report as one HTML document (a string)."""
    by_name = {v.name: v for v in views}
    main = by_name[MAIN]
    sections: dict[str, list[str]] = {"Results": [long_table(main.frame, prep) + _notes(main.notes)]}
    if CURVES in by_name:
        sections["Accuracy curves"] = [_curves_section(by_name[CURVES].frame, prep)]
    for view in views:
        grid_of = view.layout()
        if grid_of is None:
            continue
        title = view.title.removeprefix(f"{grid}: ") if grid else view.title
        label = _NAV.get(view.name, _short(title))
        sections.setdefault(label, []).append(f"<h3>{esc(title)}</h3>" + grid_table(grid_of, heat=view.name == GAIN)
                                              + _notes(view.notes))
    anchors = {label: re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") for label in sections}
    nav = "".join(f'<a href="#{anchors[label]}">{esc(label)}</a>' for label in sections)
    n_done, n_not = len(prep.done), len(prep.not_done)
    facts = (f"<b>{esc(prep.info.caption)}</b> · baseline <b>{esc(prep.baseline)}</b> · "
             f"α = {prep.alpha:g}, {'Holm–Bonferroni' if prep.correction == 'holm' else 'no'} correction · "
             f"{len(prep.pairs)} pair{'s' if len(prep.pairs) != 1 else ''}, {len(prep.variants)} methods, "
             f"{n_done} runs done" + (f", {n_not} not done" if n_not else ""))
    body = "".join(f'<section id="{anchors[label]}"><h2>{esc(label)}</h2>{"".join(parts)}</section>'
                   for label, parts in sections.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>kdbench report: {esc(grid)}</title><style>{_asset('report.css')}</style></head><body>"
            f'<header class="page"><h1>kdbench report: <span class="grid">{esc(grid)}</span></h1>'
            f'<p class="facts">{facts}</p><nav class="sections">{nav}</nav></header>'
            f"<main>{body}<footer>Written by kdbench {esc(__version__)}. Every number on this page is also in the "
            "report's CSV files.</footer></main>"
            f"<script>{_asset('report.js')}</script></body></html>\n")


def _short(title: str) -> str:
    """A navigation label: the title up to its first colon or parenthesis."""
    return re.split(r"[:(]", title, maxsplit=1)[0].strip() or title
