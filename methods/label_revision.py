import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import register


@register("label_revision")
class LabelRevision(nn.Module):
    """Label-corrected KD "LR": logit MSE where the teacher is right, revised-label MSE where wrong (Lan et al., IEEE TCDS 2025)."""

    paper = "Lan et al., IEEE TCDS 2025, arXiv:2404.03693"
    code = "https://github.com/zju-SWJ/RLD/blob/d54578fd77cd669d6209be4d05ae773bca4109b5/mdistiller/distillers/REVISION.py"
    defaults_from = "official CIFAR-100 config (RLD repository)"
    batch_statistics = True  # its means run over the rows the teacher gets right (or wrong)

    def __init__(self, lambda1: float = 4.0, lambda2: float = 1.0, eta: float = 0.8):
        super().__init__()
        self.lambda1, self.lambda2, self.eta = lambda1, lambda2, eta

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        classes = student_logits.shape[1]
        right = teacher_logits.max(dim=1).indices == targets
        wrong = ~right
        # Means over the right (or wrong) rows only, without boolean indexing: that would
        # need the row count on the host. An empty group contributes 0, as in the RLD code.
        n_right = right.sum().clamp_min(1)
        n_wrong = wrong.sum().clamp_min(1)

        ce = torch.where(right, F.cross_entropy(student_logits, targets, reduction="none"), 0.0).sum() / n_right
        logit_se = ((student_logits - teacher_logits) ** 2).sum(dim=1)
        mse_right = torch.where(right, logit_se, 0.0).sum() / (n_right * classes)

        teacher_probs = F.softmax(teacher_logits, dim=1)
        gap = teacher_probs.max(dim=1, keepdim=True).values - teacher_probs.gather(1, targets.unsqueeze(1))
        beta = self.eta / (gap + 1)
        revised = beta * teacher_probs + (1 - beta) * F.one_hot(targets, classes)
        prob_se = ((F.softmax(student_logits, dim=1) - revised) ** 2).sum(dim=1)
        mse_wrong = torch.where(wrong, prob_se, 0.0).sum() / (n_wrong * classes)

        return {"ce": ce, "mse_right": self.lambda1 * mse_right, "mse_wrong": self.lambda2 * mse_wrong}
