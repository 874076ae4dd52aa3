"""The worker threads sync nodes run on when they run side by side (a step of parallel tasks,
a node with a timeout, one whose chunks are streamed live, a compensation).

`asyncio.to_thread` costs ~40 µs a call here, mostly not the thread: a `concurrent.futures`
future chained to an asyncio one, and one wake-up of the event loop per finished call. A
50-wide fan-out of small sync nodes spent 2 ms a step on that alone. Here each call goes
straight to a worker and its result comes back in a batch: the first call to finish wakes the
loop, and every call finishing before the loop runs goes back with it.

Each event loop has workers of its own, as it has its own default executor: up to
`MAX_WORKERS` threads (`min(32, cpus + 4)`, the default executor's size). So a loop whose
workers are all busy (with nodes abandoned by their timeouts, say) holds up only its own
runs, and a node that runs a graph on a loop of its own (`invoke` from inside a node, or from
a thread the node starts) never waits for the workers of the loop that runs it. A loop's
workers end once the loop is gone and they are idle.

Each call runs in a copy of the caller's context, as `to_thread`'s do. A call whose caller
stopped waiting before it started (a timeout, a cancelled run) is never started; one already
running runs to its end, and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)


class _Batch(list[Any]):
    """Finished calls on their way back to one loop (weakly referable)."""

    __slots__ = ("__weakref__",)


class _LoopWorkers:
    """One loop's worker threads, and the batch of its finished calls not yet handed back.
    The batch is held by the callback that hands it back, not here: a loop dropped before
    it runs that callback drops the batch with it."""

    def __init__(self, max_workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers, thread_name_prefix="statemachine-node")
        self._lock = threading.Lock()
        self._open: weakref.ref[_Batch] | None = None

    def run(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
            context: contextvars.Context, fn: Callable[..., Any], args: tuple[Any, ...]
            ) -> None:
        """On a worker: `fn(*args)`, its outcome handed back to `loop` with those of the
        calls finishing before the loop runs (one wake-up for all). Once handed over, only
        the batch holds the outcome: a caller that drops it frees it, even while this
        worker is still on its way out."""
        if future.cancelled():  # given up before it started: never run
            return
        entry: list[Any] = [future, True, None]
        try:
            entry[2] = context.run(fn, *args)
        except BaseException as exc:  # handed to the caller, as a future would
            entry[1:] = [False, exc]
        with self._lock:
            batch = self._open() if self._open is not None else None
            wake = batch is None
            if batch is None:
                batch = _Batch()
                self._open = weakref.ref(batch)
            batch.append(entry)
        del entry
        if wake:
            try:
                loop.call_soon_threadsafe(self._hand_back, batch)
            except RuntimeError:  # the loop closed: nobody waits for these any more
                with self._lock:
                    self._open = None
                batch.clear()

    def _hand_back(self, batch: _Batch) -> None:
        with self._lock:
            if self._open is not None and self._open() is batch:
                self._open = None
        for future, ok, value in batch:
            if future.cancelled():  # its caller stopped waiting
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        batch.clear()


class ThreadPool:
    """Sync calls on worker threads, awaited on an event loop (`run`): each loop's calls on
    workers of its own, at most `max_workers` of them."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWorkers] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` on a worker thread of the running loop, in a copy of the current
        context; the future is the loop's."""
        loop = asyncio.get_running_loop()
        workers = self._loops.get(loop)
        if workers is None:
            with self._lock:
                workers = self._loops.get(loop)
                if workers is None:
                    workers = self._loops[loop] = _LoopWorkers(self.max_workers)
        future: asyncio.Future[T] = loop.create_future()
        workers.executor.submit(workers.run, loop, future, contextvars.copy_context(), fn,
                                args)
        return future

    def forget(self) -> None:
        """Drop every loop's workers (a forked child has none of its parent's threads)."""
        self._loops = weakref.WeakKeyDictionary()


_pool = ThreadPool()
os.register_at_fork(after_in_child=_pool.forget)


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` on a worker thread of the running loop (see the module)."""
    return _pool.run(fn, *args)
