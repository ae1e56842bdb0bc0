"""`kdbench run` and `kdbench status`: claim runs, train cohorts, resume, report what happened.

Any number of workers (processes, devices, hosts, Slurm jobs) can work on one grid at
once: each run is claimed through a lock file before it is trained (`kdbench.locks`), so
no run is trained twice, and each finished epoch is checkpointed, so a killed worker
loses at most the epoch in flight. Re-running a finished grid trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench import atomic, config, distributed, locks, plan
from kdbench.console import console
from kdbench.errors import KdbenchError
from kdbench.progress import GridProgress
from kdbench.train import Cohort, Member, Options, Schedule, TrainingInterrupted, build_data, train_cohort

DONE, FAILED, RUNNING, PARTIAL, NEW = "done", "failed", "running", "partial", "new"


# ----- where things live --------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Paths of a grid's results: `<results>/<grid>/runs/<run_id>/`, locks, teacher cache."""

    results: Path
    grid: str

    @property
    def grid_dir(self) -> Path:
        return self.results / self.grid

    def run_dir(self, run_id: str) -> Path:
        return self.grid_dir / "runs" / run_id

    def lock(self, run_id: str) -> Path:
        return self.grid_dir / "locks" / f"{run_id}.lock"

    def teacher_dir(self, train_id: str) -> Path:
        # Shared by every grid of the results folder: one training per teacher config.
        return self.results / "teachers" / train_id

    def teacher_lock(self, train_id: str) -> Path:
        return self.results / "teachers" / "locks" / f"{train_id}.lock"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json, or None if absent or unreadable."""
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_state(layout: Layout, run_id: str) -> tuple[str, int]:
    """(state, epochs done) of a run: done, failed, running (live lock), partial or new."""
    summary = read_summary(layout.run_dir(run_id))
    epochs_done = checkpoint_epoch(layout.run_dir(run_id))
    if summary is not None and summary.get("status") in (DONE, FAILED):
        return summary["status"], summary.get("epochs_done", epochs_done)
    if locks.lock_state(layout.lock(run_id)) == "live":
        return RUNNING, epochs_done
    return (PARTIAL if epochs_done > 0 else NEW), epochs_done


def checkpoint_epoch(run_dir: Path) -> int:
    """Epochs recorded as finished in the run's metrics (the checkpoint is written first)."""
    try:
        with open(run_dir / "metrics.jsonl") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


# ----- devices and inputs ---------------------------------------------------------------

def parse_devices(text: str | None) -> list[str]:
    """`--device`: cpu, cuda, cuda:N or a comma-separated list; default cuda if available."""
    if not text:
        return ["cuda" if torch.cuda.is_available() else "cpu"]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise KdbenchError(f"--device {text}: '{d}' is not a device; expected cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda"):
            raise KdbenchError(f"--device {text}: '{d}' is not supported; expected cpu, cuda or cuda:N")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise KdbenchError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
    return devices


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it; a one-line error if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KdbenchError(f"--results-dir: cannot write to '{folder}': {exc.strerror or exc}") from None


def teacher_file(teacher: dict[str, Any], data_root: Path, layout: Layout) -> str | Path:
    """Where a run config's teacher weights come from."""
    from kdbench import teachers

    source = teacher["checkpoint"]
    if source == "mdistiller":
        return teachers.teacher_path(data_root, teacher["arch"])
    if source == "torchvision":
        return "torchvision"
    if source == "train":
        return layout.teacher_dir(teacher["train_id"]) / "teacher.pth"
    return Path(source)


def check_teachers(runs: list[plan.Run], data_root: Path, layout: Layout) -> None:
    """Every teacher file the pending runs need must exist (trained teachers are made later)."""
    seen = set()
    for run in runs:
        teacher = run.config["teacher"]
        if teacher is None or teacher["checkpoint"] in ("train", "torchvision"):
            continue
        path = Path(teacher_file(teacher, data_root, layout))
        if path in seen:
            continue
        seen.add(path)
        if not path.is_file() and teacher["checkpoint"] == "mdistiller":
            from kdbench import teachers

            teachers.fetch(data_root)  # offline: a one-line error saying where to put the archive
        if not path.is_file():
            hint = ("run `kdbench teachers fetch` (or put cifar_teachers.tar in the data root, "
                    f"{data_root})" if teacher["checkpoint"] == "mdistiller" else "check the pair's teacher checkpoint")
            raise KdbenchError(f"teacher checkpoint for {teacher['arch']} not found at {path}: {hint}")


