import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register

EPSILON = 1e-5  # the official `perception`'s, added to the variance inside the square root


def batch_standardize(logits: Tensor) -> Tensor:
    """Each class column standardised over the batch: (z − mean_b z) / sqrt(var_b z + 1e-5), population variance."""
    variance = torch.var(logits, dim=0, keepdim=True, unbiased=False)
    return (logits - logits.mean(dim=0, keepdim=True)) / torch.sqrt(variance + EPSILON)


@register("luminet")
class LumiNet(nn.Module):
    """LumiNet: CE + warm-up·α²·KL at T of logits standardised per class over the batch (Hossain et al., TMLR 2025).

    Official code: ismail31416/LumiNet mdistiller/distillers/Luminet.py (`perception`, `luminet_loss`),
    quirks kept: teacher and student are each standardised column by column over the batch,
    with the population variance and ε inside the square root; the KL (batchmean) is scaled by
    α², not T²; the warm-up min(epoch / warmup, 1) (1-based epochs, LUMINET.WARMUP 20 in
    engine/cfg.py) multiplies the KL term only. Defaults: configs/cifar100/luminet/res32x4_res8x4.yaml
    (α 33, T 4, CE 2; engine/cfg.py's own α is 31). The standardisation couples the rows of a
    batch: the loss depends on the batch and its size, and a batch of one standardises to zeros.
    """

    paper = "Hossain et al., TMLR 2025, arXiv:2310.03669"
    code = "https://github.com/ismail31416/LumiNet/blob/8cf749be3a4ec67c4673bfbc791715848e5bb720/mdistiller/distillers/Luminet.py"
    defaults_from = "official CIFAR-100 config (resnet32x4→resnet8x4); α, T and CE per pair in the grid"
    epoch_hparams = ("warmup",)
    batch_statistics = True  # the standardisation runs over the batch

    def __init__(self, alpha: float = 33.0, temperature: float = 4.0, ce_weight: float = 2.0, warmup: int = 20):
        super().__init__()
        self.alpha, self.temperature, self.ce_weight, self.warmup = alpha, temperature, ce_weight, warmup

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        log_q = F.log_softmax(batch_standardize(student_logits) / self.temperature, dim=1)
        p = F.softmax(batch_standardize(teacher_logits) / self.temperature, dim=1)
        kl = F.kl_div(log_q, p, reduction="batchmean")
        terms["kd"] = losses.warmup_factor(epoch, self.warmup) * (kl * self.alpha**2)
        return terms
