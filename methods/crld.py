import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


def confident(teacher_logits: Tensor, threshold: float) -> Tensor:
    """Rows whose teacher top-1 probability at T = 1 is at least `threshold` (the official `ge`)."""
    return F.softmax(teacher_logits, dim=1).max(dim=1).values >= threshold


@register("crld")
class CRLD(nn.Module):
    """Cross-view consistency KD: CE on two views + within- and cross-view KD gated by teacher confidence (Zhang et al., ACM MM 2024).

    Official code: arcaninez/CRLD mdistiller/distillers/CRLD.py (the authors' repository: its
    README is the paper's; haiduo/DeepKD's CRLD.py equals it outside DeepKD's own branch),
    defaults from its mdistiller/engine/cfg.py (the CIFAR-100 configs set only the solver).
    Its strong view is MLKD's (mdistiller/dataset/cifar100.py, the same transform). Per sample,
    KD(s, t) = T²·KL(softmax(t/T) ‖ softmax(s/T)) summed over classes; the within-view term
    KD(s_w, t_w) + KD(s_s, t_s) counts where the weak-view teacher's top-1 probability at
    T = 1 is ≥ τ_w, the cross-view term KD(s_s, t_w) + KD(s_w, t_s) where the strong-view
    teacher's is ≥ τ_s; both are means over the whole batch, gated-out rows counting as
    zeros. The gate compares in the logits' dtype (float32 in training), as the official
    `conf.ge(tau)`. CE is the sum of both views' batch means. No warm-up.
    """

    views = ("weak", "strong")
    paper = "Zhang, Liu, Cai & Ma, ACM MM 2024, arXiv:2412.16493"
    code = "https://github.com/arcaninez/CRLD/blob/fe42473e4ba48a59ce8b3868bdfc1a2383423bfa/mdistiller/distillers/CRLD.py"
    defaults_from = "official CIFAR-100 config"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, within_weight: float = 2.0,
                 cross_weight: float = 0.5, tau_weak: float = 0.9, tau_strong: float = 0.2):
        super().__init__()
        self.temperature, self.ce_weight, self.within_weight, self.cross_weight = temperature, ce_weight, within_weight, cross_weight
        self.tau_weak, self.tau_strong = tau_weak, tau_strong

    def forward(self, student_logits: dict, teacher_logits: dict, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        s_weak, s_strong = student_logits["weak"], student_logits["strong"]
        t_weak, t_strong = teacher_logits["weak"], teacher_logits["strong"]

        def kd(s: Tensor, t: Tensor) -> Tensor:
            return losses.kd_divergence(s, t, self.temperature, reduction="none")

        within = (kd(s_weak, t_weak) + kd(s_strong, t_strong)) * confident(t_weak, self.tau_weak)
        cross = (kd(s_strong, t_weak) + kd(s_weak, t_strong)) * confident(t_strong, self.tau_strong)
        return {"ce": self.ce_weight * (F.cross_entropy(s_weak, targets) + F.cross_entropy(s_strong, targets)),
                "within_view": self.within_weight * within.mean(),
                "cross_view": self.cross_weight * cross.mean()}
