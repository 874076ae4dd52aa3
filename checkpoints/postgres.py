"""`PostgresCheckpointer`: checkpoints in PostgreSQL, shared by many worker processes.

The same behaviour as `SQLiteCheckpointer` — each write one fenced statement, so one atomic
transaction that only takes effect while the writing run still holds the thread's lease — on a
server that many machines share. What changes with many machines:

* **Time comes from the server.** Lease expiry is judged by the database's clock, so workers
  whose clocks disagree still agree on who holds a thread.
* **A dropped connection is retried, never duplicated.** Every statement runs through a
  connection pool (psycopg_pool); a connection that breaks is replaced and the statement run
  again, for up to `reconnect_seconds`. Each write carries a key that makes running it twice
  the same as running it once (a checkpoint's `commit_key`, a pending write's primary key), so
  a commit whose acknowledgement was lost with the connection is found, not made again.
* **The work queue** (`jobs` table) is claimed with `SELECT ... FOR UPDATE SKIP LOCKED`, so
  workers never wait on each other's claims.

Tables live in their own PostgreSQL schema (default `statemachine`), created on first use and
upgraded by numbered migrations under an advisory lock, so workers starting together do not
race. Calls from `async` code run on a small thread pool (one per checkpointer), so one pool
of connections serves every event loop; the sync API does its I/O in the calling thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from .redaction import redact_dsn, scrub
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
from .sql_dialect import POSTGRES
from .sql_schema import tables

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresCheckpointer needs psycopg 3 and psycopg_pool: "
        "pip install 'statemachine[postgres]'") from exc

from . import postgres_retention as retention_sql  # after psycopg: it needs it too

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_NOW = POSTGRES.server_clock
"""Seconds since the epoch by the server's clock: leases and claims are judged by one clock."""

_TABLES = tables(POSTGRES)

# version -> SQL that upgrades a store from that version to the next one
_MIGRATIONS: dict[int, str] = {}

_COLUMNS = "c.id, t.thread_id, c.parent, c.step, c.kind, c.status, c.next, c.writes, " \
           "c.snapshot, c.extra, c.error, c.created_at"

_LOAD = f"""
WITH RECURSIVE th AS (SELECT key FROM threads WHERE thread_id = %(thread)s),
chain(n, id) AS (
    SELECT 0, c.id FROM checkpoints c, th
    WHERE c.thread = th.key
      AND c.id = coalesce(%(checkpoint)s::bigint,
                          (SELECT max(id) FROM checkpoints WHERE thread = th.key))
    UNION ALL
    -- one primary-key lookup per link (LATERAL ... LIMIT 1): a plain join lets the planner
    -- hash-join a scan of the whole table at every level of the recursion
    -- parents are strictly older (smaller ids): a damaged or crafted cycle ends the chain
    -- early, where chain_from_rows reports it, instead of recursing forever
    SELECT chain.n + 1, cur.parent FROM chain CROSS JOIN LATERAL (
        SELECT parent FROM checkpoints WHERE id = chain.id AND snapshot IS NULL
          AND parent IS NOT NULL AND parent < id
          AND id IS DISTINCT FROM %(known)s::bigint LIMIT 1) cur
)
SELECT 'c', chain.n, {_COLUMNS.replace(
    "c.snapshot", "CASE WHEN c.id = %(known)s::bigint THEN NULL ELSE c.snapshot END")}, NULL
FROM chain JOIN checkpoints c ON c.id = chain.id
JOIN threads t ON t.key = c.thread
UNION ALL
SELECT 'p', NULL, p.checkpoint, NULL, NULL, NULL, p.node, NULL, p.writes, NULL, p.meta, NULL,
       NULL, NULL, p.idx
FROM pending_writes p WHERE p.checkpoint IN (SELECT id FROM chain)
"""

