"""Every zoo model split into its final feature map and its classifier.

For each model, `classifier(model)(global_pool(features(model, x)))` is `model(x)`: the same
operations in the same order, so the same bits (`tests/test_models.py` checks the whole
registry). Two maps are named, as the official code of the methods that use them names them:

- `features(model, x)`: the *final feature map*, the one the global average pool reads. It is
  the map SDD's `_sdd` models (shicaiwei123/SDD-CVPR2024 `mdistiller/models/cifar/*.py`) pool
  into regions: after WRN's final BN-ReLU, after MobileNetV2's and ShuffleNetV2's 1×1 conv head.
- `last_stage(model, x)`: the output of the last stage, before any such head: mdistiller's
  `feats["feats"][-1]`, the map WKD's `tools/generate_class_proto.py` (JiamingLv/WKD) takes its
  CIFAR class prototypes from. It is the final feature map except for WRN (before the final
  BN-ReLU), MobileNetV2 (before `conv2`) and ShuffleNetV2 (before `conv2`, `bn2`, ReLU).

A family class provides them as `feature_map(x)` and `last_stage(x)`, and names its
classifier's attribute in `classifier_name`; torchvision's ResNets are split here.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.errors import KdbenchError


def _torchvision_resnet(model: nn.Module) -> bool:
    # Checked by name: importing torchvision here would slow every `import kdbench.models`.
    return type(model).__name__ == "ResNet" and type(model).__module__.startswith("torchvision.")


def _torchvision_stages(model: nn.Module, x: Tensor) -> Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _unsplit(model: nn.Module) -> KdbenchError:
    return KdbenchError(f"model {type(model).__name__} has no split into a feature map and a classifier "
                        "(a zoo model's `feature_map`, `last_stage` and `classifier_name`; kdbench.models.split)")


def splittable(model: nn.Module) -> bool:
    """Whether `model` has the split (every zoo model has)."""
    return _torchvision_resnet(model) or all(hasattr(model, a) for a in ("feature_map", "last_stage", "classifier_name"))


def features(model: nn.Module, x: Tensor) -> Tensor:
    """The final feature map of `model` on `x`, (B, C, H, W): what its global average pool reads."""
    if _torchvision_resnet(model):
        return _torchvision_stages(model, x)
    if not splittable(model):
        raise _unsplit(model)
    return model.feature_map(x)


def last_stage(model: nn.Module, x: Tensor) -> Tensor:
    """The output of `model`'s last stage on `x` (mdistiller's `feats["feats"][-1]`), (B, C, H, W)."""
    if _torchvision_resnet(model):
        return _torchvision_stages(model, x)
    if not splittable(model):
        raise _unsplit(model)
    return model.last_stage(x)


def classifier(model: nn.Module) -> nn.Module:
    """The module that maps `model`'s globally pooled final feature map, (B, C), to its logits."""
    if _torchvision_resnet(model):
        return model.fc
    if not splittable(model):
        raise _unsplit(model)
    return getattr(model, model.classifier_name)
