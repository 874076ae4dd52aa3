"""Retention on a SQLite file: reading a thread family, keeping removed ids taken, and giving
the freed space back to the file system.

Everything but `shrink` runs on one `sqlite3.Connection` inside a transaction that
`SQLiteCheckpointer` opens (BEGIN IMMEDIATE when it writes: the whole file is locked, so
reading a family locks nothing more). `shrink` runs after the commit: the rows are gone
whether or not the file can be made smaller right then. The rest of retention's SQL is
shared with PostgreSQL (`sql_retention.py`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .base import process_space
from .retention import Family, Plan, Stored, busy_reason, family_range, in_family
from .rows import process_alive
from .sql_dialect import SQLITE
from .sql_retention import Connection, RetentionSQL, number

_IN_FAMILY = "(thread_id = :root OR (thread_id >= :low AND thread_id < :high))"
"""A thread and those under it, as an index range on the unique thread_id index: text compares
as UTF-8 bytes (BINARY), so the range holds exactly the ids starting with `root::`."""


class SQLiteRetention(RetentionSQL):
    """Retention's SQL on a SQLite file: one family at a time, by an index range."""

    def read_families(self, conn: Connection, roots: Sequence[str], *, lock: bool,
                      holder: str | None = None) -> dict[str, Family]:
        """See `read_family`; the transaction already locks the file, so `lock` adds nothing."""
        return {root: self.read_family(conn, root, holder=holder) for root in roots}

    def read_family(self, conn: Connection, root: str, *, holder: str | None = None
                    ) -> Family:
        """The thread `root` and every thread under it, with their checkpoints' shape and who
        holds them. A lease counts while it has not expired by this machine's clock, unless
        its holder was a process of this machine that is gone; the run `holder` (releasing the
        thread) does not count. A job counts while a worker's claim on it has not expired."""
        low, high = family_range(root)
        bounds = {"root": root, "low": low, "high": high}
        now, here = time.time(), process_space()
        members = [row for row in conn.execute(
            f"SELECT key, thread_id, owner, owner_pid, owner_host, lease_expires FROM threads "
            f"WHERE {_IN_FAMILY}", bounds) if isinstance(row[1], str) and in_family(root, row[1])]
        busy: dict[str, str] = {}
        for _, name, owner, pid, host, expires in members:
            if owner is not None and owner != holder and number(expires) >= now and \
                    not (host == here and not process_alive(pid)):
                busy[name] = busy_reason(name, job=False)
        for (name,) in conn.execute(
                f"SELECT thread_id FROM jobs WHERE {_IN_FAMILY} AND status = 'running' AND "
                "claimed_until >= :now", {**bounds, "now": now}):
            if in_family(root, name):
                busy.setdefault(name, busy_reason(name, job=True))
        names = {key: name for key, name, *_ in members}
        threads: dict[str, list[Stored]] = {name: [] for name in names.values()}
        for name, checkpoint in self.checkpoints_of(conn, names):
            threads[name].append(checkpoint)
        return Family(root, threads, busy, self.parent_head(conn, root))

    def carry_out(self, conn: Connection, plan: Plan, *, dry_run: bool) -> tuple[int, int]:
        """See `RetentionSQL.carry_out`; then, if the newest checkpoint went, its id stays
        taken (`keep_ids_taken`)."""
        top = None if dry_run else conn.execute("SELECT max(id) FROM checkpoints").fetchone()[0]
        counted = super().carry_out(conn, plan, dry_run=dry_run)
        if not dry_run:
            keep_ids_taken(conn, top)
        return counted


RETENTION = SQLiteRetention(SQLITE)

PLACEHOLDER_THREAD = 0
"""The thread key of the row that keeps the highest checkpoint id taken (no thread has it:
keys start at 1), so that row is in no thread, no list and no load."""


def keep_ids_taken(conn: Connection, top: int | None) -> None:
    """Never give a removed checkpoint's id again. SQLite numbers a new row one past the
    highest id in the table, so removing the newest rows would hand their ids out anew — and
    a checkpoint id is where task ids come from (the idempotency keys nodes give payment
    providers and mail servers): a thread deleted and started again under its old id would
    repeat its old task ids. When the highest row went, a bare placeholder takes its id (and
    the previous placeholder goes): ids stay increasing, without a new schema."""
    if top is None or conn.execute("SELECT 1 FROM checkpoints WHERE id = ?",
                                   (top,)).fetchone() is not None:
        return
    conn.execute("INSERT INTO checkpoints(id, thread, parent, step, kind, status, next, "
                 "created_at) VALUES (?, ?, NULL, 0, 'removed', 'removed', '[]', ?)",
                 (top, PLACEHOLDER_THREAD, time.time()))
    conn.execute("DELETE FROM checkpoints WHERE thread = ? AND id < ?",
                 (PLACEHOLDER_THREAD, top))


def shrink(conn: sqlite3.Connection) -> list[str]:
    """Give the pages freed by a removal back to the file system; what happened, in notes.

    A file made with incremental auto-vacuum moves its free pages to the end and cuts them
    off (`PRAGMA incremental_vacuum`); one made before (auto_vacuum NONE) is converted once
    (`auto_vacuum=INCREMENTAL` then `VACUUM`, which rewrites it whole). The write-ahead log,
    where these changes land first, is then folded back and emptied (`wal_checkpoint
    (TRUNCATE)`): only then is the main file cut. Nothing here fails the removal: a lock
    another connection holds, or a disk too full for VACUUM's copy, leaves the rows removed
    and the file as large as it was (its free pages are reused by later runs), and says so."""
    notes = []
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            notes.append("the file was made before incremental auto-vacuum: it was converted "
                         "now, once, by a VACUUM that rewrote it whole; later prunes shrink it "
                         "without one")
        else:
            # each step of this pragma frees one page, and Python's execute() steps once
            conn.executescript("PRAGMA incremental_vacuum")
    except sqlite3.Error as exc:
        notes.append(f"the file was not shrunk ({exc}): the rows are removed and their space "
                     "is reused by later runs; prune again when nothing else uses the file to "
                     "give it back")
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as exc:
        busy, notes = 1, [*notes, f"the write-ahead log was not folded back ({exc})"]
    if busy:
        notes.append("another connection was reading the file, so the write-ahead log still "
                     "holds the removal: the file shrinks at a later checkpoint (at the latest "
                     "when the last connection to it closes)")
    return notes


def file_bytes(path: Path) -> int:
    """The database's size on disk: the file and its write-ahead log (sizes only: the files
    are never opened outside SQLite, which would drop this process's locks on them)."""
    total = 0
    for name in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(name).st_size
    return total


__all__ = ["RETENTION", "SQLiteRetention", "file_bytes", "keep_ids_taken", "shrink"]
