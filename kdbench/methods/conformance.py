"""The checks every registered method must pass, a user's new file included.

`check(name)` runs them and raises `AssertionError` with a readable message on the first
failure. `tests/test_method_conformance.py` runs it on every method `available()` finds.
A method with `regions` gets random region logits at its scales; a method with a
`teacher_artifact` gets the artifact its builder makes from a synthetic teacher and split
(`kdbench.methods.artifacts.synthetic_inputs`).
"""

from __future__ import annotations

import functools

import torch

from kdbench import methods
from kdbench.methods import artifacts


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


def _inputs(views: tuple[str, ...] | None, classes: int, batch: int, seed: int,
            regions: int | None = None) -> tuple[dict, dict, torch.Tensor]:
    """Student and teacher logits per view (one entry, key None, for the standard view) and targets;
    with `regions` N, also (B, C, N) region logits under the keys of `methods.REGION_KWARGS`, whose
    region 0 is near the global logits (a teacher right or wrong on some regions only)."""
    students, teachers, targets = {}, {}, None
    for i, view in enumerate(views or (None,)):
        students[view], teachers[view], view_targets = _batch(classes, batch, seed + 7919 * i)
        targets = view_targets if targets is None else targets  # every view shows the same images
    if regions is not None:
        g = torch.Generator().manual_seed(seed + 104729)
        for side, logits in ((students, students[None]), (teachers, teachers[None])):
            noise = torch.randn(batch, classes, regions, generator=g) * 3
            noise[:, :, 0] *= 0.1
            side[_REGIONS] = logits.unsqueeze(2) + noise
    return students, teachers, targets


_REGIONS = "regions"


def _call(method: torch.nn.Module, students: dict, teachers: dict, targets: torch.Tensor, epoch: int) -> dict:
    if _REGIONS in students:
        kwargs = dict(zip(methods.REGION_KWARGS, (students[_REGIONS], teachers[_REGIONS])))
        return method(students[None], teachers[None], targets, epoch=epoch, **kwargs)
    if list(students) == [None]:
        return method(students[None], teachers[None], targets, epoch=epoch)
    return method(students, teachers, targets, epoch=epoch)


@functools.lru_cache(maxsize=8)
def _artifact(name: str, classes: int) -> torch.Tensor:
    """The method's teacher artifact built from a synthetic teacher of `classes` classes."""
    built = methods.method_class(name).build_teacher_artifact(artifacts.synthetic_inputs(classes))
    assert isinstance(built, torch.Tensor) and built.is_floating_point() and torch.isfinite(built).all(), (
        f"method '{name}': build_teacher_artifact must return a finite floating-point tensor")
    return built


def _build(name: str, classes: int) -> torch.nn.Module:
    """`methods.build(name)`, handed its teacher artifact for `classes` classes if it declares one
    (built once per class count: `_artifact` checks it)."""
    method = methods.build(name)
    if artifacts.teacher_artifact(method):
        method.set_teacher_artifact(_artifact(name, classes))
    return method


def _regions(name: str) -> int | None:
    """The number of regions of the method's default scales (Σ s²), or None without `regions`."""
    scales = methods.region_scales(methods.build(name))
    return None if scales is None else sum(s * s for s in scales)


