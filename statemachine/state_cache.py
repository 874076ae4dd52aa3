"""The latest state of recently run threads, kept in this process so the next turn of a chat, or
a read right after a run, does not decode and replay it from storage.

An entry is keyed by the thread and by the checkpoint it is the state of (its id and creation
time, which no later checkpoint shares even where a store reuses the id of a deleted row). The
store is still asked for the thread's head on every use, so a run by another process, a fork
or an edit makes the entry stale, never wrong: a stale entry is simply not used.

States are pydantic models whose fields users can change in place. The cache therefore never
shares an object with anyone: it stores a private copy, and hands out either that copy (taken
out of the cache, for a run that continues the thread) or a new copy (for a read).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from checkpoints.base import CheckpointRecord, HeadMark

from .snapshots import ReplayCost

MAX_BYTES = 64 * 1024 * 1024
"""The cache holds at most about this many bytes of state (counted as their JSON size)."""
MAX_THREADS = 1024


@dataclass(frozen=True, slots=True)
class CachedState:
    checkpoint_id: str
    created_at: float
    state: BaseModel
    cost: ReplayCost
    """How far the checkpoint is from its stored snapshot (the next snapshot decision)."""
    head: CheckpointRecord | None = None
    """The checkpoint as this process committed it, when a run finished there: the next run
    on the thread that finds it still the head (`HeadMark`) need not read it back."""
    graph: str | None = None
    """The thread's graph binding as the run that finished there found it (None: unknown)."""

    @property
    def size(self) -> int:
        return self.cost.state_bytes


class StateCache:
    """Thread id -> the state at its latest checkpoint this process saw, least recently used
    first; safe to use from several threads."""

    def __init__(self, *, check_created: bool = True, max_bytes: int = MAX_BYTES,
                 max_threads: int = MAX_THREADS) -> None:
        """`check_created`: an id alone may not name one checkpoint forever in this store
        (see `Checkpointer.reuses_ids`), so entries also match on the creation time."""
        self.check_created = check_created
        self.max_bytes = max_bytes
        self.max_threads = max_threads
        self._entries: OrderedDict[str, CachedState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def known(self, thread_id: str) -> str | None:
        """The checkpoint whose state is cached for the thread, if any."""
        with self._lock:
            entry = self._entries.get(thread_id)
            return entry.checkpoint_id if entry is not None else None

    def take(self, thread_id: str, checkpoint_id: str, created_at: float) -> CachedState | None:
        """The cached state of that checkpoint, removed from the cache: the caller owns it (a
        run will change it and put its own end state back)."""
        with self._lock:
            entry = self._entries.get(thread_id)
            if not self._matches(entry, checkpoint_id, created_at):
                return None
            assert entry is not None
            self._remove(thread_id)
            return entry

    def take_at_head(self, thread_id: str, head: HeadMark
                     ) -> tuple[CachedState, CheckpointRecord] | None:
        """The cached state of the thread's head, taken as `take` does, and the head's record
        as stored, if the head read when the thread was taken is the checkpoint this process
        committed last and left as it was: same id (and creation time, where ids may be
        reused), never marked since. Anything else (a run, fork, edit or mark elsewhere) is
        read back from storage."""
        with self._lock:
            entry = self._entries.get(thread_id)
            if entry is None or entry.head is None or not head.is_unmarked(
                    entry.checkpoint_id, entry.created_at, check_created=self.check_created):
                return None
            assert head.created_at is not None
            self._remove(thread_id)
            # its creation time as stored: PostgreSQL stamps a checkpoint with its clock
            return entry, replace(entry.head, created_at=head.created_at)

    def take_finished(self, thread_id: str) -> CachedState | None:
        """The thread's cached state if a run here finished at it (`CachedState.head`),
        taken as `take` does: for a run that continues the thread from it only if storage
        still has it as the head (`Checkpointer.lease_and_put` checks)."""
        with self._lock:
            entry = self._entries.get(thread_id)
            if entry is None or entry.head is None:
                return None
            self._remove(thread_id)
            return entry

    def copy_of(self, thread_id: str, checkpoint_id: str, created_at: float
                ) -> CachedState | None:
        """The cached state of that checkpoint as a new copy, for a reader to keep."""
        with self._lock:
            entry = self._entries.get(thread_id)
            if not self._matches(entry, checkpoint_id, created_at):
                return None
            assert entry is not None
            self._entries.move_to_end(thread_id)
            # copied under the lock: a run in another thread may `take` it meanwhile
            return CachedState(checkpoint_id, created_at, detached(entry.state),
                               entry.cost.copy())

    def put(self, thread_id: str, checkpoint_id: str, created_at: float, state: BaseModel,
            cost: ReplayCost, head: CheckpointRecord | None = None,
            graph: str | None = None) -> None:
        """Remember a private copy of `state` as the thread's state at that checkpoint
        (`head`: the checkpoint's record, as committed by a run that ended there, on a
        thread bound to `graph`)."""
        entry = CachedState(checkpoint_id, created_at, detached(state), cost.copy(), head,
                            graph)
        with self._lock:
            self._remove(thread_id)
            if entry.size > self.max_bytes:
                return
            self._entries[thread_id] = entry
            self._bytes += entry.size
            while self._bytes > self.max_bytes or len(self._entries) > self.max_threads:
                self._remove(next(iter(self._entries)))

    def forget(self, thread_id: str) -> None:
        with self._lock:
            self._remove(thread_id)

    def _matches(self, entry: CachedState | None, checkpoint_id: str, created_at: float) -> bool:
        return entry is not None and entry.checkpoint_id == checkpoint_id and \
            (not self.check_created or entry.created_at == created_at)

    def _remove(self, thread_id: str) -> None:
        entry = self._entries.pop(thread_id, None)
        if entry is not None:
            self._bytes -= entry.size


_ATOMIC = frozenset({str, int, float, bool, bytes, type(None), complex})


def detached(value: Any) -> Any:
    """A copy of `value` that shares no mutable object with it (lists, dicts, sets, models are
    copied; strings, numbers and other immutable values are shared). Much cheaper than
    `copy.deepcopy` on the shapes states have: a list of strings is copied in one call."""
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if kind is list:
        if all(type(item) in _ATOMIC for item in value):
            return value.copy()
        return [detached(item) for item in value]
    if kind is dict:
        return {key: detached(item) for key, item in value.items()}
    if kind is tuple and all(type(item) in _ATOMIC for item in value):
        return value
    if isinstance(value, BaseModel):
        copied = value.model_copy()
        fields = copied.__dict__
        for name, item in fields.items():
            if type(item) not in _ATOMIC:
                fields[name] = detached(item)
        extra = copied.__pydantic_extra__
        if extra:
            copied.__pydantic_extra__ = {key: detached(item) for key, item in extra.items()}
        return copied
    import copy

    return copy.deepcopy(value)
