"""Calling user code: a node, router or compensation, sync or async, inline or in a thread."""

from __future__ import annotations

import inspect
from typing import Any

from .spec import CallableInfo
from .thread_pool import in_thread


async def call_user_function(info: CallableInfo, args: tuple[Any, ...], inline: bool) -> Any:
    """Call a node, router or compensation: awaited if async, else inline or in a thread."""
    if info.is_async:
        return await info.fn(*args)
    result = _call_sync(info.fn, args) if inline else \
        await in_thread(_call_sync, info.fn, args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _call_sync(fn: Any, args: tuple[Any, ...]) -> Any:
    """Call a sync function; a StopIteration it raises becomes a RuntimeError from it.

    A StopIteration cannot cross a coroutine (PEP 479) nor be set on a future (it would hang
    the run), so it is turned into the RuntimeError Python itself would make of it.
    """
    try:
        return fn(*args)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)!s} raised StopIteration") from exc
