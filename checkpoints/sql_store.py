"""`SQLCheckpointer`: what the SQLite and PostgreSQL stores share, written once.

Each operation here is its SQL (`sql_statements.py`, rendered for the store's dialect) and
what is done with the answer. A store says how it runs a statement (`_execute`,
`_fetchall`), a write that may run twice (`_write_once`), several statements that commit
together (`_transaction`) and a removal (`_removal`); it keeps its connections, its schema
and migrations, and its leases and claims, which is where the two really differ.
"""

from __future__ import annotations

import builtins
import copy
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

from .base import (
    Chain,
    Checkpointer,
    CheckpointRecord,
    ClaimedJob,
    HeadMark,
    JobInfo,
    Lease,
    NewCheckpoint,
    Owner,
    PendingByCheckpoint,
    PendingWrite,
    Removed,
    ThreadInfo,
    busy_error,
    checkpoint_number,
    job_busy_error,
    unique_key,
)
from .errors import CheckpointError, ThreadNotFoundError
from .heartbeat import LeaseHeartbeat
from .retention import Plan, check_keep_last, check_prune, removed_from
from .rows import (
    chain_from_rows,
    jobs_from_rows,
    pending_from_rows,
    record_from_row,
    threads_from_rows,
)
from .sql_retention import Connection, RetentionSQL
from .sql_statements import PENDING_COLUMNS, Statements
from .store_base import SWEEP_SECONDS
from .store_sql import StoreSQL
from .store_types import StoreWrite

T = TypeVar("T")
Params = Mapping[str, object] | Sequence[object]
Rows = list[tuple[Any, ...]]


