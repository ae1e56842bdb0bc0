"""The run record: a run folder's files, its status, its summary, and how to read them back.

`results/<grid>/runs/<run_id>/` is the only interface between training and reporting.
This module owns it: the file names, the record's `Status` (what `summary.json` says) apart
from the derived `RunState` (what `kdbench status` shows), the `Summary` with its JSON
round-trip, and the functions that write a run's record and read it back. Everything is
written atomically; a record that can't be read is reported as damaged, never trusted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback as traceback_module
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from kdbench.core import atomic

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
ERROR_LOG = "error.log"
#: Every file a run folder may hold, in the order training writes them.
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, SUMMARY, ERROR_LOG)
#: The copy of the grid file kept beside the runs (the report reads its order from it).
GRID_COPY = "grid.yaml"


class Status(str, Enum):
    """What a run's `summary.json` records about it."""

    DONE = "done"
    FAILED = "failed"
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value


class RunState(str, Enum):
    """What a run is, derived from its files and its lock: the record's status where it is
    final, otherwise whether a live worker holds it, it has progress, or nothing at all.
    `damaged` is a record that can't be trusted (see `kdbench verify`)."""

    DONE = "done"
    FAILED = "failed"
    RUNNING = "running"
    PARTIAL = "partial"
    NEW = "new"
    DAMAGED = "damaged"

    def __str__(self) -> str:
        return self.value


def now_iso() -> str:
    """The current UTC time, ISO-8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Layout:
    """Paths of a grid's results: `<results>/<grid>/runs/<run_id>/`, locks, the teacher cache."""

    results: Path
    grid: str

    @property
    def grid_dir(self) -> Path:
        return self.results / self.grid

    @property
    def runs_dir(self) -> Path:
        return self.grid_dir / "runs"

    @property
    def grid_copy(self) -> Path:
        return self.grid_dir / GRID_COPY

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def lock(self, run_id: str) -> Path:
        return self.grid_dir / "locks" / f"{run_id}.lock"

    def teacher_dir(self, train_id: str) -> Path:
        # Shared by every grid of the results folder: one training per teacher config.
        return self.results / "teachers" / train_id

    def teacher_lock(self, train_id: str) -> Path:
        return self.results / "teachers" / "locks" / f"{train_id}.lock"


@dataclass
class Failure:
    """Why a run failed: a one-line reason, where (1-based epoch, step), the loss terms of a
    non-finite loss, and the run folder's file holding the traceback of an exception."""

    reason: str
    epoch: int | None = None
    step: int | None = None
    terms: dict[str, float] | None = None
    error_log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "Failure | None":
        if not isinstance(obj, dict):
            return None
        return cls(reason=str(obj.get("reason", "unknown")), epoch=obj.get("epoch"), step=obj.get("step"),
                   terms=obj.get("terms"), error_log=obj.get("error_log"))

    def where(self) -> str:
        """"epoch 3, step 12" (what is known of it)."""
        parts = [f"epoch {self.epoch}"] if self.epoch is not None else []
        if self.step:
            parts.append(f"step {self.step}")
        return ", ".join(parts)


