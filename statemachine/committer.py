"""The commit protocol of one run on one thread: what it writes to the store, and when.

A `Committer` holds the run's lease (`owner`) and the head the run extends. Every write is
fenced on the lease by the store. It commits a finished task's writes as a pending write,
a step (or a run's input, or a fork) as the new head checkpoint with a snapshot when the
replay it saves is due (`snapshots`), and marks the head failed or interrupted. See
docs/design.md, "The commit protocol of one step".
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel

from checkpoints.base import Checkpointer, CheckpointRecord, NewCheckpoint, Owner, PendingWrite
from checkpoints.store_base import BaseStore
from checkpoints.store_types import StoreWrite

from .checkpoint_extra import decode_extra
from .constants import INPUT
from .errors import StateMachineError, StorageUnavailableError, ThreadBusyError
from .group_commit import GroupCommit
from .records import Task, encode_tasks
from .snapshots import ReplayCost
from .state import StateSchema
from .task_runner import StepResults


class Committer:
    """Writes one run's checkpoints on its thread, under the run's lease."""

    def __init__(self, saver: Checkpointer, thread_id: str, owner: Owner,
                 schema: StateSchema, store: BaseStore | None = None) -> None:
        self.saver = saver
        self.store = store
        """Where the tasks' memory writes go: in the transaction of their commit when the
        checkpointer holds the store (`commits_memory_of`), else right after it."""
        self.memory_with_commit = store is not None and saver.commits_memory_of(store)
        self.thread_id = thread_id
        self.owner = owner
        self.schema = schema
        self.keep_last = saver.keep_last
        self.head_id: str | None = None
        """The run's latest committed checkpoint (None until the run has one)."""
        self.head_created = 0.0
        """When the head was made: with its id, it keys the state cache."""
        self.replay = ReplayCost()
        """What rebuilding the head from storage replays: when to store a snapshot next."""
        self.head_extra: str | None = None
        """The head's extra data as stored (a mark adds to it)."""
        self.wrote = False
        """Whether this run committed anything yet."""
        self.released = False
        """Whether the thread was given up with the run's last commit (`put(release=True)`)."""
        self._last_put: NewCheckpoint | None = None
        """The head as this run committed it, until a mark changes it in place."""
        self._finished: GroupCommit[tuple[Task, StepResults]] = GroupCommit(self._put_pendings)
        """Finished tasks' writes on their way to storage, tasks finishing together in one
        commit (`group_commit`)."""

    def start_at(self, head: CheckpointRecord, cost: ReplayCost) -> None:
        """Continue the thread from `head`, whose state costs `cost` to rebuild."""
        self.head_id, self.head_created, self.replay = head.id, head.created_at, cost
        self.head_extra = head.extra

    async def put(self, checkpoint: NewCheckpoint, memory: Sequence[StoreWrite] = (), *,
                  release: bool = False) -> None:
        """Commit `checkpoint` (made with `created_at=time.time()`) as the new head, and the
        store writes of the tasks it commits; with `release`, give the thread up with it (the
        run writes nothing after it)."""
        assert checkpoint.created_at is not None
        together = bool(memory) and self.memory_with_commit
        # memory applied after the commit is applied before the thread is given up
        release = release and (together or not memory)
        self.committed(checkpoint, await self.saver.put(  # `release` only when asked: a
            self.thread_id, self.owner, checkpoint,  # checkpointer of a user's own may
            memory=memory if together else (),  # predate it
            **({"release": True} if release else {})))
        self.released = release
        if memory and not together:
            await self._memory_after(memory)

    def committed(self, checkpoint: NewCheckpoint, checkpoint_id: str) -> None:
        """Note `checkpoint`, committed as `checkpoint_id`, as the run's head (`put` notes its
        own; a run's input may be committed with the lease, `Checkpointer.lease_and_put`)."""
        assert checkpoint.created_at is not None
        self.head_id, self.head_created = checkpoint_id, checkpoint.created_at
        self.head_extra = checkpoint.extra
        self._last_put = checkpoint
        self.wrote = True

    async def _memory_after(self, memory: Sequence[StoreWrite]) -> None:
        """Apply store writes the commit did not carry (a store in this process)."""
        assert self.store is not None
        await self.store.aapply(memory)

    def finished_head(self) -> CheckpointRecord | None:
        """The head's record as committed, if the run finished there (status done, never
        marked since): what the state cache keeps so the next turn need not read it."""
        cp = self._last_put
        if cp is None or cp.status != "done" or self.head_id is None:
            return None
        return CheckpointRecord(self.head_id, self.thread_id, cp.parent_id, cp.step, cp.kind,
                                cp.status, cp.next, cp.writes, cp.snapshot, cp.extra, cp.error,
                                self.head_created)

    def snapshot_if_due(self, size: int, appends: bool, state: BaseModel) -> str | None:
        """`state` as a snapshot for the next checkpoint (with `size` bytes of writes that
        only append, or not), if the replay it would otherwise add is due one (`snapshots`)."""
        if not self.replay.due(*counted(size, appends), self.keep_last):
            return None
        return self.replay.stored(self.schema.encode_state(state))

    async def put_input(self, parent_id: str | None, step: int, state: BaseModel,
                        tasks: Sequence[Task], update: tuple[dict[str, Any], str] | None,
                        extra: str | None) -> None:
        """Commit a run's input checkpoint (`input_checkpoint`)."""
        await self.put(self.input_checkpoint(parent_id, step, state, tasks, update, extra))

    def input_checkpoint(self, parent_id: str | None, step: int, state: BaseModel,
                         tasks: Sequence[Task], update: tuple[dict[str, Any], str] | None,
                         extra: str | None) -> NewCheckpoint:
        """A run's input checkpoint, with the input's `update` (validated, JSON) when it
        continues the thread from `parent_id`. A new thread's first checkpoint is where every
        replay starts, so it stores the state, unless `parent_id` is a parent thread's
        checkpoint whose state this one starts from."""
        writes = None
        if update is not None:
            writes = self.schema.encode_writes([(INPUT, 0, update[1])])
        appends = update is None or self.schema.appends_only(update[0])
        snapshot = self.snapshot_if_due(len(writes or ""), appends, state) \
            if parent_id is not None else self.replay.stored(self.schema.encode_state(state))
        return NewCheckpoint(
            parent_id=parent_id, step=step, kind="input",
            status="running" if tasks else "done", next=encode_tasks(tasks), writes=writes,
            snapshot=snapshot, extra=extra, created_at=time.time())

    async def put_step(self, step: int, ran: Sequence[Task], results: StepResults,
                       state: BaseModel, tasks: Sequence[Task], status: str,
                       extra: str | None, *, release: bool = False) -> None:
        """Commit step `step`: the tasks `ran` made `state` and `tasks` run next. Their
        writes already stored as pending writes become part of it as they are. `release`:
        the run ends here, so the thread is given up in the same commit."""
        encoded = results.encoded
        inline = [(t.node, t.index, encoded[t.key]) for t in ran if t.key not in results.committed]
        writes = self.schema.encode_writes(inline) if inline else None
        size = len(writes or "") + sum(len(encoded[key]) for key in results.committed)
        appends = self.schema.appends_only
        memory = [w for t in ran for w in results.memory.pop(t.key, ())]
        await self.put(NewCheckpoint(
            parent_id=self.head_id, step=step + 1, kind="step", status=status,
            next=encode_tasks(tasks), writes=writes,
            snapshot=self.snapshot_if_due(
                size, all(appends(results.pending[t.key]) for t in ran), state),
            extra=extra, created_at=time.time()), memory, release=release)

    async def put_pending(self, task: Task, results: StepResults) -> None:
        """Store a finished task's writes before its step commits (with those of the tasks
        finishing with it: one commit); return once they are stored."""
        await self._finished.add((task, results))

    async def keep_finished(self, tasks: Sequence[Task], results: StepResults) -> None:
        """Store the writes of `tasks` that finished and are not stored yet (one commit);
        raise the first refusal after storing all the others."""
        outcomes = await self._put_pendings([(task, results) for task in tasks
                                             if task.key in results.pending
                                             and task.key not in results.committed])
        for outcome in outcomes:
            if outcome is not None:
                raise outcome

    async def _put_pendings(self, finished: Sequence[tuple[Task, StepResults]]
                            ) -> list[BaseException | None]:
        """Commit finished tasks' writes as pending writes, each with its memory: together
        where the checkpointer can (`put_pendings`), else, or when the checkpointer refuses
        that for something one write may hold (not the lease, not the storage being
        unavailable), one by one, so one bad write keeps none of the others from being
        stored. Each task's outcome: None (stored) or what refused it."""
        outcomes: list[BaseException | None] | None = None
        if len(finished) > 1 and type(self.saver).put_pendings is not Checkpointer.put_pendings:
            try:
                await self._store_pendings(finished)
                outcomes = [None] * len(finished)
            except (ThreadBusyError, StorageUnavailableError):
                raise
            except Exception:  # each alone, below, says which write was refused
                pass
        if outcomes is None:
            outcomes = []
            for item in finished:
                try:
                    await self._store_pendings([item])
                except (ThreadBusyError, StorageUnavailableError):
                    raise
                except Exception as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
        if not self.memory_with_commit:  # a store beside the checkpointer: after its write
            for at, (task, results) in enumerate(finished):
                memory = results.memory.pop(task.key, None) if outcomes[at] is None else None
                if memory:
                    try:
                        await self._memory_after(memory)
                    except Exception as exc:
                        outcomes[at] = exc
        return outcomes

    async def _store_pendings(self, finished: Sequence[tuple[Task, StepResults]]) -> None:
        """One commit of finished tasks' writes (with their memory, when it commits with
        them); a task's memory leaves `results` only once stored."""
        assert self.head_id is not None
        together = self.memory_with_commit
        writes = [(PendingWrite(self.head_id, task.node, task.index, results.encoded[task.key],
                                json.dumps(meta) if (meta := results.meta.get(task.key))
                                else None),
                   results.memory.get(task.key, ()) if together else ())
                  for task, results in finished]
        await self.saver.put_pendings(self.thread_id, self.owner, writes)
        for task, results in finished:
            results.committed.add(task.key)
            if together:
                results.memory.pop(task.key, None)

    def extra_with(self, **changes: Any) -> str | None:
        """The head's extra data with `changes` (fields of `CheckpointExtra`), encoded: a mark
        adds to what the head says (carried work, the tasks' origin), never drops it."""
        return decode_extra(self.head_extra).copy(**changes).encode()

    async def mark(self, status: str, extra: str | None) -> None:
        """Set the head's status (and extra data) in place: a pause, a delivered event."""
        assert self.head_id is not None
        self._last_put = None
        await self.saver.mark(self.thread_id, self.owner, self.head_id, status=status,
                              extra=extra)
        if extra is not None:
            self.head_extra = extra

    async def mark_failed(self, exc: BaseException, state: BaseModel | None,
                          nodes: Sequence[str] = ()) -> None:
        """Mark the step failed with `exc` on the head. A failed thread is read by people,
        often without the graph (statemachine show): it gets its `state` whole, once (a
        thread takes no new input until it is resumed)."""
        assert self.head_id is not None
        self._last_put = None
        error = f"{type(exc).__name__}: {exc}"
        # the failed row of a history names what failed, not what ran before it (none: a
        # router, a merge or the step limit; the error says which)
        extra = (self.extra_with(failed=list(dict.fromkeys(nodes))) or "{}") \
            if nodes or (self.head_extra and '"failed"' in self.head_extra) else None
        if state is not None and self.replay.steps_since and \
                not isinstance(exc, StorageUnavailableError):
            snapshot = self.schema.encode_state(state)
            try:
                await self.saver.mark(self.thread_id, self.owner, self.head_id,
                                      status="failed", error=error, snapshot=snapshot,
                                      extra=extra)
            except StorageUnavailableError:
                pass  # a full disk, say: the small mark below may still fit
            else:
                self.replay.stored(snapshot)
                return
        await self.saver.mark(self.thread_id, self.owner, self.head_id, status="failed",
                              error=error, extra=extra)

    async def mark_storage_failure(self, exc: StorageUnavailableError, state: BaseModel) -> None:
        """The store refused a write mid-run (a full disk, a lock held too long): say so on the
        last committed checkpoint, as a node failure would, so the thread reads `failed` with
        the reason instead of `running`. If the store refuses that too, the error says so."""
        if self.head_id is None:
            return
        try:
            await self.mark_failed(exc, state)
        except StateMachineError as again:
            exc.add_note(f"The thread could not be marked failed either ({again}); it still "
                         "reads as running at its last committed step.")


