"""VGG with batch norm for CIFAR: vgg8, vgg11, vgg13, vgg16, vgg19 (the reference's `_bn` variants).

Five blocks `block0`..`block4`, each a Sequential of conv3x3(bias)-BN-ReLU units whose last
ReLU is dropped (keys `blockK.{0,1,3,4,...}`), max-pools between blocks, and `classifier`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.layers import global_pool, init_normal_fan_out
from kdbench.models.zoo import register

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward


class VGG(nn.Module):
    """VGG-BN over five blocks of widths `config`, global average pooling and one linear layer."""

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.block0 = _block(config[0], in_channels)
        self.block1 = _block(config[1], config[0][-1])
        self.block2 = _block(config[2], config[1][-1])
        self.block3 = _block(config[3], config[2][-1])
        self.block4 = _block(config[4], config[3][-1])
        self.classifier = nn.Linear(config[4][-1], num_classes)
        init_normal_fan_out(self, linear_std=0.01)

    classifier_name = "classifier"

    def last_stage(self, x: Tensor) -> Tensor:
        return self.feature_map(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(global_pool(self.feature_map(x)))

    def feature_map(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        x = F.relu(self.block0(x))
        x = F.relu(self.block1(F.max_pool2d(x, 2)))
        x = F.relu(self.block2(F.max_pool2d(x, 2)))
        x = F.relu(self.block3(F.max_pool2d(x, 2)))
        # The reference pools before the last block only for 64x64 inputs (Tiny-ImageNet);
        # at 32x32 the last two blocks both run at 4x4.
        if height == 64:
            x = F.max_pool2d(x, 2)
        return F.relu(self.block4(x))


def _define(name: str) -> None:
    config = CONFIGS[name]

    def factory(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
        return VGG(config, num_classes, in_channels)

    factory.__doc__ = f"{name.upper()} with batch norm (the reference's {name}_bn)."
    factory.__name__ = name
    register(name, aliases=(f"{name}_bn",))(factory)


for _name in CONFIGS:
    _define(_name)
