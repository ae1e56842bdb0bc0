import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("nkd")
class NKD(nn.Module):
    """Normalized KD: CE − p_t[y]·log p_s[y] + γ·λ²·H(non-target p_t/λ, non-target p_s/λ) (Yang et al., ICCV 2023).

    Official code: yzd-v/cls_KD (branch 1.0) mmcls/models/dis_losses/nkd.py, added to the
    student's CE (mmcls/models/classifiers/distiller.py). Defaults: its only CIFAR-100 config,
    configs/distillers/cifar100/res34_distill_res18_cifar.py (temp λ = 3, γ = 3.5). Both terms
    are cross-entropies, so the value includes the teacher's entropy. The non-target term
    drops the true class and renormalises the rest. At temperature 1, KD's soft cross-entropy is
    −p_t[y]·log p_s[y] plus (1 − p_t[y])·(non-target cross-entropy − log(1 − p_s[y])) exactly,
    and NKD removes that (1 − p_t[y]) weight, which differs between samples.
    """

    paper = "Yang et al., ICCV 2023, arXiv:2303.13005"
    code = "https://github.com/yzd-v/cls_KD/blob/1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66/mmcls/models/dis_losses/nkd.py"
    defaults_from = "a config from another recipe (cls_KD, ResNet34→ResNet18 on CIFAR-100)"

    def __init__(self, temperature: float = 3.0, gamma: float = 3.5, ce_weight: float = 1.0):
        super().__init__()
        self.temperature, self.gamma, self.ce_weight = temperature, gamma, ce_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        index = targets.unsqueeze(1)
        student_target = F.log_softmax(student_logits, dim=1).gather(1, index)
        teacher_target = F.softmax(teacher_logits, dim=1).gather(1, index)
        terms["target"] = -(teacher_target * student_target).mean()
        t = self.temperature
        log_q = F.log_softmax(losses.drop_column(student_logits, targets) / t, dim=1)
        p = F.softmax(losses.drop_column(teacher_logits, targets) / t, dim=1)
        terms["non_target"] = self.gamma * t**2 * losses.soft_cross_entropy(log_q, p).mean()
        return terms
