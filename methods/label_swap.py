import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


def swap_top1_with_target(logits: Tensor, targets: Tensor) -> Tensor:
    """A copy of `logits` with each row's largest value and true-class value exchanged."""
    target_index = targets.unsqueeze(1)
    target_value = logits.gather(1, target_index)
    top_value, top_index = logits.max(dim=1, keepdim=True)
    return logits.scatter(1, top_index, target_value).scatter(1, target_index, top_value)


@register("label_swap")
class LabelSwap(nn.Module):
    """Label-corrected KD "LA": swap the teacher's top-1 and true-class logits, then KD (as in the RLD code)."""

    paper = "the \"LA\" baseline of RLD (arXiv:2408.07703); its source paper is unconfirmed"
    code = "https://github.com/zju-SWJ/RLD/blob/d54578fd77cd669d6209be4d05ae773bca4109b5/mdistiller/distillers/SWAP.py"
    defaults_from = "official CIFAR-100 config (RLD repository)"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.0, kd_weight: float = 1.0, standardize: bool = False):
        super().__init__()
        self.temperature, self.ce_weight, self.kd_weight, self.standardize = temperature, ce_weight, kd_weight, standardize

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        teacher_logits = swap_top1_with_target(teacher_logits, targets)
        if self.standardize:
            student_logits, teacher_logits = losses.standardize(student_logits), losses.standardize(teacher_logits)
        terms["kd"] = self.kd_weight * losses.kd_divergence(student_logits, teacher_logits, self.temperature)
        return terms
