"""Group commit (statemachine/group_commit.py): tasks adding items at nearly the same moment
share a commit, and none returns before its own item is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.group_commit import GroupCommit


class Refused(Exception):
    pass


arrivals = st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=12)
"""Per task: how many loop turns it waits before adding its item, and whether the commit that
carries the item is refused."""


@given(tasks=arrivals, commit_turns=st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_every_item_is_committed_once_before_its_task_returns(tasks, commit_turns):
    committed: list[list[int]] = []
    returned: dict[int, str] = {}

    async def commit(items: Sequence[int]) -> None:
        for _ in range(commit_turns):  # a commit that yields, as an async driver's does
            await asyncio.sleep(0)
        if any(tasks[i][1] for i in items):
            raise Refused(f"refused {sorted(items)}")
        committed.append(list(items))

    async def task(group: GroupCommit[int], me: int) -> None:
        for _ in range(tasks[me][0]):
            await asyncio.sleep(0)
        try:
            await group.add(me)
        except Refused as exc:
            returned[me] = str(exc)
            return
        # returned: its item is in a commit made already
        assert any(me in batch for batch in committed)
        returned[me] = "ok"

    async def main() -> None:
        group: GroupCommit[int] = GroupCommit(commit)
        await asyncio.gather(*(task(group, i) for i in range(len(tasks))))

    asyncio.run(main())
    assert sorted(returned) == list(range(len(tasks)))  # every task returned
    flat = [i for batch in committed for i in batch]
    assert len(flat) == len(set(flat))  # none committed twice
    for i, (_, refused) in enumerate(tasks):
        if refused:  # its commit raised, for every task in it, and stored none of them
            assert i not in flat and returned[i].startswith("refused")
        elif returned[i] != "ok":  # refused only with a task whose item is refused
            assert any(tasks[j][1] for j in map(int, returned[i][9:-1].split(", ")))
        else:
            assert i in flat


def test_tasks_finishing_together_share_one_commit_even_when_commits_block():
    """A sync checkpointer's commit blocks the loop (no await inside): tasks whose wake-ups
    are queued when the first adds still join its commit."""
    commits: list[list[int]] = []

    async def blocking_commit(items: Sequence[int]) -> None:
        commits.append(list(items))

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

        async def commit(items: Sequence[int]) -> None:
            if 1 in items:  # hangs until cancelled
                entered.set()
                await asyncio.sleep(10)
            commits.append(list(items))

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
