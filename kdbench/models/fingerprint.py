"""Architecture fingerprints used to check the zoo against the reference without its code.

`key_digest` hashes the ordered `key:shape` lines of a state dict. `golden_logits` fills
every tensor of a model's state dict from its key name and shape alone (integer hashing,
no RNG, so the values are the same on every platform and torch version), sets the BN
running statistics to those of `golden_input` (so that activations neither explode nor
vanish with depth), and returns the eval logits on that input: numbers that can be
compared with the reference model's, treated the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn


def key_lines(state: Mapping[str, Tensor]) -> list[str]:
    """`key:d0xd1x...` for every entry, in order (a scalar's shape is empty)."""
    return [f"{k}:{'x'.join(str(d) for d in v.shape)}" for k, v in state.items()]


def key_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of the newline-joined `key_lines`."""
    return hashlib.sha256("\n".join(key_lines(state)).encode()).hexdigest()


_MASK = (1 << 31) - 1  # values stay below 2**31 and multipliers too, so int64 products are exact


def hashed_uniform(label: str, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Values in [0, 1) of `shape` (float64) that depend only on `label` and the position.

    Exact integer arithmetic (multiply, mask to 31 bits, xor-shift), so every platform and
    torch version gives the same bits.
    """
    h = hashlib.sha256(label.encode()).digest()
    seed, m1, m2 = (int.from_bytes(h[4 * i: 4 * i + 4], "little") & _MASK for i in range(3))
    v = (torch.arange(math.prod(shape), dtype=torch.int64) + seed) & _MASK
    for multiplier in (m1 | 1, m2 | 1, 0x2C1B3C6D):
        v ^= v >> 15
        v = (v * multiplier) & _MASK
    v ^= v >> 13
    return (v.to(torch.float64) / (1 << 31)).reshape(tuple(shape))


def deterministic_value(key: str, like: Tensor) -> Tensor:
    """A tensor like `like`, filled from `key`: He-scaled weights, positive running_var."""
    u = hashed_uniform(key, like.shape)
    if not like.is_floating_point():
        return (u * 100).to(like.dtype)
    centred = (u - 0.5) * math.sqrt(12.0)  # mean 0, variance 1
    if key.endswith("running_var"):
        value = 0.5 + u
    elif key.endswith("running_mean") or key.endswith("bias"):
        value = 0.1 * centred
    elif like.dim() >= 2:
        fan_in = like[0].numel()
        value = centred * math.sqrt(2.0 / fan_in)
    else:  # BN weight
        value = 0.75 + 0.5 * u
    return value.to(like.dtype)


def deterministic_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with the same keys and shapes as `state`, filled by `deterministic_value`."""
    return {k: deterministic_value(k, v) for k, v in state.items()}


def golden_input(batch: int = 2, in_channels: int = 3, size: int = 32) -> Tensor:
    """A fixed float32 input batch with zero mean and unit variance."""
    u = hashed_uniform("kdbench-golden-input", (batch, in_channels, size, size))
    return ((u - 0.5) * math.sqrt(12.0)).float()


def calibrate_batchnorm(model: nn.Module, x: Tensor) -> None:
    """Set every BN layer's running statistics to the batch statistics of `x` (one train-mode pass)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly its statistics
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def golden_logits(model: nn.Module, batch: int = 2, in_channels: int = 3, size: int = 32) -> Tensor:
    """Eval logits (float64) of `model` filled by `deterministic_state`, BN calibrated on `golden_input`.

    Works on the reference models too (their forward returns `(logits, features)`).
    """
    model.load_state_dict(deterministic_state(model.state_dict()))
    x = golden_input(batch, in_channels, size)
    calibrate_batchnorm(model, x)
    model.eval()
    with torch.no_grad():
        out = model(x)
    return (out[0] if isinstance(out, tuple) else out).double()