@dataclass
class Summary:
    """`summary.json`: one run's identity, recipe, status and headline numbers.

    Field by field in docs/design.md ("Run record"). Unknown fields (written by a newer
    kdbench) are kept in `extra` and written back unchanged.
    """

    run_id: str
    status: Status
    grid: str | None = None
    cohort: str | None = None
    dataset: str | None = None
    dataset_spec: dict[str, Any] | None = None
    pair: str | None = None
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    teacher_top1: float | None = None
    teacher_artifacts: dict[str, str] | None = None
    student: str | None = None
    method: str | None = None
    variant: str | None = None
    hparams: dict[str, Any] | None = None
    seed: int | None = None
    schedule: dict[str, Any] | None = None
    protocol: str | None = None
    epoch_hparams: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    failure: Failure | None = None
    epochs: int | None = None
    epochs_done: int = 0
    final_top1: float | None = None
    final_top5: float | None = None
    best_top1: float | None = None
    best_epoch: int | None = None
    val_selected_top1: float | None = None
    best_val_epoch: int | None = None
    final_top1_teacher_wrong: float | None = None
    final_top1_teacher_right: float | None = None
    test_agreement: float | None = None
    test_agreement_teacher_wrong: float | None = None
    test_ece: float | None = None
    test_nll: float | None = None
    wall_seconds: float | None = None
    cohort_size: int | None = None
    fused_with: int | None = None
    device: str | None = None
    environment: dict[str, Any] | None = None
    nondeterministic_ops: list[str] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    rebuilt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to `summary.json` (field order as declared)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "rebuilt" and value is None:
                continue  # written only by a rebuild
            if isinstance(value, Status):
                value = value.value
            elif isinstance(value, Failure):
                value = value.to_json()
            out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> "Summary":
        """A summary from a parsed `summary.json`; `RecordError` if it is not a usable record."""
        if not isinstance(obj, dict):
            raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("run_id", "status") if k not in obj]
        if missing:
            raise RecordError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        try:
            status = Status(obj["status"])
        except ValueError:
            raise RecordError(f"status {obj['status']!r} is not one of done, failed, running") from None
        values = {k: v for k, v in obj.items() if k in names}
        values["status"] = status
        values["failure"] = Failure.from_json(obj.get("failure"))
        values["sessions"] = list(obj.get("sessions") or [])
        values["epochs_done"] = obj.get("epochs_done") or 0
        summary = cls(**values, extra={k: v for k, v in obj.items() if k not in names})
        problem = summary.problem()
        if problem:
            raise RecordError(problem)
        return summary

    def problem(self) -> str | None:
        """Why this record can't be trusted as it stands (a field its status needs is missing), or None."""
        if self.status == Status.DONE and self.final_top1 is None:
            return "a done run without final_top1"
        if self.status == Status.FAILED and self.failure is None:
            return "a failed run without its failure"
        return None


class RecordError(ValueError):
    """A run record that exists but can't be used as it is: `path: why`."""

    def __init__(self, why: str, path: Path | None = None):
        self.why, self.path = why, path
        super().__init__(f"{path}: {why}" if path is not None else why)


#: The summary fields, in order: the columns of `kdbench.results.load()`.
SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(Summary) if f.name != "extra")


def read_summary(run_dir: Path) -> Summary | None:
    """The run's summary; None if there is none. `RecordError` if it can't be read or used."""
    path = Path(run_dir) / SUMMARY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"unreadable ({exc})", path) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty" if not text.strip() else f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        raise RecordError(what, path) from None
    if isinstance(obj, dict) and "run_id" not in obj:
        obj = {"run_id": Path(run_dir).name, **obj}  # the folder's name is the run id
    try:
        return Summary.from_json(obj)
    except RecordError as exc:
        raise RecordError(exc.why, path) from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The finished epochs of `metrics.jsonl`; [] if absent. `RecordError` on a malformed line."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"unreadable ({exc})", path) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RecordError(f"line {number} is not JSON (truncated?)", path) from None
        if not isinstance(row, dict) or row.get("epoch") != len(rows) + 1:
            raise RecordError(f"line {number} is not the record of epoch {len(rows) + 1}", path)
        rows.append(row)
    return rows


def epochs_recorded(run_dir: Path) -> int:
    """Epochs recorded as finished in the run's `metrics.jsonl` (0 if it is absent or unreadable)."""
    try:
        return len(read_metrics(run_dir))
    except RecordError:
        return 0