_FENCE = "SELECT key FROM threads WHERE thread_id = %s AND owner = %s"
_RELEASE = "UPDATE threads SET owner = NULL, owner_pid = NULL, owner_host = NULL, " \
           "lease_expires = NULL WHERE thread_id = %s AND owner = %s"
_PRUNE_BATCH = 100
"""Thread families a prune removes per transaction (their rows stay locked until it ends)."""


class PostgresCheckpointer(Checkpointer):
    """Checkpoints in PostgreSQL. Many processes on many machines can share one database.

        saver = PostgresCheckpointer("postgresql://app@db.internal/workflows")

    `schema` is the PostgreSQL schema holding the tables (created if missing); `min_connections`
    and `max_connections` size the connection pool; `reconnect_seconds` is how long a statement
    keeps being retried while the server cannot be reached before the error is raised.
    `read_only=True` opens every connection read-only and never creates or migrates tables.
    `keep_last`: when set, each release trims the thread to its newest `keep_last` checkpoints
    (see `Checkpointer.keep_last`).
    """

    reuses_ids = False  # ids come from a sequence; created_at is the server's clock

    def __init__(self, dsn: str, *, schema: str = "statemachine",
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, min_connections: int = 1,
                 max_connections: int = 10, reconnect_seconds: float = 30.0,
                 connect_timeout: float = 10.0, read_only: bool = False,
                 keep_last: int | None = None) -> None:
        self.keep_last = check_keep_last(keep_last)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise CheckpointError(
                f"schema {schema!r} is not a plain PostgreSQL identifier (letters, digits, _).")
        self.dsn = dsn
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.reconnect_seconds = reconnect_seconds
        self.read_only = read_only
        self._in_caller_thread = False
        self._closed = threading.Event()  # an object, so in_caller_thread() views share it
        self._threads = ThreadPoolExecutor(max_workers=max_connections,
                                           thread_name_prefix="statemachine-pg")
        self._pool = ConnectionPool(
            dsn, min_size=min(min_connections, max_connections), max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            # no check on checkout (a round trip per statement): a broken connection fails
            # its statement, which is retried on a fresh one — every statement is repeatable
            configure=self._configure,
            timeout=connect_timeout, reconnect_timeout=max(reconnect_seconds, 1.0),
            name=f"statemachine:{schema}", open=False)
        # One direct connection first: a wrong DSN or a server that is down fails here at
        # once, with the server's own reason, instead of as a pool timeout; it also sets up
        # (or checks) the tables before any pooled connection is used.
        try:
            with psycopg.connect(dsn, autocommit=True,
                                 connect_timeout=max(1, int(connect_timeout))) as conn:
                self._configure(conn)
                if read_only:
                    self._check_version(self._version(conn))
                else:
                    self._migrate(conn)
            self._pool.open(wait=False)
        except psycopg.Error as exc:
            self._threads.shutdown(wait=False)
            reason = " ".join(scrub(str(exc), dsn).split())
            raise CheckpointError(
                f"cannot connect to PostgreSQL at {self.where}: {reason}"
                + ("" if reason.endswith((".", "?")) else ".") + " Check that the server is "
                "running and the DSN (host, port, database, user, password) is right."
            ) from None
        except BaseException:
            self._threads.shutdown(wait=False)
            raise
        self._heartbeat = LeaseHeartbeat(lease_seconds, "statemachine-pg-lease", self._renew)

    @property
    def where(self) -> str:
        """The DSN without its password, for messages."""
        return redact_dsn(self.dsn)

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"PostgresCheckpointer({self.where!r}, schema={self.schema!r}{mode})"

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")

    # -- schema -------------------------------------------------------------------------------

    def _version(self, conn: psycopg.Connection) -> int | None:
        """The schema's version; None if it holds no tables of ours; `CheckpointError` if its
        `schema_version` table is someone else's (another migration tool's, say)."""
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            "table_schema = %s AND table_name = 'schema_version' ORDER BY ordinal_position",
            (self.schema,)).fetchall()
        if not columns:
            return None
        if [tuple(column) for column in columns] != [("version", "integer")]:
            foreign = self._foreign_tables(conn)
            assert foreign is not None  # schema_version itself is there, and not ours
            raise foreign
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] if row else None

    def _foreign_tables(self, conn: psycopg.Connection) -> CheckpointError | None:
        """The error for a schema holding tables that are not ours; None if it holds none."""
        row = conn.execute(
            "SELECT string_agg(table_name, ', ' ORDER BY table_name) FROM "
            "information_schema.tables WHERE table_schema = %s", (self.schema,)).fetchone()
        foreign = row[0] if row else None
        if not foreign:
            return None
        return CheckpointError(
            f"{self!r}: schema {self.schema!r} already holds tables of something else "
            f"({foreign}); nothing was changed. Give statemachine a schema of its own: "
            "PostgresCheckpointer(dsn, schema='...').")

    def _check_version(self, version: int | None) -> None:
        if version is None:
            raise CheckpointError(
                f"{self!r}: schema {self.schema!r} holds no statemachine tables"
                + (" (a read-only checkpointer does not create them)." if self.read_only
                   else "."))
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{self!r}: the tables were written by a newer statemachine (schema version "
                f"{version}, this one reads up to {SCHEMA_VERSION}); nothing was changed. "
                "Upgrade statemachine to use them.")
        if version < SCHEMA_VERSION and self.read_only:
            raise CheckpointError(
                f"{self!r}: schema version {version} needs upgrading to {SCHEMA_VERSION}; "
                "open it once with a read-write PostgresCheckpointer to migrate it.")

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Create or upgrade the tables, one process at a time (a transaction-scoped advisory
        lock keyed by the schema's name), each migration in its own transaction."""
        lock = f"statemachine:{self.schema}"
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            version = self._version(conn)
            if version is not None:
                self._check_version(version)
            else:
                foreign = self._foreign_tables(conn)
                if foreign is not None:
                    raise foreign
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)))
                conn.execute(_TABLES.encode())
                conn.execute("INSERT INTO schema_version(version) VALUES (%s)",
                             (SCHEMA_VERSION,))
                return
        while version < SCHEMA_VERSION:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                version = self._version(conn)
                assert version is not None
                if version >= SCHEMA_VERSION:
                    return
                conn.execute(_MIGRATIONS[version].encode())
                conn.execute("UPDATE schema_version SET version = %s", (version + 1,))

    # -- leases ------------------------------------------------------------------------------

    async def acquire(self, thread_id: str, owner: Owner) -> None:
        def acquire(conn: psycopg.Connection) -> bool:
            # the same owner asking again (a retry after a lost acknowledgement) succeeds
            return conn.execute(
                "INSERT INTO threads(thread_id, owner, owner_pid, owner_host, lease_expires) "
                f"VALUES (%s, %s, %s, %s, {_NOW} + %s) ON CONFLICT (thread_id) DO UPDATE SET "
                "owner = excluded.owner, owner_pid = excluded.owner_pid, "
                "owner_host = excluded.owner_host, lease_expires = excluded.lease_expires "
                f"WHERE threads.owner IS NULL OR threads.lease_expires < {_NOW} "
                "OR threads.owner = excluded.owner RETURNING 1",
                (thread_id, owner.token, owner.pid, owner.host, self.lease_seconds)
            ).fetchone() is not None

        if not await self._call(acquire) and not await self._take_from_dead_owner(
                thread_id, owner):
            raise busy_error(thread_id)
        self._heartbeat.hold(thread_id, owner.token)

    def _renew(self, leases: list[tuple[str, str]], claims: list[tuple[str, str]]) -> None:
        """One beat of the heartbeat: every held lease and claim in one statement each."""
        lease = self.lease_seconds
        with self._pool.connection(timeout=lease / 3) as conn:
            if leases:
                conn.execute(
                    f"UPDATE threads SET lease_expires = {_NOW} + %s FROM unnest(%s::text[], "
                    "%s::text[]) AS h(thread_id, owner) WHERE threads.thread_id = h.thread_id "
                    "AND threads.owner = h.owner",
                    (lease, [h[0] for h in leases], [h[1] for h in leases]))
            if claims:
                conn.execute(
                    f"UPDATE jobs SET claimed_until = {_NOW} + %s FROM unnest(%s::text[], "
                    "%s::text[]) AS c(thread_id, claim_key) WHERE jobs.thread_id = c.thread_id "
                    "AND jobs.claim_key = c.claim_key",
                    (lease, [c[0] for c in claims], [c[1] for c in claims]))

    async def _take_from_dead_owner(self, thread_id: str, owner: Owner) -> bool:
        """A holder on this machine whose process is gone need not be waited for."""
        rows = await self._fetchall(
            "SELECT owner, owner_pid, owner_host FROM threads WHERE thread_id = %s",
            (thread_id,))
        if not rows:
            return False
        token, pid, host = rows[0]
        if host != owner.host or pid == owner.pid or process_alive(pid):
            return False
        return await self._execute(
            f"UPDATE threads SET owner = %s, owner_pid = %s, owner_host = %s, lease_expires = "
            f"{_NOW} + %s WHERE thread_id = %s AND owner IN (%s, %s)",  # ours: a retry
            (owner.token, owner.pid, owner.host, self.lease_seconds, thread_id, token,
             owner.token)) == 1

    async def release(self, thread_id: str, owner: Owner) -> None:
        self._heartbeat.drop(thread_id, owner.token)
        if self.keep_last is None:
            await self._execute(_RELEASE, (thread_id, owner.token))
            return
        keep_last = self.keep_last

        def release(conn: psycopg.Connection) -> None:
            # one transaction, fenced: a retry after it committed finds the thread released
            with conn.transaction():
                if conn.execute(_FENCE + " FOR UPDATE", (thread_id, owner.token)).fetchone() \
                        is None:
                    return
                family = retention_sql.read_families(
                    conn, [thread_id], lock=True, holder=owner.token)[thread_id]
                plan = None
                if not family.busy:
                    try:
                        plan = plan_trim(family, keep_last)
                    except (ValueError, TypeError, KeyError) as exc:  # damaged rows
                        log.warning("thread %r: not trimmed to keep_last=%d on release: %s",
                                    thread_id, keep_last, exc)
                if plan is not None:
                    retention_sql.carry_out(conn, plan, dry_run=False)
                conn.execute(_RELEASE, (thread_id, owner.token))

        await self._call(release)

    # -- writes (each one statement: atomic, fenced, and safe to repeat) -------------------------

    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint) -> str:
        cp = checkpoint
        key = uuid.uuid4().hex

        def put(conn: psycopg.Connection) -> str | None:
            row = conn.execute(
                "INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, "
                "snapshot, extra, error, created_at, commit_key) SELECT key, %s, %s, %s, %s, "
                f"%s, %s, %s, %s, %s, {_NOW}, %s FROM threads WHERE thread_id = %s AND "
                "owner = %s ON CONFLICT (commit_key) DO NOTHING RETURNING id",
                (None if cp.parent_id is None else int(cp.parent_id), cp.step, cp.kind,
                 cp.status, cp.next, cp.writes, cp.snapshot, cp.extra, cp.error, key,
                 thread_id, owner.token)).fetchone()
            if row is None:  # fenced out, or this very commit landed before a retry
                row = conn.execute("SELECT id FROM checkpoints WHERE commit_key = %s",
                                   (key,)).fetchone()
            return None if row is None else str(row[0])

        checkpoint_id = await self._call(put)
        if checkpoint_id is None:
            raise busy_error(thread_id, lost=True)
        return checkpoint_id

    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite) -> None:
        def put_pending(conn: psycopg.Connection) -> bool:
            inserted = conn.execute(
                "INSERT INTO pending_writes(checkpoint, node, idx, writes, meta) "
                f"SELECT %s, %s, %s, %s, %s WHERE EXISTS ({_FENCE}) "
                "ON CONFLICT (checkpoint, node, idx) DO NOTHING RETURNING 1",
                (int(write.checkpoint_id), write.node, write.index, write.writes, write.meta,
                 thread_id, owner.token)).fetchone() is not None
            # not inserted: fenced out, or a retry of a write that already landed
            return inserted or conn.execute(_FENCE, (thread_id, owner.token)).fetchone() \
                is not None

        if not await self._call(put_pending):
            raise busy_error(thread_id, lost=True)

    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        changed = await self._execute(
            "UPDATE checkpoints SET status = %s, error = %s, snapshot = coalesce(snapshot, %s), "
            f"extra = coalesce(%s, extra), marked_at = {_NOW} WHERE id = %s AND thread = "
            f"({_FENCE})",
            (status, error, snapshot, extra, int(checkpoint_id), thread_id, owner.token))
        if changed != 1:
            raise busy_error(thread_id, lost=True)

    async def add_snapshot(self, thread_id: str, owner: Owner, checkpoint_id: str,
                           snapshot: str) -> None:
        number = checkpoint_number(checkpoint_id)
        changed = 0 if number is None else await self._execute(
            "UPDATE checkpoints SET snapshot = coalesce(snapshot, %s) WHERE id = %s AND "
            f"thread = ({_FENCE})", (snapshot, number, thread_id, owner.token))
        if changed != 1:
            if not await self._fetchall(_FENCE, (thread_id, owner.token)):
                raise busy_error(thread_id, lost=True)
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoint "
                                      f"{checkpoint_id!r} to store a snapshot on.")

    # -- retention: plain DELETEs in one transaction; autovacuum makes the space reusable -------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        self._check_writable(dry_run)
        committed: list[Removed] = []

        def delete(conn: psycopg.Connection) -> Removed:
            with conn.transaction():
                family = retention_sql.read_families(
                    conn, [thread_id], lock=not dry_run)[thread_id]
                if not family.threads and not retention_sql.has_job(conn, thread_id):
                    if committed:  # a retry: the first attempt committed, its answer was lost
                        return committed[0]
                    raise ThreadNotFoundError(not_found_message(thread_id))
                if family.busy:
                    raise ThreadBusyError(busy_message(thread_id, family, "delete"))
                plan = plan_delete(family)
                if thread_id not in plan.threads:  # a queued job, and no thread yet
                    plan.threads.insert(0, thread_id)
                pending, jobs = retention_sql.carry_out(conn, plan, dry_run=dry_run)
                committed[:] = [removed_from(plan, pending_writes=pending, jobs=jobs)]
            return committed[0]

        return await self._call(delete)

    async def prune(self, *, thread_id: str | None = None, keep_last: int | None = None,
                    finished_before: float | None = None, dry_run: bool = False) -> Removed:
        """Thread families are removed `_PRUNE_BATCH` to a transaction, their rows locked
        against runs meanwhile; see `Checkpointer.prune`."""
        check_prune(thread_id, keep_last, finished_before)
        self._check_writable(dry_run)

        def roots(conn: psycopg.Connection) -> list[str]:
            if thread_id is None:
                return retention_sql.candidate_roots(conn, finished_before)
            if not retention_sql.thread_exists(conn, thread_id):
                raise ThreadNotFoundError(not_found_message(thread_id))
            return [thread_id]

        def batch(names: list[str]) -> Callable[[psycopg.Connection], tuple]:
            def prune(conn: psycopg.Connection) -> tuple[Plan, list[str], int, int]:
                with conn.transaction():
                    families = retention_sql.read_families(conn, names, lock=not dry_run)
                    plan, skipped = plan_prune((families[root] for root in names),
                                               keep_last=keep_last,
                                               finished_before=finished_before)
                    return plan, skipped, *retention_sql.carry_out(conn, plan, dry_run=dry_run)
            return prune

        names = await self._call(roots)
        plan, skipped, pending, jobs = Plan(), [], 0, 0
        for start in range(0, len(names), _PRUNE_BATCH):
            part, busy, part_pending, part_jobs = await self._call(
                batch(names[start:start + _PRUNE_BATCH]))
            plan.add(part)
            skipped += busy
            pending, jobs = pending + part_pending, jobs + part_jobs
        return removed_from(plan, pending_writes=pending, jobs=jobs, skipped=skipped)

    def _check_writable(self, dry_run: bool) -> None:
        if self.read_only and not dry_run:
            raise CheckpointError(f"{self!r} is read-only: it cannot run or change threads.")

    # -- reads ----------------------------------------------------------------------------------

    async def load(self, thread_id: str, checkpoint_id: str | None = None, *,
                   known: str | None = None) -> Chain | None:
        number = None if checkpoint_id is None else checkpoint_number(checkpoint_id)
        if checkpoint_id is not None and number is None:
            return None
        known_number = None if known is None else checkpoint_number(known)
        rows = await self._fetchall(_LOAD, {"thread": thread_id, "checkpoint": number,
                                            "known": known_number})
        return chain_from_rows(rows, (6, 14, 8, 10), where=self.where,
                               known=None if known_number is None else str(known_number))

    async def list(self, thread_id: str, *, limit: int | None = None,
                   before: str | None = None) -> list[CheckpointRecord]:
        below = None if before is None else checkpoint_number(before)
        if before is not None and below is None:
            return []
        rows = await self._fetchall(
            f"SELECT {_COLUMNS} FROM checkpoints c JOIN threads t ON t.key = c.thread "
            "WHERE t.thread_id = %(thread)s AND (%(below)s::bigint IS NULL OR "
            "c.id < %(below)s::bigint) ORDER BY c.id DESC LIMIT %(limit)s",
            {"thread": thread_id, "below": below,
             "limit": limit})
        return [record_from_row(row, where=self.where) for row in rows]

    async def list_pending(self, checkpoint_ids: Sequence[str]) -> PendingByCheckpoint:
        if not checkpoint_ids:
            return {}
        rows = await self._fetchall(
            "SELECT checkpoint, node, idx, writes, meta FROM pending_writes WHERE checkpoint "
            "= ANY(%s) ORDER BY checkpoint, node, idx", ([int(c) for c in checkpoint_ids],))
        return pending_from_rows(rows, where=self.where)

    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None:
        rows = await self._fetchall(
            "SELECT value FROM cache WHERE namespace = %s AND key = %s AND "
            f"(expires_at IS NULL OR expires_at > coalesce(%s, {_NOW}))", (namespace, key, now))
        return rows[0][0] if rows else None

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None:
        await self._execute(
            "INSERT INTO cache(namespace, key, value, expires_at) VALUES (%s, %s, %s, "
            f"coalesce(%s, {_NOW}) + %s) ON CONFLICT (namespace, key) DO UPDATE SET "
            "value = excluded.value, expires_at = excluded.expires_at",
            (namespace, key, value, now, ttl))

    async def threads(self, *, limit: int | None = None, offset: int = 0,
                      updated_since: float | None = None) -> builtins.list[ThreadInfo]:
        rows = await self._fetchall(
            "SELECT t.thread_id, c.status, c.step, c.id, coalesce(c.marked_at, c.created_at), "
            f"c.error, t.owner IS NOT NULL AND t.lease_expires > {_NOW}, t.owner_pid, "
            "t.owner_host FROM threads t JOIN LATERAL (SELECT * FROM checkpoints WHERE "
            "thread = t.key ORDER BY id DESC LIMIT 1) c ON true "
            "WHERE (%(since)s::float8 IS NULL OR coalesce(c.marked_at, c.created_at) > "
            "%(since)s::float8) ORDER BY coalesce(c.marked_at, c.created_at) DESC, c.id DESC "
            "LIMIT %(limit)s OFFSET %(offset)s",
            {"since": updated_since, "limit": limit, "offset": offset})
        return threads_from_rows(rows, where=self.where)

    # -- the work queue ----------------------------------------------------------------------

    async def enqueue(self, thread_id: str, *, input: str | None, event: str | None,
                      base: str | None, max_attempts: int, graph: str = "") -> None:
        key = uuid.uuid4().hex

        def enqueue(conn: psycopg.Connection) -> bool:
            queued = conn.execute(
                "INSERT INTO jobs(thread_id, input, event, base, status, attempts, "
                "max_attempts, available_at, submitted_at, submit_key, graph) VALUES (%s, %s, "
                f"%s, %s, 'queued', 0, %s, {_NOW}, {_NOW}, %s, %s) ON CONFLICT (thread_id) DO "
                "UPDATE SET input = excluded.input, event = excluded.event, base = excluded.base, "
                "graph = excluded.graph, "
                "status = 'queued', attempts = 0, max_attempts = excluded.max_attempts, "
                "available_at = excluded.available_at, claimed_by = NULL, claim_key = NULL, "
                "claimed_until = NULL, error = NULL, submitted_at = excluded.submitted_at, "
                "finished_at = NULL, submit_key = excluded.submit_key "
                "WHERE jobs.status NOT IN ('queued', 'running') RETURNING 1",
                (thread_id, input, event, base, max_attempts, key, graph)
            ).fetchone() is not None
            # not queued: another job holds the thread, or this very submission landed
            # before a retry
            return queued or conn.execute(
                "SELECT 1 FROM jobs WHERE thread_id = %s AND submit_key = %s",
                (thread_id, key)).fetchone() is not None

        if not await self._call(enqueue):
            raise job_busy_error(thread_id)

    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        key = uuid.uuid4().hex

        def claim(conn: psycopg.Connection) -> tuple | None:
            row = conn.execute(
                "UPDATE jobs SET status = 'running', claimed_by = %s, claim_key = %s, "
                f"claimed_until = {_NOW} + %s, attempts = attempts + 1 WHERE thread_id = ("
                "SELECT thread_id FROM jobs WHERE ((status = 'queued' AND available_at <= "
                f"{_NOW}) OR (status = 'running' AND claimed_until < {_NOW})) AND "
                "(%s::text IS NULL OR graph = %s::text) "
                "ORDER BY available_at, submitted_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "RETURNING thread_id, input, event, base, attempts, max_attempts",
                (worker.token, key, self.lease_seconds, graph, graph)).fetchone()
            if row is None:  # nothing to do, or this very claim landed before a retry
                row = conn.execute(
                    "SELECT thread_id, input, event, base, attempts, max_attempts FROM jobs "
                    "WHERE claim_key = %s", (key,)).fetchone()
            return row

        row = await self._call(claim)
        if row is None:
            return None
        job = ClaimedJob(row[0], key, row[1], row[2], row[3], row[4], row[5])
        self._heartbeat.hold_claim(job.thread_id, key)
        return job

    async def finish(self, job: ClaimedJob, *, status: str, error: str | None = None,
                     retry_in: float | None = None, count_attempt: bool = True) -> bool:
        self._heartbeat.drop_claim(job.thread_id, job.claim_key)
        if retry_in is not None:
            def requeue(conn: psycopg.Connection) -> bool:
                # only from running, so a retry of a requeue that landed changes nothing more;
                # the job keeps its claim key until claimed again, which recognises that retry
                changed = conn.execute(
                    f"UPDATE jobs SET status = 'queued', available_at = {_NOW} + %s, "
                    "error = %s, claimed_by = NULL, claimed_until = NULL, "
                    "attempts = attempts - %s WHERE thread_id = %s AND claim_key = %s "
                    "AND status = 'running'",
                    (retry_in, error, 0 if count_attempt else 1, job.thread_id,
                     job.claim_key)).rowcount
                return changed == 1 or conn.execute(
                    "SELECT 1 FROM jobs WHERE thread_id = %s AND claim_key = %s AND "
                    "status = 'queued'", (job.thread_id, job.claim_key)).fetchone() is not None

            return await self._call(requeue)
        return await self._execute(
            f"UPDATE jobs SET status = %s, error = %s, finished_at = {_NOW}, claimed_by = NULL, "
            "claimed_until = NULL WHERE thread_id = %s AND claim_key = %s",
            (status, error, job.thread_id, job.claim_key)) == 1

    async def jobs(self, *, graph: str | None = None, thread_id: str | None = None,
                   open_only: bool = False) -> builtins.list[JobInfo]:
        rows = await self._fetchall(
            "SELECT thread_id, status, attempts, max_attempts, available_at, error, "
            "submitted_at, finished_at, claimed_by, graph FROM jobs WHERE (%s::text IS NULL "
            "OR graph = %s::text) AND (%s::text IS NULL OR thread_id = %s::text) AND (NOT %s "
            "OR status IN ('queued', 'running')) ORDER BY submitted_at, thread_id",
            (graph, graph, thread_id, thread_id, open_only))
        return jobs_from_rows(rows)

    # -- plumbing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._heartbeat.stop()
            self._pool.close()
            self._threads.shutdown(wait=False)

    def in_caller_thread(self) -> PostgresCheckpointer:
        """This checkpointer, doing its I/O in the calling thread (for the sync API)."""
        view = copy.copy(self)
        view._in_caller_thread = True
        return view

    async def _call(self, operation: Callable[[psycopg.Connection], T]) -> T:
        """Run `operation` on a pooled connection: here for the sync API, else on our threads."""
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.")
        if self._in_caller_thread:
            return self._direct(operation)
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self._direct, operation)

    def _direct(self, operation: Callable[[psycopg.Connection], T]) -> T:
        """Run `operation`, retrying on a new connection while the server is unreachable.

        Every operation given here is safe to repeat, so an error that leaves its outcome
        unknown (the connection dropped mid-statement) is answered by running it again.
        """
        deadline = time.monotonic() + self.reconnect_seconds
        delay = 0.05
        while True:
            try:
                with self._pool.connection() as conn:
                    return operation(conn)
            except psycopg.errors.InsufficientResources as exc:  # disk full, out of memory
                raise StorageUnavailableError(
                    f"PostgreSQL at {self.where} could not do it: {exc}. Every committed step "
                    "is kept; free the server's resources, then resume the thread.") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
                if self._closed.is_set():
                    raise CheckpointError(f"{self!r} is closed.") from exc
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailableError(
                        f"lost the connection to PostgreSQL at {self.where} and could not get "
                        f"it back within {self.reconnect_seconds:g} s: {exc}") from exc
                # the other idle connections likely broke too (a restart drops them all):
                # test them now, so the retry gets a live one or a new one
                with contextlib.suppress(Exception):
                    self._pool.check()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise CheckpointError(
                    f"{self!r} is read-only: it cannot run or change threads.") from exc

    async def _execute(self, query: str, params: Sequence[Any] | dict[str, Any]) -> int:
        """Run one statement (its own transaction) and return how many rows it changed."""
        return await self._call(lambda conn: conn.execute(query.encode(), params).rowcount)

    async def _fetchall(self, query: str, params: Sequence[Any] | dict[str, Any]
                        ) -> builtins.list[tuple]:
        return await self._call(lambda conn: conn.execute(query.encode(), params).fetchall())




__all__ = ["PostgresCheckpointer"]
