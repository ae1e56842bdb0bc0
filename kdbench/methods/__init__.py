"""The method registry: `@register("name")` on an `nn.Module`, then `build(name, **hparams)`.

A method is a loss. Its `__init__` keyword arguments are its hyper-parameters (typed and
defaulted), and its forward is::

    forward(student_logits, teacher_logits, targets, *, epoch: int) -> dict[str, Tensor]

returning named, already-weighted scalar terms whose sum is the training loss. `epoch` is
1-based and drives warm-up. Optional class attributes: `views` (the augmented views the
method needs; its logits then arrive as dicts keyed by view), `needs_teacher`,
`epoch_hparams` and `reference_epochs` (the hyper-parameters that count epochs, and the
schedule length they were set for), `batch_statistics` (the loss couples the rows of a
batch), `regions` (the forward also receives region logits, keyword arguments
`student_regions` and `teacher_regions`, at the scales of its `scales` hyper-parameter),
`teacher_artifact` (the name of data built once per teacher, `kdbench.methods.artifacts`),
and `paper`, `code` and `defaults_from` (where the method and its defaults come from, for
listings); an optional method `epoch_scalars()` returns values to log once per epoch
(docs/design.md, "Method contract").

Methods are found in the repository's `methods/` folder, in every folder of
`KDBENCH_METHODS_PATH` (os.pathsep-separated) or `--methods-dir`, and in the
`kdbench.methods` entry-point group.

May import: errors, core, grid.recipe (which imports nothing).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.core.hparams import Description, HParam, describe_class, resolve, signature_hparams
from kdbench.grid.recipe import REFERENCE_EPOCHS
from kdbench.core.registry import Registry

ENV_PATH = "KDBENCH_METHODS_PATH"
#: The keyword arguments that carry region logits, (B, classes, N), to a method with `regions`.
REGION_KWARGS = ("student_regions", "teacher_regions")
ENTRY_POINT_GROUP = "kdbench.methods"

_registry: Registry[type[nn.Module]] = Registry("method")
_extra_dirs: list[Path] = []
_loaded_files: set[str] = set()
_loaded_entry_points = False


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers an `nn.Module` loss under `name`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        source = getattr(sys.modules.get(getattr(cls, "__module__", "")), "__file__", None) or "<unknown>"
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise KdbenchError(f"{source}: @register('{name}') must decorate an nn.Module subclass, got {cls!r}")
        _registry.add(name, cls, source=str(source))
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove the method registered as `name` (for tests that register one of their own)."""
    _registry.remove(name)


def builtin_methods_dir() -> Path | None:
    """The folder holding the built-in methods: the repository's `methods/`, or its installed copy."""
    repo_dir = Path(__file__).resolve().parents[2] / "methods"
    if repo_dir.is_dir():
        return repo_dir
    spec = importlib.util.find_spec("kdbench_methods")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def add_search_path(folder: str | os.PathLike) -> None:
    """Also import every method file in `folder` (what `--methods-dir` does)."""
    path = Path(folder)
    if not path.is_dir():
        raise KdbenchError(f"--methods-dir {folder}: not a folder")
    _extra_dirs.append(path)


def search_dirs() -> list[Path]:
    """Every folder scanned for method files, in order."""
    dirs = [d for d in [builtin_methods_dir()] if d is not None]
    for entry in os.environ.get(ENV_PATH, "").split(os.pathsep):
        if entry.strip():
            path = Path(entry.strip())
            if not path.is_dir():
                raise KdbenchError(f"{ENV_PATH}: '{entry}' is not a folder")
            dirs.append(path)
    return dirs + _extra_dirs


def discover() -> None:
    """Import every method file and entry point not imported yet. Safe to call often."""
    global _loaded_entry_points
    for folder in search_dirs():
        for file in sorted(folder.glob("*.py")):
            if not file.name.startswith("_"):
                _import_file(file)
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry_point.load()
            except Exception as exc:  # a broken plug-in must not hide the others' errors
                raise KdbenchError(
                    f"entry point '{entry_point.name}' ({entry_point.value}) in group "
                    f"{ENTRY_POINT_GROUP}: cannot import: {type(exc).__name__}: {exc}"
                ) from None


def _import_file(file: Path) -> None:
    key = str(file.resolve())
    if key in _loaded_files:
        return
    _loaded_files.add(key)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    module_name = f"kdbench_plugin_{digest}_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise KdbenchError(f"{file}: cannot import method file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except KdbenchError:
        raise
    except Exception as exc:
        del sys.modules[module_name]
        raise KdbenchError(f"{file}: cannot import method file: {type(exc).__name__}: {exc}") from None


def available() -> list[str]:
    """Names of every registered method, sorted."""
    discover()
    return _registry.names()


def method_class(name: str) -> type[nn.Module]:
    """The class registered as `name`."""
    discover()
    return _registry.get(name)


