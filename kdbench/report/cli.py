"""`kdbench report` and `kdbench compare`: load runs, build the views, print them and write their files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdbench import results
from kdbench.core import atomic
from kdbench.grid import config
from kdbench.runs import records
from kdbench.errors import KdbenchError
from kdbench.report import compare
from kdbench.report.build import build_report, write_report
from kdbench.report.prepare import DEFAULT_BASELINE, prepare
from kdbench.report.render import to_csv, to_latex, to_markdown

__all__ = ["cli_compare", "cli_report", "grid_order"]

_FALLBACK = "rows and columns in first-seen order"


def grid_order(results_dir: Path, grid: str) -> tuple[list[str] | None, list[str] | None, str | None]:
    """Variant labels and pairs (`"t->s"`) in the order of the grid file kept at `<results>/<grid>/grid.yaml`.

    The file is parsed by `kdbench.grid.config` (sweeps expanded, file order), with the methods
    registered so far (plug-ins from `--methods-dir` and `KDBENCH_METHODS_PATH` included).
    Returns `(variants, pairs, None)`, or `(None, None, warning)` when the copy is missing
    or no longer parses: the report then uses first-seen order, and says why in one line.
    """
    path = records.Layout(Path(results_dir), grid).grid_copy
    if not path.is_file():
        return None, None, f"{path}: no copy of the grid file; {_FALLBACK}"
    try:
        parsed = config.load_grid(path)
    except KdbenchError as exc:
        hint = " (are its plug-in methods on --methods-dir or KDBENCH_METHODS_PATH?)" if "unknown method" in str(exc) else ""
        return None, None, f"{exc}; {_FALLBACK}{hint}"
    return [v.label for v in parsed.variants], [p.name for p in parsed.pairs], None


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # a file or a pipe: keep tables wide


def _warn(warning: str | None) -> None:
    if warning:
        print(f"kdbench: warning: {warning}", file=sys.stderr)


def cli_report(args: argparse.Namespace) -> int:
    """`kdbench report`: build and write the report of one grid, or of every grid; returns the exit code."""
    from rich.markdown import Markdown

    console = _console()
    results_dir = Path(args.results_dir)
    grids = [args.grid] if args.grid else results.grid_names(results_dir)
    if not grids:
        raise KdbenchError(f"no results under {results_dir}/: run `kdbench run GRID` first")
    reported = 0
    for grid in grids:
        try:
            runs = results.load(results_dir, grid)
        except KdbenchError:
            if len(grids) == 1:
                raise
            console.print(f"grid {grid}: no results yet, skipped")
            continue
        variant_order, pair_order, warning = grid_order(results_dir, grid)
        _warn(warning)
        rep = build_report(runs, results.load_metrics(results_dir, grid), grid=grid, metric=args.metric,
                           baseline=args.baseline, alpha=args.alpha, correction=args.correction,
                           variant_order=variant_order, pair_order=pair_order, results_dir=results_dir)
        if args.baseline != DEFAULT_BASELINE and not rep.prepared.has_baseline:
            raise KdbenchError(f"--baseline {args.baseline}: no done run of that variant in grid {grid} "
                               f"(variants: {', '.join(rep.prepared.variants)})")
        if args.out:
            out = Path(args.out) / grid if len(grids) > 1 else Path(args.out)
        else:
            out = results_dir / grid / "report"
        for view in rep.tables:
            console.print(Markdown(to_markdown(view)))
            console.print()
        written = write_report(rep, out, with_plots=not args.no_plots, html=args.html)
        n_plots = sum(1 for p in written if p.parent.name == "plots")
        page = next((p for p in written if p.suffix == ".html"), None)
        console.print(f"Wrote {len(written) - n_plots - bool(page)} table files"
                      + (f" and {n_plots} plot files" if n_plots else "") + f" to {out}/"
                      + (f"; open {page}" if page else ""))
        reported += 1
    if not reported:
        raise KdbenchError(f"no results under {results_dir}/: run `kdbench run GRID` first")
    return 0


def cli_compare(args: argparse.Namespace) -> int:
    """`kdbench compare A B`: print (and with --out write) B − A on the shared pairs and methods."""
    from rich.markdown import Markdown

    prepared, labels = [], []
    for side in (args.a, args.b):
        results_dir, grid = compare.locate(side, args.grid)
        variant_order, pair_order, warning = grid_order(results_dir, grid)
        _warn(warning)
        prepared.append(prepare(results.load(results_dir, grid), metric=args.metric, alpha=args.alpha,
                                correction=args.correction, variant_order=variant_order, pair_order=pair_order))
        labels.append(str(Path(results_dir) / grid))
    view = compare.compare_view(prepared[0], prepared[1], labels[0], labels[1])
    console = _console()
    console.print(Markdown(to_markdown(view)))
    console.print()
    console.print(compare.summary(view))
    if args.out:
        out = Path(args.out)
        for ext, content in (("md", to_markdown(view)), ("tex", to_latex(view)), ("csv", to_csv(view))):
            atomic.write_text(out / f"{view.name}.{ext}", content)
        console.print(f"Wrote {view.name}.md, .tex and .csv to {out}/")
    return 0