def selected_runs(grid: config.Grid, only: str | None) -> list[plan.Run]:
    """The grid's runs; with `only`, those whose pair, variant or run_id contains it."""
    runs = plan.plan(grid)
    if only:
        runs = [r for r in runs if only in r.pair or only in r.variant or r.run_id.startswith(only)]
        if not runs:
            raise KdbenchError(f"--only {only}: no run's pair, variant or run_id matches")
    return runs


# ----- one worker -----------------------------------------------------------------------

@dataclass
class WorkerOutcome:
    """What one worker trained."""

    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


class _StopFlag:
    """Set by SIGINT/SIGTERM; the trainer checks it between steps and checkpoints mid-epoch."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True


def _member(run: plan.Run, layout: Layout, cohort_id: str, grid_name: str) -> Member:
    return Member(
        run_id=run.run_id, student=run.student, method=run.method, hparams=run.config["hparams"],
        schedule=Schedule.from_dict(run.config["schedule"]), out_dir=layout.run_dir(run.run_id),
        config=run.config, record={"grid": grid_name, "cohort": cohort_id, "variant": run.variant},
    )


def _options(grid: config.Grid, run: plan.Run) -> Options:
    opts = run.config["options"]
    return Options(precision=opts["precision"], channels_last=opts["channels_last"], compile=opts["compile"],
                   eval_batch_size=grid.options["eval_batch_size"])


def _teacher_options(grid: config.Grid) -> Options:
    opts = grid.options
    return Options(precision=opts["precision"], channels_last=opts["channels_last"], compile=opts["compile"],
                   eval_batch_size=opts["eval_batch_size"])


def _record_failure(layout: Layout, run: plan.Run, reason: str, grid_name: str) -> None:
    out = layout.run_dir(run.run_id)
    summary = read_summary(out) or {
        "run_id": run.run_id, "grid": grid_name, "pair": run.pair, "teacher": run.teacher, "student": run.student,
        "method": run.method, "variant": run.variant, "hparams": run.config["hparams"], "seed": run.seed,
        "epochs": run.config["schedule"]["epochs"], "epochs_done": 0,
    }
    summary.update(status=FAILED, failure={"reason": reason, "epoch": summary.get("epochs_done", 0) + 1, "step": None,
                                           "terms": None},
                   finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if not (out / "config.yaml").exists():
        atomic.write_yaml(out / "config.yaml", run.config)
    atomic.write_json(out / "summary.json", summary)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


class Worker:
    """Claims and trains the runs of one grid on one device until none is left to claim."""

    def __init__(self, grid_path: str | Path, results_dir: str | Path, data_dir: str | None, device: str,
                 only: str | None = None, retry_failed: bool = False, prefix: str = ""):
        from kdbench import data

        self.grid = config.load_grid(grid_path)
        self.layout = Layout(Path(results_dir), self.grid.name)
        self.data_root = data.resolve_root(data_dir, self.grid.data_root)
        self.device = device
        self.only, self.retry_failed, self.prefix = only, retry_failed, prefix
        self.owner = locks.Owner.me()
        self.stop = _StopFlag()
        self._data_cache: dict[str, Any] = {}

    def runs(self) -> list[plan.Run]:
        """The grid's runs, filtered by `--only`."""
        return selected_runs(self.grid, self.only)

    def pending(self) -> list[tuple[plan.Run, int]]:
        """Runs that still need training, with the epochs they have done."""
        out = []
        for run in self.runs():
            state, epochs = run_state(self.layout, run.run_id)
            if state in (NEW, PARTIAL) or (state == FAILED and self.retry_failed and run.run_id not in self._given_up):
                out.append((run, epochs if state != FAILED else 0))
        return out

    def run(self, progress: GridProgress) -> WorkerOutcome:
        """Train until every run is done, failed or held by another live worker.

        Under torchrun, rank 0 claims the work and broadcasts it; every rank trains it.
        """
        outcome = WorkerOutcome()
        self._given_up: set[str] = set()
        heartbeat = locks.Heartbeat(self.owner)
        self.stop.install()
        try:
            while True:
                job = None
                if distributed.is_main() and not self.stop.requested:
                    job = self._next_job(heartbeat)
                job = distributed.broadcast(job)
                if job is None:
                    break
                self._do(job, progress, outcome, heartbeat)
        except TrainingInterrupted:
            outcome.interrupted = True
        finally:
            self.stop.restore()
            heartbeat.stop()
        return outcome

    def _next_job(self, heartbeat: locks.Heartbeat) -> tuple | None:
        """Claim the next piece of work: a teacher to train, or runs to train as one cohort."""
        pending = self.pending()
        if not pending:
            return None
        epochs_of = {run.run_id: epochs for run, epochs in pending}
        ready, busy_teachers = [], set()
        for run, _ in pending:
            teacher = run.config["teacher"]
            if teacher is None or teacher["checkpoint"] != "train" or self._trained_teacher(teacher).is_file():
                ready.append(run)
            elif teacher["train_id"] not in busy_teachers:
                lock = self.layout.teacher_lock(teacher["train_id"])
                if locks.try_claim(lock, self.owner):
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

    def _do(self, job: tuple, progress: GridProgress, outcome: WorkerOutcome, heartbeat: locks.Heartbeat) -> None:
        if job[0] == "teacher":
            _, train_id, pair_name = job
            self._train_teacher(train_id, pair_name, progress, heartbeat)
            return
        by_id = {r.run_id: r for r in self.runs()}
        runs = [by_id[run_id] for run_id in job[1]]
        (cohort,) = plan.cohorts(runs)
        self._train(cohort, runs, progress, outcome, heartbeat)

    def _trained_teacher(self, teacher: dict[str, Any]) -> Path:
        return self.layout.teacher_dir(teacher["train_id"]) / "teacher.pth"

    def _train_teacher(self, train_id: str, pair_name: str, progress: GridProgress, heartbeat: locks.Heartbeat) -> None:
        from kdbench.teachers import train_teacher

        lock = self.layout.teacher_lock(train_id)
        pair = next(p for p in self.grid.pairs if p.name == pair_name)
        path = self.layout.teacher_dir(train_id) / "teacher.pth"
        try:
            if not path.is_file():
                train_teacher(plan.teacher_training_config(self.grid, pair), path, self.data_root, self.device,
                              progress, self.stop, options=_teacher_options(self.grid))
        finally:
            heartbeat.remove(lock)
            locks.release(lock, self.owner)

    def _claim(self, runs: list[plan.Run], heartbeat: locks.Heartbeat) -> list[plan.Run]:
        claimed = []
        for run in runs:
            path = self.layout.lock(run.run_id)
            if not locks.try_claim(path, self.owner):
                continue
            state, _ = run_state(self.layout, run.run_id)  # someone may have finished it meanwhile
            if state == DONE or (state == FAILED and not self.retry_failed):
                locks.release(path, self.owner)
                continue
            heartbeat.add(path)
            claimed.append(run)
        # Claims were made one by one: re-check that all start from the same epoch.
        starts = {checkpoint_epoch(self.layout.run_dir(r.run_id)) for r in claimed}
        if len(starts) > 1:
            first = min(starts)
            keep = [r for r in claimed if checkpoint_epoch(self.layout.run_dir(r.run_id)) == first]
            for r in claimed:
                if r not in keep:
                    self._release(r, heartbeat)
            claimed = keep
        return claimed

    def _release(self, run: plan.Run, heartbeat: locks.Heartbeat) -> None:
        path = self.layout.lock(run.run_id)
        heartbeat.remove(path)
        locks.release(path, self.owner)

    def _data(self, cohort: plan.Cohort, options: Options) -> Any:
        key = json.dumps([cohort.dataset, cohort.seed, cohort.batch_size, options.eval_batch_size,
                          options.channels_last], sort_keys=True)
        if key not in self._data_cache:
            self._data_cache.clear()  # keep one dataset on the device at a time
            self._data_cache[key] = build_data(cohort.dataset, root=self.data_root, device=self.device,
                                               seed=cohort.seed, batch_size=cohort.batch_size, options=options)
        return self._data_cache[key]

    def _train(self, cohort: plan.Cohort, runs: list[plan.Run], progress: GridProgress, outcome: WorkerOutcome,
               heartbeat: locks.Heartbeat) -> None:
        if self.retry_failed:
            for run in runs:
                if run_state(self.layout, run.run_id)[0] == FAILED:
                    self._given_up.add(run.run_id)
                    _reset_failed(self.layout.run_dir(run.run_id))
        teacher = cohort.teacher
        options = _options(self.grid, runs[0])
        members = [_member(r, self.layout, cohort.cohort_id, self.grid.name) for r in runs]
        labels = {r.run_id: f"{r.variant}[{r.student}]" if len({x.student for x in runs}) > 1 else r.variant
                  for r in runs}
        description = (f"{teacher['arch'] if teacher else 'no teacher'} → "
                       f"{', '.join(sorted({r.student for r in runs}))} seed {cohort.seed}")
        reporter = progress.cohort(description, labels)
        try:
            spec = Cohort(
                dataset=cohort.dataset, seed=cohort.seed, members=members,
                teacher=teacher["arch"] if teacher else None,
                teacher_path=teacher_file(teacher, self.data_root, self.layout) if teacher else None,
                options=options, data_root=self.data_root,
            )
            results = train_cohort(spec, self.device, data=self._data(cohort, options), reporter=reporter,
                                   should_stop=self.stop)
            for result in results:
                (outcome.failed if result.status == FAILED else outcome.trained).append(result.run_id)
                if result.status == FAILED:
                    progress.log(f"failed: {result.run_id} {result.summary.get('variant')} "
                                 f"({result.summary['failure']['reason']})")
            progress.runs_finished(len(results))
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted("interrupted") from None
        except Exception as exc:  # OOM, an unreadable teacher, a bug in a method: record and go on
            reason = _failure_reason(exc)
            for run in runs:
                if distributed.is_main():
                    _record_failure(self.layout, run, reason, self.grid.name)
                outcome.failed.append(run.run_id)
            progress.runs_finished(len(runs))
            progress.log(f"failed: cohort {description}: {reason}")
        finally:
            reporter.finish()
            for run in runs:
                self._release(run, heartbeat)


