import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.methods import losses
from kdbench.methods import register
from kdbench.methods.artifacts import ArtifactInputs

ARTIFACT = "wkd_cost_matrix"


def sinkhorn_cost(p_student: Tensor, p_teacher: Tensor, target: Tensor, cost: Tensor, reg: float,
                  iterations: int) -> Tensor:
    """Per row, Σ flow·cost of the official `sinkhorn` (WKD.py L12–26) between the non-target
    distributions `p_student` (marginal u) and `p_teacher` (marginal v), (B, C) with 0 at the
    target class `target` (B, C, bool), under `cost` (C, C).

    The official code removes the target row and column from each sample's cost matrix; here the
    shared C×C kernel is used with u and v held at exactly 0 on the target class, which gives the
    same iterates without a (B, C−1, C−1) tensor: u₀ = 1/(C−1) off the target, then `iterations`
    times v = p_t / (Kᵀu + 1e-8), u = p_s / (K v + 1e-8), K = exp(−cost/reg); the gradient flows
    through every iteration.
    """
    kernel = torch.exp(-cost / reg)
    weighted = kernel * cost
    u = (~target).to(p_student.dtype) / (cost.shape[0] - 1)
    for _ in range(iterations):
        v = p_teacher / (u @ kernel + 1e-8)
        u = p_student / (v @ kernel.t() + 1e-8)
    return ((u @ weighted) * v).sum(dim=1)


def class_prototypes(inputs: ArtifactInputs, kind: str) -> Tensor:
    """(C, n, d) float32: each class's prototype rows, as tools/generate_class_proto.py collects them.

    `kind` "logits": one row per image (its logits; the official's ImageNet `feature_type='logit'`);
    "last_stage": one row per image and position of the last stage's map, position-major within an
    image (`feats["feats"][-1]`, (m, c, h, w) → (m·h·w, c); its CIFAR `feature`). Images in the
    training split's order; every class is cut to the smallest class's count, as the official
    does for logits (for feature maps it needs equal counts, where the cut changes nothing).
    """
    outputs, labels = [], []
    for images, targets in inputs.batches():
        out = inputs.logits(images) if kind == "logits" else inputs.last_stage(images)
        outputs.append(out.float())
        labels.append(targets.to(out.device))
    features, labels = torch.cat(outputs), torch.cat(labels)
    del outputs
    counts = torch.bincount(labels, minlength=inputs.num_classes).tolist()
    if min(counts) == 0:
        raise KdbenchError(f"teacher {inputs.arch}: class {counts.index(0)} has no training image; "
                           f"the {ARTIFACT} needs every class")
    keep = min(counts)
    order = torch.argsort(labels, stable=True)
    starts = [sum(counts[:k]) for k in range(inputs.num_classes)]
    picked = order[torch.tensor([s + i for s in starts for i in range(keep)], device=order.device)]
    features = features[picked]
    if features.dim() == 4:
        features = features.flatten(2).transpose(1, 2)  # (images, h·w, c)
    return features.reshape(inputs.num_classes, -1, features.shape[-1])


