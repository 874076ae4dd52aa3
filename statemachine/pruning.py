"""Deleting threads and pruning old checkpoints through a graph (`app.prune`,
`app.delete_thread`): the store does the removing (checkpoints/retention.py); this adds what
only the graph can do, and keeps the executor's state cache in step.

A store keeps a checkpoint readable by keeping every older one back to the nearest snapshot,
and snapshots are rare (docs/storage.md), so on its own a prune to the newest N often keeps
most of a thread. With the graph, the state of each trimmed thread's oldest kept checkpoint is
computed and stored first (`add_snapshot`), so the store can cut exactly there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from checkpoints.base import FINISHED, Checkpointer, Owner, Removed

from .committer import release_after
from .errors import CheckpointError, ThreadBusyError
from .graph_binding import runs

if TYPE_CHECKING:
    from .executor import Executor


async def delete_thread(executor: Executor, saver: Checkpointer, thread_id: str, *,
                        dry_run: bool) -> Removed:
    removed = await saver.delete_thread(thread_id, dry_run=dry_run)
    _forget(executor, removed)
    return removed


async def prune(executor: Executor, saver: Checkpointer, thread_id: str | None, *,
                keep_last: int | None, finished_before: float | None,
                dry_run: bool) -> Removed:
    """The store's `prune`, after giving the oldest checkpoint each trimmed thread keeps a
    snapshot. Only threads bound to this graph get one (`graph_binding`): another graph's
    states, rebuilt through this one's reducers, would be wrong. The others, and a subgraph's
    threads (of the subgraph's model), are left to the store's own rules, which keep more."""
    if keep_last is not None and keep_last >= 1 and not dry_run:
        if thread_id is not None:
            chosen = [] if "::" in thread_id else [thread_id]
        else:
            chosen = [t.thread_id for t in await saver.threads()
                      if "::" not in t.thread_id and (finished_before is None or (
                          t.status in FINISHED
                          and t.updated_at < finished_before))]
        bound = await saver.thread_graphs(chosen)
        for thread in chosen:
            if thread in bound and _ours(executor, thread, bound[thread]):
                await _snapshot_oldest_kept(executor, saver, thread, keep_last)
    removed = await saver.prune(thread_id=thread_id, keep_last=keep_last,
                                finished_before=finished_before, dry_run=dry_run)
    _forget(executor, removed)
    return removed


async def _snapshot_oldest_kept(executor: Executor, saver: Checkpointer, thread_id: str,
                                keep_last: int) -> None:
    """Store the state of the `keep_last`-th newest checkpoint whole, if it has no snapshot
    and no run holds the thread (the prune then skips it too)."""
    page = await saver.list(thread_id, limit=keep_last + 1)
    if len(page) <= keep_last or page[keep_last - 1].snapshot is not None:
        return
    oldest = page[keep_last - 1]
    owner = Owner.new()
    try:
        await saver.acquire(thread_id, owner)
    except ThreadBusyError:
        return
    try:
        loaded = await executor.load_state(saver, thread_id, oldest.id, own=False)
        if loaded is not None:
            await saver.add_snapshot(thread_id, owner, oldest.id,
                                     executor.spec.schema.encode_state(loaded[0]))
    except BaseException as exc:
        await release_after(saver, thread_id, owner, exc)
        raise
    await saver.release(thread_id, owner)


def _ours(executor: Executor, thread_id: str, stored: str) -> bool:
    """Whether the thread bound to `stored` is this graph's (a damaged binding is not)."""
    try:
        return runs(thread_id, stored, executor.identity)
    except CheckpointError:
        return False


def _forget(executor: Executor, removed: Removed) -> None:
    for thread in removed.threads:
        executor.states.forget(thread)
