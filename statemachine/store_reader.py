"""Reading stored runs without user code: rows of threads and checkpoints, and a read-only store.

The CLI's `threads`, `history` and `show` and the web viewer (`statemachine ui`) share these:
they turn the checkpointer's records (JSON text) into plain dicts, never importing the graph.
`open_read_only` gives a checkpointer that cannot change the store (SQLite's read-only mode,
or read-only PostgreSQL connections); its write methods raise `CheckpointError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from checkpoints.base import Chain, Checkpointer, CheckpointRecord, PendingWrite, ThreadInfo
from checkpoints.rows import damaged
from checkpoints.sqlite import SQLiteCheckpointer

from ._sync import run_sync
from .checkpoint_extra import extra_of
from .records import decode_tasks, finished_tasks, ran_nodes, stored_writes
from .types import Snapshot

# -- records as rows ----------------------------------------------------------------------------

def row_from_record(record: CheckpointRecord, parent: CheckpointRecord | None,
                    pending: dict[str, list[PendingWrite]]) -> dict[str, Any]:
    """A checkpoint as a dict (what `history --json` prints), from the stored record."""
    extra = extra_of(record)
    done = finished_tasks(record, pending)
    next_nodes = [t.node for t in decode_tasks(record.next) if t.key not in done]
    compensates = extra.compensates
    return make_row(record.id, record.parent_id, record.step, record.kind, record.status,
                    list(ran_nodes(record, parent, pending)), list(dict.fromkeys(next_nodes)),
                    sorted({node for node, _ in done}), record.error, record.created_at,
                    compensates[1] if compensates else None,
                    [name for *_, name in extra.waiting])


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
    """A stored time for people; "?" for one no clock gives (a damaged or edited row), which
    must not take the whole list down."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created_at))
    except (OverflowError, OSError, ValueError):
        return "?"


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


def history_page(store: SyncReads, thread_id: str, *, limit: int, before: str | None = None
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a thread's history rows, newest first: at most `limit` checkpoints older
    than `before` (a checkpoint id; None: from the latest), and the `before` of the next older
    page (None on the last). It reads the page, one more row, and the parents the page points
    to outside itself — never the whole thread."""
    records = store.list_sync(thread_id, limit=limit + 1, before=before)
    page, more = records[:limit], len(records) > limit
    by_id = {r.id: r for r in records}
    by_id.update((parent_id, chain.head) for parent_id, chain in
                 store.parents_outside_sync(thread_id, page, by_id).items())
    pending = store.list_pending_sync([*by_id])
    rows = [row_from_record(r, by_id.get(r.parent_id) if r.parent_id else None, pending)
            for r in page]
    return rows, page[-1].id if more and page else None


def unmerged_state(chain: Chain) -> dict[str, Any]:
    """A checkpoint that stores no snapshot, as far as it is known without the reducers: the
    nearest stored state and the raw writes since ([node, index, update] each)."""
    base = chain.records[0]
    since = []
    for before, record in pairwise(chain.records):
        since.append({"checkpoint_id": record.id, "step": record.step, "kind": record.kind,
                      "writes": stored_writes(record, before, chain.pending)})
    return {"exact": False, "checkpoint_id": chain.head.id,
            "snapshot": {"checkpoint_id": base.id, "step": base.step,
                         "state": stored_state(base)},
            "writes_since": since}


def stored_state(record: CheckpointRecord) -> Any:
    """The state a checkpoint stores (its snapshot) as plain JSON values, read without the
    graph; `CheckpointError` naming thread and checkpoint when it is not JSON."""
    try:
        return json.loads(record.snapshot or "null")
    except ValueError as exc:
        raise damaged(None, record.thread_id, record.id,
                      f"its 'snapshot' column is not JSON ({exc})") from None


# -- a read-only store --------------------------------------------------------------------------

class SyncReads(Checkpointer):
    """Synchronous twins of a checkpointer's reads, for the command line and the viewer."""

    def load_sync(self, thread_id: str, checkpoint_id: str | None = None) -> Chain | None:
        return run_sync(lambda: self.load(thread_id, checkpoint_id))

    def list_sync(self, thread_id: str, *, limit: int | None = None,
                  before: str | None = None) -> list[CheckpointRecord]:
        return run_sync(lambda: self.list(thread_id, limit=limit, before=before))

    def parents_outside_sync(self, thread_id: str, page: Sequence[CheckpointRecord],
                             known: Iterable[str] = ()) -> dict[str, Chain]:
        return run_sync(lambda: self.parents_outside(thread_id, page, known))

    def list_pending_sync(self, checkpoint_ids: Sequence[str]
                          ) -> dict[str, list[PendingWrite]]:
        return run_sync(lambda: self.list_pending(checkpoint_ids))

    def threads_sync(self, *, limit: int | None = None, offset: int = 0,
                     updated_since: float | None = None) -> list[ThreadInfo]:
        return run_sync(lambda: self.threads(limit=limit, offset=offset,
                                             updated_since=updated_since))


class ReadOnlySQLite(SyncReads, SQLiteCheckpointer):
    """A checkpoint database opened read-only (`SQLiteCheckpointer(path, read_only=True)`),
    with synchronous twins of the reads.

    Runs that other processes commit meanwhile are seen (the file is in WAL mode). Give it to
    a `CompiledGraph` to read `history()`/`get_state()` through the graph's reducers.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, read_only=True)


def open_read_only(db: str | Path, *, schema: str = "statemachine") -> SyncReads:
    """A read-only store with synchronous reads: a SQLite file, or a PostgreSQL URL (its
    connections read-only: `PostgresCheckpointer(url, read_only=True)`)."""
    from checkpoints import is_postgres_url

    if isinstance(db, str) and is_postgres_url(db):
        from checkpoints.postgres import PostgresCheckpointer

        class ReadOnlyPostgres(SyncReads, PostgresCheckpointer):
            pass

        return ReadOnlyPostgres(db, schema=schema, read_only=True)
    return ReadOnlySQLite(db)

