"""Tiny-ImageNet on a generated look-alike of the official zip: the layout, the labels from
`val_annotations.txt` (images read in place), the SHA-256 record, the MD5 check, the
offline message, unsafe members, host-memory storage, and the zoo at 64×64.

The real archive (248 MB, http://cs231n.stanford.edu/tiny-imagenet-200.zip) is not
available offline: every test here builds a small zip in the official layout (`train/<wnid>/
images/*.JPEG` with `<wnid>_boxes.txt`, `val/images/` with `val_annotations.txt`, `test/images/`,
`wnids.txt`, `words.txt`), and accepts its MD5 by monkeypatching `ARCHIVE_MD5`.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from kdbench import data, models
from kdbench.data import tiny_imagenet
from kdbench.data.loaders import TrainLoader, augment
from kdbench.data.tiny_imagenet import HostTrainLoader
from kdbench.errors import KdbenchError

WNIDS = ["n09999999", "n01443537", "n02085620"]  # deliberately unsorted, as the real wnids.txt is
WORDS = {"n01443537": "goldfish, Carassius auratus", "n02085620": "Chihuahua", "n09999999": "zzz"}


def _jpeg(rng: np.random.Generator, grey: bool = False) -> bytes:
    shape = (64, 64) if grey else (64, 64, 3)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_archive(path: Path, per_class: int = 4, val_per_class: int = 2) -> dict[str, bytes]:
    """A Tiny-ImageNet look-alike zip at `path`; returns its image files by archive name."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    top = "tiny-imagenet-200"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", b"")
        zf.writestr(f"{top}/wnids.txt", "".join(f"{w}\n" for w in WNIDS))
        zf.writestr(f"{top}/words.txt", "".join(f"{w}\t{WORDS[w]}\n" for w in sorted(WORDS)) + "n00000001\tentity\n")
        for w in WNIDS:
            zf.writestr(f"{top}/train/{w}/{w}_boxes.txt", "".join(f"{w}_{k}.JPEG\t0\t0\t63\t63\n"
                                                                  for k in range(per_class)))
            for k in range(per_class):
                name = f"{top}/train/{w}/images/{w}_{k}.JPEG"
                files[name] = _jpeg(rng, grey=(w == WNIDS[0] and k == 1))  # the real set has grey JPEGs
                zf.writestr(name, files[name])
        annotations = []
        for k in range(val_per_class * len(WNIDS)):
            name = f"{top}/val/images/val_{k}.JPEG"
            files[name] = _jpeg(rng)
            zf.writestr(name, files[name])
            annotations.append(f"val_{k}.JPEG\t{WNIDS[k % len(WNIDS)]}\t0\t1\t62\t63\n")
        zf.writestr(f"{top}/val/val_annotations.txt", "".join(annotations))
        zf.writestr(f"{top}/test/images/test_0.JPEG", _jpeg(rng))
    return files


def _no_network(root):
    raise OSError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """`<root>/tiny-imagenet-200.zip` (a look-alike, MD5 accepted) and its image files."""
    root = tmp_path / "root"
    root.mkdir()
    files = make_archive(root / tiny_imagenet.ARCHIVE)
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE_MD5", hashlib.md5((root / tiny_imagenet.ARCHIVE).read_bytes()).hexdigest())
    monkeypatch.setattr(tiny_imagenet, "download_archive", _no_network)
    return root, files


def _decoded(blob: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).copy()).permute(2, 0, 1)


def test_reads_the_official_layout_from_the_zip_and_labels_val_in_place(archive):
    root, files = archive
    arrays = tiny_imagenet.TinyImagenet().load_arrays(root)
    folder = root / "tiny-imagenet-200"
    assert arrays.train_images.shape == (12, 3, 64, 64) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (6, 3, 64, 64)
    # Labels: ImageFolder's numbering, the wnids sorted; class names from words.txt.
    order = sorted(WNIDS)
    assert arrays.class_names == [WORDS[w].split(",")[0] for w in order]
    assert arrays.train_labels.tolist() == [k for k in range(3) for _ in range(4)]
    # Validation labels come from val_annotations.txt; ordered as the class folders would be.
    expected = sorted(((f"val_{k}.JPEG", order.index(WNIDS[k % 3])) for k in range(6)), key=lambda x: (x[1], x[0]))
    assert arrays.test_labels.tolist() == [label for _, label in expected]
    first_val = f"tiny-imagenet-200/val/images/{expected[0][0]}"
    assert torch.equal(arrays.test_images[0], _decoded(files[first_val]))
    grey = _decoded(files[f"tiny-imagenet-200/train/{WNIDS[0]}/images/{WNIDS[0]}_1.JPEG"])
    assert torch.equal(arrays.train_images[order.index(WNIDS[0]) * 4 + 1], grey)  # grey read as RGB
    # Nothing copied: the validation images stay in val/images/, no class folders appear.
    assert sorted(p.name for p in (folder / "val").iterdir()) == ["images", "val_annotations.txt"]
    record = json.loads((root / tiny_imagenet.RECORD).read_text())
    assert record["how"] == "first use" and len(record["files"]) == 12 + 6 + 2
    assert record["files"][first_val.split("/", 1)[1]] == hashlib.sha256(files[first_val]).hexdigest()
    assert data.presence(root)[[e["name"] for e in data.presence(root)].index("tiny_imagenet")]["present"]


