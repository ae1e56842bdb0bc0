"""`kdbench report`: load a grid's runs, build its report, print it and write its files."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from kdbench import results
from kdbench.errors import KdbenchError
from kdbench.report.build import build_report, write_report
from kdbench.report.prepare import DEFAULT_BASELINE
from kdbench.report.render import to_markdown

__all__ = ["cli_report", "grid_order"]


def grid_order(results_dir: Path, grid: str) -> tuple[list[str] | None, list[str] | None]:
    """Variant and pair order (`"t->s"`) from a copy of the grid file at `<results>/<grid>/grid.yaml`.

    The file is read with `kdbench.config` (sweeps expanded, file order); if that refuses
    it (e.g. written by an older kdbench), its `methods:` keys and `pairs:` entries are
    read as written. No file, or nothing usable: `(None, None)`, and the report falls back
    to vanilla, baseline, alphabetical.
    """
    path = results_dir / grid / "grid.yaml"
    if not path.exists():
        return None, None
    try:
        from kdbench import config

        parsed = config.load_grid(path)
        return [v.label for v in parsed.variants], [p.name for p in parsed.pairs]
    except Exception:  # noqa: BLE001 - ordering is cosmetic: any failure falls back to the raw file
        pass
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    if not isinstance(spec, dict):
        return None, None
    methods = spec.get("methods")
    variants = [str(k) for k in methods] if isinstance(methods, dict) else None
    pairs = []
    for entry in spec.get("pairs") or []:
        if isinstance(entry, str):
            pairs.append(entry)
        elif isinstance(entry, dict) and "student" in entry:
            teacher = entry.get("teacher")
            teacher = teacher.get("arch") if isinstance(teacher, dict) else teacher
            pairs.append(f"{teacher or ''}->{entry['student']}")
    return variants or None, pairs or None


def cli_report(args: argparse.Namespace) -> int:
    """`kdbench report`: build and write the report of one grid, or of every grid; returns the exit code."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: do not squeeze the tables to 80 columns
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
        variant_order, pair_order = grid_order(results_dir, grid)
        rep = build_report(runs, results.load_metrics(results_dir, grid), grid=grid, metric=args.metric,
                           baseline=args.baseline, alpha=args.alpha, variant_order=variant_order, pair_order=pair_order)
        if args.baseline != DEFAULT_BASELINE and not rep.prepared.has_baseline:
            raise KdbenchError(f"--baseline {args.baseline}: no done run of that variant in grid {grid} "
                               f"(variants: {', '.join(rep.prepared.variants)})")
        if args.out:
            out = Path(args.out) / grid if len(grids) > 1 else Path(args.out)
        else:
            out = results_dir / grid / "report"
        for view in rep.views:
            console.print(Markdown(to_markdown(view)))
            console.print()
        written = write_report(rep, out, with_plots=not args.no_plots)
        n_plots = sum(1 for p in written if p.parent.name == "plots")
        console.print(f"Wrote {len(written) - n_plots} table files" + (f" and {n_plots} plot files" if n_plots else "")
                      + f" to {out}/")
        reported += 1
    if not reported:
        raise KdbenchError(f"no results under {results_dir}/: run `kdbench run GRID` first")
    return 0
