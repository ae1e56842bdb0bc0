"""Teacher artifacts: data a method computes once from its teacher and the training data
(WKD-L's class cost matrix), handed to every instance of the method that trains with that teacher.

A method declares the artifact's name (`teacher_artifact = "name"`), builds it in a
classmethod `build_teacher_artifact(inputs: ArtifactInputs) -> Tensor`, and receives it in
`set_teacher_artifact(artifact)`, which keeps it in a buffer (not persistent: the run
records the artifact's SHA-256, `digest`, and the harness's cache keeps the artifact). The
harness (`kdbench.train.artifacts`) builds it once per teacher and training split, caches
it next to the teacher, and hands the same tensor to every member that declares it. The
builder sees the teacher only through `ArtifactInputs`, so the conformance suite can hand
it a synthetic teacher (`synthetic_inputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


@dataclass(frozen=True)
class ArtifactInputs:
    """What `build_teacher_artifact` may use: the teacher, as functions of an image batch (eval
    mode, no gradient, float32), and the training split.

    `zoo` is the teacher's zoo (`cifar` or `imagenet`); `batches()` yields the training split's
    `(images, targets)` un-augmented (the test transform), in the dataset's order; every class
    of `num_classes` appears in it.
    """

    arch: str
    zoo: str
    num_classes: int
    logits: Callable[[Tensor], Tensor]
    feature_map: Callable[[Tensor], Tensor]
    last_stage: Callable[[Tensor], Tensor]
    batches: Batches


def teacher_artifact(method: nn.Module | type[nn.Module]) -> str | None:
    """The name of the teacher artifact a method declares (`teacher_artifact`), or None."""
    name = getattr(method, "teacher_artifact", None)
    return str(name) if name else None


def digest(artifact: Tensor) -> str:
    """SHA-256 of an artifact: its dtype, its shape and its bytes (C order, on the host)."""
    data = artifact.detach().cpu().contiguous()
    header = f"{str(data.dtype).removeprefix('torch.')}:{'x'.join(map(str, data.shape))}\n".encode()
    return hashlib.sha256(header + data.numpy().tobytes()).hexdigest()


def synthetic_inputs(num_classes: int, per_class: int = 2, seed: int = 0, channels: int = 8, size: int = 2,
                     zoo: str = "cifar") -> ArtifactInputs:
    """A stand-in teacher and training split for tests: a fixed random 1×1 conv plus ReLU as the
    feature map (and last stage), a fixed random linear classifier on its global pool, and
    `per_class` random images of every class, classes interleaved."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(channels, 3, 1, 1, generator=g, dtype=torch.float64)
    linear = torch.randn(num_classes, channels, generator=g, dtype=torch.float64)
    images = torch.randn(num_classes * per_class, 3, size, size, generator=g, dtype=torch.float64)
    targets = torch.arange(num_classes).repeat(per_class)

    def feature_map(x: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x.to(conv.dtype), conv).relu().float()

    def logits(x: Tensor) -> Tensor:
        return (feature_map(x).double().mean(dim=(2, 3)) @ linear.t()).float()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(images), 64):
            yield images[start:start + 64].float(), targets[start:start + 64]

    return ArtifactInputs(arch="synthetic", zoo=zoo, num_classes=num_classes, logits=logits,
                          feature_map=feature_map, last_stage=feature_map, batches=batches)


def with_synthetic_artifact(method: nn.Module, num_classes: int) -> nn.Module:
    """`method`, handed the teacher artifact its builder makes from `synthetic_inputs(num_classes)`
    if it declares one (for tests and timings, where no real teacher and data are at hand)."""
    if teacher_artifact(method):
        method.set_teacher_artifact(type(method).build_teacher_artifact(synthetic_inputs(num_classes)))
    return method
