"""One rich console for the whole CLI: colours and live bars on a terminal, plain text in CI."""

from __future__ import annotations

import functools
import sys

from rich.console import Console


@functools.lru_cache(maxsize=None)
def console() -> Console:
    """The shared console. Off a terminal it is wide and plain, so logs stay readable."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=160, no_color=True, highlight=False, soft_wrap=False)


def is_interactive() -> bool:
    """True when stdout is a terminal: live progress bars instead of periodic lines."""
    return console().is_terminal
