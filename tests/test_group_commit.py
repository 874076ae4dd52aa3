"""Group commit (statemachine/group_commit.py): tasks adding items at nearly the same moment
share a commit, and none returns before its own item is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from conftest import side_by_side
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.group_commit import GroupCommit


class Refused(Exception):
    pass


arrivals = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["ok", "refused", "sinks"])),
                    min_size=1, max_size=12)
"""Per task: how many loop turns it waits before adding its item, and what its commit does
with it: stores it, refuses it alone, or fails the whole commit it is in."""


@given(tasks=arrivals, commit_turns=st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_each_task_returns_once_its_item_is_committed_or_raises_what_refused_it(
        tasks, commit_turns):
    committed: list[list[int]] = []
    returned: dict[int, str] = {}

    async def commit(items: Sequence[int]) -> list[BaseException | None]:
        for _ in range(commit_turns):  # a commit that yields, as an async driver's does
            await asyncio.sleep(0)
        if any(tasks[i][1] == "sinks" for i in items):
            raise Refused(f"sunk {sorted(items)}")
        committed.append([i for i in items if tasks[i][1] == "ok"])
        return [None if tasks[i][1] == "ok" else Refused(f"refused {i}") for i in items]

    async def task(group: GroupCommit[int], me: int) -> None:
        for _ in range(tasks[me][0]):
            await asyncio.sleep(0)
        try:
            await group.add(me)
        except Refused as exc:
            returned[me] = str(exc)
            return
        assert any(me in batch for batch in committed)  # stored before it returned
        returned[me] = "ok"

    async def main() -> None:
        group: GroupCommit[int] = GroupCommit(commit)
        await asyncio.gather(*(task(group, i) for i in range(len(tasks))))

    asyncio.run(main())
    assert sorted(returned) == list(range(len(tasks)))  # every task returned
    flat = [i for batch in committed for i in batch]
    assert len(flat) == len(set(flat))  # none committed twice
    for i, (_, fate) in enumerate(tasks):
        if returned[i] == "ok":
            assert fate == "ok" and i in flat
        elif returned[i].startswith("refused"):  # its own refusal, no one else's
            assert fate == "refused" and returned[i] == f"refused {i}" and i not in flat
        else:  # in a commit that failed whole, with a task that sinks it
            assert i not in flat
            assert any(tasks[j][1] == "sinks" for j in map(int, returned[i][6:-1].split(", ")))


def test_tasks_finishing_together_share_one_commit_even_when_commits_block():
    """A sync checkpointer's commit blocks the loop (no await inside): tasks whose wake-ups
    are queued when the first adds still join its commit."""
    commits: list[list[int]] = []

    async def blocking_commit(items: Sequence[int]) -> list[BaseException | None]:
        commits.append(list(items))
        return [None] * len(items)

    async def main() -> None:
        group: GroupCommit[int] = GroupCommit(blocking_commit)
        await asyncio.gather(*(group.add(i) for i in range(10)))
        await group.add(99)  # alone later: a commit of its own

    asyncio.run(main())
    assert commits == [list(range(10)), [99]]


def test_a_cancelled_committer_wakes_the_tasks_waiting_on_it():
    commits: list[list[int]] = []

    async def main() -> None:
        entered = asyncio.Event()

        async def commit(items: Sequence[int]) -> list[BaseException | None]:
            if 1 in items:  # hangs until cancelled
                entered.set()
                await asyncio.sleep(10)
            commits.append(list(items))
            return [None] * len(items)

        group: GroupCommit[int] = GroupCommit(commit)
        first = asyncio.create_task(group.add(1))
        await entered.wait()
        second = asyncio.create_task(group.add(2))  # waits for the commit after this one
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(second, 1)  # woken, not left waiting
        await group.add(3)  # the group commits again
        assert commits == [[3]]

    asyncio.run(main())


def test_a_refusal_nobody_waits_for_any_more_is_not_reported_as_unread():
    """The committing task's own item is refused; it goes on to commit the next group and is
    cancelled there (a timeout around the run): its refusal is read, not left for asyncio to
    log as an exception never retrieved."""
    import gc

    reported: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))

        async def commit(items: Sequence[int]) -> list[BaseException | None]:
            await asyncio.sleep(0.01)
            if 1 in items:
                raise Refused("the first group")
            await asyncio.sleep(10)  # the second group hangs
            return [None] * len(items)

        group: GroupCommit[int] = GroupCommit(commit)

        async def second() -> None:
            await asyncio.sleep(0)
            await group.add(2)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.gather(group.add(1), second()), 0.1)
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(main())
    gc.collect()
    assert reported == []


def test_a_checkpointer_without_put_pendings_gets_its_writes_one_by_one_each_kept_once():
    """A checkpointer of one's own implementing only `put_pending` (the interface's default
    `put_pendings` commits one by one): tasks finishing together are stored one by one, each
    marked stored as it lands, so one refused write stores none of the others twice."""
    import operator
    import threading
    import time
    from typing import Annotated

    from pydantic import BaseModel

    from checkpoints import MemoryCheckpointer
    from checkpoints.base import Checkpointer

    class OwnCheckpointer(MemoryCheckpointer):
        put_pendings = Checkpointer.put_pendings  # as one that never heard of it
        refused = False

        async def put_pending(self, thread_id, owner, write, *, memory=()):
            if write.node == "c" and not self.refused:
                self.refused = True
                raise ConnectionError("a passing failure")
            await super().put_pending(thread_id, owner, write, memory=memory)

    class S(BaseModel):
        log: Annotated[list[str], operator.add] = []

    barrier = threading.Barrier(3)
    runs: list[str] = []

    def quick(name: str):
        def node(state: S) -> dict:
            runs.append(name)
            barrier.wait(5)
            return {"log": [name]}
        return node

    def slow(state: S) -> dict:
        runs.append("slow")
        time.sleep(0.3)
        return {"log": ["slow"]}

    saver = OwnCheckpointer()
    app = side_by_side(S, {**{n: quick(n) for n in "abc"}, "slow": slow}).compile(
        checkpointer=saver)
    with pytest.raises(ConnectionError, match="a passing failure"):
        asyncio.run(app.ainvoke({}, thread_id="t"))
    stored = [w.node for writes in saver._pending.values() for w in writes]
    assert sorted(stored) == ["a", "b", "c", "slow"]  # each once
    assert sorted(app.resume("t").log) == ["a", "b", "c", "slow"]
    assert sorted(runs) == ["a", "b", "c", "slow"]  # nothing stored ran again
