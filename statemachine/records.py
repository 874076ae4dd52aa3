"""What the executor stores in a checkpoint besides updates: the tasks due next, `Command`
targets, cache keys, and the merge order of a step's writes (the `extra` data is
`checkpoint_extra`).

Plain functions over JSON, shared by the executor, compensation and the tools that read runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from checkpoints.base import CheckpointRecord, PendingWrite
from checkpoints.rows import damaged

from .checkpoint_extra import extra_of
from .commands import Send
from .constants import UPDATE
from .policies import CachePolicy


@dataclass(frozen=True, slots=True, eq=False)
class Task:
    """One execution of one node in a step.

    A task made by a `Send` (`sent`) gets `payload` as its input instead of the state.
    """

    node: str
    index: int = 0
    payload: Any = None
    sent: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.index)


def encode_tasks(tasks: Sequence[Task]) -> str:
    return json.dumps([[t.node, t.index, t.payload] if t.sent else
                       t.node if t.index == 0 else [t.node, t.index] for t in tasks])


def decode_tasks(text: str) -> list[Task]:
    return [Task(item) if isinstance(item, str) else
            Task(item[0], item[1], item[2], sent=True) if len(item) == 3 else
            Task(item[0], item[1]) for item in json.loads(text)]


def encode_goto(goto: Sequence[str | Send]) -> list[Any]:
    return [{"send": t.node, "payload": to_jsonable_python(t.payload)} if isinstance(t, Send)
            else t for t in goto]


def decode_goto(items: Sequence[Any]) -> list[str | Send]:
    return [Send(item["send"], item["payload"]) if isinstance(item, dict) else item
            for item in items]


def cache_key_for(policy: CachePolicy, arg: Any, context: Any = None) -> str:
    """The cache key of a task's input. The default key also covers the call's `context`
    when the node reads one (a user id changes the answer): its JSON, each part that cannot
    be JSON (an API client) standing in by its type's name. A `key` function decides alone."""
    if policy.key is not None:
        raw = policy.key(arg)
        text = raw if isinstance(raw, str) else json.dumps(to_jsonable_python(raw),
                                                           sort_keys=True)
    elif isinstance(arg, BaseModel):
        text = arg.model_dump_json()
    else:
        text = json.dumps(to_jsonable_python(arg), sort_keys=True)
    if context is not None and policy.key is None:
        with contextlib.suppress(TypeError, ValueError, PydanticSerializationError):
            text += "\x1f" + json.dumps(to_jsonable_python(
                context, fallback=lambda part: f"<{type(part).__qualname__}>"),
                sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def in_merge_order(writes: list[Any], record: CheckpointRecord) -> list[Any]:
    """`writes` of tasks of `record`'s step ((node, index, ...) each), sorted in the order the
    step merges them: the order `record.next` lists its tasks (the router made it declaration
    order, then task index), never the order they finished. The live run, replay,
    `update_state`, compensation and the readers all order a step's writes by this one rule.
    A write of no listed task (only in damaged data) goes last."""
    if len(writes) < 2:
        return writes
    position = {t.key: i for i, t in enumerate(decode_tasks(record.next))}
    end = len(position)
    return sorted(writes, key=lambda w: position.get((w[0], w[1]), end))


def stored_writes(record: CheckpointRecord, parent: CheckpointRecord | None,
                  pending: dict[str, list[PendingWrite]]) -> list[list[Any]]:
    """What `record` applied to its parent's state, as stored: [node, index, update] in
    merge order, read without the state schema (updates stay JSON).

    A step applies the writes its parent carried (update_state on a failed step), its parent's
    pending writes and its own, in merge order (`in_merge_order`); any other checkpoint its
    own writes, in the order they are stored. Rows read only for their writes are checked
    here (see rows.record_from_row's `replayed`): a damaged one is a `CheckpointError`
    naming it.
    """
    writes: list[list[Any]] = []
    try:
        if record.kind == "step" and parent is not None:
            writes += [list(w) for w in extra_of(parent).carried]
            writes += [[w.node, w.index, json.loads(w.writes)]
                       for w in pending.get(parent.id, [])]
        if record.kind != "fork" and record.writes:
            writes += json.loads(record.writes)
        if record.kind == "step" and parent is not None:
            writes = in_merge_order(writes, parent)
    except (ValueError, TypeError, IndexError) as exc:
        raise damaged(None, record.thread_id, record.id, "its writes, or the tasks and "
                      f"writes of its parent, are not what a run stores ({exc})") from None
    return writes


def ran_nodes(record: CheckpointRecord, parent: CheckpointRecord | None,
              pending: dict[str, list[PendingWrite]]) -> tuple[str, ...]:
    """The nodes whose writes made `record` (none for input, fork and compensation)."""
    if record.kind == "update":
        return tuple(dict.fromkeys(w[0] for w in stored_writes(record, parent, pending)
                                   if w[0] != UPDATE))
    if record.kind != "step" or parent is None:
        return ()
    return tuple(dict.fromkeys(w[0] for w in stored_writes(record, parent, pending)))


def finished_tasks(record: CheckpointRecord,
                   pending: dict[str, list[PendingWrite]]) -> set[tuple[str, int]]:
    """Tasks of `record`'s step whose writes are already kept (pending or carried)."""
    done = {(w.node, w.index) for w in pending.get(record.id, [])}
    return done | {(w[0], w[1]) for w in extra_of(record).carried}


def unknown_due_nodes(record: CheckpointRecord, pending: Sequence[PendingWrite] | None,
                      nodes: Collection[str]) -> list[str]:
    """Nodes `record`'s step is due to run, or holds kept work of (`pending`, and what was
    carried onto it; None: its due tasks alone, as a fork runs them), that are not among
    `nodes`: a graph lacking them cannot continue the thread."""
    named = [t.node for t in decode_tasks(record.next)]
    if pending is not None:
        named += [w.node for w in pending]
        named += [str(w[0]) for w in extra_of(record).carried]
    return [name for name in dict.fromkeys(named) if name not in nodes]
