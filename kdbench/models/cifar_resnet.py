"""CIFAR ResNets (He et al. 2016, 6n+2 layers): resnet8 ... resnet110, resnet8x4, resnet32x4.

Keys: `conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`, a 1x1 conv-BN shortcut named
`downsample.{0,1}` where the shape changes, and the classifier `fc`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import conv_bn, global_pool, init_kaiming_fan_out
from kdbench.models.zoo import register


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = conv_bn(in_planes, planes, 1, stride) if stride != 1 or in_planes != planes else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A 3-stage CIFAR ResNet of `depth` = 6n+2 layers with stage widths `widths[1:]`."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, 1)
        self.layer2 = self._stage(widths[1], widths[2], n, 2)
        self.layer3 = self._stage(widths[2], widths[3], n, 2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_kaiming_fan_out(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    classifier_name = "fc"

    def last_stage(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def feature_map(self, x: Tensor) -> Tensor:
        return self.last_stage(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(global_pool(self.feature_map(x)))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _define(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)

    factory.__doc__ = f"CIFAR ResNet-{depth}, stage widths {widths[1:]}."
    factory.__name__ = name
    register(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _define(f"resnet{_depth}", _depth, _NARROW)
_define("resnet8x4", 8, _WIDE)
_define("resnet32x4", 32, _WIDE)
