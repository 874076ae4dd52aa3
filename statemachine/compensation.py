"""Sagas: undo a failed run by running the compensations of the nodes it completed.

Each compensation runs in reverse order of completion and commits its own checkpoint (kind
"compensation", recording which task it undid), so a rollback that crashes half-way resumes
where it stopped and never undoes a task twice once that undo is committed. The last one marks
the thread "compensated"; rolling back again does nothing. A compensation that raises stops the
rollback on a checkpoint of its own, status "rollback_failed", with the compensation's error;
rolling back again continues from there. A compensation's `RunContext.task_id` is its own
stable id (an idempotency key for the undo); `RunContext.undoes_task_id` is the id of the task
it undoes, so a ledger keyed by task id finds the entry to undo.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from checkpoints.base import Checkpointer, CheckpointRecord, NewCheckpoint, Owner

from .calls import call_user_function
from .checkpoint_extra import CheckpointExtra, extra_of
from .errors import StateMachineError, ThreadNotFoundError, ThreadStateError
from .graph_binding import bind, check_binding
from .types import RunContext, task_id

if TYPE_CHECKING:
    from .executor import Executor

COMPENSATE = "__compensate__"
"""The pseudo-node that writes a compensation's update."""

TaskRef = tuple[int, str, int]
"""(step, node, task index): one completed task."""


async def rollback(executor: Executor, thread_id: str, *, saver: Checkpointer,
                   owner: Owner | None = None, context: Any = None) -> BaseModel:
    """Compensate the completed nodes of the thread's failed run; returns the final state.
    Compensations get `context` (the call's run-scoped context) in their RunContext."""
    held = owner is not None
    owner = owner or Owner.new()
    if not held:
        await saver.acquire(thread_id, owner)
    try:
        if held:  # a run rolling itself back: checked (and bound) by the run
            return await _rollback(executor, thread_id, saver, owner, context)
        unbound = await check_binding(saver, thread_id, executor.identity)
        try:
            state = await _rollback(executor, thread_id, saver, owner, context)
        except StateMachineError:
            raise  # refused before anything was written
        except Exception:
            await bind(saver, thread_id, owner, executor.identity, unbound)  # a compensation
            raise
        await bind(saver, thread_id, owner, executor.identity, unbound)
        return state
    finally:
        if not held:
            await saver.release(thread_id, owner)


async def _rollback(executor: Executor, thread_id: str, saver: Checkpointer,
                    owner: Owner, context: Any) -> BaseModel:
    line, writes, pending = await executor.run_writes(thread_id, saver)
    if not line:
        raise ThreadNotFoundError(f"no thread {thread_id!r} in this store.")
    head = line[-1]
    chain = await saver.load(thread_id, head.id)
    assert chain is not None
    state = executor.replayer.rebuild(chain)
    if head.status == "compensated":
        return state
    if head.status == "done":
        raise ThreadStateError(
            f"thread {thread_id!r} finished its run, so there is no failed run to roll back.")
    failed = next(r for r in reversed(line) if r.kind != "compensation")
    completed: list[TaskRef] = [(step, node, index) for step, node, index, _ in writes]
    undone: set[TaskRef] = set()
    origins = {failed.step: extra_of(failed).origin or failed.id}
    for parent, record in pairwise(line):
        if record.kind == "step":
            origins[parent.step] = extra_of(parent).origin or parent.id
        elif record.kind == "compensation":
            undid = extra_of(record).compensates
            if undid is not None:
                undone.add(undid)
    spec = executor.spec
    finished = executor.replayer.finished_writes(failed, pending.get(failed.id, []))
    completed += [(failed.step, n, i) for n, i, _ in finished]
    # the failed step's finished tasks completed too: their compensations must see their
    # writes (a refund needs the charge id), so the first compensation commits them as well
    carried_in: list[tuple[str, int, str]] = []
    if head.id == failed.id and finished:
        state = spec.schema.apply(state, [(n, u) for n, _, u in finished], step=failed.step,
                                  thread_id=thread_id)
        carried_in = [(n, i, spec.schema.encode_update(u, node=n, step=failed.step,
                                                        thread_id=thread_id))
                      for n, i, u in finished]
    todo = [t for t in reversed(completed)
            if t[1] in spec.nodes and spec.nodes[t[1]].compensate is not None and t not in undone]
    head_id = head.id
    for position, task in enumerate(todo):
        carried = carried_in if position == 0 else []
        try:
            state, head_id = await _compensate_one(
                executor, saver, owner, thread_id, state, head_id, failed, task,
                origins.get(task[0], failed.id), last=position == len(todo) - 1,
                carried_in=carried, context=context)
        except Exception as exc:
            await _stopped(executor, saver, owner, thread_id, state, head_id, failed, task, exc,
                           carried)
            raise
    if not todo:
        await saver.put(thread_id, owner, NewCheckpoint(
            parent_id=head_id, step=failed.step, kind="compensation", status="compensated",
            next="[]", writes=spec.schema.encode_writes(carried_in) if carried_in else None,
            snapshot=spec.schema.encode_state(state), error=failed.error))
    return state


