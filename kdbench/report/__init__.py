"""`kdbench report` and `kdbench compare`: views of a grid's runs as Markdown, LaTeX, CSV, HTML and figures.

Pipeline: `results.load()` → `prepare.prepare()` (done runs, the chosen metric, pair
labels, order) → `cells.cell_frame()` (every cell's statistics, once) → one `View` per
question (`views`, `run_views`, `agreement`, `published`, `provenance`, `curves`): a tidy
frame plus its notes → `render` (Markdown, LaTeX, CSV), `html` (report.html) and `plots`
(figures), written by `build`. `cli` holds the commands, `compare` the comparison of two runs.
docs/design.md ("Report") has the contract.

Import the submodules themselves (`from kdbench.report import build`); this package
imports nothing, so no submodule can reach itself through it.

May import: errors, core, grid, methods, runs, results.
"""
