"""Time estimates for `kdbench run --dry-run`: the work a grid has left, times measured costs.

`work` lists what one worker will train, in order: the teachers the grid trains itself
(`checkpoint: train`, not on disk yet), then each cohort from the epoch its members reached.
`seconds` prices it with `Costs` by arithmetic alone; `measure_costs` measures them on the
device, in the precision the runs resolve to, cached in `<results>/.step_costs.json`.

Per epoch of a cohort, every batch costs the loader's batch, one teacher forward per view
that a member needing the teacher trains on, and each member's training step once per view
(MLKD: weak and strong) plus its loss's own cost. Host workers make MLKD's strong view
meanwhile: the epoch lasts at least as long as they take, and on a CPU they share its cores.
Then every member is evaluated on the test (and validation) images and its record written.
A cohort starts by building its members, evaluating its teacher twice on the test set, and,
when its dataset differs from the previous job's, loading it (and starting the strong view's
workers: a process start). A run starts a process, and pays once per shape the slow first
calls. Costs are minima over repeats: the estimate is for a machine with nothing else to do.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kdbench import data, methods
from kdbench.grid import plan, schema
from kdbench.runs import records

#: The cache of measured costs, under the results folder.
CACHE = ".step_costs.json"
CACHE_VERSION = 2
#: A cached cost more than this many times a fresh quick probe's is measured again.
STALE_RATIO = 1.5
#: Seconds of writing one member's checkpoint, metrics and summary after an epoch (three atomic writes).
RECORD_S = 0.02
#: A process start (Python, imports) when this process's own age can't stand for it.
PROCESS_S = 4.0
VANILLA = "vanilla"
#: The costs a quick probe checks a cached value against (the others are measured once).
STEADY = frozenset({"train_s", "forward_s", "eval_s", "loss_s", "batch_s", "image_s"})


def format_duration(seconds: float | None) -> str:
    """3 h 05 min, 12 min, 45 s; '?' when unknown."""
    if seconds is None or math.isnan(seconds):
        return "?"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


# ----------------------------------------------------------------------- the work


@dataclass(frozen=True)
class Student:
    """A member as the estimate sees it: its architecture, its loss's cost key, its views."""

    arch: str
    loss: str
    views: int = 1
    needs_teacher: bool = True


@dataclass(frozen=True)
class Job:
    """Training one worker does in one go: a cohort from its first epoch left, or a teacher.

    `eval_images` are evaluated per member and epoch (test + validation);
    `teacher_eval_images` are the teacher's passes over the test set at the start.
    `data_key` names the dataset the job trains on: loading it costs when it differs from
    the previous job's (`own_data`: a teacher's training always loads its own).
    """

    label: str
    batch_size: int
    epochs: int
    train_images: int
    eval_images: int
    students: tuple[Student, ...]
    teacher: str | None = None
    teacher_eval_images: int = 0
    data_key: str = ""
    own_data: bool = False
    cohort_id: str | None = None

    @property
    def teacher_views(self) -> int:
        """Teacher forwards per batch: one per view that a member needing the teacher trains on."""
        if self.teacher is None:
            return 0
        return max((s.views for s in self.students if s.needs_teacher), default=0)

    @property
    def strong(self) -> bool:
        """Whether a member trains on MLKD's strong view (more than one view)."""
        return any(s.views > 1 for s in self.students)


def loss_key(method: str, hparams: dict[str, Any]) -> str:
    """The cost key of a method with its hyper-parameters."""
    return f"{method}{plan.canonical_json(hparams)}"


