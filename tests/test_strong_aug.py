"""MLKD's strong view: equal to the official transform.

The goldens (tests/fixtures/strong_aug/golden.npz) are outputs of the official transform
run on stored draws; make_golden.py in that folder regenerates them from a checkout of the
official repository.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from kdbench.data import strong

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "strong_aug" / "golden.npz")
META = json.loads(str(GOLDEN["meta"]))


def _cases(name: str) -> list[tuple[np.ndarray, strong.StrongDraws, np.ndarray]]:
    """(zero-padded input as the loader stores it, draws, official output) per golden case."""
    images = GOLDEN[f"{name}_images"]
    cases = []
    for (image, crop_y, crop_x, flip), u, out in zip(GOLDEN[f"{name}_ints"], GOLDEN[f"{name}_floats"],
                                                     GOLDEN[f"{name}_outputs"]):
        padded = np.pad(images[image], ((4, 4), (4, 4), (0, 0)))
        if name == "grey":
            padded = padded[..., 0]
        draws = strong.StrongDraws(int(crop_y), int(crop_x), bool(flip), tuple(float(v) for v in u[:5]),
                                   (float(u[5]), float(u[6])))
        cases.append((padded, draws, out))
    return cases


# -- equal to the official transform -----------------------------------------------------


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_goldens_equal_the_official_transform(name):
    wrong = []
    for k, (padded, draws, want) in enumerate(_cases(name)):
        got = strong.strong_view(padded, draws, (32, 32))
        if not np.array_equal(got, want):
            wrong.append(f"case {k} {[op.name for op, _ in draws.ops()]}: {(got != want).sum()} values differ")
    assert not wrong, f"(goldens made with Pillow {META['pillow']}) " + "; ".join(wrong)


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_goldens_cover_every_op_crops_flips_and_cutouts(name):
    magnitudes: dict[str, set[float]] = {op.name: set() for op in strong.OPS}
    crops, flips, boxes = set(), set(), []
    for _, draws, _ in _cases(name):
        for op, magnitude in draws.ops():
            magnitudes[op.name].add(magnitude)
        crops.update((draws.crop_y, draws.crop_x))
        flips.add(draws.flip)
        boxes.append(strong.cutout_box(draws.cutout_fraction(), draws.cutout_uniforms, 32, 32))
    assert all(len(m) >= 5 for m in magnitudes.values()), {k: len(m) for k, m in magnitudes.items()}
    assert {0, 4, 8} <= crops and flips == {False, True}
    assert None in boxes
    drawn = [b for b in boxes if b is not None]
    assert any(b[0] == 0 and b[2] == 0 for b in drawn) and any(b[1] > 32 or b[3] > 32 for b in drawn)


def _test_pictures(channels: int, n: int = 150) -> list[np.ndarray]:
    """Noise, few-valued and flat images: the cases the histogram rules branch on."""
    rng = np.random.RandomState(channels)
    shape = (32, 32) if channels == 1 else (32, 32, 3)
    pictures = []
    for k in range(n):
        levels = rng.choice([1, 2, 3, 5, 40, 256])
        values = rng.randint(0, 256, levels)
        pictures.append(values[rng.randint(0, levels, shape)].astype(np.uint8))
    return pictures


PIL_REFERENCE = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", sorted(PIL_REFERENCE))
def test_ops_computed_with_numpy_equal_pil(name, channels):
    """The ops kdbench computes itself equal PIL's, on many images and magnitudes."""
    op = next(op for op in strong.OPS if op.name == name)
    rng = random.Random(0)
    for picture in _test_pictures(channels):
        v = op.low + float(op.high - op.low) * rng.random()
        want = np.asarray(PIL_REFERENCE[name](Image.fromarray(picture), v))
        got = strong._arr(op.apply(picture, v))
        assert np.array_equal(got, want), (name, v)


def test_equalize_clips_its_table_like_pil():
    """A histogram whose equalisation table reaches 256 at the top value (PIL clips it to 255)."""
    picture = np.zeros((32, 32), dtype=np.uint8)
    picture.flat[:1023] = np.arange(1023) % 255  # 255 levels, 4 or 5 pixels each
    picture.flat[1023] = 255
    want = np.asarray(ImageOps.equalize(Image.fromarray(picture)))
    assert np.array_equal(strong.equalize(picture, 0.0), want)


def test_numpy_uniform_is_the_formula_the_cutout_uses():
    for seed in range(200):
        got = np.random.RandomState(seed).uniform(32)
        assert got == 32 + (1.0 - 32) * np.random.RandomState(seed).random_sample()


def test_op_choices_map_uniforms_as_random_choices_does():
    class Replay(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    for seed in range(300):
        draws = strong.draw(seed)
        chosen = Replay(draws.uniforms[:2]).choices(strong.OPS, k=2)
        assert [op for op, _ in draws.ops()] == chosen


def test_draws_are_deterministic_and_in_range():
    assert strong.draw(5) == strong.draw(5) != strong.draw(6)
    many = [strong.draw(s, pad=2, flip=False) for s in range(500)]
    assert {d.crop_y for d in many} == {d.crop_x for d in many} == set(range(5))
    assert not any(d.flip for d in many)
    assert {d.flip for d in (strong.draw(s) for s in range(100))} == {False, True}
