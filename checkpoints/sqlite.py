"""`SQLiteCheckpointer`: checkpoints in one SQLite file, through aiosqlite.

Commit protocol: every write is a single SQL statement, hence its own atomic transaction, and
each one is fenced — it only takes effect if the thread is still owned by the writing run
(`INSERT ... SELECT ... FROM threads WHERE owner = ?`). So a committed step costs one round
trip to the database thread, a half-written checkpoint cannot exist, and a run that lost its
lease cannot fork the history. The file runs in WAL mode with synchronous=NORMAL: a commit
survives a killed process; the last commits before a power loss may roll back, never corrupt.

Retention (delete_thread, prune, a release with keep_last) is the exception: its reads and
deletes must commit together, so each runs as one BEGIN IMMEDIATE transaction on the direct
connection (see `_transaction` and sqlite_retention.py). Files are made with incremental
auto-vacuum so a prune can give the freed pages back to the file system.

The SQL both SQL stores share, and what is done with its answers, is `SQLCheckpointer`'s
(sql_store.py); here are the connections, leases and claims judged on this machine's clock,
and retention's file sizes. Opening, checking and migrating the file is sqlite_file.py.

Layout (readable with the `sqlite3` shell; all payloads are JSON; sql_schema.py):

    schema_version(version)                       one row; migrations step it up
    threads(key, thread_id, owner, owner_pid, owner_host, lease_expires, created_at,
            lease_seconds)
    checkpoints(id, thread, parent, step, kind, status, next, writes, snapshot, extra, error,
                created_at, marked_at)            one row per committed step (and, after a
                                                  removal took the newest, one placeholder of
                                                  thread 0 keeping the highest id taken)
    pending_writes(checkpoint, node, idx, writes, meta)  task updates of an unfinished step
    cache(namespace, key, value, expires_at)      cached node results (CachePolicy)
    jobs(thread_id, input, event, base, status, attempts, max_attempts, available_at,
         claimed_by, claim_key, claimed_until, error, submitted_at, finished_at, graph,
         claim_seconds)                           the work queue (submit / statemachine worker)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from .base import (
    DEFAULT_LEASE_SECONDS,
    ClaimedJob,
    HeadMark,
    Lease,
    Owner,
    Removed,
    busy_error,
    unique_key,
)
from .errors import CheckpointError, StorageUnavailableError
from .heartbeat import LeaseHeartbeat
from .rows import process_alive
from .sql_dialect import SQLITE
from .sql_retention import Connection
from .sql_statements import Statements
from .sql_store import Params, Rows, SQLCheckpointer, small
from .sqlite_errors import failures, storage_error
from .sqlite_file import (
    GRAPHS_FROM,
    connect_async,
    connect_direct,
    connect_read_only,
    open_read_only,
    prepare_file,
    transaction,
)
from .sqlite_file import SCHEMA_VERSION as SCHEMA_VERSION  # the file format this code writes
from .sqlite_loop import LoopWriter, Missed
from .sqlite_retention import RETENTION, file_bytes, shrink
from .store_sql import StoreSQL

log = logging.getLogger(__name__)
T = TypeVar("T")


class SQLiteCheckpointer(SQLCheckpointer):
    """Checkpoints in a SQLite file. Many threads and graphs can share one file.

    The file is checked when the checkpointer is made: a file that is not SQLite, belongs to
    another application or has a newer schema is refused with `CheckpointError`, untouched.
    """

    _sql = Statements(SQLITE)
    _store_sql = StoreSQL(SQLITE)
    _graphs_from = GRAPHS_FROM
    _retention = RETENTION
    _prune_batch = 20
    """Thread families a prune removes per transaction: the write lock is given up between
    batches, so other processes' runs commit while a large prune goes on."""
    _log = log

    def __init__(self, path: str | os.PathLike[str], *,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, read_only: bool = False,
                 busy_timeout: float = 10.0, keep_last: int | None = None,
                 synchronous: Literal["normal", "full"] = "normal") -> None:
        """`read_only=True` opens an existing database with SQLite's read-only mode: every
        read works, every write (a run, a lease, the schema) is refused, and the file is never
        changed — for viewers and tools that only look. A file on read-only media, or in a
        directory this user cannot write, is opened as immutable.

        `busy_timeout` is how many seconds a statement waits for another process's write lock
        before the run stops with a `CheckpointError` naming the file.

        `keep_last`: when set, each release trims the thread to its newest `keep_last`
        checkpoints (see `Checkpointer.keep_last`); the pages freed are reused by later steps,
        so the file stops growing (`prune` also gives them back to the file system).

        `synchronous`: "normal" (the default) makes every commit survive the process being
        killed at any moment, but on some file systems not a power loss or an OS crash, which
        can take the last commits back (never corrupt the file). "full" survives those too:
        each commit waits for an fsync (see benchmarks/RESULTS.md for its cost), and async
        runs commit in a thread, so a slow disk never holds up the event loop."""
        from ._sync import run_sync

        super().__init__(lease_seconds=lease_seconds, read_only=read_only, keep_last=keep_last)
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}.")
        self.synchronous = synchronous
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._direct_lock = threading.Lock()
        self._unreleased: dict[str, str] = {}  # thread -> owner token whose release failed
        self._immutable = False  # a read-only file read without locks: reopened for each read
        self._stalled: dict[str, tuple[str | None, float | None, float]] = {}
        """Running jobs whose claims look lapsed: (claim key, expiry, first seen so, on our
        monotonic clock); taken once one stood still for its claim's period."""
        renewer = _Renewer(self.path, lease_seconds, busy_timeout)
        self._heartbeat = LeaseHeartbeat(lease_seconds, f"statemachine-lease:{self.path.name}",
                                         renewer.renew, renewer.close)
        self._version = SCHEMA_VERSION
        if read_only:  # no writer connection, no aiosqlite thread: reads in the caller's thread
            self._direct, self._immutable, self._version = open_read_only(self.path,
                                                                          busy_timeout)
            self._conn: aiosqlite.Connection | None = None
            self._on_loop: LoopWriter | None = None
            self._in_caller_thread = True
            return
        prepare_file(self.path, busy_timeout)
        pragma = synchronous.upper()
        try:
            self._conn = run_sync(lambda: connect_async(self.path, busy_timeout, pragma))
            self._direct = connect_direct(self.path, busy_timeout, pragma)
            self._on_loop = LoopWriter(
                self.path, lambda timeout: connect_direct(self.path, timeout, pragma)
            ) if synchronous == "normal" else None
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc, "open the checkpoint database",
                                busy_timeout=busy_timeout) from exc

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        if self.synchronous != "normal":
            mode += f", synchronous={self.synchronous!r}"
        return f"SQLiteCheckpointer({str(self.path)!r}{mode})"

    def commits_memory_of(self, store: Any) -> bool:
        from .store_sqlite import SQLiteStore

        return isinstance(store, SQLiteStore) and same_file(store.path, self.path)

    def open_store(self, **options: Any) -> Any:
        from .store_sqlite import SQLiteStore

        return SQLiteStore(self.path, busy_timeout=self.busy_timeout, **options)

    @property
    def _where(self) -> str:
        return str(self.path)

    # -- leases ------------------------------------------------------------------------------

    async def _take(self, thread_id: str, owner: Owner) -> Lease:
        """Take a free thread at once; a held one only when its holder's process is gone (on
        this machine) or its heartbeat has stood still for a whole lease (then this call waits
        that long: it is logged at INFO).

        Whether a lease ran out is never judged by comparing the holder's clock with ours: a
        lease that looks expired is watched, on our monotonic clock, for one lease period, and
        taken only if no beat moved it meanwhile (the holder's lease period, stored with the
        lease: it beats three times in one). A resumer whose clock runs ahead therefore waits
        and then finds the holder alive, instead of taking over a live run."""
        if self._unreleased:
            await self._release_left_over()
        taken = await self._fetchall(f"take thread {thread_id!r}", _TAKE,
                                     self._take_params(thread_id, owner), write=True)
        if not taken and not await self._take_held(thread_id, owner):
            raise busy_error(thread_id)
        self._heartbeat.hold(thread_id, owner.token)
        return _lease_of(taken[0]) if taken else Lease(None)

    async def _take_and_put(self, thread_id: str, owner: Owner, params: dict[str, Any],
                            head: HeadMark, graph: str | None) -> tuple[Lease, str | None]:
        """The take, then the input's INSERT if the head read is `head`, in one transaction
        (one commit); a thread held by another goes the way `_take` goes."""
        if self._unreleased:
            await self._release_left_over()
        take, put = self._take_params(thread_id, owner, graph), self._sql.put

        def work(conn: Connection) -> tuple[Lease, str | None] | None:
            taken = conn.execute(_TAKE, take).fetchall()
            if not taken:
                return None
            lease = _lease_of(taken[0])
            read, bound = lease.head, graph is None or lease.graph == graph
            if read is None or not bound or not read.is_as_expected(
                    head, check_created=self.reuses_ids):
                return lease, None
            cursor = conn.execute(put, params)  # fenced on the lease just taken: it lands
            return lease, str(cursor.lastrowid)

        done = await self._transaction(f"take thread {thread_id!r} with its input", work,
                                       small=small(params), writes_first=True)
        if done is None:
            if not await self._take_held(thread_id, owner):
                raise busy_error(thread_id)
            done = Lease(None), None
        self._heartbeat.hold(thread_id, owner.token)
        return done

    def _take_params(self, thread_id: str, owner: Owner, graph: str | None = None
                     ) -> tuple[Any, ...]:
        """`_TAKE`'s parameters; `graph`: what a thread row the take creates is bound to."""
        now = time.time()
        return (thread_id, owner.token, owner.pid, owner.host, now + self.lease_seconds,
                self.lease_seconds, now, graph)

    async def _take_held(self, thread_id: str, owner: Owner) -> bool:
        watched: tuple[str, float | None] | None = None
        started = time.monotonic()
        while True:
            holder = await self._fetchall(
                f"read who holds thread {thread_id!r}",
                "SELECT owner, owner_pid, owner_host, lease_expires, lease_seconds FROM threads "
                "WHERE thread_id = ? AND owner IS NOT NULL", (thread_id,))
            if not holder:  # released meanwhile
                return await self._take_from(thread_id, owner, None, None)
            token, pid, host, expires, period = holder[0]
            if host == owner.host and pid != owner.pid and not process_alive(pid):
                return await self._take_from(thread_id, owner, token, expires)
            period = period or self.lease_seconds  # a lease taken before schema 4
            if renewed(expires, period) or (watched is not None and watched != (token, expires)):
                return False  # live, or it beat while we watched
            if watched is None:
                log.info("thread %r: its lease looks lapsed; watching its holder's heartbeat "
                         "for %.3g s before taking it over", thread_id, period)
                watched = (token, expires)
            if time.monotonic() - started >= period:
                return await self._take_from(thread_id, owner, token, expires)
            await asyncio.sleep(min(period / 10, 0.5))

    async def _take_from(self, thread_id: str, owner: Owner, token: str | None,
                         expires: float | None) -> bool:
        """Take the thread if it is still held by `token` with the lease seen (None: free)."""
        changed = await self._execute(
            f"take thread {thread_id!r} over",
            "UPDATE threads SET owner = ?, owner_pid = ?, owner_host = ?, lease_expires = ?, "
            "lease_seconds = ? WHERE thread_id = ? AND owner IS ? AND lease_expires IS ?",
            (owner.token, owner.pid, owner.host, time.time() + self.lease_seconds,
             self.lease_seconds, thread_id, token, expires))
        return changed == 1

    async def release(self, thread_id: str, owner: Owner) -> None:
        try:
            await super().release(thread_id, owner)
        except StorageUnavailableError:
            # a full disk or a lock held too long: tried again by this checkpointer's next
            # acquire and by close(), so the thread does not stay owned until its lease lapses
            self._unreleased[thread_id] = owner.token
            raise

    async def _release_left_over(self) -> None:
        """The releases the store refused earlier, tried again."""
        for thread_id, token in list(self._unreleased.items()):
            with contextlib.suppress(StorageUnavailableError):
                await self._release(thread_id, token)
                self._unreleased.pop(thread_id, None)

    # -- retention: removals give the freed space back to the file system --------------------

    async def _removal(self, dry_run: bool, remove: Callable[[], Awaitable[Removed]]
                       ) -> Removed:
        """What `remove` removed, with the file's sizes, after giving the freed space back
        (see `shrink`)."""
        before = file_bytes(self.path)
        removed = await remove()
        if dry_run or not removed.removed_anything:
            return replace(removed, bytes_before=before, bytes_after=None if dry_run else before)

        def run() -> list[str]:
            with self._direct_lock:
                return shrink(self._direct)

        notes = run() if self._in_caller_thread else await asyncio.to_thread(run)
        return replace(removed, bytes_before=before, bytes_after=file_bytes(self.path),
                       notes=(*removed.notes, *notes))

    # -- the work queue (each change one statement; SQLite runs one writer at a time, so a
    # claim's select-then-update cannot interleave with another's) ----------------------------

    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        """The next due queued job; else a running one whose worker stopped renewing its claim,
        judged as leases are (see `acquire`): its claim must have stood still for the claim's
        period on this checkpointer's monotonic clock, over calls, whatever the clocks say."""
        key, now = unique_key(), time.time()
        rows = await self._fetchall(
            "claim a job",
            "UPDATE jobs SET status = 'running', claimed_by = ?, claim_key = ?, "
            "claimed_until = ?, claim_seconds = ?, attempts = attempts + 1 WHERE thread_id = "
            "(SELECT thread_id FROM jobs WHERE status = 'queued' AND available_at <= ? "
            "AND (? IS NULL OR graph = ?) ORDER BY available_at, submitted_at LIMIT 1) "
            "RETURNING thread_id, input, event, base, attempts, max_attempts",
            (worker.token, key, now + self.lease_seconds, self.lease_seconds, now, graph,
             graph), write=True)
        if not rows:
            rows = await self._claim_stalled(worker, graph, key)
        if not rows:
            return None
        return self._claimed(rows[0], key)

    async def _claim_stalled(self, worker: Owner, graph: str | None, key: str) -> Rows:
        running = await self._fetchall(
            "read running jobs",
            "SELECT thread_id, claim_key, claimed_until, claim_seconds FROM jobs WHERE "
            "status = 'running' AND (? IS NULL OR graph = ?) ORDER BY available_at, "
            "submitted_at", (graph, graph))
        now, seen = time.time(), time.monotonic()
        watched, self._stalled = self._stalled, {}
        for thread_id, claim, until, period in running:
            period = period or self.lease_seconds  # a claim made before schema 4
            if renewed(until, period):
                continue
            first = watched.get(thread_id)
            since = first[2] if first is not None and first[:2] == (claim, until) else seen
            self._stalled[thread_id] = (claim, until, since)
            if seen - since < period:
                continue
            rows = await self._fetchall(
                f"take over the job of thread {thread_id!r}",
                "UPDATE jobs SET claimed_by = ?, claim_key = ?, claimed_until = ?, "
                "claim_seconds = ?, attempts = attempts + 1 WHERE thread_id = ? AND "
                "status = 'running' AND claim_key IS ? AND claimed_until IS ? "
                "RETURNING thread_id, input, event, base, attempts, max_attempts",
                (worker.token, key, now + self.lease_seconds, self.lease_seconds, thread_id,
                 claim, until), write=True)
            if rows:
                self._stalled.pop(thread_id, None)
                return rows
        return []

    # -- plumbing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if not self._closed.is_set():
            if self._unreleased:
                await self._release_left_over()
            self._closed.set()
            self._heartbeat.stop()
            with self._direct_lock:
                self._direct.close()
            if self._on_loop is not None:  # waits for a fold of the log under way
                await asyncio.to_thread(self._on_loop.close)
            if self._conn is not None:
                # fold the write-ahead log back into the file, so it is whole and compact; a
                # full disk or a reader in the way leaves it for later (every commit is
                # already durable in the log), and closing must not fail for it
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await self._conn.close()

    async def _execute(self, doing: str, sql: str, params: Params) -> int:
        return (await self._write(doing, sql, params))[0]

    async def _write(self, doing: str, sql: str, params: Params) -> tuple[int, int | None]:
        """Run one statement (its own transaction): (rows changed, last row id). The async
        API runs a small one on the event loop's thread when it need not wait
        (sqlite_loop.py), else on aiosqlite's thread."""
        self._check_usable(write=True)
        with self._failures(doing):
            if self._in_caller_thread:
                with self._direct_lock:
                    cursor = self._direct.execute(sql, params)
                    return cursor.rowcount, cursor.lastrowid
            if self._on_loop is not None and small(params):
                done = await self._on_loop.arun(
                    lambda conn: _changed(conn.execute(sql, params)))
                if not isinstance(done, Missed):
                    return done
            assert self._conn is not None
            async_cursor = await self._conn.execute(sql, params)
            return async_cursor.rowcount, async_cursor.lastrowid

    async def _fetchall(self, doing: str, sql: str, params: Params, *,
                        write: bool = False) -> Rows:
        self._check_usable(write=write)
        with self._failures(doing):
            if self._in_caller_thread:
                with self._direct_lock:
                    return self._reader().execute(sql, params).fetchall()
            if self._on_loop is not None:  # see _write; a read's rows are decoded on the
                # loop anyway, which takes longer than SQLite takes to hand them over
                done = await self._on_loop.arun(
                    lambda conn: conn.execute(sql, params).fetchall(), write=write)
                if not isinstance(done, Missed):
                    return done
            assert self._conn is not None
            return [tuple(row) for row in await self._conn.execute_fetchall(sql, params)]

    async def _write_once(self, doing: str, sql: str, landed: str, params: Params) -> Rows:
        # a statement here runs once (it commits or raises) and writes one row or none
        changed, row_id = await self._write(doing, sql, params)
        return [(row_id,)] if changed == 1 else []

    async def _transaction(self, doing: str, work: Callable[[Connection], T], *,
                           write: bool = True, small: bool = False,
                           writes_first: bool = False) -> T:
        """`work(conn)` in one transaction on this checkpointer's direct connection: in the
        calling thread for the sync API, else on a worker thread. Several statements must
        commit together here, which aiosqlite's connection cannot promise: another task's
        statement could land inside the transaction. `write` takes the write lock at the start
        (BEGIN IMMEDIATE), so what is read is still true when it is changed. A `small` one
        is tried on the event loop's thread first (sqlite_loop.py): `work` may then run twice,
        the first run rolled back whole. `writes_first`: work's first statement writes, and
        takes the write lock there (with the same busy wait as a statement of its own), so a
        plain BEGIN does, which costs a step's commit less than BEGIN IMMEDIATE."""
        if self._in_caller_thread:
            return self._transaction_here(doing, work, write=write, writes_first=writes_first)
        self._check_usable(write=write)
        lock = write and not writes_first
        if small and self._on_loop is not None:
            with self._failures(doing):
                done = await self._on_loop.arun(
                    lambda conn: _in_transaction(conn, work, lock))
            if not isinstance(done, Missed):
                return done
        return await asyncio.to_thread(self._transaction_here, doing, work, write=write,
                                       writes_first=writes_first)

    def _transaction_here(self, doing: str, work: Callable[[Connection], T], *,
                          write: bool = True, writes_first: bool = False) -> T:
        self._check_usable(write=write)
        with self._failures(doing), self._direct_lock:
            return _in_transaction(self._reader(), work, write and not writes_first)

    def _failures(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """SQLite's failures while `doing` something, as the errors a user can act on."""
        return failures(self.path, doing, self.busy_timeout)

    def _check_usable(self, *, write: bool) -> None:
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.")
        if write and self.read_only:
            raise self._read_only_error()

    def _reader(self) -> sqlite3.Connection:
        """The direct connection, to use under `_direct_lock`. A read-only file read without
        locks is opened again for each read: a writer may have come since."""
        if self._immutable:
            self._direct.close()
            self._direct, self._immutable = connect_read_only(self.path, self.busy_timeout)
        return self._direct


_HEAD_MARK = ", ".join(
    f"(SELECT {column} FROM checkpoints WHERE thread = threads.key ORDER BY id DESC LIMIT 1)"
    for column in ("id", "created_at", "marked_at"))
"""The head's identity (`HeadMark`), for the statement taking the thread to return with it:
three lookups of one index entry each, in the statement that runs anyway. SQLite runs one
writer at a time, on a snapshot taken with the write lock, so they read the head as it is
(PostgreSQL's statement may have waited for the row: it reads the head with `head_mark`)."""


_TAKE = (
    "INSERT INTO threads(thread_id, owner, owner_pid, owner_host, lease_expires, "
    "lease_seconds, created_at, graph) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(thread_id) "
    "DO UPDATE SET owner = excluded.owner, owner_pid = excluded.owner_pid, "
    "owner_host = excluded.owner_host, lease_expires = excluded.lease_expires, "
    "lease_seconds = excluded.lease_seconds WHERE threads.owner IS NULL "
    f"RETURNING coalesce(graph, ''), {_HEAD_MARK}")
"""Taking a free thread, returning its binding and its head (`_lease_of`). A row it creates
is bound to the graph given (None: to none); a row that exists keeps its binding."""


def _lease_of(row: Sequence[Any]) -> Lease:
    """The `Lease` a taking statement returned: the graph, then the `_HEAD_MARK` columns (a
    damaged head says nothing here: the load that follows reports it)."""
    head_id, created_at, marked_at = row[1], row[2], row[3]
    try:
        head: HeadMark | None = HeadMark(
            None if head_id is None else str(head_id),
            None if created_at is None else float(created_at),
            None if marked_at is None else float(marked_at))
    except (TypeError, ValueError):
        head = None
    return Lease(str(row[0]), head)


def _changed(cursor: sqlite3.Cursor) -> tuple[int, int | None]:
    return cursor.rowcount, cursor.lastrowid


def _in_transaction(conn: sqlite3.Connection, work: Callable[[Connection], T],
                    write: bool) -> T:
    with transaction(conn, write=write) as held:
        return work(held)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative paths resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def renewed(expires: float | None, period: float) -> bool:
    """Whether a lease or claim reads as live by our clock: not yet expired, and not further
    ahead than one period (a beat sets it one period ahead of the holder's clock; further
    ahead, the holder's clock runs fast and the lease is watched like a lapsed one)."""
    now = time.time()
    return expires is not None and now <= expires <= now + 1.5 * period


class _Renewer:
    """How a SQLite file renews leases and claims: on a connection of the heartbeat's own."""

    def __init__(self, path: Path, lease_seconds: float, busy_timeout: float) -> None:
        self._path, self._lease, self._busy_timeout = path, lease_seconds, busy_timeout
        self._conn: sqlite3.Connection | None = None

    def renew(self, leases: list[tuple[str, str]], claims: list[tuple[str, str]]) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None,
                                         timeout=self._busy_timeout, check_same_thread=False)
        until = time.time() + self._lease
        self._conn.executemany(
            "UPDATE threads SET lease_expires = ? WHERE thread_id = ? AND owner = ?",
            [(until, thread_id, token) for thread_id, token in leases])
        self._conn.executemany(
            "UPDATE jobs SET claimed_until = ? WHERE thread_id = ? AND claim_key = ?",
            [(until, thread_id, key) for thread_id, key in claims])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


__all__ = ["SQLiteCheckpointer"]
