"""`options.fuse_students`: a cohort's members of one student architecture trained as one
stacked model (`kdbench.train.stacked`), each keeping its own math.

A fused group's step is each member's step, computed together:

- one forward of the stacked model per view gives every member's logits from the shared
  batch; member k's slice of every parameter and buffer is its own model, so its BatchNorm
  normalises with its own batch statistics and updates its own running statistics;
- each member's own method computes its loss on its own logits (its own hyper-parameters
  and learnable parameters, CTKD's θ, which stay in the member's own optimizer);
- one backward of the sum of the members' losses: d(Σ L_j)/d L_k = 1, and no operation of
  the stacked model mixes members, so member k's gradient is the one its loss alone gives;
- one SGD step over the stacked parameters, with the members' common LR, momentum and
  weight decay: SGD is elementwise, so each slice takes the step its member would, with its
  own momentum buffer (a slice of the stacked one).

So, up to the rounding of a grouped convolution instead of a dense one, a member trains as
it would alone (`tests/test_fused.py` checks 1e-10 in float64). Its `Trainee` keeps its
accumulators, and its modules and optimizer get the group's state at `sync` (end of epoch,
a stop, its failure), so that evaluation, checkpoints and resume see an ordinary member.

Failures stay a member's own: a method that raises fails that member (its state written
back as it was at the failing step) and drops it from the sum; a non-finite loss stays in
its slice (NaN · 0 never happens: no member reads another's values) until the epoch's end
records it as usual. Groups are formed anew each epoch from the members still training.
A forward or optimizer step of the stacked model that raises is every member's failure (each
would raise alone), and a backward that raises is retried member by member to find whose.

Members train alone (`fused_with` 1) where fusing would change their math or is not
supported: fp16 (each member's own gradient scaler skips its own steps), DDP, a method with
region logits (SDD), optimizer settings or views of their own, or a model `stacked` can't stack.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from kdbench import models
from kdbench.core.once import warn_once
from kdbench.train import distributed
from kdbench.train.precision import autocast
from kdbench.train.stacked import StackedModel, fusable_model
from kdbench.train.trainee import WEAK, Trainee, shard_loss

#: Where `fuse_students: auto` fuses: device type → the student architectures (canonical
#: names) measured faster fused there. Not on CPUs: docs/speed.md ("Fused students") measured
#: every convolution of resnet8x4 slower grouped than as 14 separate ones, and the fused cohort
#: slower. Not yet on GPUs: bench/gpu_check.sh measures it (docs/gpu.md).
AUTO: dict[str, frozenset[str]] = {}

#: What a failed member's callback gets: the trainee and the exception.
Fail = Callable[[Trainee, BaseException], None]


def enabled(option: bool | str, device: torch.device, arch: str) -> bool:
    """Whether `fuse_students` (`auto`, true or false) fuses students of `arch` on `device`."""
    if option == "auto":
        return models.canonical(arch) in AUTO.get(device.type, frozenset())
    return bool(option)


def alone_reason(trainee: Trainee, precision: str) -> str | None:
    """Why `trainee` can't join a fused group (None: it can)."""
    if trainee.failure is not None:
        return "failed"
    if trainee.scaler is not None or precision == "fp16":
        return "fp16 (its own gradient scaler)"
    if distributed.active():
        return "DDP"
    if getattr(trainee, "region_scales", None) is not None:
        return "region logits"
    return fusable_model(trainee.model)


def group_key(trainee: Trainee) -> tuple[Any, ...]:
    """Members with equal keys fuse: the architecture, the views and the optimizer's settings this
    epoch (LR, momentum, weight decay, …)."""
    settings = {k: v for k, v in trainee.optimizer.param_groups[0].items() if k not in ("params", "initial_lr")}
    return trainee.member.student, trainee.views, tuple(sorted((k, repr(v)) for k, v in settings.items()))


