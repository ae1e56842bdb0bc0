"""Students of one architecture stacked into one model: K members, one forward.

Every parameter and buffer of the K members is stacked along a new leading axis
(`[K, ...]`, member k at index k), and one call computes every member's logits,
`[K, N, classes]`, from one batch that all of them see. Each member's slice is exactly
its own model: its own weights, its own BatchNorm batch statistics and running
statistics; members never mix, so a gradient (or a NaN) of one member stays in its slice.

Two backends compute the stack (`BACKENDS`):

- `grouped`, in the style of HFTA (Wang et al., MLSys 2021, UofT-EcoSystem/hfta
  `hfta/ops/{conv,batchnorm,linear}.py`): activations are packed member-major along the
  channels, `[N, K·C, H, W]`; each convolution is one grouped convolution
  (`groups = K·g`; the first one, which reads the shared image, one dense convolution with
  K·C_out filters), each BatchNorm one `batch_norm` over K·C channels (its statistics are
  per channel, hence per member), each linear layer one batched matmul. The model's own
  forward code runs on the packed tensors, so it serves the architectures whose forward never
  mixes channels across the packing (`PACKABLE`): not ShuffleNets' channel shuffles, splits
  and concatenations.
- `vmap`: `torch.func.vmap` of `functional_call` over the stacked state (any architecture;
  PyTorch's batching rules turn its convolutions into the same grouped convolutions, and its
  training-mode BatchNorm updates the stacked running statistics in place).

`kdbench.tools.fusion_bench` times both per layer shape, against K separate convolutions.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("grouped", "vmap")

#: Model classes whose forward code keeps a member-major channel packing intact (only
#: per-channel, spatial and elementwise operations between the layers, and a global pool and
#: flatten before the classifier); `tests/test_fused.py` checks each against its members.
PACKABLE = frozenset({"CifarResNet", "WideResNet", "VGG", "MobileNetV2", "ResNetV2", "MobileNetV1", "ResNet"})


def _own_state(module: nn.Module) -> bool:
    return bool(module._parameters) or any(b is not None for b in module._buffers.values())


def fusable_model(model: nn.Module) -> str | None:
    """Why `model` can't be stacked at all (None: it can). Every module holding state must be a
    convolution, a BatchNorm tracking running statistics with a momentum, or a linear layer."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return f"{name}: dropout (its random masks would not be those of the member alone)"
        if not _own_state(module):
            continue
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return f"{name}: padding mode {module.padding_mode}"
        elif isinstance(module, nn.BatchNorm2d):
            if not (module.track_running_stats and module.affine) or module.momentum is None:
                return f"{name}: a BatchNorm without running statistics, affine weights or momentum"
        elif not isinstance(module, nn.Linear):
            return f"{name}: a {type(module).__name__} holds state"
    return None


def default_backend(model: nn.Module) -> str:
    """`grouped` for the architectures it serves (`PACKABLE`), else `vmap`."""
    return "grouped" if type(model).__name__ in PACKABLE else "vmap"