def test_later_loads_check_the_recorded_sha256(archive):
    root, _ = archive
    tiny_imagenet.TinyImagenet().load_arrays(root)
    folder = root / "tiny-imagenet-200"
    image = folder / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_0.JPEG"
    original = image.read_bytes()
    image.write_bytes(original[:-2] + bytes([original[-2] ^ 1]) + original[-1:])
    with pytest.raises(KdbenchError) as info:
        tiny_imagenet.TinyImagenet().load_arrays(root)
    found = hashlib.sha256(image.read_bytes()).hexdigest()[:12]
    recorded = hashlib.sha256(original).hexdigest()[:12]
    record = json.loads((root / tiny_imagenet.RECORD).read_text())
    assert str(info.value) == (
        f"tiny_imagenet: {folder}/ differs from the SHA-256s recorded at first use ({record['recorded_at']}) in "
        f"{root / tiny_imagenet.RECORD}: 1 changed (first: train/{WNIDS[2]}/images/{WNIDS[2]}_0.JPEG, SHA-256 "
        f"{found}…, recorded {recorded}…); restore the files, or delete {root / tiny_imagenet.RECORD} to accept "
        "them as they are now")
    image.write_bytes(original)
    (folder / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_3.JPEG").unlink()
    (folder / "train" / WNIDS[1] / "images" / "extra.JPEG").write_bytes(original)
    with pytest.raises(KdbenchError, match=r"1 not in the record \(first: train/n01443537/images/extra.JPEG\); "
                                           r"1 missing \(first: train/n09999999/images/n09999999_3.JPEG\)"):
        tiny_imagenet.TinyImagenet().load_arrays(root)


def test_an_archive_with_a_wrong_checksum_is_one_line(archive, monkeypatch):
    root, _ = archive
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE_MD5", "90528d7ca1a48142e341f4ef8d21d0de")
    actual = hashlib.md5((root / tiny_imagenet.ARCHIVE).read_bytes()).hexdigest()
    with pytest.raises(KdbenchError) as info:
        data.build("tiny_imagenet", root=root, device="cpu", seed=0)
    assert str(info.value) == (
        f"{root / tiny_imagenet.ARCHIVE}: MD5 {actual} does not match the official 90528d7ca1a48142e341f4ef8d21d0de: "
        "the file is corrupt or not the official archive; delete it and download "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip again")
    assert not (root / "tiny-imagenet-200").exists()


def test_missing_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_imagenet, "download_archive", _no_network)
    with pytest.raises(KdbenchError) as info:
        data.prepare("tiny_imagenet", tmp_path)
    assert str(info.value) == (
        f"tiny_imagenet: not found in {tmp_path}: put the official tiny-imagenet-200.zip (from "
        f"http://cs231n.stanford.edu/tiny-imagenet-200.zip) at {tmp_path / 'tiny-imagenet-200.zip'}, or its unpacked "
        f"folder at {tmp_path / 'tiny-imagenet-200'}/ (download failed: OSError: [Errno -3] Temporary failure in "
        "name resolution)")


@pytest.mark.parametrize("kind", ["escape", "symlink"])
def test_a_zip_with_an_unsafe_member_is_refused_before_anything_is_written(tmp_path, monkeypatch, kind):
    path = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        if kind == "escape":
            zf.writestr("tiny-imagenet-200/../../evil", b"x")
        else:
            link = zipfile.ZipInfo("tiny-imagenet-200/train")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, "/etc")
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(KdbenchError) as info:
        data.prepare("tiny_imagenet", tmp_path)
    why = "'..' in the path" if kind == "escape" else "symbolic link"
    name = "tiny-imagenet-200/../../evil" if kind == "escape" else "tiny-imagenet-200/train"
    assert str(info.value) == f"{path}: refusing to unpack '{name}': unsafe member, {why}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-imagenet-200.zip"]


