"""Opening a SQLite checkpoint file: telling ours from a foreign or newer one, creating or
migrating its schema, and opening it read-only (also on read-only media).

A file is ours when its `PRAGMA application_id` says so; its `schema_version` table says which
migrations it has had. Nothing is written to a file that is not ours, or is newer than this
code: it is refused with `CheckpointError`, untouched.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import aiosqlite

from .errors import CheckpointError
from .sql_dialect import SQLITE
from .sql_schema import cache_table, jobs_table, store_tables
from .sql_schema import tables as new_tables
from .sqlite_errors import storage_error

SCHEMA_VERSION = 6
READABLE_FROM = 3
"""Read-only opening reads files from this version on: later versions only added columns that
the reads do not need (4: threads.lease_seconds, jobs.claim_seconds) or do without (5:
threads.graph: an older file's threads are bound to no graph; 6: the store's tables, which
an older file has none of: its store is empty)."""
STORE_FROM = 6
"""The version whose file holds the store's tables."""
GRAPHS_FROM = 5
"""The version whose threads record their graph."""
APPLICATION_ID = 0x53544D43  # "STMC": marks a file as ours, so a foreign database is refused

_SCHEMA = new_tables(SQLITE)

# version -> SQL that upgrades a file from that version to the next one
_MIGRATIONS: dict[int, str] = {
    1: f"""
ALTER TABLE pending_writes ADD COLUMN meta TEXT;
ALTER TABLE checkpoints ADD COLUMN marked_at REAL;
{cache_table(SQLITE)}""",
    2: jobs_table(SQLITE),
    3: "ALTER TABLE threads ADD COLUMN lease_seconds REAL; "
       "ALTER TABLE jobs ADD COLUMN claim_seconds REAL",
    4: "ALTER TABLE threads ADD COLUMN graph TEXT",
    5: store_tables(SQLITE),
}


