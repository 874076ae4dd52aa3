"""Group commit: what several tasks hand over at nearly the same moment goes to storage in one
commit, not one commit each.

The first task to add an item commits; tasks adding items while that commit is under way wait,
and their items go together in the next commit, which the first task makes too, until nothing
is left. Every task returns once its own item is committed (or raises what its commit raised),
so nothing is reported stored before it is: a commit that waits for the disk (PostgreSQL's
fsync, ~0.2–0.3 ms) is paid once for all the tasks of a fan-out that finish together instead
of once per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Items committed in groups by `commit(items)` (see the module). One per run of a thread:
    its items all belong to the step under way."""

    def __init__(self, commit: Callable[[Sequence[T]], Awaitable[None]]) -> None:
        self._commit = commit
        self._items: list[T] = []
        """Those waiting for the next commit."""
        self._next: asyncio.Future[None] | None = None
        """Done when the next commit is (None: no item waits)."""
        self._committing = False

    async def add(self, item: T) -> None:
        """Commit `item`, with any others added meanwhile; return when it is committed."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        mine = self._next
        self._items.append(item)
        if self._committing:  # the task committing now commits this one next
            await asyncio.shield(mine)
            return
        self._committing = True
        done: asyncio.Future[None] | None = None
        try:
            # tasks finishing in this moment (their wake-ups queued) join this first commit;
            # a sync checkpointer's commit blocks the loop, so none could join during it
            await asyncio.sleep(0)
            while self._next is not None:
                items, done = self._items, self._next
                self._items, self._next = [], None
                try:
                    await self._commit(items)
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)
        except BaseException:  # cancelled: the run ends, and nobody waits for the rest
            for future in (done, self._next):
                if future is not None and not future.done():
                    future.cancel()
            self._items, self._next = [], None
            raise
        finally:
            self._committing = False
        await mine
