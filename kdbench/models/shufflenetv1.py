"""ShuffleNet v1 for CIFAR (groups 3, widths 240/480/960), registered as ShuffleV1.

Keys: `conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}` and `linear`.
The stride-2 shortcut is an average pool (no keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import global_pool
from kdbench.models.zoo import register

STEM = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups: (N, g*c, H, W) -> transpose of the (g, c) grid."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates a pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The first unit reads the 24-channel stem, which is not split into groups.
        self.first_groups = 1 if in_planes == STEM else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 with a 1x1 stem and three stages that each start with a stride-2 unit."""

    def __init__(self, widths: tuple[int, ...] = (240, 480, 960), blocks: tuple[int, ...] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        planes = STEM
        stages = []
        for width, n in zip(widths, blocks, strict=True):
            # The stride-2 unit concatenates its input, so its branch produces width - input channels.
            units = [ShuffleUnit(planes, width - planes, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(planes, num_classes)

    classifier_name = "linear"

    def last_stage(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def feature_map(self, x: Tensor) -> Tensor:
        return self.last_stage(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(global_pool(self.feature_map(x)))


@register("ShuffleV1", aliases=("shufflev1", "shufflenetv1"))
def shufflev1(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ShuffleNet v1, groups 3, widths 240/480/960, blocks 4/8/4."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)
