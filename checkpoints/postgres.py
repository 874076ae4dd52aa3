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
race. The sync API does its I/O in the calling thread, on a pool of connections. The async
API runs its simple statements on connections of the running event loop, with no thread hop
(postgres_async.py), and its transactions on a small thread pool.

The SQL both SQL stores share, and what is done with its answers, is `SQLCheckpointer`'s
(sql_store.py); here are the connections and retries, the schema and its migrations, and the
leases and claims judged by the server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from .redaction import redact_dsn, scrub
from .rows import process_alive
from .sql_dialect import POSTGRES
from .sql_retention import Connection
from .sql_schema import store_tables, tables
from .sql_statements import Statements
from .sql_store import Params, Rows, SQLCheckpointer
from .store_sql import StoreSQL

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresCheckpointer needs psycopg 3 and psycopg_pool: "
        "pip install 'statemachine[postgres]'") from exc

from .postgres_async import LoopConnections
from .postgres_retention import RETENTION

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
READABLE_FROM = 1
"""Read-only checkpointers open schemas from this version on: version 2 only added a column
the reads do without (threads.graph: an older schema's threads are bound to no graph), 3 the
store's tables (an older schema's store is empty), 4 a function only taking a lease calls
(`head_mark`)."""
_NOW = POSTGRES.server_clock
"""Seconds since the epoch by the server's clock: leases and claims are judged by one clock."""

HEAD_MARK_FUNCTION = """
CREATE OR REPLACE FUNCTION head_mark(of_thread bigint) RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT AS $$
DECLARE
    found text;
BEGIN
    SELECT id || ' ' || created_at || ' ' || coalesce(marked_at::text, '') INTO found
    FROM checkpoints WHERE thread = of_thread ORDER BY id DESC LIMIT 1;
    RETURN found;
END $$;
"""
"""The thread's head as "id created_at marked_at", read when called. Taking a lease returns
it: a subquery there would read the statement's snapshot, taken before the statement waited
for the thread's row, so a run that committed its last step and gave the thread up while
we waited would go unseen (its new head not in the snapshot). A query inside a VOLATILE
function takes a snapshot of its own, after the wait."""

_TABLES = tables(POSTGRES) + HEAD_MARK_FUNCTION

_TAKE_AND_PUT = POSTGRES.render(
    "WITH taken AS (INSERT INTO threads(thread_id, owner, owner_pid, owner_host, "
    "lease_expires, graph) VALUES (:thread, :owner, :pid, :host, :now + :seconds, :graph) "
    "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, "
    "owner_pid = excluded.owner_pid, owner_host = excluded.owner_host, "
    "lease_expires = excluded.lease_expires WHERE threads.owner IS NULL "
    "OR threads.lease_expires < :now OR threads.owner = excluded.owner "
    "RETURNING key, coalesce(graph, '') AS graph, head_mark(threads.key) AS head), "
    "written AS (INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, "
    "snapshot, extra, error, created_at, commit_key) SELECT key, :parent, :step, :kind, "
    ":status, :next, :writes, :snapshot, :extra, :error, :now, :key FROM taken "
    "WHERE CASE WHEN :head::text IS NULL THEN head IS NULL ELSE "
    "split_part(head, ' ', 1) = :head::text AND split_part(head, ' ', 3) = '' END "
    "AND (:graph::text IS NULL OR graph = :graph::text) RETURNING id) "
    "SELECT graph, head, (SELECT id FROM written) FROM taken")
"""Taking the thread (as `_take`) and committing a run's input on it if its head is still the
one the run started from, unmarked, and it is bound to the run's graph (`lease_and_put`); with
no head given (:head NULL), if the thread has no checkpoint. A thread row the take creates is
bound to the graph given, which its input then finds.
The INSERT reads the thread's key from the take's own rows: a sub-statement would see the
thread as it was before the statement, its owner not yet ours. Run again after a lost
acknowledgement, the head is the input itself, so nothing is inserted; `_take_and_put` then
finds the input by its commit key, in a statement of its own."""

# version -> SQL that upgrades a store from that version to the next one
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE threads ADD COLUMN graph TEXT",
    2: store_tables(POSTGRES),
    3: HEAD_MARK_FUNCTION,
}


