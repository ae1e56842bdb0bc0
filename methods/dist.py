import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("dist")
class DIST(nn.Module):
    """DIST: CE + β·τ²·(1 − inter-class ρ) + γ·τ²·(1 − intra-class ρ) of softmax(z/τ) (Huang et al., NeurIPS 2022).

    ρ is the Pearson correlation, over each sample's classes (inter) and over each class's
    samples in the batch (intra), with eps added to the norm product as in the official
    hunto/image_classification_sota lib/models/losses/dist_kd.py. Defaults: its CIFAR config
    configs/strategies/distill/dist_cifar.yaml (CE 1, `dist_t4` with β = γ = 1 at weight 2).
    ρ is unchanged by a positive scale or a shift of either side, so DIST matches relations
    rather than values; the loss is also unchanged by a per-sample constant added to the logits.
    The intra-class term is a batch statistic: it depends on the batch and its size.
    """

    paper = "Huang et al., NeurIPS 2022, arXiv:2205.10536"
    code = "https://github.com/hunto/image_classification_sota/blob/d9662f7df68fe46b973c4580b7c9b896cedcd301/lib/models/losses/dist_kd.py"
    defaults_from = "official CIFAR-100 config"
    batch_statistics = True  # the intra-class correlation runs over the batch

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, temperature: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        self.beta, self.gamma, self.temperature, self.ce_weight = beta, gamma, temperature, ce_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        inter, intra = losses.dist_relations(student_logits, teacher_logits, self.temperature)
        terms["inter"] = self.beta * inter
        terms["intra"] = self.gamma * intra
        return terms
