import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("dkd")
class DKD(nn.Module):
    """Decoupled KD: CE + warm-up·T²·(α·TCKD + β·NCKD) (Zhao et al., CVPR 2022)."""

    paper = "Zhao et al., CVPR 2022, arXiv:2203.08679"
    code = "https://github.com/megvii-research/mdistiller/blob/a08d46f10d6102bd6e3f258ca5ac880b020ea259/mdistiller/distillers/DKD.py"
    defaults_from = "official CIFAR-100 config (resnet32x4→resnet8x4); β per pair in the grid"
    epoch_hparams = ("warmup",)

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 1.0,
                 warmup: int = 20, standardize: bool = False):
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.ce_weight, self.warmup, self.standardize = ce_weight, warmup, standardize

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        if self.standardize:
            student_logits, teacher_logits = losses.standardize(student_logits), losses.standardize(teacher_logits)
        ramp = losses.warmup_factor(epoch, self.warmup)
        target = losses.one_hot_mask(student_logits, targets)
        tckd = losses.binary_kl(student_logits, teacher_logits, target, target, self.temperature)
        nckd = losses.non_target_kl(student_logits, teacher_logits, target, self.temperature)
        terms["tckd"] = ramp * self.alpha * tckd
        terms["nckd"] = ramp * self.beta * nckd
        return terms
