import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("ctkd")
class CTKD(nn.Module):
    """Curriculum Temperature KD: CE + KD at a learned T = t_start + t_end·σ(θ), θ trained adversarially (Li et al., AAAI 2023).

    Official code: zhengli97/CTKD models/temp_global.py (θ, gradient reversal), helper/loops.py,
    distiller_zoo/KD.py, train_student.py (CosineDecay, 1-based epochs); defaults from
    scripts/run_cifar_distill.sh. θ starts at 1.0 and is trained by the student's optimizer with
    gradient λ(epoch)·∂L/∂θ, λ going from 0 to −1 on a cosine over 10 epochs: θ ascends the KD
    loss, harder as training goes on. T stays in (t_start, t_start + t_end). `standardize`: the
    KD of sunshangquan/logit-standardization-KD CTKD/distiller_zoo/KD.py (run there with -a 9).
    """

    paper = "Li et al., AAAI 2023, arXiv:2211.16231"
    code = "https://github.com/zhengli97/CTKD/blob/7d5252241259ae70d38a832371fed9697d15fc14/models/temp_global.py"
    defaults_from = "official CIFAR-100 script"
    epoch_hparams = ("lambda_epochs",)

    def __init__(self, ce_weight: float = 0.1, kd_weight: float = 0.9, t_start: float = 1.0, t_end: float = 20.0,
                 lambda_start: float = 0.0, lambda_end: float = -1.0, lambda_epochs: int = 10, standardize: bool = False):
        super().__init__()
        self.ce_weight, self.kd_weight, self.t_start, self.t_end = ce_weight, kd_weight, t_start, t_end
        self.lambdas, self.standardize = (lambda_start, lambda_end, lambda_epochs), standardize
        self.theta = nn.Parameter(torch.tensor(1.0))

    def epoch_scalars(self) -> dict[str, Tensor]:
        return {"temperature": (self.t_start + self.t_end * torch.sigmoid(self.theta)).detach()}

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        terms = {"ce": self.ce_weight * F.cross_entropy(student_logits, targets)} if self.ce_weight else {}
        reversed_theta = losses.scale_gradient(self.theta, losses.cosine_schedule(epoch, *self.lambdas))
        t = self.t_start + self.t_end * torch.sigmoid(reversed_theta)
        if self.standardize:
            student_logits, teacher_logits = losses.standardize(student_logits), losses.standardize(teacher_logits)
        # KD reduced as the official code does: θ's float32 gradient, a sum that mostly cancels, then rounds alike.
        kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean")
        terms["kd"] = self.kd_weight * (kl * t * t)
        return terms