def work(grid: schema.Grid, cohorts: list[plan.Cohort], states: dict[str, tuple[str, int]],
         layout: records.Layout, data_root: Path) -> list[Job]:
    """What one worker trains, in order: teachers to train in the grid, then each cohort's runs
    left (grouped by the epoch they reached, as the worker claims them)."""
    from kdbench.runs.teacher_files import TeacherRef

    geometry = data.geometry(grid.dataset)
    eval_images = geometry["test_images"] + geometry["val_images"]
    data_key = plan.canonical_json(grid.dataset)
    jobs: list[Job] = []
    teachers: set[str] = set()
    for cohort in cohorts:
        left = [(r, states[r.run_id][1]) for r in cohort.runs if states[r.run_id][0] not in ("done", "failed")]
        teacher = cohort.teacher_config
        if left and teacher and teacher["checkpoint"] == "train" and teacher["train_id"] not in teachers:
            teachers.add(teacher["train_id"])
            path = TeacherRef.from_config(teacher, data_root, layout).path
            pair = next(p for p in grid.pairs if p.teacher and plan.teacher_training_id(grid, p) == teacher["train_id"])
            schedule = plan.teacher_training_config(grid, pair)["schedule"]
            done = records.epochs_recorded(path.parent) if not path.is_file() else schedule["epochs"]
            if done < schedule["epochs"]:
                jobs.insert(sum(1 for j in jobs if j.cohort_id is None), Job(
                    label=f"teacher {teacher['arch']}", batch_size=schedule["batch_size"],
                    epochs=schedule["epochs"] - done, train_images=geometry["train_images"], eval_images=eval_images,
                    students=(Student(teacher["arch"], loss_key(VANILLA, {}), 1, False),), data_key=data_key,
                    own_data=True))
        for start in sorted({epochs for _, epochs in left}):
            students = tuple(_student(r) for r, epochs in left if epochs == start)
            jobs.append(Job(
                label=cohort.cohort_id[:8], batch_size=cohort.batch_size, epochs=cohort.epochs - start,
                train_images=geometry["train_images"], eval_images=eval_images, students=students,
                teacher=teacher["arch"] if teacher else None,
                teacher_eval_images=2 * geometry["test_images"] if teacher else 0,
                data_key=f"{data_key}|{cohort.seed}|{cohort.batch_size}", cohort_id=cohort.cohort_id))
    return jobs


def _student(run: plan.Run) -> Student:
    cls = methods.method_class(run.method)
    return Student(run.student, loss_key(run.method, run.config["hparams"]), len(methods.views_of(cls) or (1,)),
                   bool(getattr(cls, "needs_teacher", True)))


# ----------------------------------------------------------------------- the arithmetic


@dataclass
class Costs:
    """Measured seconds. `arch[(arch, batch_size)]`: `train_s`, `forward_s`, `eval_s`, `warm_s`,
    `build_s` (see `kdbench.tools.bench.step_costs`); `loss[(loss key, batch_size)]`: a loss's
    forward and backward; `data[batch_size]`: `build_s`, `batch_s`; `image_s`: one strong
    view on one core; `workers`, `cores`, `threads`: the strong view's worker processes,
    the CPU cores, and the training's threads on a CPU (`cpu`)."""

    arch: dict[tuple[str, int], dict[str, float]]
    loss: dict[tuple[str, int], float] = field(default_factory=dict)
    data: dict[int, dict[str, float]] = field(default_factory=dict)
    eval_batch_size: int = 256
    image_s: float = 0.0
    workers: int = 1
    cores: int = 1
    threads: int = 1
    cpu: bool = True
    process_s: float = PROCESS_S


def with_strong_view(train_s: float, host_s: float, costs: Costs) -> float:
    """An epoch's training seconds once its strong views take `host_s` seconds of one core.

    The workers make them alongside the training, so the epoch lasts at least as long as
    they do; on a CPU with fewer cores than training threads plus workers, the cores'
    work adds up instead.
    """
    produce = host_s / max(costs.workers, 1)
    seconds = max(train_s, produce)
    if costs.cpu and costs.workers + costs.threads > costs.cores:
        seconds = max(seconds, (train_s * min(costs.threads, costs.cores) + host_s) / costs.cores)
    return seconds


def epoch_seconds(job: Job, costs: Costs) -> float:
    """One epoch of `job`: its batches, the strong view, evaluation and records."""
    arch = {a: costs.arch[(a, job.batch_size)] for a in {s.arch for s in job.students} | {job.teacher} - {None}}
    vanilla = costs.loss.get((loss_key(VANILLA, {}), job.batch_size), 0.0)
    step = costs.data.get(job.batch_size, {}).get("batch_s", 0.0)
    if job.teacher_views:
        step += job.teacher_views * arch[job.teacher]["forward_s"]
    for s in job.students:
        step += s.views * arch[s.arch]["train_s"] + max(0.0, costs.loss.get((s.loss, job.batch_size), 0.0) - vanilla)
    train = math.ceil(job.train_images / job.batch_size) * step
    if job.strong:
        train = with_strong_view(train, job.train_images * costs.image_s, costs)
    evals = sum(job.eval_images / costs.eval_batch_size * arch[s.arch]["eval_s"] for s in job.students)
    return train + evals + RECORD_S * len(job.students)


