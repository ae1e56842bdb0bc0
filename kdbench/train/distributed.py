"""DDP under torchrun: process-group set-up and the few collectives the harness needs.

Without torchrun (WORLD_SIZE unset or 1) every function is a cheap no-op, so the rest of
kdbench calls them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when the environment asks for more than one process (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without DDP)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without DDP)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0: the only process that claims runs and writes records."""
    return rank() == 0


def init(device: str) -> str:
    """Join torchrun's process group; return this process's device (cuda:LOCAL_RANK or cpu)."""
    if not launched_by_torchrun() or active():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu"


def shutdown() -> None:
    """Leave the process group."""
    if active():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) `tensor` over all processes, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when DDP is active, else unchanged."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """This process's contiguous share of a global batch (every process draws the same batches)."""
    if not active():
        return batch
    return tuple(t.tensor_split(world_size())[rank()] for t in batch)


def share_sizes(rows: int) -> tuple[int, ...]:
    """The rows of every process's share of a global batch of `rows`, in rank order, as
    `shard` cuts it (`tensor_split`: the first `rows % world_size()` shares hold one more)."""
    whole, extra = divmod(rows, world_size())
    return tuple(whole + 1 if r < extra else whole for r in range(world_size()))


def gather(tensor: torch.Tensor, shares: tuple[int, ...]) -> torch.Tensor:
    """The global batch: every process's share of it (`shares[r]` rows on rank r), concatenated
    in rank order. Differentiable: the gradient each process gets for its own rows is the sum,
    over all processes, of the gradients of those rows (the adjoint of the gather)."""
    if not active():
        return tensor
    if len(shares) != world_size() or tensor.shape[0] != shares[rank()]:
        raise ValueError(f"rank {rank()} holds {tensor.shape[0]} rows; the shares are {shares}")
    return _Gather.apply(tensor, shares)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, shares: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        ctx.shares = shares
        # all_gather needs equal sizes: shares differ by one row when the batch does not divide.
        longest = max(shares)
        padded = tensor.contiguous()
        if padded.shape[0] < longest:
            padded = torch.cat([padded, padded.new_zeros((longest - padded.shape[0], *padded.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in shares]
        dist.all_gather(parts, padded)
        return torch.cat([part[:rows] for part, rows in zip(parts, shares)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        start = sum(ctx.shares[:rank()])
        return total[start:start + ctx.shares[rank()]], None


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of `params` over all processes, in place, as DDP does for the
    parameters of the module it wraps (a method's own parameters live outside it)."""
    if not active():
        return
    world = world_size()
    for param in params:
        if param.grad is not None:  # None on every process alike: the same code ran on each
            param.grad.div_(world)
            dist.all_reduce(param.grad)
