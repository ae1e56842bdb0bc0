"""Cohort training: one teacher forward per batch serves every student of the cohort.

A cohort is a teacher (or none) plus members that share the dataset, the seed, the epochs
and the batch size, and therefore see identical batches in the same order. Each member has
its own student, method, optimizer and LR schedule. Metrics accumulate on the device and
are read once per epoch; each member is checkpointed after every epoch, and a killed
cohort resumes from its last finished epoch with bitwise-identical results on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import atomic, distributed, methods, models
from kdbench.errors import KdbenchError

@dataclass(frozen=True)
class Schedule:
    """SGD recipe of one member. Defaults are the reference CIFAR-100 recipe."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (150, 180, 210)
    lr_decay: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """LR of 1-based `epoch`: lr · lr_decay^(number of milestones < epoch)."""
        return self.lr * self.lr_decay ** sum(m < epoch for m in self.milestones)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Schedule":
        """A schedule from a resolved config mapping."""
        values = dict(values)
        values["milestones"] = tuple(values.get("milestones", cls.milestones))
        return cls(**values)


@dataclass(frozen=True)
class Options:
    """Speed options shared by a cohort."""

    precision: str = "fp32"  # fp32 or bf16 (autocast)
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 256


@dataclass
class Member:
    """One run of a cohort: a student trained with a method under its own schedule.

    `out_dir` receives checkpoint.pt, metrics.jsonl, summary.json and config.yaml (None
    keeps everything in memory). `config` is the resolved run config: resuming under a
    different one is refused. `record` holds extra summary fields (grid, pair, variant…).
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
class Cohort:
    """A teacher (or none) plus members sharing dataset, seed, epochs and batch size.

    The teacher is loaded from `teacher_path` (a checkpoint, or "torchvision"), or given
    ready-made as `teacher_model` (benchmarks, tests).
    """

    dataset: dict[str, Any] | str
    seed: int
    members: list[Member]
    teacher: str | None = None
    teacher_path: str | Path | None = None
    options: Options = field(default_factory=Options)
    data_root: Path = Path("data")
    teacher_model: nn.Module | None = None


@dataclass
class MemberResult:
    """What `train_cohort` returns per member."""

    run_id: str
    status: str  # done, failed or running (stopped early)
    epochs_done: int
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module


class TrainingInterrupted(Exception):
    """Raised after a stop request: every member was checkpointed mid-epoch."""


class Reporter(Protocol):
    """Progress callbacks; the runner draws bars or prints lines from them."""

    def cohort_started(self, members: list[Member], epochs: int, start_epoch: int, steps_per_epoch: int,
                       batch_size: int) -> None: ...
    def step_done(self, epoch: int, step: int) -> None: ...
    def epoch_done(self, epoch: int, rows: dict[str, dict[str, Any]]) -> None: ...


class _SilentReporter:
    def cohort_started(self, members, epochs, start_epoch, steps_per_epoch, batch_size) -> None:
        pass

    def step_done(self, epoch, step) -> None:
        pass

    def epoch_done(self, epoch, rows) -> None:
        pass


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


def init_seed(seed: int, arch: str) -> int:
    """Seed for a student's initial weights: the same (seed, arch) gives the same weights."""
    return int.from_bytes(hashlib.sha256(f"init:{seed}:{arch}".encode()).digest()[:8], "little") & (2**63 - 1)


