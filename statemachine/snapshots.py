"""When a checkpoint stores a full snapshot of the state, so storage grows with what changed.

A checkpoint without a snapshot is rebuilt from its nearest ancestor that has one, replaying
the writes in between. Storing a snapshot costs its size; not storing one makes every later
read replay more. The rule here balances the two over a thread's whole life, across runs:

* the cost of a replay is counted as a fixed cost per checkpoint (decoding and applying one
  record costs about as much as decoding `RECORD_COST` more bytes of a snapshot), plus the
  bytes of its writes unless they only append (every field merged with `operator.add`): bytes
  appended are read either way, from writes or from a snapshot that would hold them too;
* a snapshot is stored once that replay cost reaches `GROWTH` times the size of the last
  snapshot (or after `MAX_REPLAY_STEPS` checkpoints, whatever their size).

So each snapshot is paid for by at least `GROWTH` times the one before in what replaying would
cost, and a state that grows is snapshotted at sizes that grow geometrically: all snapshots of
a thread together hold a bounded multiple of its current state, whatever its length, which
keeps storage linear in what was written. Five steps that each append 10 MB store the 50 MB
once; a 400-turn chat of 1 KB messages takes 1.5 MB (800 KB of state). Rebuilding a state
replays at most `MAX_REPLAY_STEPS` checkpoints, and writes that replace rather than append
at most GROWTH times the snapshot they start from; a process that ran or read the thread keeps
its latest state (`state_cache`) and replays nothing.

The counters follow a thread, not a run: a run that continues a thread starts from what its
chain cost (`Replayer.rebuild_counting`), so many short runs on one thread (a chat) add up
exactly as one long run would. A checkpointer's `keep_last` adds a snapshot every
`keep_last / 2` checkpoints, so pruning to the newest `keep_last` never has to keep older ones
to rebuild them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from checkpoints.base import Chain

MAX_REPLAY_STEPS = 1000
"""A snapshot is stored at least this often: rebuilding a state replays at most this many
checkpoints, however small their writes."""

RECORD_COST = 64
"""What replaying one checkpoint costs, as the bytes of snapshot that decode in the same time."""

GROWTH = 3.0
"""A snapshot is stored once the replay since the last one costs GROWTH times that snapshot."""


@dataclass(slots=True)
class ReplayCost:
    """What rebuilding the current head would replay: the size of the snapshot it starts from,
    and the writes and checkpoints since."""

    snapshot_bytes: int = 0
    bytes_since: int = 0
    steps_since: int = 0
    appended: int = 0
    """Bytes of writes since that only appended: not replay cost, but state all the same."""

    @property
    def state_bytes(self) -> int:
        """About how large the state is, as JSON (what a cache holding it counts)."""
        return self.snapshot_bytes + self.bytes_since + self.appended

    def plus(self, chain: Chain, counted: Sequence[bool]) -> ReplayCost:
        """This cost (of rebuilding `chain.records[0]`) plus replaying the rest of `chain`;
        `counted[i]` says whether the writes of `chain.records[i + 1]` count (see `due`)."""
        written = appended = 0
        for (parent, record), count in zip(pairwise(chain.records), counted, strict=True):
            size = len(record.writes or "") if record.kind != "fork" else 0
            if record.kind == "step":
                size += sum(len(w.writes) for w in chain.pending.get(parent.id, ()))
            if count:
                written += size
            else:
                appended += size
        return ReplayCost(self.snapshot_bytes, self.bytes_since + written,
                          self.steps_since + len(chain.records) - 1, self.appended + appended)

    def copy(self) -> ReplayCost:
        return ReplayCost(self.snapshot_bytes, self.bytes_since, self.steps_since,
                          self.appended)

    def due(self, written: int, appended: int = 0, keep_last: int | None = None) -> bool:
        """Count one more checkpoint carrying `written` bytes of writes that count (those that
        do more than append) and `appended` bytes that only append; whether it should store a
        snapshot (then call `stored`)."""
        self.bytes_since += written
        self.appended += appended
        self.steps_since += 1
        return (self.bytes_since + RECORD_COST * self.steps_since >= GROWTH * self.snapshot_bytes
                or self.steps_since >= MAX_REPLAY_STEPS
                or (keep_last is not None and self.steps_since >= max(1, keep_last // 2)))

    def stored(self, snapshot: str) -> str:
        """A snapshot was stored at the head: replays start from it now."""
        self.snapshot_bytes, self.bytes_since, self.steps_since = len(snapshot), 0, 0
        self.appended = 0
        return snapshot
