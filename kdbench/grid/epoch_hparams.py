"""Hyper-parameters that count epochs (DKD's warm-up, CTKD's λ ramp) under a schedule of another length.

A method declares them (`epoch_hparams`) and the schedule length their defaults were set
for (`reference_epochs`, the reference 240 unless it says otherwise). A grid chooses the rule
(`schedule.epoch_hparams`): `scale` (the default) keeps the reference recipe's shape,
v → max(1, ⌊v·E/E_ref + ½⌋) with 0 kept as 0 (`kdbench.grid.recipe.scale_epochs`); `keep` uses the
reference values as they are. A value the grid sets itself (in `methods:` or a pair's
`methods:`) is used as given. The run config holds the value the run trains with, so the run
id follows what is trained; at the reference length nothing changes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from kdbench import methods
from kdbench.grid.recipe import scale_epochs


@dataclass(frozen=True)
class Scaled:
    """One hyper-parameter the rule changed: its value for the reference schedule and the one trained."""

    key: str
    reference: int
    trained: int


def apply(method: str, hparams: dict[str, Any], given: Collection[str], epochs: int,
          rule: str) -> tuple[dict[str, Any], list[Scaled]]:
    """`hparams` with `method`'s epoch-counting hyper-parameters that are not in `given` set by
    `rule` for an `epochs`-long schedule, and what changed."""
    if rule != "scale":
        return hparams, []
    reference = methods.reference_epochs(method)
    out, changed = dict(hparams), []
    for key in methods.epoch_hparams(method):
        if key in given or key not in out:
            continue
        trained = scale_epochs(out[key], epochs, reference)
        if trained != out[key]:
            changed.append(Scaled(key, out[key], trained))
            out[key] = trained
    return out, changed


def record(method: str, rule: str, changed: list[Scaled]) -> dict[str, Any] | None:
    """What a run's summary keeps (`epoch_hparams`): the rule and each scaled value as
    [reference, trained]; None for a method without epoch-counting hyper-parameters."""
    if not methods.epoch_hparams(method):
        return None
    return {"rule": rule, "reference_epochs": methods.reference_epochs(method),
            "scaled": {c.key: [c.reference, c.trained] for c in changed}}


def overruns(method: str, hparams: dict[str, Any], epochs: int) -> list[tuple[str, int]]:
    """The epoch-counting hyper-parameters of `method` whose value exceeds an `epochs`-long
    schedule (a warm-up that never reaches full weight)."""
    return [(key, hparams[key]) for key in methods.epoch_hparams(method)
            if isinstance(hparams.get(key), int) and hparams[key] > epochs]