def build_student(arch: str, seed: int, num_classes: int, in_channels: int) -> nn.Module:
    """A student initialised from a generator seeded by (seed, arch), untouched global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, models.canonical(arch)))
        return models.build(arch, num_classes=num_classes, in_channels=in_channels)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `precision == "bf16"`, otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise KdbenchError(f"options.precision: expected fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


class _Trainee:
    """A member's live state: model, method, optimizer and on-device accumulators."""

    def __init__(self, member: Member, model: nn.Module, method: nn.Module, device: torch.device, options: Options):
        self.member = member
        self.model = model
        self.method = method
        params = list(model.parameters()) + list(method.parameters())
        self.optimizer = torch.optim.SGD(
            params, lr=member.schedule.lr, momentum=member.schedule.momentum,
            weight_decay=member.schedule.weight_decay,
        )
        self.forward: Callable[[Tensor], Tensor] = distributed.wrap(model, device)
        self.compile_pending = options.compile
        self.device = device
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0
        self.failure: dict[str, Any] | None = None
        self.term_names: list[str] | None = None
        self.reset_accumulators()

    def reset_accumulators(self) -> None:
        zero = torch.zeros((), device=self.device)
        self.loss_sum = zero.clone()
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.term_sums: Tensor | None = None
        # Step (1-based) of the first non-finite loss this epoch, -1 if none, and its terms.
        self.first_bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        self.bad_terms: Tensor | None = None

    def accumulators(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum, "correct": self.correct, "term_sums": self.term_sums,
            "first_bad_step": self.first_bad_step, "bad_terms": self.bad_terms, "term_names": self.term_names,
        }

    def load_accumulators(self, state: dict[str, Any]) -> None:
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        self.loss_sum, self.correct = move(state["loss_sum"]), move(state["correct"])
        self.term_sums, self.first_bad_step = move(state["term_sums"]), move(state["first_bad_step"])
        self.bad_terms, self.term_names = move(state["bad_terms"]), state["term_names"]

    def set_epoch_lr(self, epoch: int) -> float:
        lr = self.member.schedule.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, images: Tensor, targets: Tensor, teacher_logits: Tensor, epoch: int, step: int,
             precision: str) -> None:
        with autocast(self.device, precision):
            logits = self._forward(images)
        with torch.autocast(self.device.type, enabled=False):
            terms = self.method(logits.float(), teacher_logits.float(), targets, epoch=epoch)
        if self.term_names is None:
            self.term_names = list(terms)
        values = torch.stack([v.detach().float() for v in terms.values()])
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        # Everything below stays on the device: no host sync in the step.
        detached = loss.detach().float()
        self.loss_sum += detached
        self.correct += (logits.detach().argmax(dim=1) == targets).sum()
        self.term_sums = values if self.term_sums is None else self.term_sums + values
        first_bad = (~torch.isfinite(detached)) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(first_bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.bad_terms = values if self.bad_terms is None else torch.where(first_bad, values, self.bad_terms)

    def _forward(self, images: Tensor) -> Tensor:
        if self.compile_pending:
            self.compile_pending = False
            try:
                compiled = torch.compile(self.forward)
                logits = compiled(images)
                self.forward = compiled
                return logits
            except Exception as exc:  # compile support varies by platform; eager is always correct
                _warn_once(f"torch.compile is unavailable here ({type(exc).__name__}); training eagerly")
        return self.forward(images)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, precision: str,
             teacher_correct: Tensor | None = None) -> dict[str, float]:
    """Test loss, top-1 and top-5 (percent) of `model` over `loader`, read once at the end.

    With `teacher_correct` (a bool per sample index), also the top-1 on the samples the
    teacher gets wrong and on those it gets right.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    # top-1 hits, top-5 hits, samples; hits and samples where the teacher is wrong, then right
    counts = torch.zeros(7, device=device, dtype=torch.long)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = top[:, 0] == targets
        counts[0] += hit1.sum()
        counts[1] += (top == targets[:, None]).any(dim=1).sum()
        counts[2] += targets.numel()
        if teacher_correct is not None:
            right = teacher_correct[indices]
            counts[3:] += torch.stack([(hit1 & ~right).sum(), (~right).sum(), (hit1 & right).sum(), right.sum()])
    model.train(was_training)
    top1, top5, n, wrong_hits, wrong_n, right_hits, right_n = counts.tolist()
    n = max(n, 1)
    result = {"loss": loss_sum.item() / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}
    if teacher_correct is not None:
        result["top1_teacher_wrong"] = 100.0 * wrong_hits / wrong_n if wrong_n else None
        result["top1_teacher_right"] = 100.0 * right_hits / right_n if right_n else None
    return result


@torch.no_grad()
def teacher_correctness(teacher: nn.Module, loader: Any, device: torch.device, precision: str,
                        num_samples: int) -> Tensor:
    """A bool per test-sample index: does the teacher classify it correctly?"""
    correct = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for images, targets, indices in loader:
        with autocast(device, precision):
            logits = teacher(images)
        correct[indices] = logits.float().argmax(dim=1) == targets
    return correct


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, recorded in every summary."""
    import platform
    import socket
    import subprocess

    from kdbench import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name() or platform.machine()
    return {
        "kdbench": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "device_name": device_name, "git_commit": commit, "python": platform.python_version(),
        "hostname": socket.gethostname(), "threads": torch.get_num_threads(),
    }


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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