def _check_declarations(name: str, cls: type) -> None:
    views = getattr(cls, "views", None)
    if views is not None:
        assert isinstance(views, tuple) and views and all(isinstance(v, str) for v in views), (
            f"method '{name}': `views` must be a non-empty tuple of view names, got {views!r}"
        )
        assert len(set(views)) == len(views), f"method '{name}': `views` repeats a view: {views!r}"
    declared = getattr(cls, "batch_statistics", False)
    assert isinstance(declared, bool), f"method '{name}': `batch_statistics` must be a bool, got {declared!r}"
    counting = getattr(cls, "epoch_hparams", ())
    assert isinstance(counting, tuple), f"method '{name}': `epoch_hparams` must be a tuple of names, got {counting!r}"
    params = {p.name: p for p in methods.hparams_of(name)}
    for key in counting:
        assert key in params and params[key].type is int and isinstance(params[key].default, int), (
            f"method '{name}': `epoch_hparams` names '{key}', which must be an int hyper-parameter with an int default")
    reference = getattr(cls, "reference_epochs", methods.REFERENCE_EPOCHS)
    assert isinstance(reference, int) and not isinstance(reference, bool) and reference >= 1, (
        f"method '{name}': `reference_epochs` must be an int >= 1, got {reference!r}")
    source = getattr(cls, "defaults_from", "")
    assert isinstance(source, str), f"method '{name}': `defaults_from` must be a string, got {source!r}"
    regions = getattr(cls, "regions", False)
    assert isinstance(regions, bool), f"method '{name}': `regions` must be a bool, got {regions!r}"
    if regions:
        assert views is None, f"method '{name}': `regions` is for the standard view only; it also declares `views`"
        scales = getattr(methods.build(name), "scales", None)
        assert isinstance(scales, tuple) and scales and all(isinstance(s, int) and s >= 1 for s in scales), (
            f"method '{name}': with `regions`, the instance's `scales` must be a non-empty tuple of ints, got {scales!r}")
    artifact = getattr(cls, "teacher_artifact", None)
    if artifact is not None:
        assert isinstance(artifact, str) and artifact, f"method '{name}': `teacher_artifact` must be a name, got {artifact!r}"
        assert callable(getattr(cls, "build_teacher_artifact", None)) and callable(
            getattr(cls, "set_teacher_artifact", None)), (
            f"method '{name}': a `teacher_artifact` needs a classmethod build_teacher_artifact(inputs) and a method "
            "set_teacher_artifact(artifact)")


def _check_epoch_scalars(name: str, method: torch.nn.Module) -> None:
    if not hasattr(method, "epoch_scalars"):
        return
    values = method.epoch_scalars()
    assert isinstance(values, dict), f"method '{name}': epoch_scalars() must return a dict, got {type(values).__name__}"
    for key, value in values.items():
        assert isinstance(key, str), f"method '{name}': epoch_scalars() keys must be strings, got {key!r}"
        scalar = isinstance(value, (int, float)) and not isinstance(value, bool)
        scalar = scalar or (isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad)
        assert scalar, f"method '{name}': epoch_scalars()['{key}'] must be a number or a detached 0-d tensor, got {value!r}"
        assert torch.isfinite(torch.as_tensor(value)), f"method '{name}': epoch_scalars()['{key}'] is not finite: {value}"


def _check_mean_separable(name: str, views: tuple[str, ...] | None, regions: int | None) -> None:
    """Without `batch_statistics`, each term on a batch must be the mean of the term over its
    rows: on 2n rows, the mean of its values on the two halves. DDP trains each process on
    its share of the batch and averages, so this is what makes such a method exact there."""
    students, teachers, targets = _inputs(views, 10, 16, seed=5, regions=regions)
    # Halves that differ (rows of kind k are those 4i + k of `_batch`): the first holds the
    # teacher's right rows and most of its ties, the second mostly rows it gets wrong, at
    # twice the logit scale. A mean over a data-dependent count of rows then fails.
    kinds = [torch.arange(k, 16, 4) for k in range(4)]
    order = torch.cat([kinds[0], kinds[2][:3], kinds[1][:1], kinds[2][3:], kinds[1][1:], kinds[3]])
    scale = torch.cat([torch.ones(8), torch.full((8,), 2.0)])[:, None]
    students = {v: (x[order] * scale.view(-1, *[1] * (x.dim() - 1))).double() for v, x in students.items()}
    teachers = {v: (x[order] * scale.view(-1, *[1] * (x.dim() - 1))).double() for v, x in teachers.items()}
    targets = targets[order]
    epoch = 3  # inside the warm-up of methods that have one: one epoch for all three calls

    def terms_and_grads(rows: slice) -> tuple[dict, dict, dict]:
        method = _build(name, 10).double()
        s = {v: x[rows].clone().requires_grad_(True) for v, x in students.items()}
        terms = _call(method, s, {v: x[rows].clone() for v, x in teachers.items()}, targets[rows].clone(), epoch)
        sum(terms.values()).backward()
        params = {p: param.grad for p, param in method.named_parameters() if param.grad is not None}
        return {k: t.detach() for k, t in terms.items()}, {v: x.grad for v, x in s.items()}, params

    whole, whole_grads, whole_params = terms_and_grads(slice(0, 16))
    first, first_grads, first_params = terms_and_grads(slice(0, 8))
    second, second_grads, second_params = terms_and_grads(slice(8, 16))
    hint = "; a loss that couples the rows of a batch declares `batch_statistics = True`"
    close = dict(rtol=1e-10, atol=1e-12)
    for key, value in whole.items():
        halves = (first.get(key, torch.zeros_like(value)) + second.get(key, torch.zeros_like(value))) / 2
        assert torch.allclose(value, halves, **close), (
            f"method '{name}': term '{key}' on a batch is {value.item():.12g}, the mean of its halves "
            f"{halves.item():.12g}: not a mean over rows{hint}")
    for view, grad in whole_grads.items():
        halves = torch.cat([first_grads[view], second_grads[view]]) / 2
        assert torch.allclose(grad, halves, **close), (
            f"method '{name}': the gradient w.r.t. the student{'' if view is None else f' (view {view!r})'} on a "
            f"batch is not half the gradient on each half{hint}")
    for pname, grad in whole_params.items():
        halves = (first_params[pname] + second_params[pname]) / 2
        assert torch.allclose(grad, halves, **close), (
            f"method '{name}': the gradient w.r.t. its parameter '{pname}' on a batch is not the mean of "
            f"those on its halves{hint}")


