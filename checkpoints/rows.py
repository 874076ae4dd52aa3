"""Turning the rows the SQL stores (SQLite, PostgreSQL) read back into storage records.

Both stores answer the same questions with the same columns, in their own SQL dialect; what
they do with the answer is the same, and lives here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from .base import Chain, CheckpointRecord, JobInfo, PendingWrite, ThreadInfo, process_space


def record_from_row(row: Sequence[Any]) -> CheckpointRecord:
    """A checkpoint from (id, thread_id, parent, step, kind, status, next, writes, snapshot,
    extra, error, created_at)."""
    return CheckpointRecord(
        str(row[0]), row[1], None if row[2] is None else str(row[2]), row[3], row[4], row[5],
        row[6], row[7], row[8], row[9], row[10], row[11])


def chain_from_rows(rows: Sequence[Sequence[Any]], pending_columns: tuple[int, int, int, int]
          ) -> Chain | None:
    """A `Chain` from the one-query load: rows tagged 'c' (a checkpoint, its distance from the
    head second) and 'p' (a pending write, its checkpoint id third, then node, index, writes
    and meta at `pending_columns`). None when the thread or checkpoint does not exist."""
    records = sorted((row for row in rows if row[0] == "c"), key=lambda row: -row[1])
    if not records:
        return None
    node, index, writes, meta = pending_columns
    pending: dict[str, list[PendingWrite]] = {}
    for row in rows:
        if row[0] == "p":
            pending.setdefault(str(row[2]), []).append(
                PendingWrite(str(row[2]), row[node], row[index], row[writes], row[meta]))
    for group in pending.values():
        group.sort(key=lambda w: (w.node, w.index))
    return Chain([record_from_row(row[2:]) for row in records], pending)


def pending_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, list[PendingWrite]]:
    """Pending writes by checkpoint id, from (checkpoint, node, idx, writes, meta) rows."""
    pending: dict[str, list[PendingWrite]] = {}
    for checkpoint, node, idx, writes, meta in rows:
        pending.setdefault(str(checkpoint), []).append(
            PendingWrite(str(checkpoint), node, idx, writes, meta))
    return pending


def threads_from_rows(rows: Iterable[Sequence[Any]]) -> list[ThreadInfo]:
    """Threads from (thread_id, status, step, checkpoint id, updated, error, lease live,
    owner pid, owner host) rows. A live lease of a process on this machine that is gone no
    longer makes the thread busy."""
    host = process_space()
    return [ThreadInfo(r[0], r[1], r[2], str(r[3]), r[4], r[5],
                       bool(r[6]) and not (r[8] == host and not process_alive(r[7])))
            for r in rows]


def jobs_from_rows(rows: Iterable[Sequence[Any]]) -> list[JobInfo]:
    return [JobInfo(*row) for row in rows]


def process_alive(pid: int | None) -> bool:
    """Whether a process of this machine is running (a lease holder that is gone can be
    taken over at once instead of after its lease expires)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