def job_seconds(job: Job, costs: Costs, load_data: bool) -> float:
    """`job`'s epochs plus its start: models built, the teacher's test passes, and with
    `load_data` the dataset loaded (and the strong view's worker processes started)."""
    start = sum(costs.arch[(s.arch, job.batch_size)]["build_s"] for s in job.students)
    if job.teacher:
        teacher = costs.arch[(job.teacher, job.batch_size)]
        start += teacher["build_s"] + job.teacher_eval_images / costs.eval_batch_size * teacher["eval_s"]
    if load_data:
        start += costs.data.get(job.batch_size, {}).get("build_s", 0.0) + (costs.process_s if job.strong else 0.0)
    return start + job.epochs * epoch_seconds(job, costs)


@dataclass
class Estimate:
    """Seconds per job (in order), the start-up, their total, and how long measuring took."""

    jobs: list[tuple[Job, float]]
    startup: float
    measuring: float = 0.0

    @property
    def total(self) -> float:
        """Everything the run will take."""
        return self.startup + sum(s for _, s in self.jobs)

    def cohort(self, cohort_id: str) -> float | None:
        """Seconds of one cohort's jobs (None if nothing is left to train in it)."""
        found = [s for j, s in self.jobs if j.cohort_id == cohort_id]
        return sum(found) if found else None


def seconds(jobs: list[Job], costs: Costs) -> Estimate:
    """The estimate of `jobs` with `costs`: each job, plus the process start and, once per
    shape, the first calls that choose kernels."""
    priced, previous = [], None
    for job in jobs:
        priced.append((job, job_seconds(job, costs, load_data=job.own_data or job.data_key != previous)))
        previous = previous if job.own_data else job.data_key
    shapes = {(a, j.batch_size) for j in jobs for a in [s.arch for s in j.students] + [j.teacher] if a}
    startup = (costs.process_s + sum(costs.arch[shape]["warm_s"] for shape in shapes)) if jobs else 0.0
    return Estimate(priced, startup)


# ----------------------------------------------------------------------- measuring


