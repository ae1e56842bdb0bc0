"""Ctrl-C and SIGTERM as a request: the trainer checkpoints mid-epoch and stops cleanly."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """Set by SIGINT/SIGTERM; the trainer checks it between steps and checkpoints mid-epoch."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (in the main thread only)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
