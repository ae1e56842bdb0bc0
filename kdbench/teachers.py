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


# ---------------------------------------------------------------------------- eval (lead: teachers eval)


# ---------------------------------------------------------------------------- train (lead: teachers train)


# ---------------------------------------------------------------------------- CLI (lead: cli_teachers)
