import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("kd")
class KD(nn.Module):
    """Hinton KD: CE plus T²·KL between temperature-softened teacher and student (Hinton et al., 2015)."""

    paper = "Hinton, Vinyals & Dean, 2015, arXiv:1503.02531"
    code = "https://github.com/megvii-research/mdistiller/blob/a08d46f10d6102bd6e3f258ca5ac880b020ea259/mdistiller/distillers/KD.py"
    defaults_from = "official CIFAR-100 config"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9, standardize: bool = False):
        super().__init__()
        self.temperature, self.ce_weight, self.kd_weight, self.standardize = temperature, ce_weight, kd_weight, standardize

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        if self.standardize:
            student_logits, teacher_logits = losses.standardize(student_logits), losses.standardize(teacher_logits)
        terms["kd"] = self.kd_weight * losses.kd_divergence(student_logits, teacher_logits, self.temperature)
        return terms
