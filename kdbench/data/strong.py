"""MLKD's strong augmentation view, on the host, equal bit for bit to the official transform.

MLKD (Jin, Wang, Lin, CVPR 2023; github.com/Jin-Ying/Multi-Level-Logit-Distillation,
`mdistiller/dataset/cifar100.py`, `get_cifar100_train_transform_strong`) trains on a weak
and a strong view of every image, drawn independently. The strong view is

1. `RandomCrop(32, padding=4)` (zero padding) and `RandomHorizontalFlip()`, as the weak view;
2. the repository's `RandAugment(2, 10)`: two ops drawn with replacement from the fourteen
   of `OPS`, each at a magnitude uniform in its range (the `10` is unused), applied to
   the PIL image in turn;
3. Cutout: a square of side `u * 0.5 * width` (`u` uniform), placed by two numpy
   uniforms, painted (125, 123, 114), corners inclusive;
4. `ToTensor` and `Normalize`, which the loader does on the device as for the weak view.

Where it runs: on the host. Each image takes two of fourteen ops at its own magnitude, and
equality means PIL's own arithmetic (float32 blends truncated to uint8, the SMOOTH
filter's untouched border, nearest-neighbour affine sampling, the histogram rules of
AutoContrast and Equalize). torchvision's tensor versions, the natural device port,
differ from PIL: on 300 CIFAR-like 32×32 RGB images at random magnitudes, AutoContrast
differed on 299 images, Color (adjust_saturation) and Contrast on all 300, Rotate on 27
(Equalize, Posterize, Brightness, Sharpness and Translate agreed). The ops whose result is
a lookup table (AutoContrast, Equalize, Posterize, Solarize, and Contrast's mean) are
computed here with numpy from PIL's integer rules, 1.5-60x faster than PIL's Python loops
(per op, 32×32); the blends and the geometric ops call PIL. Equality with the official
code is tested on goldens that the official transform produced from the same draws
(tests/fixtures/strong_aug/), and the numpy ops are also tested against PIL directly.
PIL's rules have changed across versions; the goldens record the Pillow that made them.

Grey images (Fashion-MNIST) run in PIL mode "L". The official Cutout cannot paint a grey
image (its fill is an RGB triple), so kdbench defines the grey strong view as the official
transform of the image as grey RGB, converted back with PIL's luma: every op then acts
on the three equal channels alike, and only the fill changes, to `GREY_FILL` = 123, the
luma of (125, 123, 114). Color is the identity on grey (PIL blends a grey image with
itself). The goldens check this definition against the official code.

Randomness. `draw(seed)` takes ten uniforms from `random.Random(seed)`: crop row, crop
column, flip, then the five the official RandAugment takes from Python's `random` (two op
choices, mapped as `random.choices` maps them; two magnitudes; the Cutout size), then the
two numpy uniforms that place the Cutout (x, then y). The caller seeds each image on its
own (see `kdbench.data.loaders.strong_seed`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np
from PIL import Image, ImageEnhance

# Cutout's fill: the official RGB triple, and for grey images its luma as PIL computes it
# (L = (299 R + 587 G + 114 B) / 1000 in PIL's fixed point: 123).
RGB_FILL = (125, 123, 114)
GREY_FILL = 123
CUTOUT_MAX = 0.5  # Cutout's side is at most this fraction of the width
DRAWS = 10  # uniforms per image
_IDENTITY = np.arange(256, dtype=np.int64)


class Op(NamedTuple):
    """One RandAugment op: its magnitude is `low + float(high - low) * u`."""

    name: str
    low: float
    high: float
    apply: Callable[["Picture", float], "Picture"]


# -- a picture is a numpy array or a PIL image, converted only when an op needs the other ----


Picture = Union[np.ndarray, Image.Image]  # (H, W[, 3]) uint8, or the same as a PIL image


def _pil(x: Picture) -> Image.Image:
    return x if isinstance(x, Image.Image) else Image.fromarray(np.ascontiguousarray(x))


def _arr(x: Picture) -> np.ndarray:
    return np.asarray(x) if isinstance(x, Image.Image) else x


_OFFSETS = np.arange(3, dtype=np.int16) * 256  # channel c's table starts at 256 c


def _apply_lut(a: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Per-channel table lookup (`luts` is `(C, 256)`), clipped to 0..255 as PIL's `point` does."""
    flat = np.clip(luts, 0, 255).astype(np.uint8).ravel()
    return flat[a] if a.ndim == 2 else flat[a + _OFFSETS[:a.shape[2]]]


