"""Cohort training: one teacher forward per batch and view serves every student of the cohort.

A cohort is a teacher (or none) plus members that share the dataset, the seed, the epochs
and the batch size, and therefore see identical batches in the same order. Each member has
its own student, method, optimizer and LR schedule. Metrics accumulate on the device and
are read once per epoch; each member is checkpointed after every epoch, and a killed
cohort resumes from its last finished epoch with bitwise-identical results on the CPU.

A member's failure is that member's alone: a non-finite loss, or an exception raised while
building, resuming, stepping or evaluating it, stops that member with a recorded failure
(the traceback in its `error.log`) and the others go on unchanged. Faults that are not one
member's (the teacher, out of memory, a poisoned CUDA context) raise `CohortFault`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from kdbench import models
from kdbench.train import artifacts, distributed
from kdbench.runs import records
from kdbench.train.record_writer import CohortWriter
from kdbench.train.steps import EpochSteps
from kdbench.train.compiling import Compiled
from kdbench.data.loaders import require_strong_view
from kdbench.errors import KdbenchError
from kdbench.train.evaluation import TeacherPredictions, evaluate, teacher_predictions
from kdbench.runs.faults import CohortFault, StorageFault, is_cohort_fault, reraise_for_debugging
from kdbench.train.precision import autocast, check as check_precision, resolve as resolve_precision
from kdbench.train.progress import Reporter, SilentReporter
from kdbench.runs.environment import environment
from kdbench.train.determinism import NondeterminismRecorder, set_deterministic
from kdbench.grid.recipe import Options
from kdbench.models.regions import require_poolable
from kdbench.runs.records import Failure, Status, now_iso
from kdbench.train.trainee import STRONG, WEAK, CohortSpec, Member, MemberResult, Trainee, build_method, build_student


class TrainingInterrupted(Exception):
    """Raised after a stop request: every member was checkpointed mid-epoch."""


def build_data(dataset: dict[str, Any] | str, *, root: Path, device: torch.device | str, seed: int,
               batch_size: int, options: Options) -> Any:
    """The cohort's loaders. Under DDP, a loader that shards by itself (ImageNet's
    DistributedSampler) gets the per-process batch; the on-device loaders draw the global
    batch on every process and each process trains on its share of it."""
    from kdbench import data

    per_process = batch_size
    if distributed.active() and getattr(data.dataset_class(data.resolve_spec(dataset)["name"]), "shards_itself", False):
        if batch_size % distributed.world_size():
            raise KdbenchError(f"schedule.batch_size: {batch_size} does not split evenly over "
                               f"{distributed.world_size()} processes")
        per_process = batch_size // distributed.world_size()
    return data.build(dataset, root=root, device=device, seed=seed, batch_size=per_process,
                      eval_batch_size=options.eval_batch_size, channels_last=options.channels_last)


class _CohortTrainer:
    """Owns the loop of `train_cohort`; one instance per call."""

    def __init__(self, cohort: CohortSpec, device: torch.device, data: Any, reporter: Reporter,
                 should_stop: Callable[[], bool]):
        self.cohort, self.device, self.reporter, self.should_stop = cohort, device, reporter, should_stop
        check_precision(device, cohort.options.precision)
        # `auto` resolved once, for this device: everything below trains in a concrete precision.
        self.options = replace(cohort.options, precision=resolve_precision(device, cohort.options.precision))
        schedules = {(m.schedule.epochs, m.schedule.batch_size) for m in cohort.members}
        if len(schedules) != 1:
            raise ValueError(f"cohort members disagree on epochs/batch size: {sorted(schedules)}")
        (self.epochs, self.batch_size), = schedules
        set_deterministic(device, self.options.deterministic)
        self.recorder = NondeterminismRecorder() if self.options.deterministic else None
        self.data = data if data is not None else build_data(
            cohort.dataset, root=cohort.data_root, device=device, seed=cohort.seed, batch_size=self.batch_size,
            options=self.options)
        self.env = environment(device)
        self.writer = CohortWriter(cohort, self.data.name, device, self.env, self.epochs, self.recorder,
                                   self.options.precision)
        self.memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        self.teacher: nn.Module | None = None
        self.teacher_forward: Compiled | None = None
        self.teacher_regions: Compiled | None = None
        self.teacher_predictions: TeacherPredictions | None = None
        self._load_teacher()
        self.trainees = [self._prepare(m) for m in cohort.members]
        artifacts.hand_over([t for t in self.trainees if t.failure is None and t.epochs_done < self.epochs],
                            self.teacher, cohort.teacher, cohort.teacher_sha256, cohort.artifact_dir, self.data,
                            self.options.eval_batch_size,
                            lambda t, exc, stage: self._fail(t, exc, t.epochs_done + 1, None, stage))

    # ----- set-up -------------------------------------------------------------------
    def _load_teacher(self) -> None:
        ref = self.cohort.teacher
        if ref is None:
            return
        try:
            if self.cohort.teacher_model is not None:
                teacher = self.cohort.teacher_model
            else:
                teacher = models.load_teacher(ref.arch, ref.path if ref.path is not None else "torchvision",
                                              num_classes=self.data.num_classes, in_channels=self.data.in_channels)
            self.teacher = teacher.to(self.device, memory_format=self.memory_format).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.teacher_forward = Compiled(self.teacher, self.options.compile, "teacher's forward")
            test = self.data.test
            # One pass for the teacher's predictions and correctness, reused by every member's evaluation.
            self.teacher_predictions = teacher_predictions(self.teacher, test, self.device, self.options.precision,
                                                           num_samples=test.num_samples)
            self.writer.teacher_top1 = evaluate(self.teacher, test, self.device, self.options.precision)["top1"]
        except Exception as exc:
            reraise_for_debugging()
            raise CohortFault(f"teacher {ref.label}: {records.exception_reason(exc)}") from exc

    def _prepare(self, member: Member) -> Trainee:
        model = build_student(member.student, self.cohort.seed, self.data.num_classes, self.data.in_channels)
        model = model.to(self.device, memory_format=self.memory_format).train()
        try:
            method = build_method(member.method, member.hparams, self.cohort.seed).to(self.device)
        except Exception as exc:
            method = nn.Module()
            trainee = Trainee(member, model, method, self.device, self.options)
            self._fail(trainee, exc, epoch=1, step=None, stage="building its method")
            return trainee
        trainee = Trainee(member, model, method, self.device, self.options)
        try:
            self._check_views(trainee)
            self._resume(trainee)
        except Exception as exc:
            self._fail(trainee, exc, epoch=trainee.epochs_done + 1, step=None, stage="resuming")
        return trainee

    def _check_views(self, trainee: Trainee) -> None:
        for view in trainee.views:
            if view == STRONG:
                require_strong_view(self.data.train, dataset=self.data.name, method=trainee.member.method)
            elif view != WEAK:
                raise KdbenchError(f"method {trainee.member.method}: unknown view '{view}'; views are {WEAK}, {STRONG}")
        if trainee.region_scales is not None:
            ref = self.cohort.teacher
            archs = {"student": trainee.member.student, **({"teacher": ref.arch} if ref else {})}
            require_poolable(f"{ref.arch if ref else ''}->{trainee.member.student}", trainee.member.method,
                             trainee.region_scales, archs, self.data.in_channels, self.data.image_size)

    def _resume(self, trainee: Trainee) -> None:
        path = self.writer.checkpoint_path(trainee)
        if path is None or not path.exists():
            return
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise records.RecordError(f"cannot read the checkpoint ({records.exception_reason(exc)}); "
                                      "`kdbench run --retry-failed` starts this run again", path) from None
        trainee.restore(state, path, self.cohort.teacher_sha256, self.cohort.teacher)

    # ----- failures -----------------------------------------------------------------
    def _fail(self, trainee: Trainee, exc: BaseException, epoch: int, step: int | None, stage: str) -> None:
        """Record `exc` as this member's failure (its traceback in error.log); the others go on.

        Cohort-level faults propagate. Under DDP a member's collectives can't be skipped on
        one process, so the cohort stops (`CohortFault`) once the failure is recorded.
        """
        reraise_for_debugging()
        if is_cohort_fault(exc):
            raise CohortFault(records.exception_reason(exc)) from exc
        reason = records.exception_reason(exc) if not isinstance(exc, (KdbenchError, records.RecordError)) else str(exc)
        where = f"run {trainee.run_id}, epoch {epoch}" + (f", step {step}" if step else "") + f": {stage}"
        self.writer.fail(trainee, Failure(reason=reason, epoch=epoch, step=step), exc, where)
        if distributed.active():
            raise CohortFault(f"run {trainee.run_id} failed under DDP ({reason}); the cohort stops") from exc

    # ----- the loop ------------------------------------------------------------------
    def run(self, until_epoch: int | None) -> list[MemberResult]:
        active = [t for t in self.trainees if t.failure is None and t.epochs_done < self.epochs]
        # Lock-step needs a common start. Members ahead (killed between two members'
        # checkpoints) wait for the next call, which resumes them on their own.
        start = min((t.epochs_done for t in active), default=self.epochs)
        active = [t for t in active if t.epochs_done == start]
        last = self.epochs if until_epoch is None else min(self.epochs, until_epoch)
        self.reporter.cohort_started([t.member for t in self.trainees], self.epochs, start, len(self.data.train),
                                     self.batch_size * len(active))
        for trainee in active:
            # Who trained which epochs: a resumed run shows one session per (re)start.
            trainee.sessions.append({"host": self.env["hostname"], "pid": os.getpid(), "started_at": now_iso(),
                                     "start_epoch": trainee.epochs_done, "precision": self.options.precision})
            self.writer.write(trainee, Status.RUNNING)
            self.writer.open_sinks(trainee)
        try:
            with self.recorder or contextlib.nullcontext():
                for epoch in range(start + 1, last + 1):
                    active = [t for t in active if t.failure is None]
                    if not active:
                        break
                    self._train_epoch(epoch, active)
        finally:
            self.writer.close_sinks()
        return [self._result(t) for t in self.trainees]

    def _views(self, active: list[Trainee]) -> tuple[list[str], list[str]]:
        """The views the students need, and those the teacher must see."""
        student = list(dict.fromkeys(v for t in active for v in t.views))
        teacher = [] if self.teacher is None else list(dict.fromkeys(
            v for t in active if t.needs_teacher for v in t.views))
        return student, teacher

    def _batches(self, epoch: int, skip: int, views: list[str],
                 ) -> Iterator[tuple[int, dict[str, Tensor], Tensor, tuple[int, ...]]]:
        """(step, images by view, targets, shares) for the epoch's batches after the first `skip`:
        this process's share of each batch, and the rows of every process's share."""
        train = self.data.train
        if getattr(train, "shards_itself", False):  # a streaming loader (ImageNet): the weak view only
            # Its DistributedSampler pads the data so that every process's batches are alike in size.
            for step, (images, targets, _) in enumerate(train_batches(train, epoch, skip), start=skip + 1):
                yield step, {WEAK: images}, targets, (len(targets),) * distributed.world_size()
            return
        # The strong view is made for this process's share of each batch only.
        share = (distributed.rank(), distributed.world_size()) if distributed.active() else None
        strong = train.strong_batches(epoch, skip, shard=share) if STRONG in views else None
        for step, batch in enumerate(train_batches(train, epoch, skip), start=skip + 1):
            images, targets, _ = distributed.shard(batch)
            views_of_batch = {WEAK: images}
            if strong is not None:
                views_of_batch[STRONG] = next(strong)
            yield step, views_of_batch, targets, distributed.share_sizes(len(batch[1]))

    def _train_epoch(self, epoch: int, active: list[Trainee]) -> None:
        lrs = {t.run_id: t.set_epoch_lr(epoch) for t in active}
        skip = 0
        partial = {t.run_id: t.partial for t in active if t.partial and t.partial["epoch"] == epoch}
        for t in active:
            t.reset_accumulators()
            if t.run_id in partial:
                t.load_accumulators(partial[t.run_id]["accumulators"])
                skip = partial[t.run_id]["step"]
            t.partial = None
        train_seconds = sum(p["train_seconds"] for p in partial.values()) / max(len(partial), 1)
        started = time.perf_counter()
        precision = self.options.precision
        student_views, teacher_views = self._views(active)
        # Members with `regions` get the teacher's region logits at their scales, from its one forward.
        scale_lists = tuple(dict.fromkeys(t.region_scales for t in active if t.region_scales and t.needs_teacher))
        if scale_lists and self.teacher_regions is None and self.teacher is not None:
            self.teacher_regions = Compiled(models.RegionForward(self.teacher), self.options.compile,
                                            "teacher's forward with region logits")

        def teacher(images: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[tuple[int, ...], Tensor]]:
            teacher_logits: dict[str, Tensor] = {}
            teacher_regions: dict[tuple[int, ...], Tensor] = {}
            for view in teacher_views:
                with torch.no_grad(), autocast(self.device, precision):
                    if view == WEAK and scale_lists:
                        teacher_logits[view], regions = self.teacher_regions(images[view], scale_lists)
                        teacher_regions = dict(zip(scale_lists, regions))
                    else:
                        teacher_logits[view] = self.teacher_forward(images[view])
            return teacher_logits, teacher_regions

        # Each member's step, fused and captured as a CUDA graph where options.fuse_students/cuda_graphs say.
        steps = EpochSteps(active, epoch=epoch, device=self.device, options=self.options, teacher=teacher,
                           fail=lambda trainee, exc, step: self._fail(trainee, exc, epoch, step, "training step"))
        for step, images, targets, shares in self._batches(epoch, skip, student_views):
            steps.run(step, images, targets, shares)
            self.reporter.step_done(epoch, step)
            if self._stop_requested(step):
                steps.finish()  # fused members' state into their own models and optimizers
                elapsed = train_seconds + time.perf_counter() - started
                for trainee in active:
                    if trainee.failure is None:
                        self.writer.save_partial(trainee, {
                            "epoch": epoch, "step": step, "train_seconds": elapsed,
                            "accumulators": trainee.accumulators()})
                raise TrainingInterrupted(f"stopped at epoch {epoch}, step {step}; progress saved")
        steps.finish()
        train_seconds += time.perf_counter() - started
        self._finish_epoch(epoch, [t for t in active if t.failure is None], lrs, train_seconds, started)

    def _stop_requested(self, step: int) -> bool:
        if not distributed.active():
            return self.should_stop()
        if step % 20:  # under DDP every process must stop at the same step: agree every 20 steps
            return False
        flag = torch.tensor([float(self.should_stop())], device=self.device)
        return bool(distributed.all_reduce(flag, "max").item())

    def _finish_epoch(self, epoch: int, active: list[Trainee], lrs: dict[str, float], train_seconds: float,
                      started: float) -> None:
        num_images = self.data.train_size
        steps = len(self.data.train)
        rows = {}
        world = distributed.world_size()
        # One host sync per member for the training accumulators (summed over DDP processes).
        for trainee in active:
            totals = distributed.all_reduce(torch.stack([trainee.loss_sum.double(), trainee.correct.double()]))
            first_bad_step = distributed.all_reduce(trainee.first_bad_step.clone(), "max")
            if trainee.term_sums is not None:
                distributed.all_reduce(trainee.term_sums).div_(world)  # each process's means, averaged like the loss
            loss_sum, correct, first_bad = torch.cat([totals / torch.tensor([world, 1.0], device=totals.device),
                                                      first_bad_step.double()[None]]).tolist()
            if first_bad >= 0:
                trainee.wall_seconds += time.perf_counter() - started
                failure = Failure(reason="non-finite loss", epoch=epoch, step=int(first_bad),
                                  terms=dict(zip(trainee.term_names, trainee.bad_terms.tolist())))
                self.writer.fail(trainee, failure, None,
                                 f"run {trainee.run_id}, epoch {epoch}, step {int(first_bad)}: the loss is not finite")
                continue
            row: dict[str, Any] = {"epoch": epoch, "lr": lrs[trainee.run_id],
                                   "train_loss": loss_sum / steps, "train_top1": 100.0 * correct / num_images}
            for name, value in zip(trainee.term_names, trainee.term_sums.tolist()):
                row[f"loss_{name}"] = value / steps
            try:
                row.update(trainee.epoch_scalars())
                test = evaluate(trainee.model, self.data.test, self.device, self.options.precision,
                                self.teacher_predictions)
                row.update({f"test_{k}": v for k, v in test.items()})
                if self.data.val is not None:
                    val = evaluate(trainee.model, self.data.val, self.device, self.options.precision)
                    row.update({f"val_{k}": v for k, v in val.items()})
            except Exception as exc:
                self._fail(trainee, exc, epoch, None, "evaluation")
                continue
            rows[trainee.run_id] = row
        epoch_seconds = time.perf_counter() - started
        for trainee in active:
            if trainee.failure is not None:
                continue  # recorded when it failed
            trainee.wall_seconds += epoch_seconds
            trainee.epochs_done = epoch
            row = rows[trainee.run_id]
            row["epoch_seconds"] = epoch_seconds
            row["images_per_s"] = num_images / train_seconds if train_seconds > 0 else None
            trainee.history.append(row)
            self.writer.epoch_done(trainee, Status.DONE if epoch == self.epochs else Status.RUNNING, row)
        self.reporter.epoch_done(epoch, rows)

    def _result(self, trainee: Trainee) -> MemberResult:
        if trainee.failure is not None:
            status = Status.FAILED
        else:
            status = Status.DONE if trainee.epochs_done >= self.epochs else Status.RUNNING
        return MemberResult(trainee.run_id, status, trainee.epochs_done, self.writer.summary(trainee, status),
                            trainee.history, trainee.model)


def train_batches(loader: Any, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The batches of `epoch`, without the first `skip` (already trained before a stop)."""
    for step, batch in enumerate(loader.epoch(epoch)):
        if step >= skip:
            yield batch


