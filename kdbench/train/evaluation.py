"""Test-set evaluation: loss, top-1, top-5, and top-1 split by whether the teacher is right."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.train.precision import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, precision: str,
             teacher_correct: Tensor | None = None) -> dict[str, float]:
    """Test loss, top-1 and top-5 (percent) of `model` over `loader`, read once at the end.

    With `teacher_correct` (a bool per sample index), also the top-1 on the samples the
    teacher gets wrong and on those it gets right.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    # top-1 hits, top-5 hits, samples; hits and samples where the teacher is wrong, then right
    counts = torch.zeros(7, device=device, dtype=torch.long)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = top[:, 0] == targets
        counts[0] += hit1.sum()
        counts[1] += (top == targets[:, None]).any(dim=1).sum()
        counts[2] += targets.numel()
        if teacher_correct is not None:
            right = teacher_correct[indices]
            counts[3:] += torch.stack([(hit1 & ~right).sum(), (~right).sum(), (hit1 & right).sum(), right.sum()])
    model.train(was_training)
    top1, top5, n, wrong_hits, wrong_n, right_hits, right_n = counts.tolist()
    n = max(n, 1)
    result = {"loss": loss_sum.item() / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}
    if teacher_correct is not None:
        result["top1_teacher_wrong"] = 100.0 * wrong_hits / wrong_n if wrong_n else None
        result["top1_teacher_right"] = 100.0 * right_hits / right_n if right_n else None
    return result


@torch.no_grad()
def teacher_correctness(teacher: nn.Module, loader: Any, device: torch.device, precision: str,
                        num_samples: int) -> Tensor:
    """A bool per test-sample index: does the teacher classify it correctly?"""
    correct = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = teacher(images)
        correct[indices] = logits.float().argmax(dim=1) == targets
    return correct
