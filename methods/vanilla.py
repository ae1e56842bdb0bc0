import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import register


@register("vanilla")
class Vanilla(nn.Module):
    """Cross-entropy on the labels only: the student trained without a teacher."""

    needs_teacher = False
    paper = ""
    code = ""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(student_logits, targets)}
