"""`kdbench doctor --quick --device cuda`: does capturing a cohort's step as one CUDA graph work here?

The quick checks' cohort trains twice in the deterministic mode, eagerly and with
`options.cuda_graphs: true` (`kdbench.train.graphs`): the step must be captured and
replayed (not fall back to eager), and every weight, BatchNorm statistic and metric must
equal eager's bit for bit. Only on CUDA devices.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from kdbench.doctor.checks import BUG_FIX, Check, failed, one_line, passed
from kdbench.train import determinism, graphs
from kdbench.train.cohort import train_cohort
from kdbench.train.trainee import CohortSpec, MemberResult

NAME = "cuda graphs"
_TIMING = ("epoch_seconds", "images_per_s")


def _differences(eager: list[MemberResult], graphed: list[MemberResult]) -> list[str]:
    out = []
    for a, b in zip(eager, graphed):
        if a.status != b.status:
            out.append(f"{a.run_id}: {a.status} eagerly, {b.status} as a graph")
            continue
        sa, sb = a.model.state_dict(), b.model.state_dict()
        out += [f"{a.run_id}:{key}" for key in sa if not torch.equal(sa[key], sb[key])]
        strip = lambda h: [{k: v for k, v in row.items() if k not in _TIMING} for row in h]  # noqa: E731
        if strip(a.history) != strip(b.history):
            out.append(f"{a.run_id}: metrics")
    return out


def graphs_check(device: torch.device, cohort: Callable[[], CohortSpec], splits: Callable[[], Any]) -> Iterator[Check]:
    """Eager vs. one CUDA graph per step, in the deterministic mode, on the quick checks' cohort
    (`cohort()` builds it, deterministic; `splits()` its data)."""
    spec = cohort()
    what = (f"{', '.join(m.method for m in spec.members)} for {spec.members[0].schedule.epochs} epochs, "
            "eagerly and as one CUDA graph per step, deterministic")
    try:
        data = splits()
        eager = train_cohort(replace(spec, options=replace(spec.options, cuda_graphs=False)), device, data=data)
        before = dict(graphs.STATS)
        graphed = train_cohort(replace(cohort(), options=replace(spec.options, cuda_graphs=True)), device, data=data)
    except Exception as exc:  # noqa: BLE001 -- the device or the harness: the reason is the answer
        yield failed(NAME, f"{what}: {one_line(exc.__cause__ or exc)}", BUG_FIX)
        return
    finally:
        determinism.set_deterministic(device, False)
    captures = graphs.STATS["captures"] - before.get("captures", 0)
    replays = graphs.STATS["replays"] - before.get("replays", 0)
    if graphs.STATS["fallbacks"] > before.get("fallbacks", 0) or not captures:
        yield failed(NAME, f"{what}: the step could not be captured (see the warning above); cohorts train eagerly",
                     "keep options.cuda_graphs: auto or false on this device; " + BUG_FIX)
        return
    differ = _differences(eager, graphed)
    if differ:
        yield failed(NAME, f"{what}: {len(differ)} tensors or records differ (first: {', '.join(differ[:3])})",
                     "keep options.cuda_graphs: auto or false on this device; " + BUG_FIX)
        return
    yield passed(NAME, f"{what}: {captures} captures, {replays} replays; every weight, BatchNorm statistic and "
                       "metric equal to eager's bit for bit")
