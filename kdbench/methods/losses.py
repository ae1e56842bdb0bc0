"""Pieces that several distillation losses share.

Every function takes logits of shape (batch, classes). `reduction="batchmean"` sums over
classes and averages over the batch, as the reference code does; `reduction="none"`
returns one value per sample, which the identity tests use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")


def safe_std(logits: Tensor) -> Tensor:
    """Unbiased per-row std, as `Tensor.std`, but 0 with a zero gradient on constant rows.

    `Tensor.std` has a NaN gradient where the std is 0. Constant rows are swapped for a
    non-constant stand-in before the std is taken, then their result is set to 0.
    """
    with torch.no_grad():
        constant = (logits == logits[..., :1]).all(dim=-1, keepdim=True)
        stand_in = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    std = torch.where(constant, stand_in, logits).std(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(std), std)


def standardize(logits: Tensor) -> Tensor:
    """The logit-standardisation pre-process (Sun et al., CVPR 2024) as its code computes it.

    (z - mean) / (1e-7 + unbiased std), per sample. Constant rows map to zeros.
    """
    return (logits - logits.mean(dim=-1, keepdim=True)) / (1e-7 + safe_std(logits))


def kl_div(log_q: Tensor, p: Tensor) -> Tensor:
    """Per-sample KL(p || q) from target probabilities `p` and log-probabilities `log_q`.

    Terms with p = 0 count as 0, as in `F.kl_div`.
    """
    return F.kl_div(log_q, p, reduction="none").sum(dim=1)


def kd_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor, reduction: str = "batchmean"
) -> Tensor:
    """Hinton's soft-target term: T² · KL(softmax(t/T) || softmax(s/T)), batch-averaged."""
    per_sample = kl_div(
        F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1)
    )
    return _reduce(per_sample, reduction) * temperature**2


def one_hot_mask(logits: Tensor, index: Tensor) -> Tensor:
    """Boolean mask with True at `index[i]` in row i."""
    return F.one_hot(index, logits.shape[1]).bool()


def binary_log_probs(probs: Tensor, log_probs: Tensor, mask: Tensor) -> Tensor:
    """log [p(masked class), p(every other class)] per row.

    Takes the log of summed probabilities, as the reference code does, except where a sum
    underflows to 0: there it is computed in log space, finite where the reference gives
    -inf (and an infinite loss).
    """
    summed = binary_probs(probs, mask)
    underflow = summed <= 0
    direct = torch.where(underflow, torch.ones_like(summed), summed).log()
    log_in = log_probs.masked_fill(~mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    log_out = log_probs.masked_fill(mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.where(underflow, torch.cat([log_in, log_out], dim=1), direct)


def binary_probs(probs: Tensor, mask: Tensor) -> Tensor:
    """[p(masked class), p(every other class)] per row, from probabilities."""
    inside = (probs * mask).sum(dim=1, keepdim=True)
    outside = (probs * ~mask).sum(dim=1, keepdim=True)
    return torch.cat([inside, outside], dim=1)


def binary_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    temperature: float,
    reduction: str = "batchmean",
) -> Tensor:
    """T² · KL(b_teacher || b_student) between two-bin distributions at temperature T.

    b = [p(class picked by the mask), p(all others)]. DKD's TCKD picks the true class on
    both sides; RLD's SCD picks the teacher's top-1 for the teacher.
    """
    scaled = student_logits / temperature
    log_b_student = binary_log_probs(F.softmax(scaled, dim=1), F.log_softmax(scaled, dim=1), student_mask)
    b_teacher = binary_probs(F.softmax(teacher_logits / temperature, dim=1), teacher_mask)
    return _reduce(kl_div(log_b_student, b_teacher), reduction) * temperature**2


def warmup_factor(epoch: int, warmup: int) -> float:
    """min(epoch / warmup, 1) for a 1-based epoch; 1 when there is no warm-up."""
    if warmup <= 0:
        return 1.0
    return min(epoch / warmup, 1.0)


def non_target_kl(
    student_logits: Tensor, teacher_logits: Tensor, target_mask: Tensor, temperature: float,
    reduction: str = "batchmean",
) -> Tensor:
    """DKD's NCKD: T² · KL over the non-target classes only.

    As in the reference code, the target class is pushed out of the softmax by
    subtracting 1000 from its logit *after* dividing by T.
    """
    offset = 1000.0 * target_mask.to(student_logits.dtype)
    log_q = F.log_softmax(student_logits / temperature - offset, dim=1)
    p = F.softmax(teacher_logits / temperature - offset, dim=1)
    return _reduce(kl_div(log_q, p), reduction) * temperature**2


def masked_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
    reduction: str = "batchmean",
) -> Tensor:
    """RLD's MCD: T² · KL over the classes outside `mask`, both sides masked alike.

    Masked logits are set to -1e9 after dividing by T. When every class is masked both
    softmaxes are uniform and the term is exactly 0.
    """
    log_q = F.log_softmax((student_logits / temperature).masked_fill(mask, -1e9), dim=1)
    p = F.softmax((teacher_logits / temperature).masked_fill(mask, -1e9), dim=1)
    return _reduce(kl_div(log_q, p), reduction) * temperature**2


