"""Teacher checkpoints: fetch the reference release, evaluate teachers, train one.

The reference teachers are mdistiller's `cifar_teachers.tar` (the CRD / RepDistiller
teachers), unpacked under the data root as
`<root>/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`.

No SHA-256 of the release is published, so `fetch` records the archive's and every
checkpoint's SHA-256 at the first fetch (`<root>/cifar_teachers.sha256.json`) and verifies
them against that record at every later fetch and every use in a run.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kdbench.data.files import safe_extract_tar
from kdbench.errors import KdbenchError
from kdbench.models import sha256_file
from kdbench.grid.recipe import Schedule, scaled_milestones
from kdbench.runs.records import Status, now_iso
from kdbench.runs.teacher_files import RELEASE_DIR, RELEASE_RECORD, read_release_record, release_path, write_release_record

RELEASE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
TAR_NAME = "cifar_teachers.tar"
TEACHERS_DIR = RELEASE_DIR
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------- paths


def teacher_path(root: str | os.PathLike, arch: str) -> Path:
    """Where the release keeps `arch`'s checkpoint: `root/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`."""
    from kdbench.models import canonical

    return release_path(root, canonical(arch))


# ---------------------------------------------------------------------------- fetch


def fetch(root: str | os.PathLike, url: str | None = None) -> Path:
    """Download (unless present), verify and safely unpack `cifar_teachers.tar` under `root`.

    The archive's SHA-256 and each unpacked checkpoint's are recorded at the first fetch and
    verified against that record afterwards; a mismatch is a one-line error. Returns the
    teachers folder.
    """
    root = Path(root)
    url = url or RELEASE_URL
    tar_path = root / TAR_NAME
    if not tar_path.is_file():
        download(url, tar_path)
    record = read_release_record(root)
    archive_sha = sha256_file(tar_path)
    if record is not None and record["archive"]["sha256"] != archive_sha:
        raise KdbenchError(
            f"{tar_path}: SHA-256 {archive_sha[:16]}… differs from {record['archive']['sha256'][:16]}… recorded at "
            f"its first fetch ({record.get('recorded_at', '?')}); delete it and {root / RELEASE_RECORD} to fetch it again")
    teachers = root / TEACHERS_DIR
    if record is None or _unpacked_files(teachers) != set(record["files"]):
        safe_extract_tar(tar_path, root, TEACHERS_DIR)
    files = {name: sha256_file(teachers.parent / name) for name in sorted(_unpacked_files(teachers))}
    if record is None:
        write_release_record(root, {"archive": {"name": TAR_NAME, "sha256": archive_sha,
                                                "size": tar_path.stat().st_size, "url": url},
                                    "files": files, "how": "recorded at the first fetch: no published SHA-256"})
        return teachers
    for name, sha in files.items():
        if record["files"].get(name) != sha:
            raise KdbenchError(f"{teachers.parent / name}: SHA-256 {sha[:16]}… differs from "
                               f"{str(record['files'].get(name))[:16]}… recorded at the first fetch; "
                               f"delete {teachers} to unpack it again")
    return teachers


def _unpacked_files(folder: Path) -> set[str]:
    """Files under the teachers folder, relative to its parent (as the release record names them)."""
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(folder.parent)) for p in folder.rglob("*") if p.is_file() and p.name != "teachers.json"}


def download(url: str, dest: str | os.PathLike) -> Path:
    """Download `url` to `dest` through a temporary file renamed on success.

    Shows a rich progress bar on a terminal and plain lines otherwise. Any network or file
    error becomes a one-line `KdbenchError` saying how to place the file by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            _copy_with_progress(response, out, total, dest.name)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise KdbenchError(
            f"could not download {url} ({type(e).__name__}: {' '.join(str(reason).split())}); "
            f"download it by hand to {dest} and re-run"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _copy_with_progress(source, out, total: int | None, label: str) -> None:
    from kdbench.core.console import console, is_interactive

    if is_interactive():
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console(), transient=True) as progress:
            task = progress.add_task(f"downloading {label}", total=total)
            for block in iter(lambda: source.read(_CHUNK), b""):
                out.write(block)
                progress.advance(task, len(block))
        return
    done, last = 0, time.monotonic()
    print(f"downloading {label}" + (f" ({total / 1e6:.0f} MB)" if total else ""), file=sys.stderr, flush=True)
    for block in iter(lambda: source.read(_CHUNK), b""):
        out.write(block)
        done += len(block)
        if time.monotonic() - last >= 10:
            share = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"  {done / 1e6:.0f} MB{share}", file=sys.stderr, flush=True)
            last = time.monotonic()
    print(f"  {done / 1e6:.0f} MB done", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- eval


def release_checkpoints(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(arch, path) of every `<arch>_vanilla/ckpt_epoch_240.pth` under `folder` whose arch is known."""
    from kdbench import models

    found = []
    for path in sorted(Path(folder).glob("*_vanilla/ckpt_epoch_240.pth")):
        arch = path.parent.name[: -len("_vanilla")]
        if _known(arch):
            found.append((models.canonical(arch), path))
    return found


def _known(arch: str) -> bool:
    from kdbench import models

    try:
        models.canonical(arch)
    except KdbenchError:
        return False
    return True


