import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("ttm")
class TTM(nn.Module):
    """Transformed Teacher Matching: CE + w·KL(softmax(t)^γ/Σ ‖ softmax(s)), no student temperature (Zheng & Yang, ICLR 2024).

    Official code: zkxufo/TTM distiller_zoo/ttm.py, with the loss assembled in
    helper/loops.py (r·CE + a·KD + b·TTM). Defaults: the README's example
    `--distill ttm --ttm_l 0.1 -r 1 -b 45 -a 0` (γ = 1/T = 0.1); no T² factor.
    The transformed teacher q equals softmax(γ·t). With T = 1/γ, KD's divergence is
    KL(q ‖ softmax(s/T)) = γ·KL(q ‖ softmax(s)) + (1 − γ)·(H_γ(softmax(s)) − H(q)), H_γ the
    Rényi entropy of order γ: the identity behind the paper's statement that TTM differs
    from KD by a Rényi-entropy regulariser (tested in tests/test_losses_wave2.py).
    """

    paper = "Zheng & Yang, ICLR 2024, arXiv:2402.11148"
    code = "https://github.com/zkxufo/TTM/blob/fe457b33a71ba27536ec04fe3d32c5b04963522f/distiller_zoo/ttm.py"
    defaults_from = "a README example for one pair (vgg13→vgg8); per-pair values not published in code"

    def __init__(self, gamma: float = 0.1, ttm_weight: float = 45.0, ce_weight: float = 1.0):
        super().__init__()
        self.gamma, self.ttm_weight, self.ce_weight = gamma, ttm_weight, ce_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        transformed, _ = losses.power_transform(teacher_logits, self.gamma)
        kl = losses.kl_div(F.log_softmax(student_logits, dim=1), transformed)
        terms["ttm"] = self.ttm_weight * kl.mean()
        return terms
