"""ShuffleNet v2 for CIFAR (net size 1: widths 116/232/464, head 1024), registered as ShuffleV2.

Keys: `conv1`, `bn1`, `layer{1,2,3}.0.{conv1..conv5,bn1..bn5}` (the stride-2 down unit),
`layer{1,2,3}.{i>0}.{conv1..conv3,bn1..bn3}`, `conv2`, `bn2` and `linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import global_pool
from kdbench.models.shufflenetv1 import STEM, channel_shuffle
from kdbench.models.zoo import register


class SplitUnit(nn.Module):
    """Keep half the channels, transform the other half (1x1, depthwise 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches (depthwise-1x1 and 1x1-depthwise-1x1), concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2 with a 1x1 stem, three stages (a down unit then split units) and a 1x1 head."""

    def __init__(self, widths: tuple[int, int, int, int] = (116, 232, 464, 1024), blocks: tuple[int, int, int] = (3, 7, 3),
                 num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        channels = STEM
        stages = []
        for width, n in zip(widths[:3], blocks, strict=True):
            stages.append(nn.Sequential(DownUnit(channels, width), *[SplitUnit(width) for _ in range(n)]))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    classifier_name = "linear"

    def last_stage(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def feature_map(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(self.last_stage(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(global_pool(self.feature_map(x)))


@register("ShuffleV2", aliases=("shufflev2", "shufflenetv2"))
def shufflev2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ShuffleNet v2, net size 1 (widths 116/232/464, head 1024, blocks 3/7/3)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
