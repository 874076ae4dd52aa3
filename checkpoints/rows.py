"""Turning the rows the SQL stores (SQLite, PostgreSQL) read back into storage records.

Both stores answer the same questions with the same columns, in their own SQL dialect; what
they do with the answer is the same, and lives here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

from .base import Chain, CheckpointRecord, JobInfo, PendingWrite, ThreadInfo, process_space
from .errors import CheckpointError


def record_from_row(row: Sequence[Any], *, where: str = "the store",
                    replayed: bool = False) -> CheckpointRecord:
    """A checkpoint from (id, thread_id, parent, step, kind, status, next, writes, snapshot,
    extra, error, created_at). A row no run of ours could have written (a damaged or crafted
    database) is refused with `CheckpointError` naming the thread, checkpoint and column.

    `replayed`: the row is an ancestor read only to replay its writes, which the caller
    decodes itself and reports damaged if they are not JSON (`records.stored_writes`, the
    executor's replay); its writes and
    its `next` (not read) are only checked to be text in brackets. Rebuilding a state reads
    hundreds of rows, and parsing each one's JSON twice was most of the time it took."""
    writes, tasks = row[7], row[6]
    if replayed and type(writes) in (str, type(None)) and type(tasks) is str and \
            (writes is None or (writes[:1] == "[" and writes[-1:] == "]")) and \
            tasks[:1] == "[" and tasks[-1:] == "]":
        for column, index, kinds in _CHECKED_COLUMNS:
            if type(row[index]) not in kinds:
                _check_type(where, row[1], row[0], column, row[index], kinds)
        _check_json(row[9], dict, where, row[1], row[0], "extra")
    else:
        for column, index, kinds in _CHECKED_COLUMNS:
            _check_type(where, row[1], row[0], column, row[index], kinds)
        for column, index, shape in _JSON_COLUMNS:
            _check_json(row[index], shape, where, row[1], row[0], column)
    return CheckpointRecord(
        str(row[0]), row[1], None if row[2] is None else str(row[2]), row[3], row[4], row[5],
        row[6], row[7], row[8], row[9], row[10], float(row[11]))


def chain_from_rows(rows: Sequence[Sequence[Any]], pending_columns: tuple[int, int, int, int],
                    *, where: str = "the store", known: str | None = None) -> Chain | None:
    """A `Chain` from the one-query load: rows tagged 'c' (a checkpoint, its distance from the
    head second) and 'p' (a pending write, its checkpoint id third, then node, index, writes
    and meta at `pending_columns`). None when the thread or checkpoint does not exist.
    `known`: the checkpoint the load was told the caller holds the state of (it may start the
    chain without a snapshot).

    The chain must run from a checkpoint holding a snapshot to the head, each one the parent
    of the next, all of one thread: the load stops at a parent that is not older than its
    child, so a damaged file's cycle or dangling parent is reported here, never looped on."""
    records = sorted((row for row in rows if row[0] == "c"), key=lambda row: -row[1])
    if not records:
        return None
    chain = [record_from_row(row[2:], where=where, replayed=True) for row in records[:-1]]
    chain.append(record_from_row(records[-1][2:], where=where))
    head = chain[-1]
    for older, newer in reversed(list(pairwise(chain))):  # the break nearest the head
        if newer.parent_id != older.id or not _same_line(older, newer):
            raise damaged(where, head.thread_id, newer.id,
                          f"its parent {newer.parent_id} is not the thread's checkpoint before it")
    if chain[0].snapshot is None and chain[0].id != known:
        root = chain[0]
        reason = ("it has neither a parent nor a stored state" if root.parent_id is None else
                  f"its parent {root.parent_id} is missing, of another thread, or not older "
                  "than it (a cycle)")
        raise damaged(where, head.thread_id, root.id, reason)
    node, index, writes, meta = pending_columns
    pending: dict[str, list[PendingWrite]] = {}
    for row in rows:
        if row[0] == "p":
            _check_pending(where, row[2], row[node], row[writes], row[meta])
            pending.setdefault(str(row[2]), []).append(
                PendingWrite(str(row[2]), row[node], row[index], row[writes], row[meta]))
    for group in pending.values():
        group.sort(key=lambda w: (w.node, w.index))
    return Chain(chain, pending)


def _same_line(older: CheckpointRecord, newer: CheckpointRecord) -> bool:
    """A chain stays in one thread, except that a subgraph's thread may start (its input
    checkpoint) from its parent thread's state: `parent::node:index@checkpoint`."""
    return older.thread_id == newer.thread_id or (
        newer.kind == "input" and newer.thread_id.startswith(older.thread_id + "::"))


def damaged(where: str | None, thread_id: object, checkpoint_id: object, reason: str
            ) -> CheckpointError:
    """The error for stored data no run of ours wrote: it names the store (when known), the
    thread (when known) and checkpoint, and says what to do."""
    place = ("" if where is None else f"{where}: ") + \
        ("" if thread_id is None else f"thread {thread_id!r}, ") + f"checkpoint {checkpoint_id}"
    return CheckpointError(
        f"{place}: {reason}. The database is damaged or was edited by hand; restore it from a "
        "backup, or fork the thread from an earlier checkpoint.")


def _check_json(text: Any, shape: type, where: str, thread_id: object, checkpoint_id: object,
                column: str) -> None:
    """A JSON column holds JSON of the shape our writes give it (None where it may be empty)."""
    if text is None and column != "next":  # the one JSON column every checkpoint fills
        return
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise damaged(where, thread_id, checkpoint_id,
                      f"its {column!r} column is not JSON ({_sample(text)}: {exc})") from None
    if not isinstance(value, shape):
        raise damaged(where, thread_id, checkpoint_id, f"its {column!r} column holds "
                      f"{_sample(text)}, not a JSON {'array' if shape is list else 'object'}")


def _check_pending(where: str, checkpoint: object, node: object, writes: Any,
                   meta: Any) -> None:
    try:
        if not isinstance(json.loads(writes), dict) or \
                (meta is not None and not isinstance(json.loads(meta), dict)):
            raise ValueError("not a JSON object")
    except (TypeError, ValueError) as exc:
        raise damaged(where, None, checkpoint, f"the pending write of node {node!r} is not "
                      f"the JSON object a run writes ({exc})") from None


def _check_type(where: str, thread_id: object, checkpoint_id: object, column: str, value: Any,
                kinds: tuple[type, ...]) -> None:
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise damaged(where, thread_id, checkpoint_id, f"its {column!r} column holds "
                      f"{type(value).__name__} {_sample(value)}, not {names}")


def _sample(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_JSON_COLUMNS: tuple[tuple[str, int, type], ...] = (
    ("next", 6, list), ("writes", 7, list), ("extra", 9, dict))

_CHECKED_COLUMNS: tuple[tuple[str, int, tuple[type, ...]], ...] = (
    ("step", 3, (int,)), ("kind", 4, (str,)), ("status", 5, (str,)), ("next", 6, (str,)),
    ("created_at", 11, (int, float)))


def pending_from_rows(rows: Iterable[Sequence[Any]], *, where: str = "the store"
                      ) -> dict[str, list[PendingWrite]]:
    """Pending writes by checkpoint id, from (checkpoint, node, idx, writes, meta) rows."""
    pending: dict[str, list[PendingWrite]] = {}
    for checkpoint, node, idx, writes, meta in rows:
        _check_pending(where, checkpoint, node, writes, meta)
        pending.setdefault(str(checkpoint), []).append(
            PendingWrite(str(checkpoint), node, idx, writes, meta))
    return pending


def threads_from_rows(rows: Iterable[Sequence[Any]], *, where: str = "the store"
                      ) -> list[ThreadInfo]:
    """Threads from (thread_id, status, step, checkpoint id, updated, error, lease live,
    owner pid, owner host) rows. A live lease of a process on this machine that is gone no
    longer makes the thread busy."""
    host = process_space()
    infos = []
    for r in rows:
        for column, value, kinds in (
                ("thread_id", r[0], (str,)), ("status", r[1], (str,)), ("step", r[2], (int,)),
                ("created_at", r[4], (int, float)), ("error", r[5], (str, type(None)))):
            _check_type(where, r[0], r[3], column, value, kinds)
        infos.append(ThreadInfo(r[0], r[1], r[2], str(r[3]), float(r[4]), r[5],
                                bool(r[6]) and not (r[8] == host and not process_alive(r[7]))))
    return infos


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
