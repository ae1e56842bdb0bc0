"""MobileNetV2 for CIFAR at width 0.5, expansion 6 (the reference's `mobile_half`), registered as MobileNetV2.

Keys: `conv1.{0,1}`, `blocks.{s}.{i}.conv.{0,1,3,4,6,7}` (expand 1x1, depthwise 3x3,
project 1x1, each with BN), `conv2.{0,1}` and `classifier.0`.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.models.layers import conv_bn, global_pool, init_normal_fan_out
from kdbench.models.zoo import register

# (expansion, channels, blocks, first stride); an expansion of None means "use T".
_SETTING = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1); residual when the shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            *conv_bn(inp, hidden, 1, relu=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden, relu=True),
            *conv_bn(hidden, oup, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with expansion `T` and width multiplier `width` (stem stride 2, 1280-wide head)."""

    def __init__(self, T: int = 6, width: float = 0.5, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = conv_bn(in_channels, channels, 3, 2, relu=True)
        self.blocks = nn.ModuleList()
        for expansion, c, n, s in _SETTING:
            out = int(c * width)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out, s if i == 0 else 1, T if expansion is None else expansion))
                channels = out
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn(channels, last, 1, relu=True)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_normal_fan_out(self, linear_std=0.01)

    classifier_name = "classifier"

    def last_stage(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return x

    def feature_map(self, x: Tensor) -> Tensor:
        return self.conv2(self.last_stage(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(global_pool(self.feature_map(x)))


@register("MobileNetV2", aliases=("mobilenetv2", "mobile_half", "mv2"))
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """MobileNetV2, width 0.5, expansion 6 (the reference's `mobile_half`)."""
    return MobileNetV2(6, 0.5, num_classes, in_channels)
