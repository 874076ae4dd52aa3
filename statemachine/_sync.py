"""Running the async engine from synchronous code, inside or outside a running event loop.

Outside a loop, each thread keeps one private event loop (an `asyncio.Runner`) and reuses it.
Inside a running loop (a notebook, an async web handler calling the sync API), the work runs
on one shared background loop thread and the caller blocks until it is done: that works, but
it blocks the caller's loop meanwhile, so async code should call `ainvoke`/`astream` instead.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_local = threading.local()
_portal_lock = threading.Lock()
_portal_loop: asyncio.AbstractEventLoop | None = None


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the awaitable made by `make()` to completion and return its result."""
    return _runner_for_caller()(make)


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drive an async iterator from sync code; closing the iterator closes it too."""
    run = _runner_for_caller()
    iterator = make()
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


def _runner_for_caller() -> Callable[[Callable[[], Awaitable[T]]], T]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_thread_loop
    return _run_on_portal


def _run_on_thread_loop(make: Callable[[], Awaitable[T]]) -> T:
    runner = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = asyncio.Runner()
        if threading.current_thread() is threading.main_thread():
            atexit.register(runner.close)
    return runner.run(_as_coroutine(make))


def _run_on_portal(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run_coroutine_threadsafe(_as_coroutine(make), _portal()).result()


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def _portal() -> asyncio.AbstractEventLoop:
    global _portal_loop
    with _portal_lock:
        if _portal_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="statemachine-sync",
                             daemon=True).start()
            _portal_loop = loop
        return _portal_loop
