"""CIFAR and ImageNet model zoo.

`build(name)` returns a model whose forward gives logits only. State-dict keys, shapes
and order equal the reference zoo's (mdistiller / RepDistiller), so the published
teacher checkpoints load with `strict=True`; global pooling is adaptive, so 28x28 and
1-channel inputs work too. Every model splits into its final feature map and its
classifier (`features`, `classifier`, and `last_stage`: `kdbench.models.split`), which
`RegionForward` uses for region logits (`kdbench.models.regions`).

May import: errors, core.
"""

from __future__ import annotations

import torch

from kdbench.models.checkpoints import (extract_state_dict, fetch_torchvision_weights, load_state_dict_file,
                                        load_teacher, sha256_file)
from kdbench.models.counting import count_macs, count_parameters
from kdbench.models.regions import RegionForward, region_logits
from kdbench.models.split import classifier, features, last_stage, splittable
from kdbench.models.zoo import available, build, canonical, register, zoo_of

# Importing a family file registers its models.
from kdbench.models import cifar_resnet, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2, resnetv2  # noqa: E402,F401  isort: skip
from kdbench.models import imagenet  # noqa: E402,F401  isort: skip


def summary_rows(num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                 zoo: str | None = "cifar") -> list[dict]:
    """`{name, params, macs}` for every model of `zoo` (all zoos when None), for `kdbench list models`.

    Models are built on the meta device: no memory, no RNG, no weights computed.
    """
    rows = []
    for name in available(zoo):
        with torch.device("meta"):
            model = build(name, num_classes=num_classes, in_channels=in_channels)
        rows.append({
            "name": name,
            "params": count_parameters(model),
            "macs": count_macs(model, in_channels, image_size),
        })
    return rows


__all__ = [
    "RegionForward", "available", "build", "canonical", "classifier", "count_macs", "count_parameters",
    "extract_state_dict", "features", "fetch_torchvision_weights", "last_stage", "load_state_dict_file", "load_teacher",
    "region_logits", "register", "sha256_file", "splittable", "summary_rows", "zoo_of",
]
