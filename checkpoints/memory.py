"""`MemoryCheckpointer`: the SQLite checkpointer's behaviour without a file (tests, notebooks)."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
    job_busy_error,
    unique_key,
)
from .errors import ThreadNotFoundError
from .retention import (
    Family,
    Plan,
    Stored,
    busy_reason,
    check_keep_last,
    check_prune,
    in_family,
    is_top_level,
    not_found_message,
    plan_delete_thread,
    plan_prune,
    plan_trim,
    removed_from,
)
from .rows import damaged
from .store_types import StoreWrite


@dataclass
class _Job:
    thread_id: str
    input: str | None
    event: str | None
    base: str | None
    max_attempts: int
    submitted_at: float
    status: str = "queued"
    attempts: int = 0
    available_at: float = 0.0
    claimed_by: str | None = None
    claim_key: str | None = None
    error: str | None = None
    finished_at: float | None = None
    graph: str = ""


@dataclass
class _Thread:
    checkpoints: list[str] = field(default_factory=list)
    owner: str | None = None
    updated_at: float = 0.0
    graph: str | None = None


class MemoryCache:
    """Cached node results in this process, with expiry."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._lock = threading.Lock()

    async def cache_get(self, namespace: str, key: str, *,
                        now: float | None = None) -> str | None:
        with self._lock:
            entry = self._entries.get((namespace, key))
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and expires <= (time.time() if now is None else now):
                del self._entries[(namespace, key)]
                return None
            return value

    async def cache_put(self, namespace: str, key: str, value: str,
                        ttl: float | None, *, now: float | None = None) -> None:
        with self._lock:
            expires = None if ttl is None else (time.time() if now is None else now) + ttl
            self._entries[(namespace, key)] = (value, expires)