def form_groups(trainees: list[Trainee], precision: str, backend: str | None = None,
                fuse: Callable[[str], bool] = lambda arch: True) -> list[Trainee | "FusedGroup"]:
    """The cohort's step units: fused groups of two or more members (of the architectures `fuse`
    accepts), and members alone, in the order of each unit's first member. Sets every
    member's `fused_with`."""
    buckets: dict[tuple[Any, ...], list[Trainee]] = {}
    units: list[Any] = []
    for trainee in trainees:
        trainee.fused_with = 1
        if not fuse(trainee.member.student) or alone_reason(trainee, precision) is not None:
            units.append(trainee)
            continue
        key = group_key(trainee)
        if key not in buckets:
            buckets[key] = []
            units.append(key)
        buckets[key].append(trainee)
    out: list[Trainee | FusedGroup] = []
    for unit in units:
        if isinstance(unit, Trainee):
            out.append(unit)
            continue
        members = buckets[unit]
        group = FusedGroup.build(members, backend) if len(members) > 1 else None
        out.extend([group] if group is not None else members)
    return out


class FusedGroup:
    """Members of one architecture, views and optimizer settings, stepped as one stacked model."""

    def __init__(self, members: list[Trainee], stack: StackedModel, optimizer: torch.optim.Optimizer):
        self.members, self.stack, self.optimizer = members, stack, optimizer
        self.views = members[0].views
        self.device = members[0].device
        self.synced: set[int] = set()  # members whose state was written back when they failed
        # Members with learnable loss parameters (CTKD's θ) step them with their own optimizer,
        # whose model parameters get no gradient here and so are left alone.
        self.own_steps = [t for t in members if t.method_params]
        for t in members:
            t.fused_with = len(members)

    @classmethod
    def build(cls, members: list[Trainee], backend: str | None = None) -> "FusedGroup | None":
        """The group, its stacked model and optimizer from the members' state; None (with one
        warning) where the members' optimizer states can't be stacked."""
        names = [n for n, _ in members[0].model.named_parameters()]
        buffers: dict[str, list[Tensor | None]] = {}
        for t in members:
            params = dict(t.model.named_parameters())
            for n in names:
                buffers.setdefault(n, []).append(t.optimizer.state.get(params[n], {}).get("momentum_buffer"))
        if any(len({b is not None for b in bufs}) > 1 for bufs in buffers.values()):
            warn_once(f"members of {members[0].member.student} have momentum buffers in some states and not others; "
                      "they train unfused")
            return None
        stack = StackedModel([t.model for t in members], backend)
        settings = {k: v for k, v in members[0].optimizer.param_groups[0].items() if k not in ("params", "initial_lr")}
        settings["fused"] = None  # only fp16's members (never fused) use the fused kernel
        optimizer = torch.optim.SGD(stack.parameters(), **settings)
        with torch.no_grad():
            for n, stacked in stack.params.items():
                if buffers[n][0] is not None:
                    optimizer.state[stacked]["momentum_buffer"] = torch.stack(buffers[n])  # type: ignore[arg-type]
        return cls(members, stack, optimizer)

    @property
    def label(self) -> str:
        return f"{len(self.members)} × {self.members[0].member.student} ({self.stack.backend})"

    def live(self) -> list[int]:
        """Indices of the members still training."""
        return [k for k, t in enumerate(self.members) if t.failure is None]

    def step(self, images: dict[str, Tensor], targets: Tensor, teacher_logits: dict[str, Tensor], epoch: int,
             step: int | Tensor, precision: str, shares: tuple[int, ...] | None, fail: Fail | None) -> None:
        """One SGD step of every live member on the batch. `fail(trainee, exc)` records a member's
        failure; without it (a CUDA graph's capture) exceptions propagate."""
        live = self.live()
        if not live:
            return
        try:
            with autocast(self.device, precision):
                stacked = {view: self.stack(images[view]) for view in self.views}
        except Exception as exc:
            self._fail_all(live, exc, fail)
            return
        done: list[tuple[int, Tensor, Tensor, Tensor]] = []
        for k in live:
            trainee = self.members[k]
            logits = {view: stacked[view][k] for view in self.views}
            try:
                values, loss, backprop = member_terms(trainee, logits, teacher_logits, targets, epoch, shares)
            except Exception as exc:
                if fail is None:
                    raise
                self._fail_one(k, exc, fail)
                continue
            done.append((k, values, loss, backprop))
        if not done:
            return
        self.optimizer.zero_grad(set_to_none=True)
        for trainee in self.own_steps:
            trainee.optimizer.zero_grad(set_to_none=True)
        total = done[0][3]
        for _, _, _, backprop in done[1:]:
            total = total + backprop
        try:
            # Kept in eager steps only, to find whose backward raised if one does.
            total.backward(retain_graph=fail is not None)
        except Exception as exc:
            if fail is None:
                raise
            done = self._blame_backward(done, exc, fail)
            if not done:
                return
        try:
            self.optimizer.step()
            for trainee in self.own_steps:
                if trainee.failure is None:
                    trainee.optimizer_step()
        except Exception as exc:
            self._fail_all([k for k, *_ in done], exc, fail)
            return
        for k, values, loss, _ in done:
            self.members[k].accumulate(loss, values, stacked[WEAK][k], targets, step)

    def _blame_backward(self, done: list[tuple[int, Tensor, Tensor, Tensor]], exc: BaseException,
                        fail: Fail) -> list[tuple[int, Tensor, Tensor, Tensor]]:
        """The joint backward raised: run each member's own, failing those that raise."""
        self.optimizer.zero_grad(set_to_none=True)
        for trainee in self.own_steps:
            trainee.optimizer.zero_grad(set_to_none=True)
        kept = []
        for entry in done:
            try:
                entry[3].backward(retain_graph=True)
                kept.append(entry)
            except Exception as own:  # noqa: BLE001 -- this member's backward raises: its failure
                self._fail_one(entry[0], own, fail)
        if len(kept) == len(done):  # nobody's alone: the joint backward itself failed
            self._fail_all([k for k, *_ in done], exc, fail)
            return []
        return kept

    def _fail_one(self, k: int, exc: BaseException, fail: Fail) -> None:
        self.stack.write_to(k, self.members[k].model)
        self._write_momentum(k)
        self.synced.add(k)
        fail(self.members[k], exc)

    def _fail_all(self, ks: list[int], exc: BaseException, fail: Fail | None) -> None:
        if fail is None:
            raise exc
        for k in ks:
            self._fail_one(k, exc, fail)

    def _write_momentum(self, k: int) -> None:
        trainee = self.members[k]
        params = dict(trainee.model.named_parameters())
        with torch.no_grad():
            for name, stacked in self.stack.params.items():
                buffer = self.optimizer.state.get(stacked, {}).get("momentum_buffer")
                if buffer is not None:
                    own = trainee.optimizer.state[params[name]]
                    if own.get("momentum_buffer") is None:
                        own["momentum_buffer"] = torch.empty_like(params[name])
                    own["momentum_buffer"].copy_(buffer[k])

    def sync(self) -> None:
        """Write each live member's slice (weights, BN statistics, momentum) into its own model and
        optimizer: what evaluation, checkpoints and a later unfused step read."""
        for k in range(len(self.members)):
            if k not in self.synced:
                self.stack.write_to(k, self.members[k].model)
                self._write_momentum(k)


def member_terms(trainee: Trainee, logits: dict[str, Tensor], teacher_logits: dict[str, Tensor], targets: Tensor,
                 epoch: int, shares: tuple[int, ...] | None) -> tuple[Tensor, Tensor, Tensor]:
    """A member's (terms stacked, loss, loss to backpropagate) from its logits, as `Trainee.step`
    computes them (the method in float32 outside autocast, an empty teacher where none ran)."""
    with torch.autocast(trainee.device.type, enabled=False):
        student, teacher = trainee.method_inputs(logits, teacher_logits)
        terms, loss, backprop = shard_loss(trainee.loss, trainee.batch_statistics, student, teacher, targets,
                                           shares or (len(targets),), epoch)
    if trainee.term_names is None:
        trainee.term_names = list(terms)
    return torch.stack([v.detach().float() for v in terms.values()]), loss, backprop
