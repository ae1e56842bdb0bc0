"""Claims on runs through lock files, safe across processes and hosts sharing a folder.

A claim is a file created with O_CREAT|O_EXCL (atomic, also on NFS) holding the owner's
host, pid, a random token and a heartbeat time. A background thread refreshes the
heartbeat. A lock whose owner is dead (same host, pid gone) or whose heartbeat is older
than `stale_after` seconds is taken over; a live one is never duplicated.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench import atomic

#: Seconds between heartbeats, and after which a silent lock counts as abandoned.
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


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None if there is no (readable) lock."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(content: dict[str, Any] | None, path: Path, stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """True if the lock's owner is known dead or its heartbeat is too old."""
    if content is None:
        # Half-written or unreadable: judge by the file's age.
        try:
            return time.time() - path.stat().st_mtime > stale_after
        except FileNotFoundError:
            return True
    if content.get("host") == socket.gethostname() and not _pid_alive(int(content.get("pid", -1))):
        return True
    return time.time() - float(content.get("heartbeat", 0)) > stale_after


def lock_state(path: Path, stale_after: float = STALE_AFTER_SECONDS) -> str:
    """`free`, `live` or `stale`."""
    if not path.exists():
        return "free"
    return "stale" if is_stale(read_lock(path), path, stale_after) else "live"


def _content(owner: Owner) -> dict[str, Any]:
    return {"host": owner.host, "pid": owner.pid, "token": owner.token, "heartbeat": time.time()}


def try_claim(path: Path, owner: Owner, stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """Create the lock for `owner`; take over a stale one. False if someone live holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            content = read_lock(path)
            if not is_stale(content, path, stale_after) or not _remove_stale(path, content):
                return False
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_content(owner), f)
            f.flush()
            os.fsync(f.fileno())
        return True
    return False


def _remove_stale(path: Path, seen: dict[str, Any] | None) -> bool:
    # Move the lock aside, then check that what moved is the stale lock we judged; if a new
    # owner slipped in between, put its lock back.
    tomb = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return True
    moved = read_lock(tomb)
    if seen is not None and moved is not None and moved.get("token") != seen.get("token"):
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
            path.unlink()
        except FileNotFoundError:
            pass


def refresh(path: Path, owner: Owner) -> bool:
    """Renew the heartbeat; False if the lock was lost to someone else."""
    if not holds(path, owner):
        return False
    atomic.write_json(path, _content(owner))
    return True


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
                if not refresh(path, self.owner):
                    with self._lock:
                        self.lost.add(path)
                        self.paths.discard(path)

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
