"""`kdbench run`, `kdbench status` and `kdbench verify`.

`run` heals what damaged records allow, then starts the workers (in this process, one per
device, or as submitit jobs) from one `WorkerSpec`. Exit codes on every launch path:
0 all good, 1 some runs failed, 2 kdbench could not run, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

from kdbench import models
from kdbench.core import atomic, devices
from kdbench.grid import plan, schema
from kdbench.train import distributed, precision
from kdbench.runs import records, repair
from kdbench.core.console import console
from kdbench.errors import KdbenchError
from kdbench.runs.faults import writing
from kdbench.launch.executors import SlurmOptions, combined_exit_code, run_on_devices, submit_slurm
from kdbench.runs.locks import LockState, LockWatch
from kdbench.models import sha256_file
from kdbench.launch.printers import print_plan, print_status, print_summary
from kdbench.train.progress import GridProgress
from kdbench.train.determinism import DETERMINISTIC_ENV
from kdbench.runs.records import Layout, RecordError, RunState
from kdbench.runs.states import final, run_state
from kdbench.runs.teacher_files import TeacherRef, TeacherSource, recorded_teacher
from kdbench.launch.worker import Worker
from kdbench.launch.spec import WorkerSpec, load_grid


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it; a one-line error if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KdbenchError(f"--results-dir: cannot write to '{folder}': {exc.strerror or exc}") from None


def check_teachers(runs: list[plan.Run], data_root: Path, layout: Layout) -> None:
    """Every teacher file the pending runs need must exist (trained teachers are made later)."""
    seen = set()
    for run in runs:
        ref = TeacherRef.from_config(run.config["teacher"], data_root, layout)
        if ref is None or ref.source == TeacherSource.TRAIN or ref.path in seen:
            continue
        seen.add(ref.path)
        if ref.source == TeacherSource.TORCHVISION:
            models.fetch_torchvision_weights(ref.arch)  # hash-checked; offline, one line saying where to put it
            continue
        if ref.source == TeacherSource.RANDOM:
            from kdbench import data

            geometry = data.geometry(run.config["dataset"])
            ref.make_random(geometry["num_classes"], geometry["in_channels"])  # its SHA-256 is recorded at first use
            continue
        if not ref.path.is_file() and ref.source == TeacherSource.MDISTILLER:
            from kdbench.teachers import command as teachers

            teachers.fetch(data_root)  # offline: a one-line error saying where to put the archive
        if not ref.path.is_file():
            hint = ("run `kdbench teachers fetch` (or put cifar_teachers.tar in the data root, "
                    f"{data_root})" if ref.source == TeacherSource.MDISTILLER else "check the pair's teacher checkpoint")
            raise KdbenchError(f"teacher checkpoint for {ref.arch} not found at {ref.path}: {hint}")


def keep_grid_copy(grid: schema.Grid, layout: Layout) -> None:
    """Keep the effective grid (overrides applied) beside its runs: the report orders rows as it does."""
    atomic.write_text(layout.grid_copy, grid.text if grid.text is not None else Path(grid.source).read_text())


def heal_grid(layout: Layout, runs: list[plan.Run], grid_name: str) -> None:
    """Repair the damaged records of `runs` that their files allow, one line each."""
    watch = LockWatch()
    for run in runs:
        if run_state(layout, run.run_id, watch)[0] == RunState.DAMAGED:
            message = repair.repair(layout, run.run_id, run.summary_fields(grid_name))
            if message:
                console().print(message, markup=False)
            for problem in repair.diagnose(layout, run.run_id):
                if problem.action == repair.LEAVE_ALONE:
                    console().print(f"warning: {problem.what}; the run is left alone (restore its config.yaml, "
                                    "or delete its folder to train it again)", markup=False, soft_wrap=True)


def recipe_lines(grid: schema.Grid, runs: list[plan.Run], device_names: list[str]) -> list[str]:
    """What `run` and `run --dry-run` say before training: the precision each device resolves
    to or would emulate, the epoch-counting hyper-parameters the grid's rule changed, and
    values or milestones that exceed their schedule."""
    lines = []
    requested = grid.options["precision"]
    for name in dict.fromkeys(device_names):
        warning = precision.emulation_warning(name, requested)
        if warning:
            lines.append(warning)
        elif requested == precision.AUTO:
            lines.append(f"options.precision: auto → {precision.resolve(name, requested)} on {name}")
    return lines + plan.protocol_lines(grid, runs)


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        console().print(line, markup=False, soft_wrap=True)


def cli_run(args: argparse.Namespace) -> int:
    """The `kdbench run` subcommand."""
    from kdbench import data

    spec = WorkerSpec.from_args(args)
    grid = load_grid(spec)
    layout = Layout(Path(spec.results_dir), grid.name)
    runs = plan.select(grid, spec.only)
    device_names = devices.parse_many(args.device)
    for name in device_names:
        precision.check(name, grid.options["precision"])  # bf16 on a GPU without it: one line, exit 2
    says = distributed.is_main() and not getattr(args, "worker", False)
    if grid.options["deterministic"]:
        # cuBLAS reads this once, when CUDA starts: set it before any worker (or this process) does.
        os.environ.update({k: v for k, v in DETERMINISTIC_ENV.items() if k not in os.environ})
    if args.dry_run:
        _print_lines(recipe_lines(grid, runs, device_names) if says else [])
        return print_plan(grid, runs, layout, device_names[0],
                          data_root=data.resolve_root(spec.data_dir, grid.data_root))
    check_writable(layout.grid_dir)
    data_root = data.resolve_root(spec.data_dir, grid.data_root)
    with writing():
        keep_grid_copy(grid, layout)
        if distributed.is_main() and not getattr(args, "worker", False):
            heal_grid(layout, runs, grid.name)
    watch = LockWatch()
    states = {r.run_id: run_state(layout, r.run_id, watch)[0] for r in runs}
    # Runs held by another host (or by an unreadable lock) are waited for: the lock may be abandoned.
    todo = [r for r in runs if states[r.run_id] in (RunState.NEW, RunState.PARTIAL)
            or (states[r.run_id] == RunState.FAILED and spec.retry_failed)
            or (states[r.run_id] == RunState.RUNNING and watch.observe(layout.lock(r.run_id)).foreign)]
    if todo and says:
        _print_lines(recipe_lines(grid, todo, device_names))
    if not todo and not getattr(args, "worker", False):
        running = sum(1 for s in states.values() if s == RunState.RUNNING)
        if running:
            console().print(f"Nothing to claim: the {running} unfinished runs of grid '{grid.name}' are held by "
                            "other live workers.")
            return 0
        console().print(f"Nothing to do: all {len(runs)} runs of grid '{grid.name}' are finished "
                        f"({layout.grid_dir}). `kdbench report --grid {grid.name}` makes the tables.")
        return print_summary(grid, runs, layout, quiet=True)
    if args.executor == "slurm" or len(device_names) > 1:
        data.prepare(grid.dataset, data_root)  # a missing dataset stops here, in one line
        check_teachers(todo, data_root, layout)
        if args.executor == "slurm":
            codes = submit_slurm(spec, grid.name, len({r.cohort_key for r in todo}), SlurmOptions.from_args(args))
        else:
            codes = run_on_devices(spec, device_names)
        if codes is None:
            return 0
        code = combined_exit_code(codes)
        if code in (2, 130):
            return code
        return print_summary(grid, runs, layout) or code
    device = distributed.init(device_names[0]) if distributed.launched_by_torchrun() else device_names[0]
    try:
        return _run_here(args, spec.on(device, spec.log_prefix), grid, runs, layout, states, todo, data_root)
    finally:
        distributed.shutdown()


def _run_here(args: argparse.Namespace, spec: WorkerSpec, grid: schema.Grid, runs: list[plan.Run], layout: Layout,
              states: dict[str, RunState], todo: list[plan.Run], data_root: Path) -> int:
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
    finished = sum(1 for s in states.values() if final(s))
    ddp = f" × {distributed.world_size()} DDP processes" if distributed.active() else ""
    if main and not getattr(args, "worker", False):
        console().print(f"grid '{grid.name}': {len(runs)} runs, {finished} finished, {len(todo)} to train "
                        f"on {spec.device}{ddp} → {layout.grid_dir}")
    worker = Worker(spec)
    progress = GridProgress(len(runs), finished, prefix=spec.log_prefix, quiet=not main)
    started = time.monotonic()
    try:
        outcome = worker.run(progress)
    finally:
        progress.close()
    if not main or getattr(args, "worker", False):
        return outcome.exit_code
    if outcome.interrupted:
        console().print("interrupted: every run was checkpointed; run the same command again to resume.")
        return 130
    console().print(f"trained {len(outcome.trained) + len(outcome.failed)} runs in {time.monotonic() - started:.0f}s")
    return print_summary(grid, runs, layout) or outcome.exit_code


def _grid_rows(layout: Layout) -> list[tuple[str, str, str, str]]:
    rows = []
    for run_dir in records.run_dirs(layout):
        try:
            s = records.read_summary(run_dir)
        except RecordError:
            s = None
        rows.append((run_dir.name, s.pair if s else "?", s.variant if s else "?", str(s.seed) if s else "?"))
    return rows


def _grids(args: argparse.Namespace) -> list[tuple[str, Layout, list[tuple[str, str, str, str]]]]:
    """(name, layout, rows) for a grid file (its planned runs), a grid name, or every grid."""
    results = Path(args.results_dir)
    if args.grid and Path(args.grid).is_file():
        spec = WorkerSpec(grid_path=args.grid, results_dir=str(results), overrides=tuple(getattr(args, "set", None) or ()))
        grid = load_grid(spec)
        rows = [(r.run_id, r.pair, r.variant, str(r.seed)) for r in plan.plan(grid)]
        return [(grid.name, Layout(results, grid.name), rows)]
    names = [args.grid] if args.grid else records.grid_names(results)
    if not names:
        raise KdbenchError(f"no grids under {results}/: run `kdbench run GRID` first")
    out = []
    for name in names:
        layout = Layout(results, name)
        if not layout.grid_dir.is_dir():
            raise KdbenchError(f"no results for grid '{name}' under {results}/")
        out.append((name, layout, _grid_rows(layout)))
    return out


def cli_status(args: argparse.Namespace) -> int:
    """The `kdbench status` subcommand: each run's state and its numbers so far."""
    for name, layout, rows in _grids(args):
        print_status(name, layout, rows)
    return 0