class PostgresCheckpointer(SQLCheckpointer):
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
    _sql = Statements(POSTGRES)
    _store_sql = StoreSQL(POSTGRES)
    _graphs_from = 2
    _retention = RETENTION
    _prune_batch = 100
    """Thread families a prune removes per transaction (their rows stay locked until it ends)."""
    _log = log

    def __init__(self, dsn: str, *, schema: str = "statemachine",
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, min_connections: int = 1,
                 max_connections: int = 10, reconnect_seconds: float = 30.0,
                 connect_timeout: float = 10.0, read_only: bool = False,
                 keep_last: int | None = None) -> None:
        super().__init__(lease_seconds=lease_seconds, read_only=read_only, keep_last=keep_last)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise CheckpointError(
                f"schema {schema!r} is not a plain PostgreSQL identifier (letters, digits, _).")
        self.dsn = dsn
        self.schema = schema
        self.reconnect_seconds = reconnect_seconds
        self._connect_timeout = max(1, int(connect_timeout))
        self._max_connections = max_connections
        self._loops: dict[asyncio.AbstractEventLoop, LoopConnections] = {}
        """The async API's connections, per event loop (postgres_async.py)."""
        self._loops_lock = threading.Lock()
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
                    version = _version(self, conn)
                    _check_version(self, version)
                    assert version is not None
                    self._version = version
                else:
                    _migrate(self, conn)
                    self._version = SCHEMA_VERSION
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

    def commits_memory_of(self, store: Any) -> bool:
        from .store_postgres import PostgresStore

        return isinstance(store, PostgresStore) and store.holds(self)

    def open_store(self, **options: Any) -> Any:
        from .store_postgres import PostgresStore

        return PostgresStore(self.dsn, schema=self.schema, **options)

    @property
    def _where(self) -> str:
        return self.where

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"PostgresCheckpointer({self.where!r}, schema={self.schema!r}{mode})"

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")

    # -- leases ------------------------------------------------------------------------------

    async def _take(self, thread_id: str, owner: Owner) -> Lease:
        # the same owner asking again (a retry after a lost acknowledgement) succeeds
        taken = await self._fetchall(
            f"take thread {thread_id!r}",
            "INSERT INTO threads(thread_id, owner, owner_pid, owner_host, lease_expires) "
            f"VALUES (%s, %s, %s, %s, {_NOW} + %s) ON CONFLICT (thread_id) DO UPDATE SET "
            "owner = excluded.owner, owner_pid = excluded.owner_pid, "
            "owner_host = excluded.owner_host, lease_expires = excluded.lease_expires "
            f"WHERE threads.owner IS NULL OR threads.lease_expires < {_NOW} "
            "OR threads.owner = excluded.owner RETURNING coalesce(graph, ''), "
            "head_mark(threads.key)",
            (thread_id, owner.token, owner.pid, owner.host, self.lease_seconds), write=True)
        if not taken and not await self._take_from_dead_owner(thread_id, owner):
            raise busy_error(thread_id)
        self._heartbeat.hold(thread_id, owner.token)
        return Lease(str(taken[0][0]), head_of(taken[0][1])) if taken else Lease(None)

    async def _take_and_put(self, thread_id: str, owner: Owner, params: dict[str, Any],
                            head: HeadMark, graph: str | None) -> tuple[Lease, str | None]:
        """The take and the input's INSERT in one statement (`_TAKE_AND_PUT`): one round trip
        and one commit, where a turn used to wait for two."""
        rows, runs = await self._fetchall_counted(
            _TAKE_AND_PUT, {**params, "pid": owner.pid, "host": owner.host,
                            "seconds": self.lease_seconds, "head": head.id, "graph": graph})
        if not rows:
            if not await self._take_from_dead_owner(thread_id, owner):
                raise busy_error(thread_id)
            self._heartbeat.hold(thread_id, owner.token)
            return Lease(None), None
        self._heartbeat.hold(thread_id, owner.token)
        graph_read, mark, written = rows[0]
        lease = Lease(str(graph_read), head_of(mark))
        if written is None and runs > 1 and lease.head is not None and \
                lease.head.id != head.id:
            # run again after a dropped connection, the first run may have committed while
            # this one waited for the thread's row: after the wait, only a statement of its
            # own sees that commit (this one's snapshot was taken before it). Run once, a
            # head it did not expect is another run's (a thread tried as new that is not)
            landed = await self._fetchall(f"find the input of thread {thread_id!r}",
                                          self._sql.put_landed, params)
            written = landed[0][0] if landed else None
        return lease, None if written is None else str(written)

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
            f"read who holds thread {thread_id!r}",
            "SELECT owner, owner_pid, owner_host FROM threads WHERE thread_id = %s",
            (thread_id,))
        if not rows:
            return False
        token, pid, host = rows[0]
        if host != owner.host or pid == owner.pid or process_alive(pid):
            return False
        return await self._execute(
            f"take thread {thread_id!r} over",
            f"UPDATE threads SET owner = %s, owner_pid = %s, owner_host = %s, lease_expires = "
            f"{_NOW} + %s WHERE thread_id = %s AND owner IN (%s, %s)",  # ours: a retry
            (owner.token, owner.pid, owner.host, self.lease_seconds, thread_id, token,
             owner.token)) == 1

    # -- the work queue: claims are taken with FOR UPDATE SKIP LOCKED, judged by the server's
    # clock ----------------------------------------------------------------------------------

    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        key = unique_key()

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
        return None if row is None else self._claimed(row, key)

    # -- plumbing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        running = asyncio.get_running_loop()
        with self._loops_lock:
            mine = self._loops.pop(running, None)
        if mine is not None:
            await mine.aclose()
        self.close()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._heartbeat.stop()
            self._pool.close()
            self._threads.shutdown(wait=False)
            with self._loops_lock:
                loops, self._loops = list(self._loops.values()), {}
            for connections in loops:
                connections.discard()

    async def _call(self, operation: Callable[[psycopg.Connection], T]) -> T:
        """Run `operation` on a pooled connection: here for the sync API, else on our threads."""
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.")
        if self._in_caller_thread:
            return self._direct(operation)
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self._direct, operation)

    async def _on_loop(self, statement: Callable[[psycopg.AsyncConnection], Awaitable[T]]
                       ) -> T:
        """Run `statement` on the running loop's own connections (postgres_async.py), retried
        on a new connection while the server is unreachable, as `_direct` does."""
        deadline = time.monotonic() + self.reconnect_seconds
        delay = 0.05
        while True:
            if self._closed.is_set():
                raise CheckpointError(f"{self!r} is closed.")
            try:
                async with self._loop_connections().connection() as conn:
                    return await statement(conn)
            except psycopg.errors.InsufficientResources as exc:
                raise self._unavailable(exc) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not worth_retrying(exc):
                    raise self._refused(exc) from exc
                self._retry_or_raise(exc, delay, deadline)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise self._read_only_error() from exc

    def _loop_connections(self) -> LoopConnections:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            connections = self._loops.get(loop)
            if connections is None:
                for gone in [other for other in self._loops if other.is_closed()]:
                    self._loops.pop(gone).discard()  # an earlier asyncio.run's, say
                connections = self._loops[loop] = LoopConnections(self._connect_async,
                                                                  self._max_connections)
        return connections

    async def _connect_async(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True,
                                                     connect_timeout=self._connect_timeout)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if self.read_only:
            await conn.execute("SET default_transaction_read_only = on")
        return conn

    def _unavailable(self, exc: Exception) -> StorageUnavailableError:
        """A disk full or out of memory on the server, as an error a user can act on."""
        return StorageUnavailableError(
            f"PostgreSQL at {self.where} could not do it: {exc}. Every committed step is "
            "kept; free the server's resources, then resume the thread.")

    def _refused(self, exc: Exception) -> CheckpointError:
        """What the server refused for a reason of its own, not a lost connection (a value
        past a limit, a statement cancelled): said as it is, never retried as if the
        connection had dropped."""
        text = str(exc).strip()
        reason = scrub(text.splitlines()[0] if text else type(exc).__name__, self.dsn)
        return CheckpointError(f"PostgreSQL at {self.where} refused it: {reason} "
                               f"(SQLSTATE {getattr(exc, 'sqlstate', None)}).")

    def _retry_or_raise(self, exc: Exception, delay: float, deadline: float) -> None:
        """After a lost connection: return to try again after `delay`, or raise if closed or
        out of time."""
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.") from exc
        if time.monotonic() + delay > deadline:
            raise StorageUnavailableError(
                f"lost the connection to PostgreSQL at {self.where} and could not get it back "
                f"within {self.reconnect_seconds:g} s: {exc}") from exc

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
                raise self._unavailable(exc) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
                if not worth_retrying(exc):
                    raise self._refused(exc) from exc
                self._retry_or_raise(exc, delay, deadline)
                # the other idle connections likely broke too (a restart drops them all):
                # test them now, so the retry gets a live one or a new one
                with contextlib.suppress(Exception):
                    self._pool.check()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise self._read_only_error() from exc

    async def _execute(self, doing: str, query: str, params: Params) -> int:
        if not self._in_caller_thread:
            async def changed(conn: psycopg.AsyncConnection) -> int:
                return (await conn.execute(query.encode(), params)).rowcount

            return await self._on_loop(changed)
        return await self._call(lambda conn: conn.execute(query.encode(), params).rowcount)

    async def _fetchall(self, doing: str, query: str, params: Params, *,
                        write: bool = False) -> Rows:
        if not self._in_caller_thread:
            async def rows(conn: psycopg.AsyncConnection) -> Rows:
                return await (await conn.execute(query.encode(), params)).fetchall()

            return await self._on_loop(rows)
        return await self._call(lambda conn: conn.execute(query.encode(), params).fetchall())

    async def _fetchall_counted(self, query: str, params: Params) -> tuple[Rows, int]:
        """`_fetchall` of a write, and how many times it was sent (more than once: after a
        dropped connection, so an earlier run may have landed)."""
        runs = 0
        if not self._in_caller_thread:
            async def rows(conn: psycopg.AsyncConnection) -> Rows:
                nonlocal runs
                runs += 1
                return await (await conn.execute(query.encode(), params)).fetchall()

            return await self._on_loop(rows), runs

        def run(conn: psycopg.Connection) -> Rows:
            nonlocal runs
            runs += 1
            return conn.execute(query.encode(), params).fetchall()

        return await self._call(run), runs

    async def _write_once(self, doing: str, query: str, landed: str, params: Params) -> Rows:
        # nothing written: refused (fenced out, say), or this very write landed before a
        # retry, which `landed` finds by its key
        if not self._in_caller_thread:
            async def awrite(conn: psycopg.AsyncConnection) -> Rows:
                return await (await conn.execute(query.encode(), params)).fetchall() or \
                    await (await conn.execute(landed.encode(), params)).fetchall()

            return await self._on_loop(awrite)

        def write(conn: psycopg.Connection) -> Rows:
            return conn.execute(query.encode(), params).fetchall() or \
                conn.execute(landed.encode(), params).fetchall()

        return await self._call(write)

    async def _transaction(self, doing: str, work: Callable[[Connection], T], *,
                           write: bool = True, small: bool = False,
                           writes_first: bool = False) -> T:
        return await self._call(_in_transaction(work))

    def _transaction_here(self, doing: str, work: Callable[[Connection], T], *,
                          write: bool = True, writes_first: bool = False) -> T:
        if self._closed.is_set():
            raise CheckpointError(f"{self!r} is closed.")
        return self._direct(_in_transaction(work))

    async def _removal(self, dry_run: bool, remove: Callable[[], Awaitable[Removed]]
                       ) -> Removed:
        if self.read_only and not dry_run:
            raise self._read_only_error()
        return await remove()



