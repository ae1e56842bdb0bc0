"""On-device loaders for datasets held whole in memory as uint8 tensors.

The training split lives once on the device, zero-padded up front. Each epoch draws the
permutation, the crop offsets and the flips for every image at once from one generator
seeded with `(seed, epoch)`. A batch is then a single `index_select` with a flat (int32)
index that folds the crop and the flip together, followed by `/255`, `-mean`, `/std` done in
the same order as torchvision's `ToTensor` + `Normalize` (so the numbers agree bit for
bit). No host round-trips happen per batch.

`TrainLoader.strong_batches(e)` adds MLKD's strong view of the same batches, made on the
host by `kdbench.data.strong` in worker processes and copied to the device.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data.strong_workers import Job, Renderer, Settings
from kdbench.errors import KdbenchError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# The strong view's host workers per loader: processes, not threads (measured in
# kdbench.data.strong_workers: one makes about 11k RGB or 17k grey 32×32 images/s, and they
# scale with the cores). Up to 4, leaving a core to the training loop; and batches kept
# ready per worker.
STRONG_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
STRONG_PROCESSES = True
STRONG_DEPTH = 2


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit generator seed from integers (a hash of them).

    Hashing matters: CPU generators use only the low 32 bits of a seed, so packing
    numbers side by side would make seeds collide.
    """
    text = ":".join(str(int(p)) for p in parts)
    digest = hashlib.sha256(f"kdbench-data:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch `epoch` of a run with seed `seed`."""
    return mix_seed(seed, epoch)


# Leads the strong view's seeds, so they never equal another draw's ("STRONG" in ASCII).
STRONG_VIEW_TAG = 0x5354524F4E47


def strong_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the strong-view draws of image `index` (its position in the original
    training split) in epoch `epoch` of a run with seed `seed`."""
    return mix_seed(STRONG_VIEW_TAG, seed, epoch, index)


def supports_strong_view(loader: Any) -> bool:
    """Whether `loader` can make MLKD's strong view (`loader.strong_batches`)."""
    return bool(getattr(loader, "supports_strong_view", False))


def require_strong_view(loader: Any, *, dataset: str, method: str) -> None:
    """Raise a one-line `KdbenchError` unless `loader` can make the strong view."""
    if not supports_strong_view(loader):
        raise KdbenchError(
            f"dataset '{dataset}': method '{method}' needs the strong augmented view, which only the in-memory "
            f"datasets with 1 or 3 channels provide (cifar100, fashion_mnist, tiny_imagenet, synthetic)"
        )


def normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 `(B, C, H, W)` → `(x / 255 - mean) / std` in `dtype`, channels-last when asked.

    `mean` and `std` are float32 tensors of shape `(C, 1, 1)`. The arithmetic runs in
    float32 in torchvision's order (so results match it exactly); the cast to another
    dtype and the layout change share one final copy.
    """
    out = images.to(torch.float32).div_(255).sub_(mean).div_(std)
    # Normalising in NCHW and converting afterwards is faster on CPU than either gathering
    # or normalising channels-last (broadcasting over a last dimension of 3 vectorises badly).
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if dtype == torch.float32 and not channels_last:
        return out
    return out.to(dtype=dtype, memory_format=layout)


def crop_flip_index(
    base: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor,
    *,
    channels: int,
    out_size: tuple[int, int],
    padded_size: tuple[int, int],
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """Flat indices `(B, C, H, W)` into a contiguous padded `(N, C, Hp, Wp)` store.

    `base[b]` is the flat offset of image b, `offset_y/x[b]` its crop corner and
    `flip[b]` (bool) whether to mirror the crop. `dtype` is int64, or int32 when every
    offset fits (half the memory traffic).
    """
    height, width = out_size
    padded_h, padded_w = padded_size
    device = base.device
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    rows = (offset_y.to(dtype)[:, None] + ys) * padded_w  # (B, H)
    # A horizontal flip of the crop reads its columns right to left.
    cols = offset_x.to(dtype)[:, None] + torch.where(flip[:, None], (width - 1) - xs, xs)  # (B, W)
    pixel = (base.to(dtype)[:, None] + rows)[:, :, None] + cols[:, None, :]  # (B, H, W)
    channel = torch.arange(channels, device=device, dtype=dtype) * (padded_h * padded_w)
    return pixel[:, None, :, :] + channel[:, None, None]


def _stats(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device).view(-1, 1, 1)


def _gather(
    padded: torch.Tensor,
    rows: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """Crop-and-flip images `rows` of the padded store; returns uint8 `(B, C, H, W)`."""
    n, c, hp, wp = padded.shape
    dtype = torch.int32 if padded.numel() < 2**31 else torch.int64
    index = crop_flip_index(
        rows * (c * hp * wp), offset_y, offset_x, flip,
        channels=c, out_size=out_size, padded_size=(hp, wp), dtype=dtype,
    )
    return padded.view(-1).index_select(0, index.view(-1)).view(index.shape)


def augment(
    images: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int = 4,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """torchvision's `RandomCrop(size, padding=pad)` + `RandomHorizontalFlip` + `ToTensor` +
    `Normalize`, with the random choices given explicitly.

    `images` is uint8 `(B, C, H, W)`; `offset_y`, `offset_x` are integer tensors in
    `{0..2*pad}` and `flip` a bool tensor, each of shape `(B,)`. Padding is zero on the raw
    image, so padded pixels come out as `-mean/std`.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)).contiguous()
    rows = torch.arange(b, device=images.device)
    raw = _gather(padded, rows, offset_y.to(images.device), offset_x.to(images.device),
                  flip.to(device=images.device, dtype=torch.bool), (h, w))
    return normalize(raw, _stats(mean, images.device), _stats(std, images.device), dtype, channels_last)