def linear_cka_distances(prototypes: Tensor, what: str) -> Tensor:
    """(C, C) float64 matrix of 1 − linear CKA between the classes' prototype rows, as
    tools/generate_cost_matrix.py's `linear_CKA_precenter` loop: each class's rows centred,
    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F), rows paired by their order.

    Computed in float64 (the official script: float32) from the d×d products, or from the
    n×n Gram matrices when a class has no more rows than columns; the same numbers either way.
    """
    classes, n, d = prototypes.shape

    def centred(start: int, stop: int) -> Tensor:
        x = prototypes[start:stop].double()
        return x - x.mean(dim=1, keepdim=True)

    if n <= d:
        grams = torch.stack([x @ x.t() for x in (centred(k, k + 1)[0] for k in range(classes))]).reshape(classes, -1)
        cross = grams @ grams.t()
    else:
        cross = torch.zeros(classes, classes, dtype=torch.float64, device=prototypes.device)
        chunk = max(1, (1 << 26) // (n * d))
        for i in range(classes):
            x = centred(i, i + 1)[0]
            for start in range(i, classes, chunk):
                stop = min(start + chunk, classes)
                cross[i, start:stop] = torch.einsum("knd,ne->kde", centred(start, stop), x).square().sum(dim=(1, 2))
    cross = torch.triu(cross) + torch.triu(cross, 1).t()  # each pair once, as the official loop: symmetric
    norms = cross.diagonal().sqrt()
    if not bool((norms > 0).all()):
        constant = int((norms > 0).logical_not().nonzero()[0])
        raise KdbenchError(f"{what}: the prototypes of class {constant} do not vary; linear CKA is undefined")
    distances = 1 - cross / (norms[:, None] * norms[None, :])
    # The official CKA of a class with itself divides a norm's square by the norm times itself: exactly 1.
    return distances.fill_diagonal_(0.0)


def cosine_decay(epoch: int, start: int, end: int) -> float:
    """1 up to epoch `start`, then 0.5·(1 + cos(π·(epoch − start)/(end − start))): WKD's weight
    schedule (WKD.py L203–210, `end` its SOLVER.EPOCHS); 0 after `start` when end <= start."""
    if epoch <= start:
        return 1.0
    if end <= start:
        return 0.0
    return 0.5 * (1.0 + math.cos((epoch - start) / (end - start) * math.pi))


@register("wkd_l")
class WKDL(nn.Module):
    """WKD-L: CE − p_t[y]·log p_s[y] + γ·entropic Wasserstein distance between non-target distributions under a teacher class cost (Lv et al., NeurIPS 2024).

    Official code: JiamingLv/WKD mdistiller/distillers/WKD.py `wkd_logit_loss_with_speration`,
    `wkd_logit_loss`, `sinkhorn`: the target term −mean(p_t[y]·log p_s[y]) at T = 1 (no weight);
    γ times the batch mean of Σ flow·cost between softmax(z_¬y / T) of student and teacher,
    Sinkhorn with λ 0.05 for 10 iterations, u₀ = 1/(C−1), +1e-8 in both divisions, the gradient
    through every iteration; cost = relu(1 − exp(−sharpen·D)) + 1e-8, D the teacher's 1 − linear
    CKA between class prototypes (`teacher_artifact`, built by `build_teacher_artifact` as
    tools/generate_class_proto.py + generate_cost_matrix.py do), without the target row and
    column (sharpen 0 uses D itself, as the official). γ is constant to epoch `decay_start`, then
    cosine-decayed to 0 at `decay_end` (COSINE_DECAY_EPOCH 150 and SOLVER.EPOCHS 240, both epoch
    counts). Defaults: configs/cifar100/wkd_l/res32x4_res8x4.yaml (γ 600, T 8, CE 1, sharpen 1).
    The official casts the softmaxes to float32; kdbench computes in the logits' precision
    (float32 in training, float64 stays float64).
    """

    paper = "Lv, Yang & Li, NeurIPS 2024, arXiv:2412.08139"
    code = "https://github.com/JiamingLv/WKD/blob/214cf8868c2b8e45781f238b8f0e47c2e4e38190/mdistiller/distillers/WKD.py"
    defaults_from = "official CIFAR-100 config (resnet32x4→resnet8x4); γ and T per pair in the grid"
    teacher_artifact = ARTIFACT
    epoch_hparams = ("decay_start", "decay_end")
    reference_epochs = 240  # the CIFAR configs' SOLVER.EPOCHS

    def __init__(self, weight: float = 600.0, temperature: float = 8.0, ce_weight: float = 1.0, sharpen: float = 1.0,
                 sinkhorn_lambda: float = 0.05, sinkhorn_iterations: int = 10, decay_start: int = 150,
                 decay_end: int = 240):
        super().__init__()
        self.weight, self.temperature, self.ce_weight, self.sharpen = weight, temperature, ce_weight, sharpen
        self.sinkhorn_lambda, self.sinkhorn_iterations = sinkhorn_lambda, sinkhorn_iterations
        self.decay_start, self.decay_end = decay_start, decay_end
        self.register_buffer("distance", None, persistent=False)

    def set_teacher_artifact(self, artifact: Tensor) -> None:
        """Keep the teacher's class distance matrix D (C, C), 1 − linear CKA."""
        if artifact.dim() != 2 or artifact.shape[0] != artifact.shape[1]:
            raise KdbenchError(f"method wkd_l: the {ARTIFACT} must be square, got shape {tuple(artifact.shape)}")
        self.distance = artifact.detach().clone()

    @classmethod
    def build_teacher_artifact(cls, inputs: ArtifactInputs) -> Tensor:
        """The teacher's class distance matrix D = 1 − linear CKA between class prototypes (float64)."""
        kind = "logits" if inputs.zoo == "imagenet" else "last_stage"
        return linear_cka_distances(class_prototypes(inputs, kind), what=f"teacher {inputs.arch}")

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, epoch: int) -> dict[str, Tensor]:
        if self.distance is None:
            raise KdbenchError(f"method wkd_l: no {ARTIFACT}; the harness hands it over with set_teacher_artifact "
                               "(docs/design.md, method contract)")
        terms = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * F.cross_entropy(student_logits, targets)
        index = targets.unsqueeze(1)
        student_target = F.log_softmax(student_logits, dim=1).gather(1, index)
        teacher_target = F.softmax(teacher_logits, dim=1).gather(1, index)
        terms["target"] = -(teacher_target * student_target).mean()
        target = losses.one_hot_mask(student_logits, targets)
        distance = self.distance.to(student_logits.dtype)
        if self.sharpen != 0:
            distance = 1 - torch.exp(-self.sharpen * distance)
        cost = F.relu(distance) + 1e-8
        t = self.temperature
        p_student = F.softmax((student_logits / t).masked_fill(target, float("-inf")), dim=1)
        p_teacher = F.softmax((teacher_logits / t).masked_fill(target, float("-inf")), dim=1)
        flow_cost = sinkhorn_cost(p_student, p_teacher, target, cost, self.sinkhorn_lambda, self.sinkhorn_iterations)
        gamma = self.weight * cosine_decay(epoch, self.decay_start, self.decay_end)
        terms["wasserstein"] = gamma * flow_cost.mean()
        return terms