def _reset_failed(run_dir: Path) -> None:
    for name in ("summary.json", "metrics.jsonl", "checkpoint.pt"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass


# ----- the commands ---------------------------------------------------------------------

def _states(layout: Layout, runs: list[plan.Run]) -> dict[str, tuple[str, int]]:
    return {r.run_id: run_state(layout, r.run_id) for r in runs}


def cli_run(args: argparse.Namespace) -> int:
    """The `kdbench run` subcommand."""
    from kdbench import data

    grid = config.load_grid(args.grid)
    layout = Layout(Path(args.results_dir), grid.name)
    runs = selected_runs(grid, args.only)
    if args.dry_run:
        return print_plan(grid, runs, layout, data.resolve_root(args.data_dir, grid.data_root), args.device)
    check_writable(layout.grid_dir)
    _keep_grid_copy(args.grid, layout)
    devices = parse_devices(args.device)
    data_root = data.resolve_root(args.data_dir, grid.data_root)
    states = _states(layout, runs)
    todo = [r for r in runs if states[r.run_id][0] in (NEW, PARTIAL)
            or (states[r.run_id][0] == FAILED and args.retry_failed)]
    if not todo:
        running = sum(1 for s, _ in states.values() if s == RUNNING)
        if running:
            console().print(f"Nothing to claim: the {running} unfinished runs of grid '{grid.name}' are held by "
                            "other live workers.")
            return 0
        console().print(f"Nothing to do: all {len(runs)} runs of grid '{grid.name}' are finished "
                        f"({layout.grid_dir}). `kdbench report --grid {grid.name}` makes the tables.")
        return print_summary(grid, runs, layout, quiet=True)
    if args.executor == "slurm" or len(devices) > 1:
        data.prepare(grid.dataset, data_root)  # a missing dataset stops here, in one line
        check_teachers(todo, data_root, layout)
        if args.executor == "slurm":
            return submit_slurm(args, grid, len({r.cohort_key for r in todo}))
        return run_on_devices(args, devices, grid, runs, layout)
    device = distributed.init(devices[0]) if distributed.launched_by_torchrun() else devices[0]
    try:
        return _run_here(args, grid, runs, layout, states, todo, data_root, device)
    finally:
        distributed.shutdown()


def _run_here(args: argparse.Namespace, grid: config.Grid, runs: list[plan.Run], layout: Layout,
              states: dict[str, tuple[str, int]], todo: list[plan.Run], data_root: Path, device: str) -> int:
    from kdbench import data

    # Under torchrun rank 0 downloads and checks; the others wait for its verdict.
    error = None
    if distributed.is_main():
        try:
            data.prepare(grid.dataset, data_root)  # a missing dataset stops here, in one line
            check_teachers(todo, data_root, layout)
        except KdbenchError as exc:
            error = str(exc)
    error = distributed.broadcast(error)
    if error:
        raise KdbenchError(error)
    main = distributed.is_main()
    done_before = sum(1 for s, _ in states.values() if s in (DONE, FAILED))
    ddp = f" × {distributed.world_size()} DDP processes" if distributed.active() else ""
    if main:
        console().print(f"grid '{grid.name}': {len(runs)} runs, {done_before} finished, {len(todo)} to train "
                        f"on {device}{ddp} → {layout.grid_dir}")
    worker = Worker(args.grid, args.results_dir, args.data_dir, device, args.only, args.retry_failed,
                    prefix=getattr(args, "log_prefix", "") or "")
    progress = GridProgress(len(runs), done_before, prefix=worker.prefix, quiet=not main)
    started = time.monotonic()
    try:
        outcome = worker.run(progress)
    finally:
        progress.close()
    if not main:
        return 130 if outcome.interrupted else 0
    if outcome.interrupted:
        console().print("interrupted: every run was checkpointed; run the same command again to resume.")
        return 130
    if getattr(args, "worker", False):
        return 1 if outcome.failed else 0
    console().print(f"trained {len(outcome.trained) + len(outcome.failed)} runs in {time.monotonic() - started:.0f}s")
    return print_summary(grid, runs, layout)


def _keep_grid_copy(grid_path: str, layout: Layout) -> None:
    # The report orders rows and columns as the grid file does; keep the latest copy.
    atomic.write_text(layout.grid_dir / "grid.yaml", Path(grid_path).read_text())


def run_on_devices(args: argparse.Namespace, devices: list[str], grid: config.Grid, runs: list[plan.Run],
                   layout: Layout) -> int:
    """One worker process per device on this host; they share the claims."""
    procs = []
    cpu_workers = sum(1 for d in devices if d == "cpu")
    env = dict(os.environ)
    if cpu_workers > 1 and "OMP_NUM_THREADS" not in env:
        # CPU workers share the cores: one thread pool each would oversubscribe them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
    for device in devices:
        cmd = [sys.executable, "-m", "kdbench", "run", str(args.grid), "--results-dir", str(args.results_dir),
               "--device", device, "--worker", "--log-prefix", f"[{device}] "]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.only:
            cmd += ["--only", args.only]
        if args.retry_failed:
            cmd += ["--retry-failed"]
        for folder in args.methods_dir:
            cmd += ["--methods-dir", folder]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        console().print("interrupted: every run was checkpointed; run the same command again to resume.")
        return 130
    code = print_summary(grid, runs, layout)
    return code or max(codes)


def submit_slurm(args: argparse.Namespace, grid: config.Grid, num_cohorts: int, cluster: str | None = None) -> int:
    """Submit worker jobs through submitit; they claim runs like local workers."""
    try:
        import submitit
    except ImportError:
        raise KdbenchError("--executor slurm needs submitit: pip install 'kdbench[slurm]'") from None
    folder = Path(args.slurm_folder or Path(args.results_dir) / grid.name / "slurm")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": args.slurm_timeout_min, "name": f"kdbench-{grid.name}"}
    if executor.cluster == "slurm":
        params.update(slurm_gpus_per_node=1, slurm_ntasks_per_node=1)
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**params)
    jobs_count = args.slurm_jobs or num_cohorts
    device = args.device or ("cuda" if executor.cluster == "slurm" else None)
    jobs = executor.map_array(
        worker_job, [str(args.grid)] * jobs_count, [str(args.results_dir)] * jobs_count,
        [args.data_dir] * jobs_count, [device] * jobs_count, [args.only] * jobs_count,
    )
    console().print(f"submitted {len(jobs)} worker jobs ({executor.cluster}); logs in {folder}. "
                    f"`kdbench status {args.grid}` shows progress.")
    if getattr(args, "wait", False):
        for job in jobs:
            job.result()
    return 0


