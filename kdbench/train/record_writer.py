"""What a cohort's training writes for each member: checkpoint, metrics, summary, error log,
and the tracking sinks fed the same per-epoch rows.

The summary is built here, from the member's live state and the cohort's facts, and written
through `kdbench.runs.records`; a full disk or a read-only folder becomes a one-line
`StorageFault`. Only the main DDP process writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kdbench.core import atomic
from kdbench.train import distributed
from kdbench.runs import records
from kdbench.runs.faults import writing
from kdbench.train.determinism import NondeterminismRecorder
from kdbench.runs.records import Failure, Status, Summary, now_iso
from kdbench.train.tracking import Sinks, open_sinks
from kdbench.train.trainee import CohortSpec, Trainee


class CohortWriter:
    """Writes every member's record of one `train_cohort` call."""

    def __init__(self, cohort: CohortSpec, dataset_name: str, device: torch.device, environment: dict[str, Any],
                 epochs: int, recorder: NondeterminismRecorder | None, precision: str):
        self.cohort, self.dataset_name, self.device, self.environment = cohort, dataset_name, device, environment
        self.epochs, self.recorder, self.precision = epochs, recorder, precision
        self.teacher_top1: float | None = None
        self.sinks: dict[str, Sinks] = {}

    @staticmethod
    def _writes(trainee: Trainee) -> Path | None:
        out = trainee.member.out_dir
        return Path(out) if out is not None and distributed.is_main() else None

    def checkpoint_path(self, trainee: Trainee) -> Path | None:
        """The member's `checkpoint.pt` (None when it keeps nothing on disk)."""
        out = trainee.member.out_dir
        return None if out is None else Path(out) / records.CHECKPOINT

    def save_partial(self, trainee: Trainee, partial: dict[str, Any]) -> None:
        """Write the member's checkpoint in the middle of an epoch (`partial`: where it stopped)."""
        out = self._writes(trainee)
        if out is not None:
            self._save_checkpoint(out, trainee, self.summary(trainee, Status.RUNNING), partial)

    def write(self, trainee: Trainee, status: Status) -> None:
        """Write the member's config (once), metrics and summary."""
        out = self._writes(trainee)
        if out is not None:
            self._write(out, trainee, self.summary(trainee, status))

    def epoch_done(self, trainee: Trainee, status: Status, row: dict[str, Any]) -> None:
        """After a finished epoch: the checkpoint, then config, metrics and summary (one
        `Summary` serves both), then the row to the tracking sinks."""
        out = self._writes(trainee)
        if out is None:
            return
        summary = self.summary(trainee, status)
        self._save_checkpoint(out, trainee, summary)
        self._write(out, trainee, summary)
        if trainee.run_id in self.sinks:
            self.sinks[trainee.run_id].log_epoch(row)

    def _save_checkpoint(self, out: Path, trainee: Trainee, summary: Summary,
                         partial: dict[str, Any] | None = None) -> None:
        # The summary travels in the checkpoint too: enough to rebuild a damaged summary.json.
        path = out / records.CHECKPOINT
        record = json.loads(json.dumps(summary.to_json()))
        with writing(path):
            atomic.torch_save(path, trainee.checkpoint(self.cohort.seed, self.cohort.teacher_sha256, record, partial))

    @staticmethod
    def _write(out: Path, trainee: Trainee, summary: Summary) -> None:
        with writing(out / records.SUMMARY):
            records.write_record(out, trainee.member.config, trainee.history, summary)

    def fail(self, trainee: Trainee, failure: Failure, exc: BaseException | None, where: str) -> None:
        """Record the member's failure: error.log (with the traceback of `exc`), then its summary;
        `metrics.jsonl` keeps the epochs it finished."""
        trainee.failure = failure
        self.close_sinks(trainee, failed=True)
        out = trainee.member.out_dir
        if out is None:
            return
        with writing(Path(out) / records.ERROR_LOG):
            failure.error_log = records.write_error_log(Path(out), failure, exc, where)
            if distributed.is_main():
                summary = self.summary(trainee, Status.FAILED)
                records.write_failure(Path(out), trainee.member.config, summary)
                self._mark_checkpoint_failed(Path(out) / records.CHECKPOINT, summary)

    @staticmethod
    def _mark_checkpoint_failed(path: Path, summary: Summary) -> None:
        """Add the failure to the last good checkpoint (its weights untouched), so that a damaged
        summary of a failed run is rebuilt as failed from the checkpoint, never resumed."""
        if not path.exists():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 -- an unreadable checkpoint: error.log and the summary hold the failure
            return
        state["failure"] = summary.failure.to_json() if summary.failure else None
        state["record"] = json.loads(json.dumps(summary.to_json()))
        with writing(path):
            atomic.torch_save(path, state)

    def open_sinks(self, trainee: Trainee) -> None:
        """The member's tracking sinks (`options.log`), fed the same rows as metrics.jsonl."""
        out = self._writes(trainee)
        if not self.cohort.options.log or out is None:
            return
        record, ref = trainee.member.record, self.cohort.teacher
        label = (f"{ref.arch if ref else ''}->{trainee.member.student} "
                 f"{record.get('variant', trainee.member.method)} seed {self.cohort.seed}")
        self.sinks[trainee.run_id] = open_sinks(
            self.cohort.options.log, out, run_config=trainee.member.config, run_id=trainee.run_id,
            grid=record.get("grid") or "", cohort=record.get("cohort") or "", start_epoch=trainee.epochs_done,
            label=label)

    def close_sinks(self, trainee: Trainee | None = None, failed: bool = False) -> None:
        """Close one member's sinks, or every member's."""
        for run_id in [trainee.run_id] if trainee is not None else list(self.sinks):
            if run_id in self.sinks:
                self.sinks.pop(run_id).close(failed=failed)

    def summary(self, trainee: Trainee, status: Status) -> Summary:
        """The member's `summary.json` as of now."""
        member, ref, options = trainee.member, self.cohort.teacher, self.cohort.options
        record = dict(member.record)
        dataset = self.cohort.dataset
        return Summary(
            run_id=member.run_id, status=status, grid=record.pop("grid", None), cohort=record.pop("cohort", None),
            dataset=self.dataset_name, dataset_spec=dataset if isinstance(dataset, dict) else {"name": dataset},
            pair=f"{ref.name if ref else ''}->{member.student}", teacher=ref.arch if ref else None,
            teacher_checkpoint=None if ref is None else ref.checkpoint,
            teacher_sha256=self.cohort.teacher_sha256, teacher_top1=self.teacher_top1,
            teacher_artifacts=dict(trainee.teacher_artifacts) or None,
            student=member.student, method=member.method, variant=record.pop("variant", member.method),
            hparams=member.hparams, seed=self.cohort.seed, schedule=member.schedule.to_dict(),
            protocol=member.config.get("protocol"), epoch_hparams=record.pop("epoch_hparams", None),
            # `precision` is what the run trained in; `precision_option` what its config asked for (`auto`).
            options={"precision": self.precision, "precision_option": options.precision,
                     "channels_last": options.channels_last, "compile": options.compile,
                     "processes": distributed.world_size()},
            failure=trainee.failure if status == Status.FAILED else None, epochs=self.epochs,
            **records.history_fields(trainee.history),
            wall_seconds=trainee.wall_seconds, cohort_size=len(self.cohort.members),
            fused_with=trainee.fused_with, device=str(self.device),
            environment=self.environment, nondeterministic_ops=self._nondeterministic_ops(trainee),
            started_at=trainee.started_at,
            finished_at=now_iso() if status in (Status.DONE, Status.FAILED) else None,
            sessions=trainee.sessions, extra=record,
        )

    def _nondeterministic_ops(self, trainee: Trainee) -> list[str] | None:
        """Ops that ran without a deterministic implementation (deterministic mode only)."""
        if self.recorder is None:
            return None
        trainee.nondeterministic_ops = list(dict.fromkeys(trainee.nondeterministic_ops + self.recorder.ops))
        return trainee.nondeterministic_ops
