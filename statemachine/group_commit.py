"""Group commit: what several tasks hand over at nearly the same moment goes to storage in one
commit, not one commit each.

The first task to add an item commits; tasks adding items while that commit is under way wait,
and their items go together in the next commit, which the first task makes too, until nothing
is left. Every task returns once its own item is committed, or raises what refused its own
item, so nothing is reported stored before it is: a commit that waits for the disk
(PostgreSQL's fsync, ~0.2–0.3 ms) is paid once for all the tasks of a fan-out that finish
together instead of once per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

Outcomes = Sequence[BaseException | None]
"""Per item committed: None (stored) or what refused it."""


class GroupCommit(Generic[T]):
    """Items committed in groups by `commit(items)`, which returns each item's outcome (see
    the module), or raises for them all. One per run of a thread: its items all belong to
    the step under way."""

    def __init__(self, commit: Callable[[Sequence[T]], Awaitable[Outcomes]]) -> None:
        self._commit = commit
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        """The items for the next commit, each with what its task awaits."""
        self._committing = False

    async def add(self, item: T) -> None:
        """Commit `item`, with any others added meanwhile; return when it is committed."""
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, mine))
        if self._committing:  # the task committing now commits this one next
            try:
                await asyncio.shield(mine)
            except asyncio.CancelledError:  # its outcome comes later: read it then
                mine.add_done_callback(_read)
                raise
            return
        self._committing = True
        group: list[tuple[T, asyncio.Future[None]]] = []
        try:
            # tasks finishing in this moment (their wake-ups queued) join this first commit;
            # a sync checkpointer's commit blocks the loop, so none could join during it
            await asyncio.sleep(0)
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    outcomes: Outcomes = await self._commit([i for i, _ in group])
                except Exception as exc:
                    outcomes = [exc] * len(group)
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
                group = []
        except BaseException:  # cancelled: the run ends, and nobody waits for the rest
            for _, future in [*group, *self._waiting]:
                future.cancel()
            self._waiting = []
            if mine.done() and not mine.cancelled():
                mine.exception()  # this task's own outcome: read, so it is not reported
            raise
        finally:
            self._committing = False
        await mine


def _read(future: asyncio.Future[None]) -> None:
    """Read an outcome nobody awaits any more (asyncio reports an unread exception)."""
    if not future.cancelled():
        future.exception()