class SQLCheckpointer(Checkpointer):
    """A checkpointer on a SQL database; subclasses run its statements (see the module)."""

    _sql: ClassVar[Statements]
    _store_sql: ClassVar[StoreSQL]
    """The store's statements, for memory written with a step."""
    _retention: ClassVar[RetentionSQL]
    _prune_batch: ClassVar[int]
    """Thread families a prune removes per transaction."""
    _log: ClassVar[logging.Logger]
    _heartbeat: LeaseHeartbeat

    def __init__(self, *, lease_seconds: float, read_only: bool,
                 keep_last: int | None) -> None:
        self.keep_last = check_keep_last(keep_last)
        self.lease_seconds = lease_seconds
        self.read_only = read_only
        self._in_caller_thread = False
        self._closed = threading.Event()  # an object, so in_caller_thread() views share it
        self._store_swept_at = 0.0

    # -- leases ------------------------------------------------------------------------------

    async def release(self, thread_id: str, owner: Owner) -> None:
        self._heartbeat.drop(thread_id, owner.token)
        if self.keep_last is None:
            await self._release(thread_id, owner.token)
            return
        keep_last, token = self.keep_last, owner.token

        def trim_and_release(conn: Connection) -> None:
            self._retention.trim_and_release(conn, thread_id, token, keep_last, self._log)

        await self._transaction(f"release thread {thread_id!r}", trim_and_release)

    # -- leases ------------------------------------------------------------------------------

    async def acquire(self, thread_id: str, owner: Owner) -> str | None:
        return (await self._take(thread_id, owner)).graph

    async def lease(self, thread_id: str, owner: Owner) -> Lease:
        if type(self).acquire is not SQLCheckpointer.acquire:  # a subclass's own: it runs
            return Lease(await self.acquire(thread_id, owner))
        return await self._take(thread_id, owner)

    @abstractmethod
    async def _take(self, thread_id: str, owner: Owner) -> Lease:
        """Take the thread (see `Checkpointer.acquire`), reading what `lease` says."""

    @property
    def takes_with_input(self) -> bool:
        # a subclass taking threads, committing or binding them its own way (a test's, an
        # audit's) is asked as it asks to be: lease, put, bind_graph
        cls = type(self)
        return all(getattr(cls, name) is getattr(SQLCheckpointer, name)
                   for name in ("acquire", "lease", "put", "_put", "lease_and_put",
                                "bind_graph"))

    async def lease_and_put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint, *,
                            head: HeadMark, graph: str | None) -> tuple[Lease, str | None]:
        if not self.takes_with_input:
            return await super().lease_and_put(thread_id, owner, checkpoint, head=head,
                                               graph=graph)
        return await self._take_and_put(thread_id, owner,
                                        self._put_params(thread_id, owner, checkpoint),
                                        head, graph)

    @abstractmethod
    async def _take_and_put(self, thread_id: str, owner: Owner, params: dict[str, Any],
                            head: HeadMark, graph: str | None) -> tuple[Lease, str | None]:
        """`lease_and_put` in one transaction: `params` are the checkpoint's, as `put`'s."""

    # -- writes (each one statement: atomic and fenced) ---------------------------------------

    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint, *,
                  memory: Sequence[StoreWrite] = (), release: bool = False) -> str:
        checkpoint_id = await self._put(thread_id, owner, checkpoint, memory, release)
        if release:
            self._heartbeat.drop(thread_id, owner.token)
        return checkpoint_id

    async def _put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint,
                   memory: Sequence[StoreWrite], release: bool) -> str:
        doing = f"commit step {checkpoint.step} of thread {thread_id!r}"
        params = self._put_params(thread_id, owner, checkpoint)
        if memory or (release and (self._sql.put_releasing is None or
                                   self.keep_last is not None)):
            return str(await self._together(doing, thread_id, self._sql.put,
                                            self._sql.put_landed, params, memory, release))
        sql = self._sql.put_releasing if release else self._sql.put
        assert sql is not None
        rows = await self._write_once(doing, sql, self._sql.put_landed, params)
        if not rows:
            raise busy_error(thread_id, lost=True)
        return str(rows[0][0])

    def _put_params(self, thread_id: str, owner: Owner, cp: NewCheckpoint) -> dict[str, Any]:
        """The parameters of `put`'s statements for checkpoint `cp`."""
        now = time.time()
        return {
            "parent": None if cp.parent_id is None else int(cp.parent_id), "step": cp.step,
            "kind": cp.kind, "status": cp.status, "next": cp.next, "writes": cp.writes,
            "snapshot": cp.snapshot, "extra": cp.extra, "error": cp.error, "now": now,
            "created_at": now if cp.created_at is None else cp.created_at,
            "key": self._retry_key(), "thread": thread_id, "owner": owner.token}

    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite, *,
                          memory: Sequence[StoreWrite] = ()) -> None:
        doing = f"save node {write.node!r}'s update of thread {thread_id!r}"
        params = {"checkpoint": int(write.checkpoint_id), "node": write.node,
                  "idx": write.index, "writes": write.writes, "meta": write.meta,
                  "thread": thread_id, "owner": owner.token}
        if memory:
            await self._together(doing, thread_id, self._sql.put_pending, self._sql.fence,
                                 params, memory)
            return
        rows = await self._write_once(doing, self._sql.put_pending, self._sql.fence, params)
        if not rows:  # fenced out (`landed`, the fence, found another owner)
            raise busy_error(thread_id, lost=True)

    async def put_pendings(self, thread_id: str, owner: Owner,
                           writes: Sequence[tuple[PendingWrite, Sequence[StoreWrite]]]) -> None:
        """All the writes, with their memory, in one transaction. Run again after its commit
        was lost (PostgreSQL retries on a new connection), it finds them all stored and adds
        nothing, memory included."""
        if len(writes) <= 1:
            for write, memory in writes:
                await self.put_pending(thread_id, owner, write, memory=memory)
            return
        doing = (f"save the updates of nodes {', '.join(repr(w.node) for w, _ in writes)} "
                 f"of thread {thread_id!r}")
        rows = [{"checkpoint": int(w.checkpoint_id), "node": w.node, "idx": w.index,
                 "writes": w.writes, "meta": w.meta, "thread": thread_id, "owner": owner.token}
                for w, _ in writes]
        sql = self._sql

        def work(conn: Connection) -> None:
            cursor = conn.cursor()
            cursor.executemany(sql.put_pendings, rows)  # one round trip (psycopg: a pipeline)
            if cursor.rowcount == len(rows):
                self._apply_memory(conn, [m for _, ms in writes for m in ms])
                return
            if not conn.execute(sql.fence, {"thread": thread_id, "owner": owner.token}
                                ).fetchall():
                raise busy_error(thread_id, lost=True)  # fenced out: none of it lands
            if cursor.rowcount:  # some were there already: which ones, row by row
                raise _SomeStored
            # none written, still the owner: this transaction committed before (its
            # acknowledgement lost), memory and all

        def one_by_one(conn: Connection) -> None:
            for params, (_, memory) in zip(rows, writes, strict=True):
                cursor = conn.execute(sql.put_pending, params)
                written = bool(cursor.fetchall()) if sql.dialect.returns else \
                    cursor.rowcount == 1
                if written:
                    self._apply_memory(conn, memory)
                elif not conn.execute(sql.fence, params).fetchall():
                    raise busy_error(thread_id, lost=True)

        texts = [w.writes for w, _ in writes] + [w.meta for w, _ in writes]
        small = _small_memory(texts, [m for _, ms in writes for m in ms])
        try:
            await self._transaction(doing, work, small=small, writes_first=True)
        except _SomeStored:
            await self._transaction(doing, one_by_one, small=small, writes_first=True)

    def _apply_memory(self, conn: Connection, memory: Sequence[StoreWrite]) -> None:
        """Store writes in the caller's transaction; expired items are swept now and then."""
        if not memory:
            return
        now = time.time()
        self._store_sql.apply(conn, memory, now)
        if now - self._store_swept_at >= SWEEP_SECONDS:
            self._store_swept_at = now
            self._store_sql.sweep(conn, now)

    async def _together(self, doing: str, thread_id: str, sql: str, landed: str,
                        params: dict[str, Any], memory: Sequence[StoreWrite],
                        release: bool = False) -> Any:
        """The fenced write `sql`, the store writes `memory` and (`release`) the thread's
        release, trimmed to `keep_last` if set, in one transaction: all or none. A write
        found to have landed already (the transaction ran before a dropped connection hid its
        commit) brought the rest with it: none of it is done again."""
        keep_last = self.keep_last

        def work(conn: Connection) -> Any:
            cursor = conn.execute(sql, params)
            if self._sql.dialect.returns:
                rows = cursor.fetchall()
                written = rows[0][0] if rows else None
            else:
                written = cursor.lastrowid if cursor.rowcount == 1 else None
            if written is None:
                rows = conn.execute(landed, params).fetchall() \
                    if self._sql.dialect.retry_keys else []
                if not rows:
                    raise busy_error(thread_id, lost=True)
                return rows[0][0]
            if memory:
                self._apply_memory(conn, memory)
            if release and keep_last is not None:
                self._retention.trim_and_release(conn, thread_id, params["owner"], keep_last,
                                                 self._log)
            elif release:
                conn.execute(self._sql.release, {"thread": thread_id, "owner": params["owner"]})
            return written

        trims = release and keep_last is not None  # may delete many rows: not on the loop
        if self._in_caller_thread:  # the sync API: at once, no coroutine in between (a
            # step's hot path)
            return self._transaction_here(doing, work, writes_first=True)
        small = not trims and _small_memory(params, memory)
        return await self._transaction(doing, work, small=small, writes_first=True)

    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        changed = await self._execute(
            f"mark thread {thread_id!r} {status}", self._sql.mark,
            {"status": status, "error": error, "snapshot": snapshot, "extra": extra,
             "now": time.time(), "id": int(checkpoint_id), "thread": thread_id,
             "owner": owner.token})
        if changed != 1:
            raise busy_error(thread_id, lost=True)

    async def bind_graph(self, thread_id: str, owner: Owner, graph: str) -> None:
        changed = await self._execute(
            f"bind thread {thread_id!r} to its graph", self._sql.bind_graph,
            {"graph": graph, "thread": thread_id, "owner": owner.token})
        if changed != 1:
            raise busy_error(thread_id, lost=True)

    async def add_snapshot(self, thread_id: str, owner: Owner, checkpoint_id: str,
                           snapshot: str) -> None:
        doing = f"store a snapshot on checkpoint {checkpoint_id} of thread {thread_id!r}"
        held = {"thread": thread_id, "owner": owner.token}
        changed = await self._execute(doing, self._sql.add_snapshot, {
            "snapshot": snapshot, "id": checkpoint_number(checkpoint_id), **held})
        if changed != 1:
            if not await self._fetchall(doing, self._sql.fence, held):
                raise busy_error(thread_id, lost=True)
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoint "
                                      f"{checkpoint_id!r} to store a snapshot on.")

    # -- retention -------------------------------------------------------------------------------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        committed: list[Removed] = []

        def delete(conn: Connection) -> Removed:
            return self._retention.delete(conn, thread_id, dry_run=dry_run, committed=committed)

        async def remove() -> Removed:
            return await self._transaction(f"delete thread {thread_id!r}", delete,
                                           write=not dry_run)

        return await self._removal(dry_run, remove)

    async def prune(self, *, thread_id: str | None = None, keep_last: int | None = None,
                    finished_before: float | None = None, dry_run: bool = False) -> Removed:
        """Thread families are removed a batch to a transaction, so a kill leaves each family
        either pruned or as it was (PostgreSQL locks their rows against runs meanwhile); see
        `Checkpointer.prune`."""
        check_prune(thread_id, keep_last, finished_before)
        retention = self._retention

        def roots(conn: Connection) -> list[str]:
            return retention.prune_roots(conn, thread_id, finished_before)

        def batch(names: list[str]) -> Callable[[Connection], tuple[Plan, list[str], int, int]]:
            return lambda conn: retention.prune(conn, names, keep_last=keep_last,
                                                finished_before=finished_before,
                                                dry_run=dry_run)

        async def remove() -> Removed:
            names = await self._transaction("list threads to prune", roots, write=False)
            plan, skipped, pending, jobs = Plan(), [], 0, 0
            for start in range(0, len(names), self._prune_batch):
                part, busy, part_pending, part_jobs = await self._transaction(
                    "prune threads", batch(names[start:start + self._prune_batch]),
                    write=not dry_run)
                plan.add(part)
                skipped += busy
                pending, jobs = pending + part_pending, jobs + part_jobs
            return removed_from(plan, pending_writes=pending, jobs=jobs, skipped=skipped)

        return await self._removal(dry_run, remove)

    # -- reads ----------------------------------------------------------------------------------

    async def load(self, thread_id: str, checkpoint_id: str | None = None, *,
                   known: str | None = None) -> Chain | None:
        number = None if checkpoint_id is None else checkpoint_number(checkpoint_id)
        if checkpoint_id is not None and number is None:
            return None
        known_number = None if known is None else checkpoint_number(known)
        rows = await self._fetchall(f"read thread {thread_id!r}", self._sql.load,
                                    {"thread": thread_id, "checkpoint": number,
                                     "known": known_number})
        return chain_from_rows(rows, PENDING_COLUMNS, where=self._where,
                               known=None if known_number is None else str(known_number))

    async def list(self, thread_id: str, *, limit: int | None = None,
                   before: str | None = None) -> builtins.list[CheckpointRecord]:
        below = None if before is None else checkpoint_number(before)
        if before is not None and below is None:
            return []
        rows = await self._fetchall(
            f"list the checkpoints of thread {thread_id!r}", self._sql.list,
            {"thread": thread_id, "below": below, "limit": self._sql.dialect.limit(limit)})
        return [record_from_row(row, where=self._where) for row in rows]

    async def list_pending(self, checkpoint_ids: Sequence[str]) -> PendingByCheckpoint:
        if not checkpoint_ids:
            return {}
        rows = await self._fetchall(
            "read pending writes", self._sql.list_pending,
            {"ids": self._sql.dialect.array([int(c) for c in checkpoint_ids])})
        return pending_from_rows(rows, where=self._where)

    async def thread_graphs(self, thread_ids: Sequence[str]) -> dict[str, str]:
        if not thread_ids or not await self._records_graphs():
            return {}
        if len(thread_ids) == 1:  # every run asks for its own thread's
            rows = await self._fetchall(
                f"read which graph runs thread {thread_ids[0]!r}", self._sql.thread_graph,
                {"thread": thread_ids[0]})
        else:
            rows = await self._fetchall(
                "read which graph runs each thread", self._sql.thread_graphs,
                {"threads": self._sql.dialect.array(list(thread_ids))})
        return {str(thread): str(graph) for thread, graph in rows}

    async def threads(self, *, limit: int | None = None, offset: int = 0,
                      updated_since: float | None = None) -> builtins.list[ThreadInfo]:
        rows = await self._fetchall(
            "list threads", self._sql.threads,
            {"now": time.time(), "since": updated_since,
             "limit": self._sql.dialect.limit(limit), "offset": offset})
        return threads_from_rows(rows, where=self._where)

    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None:
        rows = await self._fetchall(
            "read the cache", self._sql.cache_get,
            {"namespace": namespace, "key": key, "at": now, "now": time.time()})
        return rows[0][0] if rows else None

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None:
        await self._execute(
            "write the cache", self._sql.cache_put,
            {"namespace": namespace, "key": key, "value": value, "at": now,
             "now": time.time(), "ttl": ttl})

    # -- the work queue (claims are leases: each store makes its own) ---------------------------

    async def enqueue(self, thread_id: str, *, input: str | None, event: str | None,
                      base: str | None, max_attempts: int, graph: str = "") -> None:
        rows = await self._write_once(
            f"queue thread {thread_id!r}", self._sql.enqueue, self._sql.enqueue_landed,
            {"thread": thread_id, "input": input, "event": event, "base": base,
             "max_attempts": max_attempts, "now": time.time(), "graph": graph,
             "key": self._retry_key()})
        if not rows:  # another job holds the thread
            raise job_busy_error(thread_id)

    async def finish(self, job: ClaimedJob, *, status: str, error: str | None = None,
                     retry_in: float | None = None, count_attempt: bool = True) -> bool:
        self._heartbeat.drop_claim(job.thread_id, job.claim_key)
        claim = {"thread": job.thread_id, "key": job.claim_key, "error": error,
                 "now": time.time()}
        if retry_in is not None:
            return bool(await self._write_once(
                f"queue thread {job.thread_id!r} again", self._sql.requeue,
                self._sql.requeue_landed,
                {**claim, "retry_in": retry_in, "uncounted": 0 if count_attempt else 1}))
        return await self._execute(f"finish the job of thread {job.thread_id!r}",
                                   self._sql.finish, {**claim, "status": status}) == 1

    async def jobs(self, *, graph: str | None = None, thread_id: str | None = None,
                   open_only: bool = False) -> builtins.list[JobInfo]:
        rows = await self._fetchall(
            "list jobs", self._sql.jobs,
            {"graph": graph, "thread": thread_id, "open": open_only})
        return jobs_from_rows(rows)

    def in_caller_thread(self) -> Self:
        """This checkpointer, doing its I/O in the calling thread instead of its own threads.

        For the sync API, whose event loop is private: a SQLite commit takes ~20 us, while
        handing it to another thread and back costs several times that.
        """
        view = copy.copy(self)
        view._in_caller_thread = True
        return view

    # -- what each store provides --------------------------------------------------------------

    _version: int
    """The tables' schema version, as last read."""
    _graphs_from: ClassVar[int]
    """The first schema version whose threads record their graph."""

    async def _records_graphs(self) -> bool:
        """Whether the tables have `threads.graph`: an older store opened read-only has not
        been migrated, until a writer does it (read again then, so a long-lived reader such
        as the viewer sees the bindings from then on)."""
        if self._version < self._graphs_from:
            rows = await self._fetchall("read the schema version",
                                        "SELECT max(version) FROM schema_version", {})
            self._version = int(rows[0][0])
        return self._version >= self._graphs_from

    @property
    @abstractmethod
    def _where(self) -> str:
        """The store, as errors about damaged rows name it."""

    @abstractmethod
    async def _execute(self, doing: str, sql: str, params: Params) -> int:
        """Run one statement (its own transaction); how many rows it changed. `doing` says
        what it is for, in the error a failure becomes."""

    @abstractmethod
    async def _fetchall(self, doing: str, sql: str, params: Params, *,
                        write: bool = False) -> Rows:
        """The rows of one statement (its own transaction; `write`: it changes the store)."""

    @abstractmethod
    async def _write_once(self, doing: str, sql: str, landed: str, params: Params) -> Rows:
        """What the write `sql` wrote: one row holding the written row's id (or 1), or none.
        A store that may have run it twice (a dropped connection) finds, when the second run
        wrote nothing, what the first one wrote with `landed`."""

    @abstractmethod
    async def _transaction(self, doing: str, work: Callable[[Connection], T], *,
                           write: bool = True, small: bool = False,
                           writes_first: bool = False) -> T:
        """`work(conn)` in one transaction (`write`: it changes the store). `small`: a short
        one of few bytes, which a store may run without a thread hop (then `work` may run
        twice, the first run rolled back whole). `writes_first`: work's first statement
        writes, so a store whose writes lock may lock at it rather than at the start."""

    @abstractmethod
    def _transaction_here(self, doing: str, work: Callable[[Connection], T], *,
                          write: bool = True, writes_first: bool = False) -> T:
        """`_transaction` in the caller's thread, for the sync API (`_in_caller_thread`)."""

    @abstractmethod
    async def _removal(self, dry_run: bool, remove: Callable[[], Awaitable[Removed]]
                       ) -> Removed:
        """What `remove` (a deletion or prune) removed, with what the store adds to it."""

    # -- helpers ---------------------------------------------------------------------------------

    def _read_only_error(self) -> CheckpointError:
        return CheckpointError(f"{self!r} is read-only: it cannot run or change threads.")

    def _retry_key(self) -> str | None:
        """A key for a write that may run twice (None where the store never runs it again)."""
        return unique_key() if self._sql.dialect.retry_keys else None

    async def _release(self, thread_id: str, token: str) -> None:
        await self._execute(f"release thread {thread_id!r}", self._sql.release,
                            {"thread": thread_id, "owner": token})

    def _claimed(self, row: Sequence[Any], key: str) -> ClaimedJob:
        """The job a claim returned (thread_id, input, event, base, attempts, max_attempts),
        its claim now renewed by the heartbeat."""
        job = ClaimedJob(row[0], key, row[1], row[2], row[3], row[4], row[5])
        self._heartbeat.hold_claim(job.thread_id, key)
        return job


SMALL_BYTES = 64 * 1024
"""The most text a write may carry and still be done on the event loop's thread (where a
store does that): copying more into the database holds up the loop's other tasks."""


class _SomeStored(Exception):
    """Some writes of a group were stored already: it is done again row by row."""


def small(params: Params) -> bool:
    """Whether a statement's parameters are small enough to write on the event loop."""
    values = params.values() if isinstance(params, Mapping) else params
    return _text_bytes(values) <= SMALL_BYTES


def _small_memory(params: Params, memory: Sequence[StoreWrite]) -> bool:
    """Whether a commit carrying store writes is small: no embeddings, little text."""
    if any(write.vectors for write in memory):
        return False
    values = params.values() if isinstance(params, Mapping) else params
    return _text_bytes(values) + _text_bytes(w.value for w in memory) <= SMALL_BYTES


def _text_bytes(values: Iterable[object]) -> int:
    size = 0
    for value in values:  # a plain loop: this runs on every async commit
        if type(value) is str or type(value) is bytes:
            size += len(value)
    return size


__all__ = ["SMALL_BYTES", "Params", "Rows", "SQLCheckpointer", "small"]
