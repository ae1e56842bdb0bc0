"""Time estimates for `kdbench run --dry-run`, from measured step costs (`kdbench bench`).

Each architecture's forward and training-step time is measured once on the device at the
grid's batch size and cached in `<results>/.step_costs.json`. A cohort's epoch costs one
teacher forward plus one training step per member for every batch, plus one forward
per member over the test (and validation) images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from kdbench import config, plan

#: Training and test images of the full datasets (the `synthetic` sizes come from its spec).
FULL_SIZES = {"cifar100": (50_000, 10_000), "fashion_mnist": (60_000, 10_000), "imagenet": (1_281_167, 50_000)}


def dataset_geometry(spec: dict[str, Any]) -> dict[str, int]:
    """Classes, channels, image size and image counts of a resolved dataset spec, without loading it."""
    from kdbench import data

    dataset = data.instantiate(spec)
    if spec["name"] in FULL_SIZES:
        full_train, test = FULL_SIZES[spec["name"]]
    else:
        full_train, test = spec.get("train_size") or 0, spec.get("test_size") or 0
    val = spec.get("val_size") or 0
    train = min(spec.get("train_size") or full_train, full_train - val) if spec["name"] in FULL_SIZES else full_train - val
    return {
        "num_classes": int(getattr(dataset, "num_classes", 0) or spec.get("num_classes", 0)),
        "in_channels": int(getattr(dataset, "in_channels", 0) or spec.get("channels", 3)),
        "image_size": int(getattr(dataset, "image_size", 0) or spec.get("image_size", 32)),
        "train_images": int(train), "test_images": int(test), "val_images": int(val),
    }


def format_duration(seconds: float | None) -> str:
    """3 h 05 min, 12 min, 45 s; '?' when unknown."""
    if seconds is None or math.isnan(seconds):
        return "?"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _cached_costs(cache: Path, key: str, archs: list[str], measure: Any) -> dict[str, dict[str, float]]:
    try:
        stored = json.loads(cache.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        stored = {}
    costs = stored.get(key, {})
    missing = [a for a in archs if a not in costs]
    if missing:
        costs.update(measure(missing))
        stored[key] = costs
        try:
            from kdbench import atomic

            atomic.write_json(cache, stored)
        except OSError:
            pass
    return costs


def estimate_seconds(grid: config.Grid, cohorts: list[plan.Cohort], states: dict[str, tuple[str, int]],
                     device: str, cache_dir: Path | None = None) -> dict[str, float | None]:
    """Seconds of training left per cohort on `device`, one worker."""
    from kdbench.bench import step_costs

    if not cohorts:
        return {}
    geometry = dataset_geometry(grid.dataset)
    batch_sizes = {c.batch_size for c in cohorts}
    options = grid.options
    out: dict[str, float | None] = {}
    for batch_size in batch_sizes:
        group = [c for c in cohorts if c.batch_size == batch_size]
        archs = sorted({r.student for c in group for r in c.runs} | {c.teacher_config["arch"] for c in group if c.teacher_config})
        name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else f"cpu{torch.get_num_threads()}"
        key = (f"{name}|b{batch_size}|{options['precision']}|cl{int(options['channels_last'])}|"
               f"{geometry['in_channels']}x{geometry['image_size']}|c{geometry['num_classes']}")

        def measure(missing: list[str]) -> dict[str, dict[str, float]]:
            return step_costs(missing, device=device, batch_size=batch_size, precision=options["precision"],
                              channels_last=options["channels_last"], num_classes=geometry["num_classes"],
                              in_channels=geometry["in_channels"], image_size=geometry["image_size"])

        costs = _cached_costs((cache_dir or Path("results")) / ".step_costs.json", key, archs, measure)
        steps = math.ceil(geometry["train_images"] / batch_size)
        eval_batches = (geometry["test_images"] + geometry["val_images"]) / batch_size
        for cohort in group:
            left = [(r, cohort.epochs - states[r.run_id][1]) for r in cohort.runs if states[r.run_id][0] not in ("done", "failed")]
            epochs_left = max((e for _, e in left), default=0)
            per_step = sum(costs[r.student]["train_s"] for r, _ in left)
            per_eval = sum(costs[r.student]["forward_s"] for r, _ in left) * eval_batches
            if cohort.teacher_config:
                per_step += costs[cohort.teacher_config["arch"]]["forward_s"]
            out[cohort.cohort_id] = epochs_left * (steps * per_step + per_eval)
    return out
