"""Lock files: claims, takeover judged on the local monotonic clock, refresh that can't clobber."""

import json
import os
import socket
import time

from kdbench.runs import locks
from kdbench.runs.locks import LockState, LockWatch, Owner


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def foreign_lock(path, *, beat=0, heartbeat=None, host="other-host", token="t-foreign"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 1, "token": token, "beat": beat,
                                "heartbeat": time.time() if heartbeat is None else heartbeat}))


def test_a_free_lock_is_claimed_and_released(tmp_path):
    path, me = tmp_path / "run.lock", Owner.me()
    assert locks.try_claim(path, me, LockWatch())
    assert locks.holds(path, me) and json.loads(path.read_text())["beat"] == 0
    assert not locks.try_claim(path, Owner.me(), LockWatch())  # held by a live process of this host
    locks.release(path, me)
    assert not path.exists()


def test_a_lock_of_this_host_whose_process_is_gone_is_taken_over_at_once(tmp_path):
    path = tmp_path / "run.lock"
    foreign_lock(path, host=socket.gethostname())
    content = json.loads(path.read_text())
    content["pid"] = 2**22 + 12345  # no such process
    path.write_text(json.dumps(content))
    assert locks.try_claim(path, Owner.me(), LockWatch(stale_after=3600))


def _stale_after_unchanged(tmp_path, heartbeat_offset: float) -> None:
    path, clock = tmp_path / "run.lock", Clock()
    foreign_lock(path, heartbeat=time.time() + heartbeat_offset)
    watch = LockWatch(stale_after=600, clock=clock)
    assert watch.observe(path).state == LockState.LIVE  # first seen now: fresh, whatever its clock says
    assert not locks.try_claim(path, Owner.me(), watch)
    clock.now += 599
    assert watch.observe(path).state == LockState.LIVE
    clock.now += 2
    view = watch.observe(path)
    assert view.state == LockState.STALE and view.unchanged_for == 601 and view.owner == "other-host:1"
    me = Owner.me()
    assert locks.try_claim(path, me, watch) and locks.holds(path, me)


def test_a_foreign_lock_goes_stale_after_staying_unchanged_whatever_its_clock_says(tmp_path):
    for offset in (-3600.0, 0.0, 3600.0):  # the other host's clock an hour behind, in step, an hour ahead
        _stale_after_unchanged(tmp_path / str(offset), offset)


def test_a_foreign_lock_whose_heartbeat_moves_never_goes_stale(tmp_path):
    for offset in (-3600.0, 3600.0):
        path, clock = tmp_path / f"{offset}.lock", Clock()
        watch = LockWatch(stale_after=600, clock=clock)
        for beat in range(10):
            foreign_lock(path, beat=beat, heartbeat=time.time() + offset)
            assert watch.observe(path).state == LockState.LIVE
            clock.now += 300
        assert not locks.try_claim(path, Owner.me(), watch)


def test_an_empty_or_unreadable_lock_counts_as_a_heartbeat_that_never_changes(tmp_path):
    for content in (b"", b"{not json", b"\xff\xfe"):
        path, clock = tmp_path / f"{len(content)}.lock", Clock()
        path.write_bytes(content)
        watch = LockWatch(stale_after=600, clock=clock)
        view = watch.observe(path)
        assert view.state == LockState.LIVE and view.content is None and view.owner == "unreadable"
        clock.now += 600
        assert watch.observe(path).state == LockState.STALE
        assert locks.try_claim(path, Owner.me(), watch)


def test_refresh_renews_in_place_and_counts_beats(tmp_path):
    path, me = tmp_path / "run.lock", Owner.me()
    locks.try_claim(path, me, LockWatch())
    inode = os.stat(path).st_ino
    assert locks.refresh(path, me) and locks.refresh(path, me)
    assert json.loads(path.read_text())["beat"] == 2 and os.stat(path).st_ino == inode


def test_refresh_cannot_overwrite_a_lock_taken_over_by_another_worker(tmp_path):
    path, stalled, clock = tmp_path / "run.lock", Owner.me(), Clock()
    assert locks.try_claim(path, stalled, LockWatch())
    content = json.loads(path.read_text())
    content["host"] = "stalled-host"  # as another host sees it
    path.write_text(json.dumps(content))
    stalled = Owner("stalled-host", stalled.pid, stalled.token)
    watch, newcomer = LockWatch(stale_after=10, clock=clock), Owner.me()
    watch.observe(path)
    clock.now += 11
    assert locks.try_claim(path, newcomer, watch)
    assert not locks.refresh(path, stalled)  # the stalled worker wakes up: the lock is no longer its own
    assert locks.holds(path, newcomer) and not locks.holds(path, stalled)


def test_a_refresh_between_judgement_and_takeover_keeps_the_lock(tmp_path):
    path, clock = tmp_path / "run.lock", Clock()
    foreign_lock(path, beat=3)
    watch = LockWatch(stale_after=10, clock=clock)
    seen = watch.observe(path).raw
    clock.now += 11
    foreign_lock(path, beat=4)  # its owner refreshes after we judged it stale
    assert not locks._remove_stale(path, seen)
    assert json.loads(path.read_text())["beat"] == 4 and not list(tmp_path.glob("*.stale.*"))