def _histograms(a: np.ndarray) -> np.ndarray:
    """`(C, 256)` histograms, one per channel."""
    if a.ndim == 2:
        return np.bincount(a.ravel(), minlength=256)[None]
    channels = a.shape[2]
    return np.bincount((a + _OFFSETS[:channels]).ravel(), minlength=256 * channels).reshape(channels, 256)


# -- the fourteen ops ---------------------------------------------------------------------


def auto_contrast(x: Picture, _v: float) -> np.ndarray:
    """`ImageOps.autocontrast` (no cutoff): each channel's range stretched to 0..255."""
    a = _arr(x)
    # A planar copy first: reductions along the last, interleaved axis are several times slower.
    planes = a.reshape(-1, 1 if a.ndim == 2 else a.shape[2]).T.copy()
    lo, hi = planes.min(axis=1).astype(np.int64), planes.max(axis=1).astype(np.int64)
    flat = hi <= lo
    scale = 255.0 / np.where(flat, 1, hi - lo)
    offset = -lo * scale
    # Float64 `i * scale + offset`, truncated toward zero: PIL's `int(...)`.
    luts = (_IDENTITY * scale[:, None] + offset[:, None]).astype(np.int64)
    return _apply_lut(a, np.where(flat[:, None], _IDENTITY, luts))


