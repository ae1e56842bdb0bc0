import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("rld")
class RLD(nn.Module):
    """Refined Logit Distillation: CE + warm-up·(α·SCD + β·MCD) (Sun et al., ICCV 2025)."""

    paper = "Sun et al., ICCV 2025, arXiv:2408.07703"
    code = "https://github.com/zju-SWJ/RLD/blob/d54578fd77cd669d6209be4d05ae773bca4109b5/mdistiller/distillers/RLD.py"
    defaults_from = "official CIFAR-100 config; the grid adds the README's --same-t"
    epoch_hparams = ("warmup",)

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, alpha_temperature: float = 1.0,
                 ce_weight: float = 1.0, warmup: int = 20, standardize: bool = False):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.alpha_temperature = alpha, beta, temperature, alpha_temperature
        self.ce_weight, self.warmup, self.standardize = ce_weight, warmup, standardize

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        if self.standardize:
            student_logits, teacher_logits = losses.standardize(student_logits), losses.standardize(teacher_logits)
        ramp = losses.warmup_factor(epoch, self.warmup)
        # SCD: the student's true-class confidence against the teacher's top-1 confidence.
        target = losses.one_hot_mask(student_logits, targets)
        teacher_top1 = losses.one_hot_mask(teacher_logits, teacher_logits.argmax(dim=1))
        scd = losses.binary_kl(student_logits, teacher_logits, target, teacher_top1, self.alpha_temperature)
        # MCD: drop the true class and every class the teacher ranks at or above it (ties included).
        at_or_above_target = teacher_logits >= teacher_logits.gather(1, targets.unsqueeze(1))
        mcd = losses.masked_kl(student_logits, teacher_logits, at_or_above_target, self.temperature)
        terms["scd"] = ramp * self.alpha * scd
        terms["mcd"] = ramp * self.beta * mcd
        return terms