class _CohortTrainer:
    """Owns the loop of `train_cohort`; one instance per call."""

    def __init__(self, cohort: Cohort, device: torch.device, data: Any, reporter: Reporter,
                 should_stop: Callable[[], bool]):
        self.cohort, self.device, self.reporter, self.should_stop = cohort, device, reporter, should_stop
        self.options = cohort.options
        schedules = {(m.schedule.epochs, m.schedule.batch_size) for m in cohort.members}
        if len(schedules) != 1:
            raise ValueError(f"cohort members disagree on epochs/batch size: {sorted(schedules)}")
        (self.epochs, self.batch_size), = schedules
        self.data = data if data is not None else self._build_data()
        self.env = environment(device)
        self.memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        self._load_teacher()
        self.trainees = [self._prepare(m) for m in cohort.members]

    # ----- set-up -------------------------------------------------------------------
    def _build_data(self) -> Any:
        return build_data(self.cohort.dataset, root=self.cohort.data_root, device=self.device, seed=self.cohort.seed,
                          batch_size=self.batch_size, options=self.options)

    def _load_teacher(self) -> None:
        self.teacher: nn.Module | None = None
        self.teacher_sha256 = None
        self.teacher_top1 = None
        self.teacher_correct = None
        if self.cohort.teacher is None:
            return
        if self.cohort.teacher_model is not None:
            teacher = self.cohort.teacher_model
        else:
            teacher = models.load_teacher(
                self.cohort.teacher, self.cohort.teacher_path, num_classes=self.data.num_classes,
                in_channels=self.data.in_channels,
            )
            if Path(str(self.cohort.teacher_path)).is_file():
                self.teacher_sha256 = models.sha256_file(self.cohort.teacher_path)
        self.teacher = teacher.to(self.device, memory_format=self.memory_format).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        test = self.data.test
        self.teacher_correct = teacher_correctness(
            self.teacher, test, self.device, self.options.precision, num_samples=test.num_samples
        )
        self.teacher_top1 = evaluate(self.teacher, test, self.device, self.options.precision)["top1"]

    def _prepare(self, member: Member) -> _Trainee:
        model = build_student(member.student, self.cohort.seed, self.data.num_classes, self.data.in_channels)
        model = model.to(self.device, memory_format=self.memory_format).train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(self.cohort.seed, f"method:{member.method}"))
            method = methods.build(member.method, **member.hparams).to(self.device)
        trainee = _Trainee(member, model, method, self.device, self.options)
        trainee.started_at = _now()
        trainee.epochs_done = 0
        trainee.partial = None
        trainee.sessions = []
        self._resume(trainee)
        return trainee

    def _checkpoint_path(self, member: Member) -> Path | None:
        return None if member.out_dir is None else Path(member.out_dir) / "checkpoint.pt"

    def _resume(self, trainee: _Trainee) -> None:
        path = self._checkpoint_path(trainee.member)
        if path is None or not path.exists():
            return
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise KdbenchError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); "
                               "delete the run folder to start it again") from None
        difference = _first_difference(state.get("config", {}), trainee.member.config)
        if difference:
            key, old, new = difference
            raise KdbenchError(f"{path}: cannot resume under a changed config: '{key}' was {old!r}, now {new!r}")
        trainee.model.load_state_dict(state["model"])
        trainee.optimizer.load_state_dict(state["optimizer"])
        if state.get("method"):
            trainee.method.load_state_dict(state["method"])
        trainee.epochs_done = state["epoch"]
        trainee.history = list(state["history"])
        trainee.wall_seconds = state.get("wall_seconds", 0.0)
        trainee.started_at = state.get("started_at", trainee.started_at)
        trainee.failure = state.get("failure")
        trainee.partial = state.get("partial")
        trainee.sessions = list(state.get("sessions", []))
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    # ----- the loop ------------------------------------------------------------------
    def run(self, until_epoch: int | None) -> list[MemberResult]:
        active = [t for t in self.trainees if t.failure is None and t.epochs_done < self.epochs]
        # Lock-step needs a common start. Members ahead (killed between two members'
        # checkpoints) wait for the next call, which resumes them on their own.
        start = min((t.epochs_done for t in active), default=self.epochs)
        active = [t for t in active if t.epochs_done == start]
        last = self.epochs if until_epoch is None else min(self.epochs, until_epoch)
        train = self.data.train
        self.reporter.cohort_started([t.member for t in self.trainees], self.epochs, start, len(train),
                                     self.batch_size * len(active))
        for trainee in active:
            # Who trained which epochs: a resumed run shows one session per (re)start.
            trainee.sessions.append({"host": self.env["hostname"], "pid": os.getpid(), "started_at": _now(),
                                     "start_epoch": trainee.epochs_done})
            self._write_records(trainee, status="running")
        need_teacher = self.teacher is not None and any(methods.needs_teacher(t.method) for t in active)
        for epoch in range(start + 1, last + 1):
            active = [t for t in active if t.failure is None]
            if not active:
                break
            self._train_epoch(epoch, active, need_teacher)
        return [self._result(t) for t in self.trainees]

    def _train_epoch(self, epoch: int, active: list[_Trainee], need_teacher: bool) -> None:
        lrs = {t.member.run_id: t.set_epoch_lr(epoch) for t in active}
        skip = 0
        partial = {t.member.run_id: t.partial for t in active if t.partial and t.partial["epoch"] == epoch}
        for t in active:
            t.reset_accumulators()
            if t.member.run_id in partial:
                t.load_accumulators(partial[t.member.run_id]["accumulators"])
                skip = partial[t.member.run_id]["step"]
            t.partial = None
        train_seconds = sum(p["train_seconds"] for p in partial.values()) / max(len(partial), 1)
        started = time.perf_counter()
        precision = self.options.precision
        images_seen = 0
        shards_itself = getattr(self.data.train, "shards_itself", False)
        for step, batch in enumerate(train_batches(self.data.train, epoch, skip), start=skip + 1):
            images, targets, _indices = batch if shards_itself else distributed.shard(batch)
            if need_teacher:
                with torch.no_grad(), autocast(self.device, precision):
                    teacher_logits = self.teacher(images)
            else:
                teacher_logits = images.new_zeros(())
            for trainee in active:
                trainee.step(images, targets, teacher_logits, epoch, step, precision)
            images_seen += targets.shape[0]
            self.reporter.step_done(epoch, step)
            if self._stop_requested(step):
                elapsed = train_seconds + time.perf_counter() - started
                for trainee in active:
                    self._save_partial(trainee, epoch, step, elapsed)
                raise TrainingInterrupted(f"stopped at epoch {epoch}, step {step}; progress saved")
        train_seconds += time.perf_counter() - started
        self._finish_epoch(epoch, active, lrs, train_seconds, started)

    def _stop_requested(self, step: int) -> bool:
        if not distributed.active():
            return self.should_stop()
        if step % 20:  # under DDP every process must stop at the same step: agree every 20 steps
            return False
        flag = torch.tensor([float(self.should_stop())], device=self.device)
        return bool(distributed.all_reduce(flag, "max").item())

    def _finish_epoch(self, epoch: int, active: list[_Trainee], lrs: dict[str, float], train_seconds: float,
                      started: float) -> None:
        num_images = self.data.train_size
        rows = {}
        world = distributed.world_size()
        # One host sync per member for the training accumulators (summed over DDP processes).
        for trainee in active:
            totals = distributed.all_reduce(torch.stack([trainee.loss_sum.double(), trainee.correct.double()]))
            first_bad_step = distributed.all_reduce(trainee.first_bad_step.clone(), "max")
            if trainee.term_sums is not None:
                distributed.all_reduce(trainee.term_sums)
            loss_sum, correct, first_bad = torch.cat([totals / torch.tensor([world, 1.0], device=totals.device),
                                                      first_bad_step.double()[None]]).tolist()
            if first_bad >= 0:
                trainee.failure = {
                    "reason": "non-finite loss", "epoch": epoch, "step": int(first_bad),
                    "terms": dict(zip(trainee.term_names, trainee.bad_terms.tolist())),
                }
                continue
            steps = len(self.data.train)
            row: dict[str, Any] = {"epoch": epoch, "lr": lrs[trainee.member.run_id],
                                   "train_loss": loss_sum / steps, "train_top1": 100.0 * correct / num_images}
            for name, value in zip(trainee.term_names, trainee.term_sums.tolist()):
                row[f"loss_{name}"] = value / steps
            test = evaluate(trainee.model, self.data.test, self.device, self.options.precision, self.teacher_correct)
            row.update({f"test_{k}": v for k, v in test.items()})
            if self.data.val is not None:
                val = evaluate(trainee.model, self.data.val, self.device, self.options.precision)
                row.update({f"val_{k}": v for k, v in val.items()})
            rows[trainee.member.run_id] = row
        epoch_seconds = time.perf_counter() - started
        for trainee in active:
            trainee.wall_seconds += epoch_seconds
            trainee.epochs_done = epoch if trainee.failure is None else trainee.epochs_done
            if trainee.failure is not None:
                self._write_records(trainee, status="failed")
                continue
            row = rows[trainee.member.run_id]
            row["epoch_seconds"] = epoch_seconds
            row["images_per_s"] = num_images / train_seconds if train_seconds > 0 else None
            trainee.history.append(row)
            self._save_checkpoint(trainee)
            self._write_records(trainee, status="done" if epoch == self.epochs else "running")
        self.reporter.epoch_done(epoch, rows)

    # ----- records -------------------------------------------------------------------
    def _checkpoint_state(self, trainee: _Trainee) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": trainee.model.state_dict(), "optimizer": trainee.optimizer.state_dict(),
            "method": trainee.method.state_dict(), "epoch": trainee.epochs_done, "history": trainee.history,
            "wall_seconds": trainee.wall_seconds, "started_at": trainee.started_at, "failure": trainee.failure,
            "rng": rng, "config": trainee.member.config, "data_seed": self.cohort.seed, "partial": None,
            "sessions": trainee.sessions,
        }

    def _save_checkpoint(self, trainee: _Trainee) -> None:
        path = self._checkpoint_path(trainee.member)
        if path is not None and distributed.is_main():
            atomic.torch_save(path, self._checkpoint_state(trainee))

    def _save_partial(self, trainee: _Trainee, epoch: int, step: int, train_seconds: float) -> None:
        path = self._checkpoint_path(trainee.member)
        if path is None or not distributed.is_main():
            return
        state = self._checkpoint_state(trainee)
        state["partial"] = {"epoch": epoch, "step": step, "train_seconds": train_seconds,
                            "accumulators": trainee.accumulators()}
        atomic.torch_save(path, state)

    def _write_records(self, trainee: _Trainee, status: str) -> None:
        out = trainee.member.out_dir
        summary = self._summary(trainee, status)
        trainee.summary = summary
        if out is None or not distributed.is_main():
            return
        out = Path(out)
        if not (out / "config.yaml").exists():
            atomic.write_yaml(out / "config.yaml", trainee.member.config)
        atomic.write_jsonl(out / "metrics.jsonl", trainee.history)
        atomic.write_json(out / "summary.json", summary)

    def _summary(self, trainee: _Trainee, status: str) -> dict[str, Any]:
        member, history = trainee.member, trainee.history
        last = history[-1] if history else {}
        best = max(history, key=lambda r: r["test_top1"]) if history else {}
        with_val = [r for r in history if r.get("val_top1") is not None]
        best_val = max(with_val, key=lambda r: r["val_top1"]) if with_val else None
        teacher = self.cohort.teacher
        return {
            "run_id": member.run_id,
            **member.record,
            "dataset": self.data.name,
            "dataset_spec": self.cohort.dataset if isinstance(self.cohort.dataset, dict) else {"name": self.cohort.dataset},
            "pair": f"{teacher or ''}->{member.student}",
            "teacher": teacher,
            "teacher_checkpoint": None if self.cohort.teacher_path is None else str(self.cohort.teacher_path),
            "teacher_sha256": self.teacher_sha256,
            "teacher_top1": self.teacher_top1,
            "student": member.student,
            "method": member.method,
            "variant": member.record.get("variant", member.method),
            "hparams": member.hparams,
            "seed": self.cohort.seed,
            "schedule": {**member.schedule.__dict__, "milestones": list(member.schedule.milestones)},
            "options": {"precision": self.options.precision, "channels_last": self.options.channels_last,
                        "compile": self.options.compile, "processes": distributed.world_size()},
            "status": status,
            "failure": trainee.failure,
            "epochs": self.epochs,
            "epochs_done": trainee.epochs_done,
            "final_top1": last.get("test_top1"),
            "final_top5": last.get("test_top5"),
            "best_top1": best.get("test_top1"),
            "best_epoch": best.get("epoch"),
            "val_selected_top1": best_val["test_top1"] if best_val else None,
            "best_val_epoch": best_val["epoch"] if best_val else None,
            "final_top1_teacher_wrong": last.get("test_top1_teacher_wrong"),
            "final_top1_teacher_right": last.get("test_top1_teacher_right"),
            "wall_seconds": trainee.wall_seconds,
            "cohort_size": len(self.trainees),
            "device": str(self.device),
            "environment": self.env,
            "started_at": trainee.started_at,
            "finished_at": _now() if status in ("done", "failed") else None,
            "sessions": trainee.sessions,
        }

    def _result(self, trainee: _Trainee) -> MemberResult:
        if not hasattr(trainee, "summary"):
            trainee.summary = self._summary(trainee, "done" if trainee.epochs_done >= self.epochs else "running")
        status = "failed" if trainee.failure else ("done" if trainee.epochs_done >= self.epochs else "running")
        return MemberResult(trainee.member.run_id, status, trainee.epochs_done, trainee.summary,
                            trainee.history, trainee.model)


def train_batches(loader: Any, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The batches of `epoch`, without the first `skip` (already trained before a stop)."""
    for step, batch in enumerate(loader.epoch(epoch)):
        if step >= skip:
            yield batch


def train_cohort(
    cohort: Cohort,
    device: str | torch.device,
    *,
    data: Any = None,
    reporter: Reporter | None = None,
    until_epoch: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[MemberResult]:
    """Train every member of `cohort` to its last epoch, resuming from checkpoints.

    Each step draws one batch from the on-device pipeline, runs the teacher once under
    `no_grad` in eval mode, then each member's forward, loss terms, backward and step.
    After each epoch every member is evaluated and checkpointed. A member whose loss turns
    non-finite is stopped and recorded as failed; the others go on.

    `data` is a prebuilt `DataSplits` (else built from the cohort's dataset), `until_epoch`
    stops early after that epoch (as a kill would), and `should_stop` is polled between
    steps: when it returns True every member is checkpointed mid-epoch and
    `TrainingInterrupted` is raised.
    """
    device = torch.device(device)
    trainer = _CohortTrainer(cohort, device, data, reporter or _SilentReporter(), should_stop or (lambda: False))
    return trainer.run(until_epoch)
