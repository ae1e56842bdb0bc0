"""Data-pipeline throughput: the on-device loader against torchvision's DataLoader.

Both run over random in-memory uint8 images of CIFAR's shape with the same transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), so no dataset is
needed on disk. Used by `kdbench bench --data-only`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from kdbench.data.cifar100 import Cifar100
from kdbench.data.loaders import TrainLoader
from kdbench.core.devices import synchronize


class _PilImages(torch.utils.data.Dataset):
    """The torchvision CIFAR path: HWC uint8 array → PIL image → transforms, per item."""

    def __init__(self, images_hwc: np.ndarray, targets: np.ndarray, transform: Any) -> None:
        self.images = images_hwc
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.targets[i])


def _time_on_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, batch_size: int) -> float:
    loader = TrainLoader(images.to(device), targets.to(device), batch_size=batch_size, seed=0,
                         mean=Cifar100.mean, std=Cifar100.std)
    for step, _ in enumerate(loader.epoch(0)):  # warm-up: allocator, kernels, thread pool
        if step == 20:
            break
    synchronize(device)
    start = time.perf_counter()
    checksum = torch.zeros((), device=device)
    for batch, _, _ in loader.epoch(1):
        checksum += batch[0, 0, 0, 0]  # touch every batch so nothing is skipped lazily
    synchronize(device)
    return time.perf_counter() - start


def _time_dataloader(images: torch.Tensor, targets: torch.Tensor, batch_size: int, workers: int) -> tuple[float, int]:
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(Cifar100.mean, Cifar100.std),
    ])
    dataset = _PilImages(images.permute(0, 2, 3, 1).numpy(), targets.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up is not counted
    start = time.perf_counter()
    count = 0
    for batch, _ in iterator:
        count += len(batch)
    return time.perf_counter() - start, count


def measure_data_throughput(
    device: str = "cpu", batch_size: int = 64, num_images: int = 50_000, compare_dataloader: bool = True
) -> dict[str, Any]:
    """Images per second of one augmented training epoch, on-device and (optionally) with a DataLoader.

    Returns `data_images_per_s` (and `data_seconds`); with `compare_dataloader`, also
    `dataloader_images_per_s` (2 workers, batch 64, same transforms, first batch not
    timed) and `speedup`, their ratio.
    """
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 100, (num_images,), generator=g)
    seconds = _time_on_device(images, targets, dev, batch_size)
    result: dict[str, Any] = {
        "device": str(dev), "batch_size": batch_size, "num_images": num_images,
        "torch_threads": torch.get_num_threads(),
        "data_seconds": round(seconds, 4), "data_images_per_s": round(num_images / seconds, 1),
    }
    if compare_dataloader:
        dl_seconds, count = _time_dataloader(images, targets, batch_size=64, workers=2)
        result["dataloader_seconds"] = round(dl_seconds, 4)
        result["dataloader_images_per_s"] = round(count / dl_seconds, 1)
        result["speedup"] = round(result["data_images_per_s"] / result["dataloader_images_per_s"], 2)
    return result
