"""Retention: what deleting a thread, or trimming it to its newest checkpoints, removes.

The three stores share this. Each reads a thread's family — the thread and the subgraph
threads under it (`thread::node:index@origin`, nested) — in a transaction of its own, hands
the rows here as `Stored`, and deletes what the `Plan` names. Only the shape of the history
matters here (ids, parents, which checkpoints hold a snapshot), never the payloads.

What a trimmed thread keeps:

* its `keep_last` newest checkpoints (by id, over every branch);
* every ancestor a kept checkpoint is rebuilt from: back to its nearest snapshot, since a
  checkpoint without one is that snapshot plus the writes in between (pending writes go with
  their checkpoint);
* while its latest run is unfinished (failed, interrupted, stopped), that run's whole line from
  the checkpoint that started it: a rollback compensates every node the run completed, and
  finds them there;
* for a subgraph thread run by its parent's unfinished step, its latest run whole: if that
  step runs again, the parent reads the subgraph's writes back from it.

A subgraph thread goes whole (with its own subgraph threads and jobs) when the checkpoint of
its parent that ran it — its `origin`, by id or as the `origin` an update_state checkpoint
carries in its extra — is no longer kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .base import FINISHED, Removed
from .errors import ThreadBusyError, ThreadNotFoundError

"""Statuses of a run that ended: nothing will read its line again to continue or undo it."""

RUN_STARTS = frozenset({"input", "fork"})
"""Kinds of the checkpoint a run starts at (what `current_run` walks back to)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A checkpoint as retention sees it: its place in the tree, not its payload.
    `changed_at` is when it last changed (marked, else created)."""

    id: int
    parent: int | None
    has_snapshot: bool
    status: str
    kind: str
    extra: str | None
    changed_at: float


@dataclass
class Family:
    """A thread and every thread under it, read in one transaction.

    `threads` maps each member to its checkpoints; `busy` maps the members a live run holds
    (or a worker runs the job of) to why; `parent_head` is, for a root that is itself a
    subgraph thread, its parent thread's latest checkpoint (None otherwise, or unknown)."""

    root: str
    threads: dict[str, list[Stored]]
    busy: dict[str, str] = field(default_factory=dict)
    parent_head: Stored | None = None

    @property
    def head(self) -> Stored | None:
        """The root's latest checkpoint."""
        rows = self.threads.get(self.root, [])
        return max(rows, key=lambda c: c.id) if rows else None

    def finished_before(self, when: float | None) -> bool:
        """Whether the root's run finished before `when` (None: no condition)."""
        if when is None:
            return True
        head = self.head
        return head is not None and head.status in FINISHED and head.changed_at < when


@dataclass
class Plan:
    """What to remove: checkpoints by thread, threads whole, and what the trimmed ones keep."""

    checkpoints: dict[str, list[int]] = field(default_factory=dict)
    threads: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def checkpoint_ids(self) -> list[int]:
        return [cid for ids in self.checkpoints.values() for cid in ids]

    def add(self, other: Plan) -> None:
        self.checkpoints.update(other.checkpoints)
        self.threads.extend(other.threads)
        self.kept.update(other.kept)


# -- arguments ------------------------------------------------------------------------------------

def check_keep_last(keep_last: object, *, option: str = "keep_last") -> int | None:
    """`keep_last` as given if it is None or a whole number of at least 1; else ValueError."""
    if keep_last is None:
        return None
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
        raise ValueError(f"{option} must be a whole number of at least 1 (the newest "
                         f"checkpoints each thread keeps), got {keep_last!r}.")
    return keep_last


def check_prune(thread_id: str | None, keep_last: int | None,
                finished_before: float | None) -> None:
    """Refuse a prune that would remove every thread, or whose arguments make no sense."""
    check_keep_last(keep_last)
    if finished_before is not None and (
            not isinstance(finished_before, int | float) or isinstance(finished_before, bool)
            or math.isnan(finished_before)):
        raise ValueError(f"finished_before must be a unix time (seconds), got "
                         f"{finished_before!r}.")
    if thread_id is not None and not isinstance(thread_id, str):
        raise ValueError(f"thread_id must be text, got {thread_id!r}.")
    if keep_last is None and finished_before is None and thread_id is None:
        raise ValueError(
            "prune() without keep_last, finished_before or thread_id would delete every "
            "thread; say what to remove: keep_last=N trims each thread to its N newest "
            "checkpoints, finished_before=T deletes the threads whose run finished before T, "
            "thread_id=... limits it to one thread.")


# -- families -------------------------------------------------------------------------------------

def in_family(root: str, thread_id: str) -> bool:
    """Whether `thread_id` is `root` or a thread under it: compared as text, never as a
    pattern (a `%` or `_` in an id is itself)."""
    return thread_id == root or thread_id.startswith(root + "::")


