"""Region logits: the classifier applied to the final feature map average-pooled at several scales.

SDD's `SPP` (shicaiwei123/SDD-CVPR2024 `mdistiller/models/cifar/utils.py`, e412036): the map
is adaptive-average-pooled to 4×4, and the 2×2 and 1×1 pools are taken from that 4×4 pool,
not from the map, whatever the scales asked; the regions of scale s are the s² cells in
row-major order, scales in the order given, so region 0 of scales starting at 1 is the
global one. A map smaller than 4×4 is pooled as `AdaptiveAvgPool2d` pools it, repeating
cells (MobileNetV2's 2×2 map at 32×32, which the official runs at M = {1,2,4}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.layers import global_pool
from kdbench.models.split import classifier, features

#: The scale lists SDD's SPP computes (its `M`: '[1]', '[1,2]', '[1,2,4]').
SCALES = ((1,), (1, 2), (1, 2, 4))
FINEST = 4


def check_scales(scales: tuple[int, ...] | list[int], what: str) -> tuple[int, ...]:
    """`scales` as a tuple, or a one-line `KdbenchError` if it is not one SDD's SPP computes."""
    scales = tuple(scales)
    if scales not in SCALES:
        raise KdbenchError(f"{what}: scales {list(scales)} are not a list SDD's SPP pools; "
                           f"choose one of {', '.join(str(list(s)) for s in SCALES)}")
    return scales


def unpoolable(height: int, width: int, scales: tuple[int, ...]) -> bool:
    """True when a `height`×`width` map has no local regions to pool (1 cell on a side) but
    `scales` asks for some: every region would be the global one."""
    return max(scales) > 1 and min(height, width) < 2


def require_poolable(pair: str, method: str, scales: tuple[int, ...], archs: dict[str, str], in_channels: int,
                     image_size: int) -> None:
    """A one-line `KdbenchError` if a final feature map of `archs` (role → model) has no local
    regions for `scales` on `image_size`² images."""
    for role, arch in archs.items():
        height, width = map_size(arch, in_channels, image_size)
        if unpoolable(height, width, scales):
            raise KdbenchError(f"pair {pair}: method {method} pools scales {list(scales)}, but the {role} {arch}'s "
                               f"final feature map is {height}×{width} on {image_size}×{image_size} images: no local "
                               "regions; use scales [1] or a larger input")


def region_logits(head: nn.Module, fmap: Tensor, scales: tuple[int, ...]) -> Tensor:
    """(B, classes, N) logits of the N = Σ s² regions of `fmap` (B, C, H, W) at `scales`."""
    finest = F.adaptive_avg_pool2d(fmap, FINEST)
    pools = {FINEST: finest, 2: F.adaptive_avg_pool2d(finest, 2), 1: F.adaptive_avg_pool2d(finest, 1)}
    pooled = torch.cat([pools[s].flatten(2) for s in scales], dim=2)  # (B, C, N)
    return head(pooled.transpose(1, 2)).transpose(1, 2)


class RegionForward(nn.Module):
    """`model`'s logits and its region logits at each scale list of a call, from one pass.

    `forward(x, scale_lists)` returns `(logits, regions)`, `regions` a tuple with one (B,
    classes, N) tensor per scale list. The logits are `model(x)`'s: the classifier on the
    globally pooled final feature map. The module holds `model`, so it wraps it for DDP and
    `torch.compile` like the model itself.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, scale_lists: tuple[tuple[int, ...], ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        fmap = features(self.model, x)
        head = classifier(self.model)
        return head(global_pool(fmap)), tuple(region_logits(head, fmap, scales) for scales in scale_lists)


def map_size(arch: str, in_channels: int, image_size: int) -> tuple[int, int]:
    """(H, W) of model `arch`'s final feature map on `image_size`² inputs, computed on the meta device."""
    from kdbench.models.zoo import build

    with torch.device("meta"):
        model = build(arch, num_classes=2, in_channels=in_channels)
        shape = features(model.eval(), torch.empty(1, in_channels, image_size, image_size)).shape
    return int(shape[2]), int(shape[3])
