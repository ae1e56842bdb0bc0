"""The checks every registered method must pass, a user's new file included.

`check(name)` runs them and raises `AssertionError` with a readable message on the first
failure. `tests/test_method_conformance.py` runs it on every method `available()` finds.
"""

from __future__ import annotations

import torch

from kdbench import methods


def _batch(classes: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=g) * 3
    teacher = torch.randn(batch, classes, generator=g) * 3
    targets = torch.randint(0, classes, (batch,), generator=g)
    # Make the teacher right on some rows, wrong on others, tied and true-class-last on others.
    rows = torch.arange(batch)
    other = (targets + 1) % classes
    kind = rows % 4
    top = teacher.max(dim=1).values + 1
    teacher[rows[kind == 0], targets[kind == 0]] = top[kind == 0]
    teacher[rows[kind == 1], other[kind == 1]] = top[kind == 1]
    teacher[rows[kind == 2], other[kind == 2]] = top[kind == 2]
    teacher[rows[kind == 2], targets[kind == 2]] = top[kind == 2]
    teacher[rows[kind == 3], targets[kind == 3]] = teacher.min(dim=1).values[kind == 3] - 1
    return student, teacher, targets


def check(name: str) -> None:
    """Assert that method `name` meets the loss contract (see docs/design.md)."""
    for classes, batch, epoch in [(10, 16, 1), (100, 8, 100), (1000, 4, 7), (10, 1, 3)]:
        student, teacher, targets = _batch(classes, batch, seed=classes + batch)
        method = methods.build(name)
        s = student.clone().requires_grad_(True)
        t = teacher.clone().requires_grad_(True)
        y = targets.clone()
        terms = method(s, t, y, epoch=epoch)
        where = f"method '{name}' ({classes} classes, batch {batch}, epoch {epoch})"

        assert isinstance(terms, dict) and terms, f"{where}: must return a non-empty dict of terms"
        for key, value in terms.items():
            assert isinstance(key, str), f"{where}: term names must be strings, got {key!r}"
            assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{where}: term '{key}' must be a scalar tensor"
            assert torch.isfinite(value), f"{where}: term '{key}' is not finite: {value}"
        loss = sum(terms.values())
        assert loss.requires_grad, f"{where}: the summed terms carry no gradient to the student"
        loss.backward()

        assert s.grad is not None and torch.isfinite(s.grad).all(), f"{where}: non-finite gradient w.r.t. the student"
        assert t.grad is None or not t.grad.any(), f"{where}: the loss sends gradient to the teacher"
        assert torch.equal(s.detach(), student) and torch.equal(t.detach(), teacher) and torch.equal(y, targets), (
            f"{where}: the loss modified its inputs in place"
        )

        again = methods.build(name)(student.clone(), teacher.clone(), targets.clone(), epoch=epoch)
        assert again.keys() == terms.keys(), f"{where}: the term names change between calls"
        for key in terms:
            assert torch.equal(again[key], terms[key].detach()), f"{where}: term '{key}' is not deterministic"
