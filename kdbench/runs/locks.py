"""Claims on runs through lock files, safe across processes and hosts sharing a folder.

A claim is a file holding the owner's host, pid, a random token, a beat counter and the
owner's wall-clock time, written whole under a name of the owner's own and then linked to the
lock's name (atomic, also on NFS; a write that fails leaves no lock). A background
thread rewrites it in place every `HEARTBEAT_SECONDS`, incrementing the beat.

Whether a lock is abandoned is judged without comparing clocks across hosts:
- a lock of this host whose process is gone is taken over at once;
- any other lock is stale once its content has stayed unchanged for `STALE_AFTER_SECONDS`
  as measured by the observer's own monotonic clock (`LockWatch`). An empty or unreadable
  lock file counts as a lock whose heartbeat never changes.

A live lock is never duplicated. Refreshing rewrites the lock through a descriptor opened
on it and checked to hold the owner's token, so a worker stalled past the stale period can
never overwrite the lock of the worker that took its run over: a takeover renames the old
file away first, and the stalled worker's write then lands in the renamed file.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

#: Seconds between heartbeats, and after which an unchanged lock counts as abandoned.
HEARTBEAT_SECONDS = float(os.environ.get("KDBENCH_HEARTBEAT_S", 30))
STALE_AFTER_SECONDS = float(os.environ.get("KDBENCH_LOCK_STALE_S", 600))


@dataclass(frozen=True)
class Owner:
    """Who holds a lock."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> "Owner":
        """This process, with a fresh token."""
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)


class LockState(str, Enum):
    """A lock file as an observer sees it."""

    FREE = "free"
    LIVE = "live"
    STALE = "stale"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LockView:
    """One observation of a lock: its state, its content (None if unreadable) and how long
    this observer has seen it unchanged (seconds on its monotonic clock)."""

    state: LockState
    content: dict[str, Any] | None
    raw: bytes
    unchanged_for: float

    @property
    def owner(self) -> str:
        """"host:pid" of the holder, or "unreadable"."""
        if self.content is None:
            return "unreadable"
        return f"{self.content.get('host', '?')}:{self.content.get('pid', '?')}"

    @property
    def foreign(self) -> bool:
        """Held from another host (or unreadable): only waiting tells whether it is abandoned."""
        return self.content is None or self.content.get("host") != socket.gethostname()


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        content = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def read_raw(path: Path) -> bytes | None:
    """The lock file's bytes, or None if there is no lock."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None if there is no readable lock."""
    raw = read_raw(path)
    return None if raw is None else _parse(raw)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class LockWatch:
    """Judges locks by how long their content stays unchanged on this process's own clock.

    Keep one per worker: a lock first seen now counts as fresh, so a worker waits at least
    `stale_after` seconds, watching, before it takes over another host's lock.
    """

    def __init__(self, stale_after: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.stale_after = STALE_AFTER_SECONDS if stale_after is None else stale_after
        self.clock = clock
        self._seen: dict[Path, tuple[bytes, float]] = {}

    def observe(self, path: Path) -> LockView:
        """Read the lock at `path` now and judge it."""
        path = Path(path)
        raw = read_raw(path)
        now = self.clock()
        if raw is None:
            self._seen.pop(path, None)
            return LockView(LockState.FREE, None, b"", 0.0)
        previous = self._seen.get(path)
        if previous is None or previous[0] != raw:
            self._seen[path] = (raw, now)
            since = now
        else:
            since = previous[1]
        unchanged = now - since
        content = _parse(raw)
        same_host = content is not None and content.get("host") == socket.gethostname()
        if same_host and not _pid_alive(int(content.get("pid", -1))):
            state = LockState.STALE
        else:
            state = LockState.STALE if unchanged >= self.stale_after else LockState.LIVE
        return LockView(state, content, raw, unchanged)

    def forget(self, path: Path) -> None:
        """Drop what was observed of `path`."""
        self._seen.pop(Path(path), None)


def _content(owner: Owner, beat: int) -> bytes:
    return json.dumps({"host": owner.host, "pid": owner.pid, "token": owner.token, "beat": beat,
                       "heartbeat": time.time()}).encode("utf-8")


def try_claim(path: Path, owner: Owner, watch: LockWatch) -> bool:
    """Create the lock for `owner`, or take over a stale one. False if someone live holds it.

    The claim is written whole to a file of this owner's own first, then linked to the lock's
    name, which fails if a lock exists (atomic, also on NFS): a write that fails (a full
    disk) leaves no lock behind, so a re-run claims at once instead of waiting out the stale
    period. The write error itself propagates (the worker stops on it in one line).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = path.with_name(f".{path.name}.{owner.token}.{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, _content(owner, 0))
            os.fsync(fd)
        finally:
            os.close(fd)
        for _ in range(2):
            try:
                os.link(mine, path)
            except FileExistsError:
                view = watch.observe(path)
                if view.state != LockState.STALE or not _remove_stale(path, view.raw):
                    return False
                watch.forget(path)
                continue
            return True
        return False
    finally:
        try:
            os.unlink(mine)
        except FileNotFoundError:
            pass


def _remove_stale(path: Path, seen: bytes) -> bool:
    # Move the lock aside, then check that what moved is exactly the lock judged stale; if
    # its owner refreshed it meanwhile, or a new owner slipped in, put it back.
    tomb = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return True
    if read_raw(tomb) != seen:
        try:
            os.link(tomb, path)
        except FileExistsError:
            pass
        os.unlink(tomb)
        return False
    os.unlink(tomb)
    return True


def holds(path: Path, owner: Owner) -> bool:
    """True if `owner` still holds the lock at `path`."""
    content = read_lock(path)
    return content is not None and content.get("token") == owner.token


def release(path: Path, owner: Owner) -> None:
    """Remove the lock if `owner` holds it."""
    if holds(path, owner):
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


def refresh(path: Path, owner: Owner) -> bool:
    """Renew the heartbeat in place; False if the lock is no longer `owner`'s."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        content = _parse(raw)
        if content is None or content.get("token") != owner.token:
            return False
        # The descriptor names the file checked above: if the lock was taken over since, it
        # was renamed away first, and this write lands in the old file, not the new lock.
        data = _content(owner, int(content.get("beat", 0)) + 1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


class Heartbeat:
    """A daemon thread that refreshes a set of locks until stopped."""

    def __init__(self, owner: Owner, interval: float = HEARTBEAT_SECONDS):
        self.owner, self.interval = owner, interval
        self.paths: set[Path] = set()
        self.lost: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kdbench-heartbeat", daemon=True)
        self._thread.start()

    def add(self, path: Path) -> None:
        """Keep `path` alive."""
        with self._lock:
            self.paths.add(path)

    def remove(self, path: Path) -> None:
        """Stop refreshing `path`."""
        with self._lock:
            self.paths.discard(path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                paths = list(self.paths)
            for path in paths:
                try:
                    alive = refresh(path, self.owner)
                except OSError:  # a full disk or a read-only folder: try again next beat
                    continue
                if not alive:
                    with self._lock:
                        self.lost.add(path)
                        self.paths.discard(path)

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
