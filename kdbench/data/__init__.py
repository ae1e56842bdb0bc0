"""Datasets: a registry of named datasets (CIFAR-100, Fashion-MNIST, ImageNet, Tiny-ImageNet,
synthetic), on-device loaders, and the data root.

```python
splits = data.build("cifar100", root=root, device="cuda", seed=0)
for images, targets, indices in splits.train.epoch(1): ...
for images, targets, indices in splits.test: ...
```

A spec is a name (`"cifar100"`) or a mapping (`{"name": "synthetic", "num_classes": 10}`).
Its keys are the dataset class's `__init__` keyword arguments; every dataset takes
`train_size`, `val_size` and `split_seed`.

May import: errors, core, models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from kdbench.data.base import Arrays, DataSplits, Dataset, _registry, register
from kdbench.errors import KdbenchError
from kdbench.core.hparams import Description, HParam, describe_class, resolve, signature_hparams

# Importing the modules registers the built-in datasets. `imagenet` imports torchvision
# lazily, inside its methods, so this stays cheap.
from kdbench.data import cifar100, fashion_mnist, imagenet, synthetic, tiny_imagenet  # noqa: E402,F401  isort: skip

ENV_ROOT = "KDBENCH_DATA"

__all__ = [
    "Arrays", "DataSplits", "Dataset", "available", "build", "dataset_class",
    "describe", "instantiate", "presence", "register", "resolve_root", "resolve_spec", "spec_keys",
]


def available() -> list[str]:
    """Names of every registered dataset, sorted."""
    return _registry.names()


def dataset_class(name: str) -> type[Dataset]:
    """The class registered as `name` (unknown names raise with a did-you-mean)."""
    return _registry.get(name)


def spec_keys(name: str) -> list[HParam]:
    """The spec keys of dataset `name`, read from its `__init__` signature."""
    return signature_hparams(dataset_class(name).__init__)


def resolve_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The full spec: `{"name": ..., <every key>: <value or default>}`, checked.

    Unknown datasets raise `KdbenchError` with a did-you-mean; unknown keys, wrong types
    and out-of-range values raise naming the dataset and the key.
    """
    if isinstance(spec, str):
        name, values = spec, {}
    elif isinstance(spec, Mapping):
        values = dict(spec)
        name = values.pop("name", None)
        if not isinstance(name, str) or not name:
            raise KdbenchError(f"dataset spec {dict(spec)!r}: needs a 'name' (one of: {', '.join(available())})")
    else:
        raise KdbenchError(f"dataset spec: expected a name or a mapping, got {spec!r} ({type(spec).__name__})")
    name = _registry.canonical(name)
    resolved = resolve("dataset", name, spec_keys(name), values)
    dataset_class(name)(**resolved)  # the constructor's range checks
    return {"name": name, **resolved}


def instantiate(spec: str | Mapping[str, Any]) -> Dataset:
    """A dataset object for `spec` (resolved and checked)."""
    resolved = resolve_spec(spec)
    values = {k: v for k, v in resolved.items() if k != "name"}
    return dataset_class(resolved["name"])(**values)


def geometry(spec: str | Mapping[str, Any]) -> dict[str, int]:
    """Classes, channels, image size and image counts of a dataset spec, without loading it."""
    spec = resolve_spec(spec)
    dataset = instantiate(spec)
    val = spec.get("val_size") or 0
    if dataset.split_sizes is not None:
        full_train, test = dataset.split_sizes
        train = min(spec.get("train_size") or full_train, full_train - val)
    else:
        train, test = (spec.get("train_size") or 0) - val, spec.get("test_size") or 0
    return {
        "num_classes": int(getattr(dataset, "num_classes", 0) or spec.get("num_classes", 0)),
        "in_channels": int(getattr(dataset, "in_channels", 0) or spec.get("channels", 3)),
        "image_size": int(getattr(dataset, "image_size", 0) or spec.get("image_size", 32)),
        "train_images": int(train), "test_images": int(test), "val_images": int(val),
    }


def build(
    spec: str | Mapping[str, Any],
    *,
    root: str | os.PathLike,
    device: str | torch.device,
    seed: int,
    batch_size: int = 64,
    eval_batch_size: int = 1024,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """Loaders for `spec` on `device`: `train.epoch(e)` is a pure function of `(seed, e)`.

    Images come out normalised, in `dtype`, channels-last when asked, on `device`.
    """
    if batch_size < 1 or eval_batch_size < 1:
        raise KdbenchError(f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
    resolved = resolve_spec(spec)
    dataset = instantiate(resolved)
    return dataset.build(
        root=Path(root), device=torch.device(device), seed=int(seed), batch_size=int(batch_size),
        eval_batch_size=int(eval_batch_size), channels_last=bool(channels_last), dtype=dtype,
        spec=resolved,
    )


def prepare(spec: str | Mapping[str, Any], root: str | os.PathLike) -> None:
    """Make sure `spec`'s files are under `root` (downloading if allowed); a one-line error if not."""
    instantiate(spec).prepare(Path(root))


def resolve_root(cli_value: str | None, grid_value: str | None) -> Path:
    """The data root: `--data-dir`, then `$KDBENCH_DATA`, then the grid's `data.root`, then `./data`."""
    for value in (cli_value, os.environ.get(ENV_ROOT), grid_value):
        if value:
            return Path(value).expanduser()
    return Path("data")


def describe(name: str) -> Description:
    """The one-line description and the spec keys (types, defaults) of dataset `name`."""
    canonical = _registry.canonical(name)
    return describe_class(canonical, dataset_class(canonical), _registry.source(canonical))


def presence(root: str | os.PathLike) -> list[dict[str, Any]]:
    """For `kdbench list datasets`: `{name, present, path, note}` per dataset.

    `path` is where the files were found, or where they are expected.
    """
    return [dataset_class(name)().presence(Path(root)) for name in available()]
