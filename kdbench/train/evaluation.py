"""Test-set evaluation: loss (the NLL), top-1, top-5, the calibration error, top-1 split by
whether the teacher is right, and the student's top-1 agreement with the teacher.

Everything accumulates on the device and is read once per evaluation (`counts.tolist()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.train.precision import autocast

#: Equal-width confidence bins of the expected calibration error (torchmetrics' default).
ECE_BINS = 15


@dataclass(frozen=True)
class TeacherPredictions:
    """The teacher's top-1 class (long) and whether it is right (bool), per test-sample index, on the device."""

    predicted: Tensor
    correct: Tensor


@torch.no_grad()
def teacher_predictions(teacher: nn.Module, loader: Any, device: torch.device, precision: str,
                        num_samples: int) -> TeacherPredictions:
    """One pass of the teacher over `loader`: its top-1 class per sample index, and whether it is right."""
    predicted = torch.full((num_samples,), -1, dtype=torch.long, device=device)
    correct = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = teacher(images)
        top = logits.float().argmax(dim=1)
        predicted[indices] = top
        correct[indices] = top == targets
    return TeacherPredictions(predicted, correct)


def calibration_counts(logits: Tensor, targets: Tensor) -> Tensor:
    """Per confidence bin: samples, summed confidence, top-1 hits; float64, shape (3, ECE_BINS + 1), on the device.

    As torchmetrics' `MulticlassCalibrationError(n_bins=15)`: the confidence is the largest
    softmax probability (float32), its class the prediction; bin b holds the confidences in
    [edge_b, edge_b+1) with edges `linspace(0, 1, 16)` in float32, and a confidence of
    exactly 1.0 falls in a 16th bin of its own. Sums by comparison, not scatter, so the
    result is deterministic on every device.
    """
    confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
    edges = torch.linspace(0, 1, ECE_BINS + 1, device=logits.device, dtype=torch.float32)
    bins = torch.bucketize(confidence, edges, right=True) - 1
    member = (bins[:, None] == torch.arange(ECE_BINS + 1, device=logits.device)).double()
    values = torch.stack([torch.ones_like(confidence, dtype=torch.float64), confidence.double(),
                          (predicted == targets).double()])
    return values @ member


def expected_calibration_error(counts: Tensor) -> float | None:
    """The ECE in percent from summed `calibration_counts`: Σ_b |hits_b − confidence_b| / n, i.e.
    Σ_b (n_b / n)·|accuracy_b − mean confidence_b| (torchmetrics' `norm="l1"`); None without samples."""
    n, confidence, hits = counts.tolist()
    total = sum(n)
    return 100.0 * sum(abs(h - c) for h, c in zip(hits, confidence)) / total if total else None


def _percent(hits: int, n: int) -> float | None:
    return 100.0 * hits / n if n else None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, precision: str,
             teacher: TeacherPredictions | None = None) -> dict[str, float | None]:
    """Test loss, top-1, top-5 and ECE (percent) of `model` over `loader`, read once at the end.

    The loss is the mean cross-entropy, the negative log-likelihood of the targets (nats).
    With `teacher` (its predictions per sample index), also the top-1 on the samples the
    teacher gets wrong and on those it gets right, and the top-1 agreement of `model` with
    the teacher (the share of samples where both predict the same class), on all samples
    and on those the teacher gets wrong.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    calibration = torch.zeros(3, ECE_BINS + 1, device=device, dtype=torch.float64)
    # top-1 hits, top-5 hits, samples; hits and samples where the teacher is wrong, then right;
    # agreements with the teacher, then those where the teacher is wrong
    counts = torch.zeros(9, device=device, dtype=torch.long)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        calibration += calibration_counts(logits, targets)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = top[:, 0] == targets
        counts[0] += hit1.sum()
        counts[1] += (top == targets[:, None]).any(dim=1).sum()
        counts[2] += targets.numel()
        if teacher is not None:
            right = teacher.correct[indices]
            agree = top[:, 0] == teacher.predicted[indices]
            counts[3:] += torch.stack([(hit1 & ~right).sum(), (~right).sum(), (hit1 & right).sum(), right.sum(),
                                       agree.sum(), (agree & ~right).sum()])
    model.train(was_training)
    top1, top5, n, wrong_hits, wrong_n, right_hits, right_n, agree, agree_wrong = counts.tolist()
    result = {"loss": loss_sum.item() / max(n, 1), "top1": 100.0 * top1 / max(n, 1),
              "top5": 100.0 * top5 / max(n, 1), "ece": expected_calibration_error(calibration)}
    if teacher is not None:
        result["top1_teacher_wrong"] = _percent(wrong_hits, wrong_n)
        result["top1_teacher_right"] = _percent(right_hits, right_n)
        result["agreement"] = _percent(agree, n)
        result["agreement_teacher_wrong"] = _percent(agree_wrong, wrong_n)
    return result
