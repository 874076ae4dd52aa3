"""The storage interface: a small async API over checkpoints, pending writes and thread leases.

Storage knows nothing about graphs. It keeps opaque JSON text (writes, next tasks, snapshots)
and enforces two things itself: one writer per thread (a lease with an owner token), and that
every write is atomic and fenced — a write by an owner that lost its lease is refused with
`ThreadBusyError` and changes nothing.
"""

from __future__ import annotations

import builtins
import itertools
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from .errors import ThreadBusyError

if TYPE_CHECKING:
    from .store_types import StoreWrite

DEFAULT_LEASE_SECONDS = 30.0

Status = Literal["running", "done", "failed", "interrupted", "compensated", "rollback_failed"]
"""A checkpoint's status: its step is running (or its run crashed there), the run is done,
a node failed, the run paused (an interrupt or `wait_for`), a rollback undid the run, or a
rollback stopped at a compensation that failed (rolling back again continues it)."""

FINISHED: frozenset[str] = frozenset({"done", "compensated"})
"""Statuses of a thread whose run is over: it takes new input; any other is continued
(resumed, or rolled back further)."""


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One stored checkpoint. `writes`, `next`, `snapshot` and `extra` are JSON text."""

    id: str
    thread_id: str
    parent_id: str | None
    step: int
    kind: str
    status: str
    next: str
    writes: str | None
    snapshot: str | None
    extra: str | None
    error: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class HeadMark:
    """Which checkpoint is a thread's head, as read when it was taken: its id (None: the
    thread has none), creation time and the time it was last marked (None: never)."""

    id: str | None
    created_at: float | None
    marked_at: float | None

    def is_unmarked(self, checkpoint_id: str | None, created_at: float | None, *,
                    check_created: bool) -> bool:
        """Whether this head is that checkpoint (same id; same creation time too with
        `check_created`, where ids may be reused) and was never marked since: the rule by
        which a run continues from the state it cached there."""
        return checkpoint_id is not None and self.id == checkpoint_id and \
            self.marked_at is None and self.created_at is not None and \
            (not check_created or self.created_at == created_at)

    def is_as_expected(self, expected: HeadMark, *, check_created: bool) -> bool:
        """Whether this head, as read, is the one `expected` names: no checkpoint at all when
        `expected.id` is None (a new thread), else that checkpoint, unmarked (`is_unmarked`)."""
        if expected.id is None:
            return self.id is None
        return self.is_unmarked(expected.id, expected.created_at, check_created=check_created)


@dataclass(frozen=True, slots=True)
class Lease:
    """What taking a thread read on the way (`Checkpointer.lease`): the graph it is bound to
    ("" none, None not read) and its head (None: not read)."""

    graph: str | None
    head: HeadMark | None = None


@dataclass(frozen=True, slots=True)
class NewCheckpoint:
    """What the executor asks storage to commit as one checkpoint."""

    parent_id: str | None
    step: int
    kind: str
    status: str
    next: str
    writes: str | None = None
    snapshot: str | None = None
    extra: str | None = None
    error: str | None = None
    created_at: float | None = None
    """When it was made (a unix time); None: when the store commits it."""


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A task's update committed before its step finished (keyed by the step's checkpoint)."""

    checkpoint_id: str
    node: str
    index: int
    writes: str
    meta: str | None = None
    """JSON: what else the task decided (Command targets, attempts, cache hit)."""


PendingByCheckpoint = dict[str, list[PendingWrite]]
"""Pending writes, by the id of the checkpoint whose step they belong to."""


@dataclass(frozen=True, slots=True)
class Chain:
    """A checkpoint with what is needed to rebuild its state.

    `records` runs from the nearest ancestor holding a snapshot to the checkpoint itself
    (oldest first); `pending` holds the pending writes of every checkpoint in the chain.
    """

    records: list[CheckpointRecord]
    pending: dict[str, list[PendingWrite]]

    @property
    def head(self) -> CheckpointRecord:
        return self.records[-1]


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """A thread as listed: its latest checkpoint's status and when it last changed."""

    thread_id: str
    status: str
    step: int
    checkpoint_id: str
    updated_at: float
    error: str | None
    busy: bool


