"""`options.compile`: torch.compile on first use, with an eager fallback where it can't compile."""

from __future__ import annotations

from typing import Any, Callable

import torch

from kdbench.core.once import warn_once

_compiled_instances = 0
# Graphs one compiled callable may need: train and eval mode, a first and a dynamic batch shape.
_GRAPHS_PER_INSTANCE = 4


class Compiled:
    """`fn`, compiled by `torch.compile` the first time it is called when `enabled`.

    Support for compilation varies by platform (a compiler, a backend); where it fails,
    `fn` runs eagerly, which is always correct, and one warning says why.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool, what: str):
        self.fn, self.pending, self.what = fn, enabled, what
        if enabled:
            _make_room_for_one_more()

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


def _make_room_for_one_more() -> None:
    """Raise dynamo's recompile limit so that every compiled callable of the process keeps its graphs.

    Dynamo caches compiled graphs per code object, guarded on the objects they use: the
    students' optimizers share `SGD.step` (and methods of one class their `forward`), so
    each member adds entries under one code object. Past the limit (8 by default) dynamo
    silently runs the rest eagerly, so a cohort of more than a few members would lose
    compilation for some of them.
    """
    global _compiled_instances
    _compiled_instances += 1
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    needed = _GRAPHS_PER_INSTANCE * _compiled_instances
    if getattr(config, name) < needed:
        setattr(config, name, needed)
    if hasattr(config, "accumulated_recompile_limit") and config.accumulated_recompile_limit < 2 * needed:
        config.accumulated_recompile_limit = 2 * needed
