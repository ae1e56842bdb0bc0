"""`kdbench report`: comparison views of a grid's runs, as Markdown, LaTeX, CSV and figures.

Pipeline: `results.load()` → `prepare.prepare()` (done runs, the chosen metric, table
columns) → one `View` per question (`views`, `published`, `run_views`): a tidy frame plus
its notes → `render` (Markdown, LaTeX, CSV) and `plots` (figures) → files (`build`).
`cli` is the command.

Import the submodules themselves (`from kdbench.report import build`); this package
imports nothing, so no submodule can reach itself through it.
"""
