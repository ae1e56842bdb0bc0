"""The tables `kdbench run` and `kdbench status` print: the plan, the end-of-run summary, each run's state."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from kdbench.grid import plan, schema
from kdbench.runs import records
from kdbench.core.console import console
from kdbench.runs.locks import LockState, LockWatch
from kdbench.runs.records import Layout, RecordError, RunState, Status, Summary
from kdbench.runs.states import run_state


def _summary(layout: Layout, run_id: str) -> Summary | None:
    try:
        return records.read_summary(layout.run_dir(run_id))
    except RecordError:
        return None


def failure_line(summary: Summary, run_dir: Path) -> str:
    """"reason (epoch 3, step 12); traceback in <run>/error.log"."""
    failure = summary.failure
    if failure is None:
        return "failed"
    where = failure.where()
    terms = f" terms {failure.terms}" if failure.terms else ""
    log = f"; traceback in {run_dir / failure.error_log}" if failure.error_log else ""
    return f"{failure.reason}{f' ({where})' if where else ''}{terms}{log}"


def _mean_text(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{sum(values) / len(values):.2f} (n={len(values)})"


def print_summary(grid: schema.Grid, runs: list[plan.Run], layout: Layout, quiet: bool = False) -> int:
    """The end-of-run table (mean last-epoch top-1 per pair and variant) and the failures; 1 if any failed."""
    summaries = {r.run_id: _summary(layout, r.run_id) for r in runs}
    if not quiet:
        pairs = list(dict.fromkeys(r.pair for r in runs))
        table = Table(title=f"{grid.name}: last-epoch test top-1 (%), mean over finished seeds")
        table.add_column("variant")
        for pair in pairs:
            table.add_column(pair.replace("->", "→"), justify="right")
        for variant in dict.fromkeys(r.variant for r in runs):
            cells = []
            for pair in pairs:
                done = [summaries[r.run_id] for r in runs if r.pair == pair and r.variant == variant]
                cells.append(_mean_text([s.final_top1 for s in done
                                         if s is not None and s.status == Status.DONE and s.final_top1 is not None]))
            table.add_row(variant, *cells)
        console().print(table)
    watch = LockWatch()
    states = {r.run_id: run_state(layout, r.run_id, watch)[0] for r in runs}
    counts = {s: list(states.values()).count(s) for s in RunState if s in states.values()}
    console().print("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    failed = [r for r in runs if states[r.run_id] == RunState.FAILED]
    for run in failed:
        summary = summaries[run.run_id]
        line = failure_line(summary, layout.run_dir(run.run_id)) if summary else "failed"
        console().print(f"FAILED {run.run_id} {run.pair} {run.variant} seed {run.seed}: {line}", markup=False,
                        soft_wrap=True)
    for run in runs:
        if states[run.run_id] == RunState.DAMAGED:
            console().print(f"DAMAGED {run.run_id} {run.pair} {run.variant} seed {run.seed}: "
                            f"`kdbench verify {grid.source}` says why", markup=False, soft_wrap=True)
    return 1 if failed else 0


def print_plan(grid: schema.Grid, runs: list[plan.Run], layout: Layout, device: str,
               data_root: Path | None = None) -> int:
    """The dry-run table: cohorts, their runs' states, and a time estimate (teachers and start-up included)."""
    from kdbench.launch.estimate import CACHE, estimate, format_duration

    watch = LockWatch()
    states = {r.run_id: run_state(layout, r.run_id, watch) for r in runs}
    cohorts = plan.cohorts(runs, grid.options["max_cohort_size"])
    table = Table(title=f"plan of grid '{grid.name}' ({grid.source})")
    for column in ("cohort", "teacher", "students", "seed", "runs", "done", "partial", "new", "estimate"):
        table.add_column(column, justify="right" if column in ("seed", "runs", "done", "partial", "new") else "left")
    found = estimate(grid, cohorts, states, device, layout, data_root)

    def count(cohort_runs, *kinds) -> int:
        return sum(1 for r in cohort_runs if states[r.run_id][0] in kinds)

    for cohort in cohorts:
        students = ", ".join(dict.fromkeys(r.student for r in cohort.runs))
        table.add_row(
            cohort.cohort_id[:8], cohort.teacher_config["arch"] if cohort.teacher_config else "—", students,
            str(cohort.seed), str(len(cohort.runs)), str(count(cohort.runs, RunState.DONE, RunState.FAILED)),
            str(count(cohort.runs, RunState.PARTIAL, RunState.RUNNING, RunState.DAMAGED)),
            str(count(cohort.runs, RunState.NEW)), format_duration(found.cohort(cohort.cohort_id) or 0.0),
        )
    console().print(table)
    parts = [f"{job.label} ({job.epochs} epoch{'s' if job.epochs != 1 else ''}, trained in the grid): {format_duration(s)}"
             for job, s in found.jobs if job.cohort_id is None]
    if found.jobs:
        parts.append(f"start-up (process, first calls of each shape): {format_duration(found.startup)}")
    console().print(
        f"{len(runs)} runs = {len({r.pair for r in runs})} pairs × {len({r.variant for r in runs})} method variants "
        f"× {len(grid.seeds)} seeds, in {len(cohorts)} cohorts; "
        f"{count(runs, RunState.DONE, RunState.FAILED)} finished, "
        f"{count(runs, RunState.PARTIAL, RunState.RUNNING, RunState.DAMAGED)} partial, {count(runs, RunState.NEW)} new. "
        f"Estimated time left on {device}: {format_duration(found.total)} (one worker"
        + (f"; cohorts {format_duration(sum(s for j, s in found.jobs if j.cohort_id))}, " + ", ".join(parts)
           if found.jobs else "")
        + (f"; costs measured in {found.measuring:.0f} s, cached in {layout.results / CACHE})"
           if found.jobs else ")"),
        soft_wrap=True,
    )
    return 0


