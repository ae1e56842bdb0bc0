"""`cifar100`: CIFAR-100 read from the official python-format pickles into uint8 tensors.

Files, in order of preference: the unpacked `<root>/cifar-100-python/{train,test,meta}`,
then the archive `<root>/cifar-100-python.tar.gz` (MD5-checked, unpacked safely), then a
download of that archive through torchvision's downloader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.data.base import Arrays, Dataset, register
from kdbench.data.files import load_array_pickle, md5sum, safe_extract_tar
from kdbench.errors import KdbenchError

FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The official archive's MD5 (the same value torchvision checks).
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FILES = ("train", "test", "meta")


def download_archive(root: Path) -> None:
    """Download the official archive to `<root>/cifar-100-python.tar.gz` (MD5-checked).

    Raises any exception the download raises; the caller turns it into a one-line error.
    """
    from torchvision.datasets.utils import download_url  # heavy; only when downloading

    # Download under a temporary name, so an interrupted download leaves no half archive.
    partial = root / (ARCHIVE + ".part")
    download_url(URL, str(root), filename=partial.name, md5=ARCHIVE_MD5)
    partial.replace(root / ARCHIVE)


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"cifar100: not found in {root}: put the official {ARCHIVE} (from {URL}) at {root / ARCHIVE}, "
        f"or its unpacked folder at {root / FOLDER}/ ({reason})"
    )


def ensure_files(root: Path) -> Path:
    """The folder holding `train`, `test` and `meta`, unpacking or downloading if needed."""
    folder = root / FOLDER
    if all((folder / f).is_file() for f in FILES):
        return folder
    archive = root / ARCHIVE
    if not archive.is_file():
        try:
            download_archive(root)
        except Exception as exc:  # offline, refused, interrupted: say where to put the file
            reason = f"download failed: {type(exc).__name__}: {exc}".replace("\n", " ")
            raise KdbenchError(_missing_message(root, reason)) from None
        if not archive.is_file():
            raise KdbenchError(_missing_message(root, "download produced no file"))
    actual = md5sum(archive)
    if actual != ARCHIVE_MD5:
        raise KdbenchError(
            f"{archive}: MD5 {actual} does not match the official {ARCHIVE_MD5}: the file is corrupt or "
            f"not the official archive; delete it and download {URL} again"
        )
    safe_extract_tar(archive, root, FOLDER)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise KdbenchError(f"{archive}: unpacked, but {FOLDER}/ lacks {', '.join(missing)}")
    return folder


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _field(entry: Any, key: str, path: Path, hint: str) -> Any:
    """`entry[key]`, accepting the bytes keys of Python 2 pickles read without latin1."""
    if isinstance(entry, dict):
        for k in (key, key.encode()):
            if k in entry:
                return entry[k]
    raise KdbenchError(f"{path}: no '{key}' entry; not a CIFAR-100 python-format file; {hint}")


def read_split(path: Path, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images `(N, 3, 32, 32)` and int64 fine labels `(N,)` of one pickle file."""
    entry = load_array_pickle(path, hint)
    data = np.asarray(_field(entry, "data", path, hint))
    labels = np.asarray(_field(entry, "fine_labels", path, hint), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise KdbenchError(
            f"{path}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} and "
            f"{len(labels)} labels; {hint}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 100):
        raise KdbenchError(f"{path}: fine labels outside 0..99; {hint}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, torch.from_numpy(labels)


def read_class_names(path: Path, hint: str) -> list[str]:
    """The 100 fine label names from the `meta` pickle."""
    names = [_text(n) for n in _field(load_array_pickle(path, hint), "fine_label_names", path, hint)]
    if len(names) != 100:
        raise KdbenchError(f"{path}: expected 100 fine label names, got {len(names)}; {hint}")
    return names


@register("cifar100")
class Cifar100(Dataset):
    """CIFAR-100: 50,000 train / 10,000 test 32×32 colour images, 100 classes."""

    num_classes = 100
    split_sizes = (50_000, 10_000)
    in_channels = 3
    image_size = 32
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)

    def prepare(self, root: Path) -> None:
        """Unpack, or download and unpack, the official archive if the folder is missing."""
        ensure_files(root)

    def load_arrays(self, root: Path) -> Arrays:
        """Read `<root>/cifar-100-python/` (unpacking or downloading the archive if needed)."""
        folder = ensure_files(root)
        hint = f"delete {folder}/ and unpack {root / ARCHIVE} again"
        train_images, train_labels = read_split(folder / "train", hint)
        test_images, test_labels = read_split(folder / "test", hint)
        return Arrays(train_images, train_labels, test_images, test_labels, read_class_names(folder / "meta", hint))

    def presence(self, root: Path) -> dict[str, Any]:
        """Found when the unpacked folder or the archive is in the root."""
        folder, archive = root / FOLDER, root / ARCHIVE
        if all((folder / f).is_file() for f in FILES):
            return {"name": self.name, "present": True, "path": str(folder), "note": ""}
        if archive.is_file():
            return {"name": self.name, "present": True, "path": str(archive), "note": "archive; unpacked on first use"}
        return {"name": self.name, "present": False, "path": str(folder),
                "note": f"downloaded on first use, or put {ARCHIVE} in {root}"}