def equalize(x: Picture, _v: float) -> np.ndarray:
    """`ImageOps.equalize`: PIL's integer histogram-equalisation rule, per channel.

    With `n` pixels and `top` of them at the highest value present, `step = (n - top) // 255`;
    value `i` maps to `(step // 2 + pixels below i) // step`. A channel with one value
    present, or a step of 0, is left alone.
    """
    a = _arr(x)
    luts = []
    for hist in _histograms(a):
        present = hist[hist > 0]
        step = int(present.sum() - present[-1]) // 255 if len(present) > 1 else 0
        if not step:
            luts.append(_IDENTITY)
            continue
        below = np.cumsum(hist) - hist
        luts.append((step // 2 + below) // step)
    return _apply_lut(a, np.stack(luts))


def posterize(x: Picture, v: float) -> np.ndarray:
    """`ImageOps.posterize` keeping `max(1, int(v))` high bits."""
    bits = max(1, int(v))
    return np.bitwise_and(_arr(x), (0xFF << (8 - bits)) & 0xFF)


def solarize(x: Picture, v: float) -> np.ndarray:
    """`ImageOps.solarize`: values at or above the threshold `v` inverted."""
    a = _arr(x)
    return np.where(a < v, a, 255 - a).astype(np.uint8)


def identity(x: Picture, _v: float):
    """The op that changes nothing (it still takes its magnitude draw)."""
    return x


def brightness(x: Picture, v: float) -> Image.Image:
    """`ImageEnhance.Brightness(img).enhance(v)`: a PIL blend with black."""
    return ImageEnhance.Brightness(_pil(x)).enhance(v)


def color(x: Picture, v: float):
    """`ImageEnhance.Color(img).enhance(v)`; a grey image is its own degenerate, so unchanged."""
    img = _pil(x)
    return img if img.mode == "L" else ImageEnhance.Color(img).enhance(v)


def contrast(x: Picture, v: float) -> Image.Image:
    """`ImageEnhance.Contrast(img).enhance(v)`: a PIL blend with the rounded mean grey level."""
    img = _pil(x)
    grey = np.asarray(img if img.mode == "L" else img.convert("L"))
    # The sum of integers is exact in float64 whatever the order, so this equals ImageStat's mean.
    mean = int(float(grey.sum(dtype=np.int64)) / grey.size + 0.5)
    flat = Image.new(img.mode, img.size, mean if img.mode == "L" else (mean,) * 3)
    return Image.blend(flat, img, v)


def sharpness(x: Picture, v: float) -> Image.Image:
    """`ImageEnhance.Sharpness(img).enhance(v)`: a PIL blend with the SMOOTH-filtered image."""
    return ImageEnhance.Sharpness(_pil(x)).enhance(v)


def rotate(x: Picture, v: float) -> Image.Image:
    """`img.rotate(v)`: degrees counter-clockwise about the centre, nearest neighbour, black fill."""
    return _pil(x).rotate(v)


def _affine(x: Picture, coefficients: tuple[float, ...]) -> Image.Image:
    img = _pil(x)
    return img.transform(img.size, Image.Transform.AFFINE, coefficients)


def shear_x(x: Picture, v: float) -> Image.Image:
    """Affine map (1, v, 0, 0, 1, 0), nearest neighbour, black fill."""
    return _affine(x, (1, v, 0, 0, 1, 0))


def shear_y(x: Picture, v: float) -> Image.Image:
    """Affine map (1, 0, 0, v, 1, 0)."""
    return _affine(x, (1, 0, 0, v, 1, 0))


def translate_x(x: Picture, v: float) -> Image.Image:
    """Shift by `v` times the width (affine map (1, 0, v·W, 0, 1, 0))."""
    width = x.size[0] if isinstance(x, Image.Image) else x.shape[1]
    return _affine(x, (1, 0, v * width, 0, 1, 0))


def translate_y(x: Picture, v: float) -> Image.Image:
    """Shift by `v` times the height (affine map (1, 0, 0, 0, 1, v·H))."""
    height = x.size[1] if isinstance(x, Image.Image) else x.shape[0]
    return _affine(x, (1, 0, 0, 0, 1, v * height))


# The official list, in its order (the op choices index it) and with its ranges.
OPS: tuple[Op, ...] = (
    Op("AutoContrast", 0, 1, auto_contrast),
    Op("Brightness", 0.05, 0.95, brightness),
    Op("Color", 0.05, 0.95, color),
    Op("Contrast", 0.05, 0.95, contrast),
    Op("Equalize", 0, 1, equalize),
    Op("Identity", 0, 1, identity),
    Op("Posterize", 4, 8, posterize),
    Op("Rotate", -30, 30, rotate),
    Op("Sharpness", 0.05, 0.95, sharpness),
    Op("ShearX", -0.3, 0.3, shear_x),
    Op("ShearY", -0.3, 0.3, shear_y),
    Op("Solarize", 0, 256, solarize),
    Op("TranslateX", -0.3, 0.3, translate_x),
    Op("TranslateY", -0.3, 0.3, translate_y),
)
NUM_OPS = 2  # RandAugment(2, ·)


# -- draws ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrongDraws:
    """Every random choice of one image's strong view.

    `uniforms` are the five values the official RandAugment takes from Python's `random`,
    in its order: two op choices, two magnitudes, the Cutout size. `cutout_uniforms` are
    the two numpy uniforms that place the Cutout (x, then y); they are unused when the
    Cutout size is 0.
    """

    crop_y: int
    crop_x: int
    flip: bool
    uniforms: tuple[float, float, float, float, float]
    cutout_uniforms: tuple[float, float]

    def ops(self) -> list[tuple[Op, float]]:
        """The ops and their magnitudes, as the official code derives them from `uniforms`."""
        n = len(OPS)
        # random.choices(population, k) picks population[floor(random() * n)].
        chosen = [OPS[math.floor(u * n)] for u in self.uniforms[:NUM_OPS]]
        return [(op, op.low + float(op.high - op.low) * u)
                for op, u in zip(chosen, self.uniforms[NUM_OPS:2 * NUM_OPS])]

    def cutout_fraction(self) -> float:
        """Cutout's side as a fraction of the width (0: no Cutout)."""
        return self.uniforms[2 * NUM_OPS] * CUTOUT_MAX


def draw(seed: int, *, pad: int = 4, flip: bool = True) -> StrongDraws:
    """One image's draws from `random.Random(seed)` (crop offsets in `0..2*pad`)."""
    rng = random.Random(seed)
    u = [rng.random() for _ in range(DRAWS)]
    span = 2 * pad + 1
    return StrongDraws(int(u[0] * span), int(u[1] * span), flip and u[2] < 0.5,
                       (u[3], u[4], u[5], u[6], u[7]), (u[8], u[9]))


# -- one image -------------------------------------------------------------------------------


def cutout_box(fraction: float, cutout_uniforms: tuple[float, float], width: int, height: int,
               ) -> tuple[int, int, int, int] | None:
    """The Cutout rectangle as `(y0, y1, x0, x1)` slice bounds, or None when the side is 0.

    The official centre is `np.random.uniform(w)`: numpy's `low + (high - low) * u` with
    `low = w` and the default `high = 1.0`, so it lies in (1, w]. PIL paints the
    rectangle's corners truncated to integers, both inclusive.
    """
    if fraction <= 0:
        return None
    side = fraction * width
    ux, uy = cutout_uniforms
    x0 = int(max(0, (width + (1.0 - width) * ux) - side / 2.0))
    y0 = int(max(0, (height + (1.0 - height) * uy) - side / 2.0))
    x1 = min(width, x0 + side)
    y1 = min(height, y0 + side)
    return y0, int(y1) + 1, x0, int(x1) + 1


def strong_view(padded: np.ndarray, draws: StrongDraws, size: tuple[int, int], out: np.ndarray | None = None,
                ) -> np.ndarray:
    """The strong view of one image, uint8 `(C, H, W)` (written into `out` when given).

    `padded` is the zero-padded image, `(Hp, Wp)` (grey) or `(Hp, Wp, 3)`; `size` is
    `(H, W)`, the crop size.
    """
    height, width = size
    picture = padded[draws.crop_y:draws.crop_y + height, draws.crop_x:draws.crop_x + width]
    if draws.flip:
        picture = picture[:, ::-1]
    for op, magnitude in draws.ops():
        picture = op.apply(picture, magnitude)
    result = _arr(picture)
    grey = result.ndim == 2
    if out is None:
        out = np.empty((1 if grey else 3, height, width), dtype=np.uint8)
    if grey:
        out[0] = result
    else:
        out[...] = result.transpose(2, 0, 1)
    box = cutout_box(draws.cutout_fraction(), draws.cutout_uniforms, width, height)
    if box is not None:
        y0, y1, x0, x1 = box
        fill = [GREY_FILL] if grey else RGB_FILL
        out[:, y0:y1, x0:x1] = np.asarray(fill, dtype=np.uint8)[:, None, None]
    return out


def render(store: np.ndarray, rows: Sequence[int], seeds: Sequence[int], *, size: tuple[int, int],
           pad: int, flip: bool, out: np.ndarray) -> np.ndarray:
    """Strong views of `store[rows]` into `out` (uint8 `(B, C, H, W)`), image k drawn from `seeds[k]`.

    `store` holds the zero-padded images, `(N, Hp, Wp)` (grey) or `(N, Hp, Wp, 3)`.
    """
    for k, (row, seed) in enumerate(zip(rows, seeds)):
        strong_view(store[row], draw(seed, pad=pad, flip=flip), size, out[k])
    return out
