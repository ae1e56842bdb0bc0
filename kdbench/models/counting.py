"""Parameter and multiply-accumulate (MAC) counts."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (trainable or not; shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_channels: int = 3, image_size: int = 32) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one `in_channels`x`image_size`² image.

    Conv: output elements x (in_channels / groups) x kh x kw. Linear: in x out. BN, pooling
    and activations are not counted. The forward runs in eval mode (BN statistics are not
    touched) on the model's device, a meta-device model included.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += (output.numel() // output.shape[0]) * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += (output.numel() // output.shape[0]) * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total)
