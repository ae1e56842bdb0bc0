from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register
from kdbench.models.regions import check_scales

COMPLEMENTARY = 2.0  # the official weight of a complementary region (hard-coded there; the paper's β)


def region_weights(teacher_regions: Tensor, targets: Tensor) -> Tensor:
    """(B, N) weights: 2 where the teacher's region argmax is right and its global one (region 0)
    wrong, or the reverse; 1 elsewhere (region 0 itself, both right, both wrong)."""
    right = teacher_regions.argmax(dim=1) == targets.unsqueeze(1)
    return 1.0 + (COMPLEMENTARY - 1.0) * (right != right[:, :1]).to(teacher_regions.dtype)


def rows(regions: Tensor) -> Tensor:
    """(B, C, N) region logits as (B·N, C) rows, sample-major."""
    return regions.permute(0, 2, 1).reshape(-1, regions.shape[1])


@register("sdd")
class SDD(nn.Module):
    """Scale Decoupled Distillation: CE + KD (or DKD, NKD) on multi-scale region logits, complementary regions ×2 (Wei et al., CVPR 2024).

    Official code: shicaiwei123/SDD-CVPR2024 mdistiller/distillers/KD.py `sdd_kd_loss` (SD-KD),
    SDD_DKD.py `multi_dkd` (SD-DKD), SDD_nkd.py `multi_nkd_loss` (SD-NKD), on the region logits
    of mdistiller/models/cifar/utils.py `SPP` (`kdbench.models.regions`): `base` picks the loss.
    Per region and sample, the base loss between student and teacher region logits; a region
    whose teacher argmax is right while the global one (region 0) is wrong, or the reverse,
    weighs 2; the weighted sum is divided by N·B. Quirks kept: SD-KD zeroes NaN entries of its
    KL; a non-finite SDD loss is replaced by 0; SD-NKD's "non-target" term keeps the target class
    (its mask is built with `scatter_(1, label, 1)` on ones), so it is −γ·T²·Σ p_t log p_s over
    every class, plus NKD's target term; with scales [1] (M = '[1]') the base loss runs on the
    model's logits. The warm-up min(epoch / warmup, 1) multiplies SD-DKD's and SD-NKD's term
    (train_origin.py's --warmup, default 20 epochs; the paper says 30), SD-KD has none (commented
    out). Defaults: engine/cfg.py (KD: T 4, CE 0.1, KD 0.9; DKD: CE 1, α 1, β 8, T 4; SD-NKD uses
    DKD's CE, T and β as γ); `ce_weight` None is the base's. M (`scales`) is a command-line
    argument: [1,2] for same-family pairs, [1,2,4] across families; where a two-bin probability
    of DKD underflows, its log is computed in log space (finite) as kdbench's `dkd` does.
    """

    paper = "Wei, Luo & Luo, CVPR 2024, arXiv:2403.13512"
    code = "https://github.com/shicaiwei123/SDD-CVPR2024/blob/e412036c6b7b67d8ed25418d2dedad223ab49a71/mdistiller/distillers/KD.py"
    defaults_from = "official CIFAR-100 config (SD-KD, resnet32x4→resnet8x4, M = {1,2}); M and β per pair in the grid"
    regions = True
    epoch_hparams = ("warmup",)
    reference_epochs = 240  # the CIFAR configs' SOLVER.EPOCHS

    def __init__(self, base: Literal["kd", "dkd", "nkd"] = "kd", scales: list[int] = [1, 2],  # noqa: B006 (never mutated)
                 temperature: float = 4.0, ce_weight: float | None = None, kd_weight: float = 0.9, alpha: float = 1.0,
                 beta: float = 8.0, warmup: int = 20):
        super().__init__()
        self.base, self.scales = base, check_scales(scales, "method sdd")
        self.temperature, self.kd_weight, self.alpha, self.beta, self.warmup = temperature, kd_weight, alpha, beta, warmup
        self.ce_weight = ce_weight if ce_weight is not None else (0.1 if base == "kd" else 1.0)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int,
                student_regions: Tensor, teacher_regions: Tensor) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        global_only = self.scales == (1,)
        if global_only:  # the official M = '[1]' runs the plain base loss on the model's logits
            student_regions, teacher_regions = student_logits.unsqueeze(2), teacher_logits.unsqueeze(2)
        batch, _, regions = teacher_regions.shape
        per_region = self._base_loss(rows(student_regions), rows(teacher_regions), targets.repeat_interleave(regions),
                                     nan_to_zero=not global_only).view(batch, regions)
        loss = (per_region * region_weights(teacher_regions, targets)).mean()
        if not global_only:
            loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
        if self.base == "kd":
            terms["kd"] = self.kd_weight * loss
        else:
            terms[self.base] = losses.warmup_factor(epoch, self.warmup) * loss
        return terms

    def _base_loss(self, s: Tensor, t: Tensor, y: Tensor, nan_to_zero: bool) -> Tensor:
        """The base loss per row of (rows, C) logits."""
        temp = self.temperature
        if self.base == "kd":
            kl = F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="none") * temp**2
            if nan_to_zero:
                kl = torch.where(torch.isnan(kl), torch.zeros_like(kl), kl)
            return kl.sum(dim=1)
        if self.base == "dkd":
            mask = losses.one_hot_mask(s, y)
            return (self.alpha * losses.binary_kl(s, t, mask, mask, temp, reduction="none")
                    + self.beta * losses.non_target_kl(s, t, mask, temp, reduction="none"))
        index = y.unsqueeze(1)
        target = -(F.softmax(t, dim=1).gather(1, index) * F.log_softmax(s, dim=1).gather(1, index)).squeeze(1)
        every_class = losses.soft_cross_entropy(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1))
        return target + self.beta * temp**2 * every_class