# -- the schema: created, checked and migrated when a checkpointer is made ----------------------

def _version(saver: PostgresCheckpointer, conn: psycopg.Connection) -> int | None:
    """The schema's version; None if it holds no tables of ours; `CheckpointError` if its
    `schema_version` table is someone else's (another migration tool's, say)."""
    columns = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE "
        "table_schema = %s AND table_name = 'schema_version' ORDER BY ordinal_position",
        (saver.schema,)).fetchall()
    if not columns:
        return None
    if [tuple(column) for column in columns] != [("version", "integer")]:
        foreign = _foreign_tables(saver, conn)
        assert foreign is not None  # schema_version itself is there, and not ours
        raise foreign
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row else None

def _foreign_tables(saver: PostgresCheckpointer, conn: psycopg.Connection
                    ) -> CheckpointError | None:
    """The error for a schema holding tables that are not ours; None if it holds none."""
    row = conn.execute(
        "SELECT string_agg(table_name, ', ' ORDER BY table_name) FROM "
        "information_schema.tables WHERE table_schema = %s", (saver.schema,)).fetchone()
    foreign = row[0] if row else None
    if not foreign:
        return None
    return CheckpointError(
        f"{saver!r}: schema {saver.schema!r} already holds tables of something else "
        f"({foreign}); nothing was changed. Give statemachine a schema of its own: "
        "PostgresCheckpointer(dsn, schema='...').")

