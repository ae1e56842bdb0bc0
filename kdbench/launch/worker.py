"""One worker: claims the runs of a grid and trains them, cohort by cohort, until none is left.

Any number of workers (processes, devices, hosts, Slurm jobs) can work on one grid at once:
each run is claimed through a lock file before it is trained (`kdbench.runs.locks`), so no run
is trained twice, and each finished epoch is checkpointed, so a killed worker loses at most
the epoch in flight. Before claiming, a worker repairs the damaged records its files allow
(`kdbench.runs.repair`); it never trains a run whose config no longer matches its run id, and it
stops a run that makes no progress in two attempts in a row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.train import distributed
from kdbench.runs import locks, records, repair
from kdbench.grid import plan
from kdbench.runs.faults import CohortFault, is_resource_fault, reraise_for_debugging, writing
from kdbench.models import sha256_file
from kdbench.train.progress import GridProgress
from kdbench.grid.recipe import Options, Schedule
from kdbench.runs.records import Failure, Layout, RunState, Status
from kdbench.runs.states import config_problem, run_state
from kdbench.train.stopping import StopFlag
from kdbench.runs.teacher_files import TeacherChanged, TeacherRef, record_teacher, verify_teacher
from kdbench.train.cohort import CohortSpec, TrainingInterrupted, build_data, close_data, train_cohort
from kdbench.train.trainee import Member
from kdbench.launch.spec import WorkerSpec, load_grid

#: Attempts in a row without a finished epoch or a recorded outcome before a run is failed.
MAX_ATTEMPTS_WITHOUT_PROGRESS = 2


@dataclass
class WorkerOutcome:
    """What one worker did."""

    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # cohorts stopped by a fault that is not a member's
    interrupted: bool = False
    aborted: bool = False  # a DDP cohort stopped: this process can't go on
    halted: str | None = None  # a fault of the machine met twice in a row: what to change

    @property
    def exit_code(self) -> int:
        """130 interrupted; 1 if a run failed, a cohort stopped or the worker halted; else 0."""
        if self.interrupted:
            return 130
        return 1 if self.failed or self.stopped or self.aborted or self.halted else 0


class Worker:
    """Claims and trains the runs of one grid on one device until none is left to claim."""

    def __init__(self, spec: WorkerSpec):
        from kdbench import data

        self.spec = spec
        self.grid = load_grid(spec)
        self.layout = Layout(Path(spec.results_dir), self.grid.name)
        self.data_root = data.resolve_root(spec.data_dir, self.grid.data_root)
        self.device = spec.device or "cpu"
        self.runs = plan.select(self.grid, spec.only)
        self.by_id = {r.run_id: r for r in self.runs}
        self.owner = locks.Owner.me()
        self.watch = locks.LockWatch()
        self.stop = StopFlag()
        self.progress: GridProgress | None = None
        self.given_up: set[str] = set()  # failed runs this worker already retried
        # --retry-failed retries the runs that had failed before this worker started, once.
        self.retryable = {r.run_id for r in self.runs if spec.retry_failed
                          and run_state(self.layout, r.run_id, self.watch)[0] == RunState.FAILED}
        self.no_progress: dict[str, int] = {}  # attempts in a row without progress
        self.machine_faults: dict[str, int] = {}  # cohort → faults of the machine in a row (out of memory…)
        self.warned: set[str] = set()
        self._data_cache: dict[str, Any] = {}

    # ----- the loop ------------------------------------------------------------------
    def run(self, progress: GridProgress) -> WorkerOutcome:
        """Train until every run is done, failed or held by another live worker.

        Under torchrun, rank 0 claims the work and broadcasts it; every rank trains it.
        """
        self.progress = progress
        outcome = WorkerOutcome()
        heartbeat = locks.Heartbeat(self.owner)
        self.stop.install()
        with writing():  # a full disk or a read-only folder stops the worker in one line
            self._loop(outcome, heartbeat)
        return outcome

    def _loop(self, outcome: WorkerOutcome, heartbeat: locks.Heartbeat) -> None:
        try:
            while True:
                job = None
                if distributed.is_main() and not self.stop.requested:
                    job = self._next_job(heartbeat)
                job = distributed.broadcast(job)
                if job is None:
                    break
                if job[0] == "teacher":
                    self._train_teacher(job[1], job[2], heartbeat)
                else:
                    runs = [self.by_id[run_id] for run_id in job[1]]
                    (cohort,) = plan.cohorts(runs)
                    self._train(cohort, runs, outcome, heartbeat)
                    if outcome.halted:
                        break
        except TrainingInterrupted:
            outcome.interrupted = True
        except CohortFault:
            outcome.aborted = True  # DDP: the process group can't be trusted past a member's fault
        finally:
            self.stop.restore()
            heartbeat.stop()
            self.close_data()

    def _log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.log(message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self._log(message)

    def pending(self) -> list[tuple[plan.Run, int]]:
        """Runs that still need training, with their epochs done; damaged records are healed first."""
        out = []
        for run in self.runs:
            state, epochs = run_state(self.layout, run.run_id, self.watch)
            if state == RunState.DAMAGED:
                state, epochs = self._heal(run)
            if state in (RunState.NEW, RunState.PARTIAL) or (
                    state == RunState.FAILED and run.run_id in self.retryable and run.run_id not in self.given_up):
                out.append((run, epochs if state != RunState.FAILED else 0))
            elif state == RunState.RUNNING and self.watch.observe(self.layout.lock(run.run_id)).foreign:
                out.append((run, epochs))  # another host's (or an unreadable) lock: watch it, it may be abandoned
        return out

    def _heal(self, run: plan.Run) -> tuple[RunState, int]:
        if config_problem(self.layout.run_dir(run.run_id)):
            return RunState.DAMAGED, 0  # never trained on; `kdbench run` warned about it once
        message = repair.repair(self.layout, run.run_id, run.summary_fields(self.grid.name))
        if message:
            self._log(message)
        state, epochs = run_state(self.layout, run.run_id, self.watch)
        if state == RunState.DAMAGED:
            self._warn_once(run.run_id, f"warning: {run.run_id}: damaged record left alone "
                                        f"(`kdbench verify {self.spec.grid_path}` says why)")
        return state, epochs

    def _next_job(self, heartbeat: locks.Heartbeat) -> tuple | None:
        """Claim the next piece of work: a teacher to train, or runs to train as one cohort.

        When every pending run is held by another host's lock, wait watching those locks
        until they go stale (then take them over) or their runs are finished.
        """
        announced = None
        while not self.stop.requested:
            pending = self.pending()
            if not pending:
                return None
            job = self._claim_job(pending, heartbeat)
            if job is not None:
                return job
            waiting = [(r, self.watch.observe(self.layout.lock(r.run_id))) for r, _ in pending]
            foreign = [(r, v) for r, v in waiting if v.state == locks.LockState.LIVE and v.foreign]
            if not foreign:
                return None  # held by live workers of this host, which will finish them
            owners = sorted({v.owner for _, v in foreign})
            longest = max(v.unchanged_for for _, v in foreign)
            text = (f"waiting for {len(foreign)} runs held by {', '.join(owners)} (heartbeat unchanged for up to "
                    f"{longest:.0f}s; taken over after {self.watch.stale_after:.0f}s unchanged)")
            if text.split(" (")[0] != announced:
                announced = text.split(" (")[0]
                self._log(text)
            time.sleep(min(locks.HEARTBEAT_SECONDS, max(self.watch.stale_after / 10, 0.05), 30.0))
        return None

    def _claim_job(self, pending: list[tuple[plan.Run, int]], heartbeat: locks.Heartbeat) -> tuple | None:
        epochs_of = {run.run_id: epochs for run, epochs in pending}
        ready, busy_teachers = [], set()
        for run, _ in pending:
            teacher = run.config["teacher"]
            if teacher is None or teacher["checkpoint"] != "train" or self._trained_teacher(teacher).is_file():
                ready.append(run)
            elif teacher["train_id"] not in busy_teachers:
                lock = self.layout.teacher_lock(teacher["train_id"])
                if locks.try_claim(lock, self.owner, self.watch):
                    heartbeat.add(lock)
                    return ("teacher", teacher["train_id"], run.pair)
                busy_teachers.add(teacher["train_id"])  # another worker is training it
        # Members must start at the same epoch to share batches: group by epochs done too.
        for cohort in plan.cohorts(ready, self.grid.options["max_cohort_size"]):
            by_start: dict[int, list[plan.Run]] = {}
            for run in cohort.runs:
                by_start.setdefault(epochs_of[run.run_id], []).append(run)
            for runs in by_start.values():
                claimed = self._claim(runs, heartbeat)
                if claimed:
                    return ("cohort", [r.run_id for r in claimed])
        return None

    def _claim(self, runs: list[plan.Run], heartbeat: locks.Heartbeat) -> list[plan.Run]:
        claimed = []
        for run in runs:
            path = self.layout.lock(run.run_id)
            if not locks.try_claim(path, self.owner, self.watch):
                continue
            state, _ = run_state(self.layout, run.run_id, self.watch)  # someone may have finished it meanwhile
            if state in (RunState.DONE, RunState.DAMAGED) or (state == RunState.FAILED and run.run_id not in self.retryable):
                locks.release(path, self.owner)
                continue
            heartbeat.add(path)
            claimed.append(run)
        # Claims were made one by one: re-check that all start from the same epoch.
        starts = {records.epochs_recorded(self.layout.run_dir(r.run_id)) for r in claimed}
        if len(starts) > 1:
            first = min(starts)
            keep = [r for r in claimed if records.epochs_recorded(self.layout.run_dir(r.run_id)) == first]
            for r in claimed:
                if r not in keep:
                    self._release(r, heartbeat)
            claimed = keep
        return claimed

    def _release(self, run: plan.Run, heartbeat: locks.Heartbeat) -> None:
        path = self.layout.lock(run.run_id)
        heartbeat.remove(path)
        try:
            locks.release(path, self.owner)
        except OSError:  # a read-only or full folder: the lock goes stale by itself
            pass

    # ----- teachers ------------------------------------------------------------------
    def _trained_teacher(self, teacher: dict[str, Any]) -> Path:
        ref = TeacherRef.from_config(teacher, self.data_root, self.layout)
        assert ref is not None and ref.path is not None
        return ref.path

    def _train_teacher(self, train_id: str, pair_name: str, heartbeat: locks.Heartbeat) -> None:
        from kdbench.teachers.command import train_teacher

        lock = self.layout.teacher_lock(train_id)
        pair = next(p for p in self.grid.pairs if p.name == pair_name)
        teacher = plan.teacher_config(self.grid, pair)
        ref = TeacherRef.from_config(teacher, self.data_root, self.layout)
        try:
            if not ref.path.is_file():
                train_teacher(plan.teacher_training_config(self.grid, pair), ref.path, self.data_root, self.device,
                              self.progress, self.stop, options=Options.from_dict(self.grid.options))
                record_teacher(self.layout, ref, sha256_file(ref.path), "trained", replace=True)
        finally:
            heartbeat.remove(lock)
            locks.release(lock, self.owner)

    # ----- cohorts -------------------------------------------------------------------
    def _data(self, cohort: plan.Cohort, options: Options) -> Any:
        key = json.dumps([cohort.dataset, cohort.seed, cohort.batch_size, options.eval_batch_size,
                          options.channels_last], sort_keys=True)
        if key not in self._data_cache:
            self.close_data()  # keep one dataset on the device at a time
            self._data_cache[key] = build_data(cohort.dataset, root=self.data_root, device=self.device,
                                               seed=cohort.seed, batch_size=cohort.batch_size, options=options)
        return self._data_cache[key]

    def close_data(self) -> None:
        """Drop the cached dataset and stop its loaders' background workers."""
        for splits in self._data_cache.values():
            close_data(splits)
        self._data_cache.clear()

    def _member(self, run: plan.Run, cohort: plan.Cohort) -> Member:
        return Member(
            run_id=run.run_id, student=run.student, method=run.method, hparams=run.config["hparams"],
            schedule=Schedule.from_dict(run.config["schedule"]), out_dir=self.layout.run_dir(run.run_id),
            config=run.config, record={"grid": self.grid.name, "cohort": cohort.cohort_id, "variant": run.variant,
                                       "epoch_hparams": run.epoch_hparams},
        )

    def _teacher_sha256(self, ref: TeacherRef | None, runs: list[plan.Run], outcome: WorkerOutcome) -> tuple[bool, str | None]:
        """(usable, SHA-256) of the cohort's teacher; a changed teacher fails its runs unless retrying them."""
        if ref is None or ref.path is None or not distributed.is_main():
            return True, None
        try:
            return True, verify_teacher(self.layout, ref, runs[0].config["teacher"])
        except TeacherChanged as exc:
            retrying = all(r.run_id in self.retryable for r in runs)
            if retrying:
                record_teacher(self.layout, ref, exc.found, "accepted by --retry-failed", replace=True)
                self._log(f"teacher {ref.label}: the new file (SHA-256 {exc.found[:16]}…) replaces "
                          f"{exc.recorded[:16]}… for these runs, retrained from scratch")
                return True, exc.found
            for run in runs:
                records.record_failure(self.layout.run_dir(run.run_id), run.config, run.summary_fields(self.grid.name), Failure(reason=str(exc)))
                outcome.failed.append(run.run_id)
            self._log(f"failed: {len(runs)} runs: {exc}")
            return False, None

    def _train(self, cohort: plan.Cohort, runs: list[plan.Run], outcome: WorkerOutcome,
               heartbeat: locks.Heartbeat) -> None:
        progress = self.progress
        for run in runs:
            if run.run_id in self.retryable and run.run_id not in self.given_up:
                if run_state(self.layout, run.run_id, self.watch)[0] == RunState.FAILED:
                    self.given_up.add(run.run_id)
                    records.remove_outcome(self.layout.run_dir(run.run_id))
        ref = TeacherRef.from_config(cohort.teacher_config, self.data_root, self.layout)
        before = {r.run_id: records.epochs_recorded(self.layout.run_dir(r.run_id)) for r in runs}
        labels = {r.run_id: f"{r.variant}[{r.student}]" if len({x.student for x in runs}) > 1 else r.variant
                  for r in runs}
        description = (f"{ref.arch if ref else 'no teacher'} → "
                       f"{', '.join(sorted({r.student for r in runs}))} seed {cohort.seed}")
        reporter = progress.cohort(description, labels)
        reason = None
        try:
            usable, sha256 = self._teacher_sha256(ref, runs, outcome)
            if not usable:
                return
            options = Options.from_dict({**self.grid.options, **runs[0].config["options"]})
            spec = CohortSpec(dataset=cohort.dataset, seed=cohort.seed, members=[self._member(r, cohort) for r in runs],
                              teacher=ref, teacher_sha256=sha256, options=options, data_root=self.data_root,
                              artifact_dir=self.layout.results / "teachers" / "artifacts")
            results = train_cohort(spec, self.device, data=self._data(cohort, options), reporter=reporter,
                                   should_stop=self.stop)
            for result in results:
                (outcome.failed if result.status == Status.FAILED else outcome.trained).append(result.run_id)
                if result.status == Status.FAILED:
                    failure = result.summary.failure
                    log = f"; traceback in {self.layout.run_dir(result.run_id) / failure.error_log}" \
                        if failure and failure.error_log else ""
                    progress.log(f"failed: {result.run_id} {result.summary.variant} ({failure.reason}){log}")
            progress.runs_finished(sum(1 for r in results if r.status != Status.RUNNING))
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted("interrupted") from None
        except CohortFault as exc:
            reraise_for_debugging()
            reason = str(exc)
            self._cohort_stopped(cohort, runs, exc, description)
            outcome.stopped.append(cohort.cohort_id)
            if distributed.active():
                raise
            if is_resource_fault(exc.__cause__ or exc):
                # The machine's fault, not the runs': they stay resumable, and the no-progress
                # guard leaves them alone. Met twice in a row, the worker stops and says why.
                self._machine_fault(cohort, description, exc, outcome)
                return
        finally:
            reporter.finish()
            for run in runs:
                self._release(run, heartbeat)
        self._guard_progress(runs, before, reason, outcome)

    def _cohort_stopped(self, cohort: plan.Cohort, runs: list[plan.Run], exc: CohortFault, description: str) -> None:
        """Write the fault and its traceback into each run's error.log; the runs stay resumable."""
        cause = exc.__cause__ or exc
        for run in runs:
            out = self.layout.run_dir(run.run_id)
            try:
                state = run_state(self.layout, run.run_id, self.watch)[0]
            except OSError:
                continue
            if state not in (RunState.FAILED, RunState.DONE) and distributed.is_main():
                out.mkdir(parents=True, exist_ok=True)
                records.write_error_log(out, Failure(reason=f"cohort stopped: {exc}"), cause,
                                        f"cohort {cohort.cohort_id} ({description}) stopped")
        self._log(f"stopped: cohort {description}: {exc}; its runs stay resumable "
                  f"(error.log in each run folder)")

    def _machine_fault(self, cohort: plan.Cohort, description: str, exc: CohortFault, outcome: WorkerOutcome) -> None:
        faults = self.machine_faults.get(cohort.cohort_id, 0) + 1
        self.machine_faults[cohort.cohort_id] = faults
        if faults < MAX_ATTEMPTS_WITHOUT_PROGRESS:
            return
        cause = exc.__cause__ or exc
        what = ("ran out of memory" if isinstance(cause, (MemoryError, torch.OutOfMemoryError))
                else "hit an error that leaves the device unusable")
        outcome.halted = (f"stopped: cohort {description} {what} {faults} times in a row ({exc}); its runs stay "
                          "resumable: lower schedule.batch_size or options.max_cohort_size, train in precision bf16 "
                          "or fp16, or use another device, then run the same command")
        self._log(outcome.halted)

    def _guard_progress(self, runs: list[plan.Run], before: dict[str, int], reason: str | None,
                        outcome: WorkerOutcome) -> None:
        """Fail a run whose attempts ended twice in a row with neither a new epoch nor an outcome."""
        if not distributed.is_main():
            return
        for run in runs:
            state, _ = run_state(self.layout, run.run_id, self.watch)
            progressed = records.epochs_recorded(self.layout.run_dir(run.run_id)) > before[run.run_id]
            if state in (RunState.DONE, RunState.FAILED) or progressed:
                self.no_progress.pop(run.run_id, None)
                continue
            attempts = self.no_progress.get(run.run_id, 0) + 1
            self.no_progress[run.run_id] = attempts
            if attempts >= MAX_ATTEMPTS_WITHOUT_PROGRESS:
                why = f"no progress in {attempts} attempts in a row" + (f" (last: {reason})" if reason else "")
                records.record_failure(self.layout.run_dir(run.run_id), run.config, run.summary_fields(self.grid.name), Failure(reason=why))
                outcome.failed.append(run.run_id)
                self._log(f"failed: {run.run_id} {run.variant}: {why}")
