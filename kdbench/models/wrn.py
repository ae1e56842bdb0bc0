"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks. Keys: `conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`, a
1x1 `convShortcut` only where the width changes, a final `bn1` and the classifier `fc`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import global_pool, init_normal_fan_out
from kdbench.models.zoo import register


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus an identity or 1x1 conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if in_planes != out_planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        out = self.conv2(out)
        # With a projection the shortcut starts from the activated input, otherwise from the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class WideStage(nn.Module):
    """`n` blocks under a `layer` attribute (the reference's key prefix `blockK.layer.`)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-`depth`-`widen` with `depth` = 6n+4."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1)
        self.block2 = WideStage(n, widths[1], widths[2], 2)
        self.block3 = WideStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_normal_fan_out(self)

    classifier_name = "fc"

    def last_stage(self, x: Tensor) -> Tensor:
        return self.block3(self.block2(self.block1(self.conv1(x))))

    def feature_map(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.last_stage(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(global_pool(self.feature_map(x)))


def _define(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def factory(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels)

    factory.__doc__ = f"Wide ResNet {depth}-{widen}."
    factory.__name__ = name
    register(name, aliases=(f"wrn{depth}_{widen}", f"wrn-{depth}-{widen}"))(factory)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _define(_depth, _widen)
