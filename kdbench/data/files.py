"""File helpers shared by the dataset readers: checksums, safe unpacking, safe unpickling.

The one extractor style, for tar and zip alike: only regular files and folders under one
top folder, no links, devices, absolute paths or `..`; every member is checked before
anything is written, and the folder is unpacked beside its destination and renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from kdbench.errors import KdbenchError


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _escapes(name: str) -> str | None:
    """Why a member named `name` could land outside the destination (absolute, `..`), or None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts or ".." in Path(name).parts:
        return "'..' in the path"
    return None


def _outside(name: str, top: str) -> str | None:
    parts = PurePosixPath(name).parts
    return f"outside the '{top}/' folder" if not parts or parts[0] != top else None


def unsafe_member(member: tarfile.TarInfo, top: str) -> str | None:
    """Why a tar member must not be unpacked (only files and folders under `top/`), or None."""
    why = _escapes(member.name)
    if why:
        return why
    if member.issym():
        return f"symbolic link to '{member.linkname}'"
    if member.islnk():
        return f"hard link to '{member.linkname}'"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder (a device, a FIFO...)"
    return _outside(member.name, top)


def unsafe_zip_member(info: zipfile.ZipInfo, top: str) -> str | None:
    """Why a zip member must not be unpacked (only files and folders under `top/`), or None.

    Zip keeps a Unix file type in the high bits of `external_attr`: a member typed as a
    symbolic link (its data is the target) is refused, and so is any other non-file type.
    """
    why = _escapes(info.filename)
    if why:
        return why
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "not a regular file or folder (a device, a FIFO...)"
    return _outside(info.filename, top)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def safe_extract_tar(archive: Path, dest: Path, top: str) -> Path:
    """Unpack the `top/` folder of a tar archive into `dest`, refusing unsafe members.

    kdbench's one extractor style (`safe_extract_zip` is its zip twin). Only regular files and
    folders under `top/` are accepted: no links, devices, absolute paths or `..`; a member breaking
    the rule is named in a one-line error and nothing is unpacked. The folder appears whole
    or not at all: it is unpacked into a temporary folder beside it and renamed into place.
    Returns `dest / top`.
    """
    target = dest / top
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise KdbenchError(f"{archive}: not a readable tar archive ({type(exc).__name__}: {_one_line(exc)}); "
                           "delete it and fetch it again") from None
    if not any(m.name.rstrip("/") == top or m.name.startswith(f"{top}/") for m in members):
        raise KdbenchError(f"{archive}: has no '{top}/' folder; is it the right archive?")
    for member in members:
        why = unsafe_member(member, top)
        if why:
            raise KdbenchError(f"{archive}: refusing to unpack '{member.name}': unsafe member, {why}")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python < 3.11.4; every member was checked above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise KdbenchError(f"{archive}: cannot unpack ({type(exc).__name__}: {_one_line(exc)}); "
                               "delete it and fetch it again") from None
        _swap_in(tmp / top, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_in(unpacked: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(unpacked, target)


def safe_extract_zip(archive: Path, dest: Path, top: str) -> Path:
    """Unpack the `top/` folder of a zip archive into `dest`: `safe_extract_tar`'s rules and
    guarantees (every member checked first, the folder whole or not at all), and each file's
    CRC checked as it is read. Returns `dest / top`."""
    target = dest / top
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise KdbenchError(f"{archive}: not a readable zip archive ({type(exc).__name__}: {_one_line(exc)}); "
                           "delete it and fetch it again") from None
    if not any(m.filename.rstrip("/") == top or m.filename.startswith(f"{top}/") for m in members):
        raise KdbenchError(f"{archive}: has no '{top}/' folder; is it the right archive?")
    for member in members:
        why = unsafe_zip_member(member, top)
        if why:
            raise KdbenchError(f"{archive}: refusing to unpack '{member.filename}': unsafe member, {why}")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", dir=dest))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    path = tmp.joinpath(*PurePosixPath(member.filename).parts)
                    if member.is_dir():
                        path.mkdir(parents=True, exist_ok=True)
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(path, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise KdbenchError(f"{archive}: cannot unpack ({type(exc).__name__}: {_one_line(exc)}); "
                               "delete it and fetch it again") from None
        if not (tmp / top).is_dir():
            raise KdbenchError(f"{archive}: has no '{top}/' folder; is it the right archive?")
        _swap_in(tmp / top, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# What a pickled numpy array may reference; anything else in a data pickle is refused,
# since unpickling can run arbitrary code.
_PICKLE_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):
            # NumPy 2 moved numpy.core to numpy._core; old pickles (like CIFAR's) name the old one.
            try:
                return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_array_pickle(path: Path, hint: str) -> Any:
    """Unpickle a file holding only builtins and numpy arrays (Python 2 pickles included).

    Any failure (truncated, corrupt, unexpected content) is one `KdbenchError` line that
    names the file and ends with `hint`.
    """
    try:
        data = path.read_bytes()
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except OSError as exc:
        raise KdbenchError(f"{path}: cannot read ({exc.strerror or exc}); {hint}") from None
    except Exception as exc:  # pickle raises many types on corrupt input
        raise KdbenchError(f"{path}: truncated or corrupt ({type(exc).__name__}: {exc}); {hint}") from None
