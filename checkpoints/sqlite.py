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
auto-vacuum so a prune can give the freed pages back to the file system. Opening, checking and
migrating the file is sqlite_file.py.

Layout (readable with the `sqlite3` shell; all payloads are JSON):

    schema_version(version)                       one row; migrations step it up
    threads(key, thread_id, owner, owner_pid, owner_host, lease_expires, created_at)
    checkpoints(id, thread, parent, step, kind, status, next, writes, snapshot, extra, error,
                created_at, marked_at)            one row per committed step (and, after a
                                                  removal took the newest, one placeholder of
                                                  thread 0 keeping the highest id taken)
    pending_writes(checkpoint, node, idx, writes, meta)  task updates of an unfinished step
    cache(namespace, key, value, expires_at)      cached node results (CachePolicy)
    jobs(thread_id, input, event, base, status, attempts, max_attempts, available_at,
         claimed_by, claim_key, claimed_until, error, submitted_at, finished_at)
                                                  the work queue (submit / statemachine worker)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import aiosqlite

from .base import (
    DEFAULT_LEASE_SECONDS,
    Chain,
    Checkpointer,
    CheckpointRecord,
    ClaimedJob,
    JobInfo,
    NewCheckpoint,
    Owner,
    PendingByCheckpoint,
    PendingWrite,
    Removed,
    ThreadInfo,
    busy_error,
    checkpoint_number,
    job_busy_error,
)
from .errors import (
    CheckpointError,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFoundError,
)
from .heartbeat import LeaseHeartbeat
from .retention import (
    Plan,
    busy_message,
    check_keep_last,
    check_prune,
    not_found_message,
    plan_delete,
    plan_prune,
    plan_trim,
    removed_from,
)
from .rows import (
    chain_from_rows,
    jobs_from_rows,
    pending_from_rows,
    process_alive,
    record_from_row,
    threads_from_rows,
)
from .sqlite_errors import bad_value_error, storage_error
from .sqlite_file import SCHEMA_VERSION as SCHEMA_VERSION  # the file format this code writes
from .sqlite_file import (
    connect_async,
    connect_direct,
    connect_read_only,
    open_read_only,
    prepare_file,
)
from .sqlite_retention import (
    candidate_roots,
    carry_out,
    file_bytes,
    has_job,
    read_family,
    shrink,
    thread_exists,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_COLUMNS = "c.id, t.thread_id, c.parent, c.step, c.kind, c.status, c.next, c.writes, " \
           "c.snapshot, c.extra, c.error, c.created_at"

_LOAD = f"""
WITH RECURSIVE chain(n, id) AS (
    SELECT 0, c.id FROM checkpoints c
    WHERE c.thread = (SELECT key FROM threads WHERE thread_id = :thread)
      AND c.id = coalesce(:checkpoint, (SELECT max(id) FROM checkpoints
                  WHERE thread = (SELECT key FROM threads WHERE thread_id = :thread)))
    UNION ALL
    -- parents are strictly older (smaller ids): a damaged or crafted cycle ends the chain
    -- early, where chain_from_rows reports it, instead of recursing forever
    SELECT chain.n + 1, cur.parent FROM chain JOIN checkpoints cur ON cur.id = chain.id
    WHERE cur.snapshot IS NULL AND cur.parent IS NOT NULL AND cur.parent < cur.id
      AND cur.id IS NOT :known
)
SELECT 'c', chain.n, {_COLUMNS.replace("c.snapshot", "iif(c.id IS :known, NULL, c.snapshot)")}
FROM chain JOIN checkpoints c ON c.id = chain.id
JOIN threads t ON t.key = c.thread
UNION ALL
SELECT 'p', NULL, p.checkpoint, p.node, p.idx, p.writes, p.meta, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL
FROM pending_writes p WHERE p.checkpoint IN (SELECT id FROM chain)
"""
"""A checkpoint, the checkpoints back to its nearest snapshot, and their pending writes, in one
round trip: rows tagged 'c' (checkpoint, with its distance from the head) or 'p' (a pending
write)."""

_FENCE = "SELECT key FROM threads WHERE thread_id = ? AND owner = ?"
_RELEASE = "UPDATE threads SET owner = NULL, owner_pid = NULL, owner_host = NULL, " \
           "lease_expires = NULL WHERE thread_id = ? AND owner = ?"
_PRUNE_BATCH = 20
"""Thread families a prune removes per transaction: the write lock is given up between
batches, so other processes' runs commit while a large prune goes on."""


_Rows = list[tuple]


class SQLiteCheckpointer(Checkpointer):
    """Checkpoints in a SQLite file. Many threads and graphs can share one file.

    The file is checked when the checkpointer is made: a file that is not SQLite, belongs to
    another application or has a newer schema is refused with `CheckpointError`, untouched.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, read_only: bool = False,
                 busy_timeout: float = 10.0, keep_last: int | None = None) -> None:
        """`read_only=True` opens an existing database with SQLite's read-only mode: every
        read works, every write (a run, a lease, the schema) is refused, and the file is never
        changed — for viewers and tools that only look. A file on read-only media, or in a
        directory this user cannot write, is opened as immutable.

        `busy_timeout` is how many seconds a statement waits for another process's write lock
        before the run stops with a `CheckpointError` naming the file.

        `keep_last`: when set, each release trims the thread to its newest `keep_last`
        checkpoints (see `Checkpointer.keep_last`); the pages freed are reused by later steps,
        so the file stops growing (`prune` also gives them back to the file system)."""
        from ._sync import run_sync

        self.keep_last = check_keep_last(keep_last)
        self.path = Path(path)
        self._where = str(self.path)  # how errors about damaged rows name the store
        self.lease_seconds = lease_seconds
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self._direct_lock = threading.Lock()
        self._closed = threading.Event()  # an object, so in_caller_thread() views share it
        self._unreleased: dict[str, str] = {}  # thread -> owner token whose release failed
        self._immutable = False  # a read-only file read without locks: reopened for each read
        self._stalled: dict[str, tuple[str | None, float | None, float]] = {}
        """Running jobs whose claims look lapsed: (claim key, expiry, first seen so, on our
        monotonic clock); taken once one stood still for its claim's period."""
        renewer = _Renewer(self.path, lease_seconds, busy_timeout)
        self._heartbeat = LeaseHeartbeat(lease_seconds, f"statemachine-lease:{self.path.name}",
                                         renewer.renew, renewer.close)
        if read_only:  # no writer connection, no aiosqlite thread: reads in the caller's thread
            self._direct, self._immutable = open_read_only(self.path, busy_timeout)
            self._conn: aiosqlite.Connection | None = None
            self._in_caller_thread = True
            return
        prepare_file(self.path, busy_timeout)
        try:
            self._conn = run_sync(lambda: connect_async(self.path, busy_timeout))
            self._direct = connect_direct(self.path, busy_timeout)
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc, "open the checkpoint database",
                                busy_timeout=busy_timeout) from exc
        self._in_caller_thread = False

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"SQLiteCheckpointer({str(self.path)!r}{mode})"

    # -- leases ------------------------------------------------------------------------------

    async def acquire(self, thread_id: str, owner: Owner) -> None:
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
        now = time.time()
        cursor = await self._execute(
            f"take thread {thread_id!r}",
            "INSERT INTO threads(thread_id, owner, owner_pid, owner_host, lease_expires, "
            "lease_seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(thread_id) "
            "DO UPDATE SET owner = excluded.owner, owner_pid = excluded.owner_pid, "
            "owner_host = excluded.owner_host, lease_expires = excluded.lease_expires, "
            "lease_seconds = excluded.lease_seconds WHERE threads.owner IS NULL",
            (thread_id, owner.token, owner.pid, owner.host, now + self.lease_seconds,
             self.lease_seconds, now))
        if cursor[0] != 1 and not await self._take_held(thread_id, owner):
            raise busy_error(thread_id)
        self._heartbeat.hold(thread_id, owner.token)

    async def _take_held(self, thread_id: str, owner: Owner) -> bool:
        watched: tuple[str, float | None] | None = None
        started = time.monotonic()
        while True:
            holder = await self._holder(thread_id)
            if holder is None:  # released meanwhile
                return await self._take_from(thread_id, owner, None, None)
            token, pid, host, expires, period = holder
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

    async def _holder(self, thread_id: str
                      ) -> tuple[str, int, str, float | None, float | None] | None:
        rows = await self._fetchall(
            f"read who holds thread {thread_id!r}",
            "SELECT owner, owner_pid, owner_host, lease_expires, lease_seconds FROM threads "
            "WHERE thread_id = ? AND owner IS NOT NULL", (thread_id,))
        return rows[0] if rows else None

    async def _take_from(self, thread_id: str, owner: Owner, token: str | None,
                         expires: float | None) -> bool:
        """Take the thread if it is still held by `token` with the lease seen (None: free)."""
        cursor = await self._execute(
            f"take thread {thread_id!r} over",
            "UPDATE threads SET owner = ?, owner_pid = ?, owner_host = ?, lease_expires = ?, "
            "lease_seconds = ? WHERE thread_id = ? AND owner IS ? AND lease_expires IS ?",
            (owner.token, owner.pid, owner.host, time.time() + self.lease_seconds,
             self.lease_seconds, thread_id, token, expires))
        return cursor[0] == 1

    async def release(self, thread_id: str, owner: Owner) -> None:
        self._heartbeat.drop(thread_id, owner.token)
        try:
            if self.keep_last is None:
                await self._release(thread_id, owner.token)
            else:
                await self._release_trimming(thread_id, owner.token, self.keep_last)
        except StorageUnavailableError:
            # a full disk or a lock held too long: tried again by this checkpointer's next
            # acquire and by close(), so the thread does not stay owned until its lease lapses
            self._unreleased[thread_id] = owner.token
            raise

    async def _release(self, thread_id: str, token: str) -> None:
        await self._execute(f"release thread {thread_id!r}", _RELEASE, (thread_id, token))

    async def _release_trimming(self, thread_id: str, token: str, keep_last: int) -> None:
        """Trim the thread to `keep_last` and release it, in one transaction, if `token` still
        holds it. A trim that cannot be planned (damaged rows) is logged and left out: a
        retention setting must never keep a run from giving its thread up."""
        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(_FENCE, (thread_id, token)).fetchone() is None:
                return
            family = read_family(conn, thread_id, holder=token)
            plan = None
            if not family.busy:
                try:
                    plan = plan_trim(family, keep_last)
                except (ValueError, TypeError, KeyError) as exc:  # damaged rows
                    log.warning("thread %r: not trimmed to keep_last=%d on release: %s",
                                thread_id, keep_last, exc)
            if plan is not None:
                carry_out(conn, plan, dry_run=False)
            conn.execute(_RELEASE, (thread_id, token))

        await self._transaction(f"release thread {thread_id!r}", work)

    async def _release_left_over(self) -> None:
        """The releases the store refused earlier, tried again."""
        for thread_id, token in list(self._unreleased.items()):
            with contextlib.suppress(StorageUnavailableError):
                await self._release(thread_id, token)
                self._unreleased.pop(thread_id, None)

    # -- writes (each one statement: atomic and fenced) ---------------------------------------

    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint) -> str:
        cp = checkpoint
        cursor = await self._execute(
            f"commit step {cp.step} of thread {thread_id!r}",
            "INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, snapshot, "
            "extra, error, created_at) SELECT key, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM threads "
            "WHERE thread_id = ? AND owner = ?",
            (None if cp.parent_id is None else int(cp.parent_id), cp.step, cp.kind, cp.status,
             cp.next, cp.writes, cp.snapshot, cp.extra, cp.error,
             time.time() if cp.created_at is None else cp.created_at, thread_id, owner.token))
        if cursor[0] != 1:
            raise busy_error(thread_id, lost=True)
        return str(cursor[1])

    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite) -> None:
        cursor = await self._execute(
            f"save node {write.node!r}'s update of thread {thread_id!r}",
            "INSERT INTO pending_writes(checkpoint, node, idx, writes, meta) "
            f"SELECT ?, ?, ?, ?, ? WHERE EXISTS ({_FENCE})",
            (int(write.checkpoint_id), write.node, write.index, write.writes, write.meta,
             thread_id, owner.token))
        if cursor[0] != 1:
            raise busy_error(thread_id, lost=True)

    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        cursor = await self._execute(
            f"mark thread {thread_id!r} {status}",
            "UPDATE checkpoints SET status = ?, error = ?, snapshot = coalesce(snapshot, ?), "
            f"extra = coalesce(?, extra), marked_at = ? WHERE id = ? AND thread = ({_FENCE})",
            (status, error, snapshot, extra, time.time(), int(checkpoint_id), thread_id,
             owner.token))
        if cursor[0] != 1:
            raise busy_error(thread_id, lost=True)

    async def add_snapshot(self, thread_id: str, owner: Owner, checkpoint_id: str,
                           snapshot: str) -> None:
        doing = f"store a snapshot on checkpoint {checkpoint_id} of thread {thread_id!r}"
        number = checkpoint_number(checkpoint_id)
        changed, _ = await self._execute(
            doing, "UPDATE checkpoints SET snapshot = coalesce(snapshot, ?) WHERE id = ? AND "
            f"thread = ({_FENCE})", (snapshot, number, thread_id, owner.token))
        if changed != 1:
            if not await self._fetchall(doing, _FENCE, (thread_id, owner.token)):
                raise busy_error(thread_id, lost=True)
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoint "
                                      f"{checkpoint_id!r} to store a snapshot on.")

    # -- retention ------------------------------------------------------------------------------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        before = file_bytes(self.path)

        def work(conn: sqlite3.Connection) -> Removed:
            family = read_family(conn, thread_id)
            if not family.threads and not has_job(conn, thread_id):
                raise ThreadNotFoundError(not_found_message(thread_id))
            if family.busy:
                raise ThreadBusyError(busy_message(thread_id, family, "delete"))
            plan = plan_delete(family)
            if thread_id not in plan.threads:  # a queued job, and no thread yet
                plan.threads.insert(0, thread_id)
            pending, jobs = carry_out(conn, plan, dry_run=dry_run)
            return removed_from(plan, pending_writes=pending, jobs=jobs)

        removed = await self._transaction(f"delete thread {thread_id!r}", work,
                                          write=not dry_run)
        return await self._shrunk(removed, before, dry_run)

    async def prune(self, *, thread_id: str | None = None, keep_last: int | None = None,
                    finished_before: float | None = None, dry_run: bool = False) -> Removed:
        """Thread families are removed `_PRUNE_BATCH` to a transaction, so a kill leaves each
        family either pruned or as it was; see `Checkpointer.prune`."""
        check_prune(thread_id, keep_last, finished_before)
        before = file_bytes(self.path)

        def roots(conn: sqlite3.Connection) -> list[str]:
            if thread_id is None:
                return candidate_roots(conn, finished_before)
            if not thread_exists(conn, thread_id):
                raise ThreadNotFoundError(not_found_message(thread_id))
            return [thread_id]

        def batch(names: list[str]) -> Callable[[sqlite3.Connection], tuple]:
            def work(conn: sqlite3.Connection) -> tuple[Plan, list[str], int, int]:
                plan, skipped = plan_prune((read_family(conn, root) for root in names),
                                           keep_last=keep_last,
                                           finished_before=finished_before)
                return plan, skipped, *carry_out(conn, plan, dry_run=dry_run)
            return work

        names = await self._transaction("list threads to prune", roots, write=False)
        plan, skipped, pending, jobs = Plan(), [], 0, 0
        for start in range(0, len(names), _PRUNE_BATCH):
            part, busy, part_pending, part_jobs = await self._transaction(
                "prune threads", batch(names[start:start + _PRUNE_BATCH]), write=not dry_run)
            plan.add(part)
            skipped += busy
            pending, jobs = pending + part_pending, jobs + part_jobs
        removed = removed_from(plan, pending_writes=pending, jobs=jobs, skipped=skipped)
        return await self._shrunk(removed, before, dry_run)

    async def _shrunk(self, removed: Removed, before: int, dry_run: bool) -> Removed:
        """`removed` with the file's sizes, after giving the freed space back (see `shrink`)."""
        if dry_run or not removed.removed_anything:
            return replace(removed, bytes_before=before, bytes_after=None if dry_run else before)

        def run() -> list[str]:
            with self._direct_lock:
                return shrink(self._direct)

        notes = run() if self._in_caller_thread else await asyncio.to_thread(run)
        return replace(removed, bytes_before=before, bytes_after=file_bytes(self.path),
                       notes=(*removed.notes, *notes))

    async def _transaction(self, doing: str, work: Callable[[sqlite3.Connection], T], *,
                           write: bool = True) -> T:
        """`work(conn)` in one transaction on this checkpointer's direct connection: in the
        calling thread for the sync API, else on a worker thread. Several statements must
        commit together here, which aiosqlite's connection cannot promise: another task's
        statement could land inside the transaction. `write` takes the write lock at the start
        (BEGIN IMMEDIATE), so what is read is still true when it is changed."""
        self._check_open()
        if write and self.read_only:
            raise CheckpointError(f"{self!r} is read-only: it cannot run or change threads.")

        def run() -> T:
            with self._failures(doing), self._direct_lock:
                if self._immutable:  # each read a fresh look: a writer may have come
                    self._direct.close()
                    self._direct, self._immutable = connect_read_only(
                        self.path, self.busy_timeout)
                conn = self._direct
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result

        return run() if self._in_caller_thread else await asyncio.to_thread(run)

    # -- reads ----------------------------------------------------------------------------------

    async def load(self, thread_id: str, checkpoint_id: str | None = None, *,
                   known: str | None = None) -> Chain | None:
        number = None if checkpoint_id is None else checkpoint_number(checkpoint_id)
        if checkpoint_id is not None and number is None:
            return None
        known_number = None if known is None else checkpoint_number(known)
        rows = await self._fetchall(f"read thread {thread_id!r}", _LOAD,
                                    {"thread": thread_id, "checkpoint": number,
                                     "known": known_number})
        return chain_from_rows(rows, (3, 4, 5, 6), where=self._where,
                               known=None if known_number is None else str(known_number))

    async def list(self, thread_id: str, *, limit: int | None = None,
                   before: str | None = None) -> list[CheckpointRecord]:
        below = None if before is None else checkpoint_number(before)
        if before is not None and below is None:
            return []
        rows = await self._fetchall(
            f"list the checkpoints of thread {thread_id!r}",
            f"SELECT {_COLUMNS} FROM checkpoints c JOIN threads t ON t.key = c.thread "
            "WHERE t.thread_id = ? AND (? IS NULL OR c.id < ?) ORDER BY c.id DESC LIMIT ?",
            (thread_id, below, below, -1 if limit is None else limit))
        return [record_from_row(row, where=self._where) for row in rows]

    async def list_pending(self, checkpoint_ids: Sequence[str]) -> PendingByCheckpoint:
        if not checkpoint_ids:
            return {}
        marks = ",".join("?" * len(checkpoint_ids))
        rows = await self._fetchall(
            "read pending writes",
            f"SELECT checkpoint, node, idx, writes, meta FROM pending_writes WHERE checkpoint "
            f"IN ({marks})", [int(c) for c in checkpoint_ids])
        return pending_from_rows(rows, where=self._where)

    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None:
        rows = await self._fetchall(
            "read the cache",
            "SELECT value FROM cache WHERE namespace = ? AND key = ? AND "
            "(expires_at IS NULL OR expires_at > ?)",
            (namespace, key, time.time() if now is None else now))
        return rows[0][0] if rows else None

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None:
        start = time.time() if now is None else now
        await self._execute(
            "write the cache",
            "INSERT OR REPLACE INTO cache(namespace, key, value, expires_at) VALUES (?, ?, ?, ?)",
            (namespace, key, value, None if ttl is None else start + ttl))

    async def threads(self, *, limit: int | None = None, offset: int = 0,
                      updated_since: float | None = None) -> builtins.list[ThreadInfo]:
        rows = await self._fetchall(
            "list threads",
            "SELECT t.thread_id, c.status, c.step, c.id, coalesce(c.marked_at, c.created_at), "
            "c.error, t.owner IS NOT NULL AND t.lease_expires > ?, t.owner_pid, t.owner_host "
            "FROM threads t JOIN checkpoints c ON c.id = (SELECT max(id) FROM checkpoints "
            "WHERE thread = t.key) WHERE (? IS NULL OR coalesce(c.marked_at, c.created_at) > ?) "
            "ORDER BY coalesce(c.marked_at, c.created_at) DESC, c.id DESC LIMIT ? OFFSET ?",
            (time.time(), updated_since, updated_since, -1 if limit is None else limit, offset))
        return threads_from_rows(rows, where=self._where)

    # -- the work queue (each change one statement; SQLite runs one writer at a time, so a
    # claim's select-then-update cannot interleave with another's) ----------------------------

    async def enqueue(self, thread_id: str, *, input: str | None, event: str | None,
                      base: str | None, max_attempts: int, graph: str = "") -> None:
        now = time.time()
        changed, _ = await self._execute(
            f"queue thread {thread_id!r}",
            "INSERT INTO jobs(thread_id, input, event, base, status, attempts, max_attempts, "
            "available_at, submitted_at, graph) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?) "
            "ON CONFLICT(thread_id) DO UPDATE SET input = excluded.input, graph = excluded.graph, "
            "event = excluded.event, base = excluded.base, status = 'queued', attempts = 0, "
            "max_attempts = excluded.max_attempts, available_at = excluded.available_at, "
            "claimed_by = NULL, claim_key = NULL, claimed_until = NULL, error = NULL, "
            "submitted_at = excluded.submitted_at, finished_at = NULL "
            "WHERE jobs.status NOT IN ('queued', 'running')",
            (thread_id, input, event, base, max_attempts, now, now, graph))
        if changed != 1:
            raise job_busy_error(thread_id)

    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        """The next due queued job; else a running one whose worker stopped renewing its claim,
        judged as leases are (see `acquire`): its claim must have stood still for the claim's
        period on this checkpointer's monotonic clock, over calls, whatever the clocks say."""
        key, now = os.urandom(12).hex(), time.time()
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
        row = rows[0]
        job = ClaimedJob(row[0], key, row[1], row[2], row[3], row[4], row[5])
        self._heartbeat.hold_claim(job.thread_id, key)
        return job

    async def _claim_stalled(self, worker: Owner, graph: str | None, key: str) -> _Rows:
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

    async def finish(self, job: ClaimedJob, *, status: str, error: str | None = None,
                     retry_in: float | None = None, count_attempt: bool = True) -> bool:
        self._heartbeat.drop_claim(job.thread_id, job.claim_key)
        if retry_in is not None:
            changed, _ = await self._execute(
                f"queue thread {job.thread_id!r} again",
                "UPDATE jobs SET status = 'queued', available_at = ?, error = ?, "
                "claimed_by = NULL, claimed_until = NULL, "
                "attempts = attempts - ? WHERE thread_id = ? AND claim_key = ? "
                "AND status = 'running'",
                (time.time() + retry_in, error, 0 if count_attempt else 1, job.thread_id,
                 job.claim_key))
            return changed == 1
        changed, _ = await self._execute(
            f"finish the job of thread {job.thread_id!r}",
            "UPDATE jobs SET status = ?, error = ?, finished_at = ?, claimed_by = NULL, "
            "claimed_until = NULL WHERE thread_id = ? AND claim_key = ?",
            (status, error, time.time(), job.thread_id, job.claim_key))
        return changed == 1

    async def jobs(self, *, graph: str | None = None, thread_id: str | None = None,
                   open_only: bool = False) -> builtins.list[JobInfo]:
        rows = await self._fetchall(
            "list jobs",
            "SELECT thread_id, status, attempts, max_attempts, available_at, error, "
            "submitted_at, finished_at, claimed_by, graph FROM jobs WHERE (? IS NULL OR "
            "graph = ?) AND (? IS NULL OR thread_id = ?) AND (NOT ? OR status IN ('queued', "
            "'running')) ORDER BY submitted_at, thread_id",
            (graph, graph, thread_id, thread_id, open_only))
        return jobs_from_rows(rows)

    async def aclose(self) -> None:
        if not self._closed.is_set():
            if self._unreleased:
                await self._release_left_over()
            self._closed.set()
            self._heartbeat.stop()
            with self._direct_lock:
                self._direct.close()
            if self._conn is not None:
                # fold the write-ahead log back into the file, so it is whole and compact; a
                # full disk or a reader in the way leaves it for later (every commit is
                # already durable in the log), and closing must not fail for it
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await self._conn.close()

    def in_caller_thread(self) -> SQLiteCheckpointer:
        """This checkpointer, doing its SQL in the calling thread instead of aiosqlite's.

        For the sync API, whose event loop is private: a WAL commit takes ~20 us, while
        handing it to another thread and back costs several times that.
        """
        view = copy.copy(self)
        view._in_caller_thread = True
        return view

    async def _execute(self, doing: str, sql: str, params: Sequence[object] | dict[str, object]
                       ) -> tuple[int, int | None]:
        """Run one statement (its own transaction): (rows changed, last row id). `doing` says
        what it is for, in the `CheckpointError` that a failure of SQLite becomes."""
        self._check_open()
        if self.read_only:
            raise CheckpointError(f"{self!r} is read-only: it cannot run or change threads.")
        with self._failures(doing):
            if self._in_caller_thread:
                with self._direct_lock:
                    cursor = self._direct.execute(sql, params)
                    return cursor.rowcount, cursor.lastrowid
            assert self._conn is not None
            async_cursor = await self._conn.execute(sql, params)
            return async_cursor.rowcount, async_cursor.lastrowid

    async def _fetchall(self, doing: str, sql: str,
                        params: Sequence[object] | dict[str, object], *, write: bool = False
                        ) -> _Rows:
        self._check_open()
        if write and self.read_only:
            raise CheckpointError(f"{self!r} is read-only: it cannot run or change threads.")
        with self._failures(doing):
            if self._in_caller_thread:
                with self._direct_lock:
                    if self._immutable:  # each read a fresh look: a writer may have come
                        self._direct.close()
                        self._direct, self._immutable = connect_read_only(
                            self.path, self.busy_timeout)
                    return self._direct.execute(sql, params).fetchall()
            assert self._conn is not None
            return [tuple(row) for row in await self._conn.execute_fetchall(sql, params)]

    @contextlib.contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """SQLite's failures while `doing` something, as the errors a user can act on."""
        try:
            yield
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc, doing, busy_timeout=self.busy_timeout) from exc
        except UnicodeEncodeError as exc:
            raise bad_value_error(self.path, exc, doing) from None

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.")




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