def history_fields(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's headline numbers, derived from the per-epoch rows."""
    last = history[-1] if history else {}
    best = max(history, key=lambda r: r["test_top1"]) if history else {}
    with_val = [r for r in history if r.get("val_top1") is not None]
    best_val = max(with_val, key=lambda r: r["val_top1"]) if with_val else None
    return {
        "epochs_done": len(history),
        "final_top1": last.get("test_top1"),
        "final_top5": last.get("test_top5"),
        "best_top1": best.get("test_top1"),
        "best_epoch": best.get("epoch"),
        "val_selected_top1": best_val["test_top1"] if best_val else None,
        "best_val_epoch": best_val["epoch"] if best_val else None,
        "final_top1_teacher_wrong": last.get("test_top1_teacher_wrong"),
        "final_top1_teacher_right": last.get("test_top1_teacher_right"),
        "test_agreement": last.get("test_agreement"),
        "test_agreement_teacher_wrong": last.get("test_agreement_teacher_wrong"),
        "test_ece": last.get("test_ece"),
        "test_nll": last.get("test_loss"),  # the test loss is the mean cross-entropy: the NLL
    }


def write_record(run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]], summary: Summary) -> None:
    """Write the run's config (once), its metrics and its summary, in that order, atomically.

    The checkpoint is written before this, so a kill in between loses nothing: resume
    trusts the checkpoint and rewrites these from it.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        atomic.write_yaml(run_dir / CONFIG, config)
    atomic.write_jsonl(run_dir / METRICS, history)
    atomic.write_json(run_dir / SUMMARY, summary.to_json())


def write_summary(run_dir: Path, summary: Summary) -> None:
    """Write `summary.json` alone, atomically."""
    atomic.write_json(Path(run_dir) / SUMMARY, summary.to_json())


def write_failure(run_dir: Path, config: dict[str, Any], summary: Summary) -> None:
    """Record a failed run: its config (once) and its summary; `metrics.jsonl` keeps the
    epochs the run finished before it failed."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        atomic.write_yaml(run_dir / CONFIG, config)
    write_summary(run_dir, summary)


def record_failure(run_dir: Path, config: dict[str, Any], identity: dict[str, Any], failure: Failure) -> None:
    """Record a run as failed without training it; its summary keeps what it already says
    (or, if it has none or a damaged one, the `identity` fields)."""
    try:
        summary = read_summary(run_dir)
    except RecordError:
        summary = None
    if summary is None:
        summary = Summary(run_id=Path(run_dir).name, status=Status.FAILED, **identity)
    summary.status, summary.failure, summary.finished_at = Status.FAILED, failure, now_iso()
    write_failure(run_dir, config, summary)


def write_error_log(run_dir: Path, failure: Failure, exc: BaseException | None, context: str) -> str:
    """Write the run's `error.log`: what was being done, the failure as one JSON line, and the
    exception's full traceback. Returns the file's name (for `Failure.error_log`).

    The JSON line keeps the failure's reason where it survives a damaged `summary.json`.
    """
    lines = [f"{now_iso()} {context}", "failure: " + json.dumps(failure.to_json())]
    if exc is not None:
        lines.append("".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    atomic.write_text(Path(run_dir) / ERROR_LOG, "\n".join(lines) + "\n")
    return ERROR_LOG


def read_error_log(run_dir: Path) -> Failure | None:
    """The failure recorded in the run's `error.log`, or None."""
    try:
        text = (Path(run_dir) / ERROR_LOG).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines()[:3]:
        if line.startswith("failure: "):
            try:
                return Failure.from_json(json.loads(line[len("failure: "):]))
            except json.JSONDecodeError:
                return None
    return None


def exception_reason(exc: BaseException) -> str:
    """`TypeName: first line of the message`, one line."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}".rstrip(": ")


def remove_outcome(run_dir: Path) -> None:
    """Delete what a failed run left (its record, checkpoint and error log) before it is retrained."""
    for name in (SUMMARY, METRICS, CHECKPOINT, ERROR_LOG):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass


def run_dirs(layout: Layout) -> list[Path]:
    """The grid's run folders, sorted by name."""
    if not layout.runs_dir.is_dir():
        return []
    return sorted(p for p in layout.runs_dir.iterdir() if p.is_dir())


def grid_names(results_dir: str | os.PathLike) -> list[str]:
    """Names of the grids under `results_dir` (folders holding a `runs/` folder), sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "runs").is_dir())