class StackedModel:
    """K same-architecture models as stacked leaf tensors, and their joint forward.

    `params` and `buffers` map each of the models' state names to a `[K, ...]` tensor (the
    parameters are leaves that require grad, for one optimizer over all members). Calling the
    stack returns `[K, N, classes]`: member k's logits at index k.
    """

    def __init__(self, models: list[nn.Module], backend: str | None = None):
        problem = fusable_model(models[0])
        if problem:
            raise ValueError(f"can't stack {type(models[0]).__name__}: {problem}")
        self.size = len(models)
        self.backend = backend or default_backend(models[0])
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        with torch.no_grad():
            named = [dict(m.named_parameters()) for m in models]
            self.params = {n: torch.stack([p[n].detach() for p in named]).requires_grad_(True) for n in named[0]}
            named_buffers = [dict(m.named_buffers()) for m in models]
            self.buffers = {n: torch.stack([b[n] for b in named_buffers]) for n in named_buffers[0]}
        self._forward: Callable[[Tensor], Tensor] = (
            _packed(models[0], self.params, self.buffers, self.size) if self.backend == "grouped"
            else _vmapped(models[0], self.params, self.buffers))

    def __call__(self, images: Tensor) -> Tensor:
        return self._forward(images)

    def parameters(self) -> list[Tensor]:
        """The stacked parameters, in the models' parameter order."""
        return list(self.params.values())

    def write_to(self, k: int, model: nn.Module) -> None:
        """Copy member k's slice into `model` (its parameters and buffers keep their layout)."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.params[name][k])
            for name, b in model.named_buffers():
                b.copy_(self.buffers[name][k])


# ----------------------------------------------------------------------------- grouped (HFTA)


class _Conv(nn.Module):
    """A convolution for K members: input `[N, K·C_in, H, W]` (or the shared `[N, C_in, H, W]`)."""

    def __init__(self, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, size: int):
        super().__init__()
        self.conv, self.weight, self.bias, self.size = conv, weight, bias, size

    def forward(self, x: Tensor) -> Tensor:
        c, k = self.conv, self.size
        weight = self.weight.flatten(0, 1)  # [K·C_out, C_in/g, kh, kw], member-major like the activations
        bias = None if self.bias is None else self.bias.flatten()
        groups = c.groups * k
        if x.shape[1] == c.in_channels and k > 1:  # the shared image: every member reads the same input
            if c.groups == 1:
                groups = 1
            else:
                x = x.repeat(1, k, 1, 1)
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, groups)


class _BatchNorm(nn.Module):
    """BatchNorm over K·C channels: per-channel statistics are per member."""

    def __init__(self, bn: nn.BatchNorm2d, params: dict[str, Tensor], buffers: dict[str, Tensor], prefix: str):
        super().__init__()
        self.eps, self.momentum, self.training = bn.eps, bn.momentum, bn.training
        self.weight, self.bias = params[prefix + "weight"], params[prefix + "bias"]
        self.running_mean, self.running_var = buffers[prefix + "running_mean"], buffers[prefix + "running_var"]
        self.num_batches_tracked = buffers.get(prefix + "num_batches_tracked")

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        # Views of the stacked buffers: batch_norm updates them in place, member k in its own rows.
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                            self.bias.view(-1), self.training, self.momentum, self.eps)


class _Linear(nn.Module):
    """A linear layer for K members: `[N, K·in]` (or the shared `[N, in]`) to `[N, K·out]`."""

    def __init__(self, weight: Tensor, bias: Tensor | None, size: int):
        super().__init__()
        self.weight, self.bias, self.size = weight, bias, size

    def forward(self, x: Tensor) -> Tensor:
        n, k = x.shape[0], self.size
        inputs = x.unsqueeze(0).expand(k, -1, -1) if x.shape[1] == self.weight.shape[2] and k > 1 \
            else x.reshape(n, k, -1).transpose(0, 1)
        out = torch.bmm(inputs, self.weight.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        return out.transpose(0, 1).reshape(n, -1)


def _packed(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
            size: int) -> Callable[[Tensor], Tensor]:
    shell = copy.deepcopy(model)

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}{name}."
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, _Conv(child, params[full + "weight"], params.get(full + "bias"), size))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, _BatchNorm(child, params, buffers, full))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, _Linear(params[full + "weight"], params.get(full + "bias"), size))
            else:
                swap(child, full)

    swap(shell, "")

    def forward(images: Tensor) -> Tensor:
        out = shell(images)
        return out.reshape(out.shape[0], size, -1).transpose(0, 1)

    return forward


# ----------------------------------------------------------------------------- vmap


def _vmapped(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    from torch.func import functional_call, vmap

    base = copy.deepcopy(model).to("meta")

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, b), (x,))

    batched = vmap(one, in_dims=(0, 0, None))
    return lambda images: batched(params, buffers, images)
