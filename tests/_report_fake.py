"""Write fake run records (summary.json, metrics.jsonl) that follow docs/design.md, for report tests.

`write_run` writes one run with the fields you give; `build_grid` writes the small grid
most report tests read (`GRID`, with a failed and a running run); `realistic_grid` writes a
grid of plausible numbers (variants × pairs × seeds, with curves) for looking at plots.
Run as a script to render a realistic report: `python tests/_report_fake.py OUT_DIR [--full]`
(`--full`: the 14 pairs of the CIFAR-100 grid, 294 runs).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from pathlib import Path
from typing import Any

from kdbench import methods
from kdbench.core import atomic
from kdbench.runs import records

def _hparams(variant: str) -> tuple[str, dict[str, Any]]:
    """(method, full hyper-parameters) of a variant label: the registered method's defaults."""
    if variant == "kd_ls":
        return "kd", methods.resolve_hparams("kd", {"temperature": 2.0, "kd_weight": 9.0, "standardize": True})
    if variant in methods.available():
        return variant, methods.resolve_hparams(variant)
    return variant, {}


_STARTED = itertools.count()


#: The summary fields of the agreement-and-calibration view, and how the fake derives them from `final_top1`
#: (agreement fields only with a teacher): linear, so a cell's mean is that of its `final_top1`s.
BEYOND_TOP1 = {
    "test_agreement": lambda top1: top1 + 8.0,
    "test_agreement_teacher_wrong": lambda top1: top1 - 40.0,
    "test_ece": lambda top1: (100.0 - top1) / 10,
    "test_nll": lambda top1: (100.0 - top1) / 25,
}


def write_run(root: Path, grid: str, *, variant: str, pair: str, seed: int, final_top1: float | None,
              teacher_top1: float | None = 79.42, status: str = "done", epochs: int = 3,
              curve: list[float] | None = None, legacy: bool = False, **fields: Any) -> Path:
    """Write one run folder under `root/grid/runs/` and return it.

    `curve` gives test_top1 per epoch for metrics.jsonl (default: rising to `final_top1`).
    `fields` override any summary field (best_top1, wall_seconds, device, failure, …).
    `legacy`: a record from before kdbench measured agreement, ECE and NLL: summary.json
    without those fields at all (`BEYOND_TOP1`).
    Runs start one second apart in the order they are written (the report's first-seen order).
    """
    teacher, student = pair.split("->")
    method, hparams = _hparams(variant)
    run_id = hashlib.sha1(f"{grid}{variant}{pair}{seed}".encode()).hexdigest()[:12]
    folder = root / grid / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    if curve is None:
        final = final_top1 if final_top1 is not None else 10.0
        curve = [final * (e + 1) / epochs for e in range(epochs)]
    epochs_done = len(curve) if status == "done" else fields.pop("epochs_done", len(curve))
    summary = {
        "run_id": run_id, "grid": grid, "cohort": f"c-{pair}-{seed}", "dataset": "cifar100",
        "dataset_spec": {"name": "cifar100"}, "pair": pair, "teacher": teacher or None,
        "teacher_checkpoint": f"{teacher}.pth" if teacher else None, "teacher_sha256": "0" * 64 if teacher else None,
        "teacher_top1": teacher_top1 if teacher else None, "student": student, "method": method,
        "variant": variant, "hparams": hparams, "seed": seed, "schedule": {"epochs": epochs}, "options": {},
        "status": status, "failure": None, "epochs": epochs, "epochs_done": epochs_done,
        "final_top1": final_top1, "final_top5": None if final_top1 is None else min(100.0, final_top1 + 18),
        "best_top1": None if final_top1 is None else max(curve), "best_epoch": curve.index(max(curve)) + 1,
        "val_selected_top1": None, "best_val_epoch": None,
        "final_top1_teacher_wrong": None if final_top1 is None else final_top1 - 50,
        "final_top1_teacher_right": None if final_top1 is None else final_top1 + 10,
        **{k: None if final_top1 is None or (k.startswith("test_agreement") and not teacher) else f(final_top1)
           for k, f in BEYOND_TOP1.items()},
        "wall_seconds": 3600.0, "cohort_size": 4, "device": "cuda:0",
        "environment": {"kdbench": "0.1", "torch": "2.4"}, "started_at": _timestamp(next(_STARTED)),
        "finished_at": "2025-01-02T00:00:00Z",
    }
    summary.update(fields)
    record = records.Summary.from_json(summary).to_json()
    if legacy:
        record = {k: v for k, v in record.items() if k not in BEYOND_TOP1}
    atomic.write_json(folder / records.SUMMARY, record)
    rows = [{"epoch": e + 1, "lr": 0.05, "train_loss": 1.0, "test_top1": v, "test_top5": v + 10}
            for e, v in enumerate(curve[:epochs_done])]
    atomic.write_jsonl(folder / records.METRICS, rows)
    return folder


def _timestamp(seconds: int) -> str:
    return f"2025-01-01T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"


# Pair A = tA->sA (teacher 80), pair B = tB->sB (teacher 75). Seeds 0, 1, 2.
# dkd in A: differences to kd 2.1, 2.0, 2.2 -> significant (scipy ttest_rel p = 0.000755).
# noisy in A: differences 1.5, -1.0, 0.5 -> not significant (scipy p = 0.6914).
# vanilla in A: differences -2.0, -2.3, -2.6 -> significantly worse (scipy p = 0.005623).
GRID = {
    ("tA->sA", 80.0): {
        "vanilla": [70.0, 70.2, 70.4],
        "kd": [72.0, 72.5, 73.0],
        "dkd": [74.1, 74.5, 75.2],
        "noisy": [73.5, 71.5, 73.5],
    },
    ("tB->sB", 75.0): {
        "vanilla": [60.0, 61.0, 62.0],
        "kd": [65.0, 66.0, 67.0],
        "dkd": [66.0, 67.0],  # seed 2 is still running
        "noisy": [67.0, 66.0, 67.0],
    },
}


