"""What a cohort trains (`CohortSpec`, `Member`) and a member's live state while training (`Trainee`).

A trainee holds its student, its method (the loss, with any learnable parameters), its SGD
optimizer and LR schedule, and on-device accumulators for the epoch's loss, accuracy,
terms and first non-finite step. Its `step` never syncs with the host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kdbench import methods, models
from kdbench.train import distributed
from kdbench.train.compiling import Compiled
from kdbench.train.precision import autocast, grad_scaler
from kdbench.grid.recipe import Options, Schedule
from kdbench.runs.records import Failure, RecordError, Status, Summary, now_iso
from kdbench.runs.teacher_files import TeacherRef

#: The standard augmented view of each image: the one every method trains on.
WEAK = "weak"
#: MLKD's strong view (RandAugment and Cutout on top of a crop and flip of its own).
STRONG = "strong"


@dataclass
class Member:
    """One run of a cohort: a student trained with a method under its own schedule.

    `out_dir` receives the run's files (None keeps everything in memory). `config` is the
    resolved run config: resuming under a different one is refused. `record` holds the
    summary fields only the caller knows (grid, cohort, variant).
    """

    run_id: str
    student: str
    method: str
    hparams: dict[str, Any]
    schedule: Schedule
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class CohortSpec:
    """What `train_cohort` trains: a teacher (or none) plus members sharing dataset, seed,
    epochs and batch size.

    The teacher's weights come from `teacher.path` (or torchvision), or ready-made as
    `teacher_model` (benchmarks, tests). `teacher_sha256` is the hash the caller verified
    for the teacher file; each resumed member's checkpoint must have recorded the same one.
    """

    dataset: dict[str, Any] | str
    seed: int
    members: list[Member]
    teacher: TeacherRef | None = None
    teacher_sha256: str | None = None
    options: Options = field(default_factory=Options)
    data_root: Path = Path("data")
    teacher_model: nn.Module | None = None
    #: Where the artifacts of a teacher not trained in the grid are cached (`<results>/teachers/artifacts`;
    #: `kdbench.train.artifacts`); None: only a grid-trained teacher's are, beside its weights.
    artifact_dir: Path | None = None


@dataclass
class MemberResult:
    """What `train_cohort` returns per member."""

    run_id: str
    status: Status  # done, failed, or running (stopped early)
    epochs_done: int
    summary: Summary
    history: list[dict[str, Any]]
    model: nn.Module | None


def init_seed(seed: int, arch: str) -> int:
    """Seed for a student's initial weights: the same (seed, arch) gives the same weights."""
    return int.from_bytes(hashlib.sha256(f"init:{seed}:{arch}".encode()).digest()[:8], "little") & (2**63 - 1)


def build_student(arch: str, seed: int, num_classes: int, in_channels: int) -> nn.Module:
    """A student initialised from a generator seeded by (seed, arch), untouched global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, models.canonical(arch)))
        return models.build(arch, num_classes=num_classes, in_channels=in_channels)


def build_method(name: str, hparams: dict[str, Any], seed: int) -> nn.Module:
    """The member's loss, with any learnable parameters initialised from (seed, method)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, f"method:{name}"))
        return methods.build(name, **hparams)