def family_range(root: str) -> tuple[str, str]:
    """(low, high): the ids under `root` are exactly those with low <= id < high in code
    point (and UTF-8 byte) order — an index range, for stores that compare text so."""
    return root + "::", root + ":;"


def is_top_level(thread_id: str) -> bool:
    return "::" not in thread_id


def parent_thread(thread_id: str, members: Iterable[str]) -> str | None:
    """The nearest member `thread_id` is nested under (the longest prefix ending in '::')."""
    best = None
    for name in members:
        if name != thread_id and thread_id.startswith(name + "::") and \
                (best is None or len(name) > len(best)):
            best = name
    return best


def origin_in_name(thread_id: str) -> str | None:
    """The parent checkpoint a subgraph thread ran from: after the last '@' of its last part."""
    last = thread_id.rsplit("::", 1)[-1]
    return last.rsplit("@", 1)[1] if "@" in last else None


# -- plans ----------------------------------------------------------------------------------------

def plan_delete(family: Family) -> Plan:
    """Every member of the family goes, with all its checkpoints."""
    plan = Plan()
    for name in sorted(family.threads, key=lambda n: (len(n), n)):
        plan.threads.append(name)
        if family.threads[name]:
            plan.checkpoints[name] = sorted(c.id for c in family.threads[name])
    return plan


def plan_delete_thread(thread_id: str, family: Family, *, has_job: bool) -> Plan:
    """What `delete_thread(thread_id)` removes: its family whole, and the thread's job (which
    may be queued before the thread exists). `ThreadNotFoundError` if there is neither thread
    nor job, `ThreadBusyError` if a live run holds a member."""
    if not family.threads and not has_job:
        raise ThreadNotFoundError(not_found_message(thread_id))
    if family.busy:
        raise ThreadBusyError(busy_message(thread_id, family, "delete"))
    plan = plan_delete(family)
    if thread_id not in plan.threads:  # a queued job, and no thread yet
        plan.threads.insert(0, thread_id)
    return plan


def plan_prune(families: Iterable[Family], *, keep_last: int | None,
               finished_before: float | None) -> tuple[Plan, list[str]]:
    """What a prune removes from these families (each trimmed to `keep_last`, or deleted whole
    without it; only those finished before `finished_before` when given), and the roots it
    skips because a live run holds them."""
    plan, skipped = Plan(), []
    for family in families:
        if not family.finished_before(finished_before):
            continue
        if family.busy:
            skipped.append(family.root)
            continue
        plan.add(plan_delete(family) if keep_last is None else plan_trim(family, keep_last))
    return plan, skipped


def plan_trim(family: Family, keep_last: int) -> Plan:
    """Trim each member to its `keep_last` newest checkpoints plus what those need (see the
    module docstring); subgraph threads whose origin is no longer kept go whole."""
    plan = Plan()
    kept: dict[str, set[int]] = {}
    gone: set[str] = set()
    for name in sorted(family.threads, key=lambda n: (len(n), n)):  # parents first
        rows = family.threads[name]
        if name == family.root:
            parent_head = family.parent_head
        else:
            parent = parent_thread(name, family.threads) or family.root
            if parent in gone or not _still_reached(
                    origin_in_name(name), family.threads[parent], kept[parent]):
                gone.add(name)
                continue
            parent_head = _latest(family.threads[parent])
        own_head = _latest(rows)
        whole_run = (own_head is not None and own_head.status not in FINISHED) or \
            _ran_by_open_step(origin_in_name(name), parent_head)
        kept[name] = keep_set(rows, keep_last, whole_run=whole_run)
    _keep_subgraph_bases(family, kept)
    for name, ids in kept.items():
        plan.kept[name] = len(ids)
        dropped = sorted(c.id for c in family.threads[name] if c.id not in ids)
        if dropped:
            plan.checkpoints[name] = dropped
    for name in sorted(gone, key=lambda n: (len(n), n)):
        plan.threads.append(name)
        if family.threads[name]:
            plan.checkpoints[name] = sorted(c.id for c in family.threads[name])
    return plan


def _keep_subgraph_bases(family: Family, kept: dict[str, set[int]]) -> None:
    """A subgraph thread's first checkpoint may have as parent the checkpoint of its parent
    thread whose state was its input (instead of a copy of it): where a kept one does, that
    checkpoint is kept too, with what it is rebuilt from. Deepest threads first, so a base
    kept in a middle thread has its own base kept in turn."""
    for name in sorted(kept, key=lambda n: (-n.count("::"), n)):
        if "::" not in name:
            continue
        own = {c.id for c in family.threads[name]}
        parent = parent_thread(name, family.threads)
        if parent is None or parent not in kept:
            continue
        by_id = {c.id: c for c in family.threads[parent]}
        for record in family.threads[name]:
            if record.id in kept[name] and not record.has_snapshot and \
                    record.parent is not None and record.parent not in own:
                base = by_id.get(record.parent)
                while base is not None and base.id not in kept[parent]:
                    kept[parent].add(base.id)
                    base = None if base.has_snapshot else _parent(base, by_id)