# Runs of `GRID` recorded before agreement, ECE and NLL were (`legacy`): all of vanilla in B, noisy's seed 0 in B.
LEGACY = {("tB->sB", "vanilla", 0), ("tB->sB", "vanilla", 1), ("tB->sB", "vanilla", 2), ("tB->sB", "noisy", 0)}


def build_grid(root: Path, grid: str = "g", **fields: Any) -> None:
    """`GRID`'s done runs (best epoch 1 point above the last; the `LEGACY` ones without agreement, ECE and NLL),
    a failed kd run in A and a running dkd run in B."""
    for (pair, teacher), variants in GRID.items():
        for variant, values in variants.items():
            for seed, value in enumerate(values):
                write_run(root, grid, variant=variant, pair=pair, seed=seed, final_top1=value,
                          teacher_top1=teacher, best_top1=value + 1.0, legacy=(pair, variant, seed) in LEGACY,
                          **fields)
    # Never averaged: a failed kd run in A and a running dkd run in B with absurd numbers.
    write_run(root, grid, variant="kd", pair="tA->sA", seed=3, final_top1=10.0, teacher_top1=80.0, status="failed",
              failure={"reason": "non-finite loss", "epoch": 5, "step": 100, "terms": {"kd": None}})
    write_run(root, grid, variant="dkd", pair="tB->sB", seed=2, final_top1=50.0, teacher_top1=75.0, status="running",
              epochs_done=1)


def md_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows as {row label: [cells]} (the header row, starting "| Method", left out)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


REALISTIC_PAIRS = {
    "resnet32x4->resnet8x4": (79.42, 72.5),
    "wrn_40_2->wrn_16_2": (75.61, 73.26),
    "vgg13->MobileNetV2": (74.64, 64.6),
    "resnet32x4->ShuffleV2": (79.42, 71.82),
}
# The 14 pairs of experiments/cifar100_grid.yaml: teacher and vanilla-student top-1 as published.
CIFAR100_GRID_PAIRS = {
    "resnet32x4->resnet8x4": (79.42, 72.50), "vgg13->vgg8": (74.64, 70.36), "wrn_40_2->wrn_40_1": (75.61, 71.98),
    "wrn_40_2->wrn_16_2": (75.61, 73.26), "resnet56->resnet20": (72.34, 69.06),
    "resnet110->resnet32": (74.31, 71.14), "resnet110->resnet20": (74.31, 69.06),
    "resnet32x4->ShuffleV2": (79.42, 71.82), "resnet32x4->wrn_16_2": (79.42, 73.26),
    "resnet32x4->wrn_40_2": (79.42, 75.61), "wrn_40_2->resnet8x4": (75.61, 72.50),
    "wrn_40_2->MobileNetV2": (75.61, 64.60), "vgg13->MobileNetV2": (74.64, 64.60),
    "ResNet50->MobileNetV2": (79.34, 64.60),
}
REALISTIC_GAINS = {"vanilla": 0.0, "kd": 1.2, "dkd": 3.1, "normkd": 2.2, "label_swap": 1.6, "label_revision": 0.4,
                   "rld": 3.3}


def realistic_grid(root: Path, grid: str = "cifar100_grid", seeds: int = 3, epochs: int = 240,
                   pairs: dict[str, tuple[float, float]] | None = None) -> int:
    """A grid of plausible accuracies and learning curves: 7 variants × `pairs` × `seeds`; returns the run count.

    The default pairs are 4 of the CIFAR-100 grid's; `CIFAR100_GRID_PAIRS` gives all 14 (294 runs).
    The step schedule drops the LR at 5/8, 3/4 and 7/8 of training, as the reference recipe does.
    """
    rng = random.Random(0)
    count = 0
    for pair, (t_acc, s_acc) in (pairs or REALISTIC_PAIRS).items():
        for variant, gain in REALISTIC_GAINS.items():
            for seed in range(seeds):
                final = s_acc + gain + rng.gauss(0, 0.25)
                curve = []
                for e in range(1, epochs + 1):
                    level = 0.55 if e < epochs * 5 / 8 else 0.9 if e < epochs * 3 / 4 else 0.98 if e < epochs * 7 / 8 else 1.0
                    warm = 1 - math.exp(-e / (epochs / 16))
                    curve.append(round(final * level * warm + rng.gauss(0, 0.8 if level < 0.9 else 0.15), 2))
                curve[-1] = round(final, 2)
                write_run(root, grid, variant=variant, pair=pair, seed=seed, final_top1=round(final, 2),
                          teacher_top1=t_acc, epochs=epochs, curve=curve, wall_seconds=7.5 * 3600,
                          cohort_size=len(REALISTIC_GAINS))
                count += 1
    return count


if __name__ == "__main__":
    import sys

    from kdbench.cli import main

    out = Path(sys.argv[1])
    realistic_grid(out / "results", pairs=CIFAR100_GRID_PAIRS if "--full" in sys.argv else None)
    raise SystemExit(main(["report", "--results-dir", str(out / "results"), "--html"]))
