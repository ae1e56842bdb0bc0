"""ResNet18 / ResNet50 adapted to CIFAR (3x3 stride-1 stem, no max-pool), as in the reference's resnetv2.

Keys: `conv1`, `bn1`, `layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]}`, a 1x1 conv-BN
shortcut named `shortcut.{0,1}` where the shape changes, and the classifier `linear`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import conv_bn, global_pool, init_kaiming_fan_out
from kdbench.models.zoo import register


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity and, like the reference's, has no keys.
    if stride != 1 or in_planes != out_planes:
        return conv_bn(in_planes, out_planes, 1, stride)
    return nn.Sequential()


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus a shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetV2(nn.Module):
    """A four-stage ResNet (widths 64-512) with a CIFAR stem."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int, int],
                 num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            units = []
            for i in range(n):
                units.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        init_kaiming_fan_out(self)

    classifier_name = "linear"

    def last_stage(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def feature_map(self, x: Tensor) -> Tensor:
        return self.last_stage(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(global_pool(self.feature_map(x)))


@register("ResNet18", aliases=("resnet18",))
def resnet18(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with a CIFAR stem (the reference's resnetv2 ResNet18)."""
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register("ResNet50", aliases=("resnet50",))
def resnet50(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ResNet-50 with a CIFAR stem (the reference's resnetv2 ResNet50)."""
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
