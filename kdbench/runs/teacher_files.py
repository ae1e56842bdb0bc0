"""A teacher reference (arch, source, path) and the record of each teacher file's identity.

A run config names its teacher as `{arch, checkpoint[, train_id]}` (what run ids hash);
from the plan onward the code passes a `TeacherRef` with the source as an enum and the
weights' path resolved. Every teacher file's SHA-256 is recorded the first time kdbench
uses it (or when a grid trains it), under `<results>/teachers/known/`: a file inside the
results folder by its path relative to it, so that the record travels with a copied folder,
and a grid-trained teacher also in its own training summary; every run keeps the SHA-256 it
trained on too. A file whose hash differs from what was recorded is never used
(`TeacherChanged`), for runs started or not, until `kdbench run --retry-failed` accepts it,
so one result never mixes two teachers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml

from kdbench.core import atomic
from kdbench.models import sha256_file
from kdbench.runs import records
from kdbench.models.imagenet import torchvision_weights_file, torchvision_weights_name
from kdbench.grid.schema import RANDOM_TEACHER
from kdbench.runs.records import Layout, now_iso

#: The reference release's layout under the data root: `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`.
RELEASE_DIR = "cifar_teachers"
RELEASE_FILE = "ckpt_epoch_240.pth"
#: The record of the release's SHA-256s, written at the first fetch, under the data root.
RELEASE_RECORD = "cifar_teachers.sha256.json"
#: How a random teacher's weights are named in run summaries (the report marks such teachers as controls).
RANDOM_INIT = "random init"
#: The field of a grid-trained teacher's training summary that holds its weights' SHA-256.
TRAINED_SHA256 = "weights_sha256"
#: The weights file of a teacher trained in a grid, in `<results>/teachers/<train_id>/`.
TRAINED_FILE = "teacher.pth"


class TeacherSource(str, Enum):
    """Where a teacher's weights come from."""

    MDISTILLER = "mdistiller"  # the reference release, under the data root
    TRAIN = "train"  # trained in the grid, cached by its config hash
    TORCHVISION = "torchvision"  # torchvision's pretrained weights
    RANDOM = "random"  # the architecture's own initialisation under a seed: a control
    FILE = "file"  # a file path given in the grid

    def __str__(self) -> str:
        return self.value


def release_path(root: str | os.PathLike, arch: str) -> Path:
    """Where the reference release keeps `arch`'s checkpoint under the data root `root`."""
    return Path(root) / RELEASE_DIR / f"{arch}_vanilla" / RELEASE_FILE


@dataclass(frozen=True)
class TeacherRef:
    """A teacher: its architecture, where its weights come from, and their file (for torchvision,
    where torch.hub keeps its pinned weights once downloaded)."""

    arch: str
    source: TeacherSource
    path: Path | None
    train_id: str | None = None
    seed: int | None = None  # of a random teacher

    @classmethod
    def from_config(cls, teacher: dict[str, Any] | None, data_root: Path, layout: Layout) -> "TeacherRef | None":
        """The reference of a run config's `teacher` mapping (None for a pair without teacher)."""
        if teacher is None:
            return None
        checkpoint = teacher["checkpoint"]
        arch = teacher["arch"]
        if checkpoint == TeacherSource.MDISTILLER.value:
            return cls(arch, TeacherSource.MDISTILLER, release_path(data_root, arch))
        if checkpoint == TeacherSource.TORCHVISION.value:
            return cls(arch, TeacherSource.TORCHVISION, torchvision_weights_file(arch))
        if checkpoint == TeacherSource.TRAIN.value:
            train_id = teacher["train_id"]
            return cls(arch, TeacherSource.TRAIN, layout.teacher_dir(train_id) / TRAINED_FILE, train_id)
        if checkpoint == TeacherSource.RANDOM.value:
            seed = int(teacher["seed"])
            return cls(arch, TeacherSource.RANDOM, layout.grid_dir / "teachers" / f"random-{arch}-seed{seed}.pth",
                       seed=seed)
        return cls(arch, TeacherSource.FILE, Path(checkpoint))

    @property
    def checkpoint(self) -> str:
        """The weights as a run's summary names them: the file, or torchvision's pinned weights."""
        if self.source == TeacherSource.TORCHVISION:
            return f"torchvision {torchvision_weights_name(self.arch)}"
        if self.source == TeacherSource.RANDOM:
            return f"{RANDOM_INIT} (seed {self.seed}): {self.path}"
        return str(self.path)

    @property
    def name(self) -> str:
        """The teacher as a pair's name shows it: the arch, marked `(random)` for a random one."""
        return self.arch + (RANDOM_TEACHER if self.source == TeacherSource.RANDOM else "")

    def make_random(self, num_classes: int, in_channels: int) -> None:
        """Write a random teacher's weights (its file) if missing: the architecture's own
        initialisation under a generator seeded by (seed, arch), untouched global RNG."""
        if self.source != TeacherSource.RANDOM or self.path is None or self.path.is_file():
            return
        from kdbench import models

        seed = int.from_bytes(hashlib.sha256(f"random-teacher:{self.seed}:{self.arch}".encode()).digest()[:8], "little")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed & (2**63 - 1))
            model = models.build(self.arch, num_classes=num_classes, in_channels=in_channels)
        atomic.torch_save(self.path, {"model": model.state_dict()})

    @property
    def label(self) -> str:
        """How messages name it: the arch and its weights."""
        return f"{self.arch} ({self.checkpoint})"