def _check_version(saver: PostgresCheckpointer, version: int | None) -> None:
    if version is None:
        raise CheckpointError(
            f"{saver!r}: schema {saver.schema!r} holds no statemachine tables"
            + (" (a read-only checkpointer does not create them)." if saver.read_only
               else "."))
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{saver!r}: the tables were written by a newer statemachine (schema version "
            f"{version}, this one reads up to {SCHEMA_VERSION}); nothing was changed. "
            "Upgrade statemachine to use them.")
    if version < READABLE_FROM and saver.read_only:
        raise CheckpointError(
            f"{saver!r}: schema version {version} needs upgrading to {SCHEMA_VERSION}; "
            "open it once with a read-write PostgresCheckpointer to migrate it.")

def _migrate(saver: PostgresCheckpointer, conn: psycopg.Connection) -> None:
    """Create or upgrade the tables, one process at a time (a transaction-scoped advisory
    lock keyed by the schema's name), each migration in its own transaction."""
    lock = f"statemachine:{saver.schema}"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
        version = _version(saver, conn)
        if version is not None:
            _check_version(saver, version)
        else:
            foreign = _foreign_tables(saver, conn)
            if foreign is not None:
                raise foreign
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(saver.schema)))
            conn.execute(_TABLES.encode())
            conn.execute("INSERT INTO schema_version(version) VALUES (%s)",
                         (SCHEMA_VERSION,))
            return
    while version < SCHEMA_VERSION:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            version = _version(saver, conn)
            assert version is not None
            if version >= SCHEMA_VERSION:
                return
            conn.execute(_MIGRATIONS[version].encode())
            conn.execute("UPDATE schema_version SET version = %s", (version + 1,))



