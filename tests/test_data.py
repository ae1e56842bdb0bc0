"""The dataset registry, the on-device loaders, the splits and the synthetic set."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from kdbench import data
from kdbench.data.loaders import EvalLoader, TrainLoader, augment, epoch_seed
from kdbench.data.splits import split_indices, stratified_sample
from kdbench.errors import KdbenchError

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)


# -- augmentation equals torchvision ------------------------------------------------------


def _torchvision_view(image: torch.Tensor, oy: int, ox: int, flip: bool, mean, std) -> torch.Tensor:
    """RandomCrop(32, padding=4) at a fixed offset, then hflip, ToTensor, Normalize, via PIL."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    view = TF.crop(TF.pad(pil, 4), oy, ox, 32, 32)
    if flip:
        view = TF.hflip(view)
    return T.Normalize(mean, std)(T.ToTensor()(view))


def _all_views() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = [(oy, ox, flip) for oy in range(9) for ox in range(9) for flip in (False, True)]
    oy, ox, flip = zip(*grid)
    return torch.tensor(oy), torch.tensor(ox), torch.tensor(flip)


@pytest.mark.parametrize("channels", [3, 1])
def test_augment_equals_torchvision_at_all_162_views(channels):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, channels, 32, 32), dtype=torch.uint8, generator=g)
    images[0, :, :2] = 0  # extremes of the value range
    images[0, :, -2:] = 255
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ((0.2860,), (0.3530,))
    oy, ox, flip = _all_views()
    assert len(oy) == 162
    for image in images:
        ours = augment(image.expand(162, -1, -1, -1), oy, ox, flip, mean, std, pad=4)
        for k in range(162):
            ref = _torchvision_view(image, int(oy[k]), int(ox[k]), bool(flip[k]), mean, std)
            torch.testing.assert_close(ours[k], ref, atol=1e-6, rtol=0)


def test_padded_pixels_are_minus_mean_over_std():
    image = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    out = augment(image, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), CIFAR_MEAN, CIFAR_STD)
    expected = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)
    torch.testing.assert_close(out[0, :, :4, :].mean(dim=(1, 2)), expected)
    torch.testing.assert_close(out[0, :, :, :4].mean(dim=(1, 2)), expected)


def test_train_loader_batches_equal_augment_of_the_drawn_views():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.arange(100) % 7
    loader = TrainLoader(images, targets, batch_size=32, seed=5, mean=CIFAR_MEAN, std=CIFAR_STD)
    # Re-draw the epoch's choices in the documented order: permutation, offsets y, x, flips.
    gen = loader.generator(3)
    order = torch.randperm(100, generator=gen)
    oy = torch.randint(0, 9, (100,), generator=gen)
    ox = torch.randint(0, 9, (100,), generator=gen)
    flip = torch.rand(100, generator=gen) < 0.5
    start = 0
    for batch, tgt, idx in loader.epoch(3):
        sl = slice(start, start + len(batch))
        torch.testing.assert_close(batch, augment(images[order[sl]], oy[sl], ox[sl], flip[sl], CIFAR_MEAN, CIFAR_STD),
                                   atol=0, rtol=0)
        assert torch.equal(idx, order[sl]) and torch.equal(tgt, targets[order[sl]])
        start += len(batch)
    assert start == 100


# -- loader behaviour ---------------------------------------------------------------------


def _tiny_loader(n: int = 300, batch_size: int = 64, seed: int = 0, **kw) -> TrainLoader:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return TrainLoader(images, torch.arange(n) % 10, batch_size=batch_size, seed=seed,
                       mean=CIFAR_MEAN, std=CIFAR_STD, **kw)


def _epoch(loader: TrainLoader, e: int) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader.epoch(e)]


def test_epoch_is_a_pure_function_of_seed_and_epoch():
    a, b = _tiny_loader(seed=3), _tiny_loader(seed=3)
    first = _epoch(a, 4)
    _epoch(a, 5)  # iterating other epochs in between changes nothing
    for x, y in zip(first, _epoch(b, 4)):
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    for x, y in zip(first, _epoch(a, 4)):
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    assert not torch.equal(first[0][2], _epoch(a, 5)[0][2])  # another epoch, another order
    assert not torch.equal(first[0][2], _epoch(_tiny_loader(seed=4), 4)[0][2])  # another seed too
    assert epoch_seed(0, 1) != epoch_seed(1, 0)


def test_cifar_sized_epoch_has_782_steps_and_a_last_batch_of_16():
    n = 50_000
    images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)  # cheap stand-in of CIFAR's length
    loader = TrainLoader(images, torch.zeros(n, dtype=torch.long), batch_size=64, seed=0,
                         mean=(0.5,), std=(0.5,), pad=0, flip=False)
    assert len(loader) == 782
    sizes, seen = [], []
    for batch, _, idx in loader.epoch(1):
        sizes.append(len(batch))
        seen.append(idx)
    assert len(sizes) == 782 and sizes[-1] == 16 and set(sizes[:-1]) == {64}
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(n))