def train_cohort(
    cohort: CohortSpec,
    device: str | torch.device,
    *,
    data: Any = None,
    reporter: Reporter | None = None,
    until_epoch: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[MemberResult]:
    """Train every member of `cohort` to its last epoch, resuming from checkpoints.

    Each step draws one batch from the on-device pipeline, runs the teacher once per view
    under `no_grad` in eval mode, then each member's forward, loss terms, backward and
    step. After each epoch every member is evaluated and checkpointed. A member whose loss
    turns non-finite, or whose method raises, is stopped and recorded as failed; the others
    go on. A fault that is not one member's raises `CohortFault`.

    `data` is a prebuilt `DataSplits` (else built from the cohort's dataset), `until_epoch`
    stops early after that epoch (as a kill would), and `should_stop` is polled between
    steps: when it returns True every member is checkpointed mid-epoch and
    `TrainingInterrupted` is raised.
    """
    device = torch.device(device)
    trainer = None
    try:
        trainer = _CohortTrainer(cohort, device, data, reporter or SilentReporter(), should_stop or (lambda: False))
        return trainer.run(until_epoch)
    except (TrainingInterrupted, CohortFault, StorageFault):
        raise
    except Exception as exc:  # outside any member: the data, the device, the harness itself
        reraise_for_debugging()
        reason = str(exc) if isinstance(exc, KdbenchError) else records.exception_reason(exc)
        raise CohortFault(reason) from exc
    finally:
        if data is None and trainer is not None:
            close_data(trainer.data)  # data it built itself: stop the strong view's workers


def close_data(splits: Any) -> None:
    """Stop the background workers of a dataset's loaders (the strong view's), if any."""
    close = getattr(getattr(splits, "train", None), "close", None)
    if close is not None:
        close()