def hparams_of(name: str) -> list[HParam]:
    """The hyper-parameters of method `name`, read from its `__init__` signature."""
    return signature_hparams(method_class(name).__init__)


def resolve_hparams(name: str, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """`hparams` with defaults filled in, checked for unknown keys and wrong types."""
    return resolve("method", name, hparams_of(name), dict(hparams or {}))


def build(name: str, **hparams: Any) -> nn.Module:
    """An instance of method `name`, with its hyper-parameters validated.

    The instance detaches the teacher logits and computes on float32 logits, whatever the
    caller passes: methods never send gradient to the teacher, and under bf16 autocast
    their softmax and KL still run in float32.
    """
    cls = method_class(name)
    resolved = resolve_hparams(name, hparams)
    module = cls(**resolved)
    module.kdbench_name = name
    module.kdbench_hparams = resolved
    module.register_forward_pre_hook(_prepare_inputs, with_kwargs=True)
    return module


def _prepare_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if len(args) >= 2:
        student, teacher, *rest = args
        args = (_per_view(_to_float, student), _per_view(_detached_float, teacher), *rest)
    if REGION_KWARGS[0] in kwargs:
        kwargs = {**kwargs, REGION_KWARGS[0]: _to_float(kwargs[REGION_KWARGS[0]]),
                  REGION_KWARGS[1]: _detached_float(kwargs[REGION_KWARGS[1]])}
    return args, kwargs


def _per_view(fn: Callable[[torch.Tensor], torch.Tensor], logits: Any) -> Any:
    # A method with `views` receives a dict of logits keyed by view name.
    return {view: fn(t) for view, t in logits.items()} if isinstance(logits, dict) else fn(logits)


def _to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t


def _detached_float(t: torch.Tensor) -> torch.Tensor:
    return _to_float(t).detach()


def needs_teacher(method: nn.Module) -> bool:
    """False for methods (like `vanilla`) that declare `needs_teacher = False`."""
    return bool(getattr(method, "needs_teacher", True))


def views_of(method: nn.Module | type[nn.Module]) -> tuple[str, ...] | None:
    """The views a method declares (`views = ("weak", "strong")`), or None: the standard view only."""
    views = getattr(method, "views", None)
    return tuple(views) if views else None


def region_scales(method: nn.Module) -> tuple[int, ...] | None:
    """The scales of the region logits a method instance asks for (`regions = True` and its
    `scales`), or None: it gets none."""
    return tuple(method.scales) if getattr(method, "regions", False) else None


def epoch_scalars(method: nn.Module) -> dict[str, float]:
    """The method's per-epoch values (`epoch_scalars()`, e.g. CTKD's temperature) as floats; {} if none.

    Call it outside the training step: it reads tensors back to the host.
    """
    fn = getattr(method, "epoch_scalars", None)
    if fn is None:
        return {}
    return {str(k): float(v) for k, v in fn().items()}


def epoch_hparams(name: str) -> tuple[str, ...]:
    """The hyper-parameters of method `name` that count epochs (`epoch_hparams`, e.g. DKD's
    `("warmup",)`): a schedule of another length scales them by `schedule.epoch_hparams`."""
    return tuple(getattr(method_class(name), "epoch_hparams", None) or ())


def reference_epochs(name: str) -> int:
    """The schedule length method `name`'s epoch-counting defaults were set for
    (`reference_epochs`; the reference recipe's 240 unless the method says otherwise)."""
    return int(getattr(method_class(name), "reference_epochs", None) or REFERENCE_EPOCHS)


def batch_statistics(method: nn.Module | type[nn.Module]) -> bool:
    """True for a method whose loss couples the rows of a batch (`batch_statistics = True`:
    DIST's intra-class correlation, MLKD's medians): under DDP it is computed on the global
    batch. Without it, a method's terms must be means over rows (the conformance suite checks)."""
    return bool(getattr(method, "batch_statistics", False))


def defaults_source(name: str) -> str:
    """Where method `name`'s default hyper-parameters come from, in one short phrase
    (`defaults_from`; "" where it declares none)."""
    return str(getattr(method_class(name), "defaults_from", "") or "")


def own_schedules(name: str) -> dict[str, dict[str, Any]]:
    """The method's official per-pair schedules (`own_schedules`: "teacher->student" → schedule keys),
    used by variants with `protocol: own`; {} if it declares none."""
    return dict(getattr(method_class(name), "own_schedules", None) or {})


def reference(name: str) -> tuple[str, str]:
    """The paper and the official code a method follows: its class attributes `paper` and `code`
    ("" where it declares none)."""
    cls = method_class(name)
    return str(getattr(cls, "paper", "") or ""), str(getattr(cls, "code", "") or "")


def describe(name: str) -> Description:
    """The one-line description and the hyper-parameters (types, defaults) of method `name`."""
    cls = method_class(name)
    canonical = _registry.canonical(name)
    return describe_class(canonical, cls, _registry.source(canonical))