def test_flips_and_offsets_are_drawn_evenly():
    loader = _tiny_loader(n=4000)
    gen = loader.generator(1)
    torch.randperm(4000, generator=gen)
    oy = torch.randint(0, 9, (4000,), generator=gen)
    flip = torch.rand(4000, generator=gen) < 0.5
    assert set(oy.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean().item() < 0.55


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_and_dtype(dtype):
    plain = _epoch(_tiny_loader(), 1)
    fancy = _epoch(_tiny_loader(channels_last=True, dtype=dtype), 1)
    for (x, _, i), (y, _, j) in zip(plain, fancy):
        assert y.dtype == dtype and y.shape == x.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(i, j)
        torch.testing.assert_close(y.float(), x, atol=2e-2, rtol=1e-2)


def test_eval_loader_is_normalize_only_in_order():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    loader = EvalLoader(images, torch.arange(50), batch_size=16, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    out = torch.cat([b[0] for b in batches])
    ref = T.Normalize(CIFAR_MEAN, CIFAR_STD)(images.float() / 255)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(50))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(50))
    assert torch.equal(torch.cat([b[0] for b in loader]), out)  # and again, identically
    cl = next(iter(EvalLoader(images, torch.arange(50), batch_size=16, mean=CIFAR_MEAN, std=CIFAR_STD,
                              channels_last=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out[:16])


# -- registry and specs ---------------------------------------------------------------------


def test_available_and_resolve_spec():
    assert data.available() == ["cifar100", "fashion_mnist", "imagenet", "synthetic", "tiny_imagenet"]
    assert data.resolve_spec("cifar100") == {"name": "cifar100", "train_size": None, "val_size": 0, "split_seed": 0}
    assert data.resolve_spec({"name": "synthetic", "num_classes": 5}) == {
        "name": "synthetic", "num_classes": 5, "train_size": 512, "test_size": 256, "image_size": 32,
        "channels": 3, "val_size": 0, "split_seed": 0,
    }
    assert data.resolve_spec({"name": "fashion_mnist", "train_size": 100, "val_size": 10})["train_size"] == 100
    assert "train_size: int | None = None" in str(data.describe("cifar100"))


@pytest.mark.parametrize("spec, fragment", [
    ("cifar10", "did you mean 'cifar100'"),
    ({"name": "cifar100", "trian_size": 5}, "'trian_size' (did you mean 'train_size'?)"),
    ({"name": "cifar100", "train_size": "all"}, "dataset 'cifar100': hyper-parameter 'train_size' expects int | None"),
    ({"name": "synthetic", "num_classes": 2.5}, "'num_classes' expects int"),
    ({"name": "cifar100", "val_size": -1}, "val_size must be >= 0"),
    ({"name": "synthetic", "num_classes": 1}, "num_classes must be >= 2"),
    ({"train_size": 5}, "needs a 'name'"),
    (3, "expected a name or a mapping"),
])
def test_resolve_spec_errors(spec, fragment):
    with pytest.raises(KdbenchError) as info:
        data.resolve_spec(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_resolve_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    assert data.resolve_root(None, None) == data.Path("data")
    assert data.resolve_root(None, "grid_root") == data.Path("grid_root")
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    assert data.resolve_root(None, "grid_root") == tmp_path
    assert data.resolve_root("cli_root", "grid_root") == data.Path("cli_root")


def test_presence_lists_every_dataset(tmp_path):
    rows = data.presence(tmp_path)
    assert [r["name"] for r in rows] == data.available()
    assert all(set(r) == {"name", "present", "path", "note"} for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["synthetic"]["present"] is True
    assert by_name["cifar100"]["present"] is False and "cifar-100-python" in by_name["cifar100"]["path"]
    assert by_name["imagenet"]["present"] is False


# -- splits ---------------------------------------------------------------------------------


def test_stratified_split_balance_and_disjointness():
    labels = torch.arange(100).repeat(500)  # CIFAR-100's layout: 500 per class
    train, val = split_indices(labels, train_size=5000, val_size=1000, seed=0)
    assert len(train) == 5000 and len(val) == 1000
    assert torch.bincount(labels[train], minlength=100).unique().tolist() == [50]
    assert torch.bincount(labels[val], minlength=100).unique().tolist() == [10]
    assert not set(train.tolist()) & set(val.tolist())
    again = split_indices(labels, train_size=5000, val_size=1000, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    other = split_indices(labels, train_size=5000, val_size=1000, seed=1)
    assert not torch.equal(train, other[0])
    full, none = split_indices(labels, train_size=None, val_size=0, seed=0)
    assert none is None and torch.equal(full, torch.arange(50_000))


def test_stratified_sample_keeps_proportions_of_unbalanced_classes():
    labels = torch.tensor([0] * 700 + [1] * 200 + [2] * 100)
    picked = stratified_sample(labels, 100, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[picked]).tolist() == [70, 20, 10]
    assert len(set(picked.tolist())) == 100


def test_split_size_errors():
    labels = torch.arange(10).repeat(10)
    with pytest.raises(KdbenchError, match="train_size 200 exceeds the 90 training images available after holding out val_size 10"):
        split_indices(labels, train_size=200, val_size=10, seed=0, dataset="x")
    with pytest.raises(KdbenchError, match="val_size 100 leaves no training images"):
        split_indices(labels, train_size=None, val_size=100, seed=0, dataset="x")


# -- synthetic through build() ----------------------------------------------------------------


def test_build_synthetic():
    spec = {"name": "synthetic", "num_classes": 4, "train_size": 40, "test_size": 24, "image_size": 16,
            "channels": 2, "val_size": 8}
    splits = data.build(spec, root="unused", device="cpu", seed=0, batch_size=16, eval_batch_size=10)
    assert (splits.name, splits.num_classes, splits.in_channels, splits.image_size) == ("synthetic", 4, 2, 16)
    assert splits.train_size == 40 and len(splits.train) == 3
    assert splits.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert splits.spec == data.resolve_spec(spec)
    images, targets, indices = next(iter(splits.train.epoch(1)))
    assert images.shape == (16, 2, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.long and int(targets.max()) < 4
    val = list(splits.val)
    assert sum(len(b[1]) for b in val) == 8
    assert torch.bincount(torch.cat([b[1] for b in val]), minlength=4).tolist() == [2, 2, 2, 2]
    val_positions = set(torch.cat([b[2] for b in val]).tolist())
    train_positions = set(torch.cat([b[2] for b in splits.train.epoch(1)]).tolist())
    assert not val_positions & train_positions and len(train_positions) == 40
    assert sum(len(b[1]) for b in splits.test) == 24


def test_split_depends_on_split_seed_not_on_run_seed():
    spec = {"name": "synthetic", "val_size": 64}
    def positions(**kw):
        s = data.build({**spec, **kw.pop("spec", {})}, root="unused", device="cpu", **kw)
        val = torch.cat([b[2] for b in s.val]) if s.val is not None else None
        return val, torch.cat([b[0] for b in s.test])
    val_a, test_a = positions(seed=0)
    val_b, test_b = positions(seed=7)
    assert torch.equal(val_a, val_b) and torch.equal(test_a, test_b)
    val_c, test_c = positions(seed=0, spec={"split_seed": 1})
    assert not torch.equal(test_a, test_c)
    _, test_d = positions(seed=0, spec={"val_size": 0, "train_size": 100})
    assert torch.equal(test_a, test_d)  # the test set does not move with the training split


def _ridge_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-6
    add_bias = lambda f: torch.cat([(f - mean) / std, torch.ones(len(f), 1)], 1)  # noqa: E731
    x, xt = add_bias(train), add_bias(test)
    w = torch.linalg.solve(x.T @ x + 100 * torch.eye(x.shape[1]), x.T @ torch.nn.functional.one_hot(train_labels).float())
    return ((xt @ w).argmax(1) == test_labels).float().mean().item()


def test_synthetic_needs_translation_invariant_features():
    """Linear in the pixels: near chance. Linear in the amplitude spectrum: learnable."""
    from kdbench.data.synthetic import Synthetic

    arrays = Synthetic(train_size=1000, test_size=500).load_arrays(None)
    pixels = [arrays.train_images.flatten(1).float(), arrays.test_images.flatten(1).float()]
    assert _ridge_accuracy(pixels[0], arrays.train_labels, pixels[1], arrays.test_labels) < 0.3
    spectrum = [torch.fft.rfft2(p.view(-1, 3, 32, 32) - 128).abs().flatten(1) for p in pixels]
    assert _ridge_accuracy(spectrum[0], arrays.train_labels, spectrum[1], arrays.test_labels) > 0.6
    assert torch.bincount(arrays.train_labels).tolist() == [100] * 10


def test_synthetic_is_deterministic_and_fast():
    from kdbench.data.synthetic import Synthetic

    a, b = Synthetic(split_seed=3).load_arrays(None), Synthetic(split_seed=3).load_arrays(None)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, Synthetic(split_seed=4).load_arrays(None).train_images)
    grey = Synthetic(channels=1, image_size=28, num_classes=3).load_arrays(None)
    assert grey.train_images.shape == (512, 1, 28, 28) and int(grey.train_labels.max()) == 2
