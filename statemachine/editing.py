"""`update_state`: a person (or code) changing a thread's state between runs.

The values are applied as the writes of a node (`as_node`) or of no node, through the
reducers, and committed as a checkpoint of their own. As a node, the graph routes on from
there; as the one task a failed step still lacked, the step commits whole. Without a node,
the thread stays where it was: the same tasks stay due, with the same ids.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from checkpoints.base import NewCheckpoint

from .checkpoint_extra import CheckpointExtra, extra_of
from .committer import counted, holding
from .constants import UPDATE
from .errors import ThreadStateError, did_you_mean
from .graph_binding import bind, check_binding, check_reader
from .records import Task, decode_tasks, encode_tasks
from .routing import next_tasks
from .run_start import carried_on, stored_results
from .thread_errors import not_found
from .types import Snapshot

if TYPE_CHECKING:
    from .executor import Executor


async def update_state(executor: Executor, thread_id: str, values: Any, *,
                       as_node: str | None = None, checkpoint_id: str | None = None,
                       blocking: bool = False, context: Any = None) -> Snapshot:
    saver = executor.require_saver("update a thread's state", blocking)
    spec = executor.spec
    if spec.context is not None and as_node is not None:  # the routers after it see it
        context = spec.context.validate(context)
    if as_node is not None and as_node not in spec.nodes:
        raise ThreadStateError(
            f"update_state(as_node={as_node!r}): no such node"
            f"{did_you_mean(as_node, list(spec.nodes))}; nodes: {', '.join(spec.nodes)}.")
    async with holding(saver, thread_id) as owner:
        unbound = await check_binding(saver, thread_id, executor.identity)
        loaded = await executor.load_state(saver, thread_id, checkpoint_id, own=True)
        if loaded is None:
            raise not_found(thread_id, checkpoint_id)
        state, chain, cost = loaded
        assert cost is not None
        head = chain.head
        head_extra = extra_of(head)
        writer = as_node or UPDATE
        update = spec.schema.validate_update(values, node=writer, step=head.step,
                                             thread_id=thread_id)
        new_state = spec.schema.apply(state, [(writer, update)], step=head.step,
                                      thread_id=thread_id)
        encoded = spec.schema.encode_update(update, node=writer, step=head.step,
                                            thread_id=thread_id)
        kind, index = "update", 0
        if as_node is not None:
            results = stored_results(executor, head, chain)
            missing = [t for t in decode_tasks(head.next) if t.key not in results.pending]
            if results.pending and [t.node for t in missing] == [as_node]:
                # the update stands in for the one task the failed step still lacked:
                # the step commits whole, its finished tasks' writes included
                kind, index = "step", missing[0].index
                results.pending[missing[0].key] = update
                ran = decode_tasks(head.next)
                new_state = spec.schema.apply(
                    state, [(t.node, results.pending[t.key]) for t in ran], step=head.step,
                    thread_id=thread_id)
            else:
                ran = [Task(as_node)]
            tasks, joins = await next_tasks(
                spec, ran, new_state, head.step, head_extra.joins, gotos=results.gotos,
                thread_id=thread_id, origin=f"{owner.token}-{head.step}", context=context)
            step, next_json, error = head.step + 1, encode_tasks(tasks), None
            status = "interrupted" if tasks else "done"
            extra = CheckpointExtra(joins=joins, interrupt="after" if tasks else None)
        else:
            step, next_json, status, error = head.step, head.next, head.status, head.error
            # the same tasks stay due: they keep their ids (idempotency keys), what they
            # wait for and the answers they were given
            extra = carried_on(head_extra, chain.pending.get(head.id, [])).copy(
                origin=head_extra.origin or head.id, joins=head_extra.joins,
                interrupt=head_extra.interrupt, failed=head_extra.failed,
                waiting=head_extra.waiting, answers=head_extra.answers,
                questions=head_extra.questions)
        writes = spec.schema.encode_writes([(writer, index, encoded)])
        snapshot = None
        if cost.due(*counted(len(writes), spec.schema.appends_only(update)), saver.keep_last):
            snapshot = cost.stored(spec.schema.encode_state(new_state))
        created = time.time()
        new_id = await saver.put(thread_id, owner, NewCheckpoint(
            parent_id=head.id, step=step, kind=kind, status=status, next=next_json,
            writes=writes, snapshot=snapshot, extra=extra.encode(),
            error=error, created_at=created))
        await bind(saver, thread_id, owner, executor.identity, unbound)
        if executor.remember_states:
            executor.states.put(thread_id, new_id, created, new_state, cost)
    return await executor.get_state(thread_id, new_id, blocking=blocking)


async def fork(executor: Executor, thread_id: str, checkpoint_id: str, *,
               to_thread: str | None = None, blocking: bool = False) -> Snapshot:
    """Branch off a thread at an older checkpoint, paused before that checkpoint's due tasks:
    `resume` then runs them again. On the same thread the fork becomes its head (the newer
    checkpoints stay in its history); with `to_thread`, a new thread starts from the state at
    the checkpoint and the source thread is left as it was."""
    saver = executor.require_saver("fork a thread", blocking)
    target = to_thread if to_thread is not None else thread_id
    if to_thread is not None:
        if not isinstance(to_thread, str) or not to_thread:
            raise ThreadStateError(f"fork(to_thread={to_thread!r}): name the new thread with "
                                   "non-empty text.")
        if await saver.list(to_thread, limit=1):
            raise ThreadStateError(
                f"thread {to_thread!r} already exists; fork to a new thread id, or delete that "
                f"thread first (app.delete_thread({to_thread!r})).")
    async with holding(saver, target) as owner:
        if to_thread is not None:  # the source is only read: it must be this graph's
            await check_reader(saver, thread_id, executor.identity)
        unbound = await check_binding(saver, target, executor.identity)
        loaded = await executor.load_state(saver, thread_id, checkpoint_id, own=False)
        if loaded is None:
            raise not_found(thread_id, checkpoint_id)
        state, chain, cost = loaded
        source = chain.head
        if source.thread_id != thread_id:  # a subgraph's checkpoint reached through its parent
            raise not_found(thread_id, checkpoint_id)
        extra = CheckpointExtra(joins=extra_of(source).joins,
                                interrupt="before" if source.next != "[]" else None)
        encoded = executor.spec.schema.encode_state(state)
        snapshot: str | None = encoded
        if to_thread is None and cost is not None and not cost.due(0, 0, saver.keep_last):
            snapshot = None  # rebuilt from the checkpoint it forks, as that one is
        created = time.time()
        new_id = await saver.put(target, owner, NewCheckpoint(
            parent_id=source.id if to_thread is None else None, step=source.step, kind="fork",
            status="interrupted" if source.next != "[]" else "done", next=source.next,
            snapshot=snapshot, extra=extra.encode(), created_at=created))
        await bind(saver, target, owner, executor.identity, unbound)
    return await executor.get_state(target, new_id, blocking=blocking)