@dataclass(frozen=True, slots=True)
class Removed:
    """What delete_thread or prune removed (with dry_run: would remove).

    `kept` counts, for each thread that was trimmed rather than removed, the checkpoints it
    kept: at least `keep_last` when it had that many, often more — a kept checkpoint keeps the
    ancestors it is rebuilt from (see docs/retention.md). `notes` says what a SQLite file did
    to give the space back (a one-time conversion, or why it did not shrink)."""

    threads: tuple[str, ...]
    """Threads removed whole (subgraph threads included)."""
    checkpoints: dict[str, int]
    """Thread id -> checkpoints removed from it."""
    pending_writes: int
    jobs: int
    kept: dict[str, int]
    """For trimmed threads: thread id -> checkpoints kept."""
    skipped: tuple[str, ...]
    """Threads left alone because a live run holds them (or a worker runs their job)."""
    bytes_before: int | None = None
    """SQLite: the file's size (with its write-ahead log) before and after."""
    bytes_after: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def removed_anything(self) -> bool:
        return bool(self.threads or self.checkpoints or self.pending_writes or self.jobs)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A queued run a worker has claimed (`Checkpointer.claim`). `input` and `event` are JSON
    text; `base` is the thread's latest checkpoint when the job was submitted, which tells a
    worker whether an earlier attempt already started the run."""

    thread_id: str
    claim_key: str
    input: str | None
    event: str | None
    base: str | None
    attempts: int
    max_attempts: int


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job in the queue as listed: queued, running, done, interrupted or failed."""

    thread_id: str
    status: str
    attempts: int
    max_attempts: int
    available_at: float
    error: str | None
    submitted_at: float
    finished_at: float | None
    claimed_by: str | None
    graph: str = ""


def process_space() -> str:
    """Where this process's pid means something: the host name, plus (on Linux) the boot and
    the pid namespace. A lease holder whose pid is gone may be taken over at once only when it
    ran in the same space: two containers with one host name, or a machine rebooted since,
    must wait for the lease to expire instead. Worked out once per process (each run asks,
    and it reads /proc); a forked child, maybe in a pid namespace of its own, works it out
    again (`_forget_after_fork`)."""
    global _space
    if _space is None:
        _space = _find_process_space()
    return _space


_space: str | None = None


def _find_process_space() -> str:
    name = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return name
    return f"{name}#{boot}.{namespace}"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a thread: a token unique to one run, plus where that run lives (its pid and
    `process_space()`)."""

    token: str
    pid: int
    host: str

    @classmethod
    def new(cls) -> Owner:
        return cls(unique_key(), os.getpid(), process_space())


def unique_key() -> str:
    """32 hex digits no other call anywhere returns: this process's random prefix and a count.
    Owner tokens, commit keys and claim keys are made so, not from the system's randomness at
    each call: that is a system call, 15-200 µs here, on the event loop, at every commit. A
    forked child draws a prefix of its own (`_forget_after_fork`), whatever its pid."""
    global _keys
    if _keys is None:
        _keys = (os.urandom(8).hex(), itertools.count())
    return f"{_keys[0]}{next(_keys[1]):016x}"


_keys: tuple[str, itertools.count[int]] | None = None


def _forget_after_fork() -> None:
    """A forked child shares its parent's memory, so it must not keep the parent's key prefix
    (two live processes would make the same keys: two owners of one thread) nor its process
    space (it may be in a pid namespace of its own). A pid check would not do: in nested pid
    namespaces a child can have its parent's pid."""
    global _keys, _space
    _keys = None
    _space = None


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_forget_after_fork)


class CacheStore(Protocol):
    """Where cached node results live (JSON text under a namespace and key). `now` is the
    caller's time (the runs' clock, which tests replace); None: the store's own clock."""

    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None: ...

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None: ...


