"""Making strong views ahead of the training loop: in worker processes, threads, or inline.

A `Renderer` holds the zero-padded training images on the host and turns `Job`s (which
images, and how to seed each) into uint8 batches `(B, C, H, W)`, computed ahead with at
most `depth` batches pending (a bounded queue), in order.

Why processes: the transform is Python code calling PIL and numpy per image, and a thread
running it holds the GIL. A training loop that launches many small device ops gives up
the GIL at each one, and a busy thread then makes it wait for the GIL back. Measured on the
2-core CPU (batches of 64, best of 3 epochs of 8,192 images, other sessions' load around;
a loop of 400 small torch ops stood in for a device step's launches):

| 3×32×32 (1×32×32)  | inline        | 1 thread      | 2 threads    | 1 process     | 2 processes   |
|--------------------|---------------|---------------|--------------|---------------|---------------|
| strong images/s    | 11.0k (17.4k) | 9.2k (16.8k)  | 5.8k (10.3k) | 11.5k (16.9k) | 17.8k (26.8k) |
| step beside it, ms | 1.3 (1.3)     | 1.3 (4.9)     | 8.5 (4.7)    | 1.3 (1.3)     | 1.4 (1.4)     |

Threads add no throughput and can slow the step several-fold; processes scale with the
cores and leave the step alone. (The weak on-device loader made 167k and 315k images/s on
the same CPU.) Worker processes are started with "spawn" (safe beside CUDA and threads),
once per renderer, and each gets a copy of the images.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import weakref
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np

from kdbench.data.strong import render
from kdbench.errors import KdbenchError

BROKEN_POOL = (
    "the strong view's worker processes stopped: a script that trains with them must guard its entry point "
    "with `if __name__ == \"__main__\":` (multiprocessing's spawn imports the script again), or set the "
    "loader's strong_processes = False to use threads"
)


@dataclass(frozen=True)
class Job:
    """One batch: rows of the store, their dataset indices, and each image's seed as `seed_of(index)`.

    `seed_of` must pickle (a module-level function, or a `functools.partial` of one).
    """

    rows: np.ndarray
    indices: np.ndarray
    seed_of: Callable[[int], int]


@dataclass(frozen=True)
class Settings:
    """What every job of a renderer shares: the crop size, the padding and whether to flip."""

    size: tuple[int, int]
    pad: int
    flip: bool


def run_job(store: np.ndarray, settings: Settings, job: Job) -> np.ndarray:
    """The strong views of one job's images, uint8 `(B, C, H, W)`."""
    channels = 1 if store.ndim == 3 else store.shape[3]
    out = np.empty((len(job.rows), channels, *settings.size), dtype=np.uint8)
    seeds = [job.seed_of(int(i)) for i in job.indices]
    return render(store, job.rows, seeds, size=settings.size, pad=settings.pad, flip=settings.flip, out=out)


# A worker process's store and settings, set once by `_start_worker`.
_PROCESS_STATE: dict[str, object] = {}


def _start_worker(store: np.ndarray, settings: Settings) -> None:
    # Ctrl-C is the training loop's to handle (it may stop cleanly after the step); the
    # workers end with it, and on their own when it is killed (they would outlive it otherwise).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    _PROCESS_STATE.update(store=store, settings=settings)


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _run_in_worker(job: Job) -> np.ndarray:
    return run_job(_PROCESS_STATE["store"], _PROCESS_STATE["settings"], job)  # type: ignore[arg-type]


def _shutdown(pool: Executor | None) -> None:
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


class Renderer:
    """Strong views of a store's images, made `depth` batches ahead by `workers` processes or threads.

    `store` is `(N, Hp, Wp)` (grey) or `(N, Hp, Wp, 3)` uint8, zero-padded. With
    `workers == 0` each batch is made when asked for, in the caller's thread. `close()`
    (or garbage collection) stops the workers.
    """

    def __init__(self, store: np.ndarray, settings: Settings, *, workers: int, processes: bool) -> None:
        self.store, self.settings = store, settings
        self.workers, self.processes = int(workers), bool(processes)
        self.pool: Executor | None = None
        if self.workers > 0 and self.processes:
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(store, settings),
            )
        elif self.workers > 0:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="kdbench-strong")
        self._finalizer = weakref.finalize(self, _shutdown, self.pool)

    def submit(self, job: Job) -> Future:
        """Start one job on the workers; the future's result is its uint8 batch."""
        if self.pool is None:
            raise RuntimeError("Renderer.submit needs workers")
        if self.processes:
            return self.pool.submit(_run_in_worker, job)
        return self.pool.submit(run_job, self.store, self.settings, job)

    def batches(self, jobs: Iterable[Job], depth: int) -> Iterator[np.ndarray]:
        """The jobs' batches in order, at most `depth` pending; closing early cancels the rest.

        The first `depth` jobs start at once, before the first batch is asked for.
        """
        if self.pool is None:
            return (run_job(self.store, self.settings, job) for job in jobs)
        source = iter(jobs)
        pending: deque[Future] = deque(self.submit(job) for job in islice(source, max(1, depth)))
        return self._collect(source, pending)

    def _collect(self, source: Iterator[Job], pending: deque[Future]) -> Iterator[np.ndarray]:
        try:
            while pending:
                try:
                    result = pending.popleft().result()
                except BrokenProcessPool:
                    raise KdbenchError(BROKEN_POOL) from None
                for job in islice(source, 1):
                    pending.append(self.submit(job))
                yield result
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (waiting for the jobs already running)."""
        self._finalizer()
