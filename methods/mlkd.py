import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods import losses
from kdbench.methods import register


@register("mlkd")
class MLKD(nn.Module):
    """Multi-Level Logit Distillation: CE on two views + KD, batch and class correlations at 5 temperatures (Jin et al., CVPR 2023).

    Official code: Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py (cfg T 4,
    CE 0.1, KD 0.9), quirks kept: weak-view terms are scaled by the fraction of the batch at or below
    the median weak-view teacher confidence (class term: median class mass), medians as
    np.percentile(·, 50) but on the device; the strong KD sum uses the weak logits at T = 2 and 6;
    its unreturned strong-view class and batch terms are left out. `standardize`: the LS repo's
    MLKD.py (z-scored logits in the KD terms only; run there with T = 2, KD weight 9).
    """

    views = ("weak", "strong")
    # Its official CIFAR-100 schedules (configs/cifar100/ours/*.yaml), for variants with `protocol: own`.
    own_schedules = {
        pair: {"epochs": epochs, "lr": lr, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4,
               "milestones": [150, 180, 210], "lr_decay": 0.1}
        for pairs, epochs, lr in [
            (("resnet32x4->resnet8x4", "vgg13->vgg8", "wrn_40_2->wrn_40_1", "wrn_40_2->wrn_16_2",
              "resnet56->resnet20", "resnet110->resnet32"), 240, 0.025),
            (("ResNet50->MobileNetV2", "vgg13->MobileNetV2", "wrn_40_2->ShuffleV1"), 480, 0.01),
            (("resnet32x4->ShuffleV1", "resnet32x4->ShuffleV2"), 960, 0.01)]
        for pair in pairs
    }
    paper = "Jin, Wang & Lin, CVPR 2023"
    code = "https://github.com/Jin-Ying/Multi-Level-Logit-Distillation/blob/5ee473fcf193dfb00a0598b64d0acfe6ad58a482/mdistiller/distillers/KD_ours.py"
    defaults_from = "official CIFAR-100 config"
    batch_statistics = True  # medians over the batch, batch and class correlations

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9, standardize: bool = False):
        super().__init__()
        self.temperature, self.ce_weight, self.kd_weight, self.standardize = temperature, ce_weight, kd_weight, standardize

    def forward(self, student_logits: dict, teacher_logits: dict, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        s_weak, s_strong = student_logits["weak"], student_logits["strong"]
        t_weak, t_strong = teacher_logits["weak"], teacher_logits["strong"]
        teacher_probs = F.softmax(t_weak, dim=1)
        low_confidence = losses.at_most_median(teacher_probs.max(dim=1).values)
        low_class_mass = losses.at_most_median(teacher_probs.sum(dim=0))
        kd_inputs = [(s_weak, t_weak), (s_strong, t_strong)]
        if self.standardize:
            kd_inputs = [(losses.standardize(s), losses.standardize(t)) for s, t in kd_inputs]
        temps = (self.temperature, 3.0, 5.0, 2.0, 6.0)
        kd_weak = sum(losses.kd_divergence(*kd_inputs[0], t) for t in temps)
        kd_strong = sum(losses.kd_divergence(*kd_inputs[view], t) for view, t in zip((1, 1, 1, 0, 0), temps))
        cc = sum(losses.class_correlation(s_weak, t_weak, t) for t in temps)
        bc = sum(losses.batch_correlation(s_weak, t_weak, t) for t in temps)
        return {"ce": self.ce_weight * (F.cross_entropy(s_weak, targets) + F.cross_entropy(s_strong, targets)),
                "kd": self.kd_weight * ((kd_weak * low_confidence).mean() + kd_strong),
                "cc": self.kd_weight * (cc * low_class_mass).mean(),
                "bc": self.kd_weight * (bc * low_confidence).mean()}
