"""The errors the engine raises about a thread's state, worded once: what is wrong and what
to do about it."""

from __future__ import annotations

import shlex

from checkpoints.base import CheckpointRecord

from .checkpoint_extra import CheckpointExtra
from .errors import StateMachineError, ThreadNotFoundError, ThreadStateError


def unfinished_message(head: CheckpointRecord) -> str:
    what = {"failed": f"failed at step {head.step} ({head.error})",
            "interrupted": f"is paused before step {head.step}",
            "running": f"stopped at step {head.step} without finishing (its process ended)"}
    return (f"thread {head.thread_id!r} {what.get(head.status, head.status)}, so new input "
            "would drop its pending work. Continue it with app.resume(thread_id) (after "
            "app.update_state(...) if the state needs fixing), or start a new branch from a "
            "checkpoint with invoke(input, thread_id=..., checkpoint_id=...).")


def rollback_stopped_message(head: CheckpointRecord, extra: CheckpointExtra) -> str:
    """Why a thread whose rollback stopped takes neither resume nor new input."""
    if extra.undo_failed is not None:
        step, node, _ = extra.undo_failed
        why = f"the rollback stopped at the compensation of node {node!r} (step {step}): " \
              f"{head.error}"
    else:  # a compensation committed, the rollback's process ended before the next
        why = "the rollback stopped part-way (its process ended)"
    return (f"thread {head.thread_id!r} was being rolled back and {why}. Its run is undone "
            "only in part, so it can neither resume nor take new input. Fix the cause, then "
            f"continue the rollback with app.rollback({head.thread_id!r}) (statemachine "
            f"rollback GRAPH --db ... --thread {shlex.quote(head.thread_id)}); or start a new "
            "branch from an earlier checkpoint with app.fork(...).")


def not_found(thread_id: str, checkpoint_id: str | None) -> ThreadNotFoundError:
    if checkpoint_id is not None:
        return ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}; app.history(thread_id) "
            "lists its checkpoints.")
    return ThreadNotFoundError(
        f"no thread {thread_id!r} in this store; app.threads() lists the threads there are.")


def needs_checkpointer(what: str) -> StateMachineError:
    return ThreadStateError(
        f"to {what} the graph needs a checkpointer: compile(checkpointer=SQLiteCheckpointer("
        "'runs.db')) (or MemoryCheckpointer() for tests).")
