"""The worker threads sync nodes run on when they run side by side (a step of parallel tasks,
a node with a timeout, one whose chunks are streamed live, a compensation).

`asyncio.to_thread` costs ~40 µs a call here, mostly not the thread: a `concurrent.futures`
future chained to an asyncio one, and one wake-up of the event loop per finished call. A
50-wide fan-out of small sync nodes spent 2 ms a step on that alone. This pool hands each
call straight to a worker and gives results back in batches: the first call to finish wakes
the loop, and every call finishing before the loop runs goes back with it (0.2 ms for the
same 50).

The pool is one per process, grown as calls wait, up to `MAX_WORKERS` threads: what asyncio's
default executor allows (`min(32, cpus + 4)`), so as many blocking nodes overlap as before. A
call made from one of its own threads (a sync node that calls `invoke` on a graph with
parallel sync nodes) gets a new thread when none is free, past that size: with every worker
waiting for such calls, none would ever run.
Each call runs in a copy of the caller's context, as `to_thread`'s do. A call whose caller
stopped waiting (a timeout, a cancelled run) runs to its end; its result is dropped. Workers
are daemon threads: a sync node still running when the interpreter exits (one abandoned by
its timeout, say) is stopped with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context,
              Callable[..., Any], tuple[Any, ...]]
_Done = tuple["asyncio.Future[Any]", bool, Any]


class ThreadPool:
    """Sync calls on worker threads, awaited on an event loop (`run`)."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = 0
        self._waiting = 0
        """Workers waiting for a call, or started to take one."""
        self._queued = 0
        """Calls handed in and not yet taken by a worker."""
        self._done: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        """Finished calls not yet handed to their loop, by loop."""

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` on a worker thread, in a copy of the current context; the future is
        the running loop's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queued += 1
            # a worker's own call (a node calling invoke) never waits for a worker: they
            # might all be waiting for it
            start = self._queued > self._waiting and (
                self._workers < self.max_workers or getattr(_worker, "is_one", False))
            if start:
                self._workers += 1
                self._waiting += 1  # counted from now: it will take a call at once
        self._calls.put((loop, future, contextvars.copy_context(), fn, args))
        if start:
            threading.Thread(target=self._work, name="statemachine-node", daemon=True).start()
        return future

    def _work(self) -> None:
        _worker.is_one = True
        calls, lock = self._calls, self._lock
        while True:
            loop, future, context, fn, args = calls.get()
            with lock:
                self._waiting -= 1
                self._queued -= 1
            try:
                done: _Done = (future, True, context.run(fn, *args))
            except BaseException as exc:  # handed to the caller, as a future would
                done = (future, False, exc)
            del fn, args, context
            with lock:
                batch = self._done.setdefault(loop, [])
                batch.append(done)
                wake = len(batch) == 1  # the first since the loop last took them
                self._waiting += 1
            del done
            if wake:
                try:
                    loop.call_soon_threadsafe(self._hand_back, loop)
                except RuntimeError:  # the loop closed: nobody waits for these any more
                    with lock:
                        self._done.pop(loop, None)

    def _hand_back(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: the results of its calls finished since the last hand-back."""
        with self._lock:
            batch = self._done.pop(loop, [])
        for future, ok, value in batch:
            if future.cancelled():  # its caller stopped waiting
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_worker = threading.local()
"""`is_one` on the pool's own threads."""

_pool = ThreadPool()


def _after_fork() -> None:
    """A forked child has none of its parent's threads: it starts a pool of its own."""
    global _pool
    _pool = ThreadPool()


os.register_at_fork(after_in_child=_after_fork)


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` on the process's pool of worker threads (see the module)."""
    return _pool.run(fn, *args)