class _SplitOnDevice:
    """What both loaders hold: a uint8 split on its device, its labels, indices and statistics."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], indices: torch.Tensor | None, channels_last: bool, dtype: torch.dtype) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.device = images.device
        self.num_samples = len(images)
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.targets = targets.to(device=self.device, dtype=torch.long)
        self.indices = (
            torch.arange(self.num_samples, device=self.device) if indices is None
            else indices.to(device=self.device, dtype=torch.long)
        )
        self.mean = _stats(mean, self.device)
        self.std = _stats(std, self.device)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


class TrainLoader(_SplitOnDevice):
    """Shuffled, augmented batches of an in-memory uint8 split, on its device.

    `epoch(e)` yields `(images, targets, indices)` and is a pure function of
    `(seed, e)`: one generator seeded with both draws the whole epoch's permutation, crop
    offsets and flips. `indices` are positions in the original training split. The last,
    partial batch is kept; `len()` is the number of batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 4,
        flip: bool = True,
        indices: torch.Tensor | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(images, targets, batch_size=batch_size, mean=mean, std=std, indices=indices,
                         channels_last=channels_last, dtype=dtype)
        self.image_shape = tuple(images.shape[1:])
        self.seed = int(seed)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.padded = F.pad(images, (self.pad,) * 4).contiguous() if self.pad else images.contiguous()
        self.strong_workers = STRONG_WORKERS
        self.strong_processes = STRONG_PROCESSES
        self._renderer: Renderer | None = None
        self._host_indices = np.empty(0, dtype=np.int64)

    @property
    def supports_strong_view(self) -> bool:
        """True for grey and RGB images, the modes MLKD's strong view is defined for."""
        return self.image_shape[0] in (1, 3)

    def generator(self, epoch: int) -> torch.Generator:
        """The generator that draws epoch `epoch`'s randomness (seeded from seed and epoch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(self.seed, epoch))
        return g

    def _order(self, g: torch.Generator) -> torch.Tensor:
        """The epoch's permutation: always the first draw of the epoch's generator."""
        return torch.randperm(self.num_samples, generator=g, device=self.device)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of epoch `epoch` as `(images, targets, indices)`.

        From `generator(epoch)`, in this order: the permutation, the vertical and the
        horizontal crop offsets (uniform in `{0..2*pad}`), and the flips (`rand < 0.5`),
        one per position in the epoch.
        """
        n, dev = self.num_samples, self.device
        g = self.generator(epoch)
        order = self._order(g)
        offset_y = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        offset_x = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        flips = torch.rand(n, generator=g, device=dev) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        for start in range(0, n, self.batch_size):
            span = slice(start, start + self.batch_size)
            rows = order[span]
            raw = _gather(self.padded, rows, offset_y[span], offset_x[span], flips[span], self.image_shape[1:])
            images = normalize(raw, self.mean, self.std, self.dtype, self.channels_last)
            yield images, self.targets[rows], self.indices[rows]

    def in_order(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The split un-augmented (the padding cropped off, then normalised: the test
        transform), float32, in the original split's order (by index), as `(images, targets,
        indices)` batches. What a teacher artifact is built from (`kdbench.train.artifacts`)."""
        order = torch.argsort(self.indices)
        height, width = self.image_shape[1:]
        size = batch_size or self.batch_size
        for start in range(0, self.num_samples, size):
            rows = order[start:start + size]
            raw = self.padded[rows, :, self.pad:self.pad + height, self.pad:self.pad + width]
            yield normalize(raw, self.mean, self.std), self.targets[rows], self.indices[rows]

    def strong_batches(self, epoch: int, skip: int = 0, *, shard: tuple[int, int] | None = None,
                       ) -> Iterator[torch.Tensor]:
        """MLKD's strong view of the batches of `epoch(epoch)`, from batch `skip` on.

        Yields normalised image tensors on the device, in the loader's dtype and layout,
        one per batch of `epoch(epoch)`, holding the same images in the same order. Image
        `i` (its position in the original split) is drawn from `strong_seed(seed, epoch, i)`,
        so its view depends neither on the batch it falls in nor on `skip`, and drawing it
        leaves `epoch(epoch)` unchanged. `shard=(rank, world)` makes only the share of each
        batch that `kdbench.train.distributed.shard` takes. The host work runs ahead in
        `strong_workers` worker processes (threads when `strong_processes` is False; made
        inline when 0), started on first use and kept until `close()`; the first batches
        start at the call. The permutation is read to the host once per call; per batch
        the device sees one copy from pinned memory and the normalisation, and nothing
        waits for it. Raises `KdbenchError` at the call for images of other channel counts.
        """
        if not self.supports_strong_view:
            raise KdbenchError(
                f"the strong augmented view needs 1- or 3-channel images; this training split has "
                f"{self.image_shape[0]} channels"
            )
        renderer = self._strong_renderer()
        order = self._order(self.generator(epoch)).cpu()  # the one host sync of the epoch
        seed_of = functools.partial(strong_seed, self.seed, epoch)

        def jobs() -> Iterator[Job]:
            for start in range(skip * self.batch_size, self.num_samples, self.batch_size):
                rows = order[start:start + self.batch_size]
                if shard is not None:
                    rows = rows.tensor_split(shard[1])[shard[0]]
                rows = rows.numpy()
                yield Job(rows, self._host_indices[rows], seed_of)

        return self._to_device(renderer.batches(jobs(), STRONG_DEPTH * max(1, renderer.workers)))

    def _to_device(self, batches: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        """uint8 host batches to normalised device tensors, as the weak view's."""
        try:
            for batch in batches:
                raw = torch.from_numpy(batch)
                if self.device.type == "cuda":
                    # From pinned memory the copy is asynchronous; from pageable memory it would wait for the stream.
                    raw = raw.pin_memory().to(self.device, non_blocking=True)
                yield normalize(raw, self.mean, self.std, self.dtype, self.channels_last)
        finally:
            batches.close()  # type: ignore[attr-defined]  (cancels what has not started)

    def _strong_renderer(self) -> Renderer:
        """The renderer for `strong_workers`/`strong_processes`, made (or remade) on demand.

        Its store is the padded split on the host, copied from the device once, so
        loaders that never draw the strong view hold nothing more.
        """
        wanted = (int(self.strong_workers), bool(self.strong_processes))
        if self._renderer is not None and (self._renderer.workers, self._renderer.processes) == wanted:
            return self._renderer
        self.close()
        images = self.padded.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        store = images[..., 0] if images.shape[3] == 1 else images
        self._host_indices = self.indices.cpu().numpy()
        settings = Settings(tuple(self.image_shape[1:]), self.pad, self.flip)
        self._renderer = Renderer(store, settings, workers=wanted[0], processes=wanted[1])
        return self._renderer

    def close(self) -> None:
        """Stop the strong view's workers, if any (they also stop when the loader is collected)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class EvalLoader(_SplitOnDevice):
    """Fixed-order, un-augmented batches of an in-memory uint8 split (Normalize only).

    Iterating yields `(images, targets, indices)` batches of `batch_size`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        indices: torch.Tensor | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(images, targets, batch_size=batch_size, mean=mean, std=std, indices=indices,
                         channels_last=channels_last, dtype=dtype)
        self.images = images.contiguous()

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, self.num_samples, self.batch_size):
            stop = start + self.batch_size
            images = normalize(self.images[start:stop], self.mean, self.std, self.dtype, self.channels_last)
            yield images, self.targets[start:stop], self.indices[start:stop]
