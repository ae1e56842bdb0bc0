"""Damaged run records: what is wrong with a run folder, and rebuilding what its files allow.

`diagnose` lists a run folder's problems, each with what `kdbench run` does about it
(`kdbench verify` prints them). `repair` does it: a record that the run's other files hold
enough to rebuild (a summary from the checkpoint, metrics from the checkpoint's history)
is rebuilt without training; a run whose files don't hold enough is recorded as failed
with the reason, so that `kdbench run --retry-failed` retrains just that run.

A rebuilt `summary.json` carries `rebuilt` (when and why). From a checkpoint written by
kdbench 0.1, which holds no copy of the summary, a rebuilt record lacks `teacher_sha256`,
`teacher_top1`, `environment`, `device` and `cohort`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdbench.runs import records
from kdbench.grid.plan import config_hash
from kdbench.runs.records import Failure, Layout, RecordError, Status, Summary, now_iso
from kdbench.runs.states import config_problem


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run folder, and what `kdbench run` does about it."""

    run_id: str
    what: str
    action: str

    def line(self) -> str:
        return f"{self.run_id}: {self.what} → {self.action}"


LEAVE_ALONE = "`kdbench run` leaves this run alone (restore its config.yaml, or delete the folder to retrain it)"
REBUILD_SUMMARY = "`kdbench run` rebuilds summary.json from checkpoint.pt, without training"
REBUILD_METRICS = "`kdbench run` rewrites metrics.jsonl from checkpoint.pt, without training"
RESUME = "`kdbench run` resumes the run from checkpoint.pt, which rewrites it"
RECORD_FAILED = "`kdbench run` records the run as failed; `kdbench run --retry-failed` retrains it"


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint on the CPU, or None if it is absent, can't be read, or belongs to
    another run (its config does not hash to the folder's run id)."""
    path = Path(run_dir) / records.CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, empty or not a checkpoint: torch raises many types
        return None
    if not (isinstance(state, dict) and isinstance(state.get("history"), list)):
        return None
    try:
        if config_hash(state.get("config")) != Path(run_dir).name:
            return None
    except (TypeError, ValueError):
        return None
    return state


def _summary_from_checkpoint(run_id: str, state: dict[str, Any], identity: dict[str, Any], why: str) -> Summary:
    """The summary a checkpoint holds (or, from a 0.1 checkpoint, what its config and history give)."""
    config = state.get("config") or {}
    history = state["history"]
    epochs = (config.get("schedule") or {}).get("epochs")
    record = state.get("record")
    if isinstance(record, dict):
        try:
            summary = Summary.from_json({**record, "status": record.get("status", "running")})
        except RecordError:
            summary = None
    else:
        summary = None
    if summary is None:
        teacher = config.get("teacher") or {}
        dataset = config.get("dataset") or {}
        summary = Summary(
            run_id=run_id, status=Status.RUNNING, dataset=dataset.get("name"), dataset_spec=dataset or None,
            pair=f"{teacher.get('arch', '')}->{config.get('student')}", teacher=teacher.get("arch"),
            student=config.get("student"), method=config.get("method"), hparams=config.get("hparams"),
            seed=config.get("seed"), schedule=config.get("schedule"), options=config.get("options"),
            epochs=epochs, wall_seconds=state.get("wall_seconds"), started_at=state.get("started_at"),
            sessions=list(state.get("sessions") or []),
        )
    for key, value in identity.items():
        if value is not None:
            setattr(summary, key, value)
    for key, value in records.history_fields(history).items():
        setattr(summary, key, value)
    failure = Failure.from_json(state.get("failure"))
    if failure is not None:
        summary.status, summary.failure = Status.FAILED, failure
    else:
        summary.status = Status.DONE if epochs is not None and len(history) >= epochs else Status.RUNNING
        summary.failure = None
    if summary.status == Status.DONE and summary.finished_at is None:
        summary.finished_at = now_iso()
    summary.rebuilt = f"{now_iso()}: {why}"
    return summary


def diagnose(layout: Layout, run_id: str) -> list[Problem]:
    """Every problem of the run folder `run_id`, with what `kdbench run` will do about it."""
    run_dir = layout.run_dir(run_id)
    problem = config_problem(run_dir)
    if problem:
        return [Problem(run_id, problem, LEAVE_ALONE)]
    found: list[Problem] = []
    summary = metrics = None
    try:
        summary = records.read_summary(run_dir)
    except RecordError as exc:
        found.append(Problem(run_id, str(exc), _summary_action(run_dir)))
    try:
        metrics = records.read_metrics(run_dir)
    except RecordError as exc:
        found.append(Problem(run_id, str(exc), REBUILD_METRICS if load_checkpoint(run_dir) else RECORD_FAILED))
    state = load_checkpoint(run_dir) if (run_dir / records.CHECKPOINT).exists() else None
    if (run_dir / records.CHECKPOINT).exists() and state is None:
        found.append(Problem(run_id, f"{run_dir / records.CHECKPOINT}: unreadable, or the checkpoint of another run",
                             RECORD_FAILED if not (summary and summary.status == Status.DONE) else
                             "the run's numbers stand; its checkpoint is lost (delete it to silence this)"))
    if state is not None and summary is not None and metrics is not None and summary.status != Status.FAILED:
        if len(state["history"]) != len(metrics):
            found.append(Problem(run_id, f"checkpoint.pt holds {len(state['history'])} epochs, metrics.jsonl "
                                         f"{len(metrics)}", RESUME if summary.status != Status.DONE else REBUILD_METRICS))
        elif summary.status == Status.DONE and summary.epochs_done != len(metrics):
            found.append(Problem(run_id, f"summary.json says {summary.epochs_done} epochs, metrics.jsonl "
                                         f"{len(metrics)}", REBUILD_SUMMARY))
        elif summary.status == Status.DONE and metrics and summary.final_top1 != metrics[-1].get("test_top1"):
            found.append(Problem(run_id, "summary.json's final_top1 differs from the last epoch of metrics.jsonl",
                                 REBUILD_SUMMARY))
    return found


def _summary_action(run_dir: Path) -> str:
    if load_checkpoint(run_dir) is not None:
        return REBUILD_SUMMARY
    if records.read_error_log(run_dir) is not None:
        return "`kdbench run` rebuilds summary.json as failed from error.log"
    if (run_dir / records.CHECKPOINT).exists() or records.epochs_recorded(run_dir):
        return RECORD_FAILED
    return "`kdbench run` starts the run again (it had no progress to lose)"


def repair(layout: Layout, run_id: str, identity: dict[str, Any]) -> str | None:
    """Repair what the run folder's files allow; return one line saying what was done, or None.

    `identity` holds the summary fields the planner knows (grid, variant, pair...), used when
    a summary is rebuilt. A config that no longer matches its run id is never touched.
    """
    run_dir = layout.run_dir(run_id)
    if config_problem(run_dir):
        return None
    try:
        summary = records.read_summary(run_dir)
        summary_error = None
    except RecordError as exc:
        summary, summary_error = None, str(exc)
    try:
        metrics = records.read_metrics(run_dir)
        metrics_error = None
    except RecordError as exc:
        metrics, metrics_error = None, str(exc)
    if summary_error is None and metrics_error is None:
        if summary is None or summary.status != Status.DONE or summary.epochs_done == len(metrics):
            return None
    state = load_checkpoint(run_dir)
    if state is not None:
        why = summary_error or metrics_error or "summary.json and metrics.jsonl disagreed on epochs"
        rebuilt = _summary_from_checkpoint(run_id, state, identity, why)
        if summary is not None and summary_error is None and summary.status == rebuilt.status:
            records.write_record(run_dir, state.get("config") or {}, state["history"], summary)
            return f"{run_id}: metrics.jsonl rewritten from checkpoint.pt ({why})"
        records.write_record(run_dir, state.get("config") or {}, state["history"], rebuilt)
        return f"{run_id}: summary.json rebuilt from checkpoint.pt as {rebuilt.status} ({why})"
    if summary_error is None and summary is not None and summary.status == Status.DONE:
        # Numbers recorded in a sound summary stand; only the curves are lost.
        return None
    failure = records.read_error_log(run_dir)
    base = Summary(run_id=run_id, status=Status.FAILED, **{k: v for k, v in identity.items() if v is not None})
    if failure is not None and summary_error is not None:
        base.failure, base.rebuilt = failure, f"{now_iso()}: {summary_error}"
        records.write_summary(run_dir, base)
        return f"{run_id}: summary.json rebuilt as failed from error.log ({summary_error})"
    if (run_dir / records.CHECKPOINT).exists() or records.epochs_recorded(run_dir) or metrics_error:
        reason = (f"{summary_error or metrics_error}; checkpoint.pt can't rebuild it"
                  if (run_dir / records.CHECKPOINT).exists() else f"{summary_error or metrics_error}; no checkpoint")
        base.failure = Failure(reason=f"damaged record: {reason}")
        base.rebuilt = f"{now_iso()}: {summary_error or metrics_error}"
        records.write_summary(run_dir, base)
        return f"{run_id}: recorded as failed ({reason}); `kdbench run --retry-failed` retrains it"
    # Only a damaged summary, no progress: nothing is lost by starting again.
    records.remove_outcome(run_dir)
    return f"{run_id}: damaged summary.json removed ({summary_error}); the run starts again"