class TeacherChanged(Exception):
    """A teacher file whose SHA-256 is not the one recorded for it."""

    def __init__(self, ref: TeacherRef, recorded: str, found: str, when: str):
        self.ref, self.recorded, self.found = ref, recorded, found
        super().__init__(
            f"teacher {ref.label} changed: SHA-256 {found[:16]}… differs from {recorded[:16]}… recorded {when}; "
            "it is not used (`kdbench run --retry-failed` retrains these runs on the new teacher)"
        )


def read_release_record(root: str | os.PathLike) -> dict[str, Any] | None:
    """The release's SHA-256s recorded at the first fetch under the data root `root`, or None."""
    try:
        record = json.loads((Path(root) / RELEASE_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("archive"), dict) and isinstance(record.get("files"), dict)
    return record if ok else None


def write_release_record(root: str | os.PathLike, record: dict[str, Any]) -> None:
    """Record the release's SHA-256s (`{archive, files, how}`) under the data root."""
    atomic.write_json(Path(root) / RELEASE_RECORD, {**record, "recorded_at": now_iso()})


def _release_sha256(ref: TeacherRef) -> tuple[str, str] | None:
    """(SHA-256, when) recorded for a release checkpoint at the first fetch, or None."""
    if ref.source != TeacherSource.MDISTILLER or ref.path is None:
        return None
    root = ref.path.parents[2]
    record = read_release_record(root)
    if record is None:
        return None
    sha = record["files"].get(str(ref.path.relative_to(root)))
    return (sha, f"at the release's first fetch ({record.get('recorded_at', '?')})") if sha else None


def _key(layout: Layout, path: Path) -> str:
    """How a teacher file is named in its record: relative to the results folder when it lies in
    it (a grid-trained teacher), so the record travels with a copied folder; else absolute."""
    path = Path(path).resolve()
    try:
        return "results:" + path.relative_to(Path(layout.results).resolve()).as_posix()
    except ValueError:
        return str(path)


def _known_path(layout: Layout, key: str) -> Path:
    return layout.results / "teachers" / "known" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def recorded_teacher(layout: Layout, ref: TeacherRef) -> dict[str, Any] | None:
    """What was recorded about `ref`'s file: `{path, arch, source, sha256, recorded_at, how}`, or None.

    Records written before files in the results folder were keyed relative to it (by absolute
    path) are still read."""
    if ref.path is None:
        return None
    for key in dict.fromkeys([_key(layout, ref.path), str(Path(ref.path).resolve())]):
        try:
            entry = json.loads(_known_path(layout, key).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            return entry
    return None


def record_teacher(layout: Layout, ref: TeacherRef, sha256: str, how: str, replace: bool = False) -> None:
    """Record `ref`'s file as having `sha256` ("trained" or "first used"); keeps an existing record unless `replace`."""
    if ref.path is None:
        return
    key = _key(layout, ref.path)
    target = _known_path(layout, key)
    if target.exists() and not replace:
        return
    atomic.write_json(target, {"path": key, "arch": ref.arch, "source": ref.source.value,
                               "sha256": sha256, "recorded_at": now_iso(), "how": how})
    if ref.source == TeacherSource.TRAIN:
        _write_trained_sha256(ref, sha256)


def _trained_sha256(ref: TeacherRef) -> tuple[str, str] | None:
    """(SHA-256, when) a grid-trained teacher's own training record holds for its weights, or None."""
    if ref.source != TeacherSource.TRAIN or ref.path is None:
        return None
    try:
        summary = records.read_summary(ref.path.parent)
    except records.RecordError:
        return None
    sha = summary.extra.get(TRAINED_SHA256) if summary is not None else None
    return (sha, f"when it was trained ({summary.finished_at or '?'})") if isinstance(sha, str) else None


def _write_trained_sha256(ref: TeacherRef, sha256: str) -> None:
    try:
        summary = records.read_summary(ref.path.parent)
    except records.RecordError:
        return
    if summary is not None:
        summary.extra[TRAINED_SHA256] = sha256
        records.write_summary(ref.path.parent, summary)


def _recorded_by_runs(layout: Layout, teacher_config: dict[str, Any] | None, found: str) -> tuple[str, str] | None:
    """(SHA-256, which run) recorded by a run of this grid with the same teacher, where it is not
    `found`: what a copied results folder still knows when no record of the file does."""
    if teacher_config is None:
        return None
    for run_dir in records.run_dirs(layout):
        try:
            config = yaml.safe_load((run_dir / records.CONFIG).read_text())
            summary = records.read_summary(run_dir)
        except (OSError, yaml.YAMLError, records.RecordError):
            continue
        if (isinstance(config, dict) and config.get("teacher") == teacher_config and summary is not None
                and summary.teacher_sha256 and summary.teacher_sha256 != found):
            return summary.teacher_sha256, f"by run {run_dir.name}"
    return None


def verify_teacher(layout: Layout, ref: TeacherRef, teacher_config: dict[str, Any] | None = None) -> str | None:
    """The SHA-256 of `ref`'s file (torchvision's downloaded weights too); `TeacherChanged` if it
    differs from what was recorded, in this order: the release's record at its first fetch, a
    grid-trained teacher's own training record, the record of the file's first use, and the
    SHA-256 a run of this grid with the same teacher (`teacher_config`) recorded. The first use
    is recorded."""
    if ref.path is None:
        return None
    found = sha256_file(ref.path)
    entry = recorded_teacher(layout, ref)
    expected = _release_sha256(ref) or _trained_sha256(ref)
    if expected is None and entry is not None:
        expected = entry["sha256"], f"when it was {entry.get('how', 'first used')} ({entry.get('recorded_at', '?')})"
    if expected is None:
        expected = _recorded_by_runs(layout, teacher_config, found)
    if expected is not None and expected[0] != found:
        raise TeacherChanged(ref, expected[0], found, expected[1])
    if entry is None:
        record_teacher(layout, ref, found, "first used")
    return found
