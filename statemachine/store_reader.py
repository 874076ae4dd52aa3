"""Reading stored runs without user code: rows of threads and checkpoints, and a read-only store.

The CLI's `threads`, `history` and `show` and the web viewer (`statemachine ui`) share these:
they turn the checkpointer's records (JSON text) into plain dicts, never importing the graph.
`ReadOnlySQLite` is a checkpointer that opens the file with SQLite's read-only mode, so a
viewer cannot change it; its write methods raise `CheckpointError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoints.base import Chain, CheckpointRecord, PendingWrite, ThreadInfo
from checkpoints.sqlite import SQLiteCheckpointer

from ._sync import run_sync
from .types import Snapshot

UPDATE = "__update__"
"""The executor's pseudo-node that writes `update_state` values."""


# -- records as rows ----------------------------------------------------------------------------

def task_keys(next_json: str) -> list[tuple[str, int]]:
    """The (node, index) keys of a checkpoint's `next` tasks, in the order stored."""
    keys = []
    for item in json.loads(next_json or "[]"):
        keys.append((item, 0) if isinstance(item, str) else (item[0], item[1]))
    return keys


def record_extra(record: Any) -> dict[str, Any]:
    return json.loads(record.extra) if record.extra else {}


def decode_writes(text: str | None) -> list[list[Any]]:
    return json.loads(text) if text else []


def step_writes(record: Any, parent: Any, pending: dict[str, list[Any]]) -> list[list[Any]]:
    """What `record` applied to its parent's state: [node, index, update], in merge order.

    For a step: the writes its parent carried (update_state on a failed step), the pending
    writes of its parent's tasks and its own writes, ordered as the parent's `next` lists its
    tasks (declaration order, which is the merge order).
    """
    writes: list[list[Any]] = []
    if record.kind == "step" and parent is not None:
        writes += [list(w) for w in record_extra(parent).get("carried", ())]
        writes += [[w.node, w.index, json.loads(w.writes)] for w in pending.get(parent.id, [])]
    if record.kind != "fork":
        writes += decode_writes(record.writes)
    if record.kind == "step" and parent is not None:
        order = {key: position for position, key in enumerate(task_keys(parent.next))}
        writes.sort(key=lambda w: order.get((w[0], w[1]), len(order)))
    return writes


def row_from_record(record: Any, parent: Any, pending: dict[str, list[Any]]) -> dict[str, Any]:
    """A checkpoint as a dict (what `history --json` prints), from the stored record."""
    if record.kind == "update":
        nodes = [w[0] for w in decode_writes(record.writes) if w[0] != UPDATE]
    elif record.kind == "step" and parent is not None:
        nodes = [w[0] for w in step_writes(record, parent, pending)]
    else:
        nodes = []
    extra = record_extra(record)
    done = {(w.node, w.index) for w in pending.get(record.id, [])}
    done |= {(w[0], w[1]) for w in extra.get("carried", ())}
    next_nodes = [node for node, index in task_keys(record.next) if (node, index) not in done]
    kept = [w.node for w in sorted(pending.get(record.id, []), key=lambda w: w.index)]
    kept += [w[0] for w in extra.get("carried", ())]
    compensates = extra.get("compensates")
    return make_row(record.id, record.parent_id, record.step, record.kind, record.status,
                    list(dict.fromkeys(nodes)), list(dict.fromkeys(next_nodes)),
                    sorted(set(kept)), record.error, record.created_at,
                    compensates[1] if compensates else None,
                    [name for *_, name in extra.get("waiting", ())])


def row_from_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """A checkpoint as a dict, from a graph's `history()` snapshot."""
    compensates = snapshot.metadata.get("compensates")
    return make_row(snapshot.checkpoint_id, snapshot.parent_id, snapshot.step, snapshot.kind,
                    snapshot.status, list(snapshot.ran), list(dict.fromkeys(snapshot.next)),
                    sorted(snapshot.pending_writes), snapshot.error, snapshot.created_at,
                    compensates[1] if compensates else None,
                    list(snapshot.metadata.get("waits_for", [])))


def make_row(checkpoint_id: str, parent_id: str | None, step: int, kind: str, status: str,
             nodes: list[str], next_nodes: list[str], kept: list[str], error: str | None,
             created_at: float, compensates: str | None, waits_for: list[str]
             ) -> dict[str, Any]:
    return {"checkpoint_id": checkpoint_id, "parent_id": parent_id, "step": step, "kind": kind,
            "status": status, "nodes": nodes, "next": next_nodes, "pending_writes": kept,
            "waits_for": waits_for, "compensates": compensates, "error": error,
            "created_at": created_at, "time": format_time(created_at)}


def format_time(created_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created_at))


def thread_row(info: ThreadInfo) -> dict[str, Any]:
    """A thread as a dict (what `threads --json` prints)."""
    return {"thread_id": info.thread_id, "status": info.status, "step": info.step,
            "checkpoint_id": info.checkpoint_id, "busy": info.busy, "error": info.error,
            "updated_at": info.updated_at, "time": format_time(info.updated_at)}


def history_rows(records: Sequence[CheckpointRecord], pending: dict[str, list[PendingWrite]]
                 ) -> list[dict[str, Any]]:
    """Rows of a thread's checkpoints (as `saver.list` gives them, newest first)."""
    by_id = {r.id: r for r in records}
    return [row_from_record(r, by_id.get(r.parent_id) if r.parent_id else None, pending)
            for r in records]


def unmerged_state(chain: Chain) -> dict[str, Any]:
    """A checkpoint that stores no snapshot, as far as it is known without the reducers: the
    nearest stored state and the raw writes since ([node, index, update] each)."""
    base = chain.records[0]
    since = []
    for before, record in zip(chain.records, chain.records[1:], strict=False):
        since.append({"checkpoint_id": record.id, "step": record.step, "kind": record.kind,
                      "writes": step_writes(record, before, chain.pending)})
    return {"exact": False, "checkpoint_id": chain.head.id,
            "snapshot": {"checkpoint_id": base.id, "step": base.step,
                         "state": json.loads(base.snapshot or "null")},
            "writes_since": since}


# -- a read-only store --------------------------------------------------------------------------

class ReadOnlySQLite(SQLiteCheckpointer):
    """A checkpoint database opened read-only (`SQLiteCheckpointer(path, read_only=True)`),
    with synchronous twins of the reads for the command line and the viewer.

    Runs that other processes commit meanwhile are seen (the file is in WAL mode). Give it to
    a `CompiledGraph` to read `history()`/`get_state()` through the graph's reducers.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, read_only=True)

    def load_sync(self, thread_id: str, checkpoint_id: str | None = None) -> Chain | None:
        return run_sync(lambda: self.load(thread_id, checkpoint_id))

    def list_sync(self, thread_id: str) -> list[CheckpointRecord]:
        return run_sync(lambda: self.list(thread_id))

    def list_pending_sync(self, checkpoint_ids: Sequence[str]
                          ) -> dict[str, list[PendingWrite]]:
        return run_sync(lambda: self.list_pending(checkpoint_ids))

    def threads_sync(self) -> list[ThreadInfo]:
        return run_sync(self.threads)