async def _compensate_one(executor: Executor, saver: Checkpointer, owner: Owner, thread_id: str,
                          state: BaseModel, head_id: str, failed: CheckpointRecord,
                          task: TaskRef, origin: str, *, last: bool,
                          carried_in: list[tuple[str, int, str]], context: Any
                          ) -> tuple[BaseModel, str]:
    step, node, index = task
    spec = executor.spec
    compensate = spec.nodes[node].compensate
    assert compensate is not None
    args: tuple[Any, ...] = (state,)
    if compensate.wants_context:  # its own stable id, and the id of the task it undoes
        args = (state, RunContext(thread_id, step, node,
                                  task_id(thread_id, failed.id, node, index, "compensate"),
                                  undoes_task_id=task_id(thread_id, origin, node, index),
                                  index=index, context=context))
    try:
        result = await call_user_function(compensate, args, inline=False)
    except Exception as exc:
        exc.add_note(f"raised by the compensation of node {node!r} (step {step}) of thread "
                     f"{thread_id!r}; rollback again to retry the remaining compensations")
        raise
    schema = spec.schema
    writer = f"{node} (compensation)"
    update = schema.validate_update(result, node=writer, step=step, thread_id=thread_id)
    state = schema.apply(state, [(COMPENSATE, update)], step=step, thread_id=thread_id)
    encoded = schema.encode_update(update, node=writer, step=step, thread_id=thread_id)
    new_id = await saver.put(thread_id, owner, NewCheckpoint(
        parent_id=head_id, step=failed.step, kind="compensation",
        status="compensated" if last else "failed", next="[]",
        writes=schema.encode_writes([*carried_in, (COMPENSATE, 0, encoded)]),
        snapshot=schema.encode_state(state),
        extra=CheckpointExtra(compensates=(step, node, index)).encode(),
        error=failed.error))
    return state, new_id


async def _stopped(executor: Executor, saver: Checkpointer, owner: Owner, thread_id: str,
                   state: BaseModel, head_id: str, failed: CheckpointRecord, task: TaskRef,
                   exc: Exception, carried_in: list[tuple[str, int, str]]) -> None:
    """Record where the rollback stopped: a checkpoint with the compensation's own error
    (status "rollback_failed"), which `rollback` continues from and `resume` explains."""
    schema = executor.spec.schema
    await saver.put(thread_id, owner, NewCheckpoint(
        parent_id=head_id, step=failed.step, kind="compensation", status="rollback_failed",
        next="[]", writes=schema.encode_writes(carried_in) if carried_in else None,
        snapshot=schema.encode_state(state), extra=CheckpointExtra(undo_failed=task).encode(),
        error=f"{type(exc).__name__}: {exc}"))


def current_run(records: list[CheckpointRecord]) -> list[CheckpointRecord]:
    """The head's line back to the checkpoint that started its run, oldest first."""
    by_id = {r.id: r for r in records}
    line: list[CheckpointRecord] = []
    record: CheckpointRecord | None = records[0] if records else None
    while record is not None:
        line.append(record)
        if record.kind in ("input", "fork"):
            break
        record = by_id.get(record.parent_id) if record.parent_id else None
    line.reverse()
    return line
