"""`imagenet`: ImageNet-1k from ImageFolder train/val folders, through a DataLoader.

JPEG decoding needs CPU workers, so unlike the CIFAR-like sets this streams from disk:
a DataLoader with workers and pinned memory, a `DistributedSampler` when
torch.distributed is initialised, batches moved to the device with `non_blocking`.
The interface is the same: `train.epoch(e)` yields `(images, targets, indices)` and
depends only on `(seed, e)`: the shuffle comes from a generator seeded with both, and
each image's augmentation from the global RNG re-seeded (in a fork) with both and the
image's position, so neither the worker count nor the global RNG state matters.
torchvision is imported only when this dataset is built.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from kdbench.data.base import DataSplits, Dataset, register
from kdbench.data.loaders import Batch, epoch_seed, mix_seed
from kdbench.data.splits import split_indices
from kdbench.errors import KdbenchError

FOLDER = "imagenet"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class IndexedFiles(torch.utils.data.Dataset):
    """`(path, label)` samples read with PIL and transformed; items are `(image, label, index)`.

    `index` is the position in the full training (or val) folder listing. When
    `epoch_seed` is set, each item's random transform is seeded by it and the position.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], positions: Sequence[int], transform: Callable) -> None:
        self.samples = samples
        self.positions = list(positions)
        self.transform = transform
        self.epoch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from torchvision.datasets.folder import default_loader

        position = self.positions[i]
        path, label = self.samples[position]
        image = default_loader(path)
        if self.epoch_seed is None:
            return self.transform(image), label, position
        # torchvision's transforms draw from the global RNG; fork it so that the caller's
        # (or the worker's) state is left alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.epoch_seed, position))
            return self.transform(image), label, position


def _to_device(batch: Any, device: torch.device, dtype: torch.dtype, channels_last: bool) -> Batch:
    images, targets, indices = batch
    layout = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True).to(dtype=dtype, memory_format=layout)
    return images, targets.to(device, non_blocking=True), indices.to(device, non_blocking=True)


class _Folder:
    """What both folder loaders hold: the files, the batch size, the device and the output format."""

    def __init__(self, dataset: IndexedFiles, *, batch_size: int, device: torch.device, workers: int,
                 channels_last: bool, dtype: torch.dtype) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.workers = workers
        self.channels_last = channels_last
        self.dtype = dtype
        self.num_samples = len(dataset)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


class FolderTrainLoader(_Folder):
    """Shuffled, augmented batches from image files; `epoch(e)` is seeded by `(seed, e)`.

    Under DDP its DistributedSampler gives each process its own share of the data.
    """

    shards_itself = True

    def __init__(self, dataset: IndexedFiles, *, batch_size: int, seed: int, device: torch.device,
                 workers: int, channels_last: bool, dtype: torch.dtype) -> None:
        super().__init__(dataset, batch_size=batch_size, device=device, workers=workers,
                         channels_last=channels_last, dtype=dtype)
        self.seed = seed

    def _sampler(self) -> torch.utils.data.Sampler | None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return torch.utils.data.DistributedSampler(self.dataset, shuffle=True, seed=self.seed, drop_last=False)
        return None

    def __len__(self) -> int:
        sampler = self._sampler()
        n = len(sampler) if sampler is not None else self.num_samples
        return math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield epoch `epoch`'s batches as `(images, targets, indices)` on the device."""
        seed = epoch_seed(self.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        self.dataset.epoch_seed = seed  # set before the workers start, so they see it
        sampler = self._sampler()
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False,
            generator=generator, persistent_workers=False,
        )
        for batch in loader:
            yield _to_device(batch, self.device, self.dtype, self.channels_last)


class FolderEvalLoader(_Folder):
    """Fixed-order, centre-cropped batches from image files."""

    def __iter__(self) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield _to_device(batch, self.device, self.dtype, self.channels_last)


def transforms(train: bool) -> Callable:
    """The reference transforms: RandomResizedCrop(224) + flip for training, Resize(256) + CenterCrop(224) for eval."""
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(256), T.CenterCrop(224)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def _missing(root: Path, what: str) -> KdbenchError:
    folder = root / FOLDER
    return KdbenchError(
        f"imagenet: {what}: put the ILSVRC2012 images in {folder}/train/<class>/*.JPEG and "
        f"{folder}/val/<class>/*.JPEG (validation images sorted into class folders)"
    )


def _scan(folder: Path, root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise _missing(root, f"{folder} not found")
    try:
        listing = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise _missing(root, f"{folder}: {exc}".replace("\n", " ")) from None
    return listing.samples, listing.classes


@register("imagenet")
class Imagenet(Dataset):
    """ImageNet-1k (ILSVRC2012) from `<root>/imagenet/{train,val}` class folders, 224×224."""

    num_classes = 1000
    split_sizes = (1_281_167, 50_000)
    in_channels = 3
    image_size = 224
    mean = MEAN
    std = STD

    def __init__(self, train_size: int | None = None, val_size: int = 0, split_seed: int = 0,
                 workers: int = 8) -> None:
        self.workers = workers
        super().__init__(train_size=train_size, val_size=val_size, split_seed=split_seed)

    def check(self) -> None:
        """Range checks, `workers` included."""
        if self.workers < 0:
            raise KdbenchError(f"dataset 'imagenet': workers must be >= 0, got {self.workers}")
        super().check()

    shards_itself = True

    def prepare(self, root: Path) -> None:
        """ImageNet is never downloaded: check that `train/` and `val/` exist."""
        for split in ("train", "val"):
            if not (root / FOLDER / split).is_dir():
                raise _missing(root, f"no {split}/ folder")

    def build(self, *, root: Path, device: torch.device, seed: int, batch_size: int, eval_batch_size: int,
              channels_last: bool, dtype: torch.dtype, spec: dict[str, Any]) -> DataSplits:
        """DataLoader-backed loaders over the train and val folders."""
        train_samples, classes = _scan(root / FOLDER / "train", root)
        test_samples, test_classes = _scan(root / FOLDER / "val", root)
        if test_classes != classes:
            raise _missing(root, f"train has {len(classes)} class folders but val has {len(test_classes)} (they must match)")
        labels = torch.tensor([label for _, label in train_samples], dtype=torch.long)
        train_idx, val_idx = split_indices(labels, train_size=self.train_size, val_size=self.val_size,
                                           seed=self.split_seed, dataset=self.name)
        common = dict(device=device, workers=self.workers, channels_last=channels_last, dtype=dtype)
        train = FolderTrainLoader(IndexedFiles(train_samples, train_idx.tolist(), transforms(train=True)),
                                  batch_size=batch_size, seed=seed, **common)
        eval_transform = transforms(train=False)
        val = None
        if val_idx is not None:
            val = FolderEvalLoader(IndexedFiles(train_samples, val_idx.tolist(), eval_transform),
                                   batch_size=eval_batch_size, **common)
        test = FolderEvalLoader(IndexedFiles(test_samples, range(len(test_samples)), eval_transform),
                                batch_size=eval_batch_size, **common)
        return DataSplits(train=train, test=test, val=val, num_classes=len(classes), in_channels=3,
                          image_size=self.image_size, class_names=list(classes), name=self.name,
                          train_size=int(train_idx.numel()), spec=spec)

    def presence(self, root: Path) -> dict[str, Any]:
        """Found when both `train/` and `val/` exist under `<root>/imagenet/`."""
        folder = root / FOLDER
        present = (folder / "train").is_dir() and (folder / "val").is_dir()
        return {"name": self.name, "present": present, "path": str(folder),
                "note": "" if present else "never downloaded: put train/ and val/ class folders here"}