class Checkpointer(ABC):
    """Async storage for checkpoints. Implementations: memory, SQLite, PostgreSQL."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    keep_last: int | None = None
    """When set, `release` trims the thread (and its subgraph threads) to this many newest
    checkpoints, as `prune(keep_last=...)` does, in the same transaction as the release."""
    reuses_ids: bool = True
    """Whether a checkpoint made after others were deleted may get the id one of them had (a
    SQLite file whose rows were deleted by hand may): then an id alone does not name one
    checkpoint forever, and the executor's state cache also compares the creation time."""

    @abstractmethod
    async def acquire(self, thread_id: str, owner: Owner) -> str | None:
        """Take the thread for `owner`, or raise `ThreadBusyError` if a live run holds it.
        Returns what `thread_graphs` would say of it, read in the same statement when the
        store can (a run checks it next: one round trip fewer): the graph it is bound to, ""
        when it is bound to none, or None when it was not read."""

    async def lease(self, thread_id: str, owner: Owner) -> Lease:
        """Take the thread as `acquire` does, and say what the taking read: a store that
        also reads the head's identity in that statement spares a run that continues the
        thread from this process's cached state its read of the head (a chat's next turn)."""
        return Lease(await self.acquire(thread_id, owner))

    @property
    def takes_with_input(self) -> bool:
        """Whether `lease_and_put` can commit in the transaction taking the thread (a run only
        prepares its input checkpoint ahead of the lease for a store that can)."""
        return False

    async def lease_and_put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint, *,
                            head: HeadMark, graph: str | None) -> tuple[Lease, str | None]:
        """Take the thread as `lease` does and, in the same transaction, commit `checkpoint`
        (a run's input, whose parent is `head`) if the thread's head is still `head` (same id;
        same creation time where ids may be reused, `reuses_ids`), never marked since, and,
        when `graph` is given, the thread is bound to it. A chat's next turn, run from this
        process's cached state, then takes the thread and stores its input in one commit.
        `head.id` None asks for a thread with no checkpoint at all (a new thread's first run,
        its input the first checkpoint); a thread the take creates is bound to `graph` in it.

        Returns the lease and the new checkpoint's id, or None when nothing was committed
        (the head moved, or this store cannot): the caller goes on as after `lease`. Run
        again after its commit was lost, it finds the checkpoint it committed."""
        return await self.lease(thread_id, owner), None

    @abstractmethod
    async def release(self, thread_id: str, owner: Owner) -> None:
        """Give the thread up (no-op if `owner` no longer holds it). With `keep_last` set, the
        thread is trimmed to it in the same transaction, only if `owner` still holds it."""

    @abstractmethod
    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint, *,
                  memory: Sequence[StoreWrite] = (), release: bool = False) -> str:
        """Commit a checkpoint atomically and return its id; with `memory`, those store
        writes in the same transaction (only asked of a store it `commits_memory_of`). With
        `release`, the thread is given up in that transaction too, as `release` would (a
        run's last write: a finished run saves a commit a turn)."""

    @abstractmethod
    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite, *,
                          memory: Sequence[StoreWrite] = ()) -> None:
        """Commit one task's update for the step leaving `write.checkpoint_id` (and its
        `memory`, as `put` does)."""

    async def put_pendings(self, thread_id: str, owner: Owner,
                           writes: Sequence[tuple[PendingWrite, Sequence[StoreWrite]]]) -> None:
        """Commit several tasks' updates, each with its memory, as `put_pending` would: what
        tasks finishing together hand over at once. Each write lands with its memory or not
        at all; this default commits them one by one, a database commits them in one
        transaction (one commit, where it waits for the disk, instead of one each)."""
        for write, memory in writes:
            await self.put_pending(thread_id, owner, write, memory=memory)

    def commits_memory_of(self, store: Any) -> bool:
        """Whether this checkpointer writes `store`'s items in its own transactions (the
        store lives in its database), so a step and its memories commit together."""
        return False

    def open_store(self, **options: Any) -> Any:
        """A store in this checkpointer's database (`options` go to it: index, ttl,
        refresh_on_read, read_only), whose writes it `commits_memory_of`; None for a
        checkpointer kept in memory, beside which any `MemoryStore` will do."""
        return None

    @abstractmethod
    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        """Set the status of the thread's step at `checkpoint_id` (failed, interrupted)."""

    @abstractmethod
    async def add_snapshot(self, thread_id: str, owner: Owner, checkpoint_id: str,
                           snapshot: str) -> None:
        """Store `snapshot` (the state's JSON) on a checkpoint that has none, fenced like
        `mark`: a checkpoint holding a snapshot can be read without its ancestors, so a prune
        keeping it can remove them. Raises `ThreadBusyError` if `owner` no longer holds the
        thread, `ThreadNotFoundError` if the thread has no such checkpoint."""

    # -- retention: removing threads and old checkpoints ---------------------------------------

    @abstractmethod
    async def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        """Remove the thread and every subgraph thread under it (`thread_id::...`), with their
        checkpoints, pending writes and jobs, in one transaction. Raises `ThreadBusyError`
        (changing nothing) if a live run holds any of them, `ThreadNotFoundError` if there is
        no such thread. With `dry_run`, only says what it would remove."""

    @abstractmethod
    async def prune(self, *, thread_id: str | None = None, keep_last: int | None = None,
                    finished_before: float | None = None, dry_run: bool = False) -> Removed:
        """Remove old checkpoints (with `keep_last`: trim each chosen thread and its subgraph
        threads to their `keep_last` newest, plus what those need to stay readable) or whole
        threads (without it). Chosen: every top-level thread, or just `thread_id`; with
        `finished_before` (a unix time) only those whose run finished (done or compensated)
        before it. Threads a live run holds are skipped. See docs/retention.md."""

    @abstractmethod
    async def load(self, thread_id: str, checkpoint_id: str | None = None, *,
                   known: str | None = None) -> Chain | None:
        """The latest (or given) checkpoint of a thread with its replay chain; None if absent.

        `known` is a checkpoint whose state the caller holds: the chain stops there, as at a
        snapshot, and that checkpoint comes without its snapshot text (it may be long)."""

    @abstractmethod
    async def list(self, thread_id: str, *, limit: int | None = None,
                   before: str | None = None) -> list[CheckpointRecord]:
        """The thread's checkpoints, newest first: at most `limit` of them, and with `before`
        (a checkpoint id) only those older than it — a page costs what it returns."""

    @abstractmethod
    async def list_pending(self, checkpoint_ids: Sequence[str]) -> PendingByCheckpoint:
        """Pending writes of the given checkpoints."""

    async def parents_outside(self, thread_id: str, page: Sequence[CheckpointRecord],
                              known: Iterable[str] = ()) -> dict[str, Chain]:
        """The replay chains of the parents that a page of `list` points to outside itself
        (and outside `known` ids), by parent id: what a page of history needs of older
        checkpoints (the parent, to tell what ran; its state, for a record without a
        snapshot), one bounded load each, never the thread's whole life."""
        seen = {r.id for r in page} | set(known)
        chains = {}
        for parent_id in dict.fromkeys(r.parent_id for r in page if r.parent_id):
            if parent_id not in seen and (chain := await self.load(thread_id, parent_id)):
                chains[parent_id] = chain
        return chains

    @abstractmethod
    async def bind_graph(self, thread_id: str, owner: Owner, graph: str) -> None:
        """Record which graph runs the held thread (opaque text the engine reads back with
        `thread_graphs`); fenced on the lease like every write."""

    @abstractmethod
    async def thread_graphs(self, thread_ids: Sequence[str]) -> dict[str, str]:
        """What `bind_graph` recorded for each of these threads; threads never bound (or a
        store too old to say, opened read-only) are left out."""

    @abstractmethod
    async def threads(self, *, limit: int | None = None, offset: int = 0,
                      updated_since: float | None = None) -> builtins.list[ThreadInfo]:
        """The threads in the store with their latest status, most recently updated first:
        at most `limit` from `offset` on, and with `updated_since` (a unix time) only those
        whose latest checkpoint changed after it."""

    @abstractmethod
    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None:
        """A cached value that has not expired by `now` (None: the store's clock), or None."""

    @abstractmethod
    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None:
        """Store a value for `ttl` seconds from `now` (None: until replaced)."""

    # -- the work queue: runs submitted here, claimed and run by workers -----------------------

    @abstractmethod
    async def enqueue(self, thread_id: str, *, input: str | None, event: str | None,
                      base: str | None, max_attempts: int, graph: str = "") -> None:
        """Queue a run of `thread_id` of the graph named `graph` (input JSON, or None to
        continue the thread; `event`: JSON of the events to deliver). Raises
        `ThreadBusyError` if a job for the thread is already queued or running; a finished
        job of the thread is replaced."""

    @abstractmethod
    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        """Take the next due job of `graph` (None: of any graph) for `worker` — one newly
        queued, one queued again for a retry, or one whose worker stopped renewing its claim
        — or None if there is none. Each job goes to one worker; the claim is renewed until
        `finish`."""

    @abstractmethod
    async def finish(self, job: ClaimedJob, *, status: str, error: str | None = None,
                     retry_in: float | None = None, count_attempt: bool = True) -> bool:
        """End a claim: record `status` (done, interrupted, failed), or with `retry_in` queue
        the job again after that many seconds (`count_attempt=False`: this attempt does not
        count against `max_attempts`). False if the claim had been lost to another worker."""

    @abstractmethod
    async def jobs(self, *, graph: str | None = None, thread_id: str | None = None,
                   open_only: bool = False) -> builtins.list[JobInfo]:
        """The jobs in the queue, oldest submission first: all, or those of one graph or
        thread; with `open_only`, only those queued or running."""

    def in_caller_thread(self) -> Checkpointer:
        """A view of this checkpointer that may do its I/O in the calling thread.

        The sync API asks for it because its event loop is private: nothing else waits on it.
        Backends without a faster blocking path return themselves.
        """
        return self

    @abstractmethod
    async def aclose(self) -> None:
        """Release resources; the checkpointer cannot be used afterwards."""

    def close(self) -> None:
        from ._sync import run_sync

        run_sync(self.aclose)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def checkpoint_number(checkpoint_id: object) -> int | None:
    """A SQL store's checkpoint id as its row number, or None for text no store wrote: only
    ASCII digits count (`str.isdigit` also accepts "²", which `int()` refuses), and numbers
    past the largest row id are that id (no row has it; SQL integers stop there)."""
    text = str(checkpoint_id)
    return min(int(text), 2**63 - 1) if text.isascii() and text.isdecimal() else None


def job_busy_error(thread_id: str) -> ThreadBusyError:
    return ThreadBusyError(
        f"thread {thread_id!r} already has a queued or running job; wait for it to finish "
        "before submitting the thread again.")


def busy_error(thread_id: str, *, lost: bool = False) -> ThreadBusyError:
    if lost:
        return ThreadBusyError(
            f"thread {thread_id!r} was taken over by another run (this run's lease expired); "
            "nothing was committed by this step.")
    return ThreadBusyError(
        f"thread {thread_id!r} is being run by another run right now; wait for it to finish "
        "(or for its lease to expire if its process died), then try again.")
