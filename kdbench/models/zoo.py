"""The model registry: `@register("name")` on a factory, then `build(name, num_classes, in_channels)`.

A factory takes `num_classes` and `in_channels` keyword arguments and returns an
`nn.Module` whose forward returns logits only. Each family file registers its models
when `kdbench.models` is imported.
"""

from __future__ import annotations

import inspect
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdbench.errors import KdbenchError
from kdbench.core.registry import Registry

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and the zoo it belongs to (`cifar` or `imagenet`)."""

    factory: Factory
    zoo: str


_registry: Registry[ModelEntry] = Registry("model")


def register(name: str, aliases: tuple[str, ...] | list[str] = (), zoo: str = "cifar") -> Callable[[Factory], Factory]:
    """Decorator that registers a model factory under `name` (and `aliases`) in `zoo`."""

    def decorator(factory: Factory) -> Factory:
        source = inspect.getsourcefile(factory) or getattr(sys.modules.get(factory.__module__), "__file__", "?")
        _registry.add(name, ModelEntry(factory, zoo), source=str(source), aliases=tuple(aliases))
        return factory

    return decorator


def available(zoo: str | None = None) -> list[str]:
    """Registered model names (all zoos, or only `zoo`), sorted case-insensitively."""
    return [n for n in _registry.names() if zoo is None or _registry.get(n).zoo == zoo]


def canonical(name: str) -> str:
    """The registered name for `name` or one of its aliases; unknown names raise `KdbenchError`."""
    if not isinstance(name, str):
        raise KdbenchError(f"model name must be a string, got {name!r}")
    return _registry.canonical(name)


def zoo_of(name: str) -> str:
    """The zoo (`cifar` or `imagenet`) that model `name` belongs to."""
    return _registry.get(name).zoo


def build(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model `name` whose forward returns logits only.

    Initialisation draws from the global torch RNG, as the reference zoo does; callers
    that need reproducible weights seed it (or fork it) first.
    """
    entry = _registry.get(name)
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise KdbenchError(f"model '{name}': {label} must be a positive integer, got {value!r}")
    return entry.factory(num_classes=int(num_classes), in_channels=int(in_channels))
