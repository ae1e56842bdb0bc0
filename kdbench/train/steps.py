"""The training steps of one epoch of a cohort: the teacher's forward, then every member's step.

`EpochSteps` is what `kdbench.train.cohort` and `kdbench bench` call once per batch. It
applies the two speed options, neither of which changes what a member computes beyond
rounding (so neither is in run ids):

- `fuse_students` (`kdbench.train.fused`): members of one architecture step as one stacked
  model;
- `cuda_graphs` (`kdbench.train.graphs`): the whole step, teacher included, is captured as
  one CUDA graph and replayed.

A member's failure in a step is recorded through the cohort's `fail` callback, as without
either option; then the graph (if any) is captured again without it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from kdbench.grid.recipe import Options
from kdbench.train import distributed, fused, graphs
from kdbench.train.fused import FusedGroup
from kdbench.train.trainee import Trainee

#: The teacher's outputs for a batch: its logits by view, and (for members with region
#: logits) its region logits by scales.
TeacherFn = Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], dict[Any, Tensor]]]
#: Records a member's failure: (trainee, exception, step).
FailFn = Callable[[Trainee, BaseException, int], None]


class EpochSteps:
    """The step units (fused groups and members alone) of one epoch, stepped eagerly or as a graph.

    `options` hold a resolved precision. `fuse` and `graph` override the options' `auto`
    resolution (`kdbench bench` compares the modes).
    """

    def __init__(self, active: list[Trainee], *, epoch: int, device: torch.device, options: Options,
                 teacher: TeacherFn, fail: FailFn, fuse: bool | None = None, graph: bool | None = None,
                 backend: str | None = None):
        self.epoch, self.device, self.precision = epoch, device, options.precision
        self.teacher, self.record_failure = teacher, fail
        option = options.fuse_students if fuse is None else fuse
        self.units: list[Trainee | FusedGroup] = fused.form_groups(
            active, self.precision, backend, lambda arch: fused.enabled(option, device, arch))
        if graph is None:
            graph = graphs.enabled(options.cuda_graphs, device, self.precision, options.compile, distributed.active())
        self.graph = graphs.StepGraph(self._step, device) if graph else None
        self._step_number = 0

    @property
    def groups(self) -> list[FusedGroup]:
        """The fused groups of this epoch."""
        return [u for u in self.units if isinstance(u, FusedGroup)]

    def run(self, step: int, images: dict[str, Tensor], targets: Tensor, shares: tuple[int, ...] | None) -> None:
        """Step every live member on the batch (`step` is 1-based, `shares` as `Trainee.step` takes them)."""
        if self.graph is not None:
            self.graph(step, images, targets, shares)
        else:
            self._step(images, targets, step, False, shares)

    def _step(self, images: dict[str, Tensor], targets: Tensor, step: int | Tensor, capturing: bool,
              shares: tuple[int, ...] | None) -> None:
        teacher_logits, teacher_regions = self.teacher(images)
        self._step_number = step if isinstance(step, int) else self._step_number
        fail = None if capturing else self._failed
        for unit in self.units:
            if isinstance(unit, FusedGroup):
                unit.step(images, targets, teacher_logits, self.epoch, step, self.precision, shares, fail)
                continue
            if unit.failure is not None:
                continue
            if capturing:
                unit.step(images, targets, teacher_logits, self.epoch, step, self.precision, shares, teacher_regions)
                continue
            try:
                unit.step(images, targets, teacher_logits, self.epoch, step, self.precision, shares, teacher_regions)
            except Exception as exc:
                self._failed(unit, exc)

    def _failed(self, trainee: Trainee, exc: BaseException) -> None:
        self.record_failure(trainee, exc, self._step_number)
        if self.graph is not None:
            self.graph.invalidate()

    def sync(self) -> None:
        """Write each fused member's state into its own model and optimizer (before a checkpoint)."""
        for group in self.groups:
            group.sync()

    def finish(self) -> None:
        """The epoch's end: members hold their state, the graph is released."""
        self.sync()
        if self.graph is not None:
            self.graph.close()
