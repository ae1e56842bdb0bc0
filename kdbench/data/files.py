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
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_extract_tar(archive: Path, dest: Path, top: str) -> Path:
    """Unpack the `top/` folder of a tar archive into `dest`, refusing unsafe members.

    Only regular files and folders under `top/` are accepted (no links, devices, absolute
    paths or `..`). The folder appears whole or not at all: it is unpacked into a
    temporary folder beside it and renamed into place. Returns `dest / top`.
    """
    target = dest / top
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    parts = Path(m.name).parts
                    if (m.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != top
                            or not (m.isfile() or m.isdir())):
                        raise KdbenchError(f"{archive}: unsafe or unexpected member '{m.name}'; refusing to unpack")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python < 3.11.4; every member was checked above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise KdbenchError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); delete it and fetch it again") from None
        if not (tmp / top).is_dir():
            raise KdbenchError(f"{archive}: has no '{top}/' folder; is it the right archive?")
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