def keep_set(rows: Sequence[Stored], keep_last: int, *, whole_run: bool = False) -> set[int]:
    """The ids a thread keeps: its `keep_last` newest, with `whole_run` its latest run's line
    back to where it started, and every ancestor these are rebuilt from.

    Parent links are followed only to older checkpoints of the same thread, as `load` follows
    them: a damaged file's cycle or dangling parent ends the walk instead of looping on it."""
    by_id = {c.id: c for c in rows}
    if not by_id:
        return set()
    ordered = sorted(by_id)
    keep = set(ordered[-keep_last:])
    if whole_run:
        record: Stored | None = by_id[ordered[-1]]
        while record is not None:
            keep.add(record.id)
            if record.kind in RUN_STARTS:
                break
            record = _parent(record, by_id)
    walked: set[int] = set()
    for cid in sorted(keep, reverse=True):
        record = by_id[cid]
        while record is not None and record.id not in walked:
            walked.add(record.id)
            keep.add(record.id)
            record = None if record.has_snapshot else _parent(record, by_id)
    return keep


def removed_from(plan: Plan, *, pending_writes: int, jobs: int, skipped: Iterable[str] = (),
                 bytes_before: int | None = None, bytes_after: int | None = None,
                 notes: Sequence[str] = ()) -> Removed:
    return Removed(
        threads=tuple(plan.threads),
        checkpoints={t: len(ids) for t, ids in plan.checkpoints.items() if ids},
        pending_writes=pending_writes, jobs=jobs,
        kept={t: n for t, n in plan.kept.items() if t not in plan.threads},
        skipped=tuple(skipped), bytes_before=bytes_before, bytes_after=bytes_after,
        notes=tuple(notes))


def busy_reason(thread_id: str, *, job: bool) -> str:
    return (f"a worker is running the job of thread {thread_id!r}" if job else
            f"a live run holds thread {thread_id!r}")


def busy_message(root: str, family: Family, doing: str) -> str:
    reasons = "; ".join(family.busy.values())
    return (f"cannot {doing} thread {root!r}: {reasons}. Nothing was changed; try again once "
            "the run has finished (or its lease has lapsed, if its process died).")


def not_found_message(thread_id: str) -> str:
    return (f"no thread {thread_id!r} in this store; app.threads() (or `statemachine "
            "threads --all`) lists the threads there are.")


def _latest(rows: Sequence[Stored]) -> Stored | None:
    return max(rows, key=lambda c: c.id) if rows else None


def _parent(record: Stored, by_id: Mapping[int, Stored]) -> Stored | None:
    if record.parent is None or record.parent >= record.id:
        return None
    return by_id.get(record.parent)


_UNREADABLE = object()


def _origin_of(extra: str | None) -> object:
    """The `origin` an update_state checkpoint carries; `_UNREADABLE` for a damaged extra."""
    if extra is None:
        return None
    try:
        value = json.loads(extra)
    except (TypeError, ValueError):
        return _UNREADABLE
    if not isinstance(value, dict):
        return _UNREADABLE
    origin = value.get("origin")
    return None if origin is None else str(origin)


def _still_reached(origin: str | None, parent_rows: Sequence[Stored], kept: set[int]) -> bool:
    """Whether a subgraph thread's origin is still a kept checkpoint of its parent (by id, or
    the origin a kept update carries). A thread under the root whose name names no origin, or
    a parent whose extra cannot be read, is kept: when unsure, nothing is removed."""
    if origin is None or origin in {str(cid) for cid in kept}:
        return True
    for record in parent_rows:
        if record.id in kept:
            found = _origin_of(record.extra)
            if found is _UNREADABLE or found == origin:
                return True
    return False


def _ran_by_open_step(origin: str | None, parent_head: Stored | None) -> bool:
    """Whether the parent's latest checkpoint is an unfinished step that ran this subgraph
    thread: run again, it reads the subgraph's writes back from the subgraph's latest run."""
    if origin is None or parent_head is None or parent_head.status in FINISHED:
        return False
    found = _origin_of(parent_head.extra)
    return found is _UNREADABLE or origin in (str(parent_head.id), found)


__all__ = ["Family", "Plan", "Stored", "check_keep_last", "check_prune", "keep_set",
           "plan_delete", "plan_trim"]