def prepare_file(path: Path, busy_timeout: float) -> None:
    """Check that `path` is a fresh file or one of our databases; create or migrate the schema.

    Nothing is written to a file that is not ours or is from a newer version. Processes that
    open one new file at the same moment race to switch it to WAL, which SQLite answers with
    "database is locked" at once rather than waiting: the loser waits and checks again.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return _prepare_file_once(path, busy_timeout)
        except CheckpointError as exc:
            locked = isinstance(exc.__cause__, sqlite3.OperationalError) and \
                "locked" in str(exc.__cause__)
            if not locked or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _prepare_file_once(path: Path, busy_timeout: float) -> None:
    if path.exists() and path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not a checkpoint database file.")
    # The file is identified through SQLite only: a descriptor of our own on it, once closed,
    # would drop every POSIX lock this process holds on it — its open connections' locks too
    # (SQLite's "How To Corrupt An SQLite Database File", 2.2) — and corrupt the database.
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise storage_error(path, exc, "open the checkpoint database",
                            busy_timeout=busy_timeout) from exc
    try:
        app_id, tables = _identify(conn)
        if not tables and app_id == 0:
            # before anything writes the header (switching to WAL does): a file can only take
            # auto-vacuum while it is new, and with it a prune gives space back (retention)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not _identify(conn)[1]:  # another process may have won the race
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_version(version) VALUES (?)",
                                 (SCHEMA_VERSION,))
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return
        if app_id != APPLICATION_ID:
            raise _foreign(path, tables)
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if not isinstance(version, int):
            raise _unversioned(path, version)
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{str(path)!r} was written by a newer statemachine (schema version {version}, "
                f"this one reads up to {SCHEMA_VERSION}); it was not modified. Upgrade "
                "statemachine to read it.")
        conn.execute("PRAGMA journal_mode=WAL")
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # read again under the write lock: another process may have migrated it
                version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
                    version += 1
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.DatabaseError as exc:
        raise storage_error(path, exc, "open the checkpoint database",
                            busy_timeout=busy_timeout) from exc
    finally:
        conn.close()


class transaction:
    """One transaction on `conn` (`write`: BEGIN IMMEDIATE takes the write lock at once, so
    what is read is still true when it is changed): committed when the block ends, rolled
    back when it (or the COMMIT) raises. A class, not a generator: a step commits through it."""

    __slots__ = ("conn", "write")

    def __init__(self, conn: sqlite3.Connection, *, write: bool = True) -> None:
        self.conn = conn
        self.write = write

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn = self.conn
        if kind is None:
            try:
                conn.execute("COMMIT")
                return
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if conn.in_transaction:
            conn.execute("ROLLBACK")


async def connect_async(path: Path, busy_timeout: float,
                        synchronous: str = "NORMAL") -> aiosqlite.Connection:
    """The connection `async` code writes through, on aiosqlite's thread."""
    pending = aiosqlite.connect(path, isolation_level=None)
    # aiosqlite's worker thread is not a daemon: a program that forgot close() would hang
    # at exit. Every commit is awaited, so at exit no write of ours is in flight.
    pending._thread.daemon = True
    conn = await pending
    await conn.execute(f"PRAGMA synchronous={synchronous}")
    await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def connect_direct(path: Path, busy_timeout: float,
                   synchronous: str = "NORMAL") -> sqlite3.Connection:
    """The connection of the sync API and of transactions, used from any thread.
    `synchronous`: NORMAL (a commit survives a killed process) or FULL (also a power loss:
    an fsync per commit)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout,
                           check_same_thread=False, factory=DirectConnection)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                    "name = 'store_items'").fetchone():
        for trigger in VECTORS_FOLLOW_ITEMS:
            conn.execute(trigger)
        conn.vectors_follow_items = True
    return conn


class DirectConnection(sqlite3.Connection):
    """A connection `connect_direct` opened: it may carry the triggers below."""

    vectors_follow_items = False
    """Whether this connection removes an item's vectors itself when the item changes or
    goes (`VECTORS_FOLLOW_ITEMS`), so a write of the item need not (`StoreSQL.apply`)."""


VECTORS_FOLLOW_ITEMS = tuple(
    f"CREATE TEMP TRIGGER IF NOT EXISTS store_item_{name} AFTER {event} ON main.store_items "
    "BEGIN DELETE FROM store_vectors WHERE namespace = old.namespace AND key = old.key; END"
    for name, event in (("changed", "UPDATE OF value"), ("removed", "DELETE")))
"""An item's embeddings go when its value changes or it is removed, inside SQLite: a memory
written with a step costs one statement, not two (a DELETE of stale vectors). The triggers
are TEMP, made on each connection that writes (`connect_direct`) when the file has the
store's tables, so the file's schema is unchanged; a connection without them (an in-memory
database has its own, empty) deletes stale vectors itself."""


def open_read_only(path: Path, busy_timeout: float) -> tuple[sqlite3.Connection, bool, int]:
    """A read-only connection to one of our databases of a version it can read, whether it
    is immutable (see `connect_read_only`), and its schema version."""
    if not path.is_file():
        raise CheckpointError(f"no database file {str(path)!r}.")
    try:
        conn, immutable = connect_read_only(path, busy_timeout)
        app_id, tables = _identify(conn)
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] \
            if app_id == APPLICATION_ID else None
    except sqlite3.Error as exc:
        raise storage_error(path, exc, "read the checkpoint database",
                            busy_timeout=busy_timeout) from exc
    if app_id != APPLICATION_ID:
        conn.close()
        raise _foreign(path, tables)
    if not isinstance(version, int):
        conn.close()
        raise _unversioned(path, version)
    if not READABLE_FROM <= version <= SCHEMA_VERSION:
        conn.close()
        raise CheckpointError(
            f"{str(path)!r} has schema version {version}; this statemachine reads versions "
            f"{READABLE_FROM} to {SCHEMA_VERSION}" + (
                " (open it once with a read-write SQLiteCheckpointer to migrate it)."
                if version is not None and version < SCHEMA_VERSION
                else "; upgrade statemachine to read it."))
    return conn, immutable, version


def connect_read_only(path: Path, busy_timeout: float) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection, and whether it had to be immutable.

    Reading a WAL database takes its -shm file, which SQLite creates when missing: while a
    writer has the file open it exists. Where it is missing and cannot be made (read-only
    media, a directory this user cannot write), nobody has the file open, so its main file is
    all there is: it is read as immutable, without locks. A write-ahead log left beside it
    (a writer that crashed) would be ignored that way, so that case is refused instead."""
    try:
        return _connect(path, busy_timeout, "mode=ro"), False
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise CheckpointError(
            f"cannot read {str(path)!r}: its write-ahead log ({wal.name}) holds commits that "
            "SQLite can only read with a -shm file beside it, which cannot be created there "
            "(read-only media or directory). Copy the database and its -wal file to a "
            "writable place, or open it once where it is writable.")
    return _connect(path, busy_timeout, "immutable=1"), True


def _connect(path: Path, busy_timeout: float, mode: str) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?{mode}"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=busy_timeout)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens it for real
    except BaseException:
        conn.close()
        raise
    return conn


def _unversioned(path: Path, version: object) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is a statemachine database whose schema_version table holds "
        f"{'no version' if version is None else repr(version)}: the file is damaged or was "
        "edited by hand; it was not modified. Restore it from a backup.")


def _foreign(path: Path, tables: set[str]) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is a SQLite database of another application (tables: "
        f"{', '.join(sorted(tables)) or 'none'}); it was not modified. Use a separate file for "
        "checkpoints.")


def _identify(conn: sqlite3.Connection) -> tuple[int, set[str]]:
    """The file's application id and tables, read from one snapshot: read apart, another
    process creating the schema in between looks like a foreign database (tables, no id)."""
    outer = conn.in_transaction
    if not outer:
        conn.execute("BEGIN")
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        if not outer:
            conn.execute("COMMIT")
    return app_id, tables


__all__ = ["APPLICATION_ID", "READABLE_FROM", "SCHEMA_VERSION", "connect_async", "connect_direct",
           "connect_read_only", "open_read_only", "prepare_file"]
