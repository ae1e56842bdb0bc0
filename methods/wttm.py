import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("wttm")
class WTTM(nn.Module):
    """Weighted TTM: CE + w·mean(U·KL(softmax(t)^γ/U ‖ softmax(s))), U = Σ softmax(t)^γ (Zheng & Yang, ICLR 2024).

    Official code: zkxufo/TTM distiller_zoo/wttm.py. Defaults: the README's WTTM setting
    `--ttm_l 0.2 -a 4` (γ = 0.2, weight 4; there WTTM is the `--add` term next to CRD,
    here it stands alone with CE 1); no T² factor. U, the sample-adaptive weight, is larger
    for smoother teachers (it is C^(1−γ) for a uniform one and 1 for a one-hot one).
    """

    paper = "Zheng & Yang, ICLR 2024, arXiv:2402.11148"
    code = "https://github.com/zkxufo/TTM/blob/fe457b33a71ba27536ec04fe3d32c5b04963522f/distiller_zoo/wttm.py"
    defaults_from = "a README example for one pair, beside CRD; per-pair values not published in code"

    def __init__(self, gamma: float = 0.2, wttm_weight: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        self.gamma, self.wttm_weight, self.ce_weight = gamma, wttm_weight, ce_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        transformed, weight = losses.power_transform(teacher_logits, self.gamma)
        kl = losses.kl_div(F.log_softmax(student_logits, dim=1), transformed)
        terms["wttm"] = self.wttm_weight * (weight * kl).mean()
        return terms