def soft_cross_entropy(log_q: Tensor, p: Tensor) -> Tensor:
    """Per-sample cross-entropy −Σ p·log q. Unlike `kl_div` it includes the entropy of `p`."""
    return -(p * log_q).sum(dim=1)


def drop_column(logits: Tensor, index: Tensor) -> Tensor:
    """Each row without column `index[i]`, the other columns in their order: shape (B, C−1).

    Equal to `logits[mask].reshape(B, -1)` with the column masked out, but a gather, so it
    needs no row count on the host.
    """
    batch, classes = logits.shape
    columns = torch.arange(classes - 1, device=logits.device).expand(batch, -1)
    columns = columns + (columns >= index.unsqueeze(1)).long()
    return logits.gather(1, columns)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation with DIST's eps: ⟨ā, b̄⟩ / (‖ā‖·‖b̄‖ + eps), x̄ = x − mean(x).

    eps is added to the product of the norms, as DIST's code does; a clamped cosine
    (`F.cosine_similarity`) differs where the norms are small.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """DIST's inter- and intra-class terms, each times τ²: 1 − mean ρ over the rows, and over
    the columns (the classes across the batch), of softmax(z/τ)."""
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    inter = 1 - pearson_correlation(p_student, p_teacher).mean()
    intra = 1 - pearson_correlation(p_student.t(), p_teacher.t()).mean()
    return inter * temperature**2, intra * temperature**2


def power_transform(teacher_logits: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """TTM's transformed teacher softmax(t)^γ / Σ softmax(t)^γ, and the sum Σ softmax(t)^γ.

    Computed as the official code does, by raising probabilities to γ; mathematically the
    distribution is softmax(γ·t).
    """
    powered = F.softmax(teacher_logits, dim=1).pow(gamma)
    total = powered.sum(dim=1)
    return powered / total.unsqueeze(1), total


def class_correlation(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's class-level term: ‖PᵗᵀPᵗ − PˢᵀPˢ‖²_F / C, with P = softmax(z/T) (B×C)."""
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    with torch.autocast(p_student.device.type, enabled=False):  # the products stay in the logits' precision
        gap = p_teacher.t() @ p_teacher - p_student.t() @ p_student
    return (gap**2).sum() / student_logits.shape[1]


def batch_correlation(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's batch-level term: ‖PᵗPᵗᵀ − PˢPˢᵀ‖²_F / B, with P = softmax(z/T) (B×C)."""
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    with torch.autocast(p_student.device.type, enabled=False):
        gap = p_teacher @ p_teacher.t() - p_student @ p_student.t()
    return (gap**2).sum() / student_logits.shape[0]


def at_most_median(values: Tensor) -> Tensor:
    """values ≤ their median, the median as `np.percentile(values, 50)` computes it.

    Both interpolate linearly between the two middle values; `torch.quantile` does so on
    the device, with no host sync.
    """
    return values <= torch.quantile(values, 0.5)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity forward; the backward multiplies the gradient by `scale`.

    CTKD's gradient-reversal layer: its λ is negative, so the parameter ascends the loss.
    """
    return _ScaleGradient.apply(x, scale)


def cosine_schedule(epoch: int, start: float, end: float, epochs: int) -> float:
    """(cos(π·e/n) + 1)/2·(start − end) + end, with e = epoch clamped to [0, n].

    CTKD's `CosineDecay(max_value=start, min_value=end, num_loops=n)`: `start` at e = 0,
    `end` from e = n on. With n ≤ 0 it is `end` at once.
    """
    if epochs <= 0:
        return end
    e = min(max(epoch, 0), epochs)
    return (math.cos(e * math.pi / epochs) + 1.0) * 0.5 * (start - end) + end
