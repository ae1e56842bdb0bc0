"""A teacher reference (arch, source, path) and the record of each teacher file's identity.

A run config names its teacher as `{arch, checkpoint[, train_id]}` (what run ids hash);
from the plan onward the code passes a `TeacherRef` with the source as an enum and the
weights' path resolved. Every teacher file's SHA-256 is recorded the first time kdbench
uses it (or when a grid trains it), under `<results>/teachers/known/`; a file whose hash
differs from the recorded one is never used (`TeacherChanged`), so one result never mixes
two teachers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kdbench.core import atomic
from kdbench.models import sha256_file
from kdbench.models.imagenet import torchvision_weights_file, torchvision_weights_name
from kdbench.runs.records import Layout, now_iso

#: The reference release's layout under the data root: `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`.
RELEASE_DIR = "cifar_teachers"
RELEASE_FILE = "ckpt_epoch_240.pth"
#: The record of the release's SHA-256s, written at the first fetch, under the data root.
RELEASE_RECORD = "cifar_teachers.sha256.json"
#: The weights file of a teacher trained in a grid, in `<results>/teachers/<train_id>/`.
TRAINED_FILE = "teacher.pth"


class TeacherSource(str, Enum):
    """Where a teacher's weights come from."""

    MDISTILLER = "mdistiller"  # the reference release, under the data root
    TRAIN = "train"  # trained in the grid, cached by its config hash
    TORCHVISION = "torchvision"  # torchvision's pretrained weights
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
        return cls(arch, TeacherSource.FILE, Path(checkpoint))

    @property
    def checkpoint(self) -> str:
        """The weights as a run's summary names them: the file, or torchvision's pinned weights."""
        if self.source == TeacherSource.TORCHVISION:
            return f"torchvision {torchvision_weights_name(self.arch)}"
        return str(self.path)

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


def _known_path(layout: Layout, path: Path) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return layout.results / "teachers" / "known" / f"{key}.json"


def recorded_teacher(layout: Layout, ref: TeacherRef) -> dict[str, Any] | None:
    """What was recorded about `ref`'s file: `{path, arch, source, sha256, recorded_at, how}`, or None."""
    if ref.path is None:
        return None
    try:
        entry = json.loads(_known_path(layout, ref.path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


def record_teacher(layout: Layout, ref: TeacherRef, sha256: str, how: str, replace: bool = False) -> None:
    """Record `ref`'s file as having `sha256` ("trained" or "first used"); keeps an existing record unless `replace`."""
    if ref.path is None:
        return
    target = _known_path(layout, ref.path)
    if target.exists() and not replace:
        return
    atomic.write_json(target, {"path": str(Path(ref.path).resolve()), "arch": ref.arch, "source": ref.source.value,
                               "sha256": sha256, "recorded_at": now_iso(), "how": how})


def verify_teacher(layout: Layout, ref: TeacherRef) -> str | None:
    """The SHA-256 of `ref`'s file (torchvision's downloaded weights too), recorded at first use;
    `TeacherChanged` if it differs from the record."""
    if ref.path is None:
        return None
    found = sha256_file(ref.path)
    fetched = _release_sha256(ref)
    if fetched is not None and fetched[0] != found:
        raise TeacherChanged(ref, fetched[0], found, fetched[1])
    entry = recorded_teacher(layout, ref)
    if entry is None:
        record_teacher(layout, ref, found, "first used")
        return found
    if entry["sha256"] != found:
        raise TeacherChanged(ref, entry["sha256"], found, f"when it was {entry.get('how', 'first used')} "
                                                           f"({entry.get('recorded_at', '?')})")
    return found
