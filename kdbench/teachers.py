"""Teacher checkpoints: fetch the reference release, (later) evaluate and train teachers.

The reference teachers are mdistiller's `cifar_teachers.tar` (the CRD / RepDistiller
teachers), unpacked under the data root as
`<root>/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`.
"""

from __future__ import annotations

import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from kdbench.errors import KdbenchError

RELEASE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
TAR_NAME = "cifar_teachers.tar"
TEACHERS_DIR = "cifar_teachers"
# The teachers mdistiller's configs load from the release (models/cifar/__init__.py).
RELEASE_TEACHERS = ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")
_EXTRACTED_MARKER = ".cifar_teachers.extracted"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------- paths


def teacher_path(root: str | os.PathLike, arch: str) -> Path:
    """Where the release keeps `arch`'s checkpoint: `root/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`."""
    from kdbench.models import canonical

    return Path(root) / TEACHERS_DIR / f"{canonical(arch)}_vanilla" / "ckpt_epoch_240.pth"


# ---------------------------------------------------------------------------- fetch


def fetch(root: str | os.PathLike, url: str | None = None) -> Path:
    """Download (unless present) and safely unpack `cifar_teachers.tar` under `root`; return the teachers folder."""
    root = Path(root)
    url = url or RELEASE_URL
    tar_path = root / TAR_NAME
    if not tar_path.is_file():
        download(url, tar_path)
    teachers = root / TEACHERS_DIR
    marker = root / _EXTRACTED_MARKER
    stamp = _stamp(tar_path)
    if not (teachers.is_dir() and marker.is_file() and marker.read_text().strip() == stamp):
        try:
            safe_extract(tar_path, root)
        except KdbenchError as e:
            if "not a readable tar archive" in str(e):
                raise KdbenchError(f"{e}; delete it and re-run to download it again") from None
            raise
        if not teachers.is_dir():
            raise KdbenchError(f"{tar_path}: the archive has no '{TEACHERS_DIR}/' folder; is it the right file ({url})?")
        marker.write_text(stamp + "\n")
    return teachers


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
    from kdbench.console import console, is_interactive

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


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


# ---------------------------------------------------------------------------- safe unpacking


