"""The dataset registry, the base class every dataset derives from, and `DataSplits`.

A dataset is a class registered with `@register("name")`. Its `__init__` keyword
arguments are its spec keys (typed, defaulted), exactly like a method's hyper-parameters.
Every dataset takes the shared keys `train_size`, `val_size` and `split_seed`.

In-memory datasets (CIFAR-100, Fashion-MNIST, synthetic) implement `load_arrays(root)`,
returning whole splits as uint8 tensors; the base class turns those into on-device
loaders. A dataset that streams from disk (ImageNet) overrides `build` instead.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from kdbench.data.loaders import EvalLoader, TrainLoader
from kdbench.data.splits import split_indices
from kdbench.errors import KdbenchError
from kdbench.core.registry import Registry

_registry: "Registry[type[Dataset]]" = Registry("dataset")


def register(name: str) -> Callable[[type["Dataset"]], type["Dataset"]]:
    """Class decorator that registers a `Dataset` subclass under `name`."""

    def decorator(cls: type[Dataset]) -> type[Dataset]:
        source = inspect.getsourcefile(cls) or getattr(sys.modules.get(cls.__module__), "__file__", "?")
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise KdbenchError(f"{source}: @register('{name}') must decorate a kdbench.data.Dataset subclass")
        cls.name = name
        _registry.add(name, cls, source=str(source))
        return cls

    return decorator


@dataclass(frozen=True)
class Arrays:
    """Whole splits held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]


@dataclass
class DataSplits:
    """A dataset ready for training: loaders plus the facts a model and a report need.

    `train` has `len()` batches and `.epoch(e)` yielding `(images, targets, indices)`;
    `test` and `val` (None without `val_size`) yield the same triples when iterated.
    `train_size` is the number of training images actually used (after the validation
    hold-out and the `train_size` subset).
    """

    train: Any
    test: Any
    val: Any | None
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    name: str
    train_size: int
    spec: dict[str, Any]


class Dataset:
    """Base class of every dataset. Subclasses set the class attributes and `load_arrays`.

    The constructor's keyword arguments are the spec keys; subclasses that add keys
    repeat the shared ones in their own signature.
    """

    name: str = "?"
    num_classes: int = 0
    in_channels: int = 3
    image_size: int = 32
    # Normalisation applied after /255, per channel.
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # RandomCrop padding used for training augmentation (0 disables the crop).
    crop_padding: int = 4
    hflip: bool = True
    # (training, test) images of the full dataset, for plans made without loading it; None
    # where the spec gives them (synthetic).
    split_sizes: tuple[int, int] | None = None
    # True when the train loader splits the data across DDP processes itself (it then gets
    # the per-process batch size); the on-device loaders are sharded by the trainer.
    shards_itself: bool = False

    def __init__(self, train_size: int | None = None, val_size: int = 0, split_seed: int = 0) -> None:
        self.train_size = train_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.check()

    def check(self) -> None:
        """Range checks on the spec values; raises `KdbenchError` naming the dataset and key."""
        if self.train_size is not None and self.train_size < 1:
            raise KdbenchError(f"dataset '{self.name}': train_size must be >= 1 or null, got {self.train_size}")
        if self.val_size < 0:
            raise KdbenchError(f"dataset '{self.name}': val_size must be >= 0, got {self.val_size}")

    def prepare(self, root: Path) -> None:
        """Make sure the files are on disk (downloading them if allowed), without loading them.

        Raises a one-line `KdbenchError` saying which file to put where. `kdbench run` calls
        it first, so a missing dataset stops the command at once.
        """

    # -- in-memory datasets -------------------------------------------------------------

    def load_arrays(self, root: Path) -> Arrays:
        """Read (downloading if allowed) the whole dataset into uint8 tensors on the CPU."""
        raise NotImplementedError

    def build(
        self,
        *,
        root: Path,
        device: torch.device,
        seed: int,
        batch_size: int,
        eval_batch_size: int,
        channels_last: bool,
        dtype: torch.dtype,
        spec: dict[str, Any],
    ) -> DataSplits:
        """Loaders for this dataset on `device` (see `kdbench.data.build`)."""
        arrays = self.load_arrays(root)
        train_idx, val_idx = split_indices(
            arrays.train_labels, train_size=self.train_size, val_size=self.val_size,
            seed=self.split_seed, dataset=self.name,
        )
        common = dict(mean=self.mean, std=self.std, channels_last=channels_last, dtype=dtype)
        # Select on the host, so the device holds each image once.
        train = TrainLoader(
            arrays.train_images[train_idx].to(device), arrays.train_labels[train_idx].to(device),
            batch_size=batch_size, seed=seed, pad=self.crop_padding, flip=self.hflip,
            indices=train_idx.to(device), **common,
        )
        val = None
        if val_idx is not None:
            val = EvalLoader(
                arrays.train_images[val_idx].to(device), arrays.train_labels[val_idx].to(device),
                batch_size=eval_batch_size, indices=val_idx.to(device), **common,
            )
        test = EvalLoader(
            arrays.test_images.to(device), arrays.test_labels.to(device),
            batch_size=eval_batch_size, **common,
        )
        return DataSplits(
            train=train, test=test, val=val, num_classes=self.num_classes,
            in_channels=self.in_channels, image_size=self.image_size,
            class_names=list(arrays.class_names), name=self.name,
            train_size=int(train_idx.numel()), spec=spec,
        )

    # -- presence ---------------------------------------------------------------------

    def presence(self, root: Path) -> dict[str, Any]:
        """`{name, present, path, note}`: whether the files are on disk, and where."""
        return {"name": self.name, "present": False, "path": str(root), "note": ""}

