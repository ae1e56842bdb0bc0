"""Pieces the model families share: a conv-BN block, global pooling and the init schemes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            groups: int = 1, relu: bool = False) -> nn.Sequential:
    """`Sequential(Conv2d(bias=False), BatchNorm2d[, ReLU])`: state-dict keys `0.*` and `1.*`."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def global_pool(x: Tensor) -> Tensor:
    """Global average pooling to `(N, C)`.

    Adaptive, so it equals the reference's fixed-size pools at 32x32 and also works at 28x28.
    """
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def init_kaiming_fan_out(model: nn.Module) -> None:
    """Conv: Kaiming normal (fan_out, ReLU); BN: weight 1, bias 0; Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def init_normal_fan_out(model: nn.Module, linear_std: float | None = None) -> None:
    """Conv: N(0, 2 / (k*k*out_channels)), bias 0; BN: weight 1, bias 0; Linear: bias 0.

    With `linear_std`, Linear weights are also redrawn from N(0, linear_std).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()
