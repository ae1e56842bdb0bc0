"""File helpers shared by the dataset readers: checksums, safe unpacking, safe unpickling."""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
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


def unsafe_member(member: tarfile.TarInfo, top: str) -> str | None:
    """Why an archive member must not be unpacked (only files and folders under `top/`), or None."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in parts or ".." in Path(name).parts:
        return "'..' in the path"
    if member.issym():
        return f"symbolic link to '{member.linkname}'"
    if member.islnk():
        return f"hard link to '{member.linkname}'"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder (a device, a FIFO...)"
    if not parts or parts[0] != top:
        return f"outside the '{top}/' folder"
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def safe_extract_tar(archive: Path, dest: Path, top: str) -> Path:
    """Unpack the `top/` folder of a tar archive into `dest`, refusing unsafe members.

    This is kdbench's one extractor, for every archive. Only regular files and folders
    under `top/` are accepted: no links, devices, absolute paths or `..`; a member breaking
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
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / top, target)
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