class MemoryCheckpointer(MemoryCache, Checkpointer):
    """Keeps checkpoints in this process's memory; same semantics as `SQLiteCheckpointer`."""

    reuses_ids = False  # a counter that only goes up

    def __init__(self, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 keep_last: int | None = None) -> None:
        """`lease_seconds` is accepted so code can make either checkpointer alike; in memory a
        thread is held until its run ends, since a crash would take the memory with it.

        `keep_last`: when set, each release trims the thread to its newest `keep_last`
        checkpoints (see `Checkpointer.keep_last`)."""
        super().__init__()
        self.lease_seconds = lease_seconds
        self.keep_last = check_keep_last(keep_last)
        self._threads: dict[str, _Thread] = {}
        self._records: dict[str, CheckpointRecord] = {}
        self._pending: dict[str, list[PendingWrite]] = {}
        self._jobs: dict[str, _Job] = {}
        self._next_id = 0

    async def acquire(self, thread_id: str, owner: Owner) -> str | None:
        # A run can only end with this process, and then its memory ends too: a thread is held
        # until its run releases it, however long that takes (no lease to expire).
        with self._lock:
            thread = self._threads.setdefault(thread_id, _Thread())
            if thread.owner is not None and thread.owner != owner.token:
                raise busy_error(thread_id)
            thread.owner = owner.token
        return None  # its graph is read from memory, at no cost

    async def release(self, thread_id: str, owner: Owner) -> None:
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is not None and thread.owner == owner.token:
                if self.keep_last is not None:
                    family = self._family(thread_id, holder=owner.token)
                    if not family.busy:
                        self._remove(plan_trim(family, self.keep_last))
                thread.owner = None

    def _fenced(self, thread_id: str, owner: Owner) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None or thread.owner != owner.token:
            raise busy_error(thread_id, lost=True)
        thread.updated_at = time.time()
        return thread

    async def put(self, thread_id: str, owner: Owner, checkpoint: NewCheckpoint, *,
                  memory: Sequence[StoreWrite] = (), release: bool = False) -> str:
        assert not memory, "a MemoryCheckpointer commits no store's writes"
        with self._lock:
            thread = self._fenced(thread_id, owner)
            self._next_id += 1
            cid = str(self._next_id)
            self._records[cid] = CheckpointRecord(
                cid, thread_id, checkpoint.parent_id, checkpoint.step, checkpoint.kind,
                checkpoint.status, checkpoint.next, checkpoint.writes, checkpoint.snapshot,
                checkpoint.extra, checkpoint.error,
                time.time() if checkpoint.created_at is None else checkpoint.created_at)
            thread.checkpoints.append(cid)
        if release:  # the lock is not reentrant; nothing of another run can come between
            await self.release(thread_id, owner)
        return cid

    async def put_pending(self, thread_id: str, owner: Owner, write: PendingWrite, *,
                          memory: Sequence[StoreWrite] = ()) -> None:
        assert not memory, "a MemoryCheckpointer commits no store's writes"
        with self._lock:
            self._fenced(thread_id, owner)
            self._pending.setdefault(write.checkpoint_id, []).append(write)

    async def put_pendings(self, thread_id: str, owner: Owner,
                           writes: Sequence[tuple[PendingWrite, Sequence[StoreWrite]]]) -> None:
        assert not any(memory for _, memory in writes), \
            "a MemoryCheckpointer commits no store's writes"
        with self._lock:  # all or none
            self._fenced(thread_id, owner)
            for write, _ in writes:
                self._pending.setdefault(write.checkpoint_id, []).append(write)

    async def mark(self, thread_id: str, owner: Owner, checkpoint_id: str, *, status: str,
                   error: str | None = None, snapshot: str | None = None,
                   extra: str | None = None) -> None:
        with self._lock:
            self._fenced(thread_id, owner)
            old = self._records[checkpoint_id]
            self._records[checkpoint_id] = CheckpointRecord(
                old.id, old.thread_id, old.parent_id, old.step, old.kind, status, old.next,
                old.writes, old.snapshot or snapshot, extra if extra is not None else old.extra,
                error, old.created_at)

    async def bind_graph(self, thread_id: str, owner: Owner, graph: str) -> None:
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None or thread.owner != owner.token:
                raise busy_error(thread_id, lost=True)
            thread.graph = graph

    async def thread_graphs(self, thread_ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {t: graph for t in thread_ids
                    if (thread := self._threads.get(t)) is not None
                    and (graph := thread.graph) is not None}

    async def add_snapshot(self, thread_id: str, owner: Owner, checkpoint_id: str,
                           snapshot: str) -> None:
        with self._lock:
            self._fenced(thread_id, owner)
            old = self._records.get(checkpoint_id)
            if old is None or old.thread_id != thread_id:
                raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoint "
                                          f"{checkpoint_id!r} to store a snapshot on.")
            if old.snapshot is None:
                self._records[checkpoint_id] = CheckpointRecord(
                    old.id, old.thread_id, old.parent_id, old.step, old.kind, old.status,
                    old.next, old.writes, snapshot, old.extra, old.error, old.created_at)

    # -- retention (everything under the lock: one transaction) -------------------------------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        with self._lock:
            plan = plan_delete_thread(thread_id, self._family(thread_id),
                                      has_job=thread_id in self._jobs)
            return self._carry_out(plan, dry_run)

    async def prune(self, *, thread_id: str | None = None, keep_last: int | None = None,
                    finished_before: float | None = None, dry_run: bool = False) -> Removed:
        check_prune(thread_id, keep_last, finished_before)
        with self._lock:
            if thread_id is not None and thread_id not in self._threads:
                raise ThreadNotFoundError(not_found_message(thread_id))
            roots = [thread_id] if thread_id is not None else \
                [t for t in self._threads if is_top_level(t)]
            plan, skipped = plan_prune((self._family(root) for root in roots),
                                       keep_last=keep_last, finished_before=finished_before)
            return self._carry_out(plan, dry_run, skipped)

    def _family(self, root: str, *, holder: str | None = None) -> Family:
        """The thread `root` and those under it, as retention sees them; a thread held by
        `holder` (the run releasing it) is not busy."""
        threads, busy = {}, {}
        for name, thread in self._threads.items():
            if not in_family(root, name):
                continue
            head = thread.checkpoints[-1] if thread.checkpoints else None
            threads[name] = [self._stored(cid, thread.updated_at if cid == head else None)
                             for cid in thread.checkpoints]
            if thread.owner is not None and thread.owner != holder:
                busy[name] = busy_reason(name, job=False)
        for name, job in self._jobs.items():
            if in_family(root, name) and job.status == "running":
                busy.setdefault(name, busy_reason(name, job=True))
        parent = root.rsplit("::", 1)[0] if not is_top_level(root) else None
        parent_thread = self._threads.get(parent) if parent is not None else None
        parent_head = self._stored(parent_thread.checkpoints[-1]) \
            if parent_thread is not None and parent_thread.checkpoints else None
        return Family(root, threads, busy, parent_head)

    def _stored(self, checkpoint_id: str, changed_at: float | None = None) -> Stored:
        r = self._records[checkpoint_id]
        return Stored(int(r.id), None if r.parent_id is None else int(r.parent_id),
                      r.snapshot is not None, r.status, r.kind, r.extra,
                      r.created_at if changed_at is None else changed_at)

    def _carry_out(self, plan: Plan, dry_run: bool, skipped: list[str] | None = None
                   ) -> Removed:
        ids = [str(cid) for cid in plan.checkpoint_ids]
        pending = sum(len(self._pending.get(cid, ())) for cid in ids)
        jobs = sum(1 for name in plan.threads if name in self._jobs)
        if not dry_run:
            self._remove(plan)
        return removed_from(plan, pending_writes=pending, jobs=jobs, skipped=skipped or ())

    def _remove(self, plan: Plan) -> None:
        for name, ids in plan.checkpoints.items():
            gone = {str(cid) for cid in ids}
            for cid in gone:
                self._records.pop(cid, None)
                self._pending.pop(cid, None)
            thread = self._threads.get(name)
            if thread is not None:
                thread.checkpoints = [c for c in thread.checkpoints if c not in gone]
        for name in plan.threads:
            self._threads.pop(name, None)
            self._jobs.pop(name, None)

    async def load(self, thread_id: str, checkpoint_id: str | None = None, *,
                   known: str | None = None) -> Chain | None:
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None or not thread.checkpoints:
                return None
            cid = thread.checkpoints[-1] if checkpoint_id is None else checkpoint_id
            record = self._records.get(cid)
            if record is None or record.thread_id != thread_id:
                return None
            records = [record]
            while records[-1].snapshot is None and records[-1].id != known:
                parent = self._records.get(records[-1].parent_id or "")
                if parent is None:  # only a bug elsewhere (a prune, say) could do this
                    raise damaged("memory", thread_id, records[-1].id,
                                  "its state has no stored snapshot and its parent "
                                  f"{records[-1].parent_id} is gone")
                records.append(parent)
            if records[-1].id == known:
                records[-1] = replace(records[-1], snapshot=None)
            records.reverse()
            pending = {r.id: list(self._pending[r.id]) for r in records if r.id in self._pending}
            return Chain(records, pending)

    async def list(self, thread_id: str, *, limit: int | None = None,
                   before: str | None = None) -> list[CheckpointRecord]:
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None:
                return []
            ids = thread.checkpoints
            if before is not None:
                ids = ids[:ids.index(before)] if before in ids else []
            chosen = ids[::-1] if limit is None else ids[:-limit - 1:-1] if limit > 0 else []
            return [self._records[c] for c in chosen]

    async def list_pending(self, checkpoint_ids: Sequence[str]) -> PendingByCheckpoint:
        with self._lock:
            return {c: list(self._pending[c]) for c in checkpoint_ids if c in self._pending}

    async def threads(self, *, limit: int | None = None, offset: int = 0,
                      updated_since: float | None = None) -> builtins.list[ThreadInfo]:
        with self._lock:
            infos = []
            for thread_id, thread in self._threads.items():
                if not thread.checkpoints or (updated_since is not None
                                              and thread.updated_at <= updated_since):
                    continue
                head = self._records[thread.checkpoints[-1]]
                infos.append(ThreadInfo(
                    thread_id, head.status, head.step, head.id, thread.updated_at, head.error,
                    busy=thread.owner is not None))
        infos.sort(key=lambda t: t.updated_at, reverse=True)
        return infos[offset:] if limit is None else infos[offset:offset + limit]

    # -- the work queue (a claim is held until finished: a worker's crash ends this memory) ---

    async def enqueue(self, thread_id: str, *, input: str | None, event: str | None,
                      base: str | None, max_attempts: int, graph: str = "") -> None:
        with self._lock:
            job = self._jobs.get(thread_id)
            if job is not None and job.status in ("queued", "running"):
                raise job_busy_error(thread_id)
            now = time.time()
            self._jobs.pop(thread_id, None)  # a resubmission goes to the back of the queue
            self._jobs[thread_id] = _Job(thread_id, input, event, base, max_attempts, now,
                                         available_at=now, graph=graph)

    async def claim(self, worker: Owner, graph: str | None = None) -> ClaimedJob | None:
        with self._lock:
            now = time.time()
            due = [job for job in self._jobs.values()
                   if job.status == "queued" and job.available_at <= now
                   and (graph is None or job.graph == graph)]
            if not due:
                return None
            job = min(due, key=lambda j: (j.available_at, j.submitted_at))
            job.status, job.claimed_by = "running", worker.token
            job.claim_key = unique_key()
            job.attempts += 1
            return ClaimedJob(job.thread_id, job.claim_key, job.input, job.event, job.base,
                              job.attempts, job.max_attempts)

    async def finish(self, job: ClaimedJob, *, status: str, error: str | None = None,
                     retry_in: float | None = None, count_attempt: bool = True) -> bool:
        with self._lock:
            held = self._jobs.get(job.thread_id)
            if held is None or held.claim_key != job.claim_key:
                return False
            held.error, held.claimed_by = error, None
            if retry_in is not None:
                held.status = "queued"  # keeps its claim key, as the stores on disk do
                held.available_at = time.time() + retry_in
                held.attempts -= 0 if count_attempt else 1
            else:
                held.status, held.finished_at = status, time.time()
            return True

    async def jobs(self, *, graph: str | None = None, thread_id: str | None = None,
                   open_only: bool = False) -> builtins.list[JobInfo]:
        with self._lock:
            return [JobInfo(j.thread_id, j.status, j.attempts, j.max_attempts, j.available_at,
                            j.error, j.submitted_at, j.finished_at, j.claimed_by, j.graph)
                    for j in sorted(self._jobs.values(),
                                    key=lambda j: (j.submitted_at, j.thread_id))
                    if (graph is None or j.graph == graph)
                    and (thread_id is None or j.thread_id == thread_id)
                    and (not open_only or j.status in ("queued", "running"))]

    async def aclose(self) -> None:
        return None