def test_the_crop_with_padding_8_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
    mean, std = tiny_imagenet.TinyImagenet.mean, tiny_imagenet.TinyImagenet.std
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    for oy, ox, flip in [(0, 0, False), (16, 16, True), (3, 11, True), (16, 0, False)]:
        ours = augment(image[None], torch.tensor([oy]), torch.tensor([ox]), torch.tensor([flip]), mean, std, pad=8)[0]
        view = TF.crop(TF.pad(pil, 8), oy, ox, 64, 64)
        ref = T.Normalize(mean, std)(T.ToTensor()(TF.hflip(view) if flip else view))
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_build_and_host_storage_give_the_same_batches(archive):
    root, _ = archive
    spec = {"name": "tiny_imagenet", "val_size": 3}
    on_device = data.build(spec, root=root, device="cpu", seed=1, batch_size=4, eval_batch_size=4)
    assert (on_device.num_classes, on_device.image_size, on_device.train_size) == (3, 64, 9)
    assert on_device.train.pad == 8 and isinstance(on_device.train, TrainLoader)
    images, targets, indices = next(iter(on_device.train.epoch(1)))
    assert images.shape == (4, 3, 64, 64)
    dataset = tiny_imagenet.TinyImagenet(val_size=3)
    dataset._arrays = dataset.load_arrays(root)
    host = dataset._build_on_host(root=root, device=torch.device("cpu"), seed=1, batch_size=4, eval_batch_size=4,
                                  channels_last=False, dtype=torch.float32, spec=spec)
    assert isinstance(host.train, HostTrainLoader)
    for epoch in (1, 2):
        for a, b in zip(on_device.train.epoch(epoch), host.train.epoch(epoch), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [torch.equal(a[0], b[0]) for a, b in zip(on_device.test, host.test)] == [True, True]
    on_device.train.strong_workers = host.train.strong_workers = 0  # MLKD's and CRLD's strong view, inline
    for a, b in zip(on_device.train.strong_batches(1), host.train.strong_batches(1), strict=True):
        assert a.shape[1:] == (3, 64, 64) and torch.equal(a, b)


def test_storage_auto_falls_back_to_host_memory_when_the_device_allocation_fails(archive, monkeypatch):
    root, _ = archive

    def out_of_memory(self, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(data.Dataset, "build", out_of_memory)
    monkeypatch.setattr(tiny_imagenet.TinyImagenet, "_on_device", lambda self, device: True)
    with pytest.warns(UserWarning, match="does not fit on cpu; it stays in host memory"):
        splits = data.build("tiny_imagenet", root=root, device="cpu", seed=0, batch_size=4)
    assert isinstance(splits.train, HostTrainLoader)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        data.build({"name": "tiny_imagenet", "storage": "device"}, root=root, device="cpu", seed=0)
    with pytest.raises(KdbenchError, match="storage must be one of auto, device, host, got 'gpu'"):
        data.resolve_spec({"name": "tiny_imagenet", "storage": "gpu"})


def test_the_peak_the_auto_rule_weighs():
    # The full set: 1.23 GB of training images, 1.92 GB padded, 0.12 GB of validation images.
    assert tiny_imagenet.device_peak_bytes(100_000, 10_000) == 100_000 * 3 * (64 * 64 + 80 * 80) + 10_000 * 3 * 4096
    assert data.geometry("tiny_imagenet") == {"num_classes": 200, "in_channels": 3, "image_size": 64,
                                              "train_images": 100_000, "test_images": 10_000, "val_images": 0}


@pytest.mark.slow
def test_every_model_of_the_grid_runs_at_64x64_with_200_classes():
    from kdbench.grid import config, plan

    grid = config.load_grid(Path(__file__).resolve().parents[1] / "experiments" / "tiny_imagenet.yaml")
    archs = sorted({r.student for r in plan.plan(grid)} | {r.config["teacher"]["arch"] for r in plan.plan(grid)})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for arch in archs:
            model = models.build(arch, num_classes=200).eval()
            assert model(x).shape == (2, 200), arch


@pytest.mark.slow
def test_the_grid_trains_its_teacher_and_every_method_on_the_look_alike(archive, tmp_path, capsys):
    from kdbench import cli, results

    root, _ = archive
    grid = Path(__file__).resolve().parents[1] / "experiments" / "tiny_imagenet.yaml"
    code = cli.main(["run", str(grid), "--device", "cpu", "--data-dir", str(root), "--results-dir",
                     str(tmp_path / "results"), "--only", "resnet56->resnet20", "--set", "name=ti_check",
                     "--set", "seeds=[0]", "--set", "schedule.epochs=1", "--set", "schedule.milestones=[]",
                     "--set", "teachers.schedule={epochs: 1, milestones: []}", "--set", "options.precision=fp32"])
    assert code == 0, capsys.readouterr()
    frame = results.load(tmp_path / "results", grid="ti_check")
    assert len(frame) == 16 and set(frame["status"]) == {"done"}
    assert {s["name"] for s in frame["dataset_spec"]} == {"tiny_imagenet"} and set(frame["teacher"]) == {"resnet56"}