def counted(size: int, appends: bool) -> tuple[int, int]:
    """`ReplayCost.due`'s bytes that count and bytes that only append, of `size` bytes."""
    return (0, size) if appends else (size, 0)


@contextlib.asynccontextmanager
async def holding(saver: Checkpointer, thread_id: str) -> AsyncIterator[Owner]:
    """Hold `thread_id` (its lease) for the writes of the block, under a new owner; given up
    after it, and after a failure too (see `release_after`)."""
    owner = Owner.new()
    await saver.acquire(thread_id, owner)
    try:
        yield owner
    except BaseException as exc:
        await release_after(saver, thread_id, owner, exc)
        raise
    await saver.release(thread_id, owner)


async def release_after(saver: Checkpointer, thread_id: str, owner: Owner,
                        failure: BaseException | None) -> None:
    """Give the thread up. When a failure is already on its way out and the store refuses the
    release too (the same full disk, say), that is a note on the failure, not a new error
    hiding it: the lease then lapses by itself."""
    try:
        await saver.release(thread_id, owner)
    except StateMachineError as exc:
        if failure is None:
            raise
        failure.add_note(
            f"The thread could not be released either ({exc}); its lease lapses within "
            f"{saver.lease_seconds:g} s, or as soon as this process exits for a run on this "
            "machine.")