def cached(path: Path, wanted: dict[str, Callable[..., dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each wanted entry's costs: measured (`measure(quick=False)`) when not in the cache at
    `path`, else probed quickly (`measure(quick=True)`) and measured again when a cached
    steady cost (`STEADY`) is more than `STALE_RATIO` times the probe's. Costs measured
    once (`build_s`, `warm_s`) keep the smaller of the cached and the probed value. The
    cache is rewritten if it changed."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    entries = stored.get("costs", {}) if isinstance(stored, dict) and stored.get("version") == CACHE_VERSION else {}
    out, changed = {}, False
    for key, measure in wanted.items():
        old = entries.get(key)
        if not isinstance(old, dict) or not all(isinstance(v, (int, float)) for v in old.values()):
            out[key], changed = measure(quick=False), True
            continue
        probe = measure(quick=True)
        if any(k not in old or (k in STEADY and old[k] > STALE_RATIO * v) for k, v in probe.items()):
            probe = {k: min(v, probe.get(k, v)) for k, v in measure(quick=False).items()}
            out[key], changed = probe, True
        else:
            out[key] = {k: min(v, probe.get(k, v)) if k not in STEADY else v for k, v in old.items()}
            changed = changed or out[key] != old
    if changed:
        entries.update(out)
        try:
            from kdbench.core import atomic

            atomic.write_json(path, {"version": CACHE_VERSION, "costs": entries})
        except OSError:
            pass  # a read-only results folder: measure again next time
    return out


def process_age() -> float:
    """Seconds this process has run (start-up and imports, when asked early); `PROCESS_S` where
    that is unknown, or too long to be a start-up (a test session, an interactive shell)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return PROCESS_S
    return age if 0 < age < 30 else PROCESS_S


def device_key(device: torch.device) -> str:
    """What a cost depends on besides the shapes: the device, threads and PyTorch."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from kdbench.runs.environment import cpu_name

        name = cpu_name() or "cpu"
    return f"{name}|threads{torch.get_num_threads()}|torch{torch.__version__}"


def measure_costs(jobs: list[Job], grid: schema.Grid, device: str | torch.device, cache: Path,
                  data_root: Path) -> Costs:
    """The costs `jobs` need on `device`, in the precision the grid's runs resolve to there,
    through the cache at `cache` (`cached`)."""
    from functools import partial

    from kdbench.tools import bench
    from kdbench.data.loaders import STRONG_WORKERS
    from kdbench.train.precision import resolve
    from kdbench.train.determinism import set_deterministic

    dev, options = torch.device(device), grid.options
    precision = resolve(dev, options["precision"])
    if options.get("deterministic"):
        set_deterministic(dev)  # slower kernels on a GPU: measure those
    g = data.geometry(grid.dataset)
    ebs = options["eval_batch_size"]
    where = device_key(dev)
    shape = (f"{precision}|cl{int(options['channels_last'])}|compile{int(options['compile'])}|"
             f"det{int(bool(options.get('deterministic')))}|{g['in_channels']}x{g['image_size']}|k{g['num_classes']}|e{ebs}")
    sizes = sorted({j.batch_size for j in jobs})
    archs = sorted({(a, j.batch_size) for j in jobs for a in [s.arch for s in j.students] + [j.teacher] if a})
    losses = sorted({(s.loss, j.batch_size) for j in jobs for s in j.students} | {(loss_key(VANILLA, {}), b) for b in sizes})
    common = dict(device=dev, num_classes=g["num_classes"])
    arch_keys = {ab: f"arch|{ab[0]}|b{ab[1]}|{shape}|{where}" for ab in archs}
    loss_keys = {kb: f"loss|{kb[0]}|b{kb[1]}|k{g['num_classes']}|{where}" for kb in losses}
    data_keys = {b: f"data|{plan.canonical_json(grid.dataset)}|b{b}|{shape}|{where}" for b in sizes}
    wanted: dict[str, Callable[..., dict[str, float]]] = {}
    for (arch, b), key in arch_keys.items():
        wanted[key] = lambda quick, arch=arch, b=b: bench.step_costs(
            [arch], batch_size=b, precision=precision, channels_last=options["channels_last"],
            in_channels=g["in_channels"], image_size=g["image_size"], eval_batch_size=ebs,
            compile=options["compile"], quick=quick, **common)[arch]
    for (loss, b), key in loss_keys.items():
        method, _, hparams = loss.partition("{")
        wanted[key] = partial(bench.loss_costs, method, json.loads("{" + hparams), batch_size=b, **common)
    for b, key in data_keys.items():
        wanted[key] = partial(bench.data_costs, grid.dataset, root=data_root, device=dev, batch_size=b,
                              eval_batch_size=ebs, channels_last=options["channels_last"])
    cls = data.dataset_class(grid.dataset["name"])
    strong_key = f"strong|{g['in_channels']}x{g['image_size']}|p{cls.crop_padding}|f{int(cls.hflip)}|{where}"
    if any(j.strong for j in jobs):
        wanted[strong_key] = partial(bench.strong_costs, g["in_channels"], g["image_size"], cls.crop_padding, cls.hflip)
    found = cached(cache, wanted)
    return Costs(
        arch={ab: found[key] for ab, key in arch_keys.items()},
        loss={kb: found[key]["loss_s"] for kb, key in loss_keys.items()},
        data={b: found[key] for b, key in data_keys.items()},
        eval_batch_size=ebs, image_s=found[strong_key]["image_s"] if strong_key in found else 0.0,
        workers=STRONG_WORKERS, threads=torch.get_num_threads(), cpu=dev.type == "cpu",
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def estimate(grid: schema.Grid, cohorts: list[plan.Cohort], states: dict[str, tuple[str, int]],
             device: str, layout: records.Layout, data_root: Path | None = None) -> Estimate:
    """The time one worker on `device` will take to train what is left of `cohorts`, start-up
    and grid-trained teachers included; costs cached under `layout.results`."""

    process_s = process_age()
    started = time.perf_counter()
    root = data_root if data_root is not None else data.resolve_root(None, grid.data_root)
    jobs = work(grid, cohorts, states, layout, root)
    if not jobs:
        return Estimate([], 0.0)
    costs = measure_costs(jobs, grid, device, layout.results / CACHE, root)
    costs.process_s = process_s
    result = seconds(jobs, costs)
    result.measuring = time.perf_counter() - started
    return result