def safe_extract(tar_path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Unpack `tar_path` into `dest`, refusing absolute paths, `..`, links out of `dest` and special files."""
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise KdbenchError(f"archive not found: expected a file at {tar_path.resolve()}")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for member in members:
                problem = _unsafe(member, root)
                if problem:
                    raise KdbenchError(f"{tar_path}: refusing to unpack '{member.name}': {problem}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.10/3.11 patch releases
                tar.extractall(root, members=members, filter="data")
            else:
                tar.extractall(root, members=members)
    except tarfile.TarError as e:
        filter_error = getattr(tarfile, "FilterError", None)
        if filter_error is not None and isinstance(e, filter_error):
            raise KdbenchError(f"{tar_path}: refusing to unpack it: {e}") from None
        raise KdbenchError(f"{tar_path}: not a readable tar archive ({type(e).__name__}: {e})") from None


def _unsafe(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why `member` must not be unpacked into `root`, or None."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or (len(member.name) > 1 and member.name[1] == ":"):
        return "absolute path"
    if ".." in name.parts:
        return "'..' in the path"
    if not _inside(root / name, root):
        return "path leaves the destination"
    if member.issym():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or not _inside(root / name.parent / link, root):
            return f"symbolic link to '{member.linkname}' outside the destination"
    elif member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or ".." in link.parts or not _inside(root / link, root):
            return f"hard link to '{member.linkname}' outside the destination"
    elif not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    return None


def _inside(path: Path, root: Path) -> bool:
    resolved = Path(os.path.normpath(path))
    return resolved == root or root in resolved.parents


# ---------------------------------------------------------------------------- eval


def release_checkpoints(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(arch, path) of every `<arch>_vanilla/ckpt_epoch_240.pth` under `folder` whose arch is known."""
    from kdbench import models

    found = []
    for path in sorted(Path(folder).glob("*_vanilla/ckpt_epoch_240.pth")):
        arch = path.parent.name[: -len("_vanilla")]
        if arch in models.available() or _known(arch):
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

    from kdbench import atomic, data, models
    from kdbench.train import evaluate

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
    manifest = {"dataset": splits.name, "device": str(device_),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "teachers": entries}
    atomic.write_json(Path(folder) / "teachers.json", manifest)
    return manifest


# ---------------------------------------------------------------------------- train


def train_teacher(teacher_config: dict, weights_path: Path, data_root: Path, device: str,
                  progress=None, should_stop=None, options=None) -> Path:
    """Train a teacher from scratch with the student harness (the vanilla method).

    `teacher_config` is `{arch, dataset, seed, schedule, options}`; `options` are the speed
    options (`train.Options`) to train with. The run record (checkpoint,
    metrics, summary) goes next to `weights_path`, so an interrupted training resumes; the
    finished weights are written to `weights_path` in the release format `{"model": state_dict}`.
    """
    from kdbench import atomic
    from kdbench.train import Cohort, Member, Options, Schedule, train_cohort

    out_dir = Path(weights_path).parent
    member = Member(
        run_id=f"teacher-{teacher_config['arch']}", student=teacher_config["arch"], method="vanilla", hparams={},
        schedule=Schedule.from_dict(teacher_config["schedule"]), out_dir=out_dir, config=teacher_config,
        record={"variant": "teacher"},
    )
    cohort = Cohort(dataset=teacher_config["dataset"], seed=teacher_config["seed"], members=[member],
                    options=options or Options(), data_root=Path(data_root))
    reporter = progress.cohort(f"teacher {teacher_config['arch']}", {member.run_id: "teacher"}) if progress else None
    try:
        (result,) = train_cohort(cohort, device, reporter=reporter, should_stop=should_stop)
    finally:
        if reporter:
            reporter.finish()
    if result.status == "failed":
        raise KdbenchError(f"training teacher {teacher_config['arch']} failed: {result.summary['failure']['reason']}")
    atomic.torch_save(weights_path, {"model": result.model.state_dict(), "epoch": result.epochs_done,
                                     "accuracy": result.summary["final_top1"]})
    if progress:
        progress.log(f"teacher {teacher_config['arch']} trained: test top-1 {result.summary['final_top1']:.2f} "
                     f"→ {weights_path}")
    return Path(weights_path)


# ---------------------------------------------------------------------------- CLI


def cli_teachers(args) -> int:
    """`kdbench teachers fetch|eval|train`."""
    from rich.table import Table

    from kdbench import data
    from kdbench.console import console

    root = data.resolve_root(args.data_dir, None)
    if args.teachers_command == "fetch":
        folder = fetch(root, args.url)
        found = release_checkpoints(folder)
        console().print(f"{len(found)} teachers in {folder}: {', '.join(a for a, _ in found)}")
        return 0
    if args.teachers_command == "eval":
        from kdbench.bench import check_device

        folder = Path(args.teachers_dir) if args.teachers_dir else root / TEACHERS_DIR
        manifest = evaluate_teachers(folder, args.dataset, root, str(check_device(args.device)))
        table = Table(title=f"teachers on {manifest['dataset']} (test set), measured on {manifest['device']}")
        for column in ("arch", "top-1", "top-5", "sha256", "path"):
            table.add_column(column)
        for e in manifest["teachers"]:
            table.add_row(e["arch"], f"{e['top1']:.2f}", f"{e['top5']:.2f}", e["sha256"][:16], e["path"])
        console().print(table)
        console().print(f"manifest: {folder / 'teachers.json'}")
        return 0
    from kdbench import models
    from kdbench.bench import check_device
    from kdbench.progress import GridProgress
    from kdbench.plan import lr_for
    from kdbench.train import Schedule

    arch = models.canonical(args.arch)
    spec = data.resolve_spec(args.dataset)
    schedule = {**Schedule().__dict__, "epochs": args.epochs, "lr": args.lr or lr_for(arch, {"lr": "auto"}),
                "milestones": [m for m in Schedule().milestones if m < args.epochs]}
    out = Path(args.out) if args.out else teacher_path(root, arch)
    progress = GridProgress(1, 0)
    try:
        train_teacher({"arch": arch, "dataset": spec, "seed": args.seed, "schedule": schedule}, out, root,
                      str(check_device(args.device)), progress)
    finally:
        progress.close()
    return 0
