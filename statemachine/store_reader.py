"""Reading stored runs without user code: rows of threads and checkpoints, and a read-only store.

The CLI's `threads`, `history` and `show` and the web viewer (`statemachine ui`) share these:
they turn the checkpointer's records (JSON text) into plain dicts, never importing the graph.
`ReadOnlySQLite` is a checkpointer that opens the file with SQLite's read-only mode, so a
viewer cannot change it; its write methods raise `CheckpointError`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from checkpoints.base import (
    Chain,
    Checkpointer,
    CheckpointRecord,
    NewCheckpoint,
    Owner,
    PendingWrite,
    ThreadInfo,
)
from checkpoints.sqlite import _COLUMNS, _LOAD, APPLICATION_ID, _record

from .errors import CheckpointError
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

class ReadOnlySQLite(Checkpointer):
    """A checkpoint database opened read-only (`file:...?mode=ro`): reads like
    `SQLiteCheckpointer`, never writes (no schema creation, no migration, no lease).

    Runs that other processes commit meanwhile are seen (the file is in WAL mode). Give it to
    a `CompiledGraph` to read `history()`/`get_state()` through the graph's reducers.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"no database file {str(self.path)!r}")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"cannot open {str(self.path)!r} as a checkpoint database: {exc}") from exc
        if app_id != APPLICATION_ID:
            self._conn.close()
            raise CheckpointError(f"{str(self.path)!r} is not a statemachine checkpoint "
                                  "database")
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ReadOnlySQLite({str(self.path)!r})"

    def _fetchall(self, sql: str, params: Sequence[object] | dict[str, object]) -> list[tuple]:
        with self._lock:
            if self._closed:
                raise CheckpointError(f"{self!r} is closed.")
            return self._conn.execute(sql, params).fetchall()

    def _refuse(self) -> CheckpointError:
        return CheckpointError(f"{self!r} is read-only")

    async def acquire(self, thread_id: str, owner: Owner) -> None:
        raise self._refuse()

    async def release(self, thread_id: str, owner: Owner) -> None:
        raise self._refuse()

    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint) -> str:
        raise self._refuse()

    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite) -> None:
        raise self._refuse()

    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        raise self._refuse()

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None) -> None:
        raise self._refuse()

    async def cache_get(self, namespace: str, key: str) -> str | None:
        rows = self._fetchall(
            "SELECT value FROM cache WHERE namespace = ? AND key = ? AND "
            "(expires_at IS NULL OR expires_at > ?)", (namespace, key, time.time()))
        return rows[0][0] if rows else None

    def load_sync(self, thread_id: str, checkpoint_id: str | None = None) -> Chain | None:
        if checkpoint_id is not None and not str(checkpoint_id).isdigit():
            return None
        rows = self._fetchall(
            _LOAD, {"thread": thread_id,
                    "checkpoint": None if checkpoint_id is None else int(checkpoint_id)})
        if not rows:
            return None
        records = [_record(row) for row in rows]
        return Chain(records, self.list_pending_sync([r.id for r in records]))

    def list_sync(self, thread_id: str) -> list[CheckpointRecord]:
        rows = self._fetchall(
            f"SELECT {_COLUMNS} FROM checkpoints c JOIN threads t ON t.key = c.thread "
            "WHERE t.thread_id = ? ORDER BY c.id DESC", (thread_id,))
        return [_record(row) for row in rows]

    def list_pending_sync(self, checkpoint_ids: Sequence[str]
                          ) -> dict[str, list[PendingWrite]]:
        pending: dict[str, list[PendingWrite]] = {}
        ids = [int(c) for c in checkpoint_ids]
        for start in range(0, len(ids), 500):  # SQLite limits the number of parameters
            chunk = ids[start:start + 500]
            rows = self._fetchall(
                "SELECT checkpoint, node, idx, writes, meta FROM pending_writes WHERE "
                f"checkpoint IN ({','.join('?' * len(chunk))})", chunk)
            for checkpoint, node, idx, writes, meta in rows:
                pending.setdefault(str(checkpoint), []).append(
                    PendingWrite(str(checkpoint), node, idx, writes, meta))
        return pending

    def threads_sync(self) -> list[ThreadInfo]:
        rows = self._fetchall(
            "SELECT t.thread_id, c.status, c.step, c.id, coalesce(c.marked_at, c.created_at), "
            "c.error, t.owner IS NOT NULL AND t.lease_expires > ? FROM threads t JOIN "
            "checkpoints c ON c.id = (SELECT max(id) FROM checkpoints WHERE thread = t.key) "
            "ORDER BY coalesce(c.marked_at, c.created_at) DESC, c.id DESC", (time.time(),))
        return [ThreadInfo(r[0], r[1], r[2], str(r[3]), r[4], r[5], bool(r[6])) for r in rows]

    async def load(self, thread_id: str, checkpoint_id: str | None = None) -> Chain | None:
        return self.load_sync(thread_id, checkpoint_id)

    async def list(self, thread_id: str) -> list[CheckpointRecord]:
        return self.list_sync(thread_id)

    async def list_pending(self, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        return self.list_pending_sync(checkpoint_ids)

    async def threads(self) -> list[ThreadInfo]:
        return self.threads_sync()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
