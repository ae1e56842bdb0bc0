"""The command-line options of `kdbench report` and `kdbench compare`.

Kept apart from the commands so that building the parser imports neither pandas nor
matplotlib. `METRIC_CHOICES` and `CORRECTION_CHOICES` equal `prepare.METRICS` and
`prepare.CORRECTIONS` (a test checks it).
"""

from __future__ import annotations

import argparse

__all__ = ["CORRECTION_CHOICES", "METRIC_CHOICES", "add_compare_options", "add_report_options"]

METRIC_CHOICES = ["last", "best", "val"]
CORRECTION_CHOICES = ["holm", "none"]


def _add_statistics(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric", choices=METRIC_CHOICES, default="last",
        help="last: last-epoch test top-1 (default); best: best epoch on the test set (labelled so); "
        "val: test top-1 at the epoch chosen on the validation split",
    )
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the t-tests; intervals are at 1 − alpha (default: 0.05)")
    p.add_argument("--correction", choices=CORRECTION_CHOICES, default="holm",
                   help="multiple-comparison correction of the significance marks within each pair: "
                   "holm (Holm–Bonferroni, default) or none")


def add_report_options(p: argparse.ArgumentParser) -> None:
    """The options of `kdbench report`."""
    p.add_argument("--results-dir", default="results", metavar="DIR", help="results folder (default: results)")
    p.add_argument("--grid", metavar="NAME", help="which grid (default: the only one, or every grid)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RESULTS/GRID/report)")
    _add_statistics(p)
    p.add_argument("--baseline", default="kd", metavar="VARIANT",
                   help="method variant for significance marks and gains (default: kd)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page with sortable, filterable results "
                   "and accuracy curves")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")


def add_compare_options(p: argparse.ArgumentParser) -> None:
    """The options of `kdbench compare`."""
    p.add_argument("a", metavar="A", help="a results folder, or one grid's folder in it (RESULTS/GRID)")
    p.add_argument("b", metavar="B", help="the results folder or grid folder compared with A")
    p.add_argument("--grid", metavar="NAME",
                   help="the grid to compare when A or B is a results folder holding several grids")
    _add_statistics(p)
    p.add_argument("--out", metavar="DIR", help="also write the comparison as Markdown, LaTeX and CSV here")
