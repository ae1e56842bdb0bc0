"""`synthetic`: a small, learnable, deterministic image task for tests and quick checks.

Each class owns three coloured gratings (an orientation, a spatial frequency and a colour
direction), fixed for a given `num_classes` and `channels` whatever the split seed, so a
teacher trained on one draw stays meaningful on another. An image shows one of its
class's gratings at a random phase, slightly jittered and mirrored half the time (so flip
augmentation keeps the classes apart), overlaid with a weaker grating of another class,
plus pixel noise. The random phase keeps models linear in the pixels near chance, while
local filters plus pooling learn the task in a few epochs; overlay and noise keep
accuracy short of 100%. The images themselves are drawn from `split_seed`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kdbench.data.base import Arrays, Dataset, register
from kdbench.data.loaders import mix_seed
from kdbench.errors import KdbenchError

PATTERN_SEED = 20240607
MODES = 3  # gratings per class
JITTER = 0.1  # jitter of orientation (radians) and, relatively, of frequency
OVERLAY = 0.5  # amplitude of the other class's grating
NOISE = 1.2  # pixel noise, in units of a grating's standard deviation
CONTRAST = 40.0  # grey levels per unit


def class_gratings(num_classes: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orientation (radians), frequency (cycles per pixel) and unit colour of every class's gratings.

    Shapes `(num_classes, MODES)`, `(num_classes, MODES)`, `(num_classes, MODES, channels)`.
    """
    g = torch.Generator().manual_seed(mix_seed(PATTERN_SEED, num_classes, channels))
    theta = torch.rand(num_classes, MODES, generator=g) * math.pi
    freq = 0.06 + 0.18 * torch.rand(num_classes, MODES, generator=g)
    color = torch.randn(num_classes, MODES, channels, generator=g)
    return theta, freq, color / color.norm(dim=-1, keepdim=True)


def _gratings(classes: torch.Tensor, bank: tuple[torch.Tensor, ...], size: int, g: torch.Generator) -> torch.Tensor:
    """One grating of each sample's class, random mode, phase, jitter and mirror: `(n, C, size, size)`."""
    theta, freq, color = bank
    n, channels = len(classes), color.shape[-1]
    mode = torch.randint(0, MODES, (n,), generator=g)
    angle = theta[classes, mode] + JITTER * (torch.rand(n, generator=g) - 0.5)
    angle = torch.where(torch.rand(n, generator=g) < 0.5, math.pi - angle, angle)  # a mirrored grating
    cycles = freq[classes, mode] * (1 + JITTER * (torch.rand(n, generator=g) - 0.5))
    phase = 2 * math.pi * torch.rand(n, generator=g)
    axis = torch.arange(size, dtype=torch.float32)
    along = axis[None, None, :] * angle.cos()[:, None, None] + axis[None, :, None] * angle.sin()[:, None, None]
    wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])
    # sqrt(2 C): a sine has variance 1/2 and the unit colour spreads it over C channels.
    return color[classes, mode][:, :, None, None] * wave[:, None] * math.sqrt(2 * channels)


def generate(
    n: int, num_classes: int, channels: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images `(n, channels, size, size)` and their labels, balanced over classes."""
    bank = class_gratings(num_classes, channels)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    other = (labels + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    x = _gratings(labels, bank, size, generator) + OVERLAY * _gratings(other, bank, size, generator)
    x += NOISE * torch.randn(n, channels, size, size, generator=generator)
    return (128.0 + CONTRAST * x).round_().clamp_(0, 255).to(torch.uint8), labels


@register("synthetic")
class Synthetic(Dataset):
    """Generated class gratings plus noise; no files needed (for tests and smoke runs)."""

    def __init__(
        self,
        num_classes: int = 10,
        train_size: int = 512,
        test_size: int = 256,
        image_size: int = 32,
        channels: int = 3,
        val_size: int = 0,
        split_seed: int = 0,
    ) -> None:
        self.num_classes = num_classes
        self.test_size = test_size
        self.image_size = image_size
        self.in_channels = channels
        self.mean = (0.5,) * channels
        self.std = (0.25,) * channels
        super().__init__(train_size=train_size, val_size=val_size, split_seed=split_seed)

    def check(self) -> None:
        """Range checks on every key."""
        values = {"num_classes": self.num_classes, "test_size": self.test_size,
                  "image_size": self.image_size, "channels": self.in_channels}
        for key, low in (("num_classes", 2), ("test_size", 1), ("image_size", 8), ("channels", 1)):
            if values[key] < low:
                raise KdbenchError(f"dataset 'synthetic': {key} must be >= {low}, got {values[key]}")
        super().check()

    def load_arrays(self, root: Path | None) -> Arrays:
        """Generate the splits from `split_seed` (the root is not used).

        `train_size` counts the images left after the validation hold-out, so
        `train_size + val_size` are generated. Train and test come from separate
        generators: the test set does not move with the training split's size.
        """
        shape = (self.num_classes, self.in_channels, self.image_size)
        train_g = torch.Generator().manual_seed(mix_seed(self.split_seed, 0))
        test_g = torch.Generator().manual_seed(mix_seed(self.split_seed, 1))
        train_images, train_labels = generate(self.train_size + self.val_size, *shape, train_g)
        test_images, test_labels = generate(self.test_size, *shape, test_g)
        names = [f"class_{i}" for i in range(self.num_classes)]
        return Arrays(train_images, train_labels, test_images, test_labels, names)

    def presence(self, root: Path) -> dict[str, Any]:
        """Always present: generated on the fly."""
        return {"name": self.name, "present": True, "path": "(generated)", "note": "generated on the fly"}
