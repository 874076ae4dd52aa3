"""Running the async engine from synchronous code, inside or outside a running event loop.

Outside a loop, each thread keeps one private event loop (an `asyncio.Runner`) and reuses it;
each call runs in a copy of the caller's context, so context variables set around the call
(`use_clock`, tracing) are seen by the run.
Inside a running loop (a notebook, an async handler, or a sync node of another run calling
`invoke`), the work runs on a new event loop in a thread of its own while the caller waits:
that works at any depth of nesting, but it blocks the caller's loop meanwhile, so async code
should call `ainvoke`/`astream` instead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the awaitable made by `make()` to completion and return its result."""
    if not _loop_running():
        return _thread_runner().run(_boxed(make), context=contextvars.copy_context()).value
    with _LoopThread() as loop:
        return loop.run(make)


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drive an async iterator from sync code; closing the iterator closes it too.

    Each iterator has an event loop of its own, so it may be advanced from a different
    thread each time (a web server's pool hands every `next()` to whichever thread is free)
    while other iterators and calls run on those threads' loops."""
    if not _loop_running():
        loop = asyncio.new_event_loop()
        loop.set_default_executor(_SHARED_EXECUTOR)  # no pool of threads per stream
        try:
            yield from _drive(make, lambda step: contextvars.copy_context().run(
                loop.run_until_complete, _boxed(step)).value)
        finally:
            with contextlib.suppress(RuntimeError):  # a stream dropped at interpreter exit
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        return
    with _LoopThread() as loop_thread:
        yield from _drive(make, loop_thread.run)


class _KeptExecutor(ThreadPoolExecutor):
    """The worker threads of every stream's loop: one pool for all, never shut down by a
    loop that closes (its threads end with the process)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


_SHARED_EXECUTOR = _KeptExecutor(thread_name_prefix="statemachine-stream")


def _drive(make: Callable[[], AsyncIterator[T]],
           run: Callable[[Callable[[], Awaitable[Any]]], Any]) -> Iterator[T]:
    iterator = run(_async_value(make))
    try:
        while True:
            try:
                item = run(iterator.__anext__)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            run(aclose)


def _async_value(make: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def value() -> T:  # made on the loop that will drive it
        return make()
    return value


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _thread_runner() -> asyncio.Runner:
    runner = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = asyncio.Runner()
        if threading.current_thread() is threading.main_thread():
            atexit.register(runner.close)
    return runner


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


class _Box:
    """A result with a one-word repr. In the main thread asyncio.Runner.run formats its task,
    result included, while restoring the SIGINT handler; boxing keeps that from printing a
    whole state on every call (half the time of a get_state)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<result>"


async def _boxed(make: Callable[[], Awaitable[T]]) -> _Box:
    return _Box(await make())


class _LoopThread:
    """An event loop on a thread of its own, for the lifetime of one sync call."""

    def __enter__(self) -> _LoopThread:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="statemachine-sync", daemon=True)
        self._thread.start()
        return self

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        # scheduled from inside the caller's context, so the task sees the caller's
        # context variables (use_clock, ...) as a direct await would
        future: Future[T] = contextvars.copy_context().run(
            asyncio.run_coroutine_threadsafe, _as_coroutine(make), self._loop)
        return future.result()

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            await self._loop.shutdown_asyncgens()
            await self._loop.shutdown_default_executor()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