_GONE = ("57P01", "57P02", "57P03", "57P05")
"""SQLSTATEs of a connection the server ended: an administrator's or a crash's shutdown, a
server not yet up, an idle session timed out."""

_PASSING = ("40001", "40P01", "55P03")
"""SQLSTATEs of a transaction that may succeed run again: a serialization failure, a deadlock
(the server picked this one to abort), a lock not available in time."""


def worth_retrying(exc: Exception) -> bool:
    """Whether `exc` says the connection was lost or the transaction lost a race, so the
    operation (safe to repeat) is run again, not that the server refused what was asked:
    psycopg raises OperationalError for all of them (a value past a limit, SQLSTATE 54000, a
    statement cancelled by statement_timeout, 57014, are refusals)."""
    if not isinstance(exc, psycopg.OperationalError):
        return True  # InterfaceError, PoolTimeout: no connection to use
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE or state in _PASSING


def _in_transaction(work: Callable[[Connection], T]) -> Callable[[psycopg.Connection], T]:
    """`work` as an operation run in one transaction on the connection it is given."""
    def run(conn: psycopg.Connection) -> T:
        with conn.transaction():
            return work(conn)

    return run


def head_of(mark: str | None) -> HeadMark | None:
    """`head_mark`'s text as a `HeadMark` (None, saying nothing, if it does not parse: a
    damaged head is reported by the load that follows)."""
    if mark is None:
        return HeadMark(None, None, None)
    try:
        head_id, created_at, marked_at = str(mark).split(" ")
        return HeadMark(str(int(head_id)), float(created_at),
                        float(marked_at) if marked_at else None)
    except ValueError:
        return None


def same_database(a: str, b: str) -> bool:
    """Whether two DSNs name one database (host, port, database; user and password aside)."""
    from psycopg.conninfo import conninfo_to_dict

    def place(dsn: str) -> tuple[Any, ...]:
        info = conninfo_to_dict(dsn)
        return (info.get("host") or "localhost", str(info.get("port") or "5432"),
                info.get("dbname") or info.get("user"))

    try:
        return place(a) == place(b)
    except Exception:
        return a == b


__all__ = ["PostgresCheckpointer", "same_database"]
