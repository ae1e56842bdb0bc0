"""Seeded, class-stratified validation hold-outs and training subsets.

The validation images are drawn from the training split first; the `train_size` subset
is then drawn from what remains. Both depend only on `split_seed`, so every run seed of a
grid sees the same split. The test set is never touched.
"""

from __future__ import annotations

import torch

from kdbench.errors import KdbenchError


def stratified_sample(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted positions of `k` elements of `labels`, each class represented in proportion.

    Class quotas are `k * count / n` rounded by largest remainder (ties broken at
    random); within a class the members are drawn uniformly without replacement.
    """
    labels = labels.cpu().long()
    n = labels.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} of {n}")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota_exact = counts.double() * k / n
    quota = quota_exact.floor().long()
    short = k - int(quota.sum())
    if short:
        # Largest remainders first; a random permutation breaks ties fairly.
        shuffle = torch.randperm(len(classes), generator=generator)
        frac = (quota_exact - quota)[shuffle]
        order = shuffle[torch.sort(frac, descending=True, stable=True).indices]
        quota[order[:short]] += 1
    # Shuffle, then group by class (stable), so each group is in random order.
    perm = torch.randperm(n, generator=generator)
    grouped = perm[torch.sort(inverse[perm], stable=True).indices]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - group_start[inverse[grouped]]
    chosen = grouped[rank < quota[inverse[grouped]]]
    return torch.sort(chosen).values


def split_indices(
    labels: torch.Tensor,
    *,
    train_size: int | None,
    val_size: int,
    seed: int,
    dataset: str = "dataset",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(train, val)` positions into a training split of labels `labels` (CPU, int64, sorted).

    `val` holds `val_size` class-stratified images (None when 0); `train` the rest, or a
    class-stratified subset of `train_size` of them.
    """
    n = labels.numel()
    generator = torch.Generator().manual_seed(int(seed))
    everything = torch.arange(n)
    if val_size >= n:
        raise KdbenchError(
            f"dataset '{dataset}': val_size {val_size} leaves no training images (the training split has {n})"
        )
    val = None
    rest = everything
    if val_size > 0:
        val = stratified_sample(labels, val_size, generator)
        keep = torch.ones(n, dtype=torch.bool)
        keep[val] = False
        rest = everything[keep]
    if train_size is not None:
        if train_size > rest.numel():
            extra = f" after holding out val_size {val_size}" if val_size else ""
            raise KdbenchError(
                f"dataset '{dataset}': train_size {train_size} exceeds the {rest.numel()} training images "
                f"available{extra}"
            )
        rest = rest[stratified_sample(labels[rest], train_size, generator)]
    return rest, val