def print_status(name: str, layout: Layout, rows: list[tuple[str, str, str, str]]) -> None:
    """One grid's runs: state, epochs, numbers so far, and why a run failed, is damaged or is held."""
    from kdbench.runs.repair import diagnose

    table = Table(title=f"grid '{name}' ({layout.grid_dir})")
    for column in ("run_id", "pair", "variant", "seed", "state", "epochs", "last top-1", "best top-1 (test)", "note"):
        table.add_column(column, overflow="fold")
    watch = LockWatch()
    for run_id, pair, variant, seed in rows:
        state, epochs = run_state(layout, run_id, watch)
        summary = _summary(layout, run_id)
        total = summary.epochs if summary and summary.epochs else "?"
        last = summary.final_top1 if summary else None
        best = summary.best_top1 if summary else None
        note = ""
        if state == RunState.FAILED and summary:
            note = failure_line(summary, layout.run_dir(run_id))
        elif state == RunState.DAMAGED:
            note = "; ".join(p.what for p in diagnose(layout, run_id)) or "damaged"
        view = watch.observe(layout.lock(run_id))
        if view.state != LockState.FREE and state not in (RunState.DONE, RunState.FAILED):
            note = (note + "; " if note else "") + _lock_note(view)
        table.add_row(run_id, str(pair).replace("->", "→"), str(variant), str(seed), str(state), f"{epochs}/{total}",
                      "—" if last is None else f"{last:.2f}", "—" if best is None else f"{best:.2f}", note)
    console().print(table)


def _lock_note(view) -> str:
    if view.content is None:
        return "lock file unreadable (treated as a lock whose heartbeat never changes)"
    age = time.time() - float(view.content.get("heartbeat", 0))
    return (f"lock {view.state}, held by {view.owner}, heartbeat {age:.0f}s ago by this host's clock "
            f"(beat {view.content.get('beat', '?')})")
