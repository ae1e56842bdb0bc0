"""Progress of a grid: rich bars on a terminal, plain periodic lines otherwise (as in CI)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdbench.core.console import console, is_interactive
from kdbench.train.trainee import Member


class Reporter(Protocol):
    """What `train_cohort` tells about its progress; `CohortProgress` draws bars or prints lines."""

    def cohort_started(self, members: list[Member], epochs: int, start_epoch: int, steps_per_epoch: int,
                       batch_size: int) -> None: ...
    def step_done(self, epoch: int, step: int) -> None: ...
    def epoch_done(self, epoch: int, rows: dict[str, dict[str, Any]]) -> None: ...


class SilentReporter:
    """A `Reporter` that says nothing (tests, benchmarks)."""

    def cohort_started(self, members: list[Member], epochs: int, start_epoch: int, steps_per_epoch: int,
                       batch_size: int) -> None:
        pass

    def step_done(self, epoch: int, step: int) -> None:
        pass

    def epoch_done(self, epoch: int, rows: dict[str, dict[str, Any]]) -> None:
        pass


def _accuracy_line(rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    return "  ".join(f"{labels.get(run_id, run_id)} {row['test_top1']:.2f}" for run_id, row in rows.items())


class GridProgress:
    """Tracks runs done out of the grid's total; hands out a reporter per cohort."""

    def __init__(self, total_runs: int, done_runs: int, prefix: str = "", quiet: bool = False):
        self.total, self.done, self.prefix, self.quiet = total_runs, done_runs, prefix, quiet
        self.interactive = is_interactive() and not quiet
        self.started = time.monotonic()
        self.progress: Progress | None = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console(), transient=False,
            )
            self.grid_task = self.progress.add_task("grid", total=total_runs, completed=done_runs, info="runs")
            self.progress.start()

    def cohort(self, description: str, labels: dict[str, str]) -> "CohortProgress":
        """A reporter for one cohort (pass it to `train_cohort`)."""
        return CohortProgress(self, description, labels)

    def runs_finished(self, count: int) -> None:
        """Count `count` more runs as finished (done or failed)."""
        self.done += count
        if self.progress is not None:
            self.progress.update(self.grid_task, completed=self.done)

    def log(self, message: str) -> None:
        """A line above the bars, or a plain line."""
        if not self.quiet:
            console().print(f"{self.prefix}{message}", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the live display."""
        if self.progress is not None:
            self.progress.stop()


class CohortProgress:
    """The `Reporter` of one cohort: a bar on a terminal, a line per epoch otherwise."""

    def __init__(self, grid: GridProgress, description: str, labels: dict[str, str]):
        self.grid, self.description, self.labels = grid, description, labels
        self.task = None
        self.epoch_started = time.monotonic()
        self.last_line = 0.0

    def cohort_started(self, members: list[Member], epochs: int, start_epoch: int, steps_per_epoch: int,
                       batch_size: int) -> None:
        """`batch_size` counts the images of one step summed over the training members."""
        self.epochs, self.steps, self.images_per_step = epochs, steps_per_epoch, batch_size
        self.accuracy = ""
        self.grid.log(f"{self.description}: {len(members)} members, epochs {start_epoch + 1}..{epochs}, "
                      f"{steps_per_epoch} steps per epoch")
        if self.grid.progress is not None:
            self.task = self.grid.progress.add_task(
                self.description[:40], total=(epochs - start_epoch) * steps_per_epoch, info="")
        self.epoch_started = time.monotonic()

    def step_done(self, epoch: int, step: int) -> None:
        if self.task is None:
            return
        # Host-side timing of queued steps: approximate on a GPU, and never a sync.
        elapsed = time.monotonic() - self.epoch_started
        speed = f", {step * self.images_per_step / elapsed:,.0f} img/s" if elapsed > 0 else ""
        self.grid.progress.update(self.task, advance=1,
                                  info=f"epoch {epoch}/{self.epochs} step {step}/{self.steps}{speed}{self.accuracy}")

    def epoch_done(self, epoch: int, rows: dict[str, dict[str, Any]]) -> None:
        seconds = time.monotonic() - self.epoch_started
        self.epoch_started = time.monotonic()
        speed = next((r.get("images_per_s") for r in rows.values() if r.get("images_per_s")), None)
        speed_text = f", {speed * len(rows):,.0f} img/s" if speed else ""
        line = f"{self.description} epoch {epoch}/{self.epochs} ({seconds:.1f}s{speed_text}) top-1: {_accuracy_line(rows, self.labels)}"
        if self.task is not None:
            self.accuracy = f" | top-1 {_accuracy_line(rows, self.labels)}"[:100]
            if epoch == self.epochs:
                self.grid.log(line)
        else:
            self.grid.log(line)

    def finish(self) -> None:
        """Remove the cohort's bar."""
        if self.task is not None:
            self.grid.progress.remove_task(self.task)
            self.task = None