def worker_job(grid_path: str, results_dir: str, data_dir: str | None, device: str | None,
               only: str | None = None) -> dict[str, Any]:
    """Entry point of a submitit job: one worker on this node's device."""
    worker = Worker(grid_path, results_dir, data_dir, parse_devices(device)[0], only)
    progress = GridProgress(len(worker.runs()), 0)
    try:
        outcome = worker.run(progress)
    finally:
        progress.close()
    return {"trained": outcome.trained, "failed": outcome.failed, "interrupted": outcome.interrupted}


def _fmt_top1(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    return f"{mean:.2f} (n={len(values)})"


def print_summary(grid: config.Grid, runs: list[plan.Run], layout: Layout, quiet: bool = False) -> int:
    """The end-of-run table (mean last-epoch top-1 per pair and variant) and the failures."""
    from rich.table import Table

    summaries = {r.run_id: read_summary(layout.run_dir(r.run_id)) or {} for r in runs}
    pairs = list(dict.fromkeys(r.pair for r in runs))
    variants = list(dict.fromkeys(r.variant for r in runs))
    if not quiet:
        table = Table(title=f"{grid.name}: last-epoch test top-1 (%), mean over finished seeds")
        table.add_column("variant")
        for pair in pairs:
            table.add_column(pair.replace("->", "→"), justify="right")
        for variant in variants:
            cells = []
            for pair in pairs:
                values = [summaries[r.run_id].get("final_top1") for r in runs
                          if r.pair == pair and r.variant == variant and summaries[r.run_id].get("status") == DONE]
                cells.append(_fmt_top1([v for v in values if v is not None]))
            table.add_row(variant, *cells)
        console().print(table)
    failed = [(r, summaries[r.run_id]) for r in runs if summaries[r.run_id].get("status") == FAILED]
    counts: dict[str, int] = {}
    for r in runs:
        state = run_state(layout, r.run_id)[0]
        counts[state] = counts.get(state, 0) + 1
    console().print("runs: " + ", ".join(f"{counts[k]} {k}" for k in (DONE, FAILED, RUNNING, PARTIAL, NEW) if k in counts))
    for run, summary in failed:
        failure = summary.get("failure") or {}
        where = f"epoch {failure.get('epoch')}" + (f", step {failure['step']}" if failure.get("step") else "")
        terms = failure.get("terms")
        console().print(f"FAILED {run.run_id} {run.pair} {run.variant} seed {run.seed}: {failure.get('reason')} "
                        f"({where}){f' terms {terms}' if terms else ''}", markup=False)
    return 1 if failed else 0


def print_plan(grid: config.Grid, runs: list[plan.Run], layout: Layout, data_root: Path, device_text: str | None) -> int:
    """The dry-run table: cohorts, their runs' states, and a time estimate."""
    from rich.table import Table

    from kdbench.estimate import estimate_seconds, format_duration

    states = _states(layout, runs)
    cohorts = plan.cohorts(runs, grid.options["max_cohort_size"])
    device = parse_devices(device_text)[0]
    table = Table(title=f"plan of grid '{grid.name}' ({grid.source})")
    for column in ("cohort", "teacher", "students", "seed", "runs", "done", "partial", "new", "estimate"):
        table.add_column(column, justify="right" if column in ("seed", "runs", "done", "partial", "new") else "left")
    estimates = estimate_seconds(grid, cohorts, states, device, cache_dir=layout.results)
    for cohort in cohorts:
        s = [states[r.run_id][0] for r in cohort.runs]
        students = ", ".join(dict.fromkeys(r.student for r in cohort.runs))
        table.add_row(
            cohort.cohort_id[:8], cohort.teacher["arch"] if cohort.teacher else "—", students, str(cohort.seed),
            str(len(cohort.runs)), str(s.count(DONE) + s.count(FAILED)), str(s.count(PARTIAL) + s.count(RUNNING)),
            str(s.count(NEW)), format_duration(estimates.get(cohort.cohort_id)),
        )
    console().print(table)
    pairs = len({r.pair for r in runs})
    variants = len({r.variant for r in runs})
    total = sum(v for v in estimates.values() if v is not None)
    console().print(
        f"{len(runs)} runs = {pairs} pairs × {variants} method variants × {len(grid.seeds)} seeds, "
        f"in {len(cohorts)} cohorts; {sum(1 for s, _ in states.values() if s in (DONE, FAILED))} finished, "
        f"{sum(1 for s, _ in states.values() if s in (PARTIAL, RUNNING))} partial, "
        f"{sum(1 for s, _ in states.values() if s == NEW)} new. "
        f"Estimated time left on {device}: {format_duration(total)} (one worker; measured with `kdbench bench`)."
    )
    return 0


def cli_status(args: argparse.Namespace) -> int:
    """The `kdbench status` subcommand: each run's state and numbers so far."""
    from rich.table import Table

    results = Path(args.results_dir)
    if args.grid and Path(args.grid).is_file():
        grid = config.load_grid(args.grid)
        runs = plan.plan(grid)
        layout = Layout(results, grid.name)
        rows = [(r.run_id, r.pair, r.variant, r.seed) for r in runs]
        names = [grid.name]
    else:
        names = [args.grid] if args.grid else sorted(p.name for p in results.glob("*") if (p / "runs").is_dir())
        if not names:
            raise KdbenchError(f"no grids under {results}/: run `kdbench run GRID` first")
        rows, layout = [], None
    for name in names:
        layout = Layout(results, name)
        if not args.grid or not Path(args.grid).is_file():
            if not layout.grid_dir.is_dir():
                raise KdbenchError(f"no results for grid '{name}' under {results}/")
            rows = []
            for run_dir in sorted((layout.grid_dir / "runs").glob("*")):
                s = read_summary(run_dir) or {}
                rows.append((run_dir.name, s.get("pair", "?"), s.get("variant", "?"), s.get("seed", "?")))
        table = Table(title=f"grid '{name}' ({layout.grid_dir})")
        for column in ("run_id", "pair", "variant", "seed", "state", "epochs", "last top-1", "best top-1 (test)"):
            table.add_column(column)
        for run_id, pair, variant, seed in rows:
            state, epochs = run_state(layout, run_id)
            s = read_summary(layout.run_dir(run_id)) or {}
            last = s.get("final_top1")
            best = s.get("best_top1")
            total = s.get("epochs", "?")
            table.add_row(run_id, str(pair).replace("->", "→"), variant, str(seed), state, f"{epochs}/{total}",
                          "—" if last is None else f"{last:.2f}", "—" if best is None else f"{best:.2f}")
        console().print(table)
    return 0