def check(name: str) -> None:
    """Assert that method `name` meets the loss contract (see docs/design.md)."""
    cls = methods.method_class(name)
    _check_declarations(name, cls)
    views = methods.views_of(cls)
    regions = _regions(name)
    if not methods.batch_statistics(cls):
        _check_mean_separable(name, views, regions)
    for classes, batch, epoch in [(10, 16, 1), (100, 8, 100), (1000, 4, 7), (10, 1, 3)]:
        students, teachers, targets = _inputs(views, classes, batch, seed=classes + batch, regions=regions)
        method = _build(name, classes)
        s = {v: x.clone().requires_grad_(True) for v, x in students.items()}
        t = {v: x.clone().requires_grad_(True) for v, x in teachers.items()}
        y = targets.clone()
        terms = _call(method, s, t, y, epoch)
        where = f"method '{name}' ({classes} classes, batch {batch}, epoch {epoch})"

        assert isinstance(terms, dict) and terms, f"{where}: must return a non-empty dict of terms"
        for key, value in terms.items():
            assert isinstance(key, str), f"{where}: term names must be strings, got {key!r}"
            assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{where}: term '{key}' must be a scalar tensor"
            assert torch.isfinite(value), f"{where}: term '{key}' is not finite: {value}"
        loss = sum(terms.values())
        assert loss.requires_grad, f"{where}: the summed terms carry no gradient to the student"
        loss.backward()

        for view in s:
            in_view = where if view is None else f"{where}, {'region logits' if view == _REGIONS else f'view {view!r}'}"
            assert s[view].grad is not None and torch.isfinite(s[view].grad).all(), (
                f"{in_view}: non-finite gradient w.r.t. the student"
            )
            assert t[view].grad is None or not t[view].grad.any(), f"{in_view}: the loss sends gradient to the teacher"
            assert torch.equal(s[view].detach(), students[view]) and torch.equal(t[view].detach(), teachers[view]), (
                f"{in_view}: the loss modified its inputs in place"
            )
        assert torch.equal(y, targets), f"{where}: the loss modified the targets in place"
        for pname, param in method.named_parameters():
            assert param.grad is None or torch.isfinite(param.grad).all(), (
                f"{where}: non-finite gradient w.r.t. the method's parameter '{pname}'"
            )
        _check_epoch_scalars(name, method)

        again = _call(_build(name, classes), {v: x.clone() for v, x in students.items()},
                      {v: x.clone() for v, x in teachers.items()}, targets.clone(), epoch)
        assert again.keys() == terms.keys(), f"{where}: the term names change between calls"
        for key in terms:
            assert torch.equal(again[key], terms[key].detach()), f"{where}: term '{key}' is not deterministic"