class Trainee:
    """A member's live state: model, method, optimizer, progress and on-device accumulators."""

    def __init__(self, member: Member, model: nn.Module, method: nn.Module, device: torch.device, options: Options):
        self.member = member
        self.model = model
        self.method = method
        self.device = device
        declared = methods.views_of(method)
        self.views = declared or (WEAK,)
        self.multi_view = declared is not None
        self.needs_teacher = methods.needs_teacher(method)
        self.batch_statistics = methods.batch_statistics(method)
        # With `regions`, the student runs through its feature map and classifier (logits and region logits).
        self.region_scales = methods.region_scales(method)
        #: SHA-256 of each teacher artifact handed to the method (`kdbench.train.artifacts`), by name,
        #: and those its checkpoint recorded (a resumed run must get the same).
        self.teacher_artifacts: dict[str, str] = {}
        self.recorded_artifacts: dict[str, str] = {}
        self.method_params = list(method.parameters())
        params = list(model.parameters()) + self.method_params
        self.scaler = grad_scaler(device, options.precision)
        self.optimizer = torch.optim.SGD(
            params, lr=member.schedule.lr_at(1), momentum=member.schedule.momentum,
            weight_decay=member.schedule.weight_decay,
            # Fused SGD takes the scaler's inf check as a tensor: no host sync in the step.
            **({"fused": True} if self.scaler is not None else {}),
        )
        # With options.compile: the forward (and through it its backward), the loss and the
        # optimizer step are compiled; the fp16 scaler's fused step stays eager.
        forward = model if self.region_scales is None else models.RegionForward(model)
        self.forward = Compiled(distributed.wrap(forward, device), options.compile, "student's forward")
        self.loss = Compiled(method, options.compile, f"loss of {member.method}")
        self.optimizer_step = Compiled(self.optimizer.step, options.compile and self.scaler is None, "optimizer step")
        # Progress, restored from the checkpoint on resume.
        self.epochs_done = 0
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0
        self.started_at = now_iso()
        self.sessions: list[dict[str, Any]] = []
        self.failure: Failure | None = None
        self.partial: dict[str, Any] | None = None
        self.nondeterministic_ops: list[str] = []
        self.fused_with = 1  # the size of the fused group it trains in (kdbench.train.fused); 1: alone
        self.term_names: list[str] | None = None
        # The epoch's accumulators, on the device.
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.term_sums: Tensor | None = None
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self.bad_terms: Tensor | None = None

    @property
    def run_id(self) -> str:
        return self.member.run_id

    def reset_accumulators(self) -> None:
        """Zero the epoch's accumulators."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.term_sums = None
        # Step (1-based) of the first non-finite loss this epoch, -1 if none, and its terms.
        self.first_bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        self.bad_terms = None

    def accumulators(self) -> dict[str, Any]:
        """The accumulators, as a mid-epoch checkpoint stores them."""
        return {
            "loss_sum": self.loss_sum, "correct": self.correct, "term_sums": self.term_sums,
            "first_bad_step": self.first_bad_step, "bad_terms": self.bad_terms, "term_names": self.term_names,
        }

    def load_accumulators(self, state: dict[str, Any]) -> None:
        """Restore the accumulators of a mid-epoch checkpoint."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(self.device)

        self.loss_sum, self.correct = move(state["loss_sum"]), move(state["correct"])
        self.term_sums, self.first_bad_step = move(state["term_sums"]), move(state["first_bad_step"])
        self.bad_terms, self.term_names = move(state["bad_terms"]), state["term_names"]

    def set_epoch_lr(self, epoch: int) -> float:
        """Set the optimizer's LR for 1-based `epoch`; return it."""
        lr = self.member.schedule.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, images: dict[str, Tensor], targets: Tensor, teacher_logits: dict[str, Tensor], epoch: int,
             step: int | Tensor, precision: str, shares: tuple[int, ...] | None = None,
             teacher_regions: dict[tuple[int, ...], Tensor] | None = None) -> None:
        """One SGD step on the batch; `images` and `teacher_logits` are keyed by view, and
        `teacher_regions` (for members with `regions`) by scales.

        Under DDP, `images` and `targets` are this process's share of the global batch and
        `shares` the rows of every process's share (None: this process holds the whole batch).
        """
        regions = None
        with autocast(self.device, precision):
            if self.region_scales is None:
                logits = {view: self.forward(images[view]) for view in self.views}
            else:
                weak, (student_regions,) = self.forward(images[WEAK], (self.region_scales,))
                logits = {WEAK: weak}
        with torch.autocast(self.device.type, enabled=False):
            student, teacher = self.method_inputs(logits, teacher_logits)
            if self.region_scales is not None:
                regions = (student_regions.float(), teacher_regions[self.region_scales].float())
            terms, loss, backprop = shard_loss(self.loss, self.batch_statistics, student, teacher, targets,
                                               shares or (len(targets),), epoch, regions)
        if self.term_names is None:
            self.term_names = list(terms)
        values = torch.stack([v.detach().float() for v in terms.values()])
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            backprop.backward()
            distributed.average_gradients(self.method_params)
            self.optimizer_step()
        else:
            self.scaler.scale(backprop).backward()
            distributed.average_gradients(self.method_params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.accumulate(loss, values, logits[WEAK], targets, step)

    def method_inputs(self, logits: dict[str, Tensor], teacher_logits: dict[str, Tensor]) -> tuple[Any, Any]:
        """The (student, teacher) logits the method is called with, in float32: tensors of the
        weak view, or dicts by view for multi-view methods."""
        # Without a teacher forward (none in the cohort, or the method needs none) the
        # method gets an empty teacher: a 0-d zero, or an empty dict of views.
        if self.multi_view:
            return ({v: logits[v].float() for v in self.views},
                    {v: teacher_logits[v].float() for v in self.views if v in teacher_logits})
        teacher = teacher_logits[WEAK].float() if WEAK in teacher_logits else logits[WEAK].new_zeros(())
        return logits[WEAK].float(), teacher

    def accumulate(self, loss: Tensor, values: Tensor, logits: Tensor, targets: Tensor, step: int | Tensor) -> None:
        """Add a step (its loss, stacked terms and weak-view logits) to the epoch's accumulators.

        On the device, with no host sync, and in place: a CUDA graph replays these very tensors
        (`kdbench.train.graphs`), which also passes `step` (1-based) as a 0-d tensor.
        """
        detached = loss.detach().float()
        self.loss_sum += detached
        self.correct += (logits.detach().argmax(dim=1) == targets).sum()
        first_bad = (~torch.isfinite(detached)) & (self.first_bad_step < 0)
        if self.term_sums is None or self.bad_terms is None:
            self.term_sums, self.bad_terms = values.clone(), values.clone()
        else:
            self.term_sums += values
            self.bad_terms.copy_(torch.where(first_bad, values, self.bad_terms))
        self.first_bad_step.copy_(torch.where(first_bad, step, self.first_bad_step))

    def checkpoint(self, data_seed: int, teacher_sha256: str | None, record: dict[str, Any],
                   partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything `restore` needs to resume exactly, plus the run's summary (`record`)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(), "epoch": self.epochs_done, "history": self.history,
            "wall_seconds": self.wall_seconds, "started_at": self.started_at,
            "failure": None if self.failure is None else self.failure.to_json(),
            "rng": rng, "config": self.member.config, "data_seed": data_seed, "partial": partial,
            "sessions": self.sessions, "teacher_sha256": teacher_sha256, "record": record,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "nondeterministic_ops": self.nondeterministic_ops,
        }

    def restore(self, state: Any, path: Path, teacher_sha256: str | None, teacher: Any) -> None:
        """Resume from a checkpoint; `RecordError` if it is not this run's or its teacher changed."""
        if not isinstance(state, dict) or "model" not in state:
            raise RecordError("not a kdbench checkpoint", path)
        difference = _first_difference(state.get("config", {}), self.member.config)
        if difference:
            key, old, new = difference
            raise RecordError(f"cannot resume under a changed config: '{key}' was {old!r}, now {new!r}", path)
        recorded = state.get("teacher_sha256")
        if recorded and teacher_sha256 and recorded != teacher_sha256:
            raise RecordError(
                f"teacher {teacher.label} changed: SHA-256 {teacher_sha256[:16]}… differs from {recorded[:16]}… "
                "recorded by this run; it is not resumed on another teacher "
                "(`kdbench run --retry-failed` retrains it on the new teacher)", path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("method"):
            self.method.load_state_dict(state["method"])
        self.epochs_done = state["epoch"]
        self.history = list(state["history"])
        self.wall_seconds = state.get("wall_seconds", 0.0)
        self.started_at = state.get("started_at", self.started_at)
        self.failure = Failure.from_json(state.get("failure"))
        self.partial = state.get("partial")
        self.sessions = list(state.get("sessions", []))
        self.nondeterministic_ops = list(state.get("nondeterministic_ops") or [])
        self.recorded_artifacts = dict((state.get("record") or {}).get("teacher_artifacts") or {})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def epoch_scalars(self) -> dict[str, float]:
        """The method's per-epoch scalars, as `method_<name>` metrics fields."""
        return {f"method_{k}": v for k, v in methods.epoch_scalars(self.method).items()}


def shard_loss(loss: Callable[..., dict[str, Tensor]], batch_statistics: bool, student: Any, teacher: Any,
               targets: Tensor, shares: tuple[int, ...], epoch: int,
               regions: tuple[Tensor, Tensor] | None = None) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """A method's terms on this process's share of a batch, their sum (what is recorded) and
    the loss to backpropagate. `student` and `teacher` are logits (dicts of them by view for
    a multi-view method), `regions` the student's and teacher's region logits of a method
    with `regions`; `shares` are the rows of every process's share, in rank order.

    With one share both losses are the method's own. Under DDP, whose average of the
    processes' gradients then equals the single-process gradient of the global batch:
    a method with `batch_statistics` sees the global batch (every process's logits and
    targets, gathered; the gather's backward sums each row's gradient over the processes,
    which DDP's average divides back). Any other method sees its share, and the loss it
    backpropagates is weighted by the share's size (`rows · processes / global rows`), since
    its terms are means over rows (the conformance suite checks) and shares may differ by one.
    """
    extra = {} if regions is None else dict(zip(methods.REGION_KWARGS, regions))
    if len(shares) > 1 and batch_statistics:
        extra = {key: _gathered(value, shares) for key, value in extra.items()}
        terms = loss(_gathered(student, shares), _gathered(teacher, shares), distributed.gather(targets, shares),
                     epoch=epoch, **extra)
        total = sum(terms.values())
        return terms, total, total
    terms = loss(student, teacher, targets, epoch=epoch, **extra)
    total = sum(terms.values())
    weight = len(targets) * len(shares) / sum(shares)
    return terms, total, total if weight == 1 else total * weight


def _gathered(logits: Any, shares: tuple[int, ...]) -> Any:
    if isinstance(logits, dict):
        return {view: _gathered(t, shares) for view, t in logits.items()}
    return distributed.gather(logits, shares) if logits.dim() else logits  # a 0-d placeholder: no teacher


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return None if old == new else (path or "<root>", old, new)
