import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("normkd")
class NormKD(nn.Module):
    """NormKD: KD with a per-sample temperature T_norm·std(logits) on each side (Chi et al., 2023)."""

    paper = "Chi et al., 2023, arXiv:2308.00520"
    code = "https://github.com/gizi1/NormKD/blob/279371b69beeadbfe29104875b728a687a7cea49/mdistiller/distillers/NormKD.py"
    defaults_from = "official CIFAR-100 config"

    def __init__(self, t_norm: float = 2.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        super().__init__()
        self.t_norm, self.ce_weight, self.kd_weight = t_norm, ce_weight, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        teacher_std, student_std = losses.safe_std(teacher_logits), losses.safe_std(student_logits)
        # A constant row has std 0: its softmax is uniform at any temperature, so divide by
        # t_norm there instead of by 0. The teacher's T² weight stays t_norm²·std² (0 there).
        teacher_t = self.t_norm * torch.where(teacher_std > 0, teacher_std, torch.ones_like(teacher_std))
        student_t = self.t_norm * torch.where(student_std > 0, student_std, torch.ones_like(student_std))
        per_sample = losses.kl_div(
            F.log_softmax(student_logits / student_t, dim=1), F.softmax(teacher_logits / teacher_t, dim=1)
        )
        weight = (self.t_norm * teacher_std).squeeze(1) ** 2
        terms["kd"] = self.kd_weight * (per_sample * weight).mean()
        return terms
