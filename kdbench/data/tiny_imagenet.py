"""`tiny_imagenet`: Tiny-ImageNet-200 (200 classes, 100,000 training and 10,000 validation
images at 64×64), read from the official zip into uint8 tensors and held like CIFAR-100.

**One protocol**, named `tiny_imagenet` in every run's dataset spec: the CIFAR-style protocol
of the CRLD code (Zhang et al., ACM MM 2024), read from the third-party copy scx-822/CRLD-main
at c9d6657 (`mdistiller/dataset/tinyimagenet200.py`, `configs/tinyimagenet200/*/*.yaml`):
`RandomCrop(64, padding=8)` + `RandomHorizontalFlip()`, ImageNet's mean and std, the
CIFAR zoo with global average pooling (`F.avg_pool2d(x, x.size(3))` there, adaptive pooling
here: the same at 64×64), the CIFAR recipe (240 epochs, batch 64, LR 0.05, ×0.1 after 150,
180 and 210, weight decay 5e-4), teachers trained with that recipe. Chosen over mdistiller's
DOT loader (`RandomRotation(20)` + flip, no crop, its own mean and std; ResNet18 teaching
MobileNetV2 and ShuffleV2 only) because it is the protocol of the CIFAR-100 grids one size
up: the same zoo, recipe and crop-and-flip, which the on-device loader draws exactly as
torchvision does (a rotation would need resampling that matches PIL's), and MLKD's and
CRLD's strong view is defined for it (the CRLD copy's `..._train_transform_strong`).

`test` is the official validation split (the official test split has no labels; papers
report validation top-1), labelled from `val/val_annotations.txt` and read where it lies,
`val/images/`, never copied into class folders. Class `k` is the `k`-th wnid in sorted
order, as `ImageFolder` numbers the class folders, so teachers trained by the reference
code keep their class indices.

Files: the unpacked `<root>/tiny-imagenet-200/`, else `<root>/tiny-imagenet-200.zip`
(MD5-checked, unpacked by `files.safe_extract_zip`), else a download of it. Every file read
is hashed: the SHA-256s are recorded at first use in `<root>/tiny-imagenet-200.sha256.json`
and checked at every later load (the bytes are hashed as they are decoded).

Memory: the training split is 1.23 GB of uint8 (100,000 × 3 × 64 × 64), 1.92 GB once padded
by 8 for the crop, which the loader does up front; building it holds both for a moment
(~3.3 GB with the validation split). `storage: auto` (the default) keeps it on the device
when that peak is at most half the device's free memory, and in host memory otherwise or
when the device allocation fails (a warning says so); `device` and `host` force either.
In host memory each batch is gathered on the host and copied to the device: the batches
are the same, bit for bit (the random draws still come from the device's generator).
Each build decodes every JPEG with PIL on one core (about 0.1 ms an image: ~11 s for the set).

Tested offline on generated look-alikes of the official zip (tests/test_tiny_imagenet.py);
the real archive's MD5 and contents could not be checked here.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from kdbench.core import atomic
from kdbench.data.base import Arrays, DataSplits, Dataset, register
from kdbench.data.files import md5sum, safe_extract_zip
from kdbench.data.loaders import Batch, EvalLoader, TrainLoader, _gather, normalize
from kdbench.data.splits import split_indices
from kdbench.errors import KdbenchError

FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# Stanford publishes no checksum. This is the MD5 that avalanche's TinyImagenet
# (avalanche/benchmarks/datasets/tiny_imagenet/tiny_imagenet.py) and other major loaders check.
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
#: The SHA-256 of every file read, recorded at first use under the data root.
RECORD = "tiny-imagenet-200.sha256.json"
META_FILES = ("wnids.txt", "val/val_annotations.txt")
STORAGES = ("auto", "device", "host")


def download_archive(root: Path) -> None:
    """Download the official archive to `<root>/tiny-imagenet-200.zip` (MD5-checked); raises on failure."""
    from torchvision.datasets.utils import download_url  # heavy; only when downloading

    partial = root / (ARCHIVE + ".part")  # an interrupted download leaves no half archive
    download_url(URL, str(root), filename=partial.name, md5=ARCHIVE_MD5)
    partial.replace(root / ARCHIVE)


def _unpacked(folder: Path) -> bool:
    return all((folder / f).is_file() for f in META_FILES) and (folder / "train").is_dir() \
        and (folder / "val" / "images").is_dir()


def ensure_files(root: Path) -> Path:
    """The unpacked folder, unpacking (or downloading and unpacking) the official archive if needed."""
    folder = root / FOLDER
    if _unpacked(folder):
        return folder
    archive = root / ARCHIVE
    if not archive.is_file():
        try:
            download_archive(root)
        except Exception as exc:  # offline, refused, interrupted: say where to put the file
            raise KdbenchError(f"tiny_imagenet: not found in {root}: put the official {ARCHIVE} (from {URL}) at "
                               f"{archive}, or its unpacked folder at {folder}/ (download failed: "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())})") from None
    actual = md5sum(archive)
    if actual != ARCHIVE_MD5:
        raise KdbenchError(f"{archive}: MD5 {actual} does not match the official {ARCHIVE_MD5}: the file is corrupt "
                           f"or not the official archive; delete it and download {URL} again")
    safe_extract_zip(archive, root, FOLDER)
    if not _unpacked(folder):
        raise KdbenchError(f"{archive}: unpacked, but {FOLDER}/ lacks wnids.txt, train/ or val/images/ with "
                           "val/val_annotations.txt: not the Tiny-ImageNet layout")
    return folder


class Listing:
    """The files of the dataset: sorted wnids, class names, and `(relative path, label)` per split."""

    def __init__(self, folder: Path, meta: dict[str, bytes]) -> None:
        self.folder = folder
        self.wnids = sorted(_lines(meta["wnids.txt"], folder / "wnids.txt"))
        if not self.wnids or len(set(self.wnids)) != len(self.wnids):
            raise KdbenchError(f"{folder / 'wnids.txt'}: expected distinct wnids, one per line")
        label = {w: k for k, w in enumerate(self.wnids)}
        self.train = [(f"train/{w}/images/{name}", label[w]) for w in self.wnids for name in _jpegs(folder, w)]
        self.val = self._val(meta["val/val_annotations.txt"], label)
        self.class_names = _class_names(folder / "words.txt", self.wnids)

    def _val(self, text: bytes, label: dict[str, int]) -> list[tuple[str, int]]:
        path = self.folder / "val" / "val_annotations.txt"
        annotated: dict[str, int] = {}
        for number, line in enumerate(_lines(text, path), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label:
                raise KdbenchError(f"{path}: line {number} is not '<file>\\t<wnid>…' with a wnid of wnids.txt")
            annotated[fields[0]] = label[fields[1]]
        present = {p.name for p in (self.folder / "val" / "images").iterdir() if p.is_file()}
        for extra, which in ((sorted(set(annotated) - present), "annotated but missing from"),
                             (sorted(present - set(annotated)), "not annotated, in")):
            if extra:
                raise KdbenchError(f"{path}: {len(extra)} file(s) {which} val/images/ (first: {extra[0]})")
        # The order ImageFolder gives the class folders the reference code sorts them into.
        return sorted(((f"val/images/{name}", k) for name, k in annotated.items()), key=lambda item: (item[1], item[0]))

def _lines(data: bytes, path: Path) -> list[str]:
    try:
        return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise KdbenchError(f"{path}: not UTF-8 text") from None


def _jpegs(folder: Path, wnid: str) -> list[str]:
    images = folder / "train" / wnid / "images"
    if not images.is_dir():
        raise KdbenchError(f"{folder}: no train/{wnid}/images/ folder for wnid {wnid} of wnids.txt")
    return sorted(p.name for p in images.iterdir() if p.is_file())


def _class_names(path: Path, wnids: list[str]) -> list[str]:
    """Each wnid's first name in `words.txt` (the wnid itself where it has none)."""
    names: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, words = line.partition("\t")
            names[wnid.strip()] = words.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def read_record(root: Path) -> dict[str, Any] | None:
    """The SHA-256s recorded at first use, or None."""
    try:
        record = json.loads((root / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def check_record(root: Path, record: dict[str, Any], found: dict[str, str]) -> None:
    """One line naming what differs between the files read (`found`) and the record."""
    recorded = record["files"]
    changed = [f for f in found if f in recorded and recorded[f] != found[f]]
    added = [f for f in found if f not in recorded]
    missing = [f for f in recorded if f not in found]
    if not (changed or added or missing):
        return
    parts = []
    if changed:
        first = changed[0]
        parts.append(f"{len(changed)} changed (first: {first}, SHA-256 {found[first][:12]}…, "
                     f"recorded {recorded[first][:12]}…)")
    if added:
        parts.append(f"{len(added)} not in the record (first: {added[0]})")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    raise KdbenchError(f"tiny_imagenet: {root / FOLDER}/ differs from the SHA-256s recorded at first use "
                       f"({record.get('recorded_at', '?')}) in {root / RECORD}: {'; '.join(parts)}; restore the "
                       f"files, or delete {root / RECORD} to accept them as they are now")


def read_images(folder: Path, files: Sequence[tuple[str, int]], hashes: dict[str, str]) -> torch.Tensor:
    """uint8 `(N, 3, 64, 64)` images decoded with PIL (grey and CMYK ones as RGB); each
    file's SHA-256 goes into `hashes` as it is read."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), 3, 64, 64), dtype=np.uint8)
    for i, (relative, _) in enumerate(files):
        data = (folder / relative).read_bytes()
        hashes[relative] = hashlib.sha256(data).hexdigest()
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise KdbenchError(f"{folder / relative}: not a readable image ({type(exc).__name__}); restore it from "
                               f"the archive") from None
        if array.shape != (64, 64, 3):
            raise KdbenchError(f"{folder / relative}: {array.shape[1]}×{array.shape[0]} pixels, expected 64×64")
        out[i] = array.transpose(2, 0, 1)
    return torch.from_numpy(out)


class HostTrainLoader(TrainLoader):
    """A `TrainLoader` whose padded uint8 store stays in host memory: each batch is gathered
    on the host, copied to `device` and normalised there. Its random draws come from the
    device's generator in `TrainLoader.epoch`'s order, so its batches equal the device loader's."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, device: torch.device, **kwargs: Any) -> None:
        super().__init__(images.cpu(), targets.cpu(), **kwargs)
        self.device = device
        self.targets, self.indices = self.targets.to(device), self.indices.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield epoch `epoch`'s batches on the device; the draws reach the host once per epoch."""
        n, dev = self.num_samples, self.device
        g = self.generator(epoch)
        order = self._order(g)
        offset_y = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        offset_x = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        flips = torch.rand(n, generator=g, device=dev) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        rows_h, y_h, x_h, flips_h = (t.cpu() for t in (order, offset_y, offset_x, flips))
        for start in range(0, n, self.batch_size):
            span = slice(start, start + self.batch_size)
            raw = _gather(self.padded, rows_h[span], y_h[span], x_h[span], flips_h[span], self.image_shape[1:])
            if dev.type == "cuda":
                raw = raw.pin_memory().to(dev, non_blocking=True)
            images = normalize(raw.to(dev), self.mean, self.std, self.dtype, self.channels_last)
            rows = order[span]
            yield images, self.targets[rows], self.indices[rows]


def device_peak_bytes(train_images: int, test_images: int, pad: int = 8, size: int = 64) -> int:
    """What building the splits on a device holds at its peak: the training split, its padded
    copy and the test split (uint8, 3 channels)."""
    return 3 * (train_images * (size * size + (size + 2 * pad) ** 2) + test_images * size * size)


@register("tiny_imagenet")
class TinyImagenet(Dataset):
    """Tiny-ImageNet-200: 100,000 train / 10,000 val 64×64 images, 200 classes (CRLD's CIFAR-style protocol)."""

    num_classes = 200
    split_sizes = (100_000, 10_000)
    in_channels = 3
    image_size = 64
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    crop_padding = 8

    def __init__(self, train_size: int | None = None, val_size: int = 0, split_seed: int = 0,
                 storage: str = "auto") -> None:
        self.storage = storage
        self._arrays: Arrays | None = None
        super().__init__(train_size=train_size, val_size=val_size, split_seed=split_seed)

    def check(self) -> None:
        """Range checks, `storage` included."""
        if self.storage not in STORAGES:
            raise KdbenchError(f"dataset 'tiny_imagenet': storage must be one of {', '.join(STORAGES)}, "
                               f"got {self.storage!r}")
        super().check()

    def prepare(self, root: Path) -> None:
        """Unpack, or download and unpack, the official archive if the folder is missing."""
        ensure_files(root)

    def load_arrays(self, root: Path) -> Arrays:
        """Read every image (hashing each file, checked against the record of the first use)."""
        if self._arrays is not None:
            return self._arrays
        folder = ensure_files(root)
        meta = {name: (folder / name).read_bytes() for name in META_FILES}
        hashes = {name: hashlib.sha256(data).hexdigest() for name, data in meta.items()}
        listing = Listing(folder, meta)
        train = read_images(folder, listing.train, hashes)
        test = read_images(folder, listing.val, hashes)
        record = read_record(root)
        if record is None:
            atomic.write_json(root / RECORD, {"dataset": self.name, "folder": FOLDER, "how": "first use",
                                              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                              "files": hashes})
        else:
            check_record(root, record, hashes)
        self.num_classes = len(listing.wnids)  # the look-alikes of the tests have fewer
        labels = [torch.tensor([k for _, k in split], dtype=torch.long) for split in (listing.train, listing.val)]
        return Arrays(train, labels[0], test, labels[1], listing.class_names)

    def build(self, *, root: Path, device: torch.device, seed: int, batch_size: int, eval_batch_size: int,
              channels_last: bool, dtype: torch.dtype, spec: dict[str, Any]) -> DataSplits:
        """The base class's on-device splits, or the training split in host memory (see the module docstring)."""
        self._arrays = self.load_arrays(root)
        try:
            kwargs = dict(root=root, device=device, seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                          channels_last=channels_last, dtype=dtype, spec=spec)
            if self._on_device(device):
                try:
                    return super().build(**kwargs)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if self.storage == "device":
                        raise
                    warnings.warn(f"tiny_imagenet: the training split does not fit on {device}; it stays in host "
                                  "memory (same batches, one host-to-device copy per batch)", stacklevel=2)
            return self._build_on_host(**kwargs)
        finally:
            self._arrays = None

    def _on_device(self, device: torch.device) -> bool:
        if self.storage == "host":
            return device.type == "cpu"  # on the CPU, host memory is the device's
        if self.storage == "device" or device.type != "cuda":
            return True
        arrays = self._arrays
        assert arrays is not None
        free, _ = torch.cuda.mem_get_info(device)
        return 2 * device_peak_bytes(len(arrays.train_images), len(arrays.test_images), self.crop_padding) <= free

    def _build_on_host(self, *, root: Path, device: torch.device, seed: int, batch_size: int, eval_batch_size: int,
                       channels_last: bool, dtype: torch.dtype, spec: dict[str, Any]) -> DataSplits:
        arrays = self._arrays
        assert arrays is not None
        train_idx, val_idx = split_indices(arrays.train_labels, train_size=self.train_size, val_size=self.val_size,
                                           seed=self.split_seed, dataset=self.name)
        common = dict(mean=self.mean, std=self.std, channels_last=channels_last, dtype=dtype)
        train = HostTrainLoader(arrays.train_images[train_idx], arrays.train_labels[train_idx], device=device,
                                batch_size=batch_size, seed=seed, pad=self.crop_padding, flip=self.hflip,
                                indices=train_idx, **common)
        # The evaluation splits (0.12 GB for the full validation split) go to the device.
        val = None
        if val_idx is not None:
            val = EvalLoader(arrays.train_images[val_idx].to(device), arrays.train_labels[val_idx].to(device),
                             batch_size=eval_batch_size, indices=val_idx.to(device), **common)
        test = EvalLoader(arrays.test_images.to(device), arrays.test_labels.to(device), batch_size=eval_batch_size,
                          **common)
        return DataSplits(train=train, test=test, val=val, num_classes=self.num_classes, in_channels=3,
                          image_size=self.image_size, class_names=list(arrays.class_names), name=self.name,
                          train_size=int(train_idx.numel()), spec=spec)

    def presence(self, root: Path) -> dict[str, Any]:
        """Found when the unpacked folder or the archive is in the root."""
        folder, archive = root / FOLDER, root / ARCHIVE
        if _unpacked(folder):
            return {"name": self.name, "present": True, "path": str(folder), "note": ""}
        if archive.is_file():
            return {"name": self.name, "present": True, "path": str(archive), "note": "archive; unpacked on first use"}
        return {"name": self.name, "present": False, "path": str(folder),
                "note": f"downloaded on first use, or put {ARCHIVE} in {root}"}
