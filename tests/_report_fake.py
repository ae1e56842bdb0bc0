"""Write fake run records (summary.json, metrics.jsonl) that follow docs/design.md, for report tests.

`write_run` writes one run with the fields you give; `realistic_grid` writes a grid of
plausible numbers (variants × pairs × seeds, with curves) for looking at plots.
Run as a script to render a realistic report: `python tests/_report_fake.py OUT_DIR`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

HPARAMS = {
    "vanilla": ("vanilla", {}),
    "kd": ("kd", {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "standardize": False}),
    "kd_ls": ("kd", {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0, "standardize": True}),
    "dkd": ("dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "standardize": False}),
    "normkd": ("normkd", {"temperature_norm": 1.0}),
    "label_swap": ("label_swap", {"temperature": 4.0, "standardize": False}),
    "rld": ("rld", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "standardize": False}),
}


_STARTED = itertools.count()


def write_run(root: Path, grid: str, *, variant: str, pair: str, seed: int, final_top1: float | None,
              teacher_top1: float | None = 79.42, status: str = "done", epochs: int = 3,
              curve: list[float] | None = None, **fields: Any) -> Path:
    """Write one run folder under `root/grid/runs/` and return it.

    `curve` gives test_top1 per epoch for metrics.jsonl (default: rising to `final_top1`).
    `fields` override any summary field (best_top1, wall_seconds, device, failure, …).
    Runs start one second apart in the order they are written (the report's first-seen order).
    """
    teacher, student = pair.split("->")
    method, hparams = HPARAMS.get(variant, (variant, {}))
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
        "wall_seconds": 3600.0, "cohort_size": 4, "device": "cuda:0",
        "environment": {"kdbench": "0.1", "torch": "2.4"}, "started_at": _timestamp(next(_STARTED)),
        "finished_at": "2025-01-02T00:00:00Z",
    }
    summary.update(fields)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = [{"epoch": e + 1, "lr": 0.05, "train_loss": 1.0, "test_top1": v, "test_top5": v + 10}
            for e, v in enumerate(curve[:epochs_done])]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _timestamp(seconds: int) -> str:
    return f"2025-01-01T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"


REALISTIC_PAIRS = {
    "resnet32x4->resnet8x4": (79.42, 72.5),
    "wrn_40_2->wrn_16_2": (75.61, 73.26),
    "vgg13->MobileNetV2": (74.64, 64.6),
    "resnet32x4->ShuffleV2": (79.42, 71.82),
}
REALISTIC_GAINS = {"vanilla": 0.0, "kd": 1.2, "kd_ls": 3.4, "dkd": 3.1, "normkd": 2.2, "label_swap": 1.6, "rld": 3.3}


def realistic_grid(root: Path, grid: str = "cifar100_grid", seeds: int = 3, epochs: int = 240) -> None:
    """A 7-variant × 4-pair × `seeds` grid with plausible accuracies and learning curves."""
    rng = random.Random(0)
    for pair, (t_acc, s_acc) in REALISTIC_PAIRS.items():
        for variant, gain in REALISTIC_GAINS.items():
            for seed in range(seeds):
                final = s_acc + gain + rng.gauss(0, 0.25)
                curve = []
                for e in range(1, epochs + 1):
                    # Step LR schedule: plateaus with jumps at 150, 180, 210 of 240.
                    level = 0.55 if e < 150 else 0.9 if e < 180 else 0.98 if e < 210 else 1.0
                    warm = 1 - math.exp(-e / 15)
                    curve.append(round(final * level * warm + rng.gauss(0, 0.8 if e < 150 else 0.15), 2))
                curve[-1] = round(final, 2)
                write_run(root, grid, variant=variant, pair=pair, seed=seed, final_top1=round(final, 2),
                          teacher_top1=t_acc, epochs=epochs, curve=curve, wall_seconds=7.5 * 3600,
                          cohort_size=len(REALISTIC_GAINS))


if __name__ == "__main__":
    import sys

    from kdbench.cli import main

    out = Path(sys.argv[1])
    realistic_grid(out / "results")
    raise SystemExit(main(["report", "--results-dir", str(out / "results")]))
