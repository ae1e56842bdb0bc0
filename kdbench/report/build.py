"""One grid's report: every view in reading order, and the files written from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from kdbench.core import atomic
from kdbench.errors import KdbenchError
from kdbench.report import plots, provenance, published, run_views, views
from kdbench.report.agreement import agreement_view
from kdbench.report.cells import cell_frame
from kdbench.report.curves import curves_view
from kdbench.report.html import html_page
from kdbench.report.layout import View
from kdbench.report.prepare import DEFAULT_BASELINE, Prepared, prepare
from kdbench.report.render import to_csv, to_latex, to_markdown

__all__ = ["Report", "build_report", "write_report"]


@dataclass
class Report:
    """Every view of one grid's report, in reading order (frame-only views last)."""

    grid: str
    prepared: Prepared
    views: list[View]

    def view(self, name: str) -> View | None:
        """The view called `name`, if the report has it."""
        return next((v for v in self.views if v.name == name), None)

    @property
    def tables(self) -> list[View]:
        """The views drawn as tables (Markdown, LaTeX, HTML); the others are CSV and figures only."""
        return [v for v in self.views if v.grid is not None]


def build_report(runs: pd.DataFrame, metrics: pd.DataFrame | None = None, *, grid: str = "", metric: str = "last",
                 baseline: str = DEFAULT_BASELINE, alpha: float = 0.05, correction: str = "holm",
                 variant_order: Sequence[str] | None = None, pair_order: Sequence[str] | None = None,
                 published_results: pd.DataFrame | None = None, protocols: Mapping[str, str] | None = None,
                 results_dir: str | Path | None = None) -> Report:
    """All views for one grid's runs (a `results.load()` frame) and epochs (`results.load_metrics()`), in reading order.

    `protocols` maps a variant to a note on the protocol it was trained under, for rows
    that do not follow the grid's common recipe (see `prepare.prepare`). `results_dir`, the
    folder the runs were loaded from, shortens the teacher paths that lie inside it.
    """
    prep = prepare(runs, metric=metric, baseline=baseline, alpha=alpha, correction=correction,
                   variant_order=variant_order, pair_order=pair_order, protocols=protocols)
    if prep.runs.empty:
        raise KdbenchError(f"grid {grid or '?'}: no run is done yet ({len(prep.not_done)} running or failed); "
                           "run `kdbench status` to see them")
    cells = cell_frame(prep)
    built = [views.main_view(prep, cells), views.gain_view(prep, cells), views.seeds_view(prep, cells),
             run_views.selection_view(prep), published.reproduction_view(prep, cells, published_results),
             run_views.teacher_split_view(prep), agreement_view(prep), run_views.cost_view(prep),
             provenance.environment_view(prep), provenance.teachers_view(prep, results_dir),
             run_views.not_done_view(prep),
             run_views.runs_view(prep), curves_view(prep, metrics)]
    built = [v for v in built if v is not None]
    if grid:
        for v in built:
            v.title = f"{grid}: {v.title}"
    return Report(grid=grid, prepared=prep, views=built)


def write_report(report: Report, out: str | Path, *, with_plots: bool = True, html: bool = False) -> list[Path]:
    """Write every view as .csv (and tables as .md and .tex), a combined report .md, the figures
    (unless `with_plots=False`) and, with `html`, the self-contained report .html."""
    out = Path(out)
    written: list[Path] = []
    suffix = report.prepared.suffix
    markdown = []  # every table's, for the combined report too
    for v in report.views:
        stem = v.name if v.metric_free else v.name + suffix
        label = f"tab:kdbench-{report.grid}-{stem}".replace("_", "-") if report.grid else None
        files = [("csv", to_csv(v))]
        if v.grid is not None:
            markdown.append(to_markdown(v))
            files = [("md", markdown[-1]), ("tex", to_latex(v, label=label))] + files
        for ext, content in files:
            path = out / f"{stem}.{ext}"
            atomic.write_text(path, content)
            written.append(path)
    combined = out / f"report{suffix}.md"
    atomic.write_text(combined, f"# kdbench report: {report.grid}\n\n" + "\n\n".join(markdown))
    written.append(combined)
    if html:
        path = out / f"report{suffix}.html"
        atomic.write_text(path, html_page(report.grid, report.prepared, report.views))
        written.append(path)
    if with_plots:
        written += plots.plot_report(report.prepared, {v.name: v for v in report.views}, out / "plots")
    return written
