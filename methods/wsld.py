import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("wsld")
class WSLD(nn.Module):
    """Weighted Soft Label Distillation: CE + α·T²·mean(w·H(softmax(t/T), softmax(s/T))) (Zhou et al., ICLR 2021).

    Official code: bellymonster/Weighted-Soft-Label-Distillation knowledge_distiller.py
    (ImageNet only; its hard-coded 1000 classes become the logits' class count here).
    w = 1 − exp(−CE(s, y)/(CE(t, y) + 1e-7)), from detached logits, so it carries no
    gradient; w lies in [0, 1], grows with the student's CE and falls with the teacher's:
    samples the teacher fits worse than the student ("regularization samples") are
    down-weighted. The soft term is a cross-entropy (its value includes the teacher's
    entropy). Defaults: the authors' CIFAR-100 settings α = 2.25, T = 4 (issue #2).
    """

    paper = "Zhou et al., ICLR 2021, arXiv:2102.00650"
    code = "https://github.com/bellymonster/Weighted-Soft-Label-Distillation/blob/67820dd7c3c733d5331b78b1e66ef8a990391d5e/knowledge_distiller.py"
    defaults_from = "the authors' CIFAR-100 values (issue #2)"

    def __init__(self, alpha: float = 2.25, temperature: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        self.alpha, self.temperature, self.ce_weight = alpha, temperature, ce_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        with torch.no_grad():
            ratio = F.cross_entropy(student_logits, targets, reduction="none") / (
                F.cross_entropy(teacher_logits, targets, reduction="none") + 1e-7)
            weight = 1 - torch.exp(-ratio.clamp_min(0))
        t = self.temperature
        soft = losses.soft_cross_entropy(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1))
        terms["wsld"] = self.alpha * t**2 * (weight * soft).mean()
        return terms
