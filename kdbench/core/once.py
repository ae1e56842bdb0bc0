"""Warnings a process gives at most once: news that is the same for every run or member
(a missing package, a compiler that is unavailable) is said once, not once per run.

Imports nothing, so that torch-free modules (`tracking`) can use it.
"""

from __future__ import annotations

import warnings

_warned: set[str] = set()


def warn_once(message: str, category: type[Warning] = RuntimeWarning, stacklevel: int = 2) -> None:
    """`warnings.warn(message, category)`, at most once per process for the same message.

    `stacklevel` counts as `warnings.warn`'s does, from the caller of `warn_once`.
    """
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, category, stacklevel=stacklevel + 1)
