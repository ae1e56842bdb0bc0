"""`kdbench list methods|models|datasets`: rich tables of what is registered; the README's method table.

`python -m kdbench.tools.listing README.md` rewrites the method table between the README's
`<!-- methods:start -->` and `<!-- methods:end -->` markers from the registry.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from kdbench.core.console import console

README_START, README_END = "<!-- methods:start -->", "<!-- methods:end -->"


def methods_table() -> Table:
    """Every method with its one-line description and hyper-parameters (type = default)."""
    from kdbench import methods

    table = Table(title="methods", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("hyper-parameters (defaults)")
    table.add_column("defaults from")
    for name in methods.available():
        info = methods.describe(name)
        params = "\n".join(f"{p.name}: {p.type_name()} = {p.default!r}" for p in info.hparams) or "—"
        summary = " ".join([info.summary, *_inputs(name)])
        table.add_row(name, escape(summary), escape(params), escape(methods.defaults_source(name) or "—"))
    return table


def _inputs(name: str) -> list[str]:
    """What method `name` gets beyond the standard view's logits, in sentences."""
    from kdbench import methods
    from kdbench.methods.artifacts import teacher_artifact

    cls = methods.method_class(name)
    views, artifact = methods.views_of(cls), teacher_artifact(cls)
    return ([f"Views: {', '.join(views)}."] if views else []) + (
        ["Region logits at its `scales`."] if getattr(cls, "regions", False) else []) + (
        [f"Teacher artifact: {artifact}."] if artifact else [])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").strip() or "—"


def _code_link(url: str) -> str:
    match = re.match(r"https://github\.com/([^/]+/[^/]+)/", url)
    return f"[{match.group(1)}]({url})" if match else _cell(url)


def methods_markdown() -> str:
    """The README's method table: every registered method, its loss, paper, official code, defaults
    and where they come from."""
    from kdbench import methods

    lines = ["| method | loss | paper | official code | defaults | defaults from |", "|:--|:--|:--|:--|:--|:--|"]
    for name in methods.available():
        info = methods.describe(name)
        paper, code = methods.reference(name)
        defaults = ", ".join(f"`{p.name}={p.default!r}`" for p in info.hparams)
        summary = " ".join([info.summary, *_inputs(name)])
        lines.append(f"| `{name}` | {_cell(summary)} | {_cell(paper)} | {_code_link(code) if code else '—'} "
                     f"| {defaults or '—'} | {_cell(methods.defaults_source(name))} |")
    return "\n".join(lines) + "\n"


def readme_with_methods(readme: str) -> str:
    """`readme` with the text between the method-table markers replaced by `methods_markdown()`."""
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "\n" + methods_markdown() + readme[end:]


def models_table(dataset: str) -> Table:
    """Every model with its parameter count and MACs at `dataset`'s input size."""
    from kdbench import data, models

    spec = data.resolve_spec(dataset)
    geometry = data.geometry(spec)
    zoo = "imagenet" if spec["name"] == "imagenet" else "cifar"
    table = Table(title=f"models ({zoo} zoo, {geometry['in_channels']}×{geometry['image_size']}² input, "
                        f"{geometry['num_classes']} classes)")
    table.add_column("name", style="bold")
    table.add_column("parameters", justify="right")
    table.add_column("MACs", justify="right")
    for row in models.summary_rows(geometry["num_classes"], geometry["in_channels"], geometry["image_size"], zoo=zoo):
        table.add_row(row["name"], f"{row['params']:,}", f"{row['macs'] / 1e6:,.1f} M")
    return table


def datasets_table(data_dir: str | None) -> Table:
    """Every dataset, whether it is present in the data root, and where."""
    from kdbench import data

    root = data.resolve_root(data_dir, None)
    table = Table(title=f"datasets (data root: {root})")
    table.add_column("name", style="bold")
    table.add_column("present")
    table.add_column("where")
    table.add_column("note")
    for row in data.presence(root):
        table.add_row(row["name"], "yes" if row["present"] else "no", str(row["path"]), row.get("note", ""))
    return table


def cli_list(args: argparse.Namespace) -> int:
    """Print the requested table."""
    if args.what == "methods":
        table = methods_table()
    elif args.what == "models":
        table = models_table(args.dataset)
    else:
        table = datasets_table(args.data_dir)
    console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Rewrite the method table of the given README in place."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.tools.listing",
                                     description="Rewrite the README's method table from the method registry.")
    parser.add_argument("readme", type=Path, help="the README holding the method-table markers")
    path = parser.parse_args(argv).readme
    path.write_text(readme_with_methods(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