def cli_verify(args: argparse.Namespace) -> int:
    """The `kdbench verify` subcommand: one line per problem of every run folder; exit 1 if any."""
    from kdbench import data

    problems = checked = 0
    for name, layout, rows in _grids(args):
        grid_root = (load_grid(WorkerSpec(grid_path=args.grid, overrides=tuple(args.set or ()))).data_root
                     if args.grid and Path(args.grid).is_file() else None)
        data_root = data.resolve_root(args.data_dir, grid_root)
        watch = LockWatch()
        teachers: dict[Path, TeacherRef] = {}
        for run_id, *_ in rows:
            run_dir = layout.run_dir(run_id)
            if not run_dir.exists():
                continue
            checked += 1
            lines = [p.line() for p in repair.diagnose(layout, run_id)]
            ref, line = _run_teacher(layout, run_id, data_root)
            if ref is not None:
                teachers[ref.path] = ref
            lines += [line] if line else []
            view = watch.observe(layout.lock(run_id))
            if view.state != LockState.FREE and view.content is None:
                lines.append(f"{run_id}: lock file {layout.lock(run_id)} is unreadable → `kdbench run` takes it "
                             f"over once it has stayed unchanged for the stale period")
            for text in lines:
                console().print(text, markup=False, soft_wrap=True)
            problems += len(lines)
        for ref in teachers.values():
            entry = recorded_teacher(layout, ref)
            found = _sha256(ref.path) if entry and ref.path.is_file() else None
            if found is not None and found != entry["sha256"]:
                console().print(f"teacher {ref.label}: SHA-256 {found[:16]}… differs from "
                                f"{entry['sha256'][:16]}… recorded when it was {entry.get('how', 'first used')} → "
                                "`kdbench run` fails the runs that need it; `--retry-failed` retrains them on it",
                                markup=False, soft_wrap=True)
                problems += 1
        for line in mixed_teacher_lines(layout, [row[0] for row in rows]):
            console().print(line, markup=False, soft_wrap=True)
            problems += 1
    console().print(f"verified {checked} run folders: {problems or 'no'} problem{'s' if problems != 1 else ''}")
    return 1 if problems else 0


