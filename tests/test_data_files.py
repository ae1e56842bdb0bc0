"""Reading datasets from disk: CIFAR-100 pickles and archive, Fashion-MNIST idx files, ImageNet folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import data
from kdbench.data import cifar100, fashion_mnist
from kdbench.data.files import load_array_pickle
from kdbench.errors import KdbenchError

# -- CIFAR-100 ------------------------------------------------------------------------------

FINE = [f"fine_{i}" for i in range(100)]
COARSE = [f"coarse_{i}" for i in range(20)]


def _cifar_split(n_per_class: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(100), n_per_class)
    rng.shuffle(labels)
    n = len(labels)
    # Official layout: one row per image, 1024 R then 1024 G then 1024 B values, row-major.
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": labels.tolist(),
        b"coarse_labels": (labels // 5).tolist(),
        b"data": images,
    }


def _write_cifar_folder(folder: Path) -> tuple[dict, dict]:
    folder.mkdir(parents=True)
    train, test = _cifar_split(3, 0), _cifar_split(1, 1)
    for name, entry in (("train", train), ("test", test)):
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return train, test


@pytest.fixture
def cifar_archive(tmp_path, monkeypatch):
    """A small CIFAR-100 in the official format, as `<root>/cifar-100-python.tar.gz`, MD5 accepted."""
    staging = tmp_path / "staging"
    train, test = _write_cifar_folder(staging / "cifar-100-python")
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-100-python", arcname="cifar-100-python")
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar100, "download_archive", _no_network)
    return root, train, test


def _no_network(root):
    raise OSError("[Errno -3] Temporary failure in name resolution")


def test_cifar_reads_the_official_format_from_the_archive(cifar_archive):
    root, train, test = cifar_archive
    arrays = cifar100.Cifar100().load_arrays(root)
    assert (root / "cifar-100-python" / "train").is_file()  # unpacked in place
    assert arrays.train_images.shape == (300, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (100, 3, 32, 32)
    assert arrays.train_labels.tolist() == train[b"fine_labels"]
    assert arrays.test_labels.tolist() == test[b"fine_labels"]
    assert arrays.class_names == FINE
    # Pixel (c, y, x) of image i is data[i, c*1024 + y*32 + x].
    i, c, y, x = 17, 2, 5, 30
    assert int(arrays.train_images[i, c, y, x]) == int(train[b"data"][i, c * 1024 + y * 32 + x])
    assert data.presence(root)[0]["present"] is True


def test_cifar_build_with_subset_and_validation(cifar_archive):
    root, train, _ = cifar_archive
    splits = data.build({"name": "cifar100", "train_size": 100, "val_size": 100}, root=root, device="cpu",
                        seed=0, batch_size=64, eval_batch_size=64)
    assert (splits.num_classes, splits.in_channels, splits.image_size, splits.train_size) == (100, 3, 32, 100)
    assert len(splits.train) == 2
    val_labels = torch.cat([b[1] for b in splits.val])
    assert torch.bincount(val_labels, minlength=100).tolist() == [1] * 100
    train_labels = torch.cat([b[1] for b in splits.train.epoch(1)])
    assert torch.bincount(train_labels, minlength=100).tolist() == [1] * 100
    assert sum(len(b[1]) for b in splits.test) == 100
    # indices point into the full training split
    images, targets, indices = next(iter(splits.train.epoch(1)))
    assert torch.equal(targets, torch.tensor(train[b"fine_labels"])[indices])


def test_cifar_reads_python2_style_str_keys(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    entry = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [3, 4]}
    (folder / "train").write_bytes(pickle.dumps(entry, protocol=2))
    images, labels = cifar100.read_split(folder / "train", "hint")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 4]


def test_cifar_md5_mismatch_is_one_clear_line(cifar_archive, monkeypatch):
    root, _, _ = cifar_archive
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", "eb9058c3a382ffc7106e4002c42a8d85")
    with pytest.raises(KdbenchError) as info:
        cifar100.Cifar100().load_arrays(root)
    message = str(info.value)
    assert "MD5" in message and "cifar-100-python.tar.gz" in message and "eb9058c3" in message
    assert "\n" not in message
    assert not (root / "cifar-100-python").exists()


def test_cifar_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar100, "download_archive", _no_network)
    with pytest.raises(KdbenchError) as info:
        data.build("cifar100", root=tmp_path, device="cpu", seed=0)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python.tar.gz") in message
    assert str(tmp_path / "cifar-100-python") + "/" in message
    assert "download failed" in message and "\n" not in message


def test_cifar_truncated_pickle_is_one_clear_line(tmp_path):
    _write_cifar_folder(tmp_path / "cifar-100-python")
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:5000])
    with pytest.raises(KdbenchError) as info:
        cifar100.Cifar100().load_arrays(tmp_path)
    assert "truncated or corrupt" in str(info.value) and str(train) in str(info.value)
    assert "\n" not in str(info.value)


def test_cifar_archive_with_unsafe_member_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"x"
        member = tarfile.TarInfo("cifar-100-python/../../evil")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(KdbenchError, match="unsafe"):
        cifar100.Cifar100().load_arrays(tmp_path)
    assert not (tmp_path.parent / "evil").exists()


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(KdbenchError, match="refusing to load global builtins.print"):
        load_array_pickle(path, "hint")


# -- Fashion-MNIST ------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(1, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(1, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for key, stem in fashion_mnist.STEMS.items():
        raw = _idx(arrays[key])
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_torchvision_layout(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian")
    arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", gz)
    loaded = fashion_mnist.FashionMnist().load_arrays(tmp_path)
    assert loaded.train_images.shape == (20, 1, 32, 32) and loaded.test_images.shape == (10, 1, 32, 32)
    assert torch.equal(loaded.train_images[:, 0, 2:30, 2:30], torch.from_numpy(arrays["train_images"]))
    assert int(loaded.train_images[:, :, :2].sum() + loaded.train_images[:, :, :, -2:].sum()) == 0  # zero border
    assert loaded.train_labels.tolist() == arrays["train_labels"].tolist()
    assert loaded.class_names[0] == "T-shirt/top" and len(loaded.class_names) == 10
    splits = data.build("fashion_mnist", root=tmp_path, device="cpu", seed=0, batch_size=8)
    images, _, _ = next(iter(splits.train.epoch(1)))
    assert images.shape == (8, 1, 32, 32) and splits.in_channels == 1


def test_fashion_mnist_missing_offline_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian")
    monkeypatch.setattr(fashion_mnist, "download", _no_network)
    with pytest.raises(KdbenchError) as info:
        fashion_mnist.FashionMnist().load_arrays(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "no_debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message


def test_fashion_mnist_corrupt_idx(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian")
    folder = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(folder, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(KdbenchError, match="truncated or corrupt"):
        fashion_mnist.FashionMnist().load_arrays(tmp_path)
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(KdbenchError, match="bad magic"):
        fashion_mnist.FashionMnist().load_arrays(tmp_path)


@pytest.mark.skipif(fashion_mnist.find_files(Path("/nonexistent")) is None,
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    loaded = fashion_mnist.FashionMnist().load_arrays(tmp_path)
    assert loaded.train_images.shape == (60_000, 1, 32, 32) and loaded.test_images.shape == (10_000, 1, 32, 32)
    assert torch.bincount(loaded.train_labels).tolist() == [6000] * 10
    # The hard-coded mean/std are those of the unpadded training images.
    inner = loaded.train_images[:, 0, 2:30, 2:30].double() / 255
    assert abs(inner.mean().item() - fashion_mnist.FashionMnist.mean[0]) < 1e-4
    assert abs(inner.std().item() - fashion_mnist.FashionMnist.std[0]) < 1e-4


# -- ImageNet ----------------------------------------------------------------------------------


def test_imagenet_missing_says_where(tmp_path):
    with pytest.raises(KdbenchError) as info:
        data.build("imagenet", root=tmp_path, device="cpu", seed=0)
    assert str(tmp_path / "imagenet") + "/train/<class>/" in str(info.value) and "\n" not in str(info.value)


def test_imagenet_folder_pipeline(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 1)):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    spec = {"name": "imagenet", "workers": 0, "val_size": 2}
    splits = data.build(spec, root=tmp_path, device="cpu", seed=0, batch_size=3, eval_batch_size=2,
                        channels_last=True)
    assert splits.class_names == ["n01", "n02"] and splits.train_size == 4 and len(splits.train) == 2
    first = [tuple(t.clone() for t in b) for b in splits.train.epoch(1)]
    images, targets, indices = first[0]
    assert images.shape == (3, 3, 224, 224) and images.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(123)  # the global RNG state does not matter
    again = list(splits.train.epoch(1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert sum(len(b[1]) for b in splits.val) == 2 and sum(len(b[1]) for b in splits.test) == 2
