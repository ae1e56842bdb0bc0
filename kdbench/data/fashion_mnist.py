"""`fashion_mnist`: Fashion-MNIST from idx files (gzipped or not), padded to 32×32.

Looked for in torchvision's layout `<root>/FashionMNIST/raw/`, then in the Debian
package's `/usr/share/datasets/fashion-mnist/`; downloaded through torchvision otherwise.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data.base import Arrays, Dataset, register
from kdbench.errors import KdbenchError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
APT_HINT = "apt-get install dataset-fashion-mnist"


def torchvision_dir(root: Path) -> Path:
    """Where torchvision keeps the raw files under `root`."""
    return root / "FashionMNIST" / "raw"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_files(root: Path) -> dict[str, Path] | None:
    """The four idx files from the first folder that has them all, or None."""
    for folder in (torchvision_dir(root), DEBIAN_DIR):
        found = {key: _find(folder, stem) for key, stem in STEMS.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def download(root: Path) -> None:
    """Download the four files into torchvision's layout under `root` (MD5-checked by torchvision)."""
    from torchvision.datasets import FashionMNIST  # heavy; only when downloading

    FashionMNIST(str(root), train=True, download=True)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a uint8 array of its declared shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise KdbenchError(f"{path}: cannot read ({type(exc).__name__}: {exc}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise KdbenchError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise KdbenchError(f"{path}: truncated or corrupt: header says {shape}, file has {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise KdbenchError(f"{path}: expected images (N, 28, 28), got {array.shape}")
    # Stored padded to 32×32 with a 2-pixel zero border, like the CIFAR sets' size.
    return F.pad(torch.from_numpy(array.copy()), (2, 2, 2, 2)).unsqueeze(1)


def _labels(path: Path, n: int) -> torch.Tensor:
    array = read_idx(path)
    if array.ndim != 1 or len(array) != n or (n and array.max() >= 10):
        raise KdbenchError(f"{path}: expected {n} labels in 0..9, got shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


@register("fashion_mnist")
class FashionMnist(Dataset):
    """Fashion-MNIST: 60,000 train / 10,000 test grey images (28×28 padded to 32×32), 10 classes."""

    num_classes = 10
    split_sizes = (60_000, 10_000)
    in_channels = 1
    image_size = 32
    # Mean and std of the 60,000 unpadded 28×28 training images, pixel values / 255,
    # computed once from the official files (the border padding is not counted).
    mean = (0.2860,)
    std = (0.3530,)

    def prepare(self, root: Path) -> None:
        """Find the idx files, downloading them if they are nowhere."""
        self._files(root)

    def load_arrays(self, root: Path) -> Arrays:
        """Read the idx files from torchvision's layout or the Debian package (download if neither)."""
        files = self._files(root)
        train_images = _images(files["train_images"])
        test_images = _images(files["test_images"])
        return Arrays(
            train_images, _labels(files["train_labels"], len(train_images)),
            test_images, _labels(files["test_labels"], len(test_images)), list(CLASS_NAMES),
        )

    def _files(self, root: Path) -> dict[str, Path]:
        files = find_files(root)
        if files is None:
            try:
                download(root)
            except Exception as exc:  # offline or refused: say where the files go
                reason = f"download failed: {type(exc).__name__}: {exc}".replace("\n", " ")
                raise KdbenchError(
                    f"fashion_mnist: not found: put the four idx files (.gz or not) in {torchvision_dir(root)}/ "
                    f"or {DEBIAN_DIR}/ ({APT_HINT}) ({reason})"
                ) from None
            files = find_files(root)
            if files is None:
                raise KdbenchError(f"fashion_mnist: download finished but {torchvision_dir(root)}/ lacks the idx files")
        return files

    def presence(self, root: Path) -> dict[str, Any]:
        """Found in torchvision's layout under the root, or where the Debian package puts it."""
        files = find_files(root)
        if files is not None:
            return {"name": self.name, "present": True, "path": str(files["train_images"].parent), "note": ""}
        return {"name": self.name, "present": False, "path": str(torchvision_dir(root)),
                "note": f"downloaded on first use, or {APT_HINT}"}