def mixed_teacher_lines(layout: Layout, run_ids: list[str]) -> list[str]:
    """One line per (variant, pair) whose runs recorded different teacher SHA-256s."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for run_id in run_ids:
        try:
            summary = records.read_summary(layout.run_dir(run_id))
        except RecordError:
            continue
        if summary is not None and summary.teacher_sha256:
            seen.setdefault((summary.variant or "?", summary.pair or "?"), {}).setdefault(summary.teacher_sha256, run_id)
    return [f"{variant} {pair}: its runs were trained on different teacher files: "
            + ", ".join(f"run {run} (SHA-256 {sha[:16]}…)" for sha, run in found.items())
            + " → the report marks the cell ‡; retrain the runs of the other file to compare seeds"
            for (variant, pair), found in seen.items() if len(found) > 1]


def _run_teacher(layout: Layout, run_id: str, data_root: Path) -> tuple[TeacherRef | None, str | None]:
    """The run's teacher file, and a line if a resumable run recorded another teacher than that file."""
    run_dir = layout.run_dir(run_id)
    try:
        summary = records.read_summary(run_dir)
        stored = yaml.safe_load((run_dir / records.CONFIG).read_text())
    except (RecordError, OSError, yaml.YAMLError):
        return None, None
    if not isinstance(stored, dict) or not stored.get("teacher"):
        return None, None
    ref = TeacherRef.from_config(stored["teacher"], data_root, layout)
    if ref is None or ref.path is None or not ref.path.is_file():
        return None, None
    if summary is None or summary.status != records.Status.RUNNING or not summary.teacher_sha256:
        return ref, None
    found = _sha256(ref.path)
    if found == summary.teacher_sha256:
        return ref, None
    return ref, (f"{run_id}: teacher {ref.label} has SHA-256 {found[:16]}…, the run recorded "
                 f"{summary.teacher_sha256[:16]}… → `kdbench run` fails it instead of resuming on another teacher")


_hashes: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """A file's SHA-256, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_file(path)
    return _hashes[key]
