"""ImageNet models: torchvision's ResNet-18/34/50 and the reference's MobileNetV1.

torchvision is imported inside the factories, so that importing `kdbench.models` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from kdbench.models.layers import conv_bn, global_pool
from kdbench.models.zoo import register

# name -> (torchvision builder, weights enum class, the pinned weights). IMAGENET1K_V1 for all
# three, as the teachers of mdistiller's ImageNet results: torchvision's DEFAULT for ResNet-50 is
# IMAGENET1K_V2 (80.9% top-1, a newer recipe), not the V1 weights (76.1%) published ResNet50→
# MobileNetV1 results use.
TORCHVISION = {
    "resnet18_imagenet": ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34_imagenet": ("resnet34", "ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50_imagenet": ("resnet50", "ResNet50_Weights", "IMAGENET1K_V1"),
}


def _torchvision_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    builder = TORCHVISION[name][0]
    model = getattr(tvm, builder)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def torchvision_weights(name: str):  # -> torchvision.models.WeightsEnum
    """The pinned ImageNet-1k weights of torchvision model `name` (e.g. `resnet18_imagenet`)."""
    import torchvision.models as tvm

    _, enum, pinned = TORCHVISION[name]
    return getattr(getattr(tvm, enum), pinned)


def torchvision_weights_name(name: str) -> str:
    """The pinned weights as torchvision names them, e.g. `ResNet50_Weights.IMAGENET1K_V1`."""
    _, enum, pinned = TORCHVISION[name]
    return f"{enum}.{pinned}"


def torchvision_weights_file(name: str) -> Path:
    """Where torch.hub keeps the pinned weights of `name` once downloaded (its file name carries
    the first digits of the file's SHA-256, which the download checks)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(torchvision_weights(name).url).name


def _define(name: str) -> None:
    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return _torchvision_resnet(name, num_classes, in_channels)

    factory.__doc__ = f"torchvision {TORCHVISION[name][0]} (ImageNet, 224x224)."
    factory.__name__ = name
    register(name, zoo="imagenet")(factory)


for _name in TORCHVISION:
    _define(_name)


def _depthwise_separable(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(inp, inp, 3, stride, groups=inp, relu=True), *conv_bn(inp, oup, 1, relu=True))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), keys `model.{0..13}.*` and `fc`, as in the reference."""

    # (output channels, stride) of the 13 depthwise-separable units
    UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers = [conv_bn(in_channels, 32, 3, 2, relu=True)]
        channels = 32
        for out, stride in self.UNITS:
            layers.append(_depthwise_separable(channels, out, stride))
            channels = out
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    classifier_name = "fc"

    def last_stage(self, x: Tensor) -> Tensor:
        return self.model(x)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(global_pool(self.feature_map(x)))


@register("mobilenetv1_imagenet", aliases=("MobileNetV1",), zoo="imagenet")
def mobilenetv1_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """MobileNetV1 (ImageNet, 224x224), with the reference's keys."""
    return MobileNetV1(num_classes, in_channels)
