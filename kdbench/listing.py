"""`kdbench list methods|models|datasets`: rich tables of what is registered."""

from __future__ import annotations

import argparse

from rich.table import Table

from kdbench.console import console


def methods_table() -> Table:
    """Every method with its one-line description and hyper-parameters (type = default)."""
    from kdbench import methods

    table = Table(title="methods", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("hyper-parameters (defaults)")
    for name in methods.available():
        info = methods.describe(name)
        params = "\n".join(f"{p.name}: {p.type_name()} = {p.default!r}" for p in info.hparams) or "—"
        table.add_row(name, info.summary, params)
    return table


def models_table(dataset: str) -> Table:
    """Every model with its parameter count and MACs at `dataset`'s input size."""
    from kdbench import data, models
    from kdbench.estimate import dataset_geometry

    spec = data.resolve_spec(dataset)
    geometry = dataset_geometry(spec)
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
