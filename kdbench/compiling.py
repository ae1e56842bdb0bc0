"""`options.compile`: torch.compile on first use, with an eager fallback where it can't compile."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A RuntimeWarning, at most once per process for the same message."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class Compiled:
    """`fn`, compiled by `torch.compile` the first time it is called when `enabled`.

    Support for compilation varies by platform (a compiler, a backend); where it fails,
    `fn` runs eagerly, which is always correct, and one warning says why.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool, what: str):
        self.fn, self.pending, self.what = fn, enabled, what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.pending:
            self.pending = False
            try:
                compiled = torch.compile(self.fn)
                out = compiled(*args, **kwargs)
                self.fn = compiled
                return out
            except Exception as exc:  # the trace and the compiler run before anything executes
                warn_once(f"torch.compile is unavailable here for the {self.what} ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); running it eagerly")
        return self.fn(*args, **kwargs)
