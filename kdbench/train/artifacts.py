"""Teacher artifacts in the harness: built once per teacher and training split, cached next to
the teacher, handed to every member whose method declares one (`kdbench.methods.artifacts`).

Where the cache lives, keyed by the teacher file's SHA-256 and the training split:

- a teacher trained in the grid: `<results>/teachers/<train_id>/artifacts/`, beside its weights;
- any other teacher (the mdistiller release, a file, torchvision's weights): under the results
  folder, `<results>/teachers/artifacts/<sha256>/` (`CohortSpec.artifact_dir`). Not beside the
  file: the data root, a user's folder and torch.hub's cache may be read-only or shared by
  several results folders, while the results folder is where kdbench writes; the SHA-256
  names the weights, not their path, so a replaced file never meets a stale artifact.

A file is `<name>-<teacher sha256[:16]>-<split key>.pt`, the split key a hash of the dataset's
resolved spec (which fixes the training split). It is published only if absent (a hard
link), and every process uses what is published, so workers that build it at once still
train on the same bytes. Without a teacher SHA-256 (a teacher given as a model) nothing is
cached. Each run records the artifact's SHA-256 (`Summary.teacher_artifacts`), and a run is
not resumed on an artifact other than the one it recorded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench import models
from kdbench.errors import KdbenchError
from kdbench.methods.artifacts import ArtifactInputs, digest, teacher_artifact
from kdbench.runs.records import now_iso
from kdbench.runs.teacher_files import TeacherRef, TeacherSource
from kdbench.train import distributed

FORMAT = 1  # in the split key: a change to what a cached file holds starts new files


def split_key(spec: dict[str, Any]) -> str:
    """A short hash of a dataset's resolved spec, which fixes its training split."""
    text = json.dumps({"format": FORMAT, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(name: str, ref: TeacherRef | None, teacher_sha256: str | None, artifact_dir: Path | None,
               spec: dict[str, Any]) -> Path | None:
    """Where artifact `name` of this teacher and training split is cached (None: not cached)."""
    if ref is None or not teacher_sha256:
        return None
    if ref.source == TeacherSource.TRAIN and ref.path is not None:
        folder = ref.path.parent / "artifacts"
    elif artifact_dir is not None:
        folder = Path(artifact_dir) / teacher_sha256
    else:
        return None
    return folder / f"{name}-{teacher_sha256[:16]}-{split_key(spec)}.pt"


def inputs(teacher: nn.Module, arch: str, train: Any, num_classes: int, batch_size: int) -> ArtifactInputs:
    """The teacher (eval, no gradient, float32 without autocast) and the training split as a builder sees them."""
    if not hasattr(train, "in_order"):
        raise KdbenchError("a teacher artifact is built from the training split in memory; this dataset's loader "
                           "streams its images (ImageNet folders), which is not supported yet")
    if not models.splittable(teacher):
        raise KdbenchError(f"teacher {arch}: not a zoo model with a feature map and a classifier (kdbench.models.split)")
    device = next(teacher.parameters()).device

    def run(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def call(x: Tensor) -> Tensor:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                return fn(x.float()).float()
        return call

    def batches():  # noqa: ANN202  (an iterator of (images, targets))
        return ((images, targets) for images, targets, _ in train.in_order(batch_size))

    return ArtifactInputs(arch=arch, zoo=models.zoo_of(arch), num_classes=num_classes, logits=run(teacher),
                          feature_map=run(functools.partial(models.features, teacher)),
                          last_stage=run(functools.partial(models.last_stage, teacher)), batches=batches)


def _read(path: Path, name: str, teacher_sha256: str) -> tuple[Tensor, str] | None:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        tensor, recorded = record["artifact"], record["sha256"]
    except FileNotFoundError:
        return None
    except Exception:  # a damaged file: built again and replaced
        return None
    if record.get("name") != name or record.get("teacher_sha256") != teacher_sha256 or digest(tensor) != recorded:
        return None
    return tensor, recorded


def _publish(path: Path, payload: dict[str, Any], replace: bool) -> None:
    """Write `payload` to `path` unless a file is there already (`replace`: over a damaged one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the cache is as readable as the teacher
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if another worker published first: its file wins
        except FileExistsError:
            pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def obtain(cls: type[nn.Module], name: str, build_inputs: Callable[[], ArtifactInputs], path: Path | None,
           teacher_sha256: str | None, spec: dict[str, Any]) -> tuple[Tensor, str]:
    """Artifact `name` and its SHA-256: read from `path`, else built by `cls` and published there."""
    damaged = False
    if path is not None:
        found = _read(path, name, teacher_sha256 or "")
        if found is not None:
            return found
        damaged = path.exists()
    tensor = cls.build_teacher_artifact(build_inputs()).detach().cpu()
    sha = digest(tensor)
    if path is None:
        return tensor, sha
    _publish(path, {"artifact": tensor, "sha256": sha, "name": name, "teacher_sha256": teacher_sha256,
                    "dataset_spec": spec, "built_at": now_iso()}, replace=damaged)
    return _read(path, name, teacher_sha256 or "") or (tensor, sha)


def hand_over(trainees: list[Any], teacher: nn.Module | None, ref: TeacherRef | None, teacher_sha256: str | None,
              artifact_dir: Path | None, data: Any, batch_size: int,
              fail: Callable[[Any, BaseException, str], None]) -> None:
    """Give each trainee whose method declares a teacher artifact that artifact (one build per
    name), and record its SHA-256 in `trainee.teacher_artifacts`; `fail(trainee, exc, stage)`
    records a member's failure (no teacher, a build that fails, a run recorded on another one)."""
    wanting: dict[str, list[Any]] = {}
    for trainee in trainees:
        name = teacher_artifact(trainee.method)
        if name:
            wanting.setdefault(name, []).append(trainee)
    for name, members in wanting.items():
        stage = f"building its teacher's {name}"
        try:
            if teacher is None or ref is None:
                raise KdbenchError(f"method {members[0].member.method} needs its teacher's {name}, and this pair has "
                                   "no teacher")
            path = cache_path(name, ref, teacher_sha256, artifact_dir, data.spec)
            make = functools.partial(inputs, teacher, ref.arch, data.train, data.num_classes, batch_size)
            found, error = None, None
            if distributed.is_main():  # under DDP one process builds it, and every process gets its bytes
                try:
                    found = obtain(type(members[0].method), name, make, path, teacher_sha256, data.spec)
                except Exception as exc:
                    error = exc
            found = distributed.broadcast(found)
            if error is not None:
                raise error
            if found is None:
                raise KdbenchError(f"the main process could not build the teacher's {name}")
            tensor, sha = found
        except Exception as exc:
            for trainee in members:
                fail(trainee, exc, stage)
            continue
        for trainee in members:
            recorded = trainee.recorded_artifacts.get(name)
            try:
                if recorded and recorded != sha:
                    raise KdbenchError(
                        f"teacher's {name} changed: SHA-256 {sha[:16]}… differs from {recorded[:16]}… recorded by this "
                        "run; it is not resumed on another one (`kdbench run --retry-failed` retrains it)")
                trainee.method.set_teacher_artifact(tensor.to(trainee.device))
                trainee.teacher_artifacts[name] = sha
            except Exception as exc:
                fail(trainee, exc, "resuming" if recorded else stage)