def evaluate_teachers(folder: Path, dataset: str, data_root: Path, device: str) -> dict:
    """Measure each release teacher's test accuracy; write `folder/teachers.json` (arch, path, SHA-256, top-1).

    The manifest is what runs are checked against: published teacher accuracies are
    copied from paper to paper, these are measured here.
    """
    import torch

    from kdbench import data, models
    from kdbench.core import atomic
    from kdbench.train.evaluation import evaluate

    found = release_checkpoints(folder)
    if not found:
        raise KdbenchError(f"no teacher checkpoints under {folder} (expected <arch>_vanilla/ckpt_epoch_240.pth): "
                           "run `kdbench teachers fetch` first")
    device_ = torch.device(device)
    splits = data.build(dataset, root=data_root, device=device_, seed=0)
    entries = []
    for arch, path in found:
        teacher = models.load_teacher(arch, path, num_classes=splits.num_classes, in_channels=splits.in_channels)
        metrics = evaluate(teacher.to(device_), splits.test, device_, "fp32")
        entries.append({"arch": arch, "path": str(path), "sha256": models.sha256_file(path),
                        "top1": round(metrics["top1"], 2), "top5": round(metrics["top5"], 2)})
    manifest = {"dataset": splits.name, "device": str(device_), "measured_at": now_iso(), "teachers": entries}
    atomic.write_json(Path(folder) / "teachers.json", manifest)
    return manifest


# ---------------------------------------------------------------------------- train


def train_teacher(teacher_config: dict, weights_path: Path, data_root: Path, device: str,
                  progress=None, should_stop=None, options=None) -> Path:
    """Train a teacher from scratch with the student harness (the vanilla method).

    `teacher_config` is `{arch, dataset, seed, schedule, options}`; `options` are the speed
    options (`recipe.Options`) to train with. The run record (checkpoint,
    metrics, summary) goes next to `weights_path`, so an interrupted training resumes; the
    finished weights are written to `weights_path` in the release format `{"model": state_dict}`.
    """
    from kdbench.core import atomic
    from kdbench.grid.recipe import Options, Schedule
    from kdbench.train.cohort import CohortSpec, train_cohort
    from kdbench.train.trainee import Member

    out_dir = Path(weights_path).parent
    member = Member(
        run_id=f"teacher-{teacher_config['arch']}", student=teacher_config["arch"], method="vanilla", hparams={},
        schedule=Schedule.from_dict(teacher_config["schedule"]), out_dir=out_dir, config=teacher_config,
        record={"variant": "teacher"},
    )
    cohort = CohortSpec(dataset=teacher_config["dataset"], seed=teacher_config["seed"], members=[member],
                    options=options or Options(), data_root=Path(data_root))
    reporter = progress.cohort(f"teacher {teacher_config['arch']}", {member.run_id: "teacher"}) if progress else None
    try:
        (result,) = train_cohort(cohort, device, reporter=reporter, should_stop=should_stop)
    finally:
        if reporter:
            reporter.finish()
    if result.status == Status.FAILED:
        raise KdbenchError(f"training teacher {teacher_config['arch']} failed: {result.summary.failure.reason}")
    atomic.torch_save(weights_path, {"model": result.model.state_dict(), "epoch": result.epochs_done,
                                     "accuracy": result.summary.final_top1})
    if progress:
        progress.log(f"teacher {teacher_config['arch']} trained: test top-1 {result.summary.final_top1:.2f} "
                     f"→ {weights_path}")
    return Path(weights_path)


# ---------------------------------------------------------------------------- CLI


def cli_teachers(args) -> int:
    """`kdbench teachers fetch|eval|train`."""
    from rich.table import Table

    from kdbench import data
    from kdbench.core import devices
    from kdbench.core.console import console

    root = data.resolve_root(args.data_dir, None)
    if args.teachers_command == "fetch":
        first = read_release_record(root) is None
        folder = fetch(root, args.url)
        found = release_checkpoints(folder)
        console().print(f"{len(found)} teachers in {folder}: {', '.join(a for a, _ in found)}")
        record = root / RELEASE_RECORD
        console().print(f"no SHA-256 of the release is published: recorded the archive's and each checkpoint's in "
                        f"{record}; later fetches and runs verify against it" if first else
                        f"verified the archive and each checkpoint against {record}")
        return 0
    if args.teachers_command == "eval":
        folder = Path(args.teachers_dir) if args.teachers_dir else root / TEACHERS_DIR
        manifest = evaluate_teachers(folder, args.dataset, root, str(devices.parse(args.device)))
        table = Table(title=f"teachers on {manifest['dataset']} (test set), measured on {manifest['device']}")
        for column in ("arch", "top-1", "top-5", "sha256", "path"):
            table.add_column(column)
        for e in manifest["teachers"]:
            table.add_row(e["arch"], f"{e['top1']:.2f}", f"{e['top5']:.2f}", e["sha256"][:16], e["path"])
        console().print(table)
        console().print(f"manifest: {folder / 'teachers.json'}")
        return 0
    from kdbench import models
    from kdbench.train.progress import GridProgress

    arch = models.canonical(args.arch)
    spec = data.resolve_spec(args.dataset)
    # The reference milestones scaled to the epochs, as a grid that sets only `epochs` gets them.
    schedule = Schedule(epochs=args.epochs, lr=args.lr or "auto",
                        milestones=tuple(scaled_milestones(args.epochs))).resolve(arch)
    out = Path(args.out) if args.out else teacher_path(root, arch)
    progress = GridProgress(1, 0)
    try:
        train_teacher({"arch": arch, "dataset": spec, "seed": args.seed, "schedule": schedule.to_dict()}, out, root,
                      str(devices.parse(args.device)), progress)
    finally:
        progress.close()
    return 0
