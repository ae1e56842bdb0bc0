"""Metrics beyond top-1: agreement with the teacher, ECE, NLL; exact on hand-made logits, the ECE
against its definition and torchmetrics, no host sync per batch, and the run record's fields."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.train.cohort import CohortSpec, train_cohort
from kdbench.train.evaluation import (
    ECE_BINS, TeacherPredictions, calibration_counts, evaluate, expected_calibration_error, teacher_predictions,
)

from test_train import SPEC, cohort, member, splits  # noqa: F401 (splits is a fixture)

REPO = Path(__file__).resolve().parents[1]
LN3, LN9 = math.log(3.0), math.log(9.0)


def reference_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """The ECE (a fraction) from its definition (Guo et al. 2017) with torchmetrics' binning: edges
    linspace(0, 1, n_bins + 1) in float32, bin k = [edge_k, edge_k+1), a confidence of exactly 1.0 in a
    bin of its own; Σ_k (n_k / n)·|accuracy_k − mean confidence_k| over the non-empty bins."""
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    bins = np.searchsorted(edges, confidence, side="right") - 1
    ece = 0.0
    for k in np.unique(bins):
        inside = bins == k
        ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].astype(np.float64).mean())
    return ece


# ---------------------------------------------------------------------------- the functions on hand-made logits


def test_calibration_counts_and_ece_on_hand_made_logits():
    # Confidences 0.9 (bin 13: [13/15, 14/15)) twice, one right and one wrong; 0.75 (bin 11) twice, both right;
    # and one confidence of exactly 1.0 (float32), right: a 16th bin of its own.
    logits = torch.tensor([[LN9, 0.0], [LN9, 0.0], [0.0, LN3], [LN3, 0.0], [200.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 0, 0])
    counts = calibration_counts(logits, targets)
    assert counts.shape == (3, ECE_BINS + 1) and counts.dtype == torch.float64
    expected = torch.zeros(3, ECE_BINS + 1, dtype=torch.float64)
    expected[:, 13] = torch.tensor([2, 1.8, 1])
    expected[:, 11] = torch.tensor([2, 1.5, 2])
    expected[:, 15] = torch.tensor([1, 1.0, 1])
    assert torch.allclose(counts, expected, rtol=0, atol=1e-6)
    # |1 − 1.8| + |2 − 1.5| + |1 − 1| over 5 samples, in percent.
    assert expected_calibration_error(counts) == pytest.approx(100 * 1.3 / 5, abs=1e-4)
    assert expected_calibration_error(torch.zeros(3, ECE_BINS + 1)) is None


class _Batches:
    """An eval loader over precomputed logits (the model is the identity), in shuffled index order."""

    def __init__(self, logits, targets, order, batch_size):
        self.batches = [(logits[order[i:i + batch_size]], targets[order[i:i + batch_size]], order[i:i + batch_size])
                        for i in range(0, len(order), batch_size)]
        self.num_samples = len(order)

    def __iter__(self):
        return iter(self.batches)


def _one_hot_logits(predicted, classes=3, margin=3.0):
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float() * margin


def test_evaluate_on_hand_made_logits():
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    teacher = [0, 1, 0, 0, 2, 1]   # right on 0, 1, 3; wrong on 2, 4, 5
    student = [0, 1, 0, 1, 1, 2]   # right on 0, 1, 4, 5; agrees with the teacher on 0, 1, 2
    order = torch.tensor([4, 1, 5, 0, 3, 2])  # batches see the indices shuffled
    loader = _Batches(_one_hot_logits(student), targets, order, batch_size=4)
    predictions = teacher_predictions(nn.Identity(), _Batches(_one_hot_logits(teacher), targets, order, 4),
                                      torch.device("cpu"), "fp32", num_samples=6)
    assert predictions.predicted.tolist() == teacher
    assert predictions.correct.tolist() == [True, True, False, True, False, False]
    out = evaluate(nn.Identity(), loader, torch.device("cpu"), "fp32", predictions)
    confidence = math.exp(3) / (math.exp(3) + 2)
    assert out["top1"] == pytest.approx(100 * 4 / 6)
    assert out["top1_teacher_wrong"] == pytest.approx(100 * 2 / 3)   # 4 and 5 of 2, 4, 5
    assert out["top1_teacher_right"] == pytest.approx(100 * 2 / 3)   # 0 and 1 of 0, 1, 3
    assert out["agreement"] == pytest.approx(100 * 3 / 6)
    assert out["agreement_teacher_wrong"] == pytest.approx(100 * 1 / 3)  # 2: the teacher's mistake, copied
    # One bin (13) holds every sample: |accuracy − confidence|.
    assert out["ece"] == pytest.approx(100 * abs(4 / 6 - confidence), abs=1e-4)
    # The loss is the NLL: −log p(target), p = confidence where right, 1/(e³ + 2) where wrong.
    nll = (4 * -math.log(confidence) + 2 * math.log(math.exp(3) + 2)) / 6
    assert out["loss"] == pytest.approx(nll, rel=1e-6)
    alone = evaluate(nn.Identity(), loader, torch.device("cpu"), "fp32")
    assert set(alone) == {"loss", "top1", "top5", "ece"} and alone["ece"] == out["ece"]


def test_agreement_where_the_teacher_is_never_wrong_is_missing_not_zero():
    targets = torch.tensor([0, 1])
    logits = _one_hot_logits([0, 1], classes=2)
    loader = _Batches(logits, targets, torch.tensor([0, 1]), 2)
    perfect = TeacherPredictions(predicted=targets.clone(), correct=torch.tensor([True, True]))
    out = evaluate(nn.Identity(), loader, torch.device("cpu"), "fp32", perfect)
    assert out["agreement"] == 100.0 and out["agreement_teacher_wrong"] is None and out["top1_teacher_wrong"] is None


# ---------------------------------------------------------------------------- the ECE against its definition


def _random_batches(seed=0, batches=6, rows=500, classes=10):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        scale = [0.3, 1.0, 3.0, 10.0, 40.0, 200.0][b % 6]  # from near-uniform to confidences of exactly 1.0
        logits = torch.randn(rows, classes, generator=g) * scale
        targets = torch.where(torch.rand(rows, generator=g) < 0.6, logits.argmax(1),
                              torch.randint(0, classes, (rows,), generator=g))
        out.append((logits, targets))
    return out


@pytest.mark.parametrize("seed, classes", [(0, 10), (1, 100), (2, 3)])
def test_ece_equals_its_definition_on_random_logits(seed, classes):
    batches = _random_batches(seed, classes=classes)
    counts = sum(calibration_counts(logits, targets) for logits, targets in batches)
    probs = torch.cat([logits.softmax(1) for logits, _ in batches])
    confidence, predicted = probs.max(1)
    correct = (predicted == torch.cat([t for _, t in batches])).numpy().astype(np.float64)
    assert (confidence == 1.0).any() and (confidence < 0.5).any()
    expected = reference_ece(confidence.numpy(), correct)
    assert expected_calibration_error(counts) == pytest.approx(100 * expected, abs=1e-9)


@pytest.mark.slow  # importing torchmetrics takes seconds; the test above checks the definition in the fast tier
@pytest.mark.parametrize("seed, classes", [(0, 10), (1, 100), (2, 3)])
def test_ece_equals_torchmetrics(seed, classes):
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = torchmetrics.classification.MulticlassCalibrationError(num_classes=classes, n_bins=15, norm="l1")
    batches = _random_batches(seed, classes=classes)
    for logits, targets in batches:
        metric.update(logits.softmax(1), targets)  # probabilities: torchmetrics softmaxes only what is outside [0, 1]
    ours = expected_calibration_error(sum(calibration_counts(logits, targets) for logits, targets in batches))
    assert ours == pytest.approx(100 * metric.compute().item(), abs=1e-4)  # torchmetrics sums in float32


# ---------------------------------------------------------------------------- no host sync per batch


_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_evaluation_reads_the_device_a_fixed_number_of_times_whatever_the_batches(monkeypatch):
    targets = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))
    teacher = TeacherPredictions(predicted=torch.randint(0, 10, (64,)), correct=torch.rand(64) < 0.7)
    reads = _count_reads(monkeypatch)
    per_batches = {}
    for batch_size in (64, 8, 1):
        reads.clear()
        evaluate(nn.Identity(), _Batches(logits, targets, torch.arange(64), batch_size), torch.device("cpu"), "fp32",
                 teacher)
        per_batches[batch_size] = list(reads)
    monkeypatch.undo()
    assert per_batches[1] == per_batches[8] == per_batches[64] and len(per_batches[64]) <= 3


def test_the_per_batch_calibration_never_syncs(monkeypatch):
    logits, targets = torch.randn(32, 10), torch.randint(0, 10, (32,))

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the per-batch accumulation")

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    counts = calibration_counts(logits, targets)
    monkeypatch.undo()
    assert counts[0].sum().item() == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
def test_the_per_batch_accumulation_never_syncs_on_cuda():
    device = torch.device("cuda")
    logits = torch.randn(256, 100, device=device)
    targets = torch.randint(0, 100, (256,), device=device)
    teacher = TeacherPredictions(predicted=torch.randint(0, 100, (256,), device=device),
                                 correct=torch.rand(256, device=device) < 0.7)
    indices = torch.randperm(256, device=device)
    loader = _Batches(logits, targets, indices, 64)
    reads = []

    class Watch(nn.Identity):
        def forward(self, x):  # each batch's forward runs under the sync detector, up to the next batch
            torch.cuda.set_sync_debug_mode("error")
            reads.append(x.shape[0])
            return x

    torch.cuda.synchronize()
    try:
        with pytest.raises(RuntimeError, match="synchroniz") as caught:  # the first read: the one at the end
            evaluate(Watch(), loader, device, "fp32", teacher)
        assert len(reads) == 4
        (where,) = [entry for entry in caught.traceback if entry.path.name == "evaluation.py"][-1:]
        assert "counts.tolist()" in str(where.statement)
        torch.cuda.set_sync_debug_mode("error")
        calibration_counts(logits, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------- the run record


def test_the_fields_in_metrics_and_summary_after_a_tiny_cohort(tmp_path, splits):  # noqa: F811
    (result,) = train_cohort(cohort([member("kd", tmp_path / "kd", epochs=1)]), "cpu", data=splits)
    rows = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for row in rows:
        assert 0 <= row["test_agreement"] <= 100 and 0 <= row["test_agreement_teacher_wrong"] <= 100
        assert 0 <= row["test_ece"] <= 100 and row["test_loss"] > 0
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    last = rows[-1]
    assert summary["test_agreement"] == last["test_agreement"]
    assert summary["test_agreement_teacher_wrong"] == last["test_agreement_teacher_wrong"]
    assert summary["test_ece"] == last["test_ece"] and summary["test_nll"] == last["test_loss"]
    assert result.summary.test_ece == last["test_ece"]


def test_a_run_without_a_teacher_records_null_agreement(splits):  # noqa: F811
    (result,) = train_cohort(CohortSpec(dataset=SPEC, seed=0, members=[member("vanilla", None, epochs=1)]), "cpu",
                             data=splits)
    row = result.history[-1]
    assert "test_agreement" not in row and row["test_ece"] is not None
    summary = result.summary.to_json()
    assert summary["test_agreement"] is None and summary["test_agreement_teacher_wrong"] is None
    assert summary["test_ece"] == row["test_ece"] and summary["test_nll"] == row["test_loss"]


def test_design_doc_lists_the_new_metrics_columns():
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("- `metrics.jsonl`"):design.index("- `summary.json`")]
    listed = set(re.findall(r"\b(test_[a-z_0-9]+|val_[a-z_0-9]+)\b", section))
    assert {"test_ece", "test_agreement", "test_agreement_teacher_wrong", "val_ece", "test_loss"} <= listed
