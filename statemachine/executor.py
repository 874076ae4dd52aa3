"""The executor: runs a compiled graph step by step and commits each step.

One step (superstep) runs every triggered task concurrently, applies their updates through
the reducers in a fixed order (declaration order, then task index — never completion order),
evaluates the routers on the new state, and commits one checkpoint. With a checkpointer the
commit protocol is this (docs/design.md sets it out with its guarantees; docs/reliability.md
says what it withstands, and how that is tested):

- when a step has several tasks, each task's update is committed as a *pending write* the
  moment it finishes (the last one rides in the checkpoint itself), so a failing sibling or a
  crash cannot lose it;
- a failed node, a failing router or an invalid merge leaves the step uncommitted: its
  finished tasks' writes stay pending and the step's checkpoint is marked failed; resume runs
  only the tasks without a pending write, then merges as if nothing had happened;
- the thread is held through a lease (one writer per thread) and every write is fenced.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from checkpoints.base import (
    FINISHED,
    CacheStore,
    Chain,
    Checkpointer,
    CheckpointRecord,
    NewCheckpoint,
    Owner,
    PendingWrite,
    Removed,
)
from checkpoints.memory import MemoryCache
from checkpoints.rows import damaged

from . import pruning
from .clock import get_clock
from .commands import Command, Send
from .compensation import COMPENSATE, current_run, rollback
from .constants import END, START
from .errors import (
    CheckpointError,
    InvalidRouteError,
    InvalidUpdateError,
    NodeTimeoutError,
    StateMachineError,
    StepLimitError,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
    did_you_mean,
)
from .observe import Observer
from .records import (
    INPUT,
    UPDATE,
    Task,
    cache_key_for,
    decode_goto,
    decode_joins,
    decode_tasks,
    encode_goto,
    encode_joins,
    encode_tasks,
    extra_of,
    ran_nodes,
    record_metadata,
    task_key,
)
from .routing import RefusedRoute, resolve_route, route_items
from .secret_types import mentions_secret
from .snapshots import ReplayCost
from .spec import Branch, CallableInfo, GraphSpec, NodeSpec
from .state_cache import StateCache
from .types import NodeFailure, RunContext, Snapshot, StepEvent, task_id
from .waiting import NO_ANSWERS, TaskAnswers, WaitingForEvent, current_answers


class Executor:
    """Runs one compiled graph, with or without a checkpointer."""

    def __init__(self, spec: GraphSpec, checkpointer: Checkpointer | None, *,
                 name: str = "graph") -> None:
        self.spec = spec
        self.saver = checkpointer
        self.name = name
        self.observer = Observer()
        self._memory_cache = MemoryCache()
        self._children: dict[str, Executor] = {}
        self.states = StateCache(check_created=checkpointer is None or checkpointer.reuses_ids)
        """The latest state of threads run or read here (see `state_cache`)."""
        self.remember_states = True
        """False for a subgraph's executor: each of its threads runs once, for one task."""
        self.parent_executor: Executor | None = None
        """For a subgraph's executor: the executor of the graph it is a node of."""

    # -- running ----------------------------------------------------------------------------

    def new_run(self, thread_id: str | None, *, max_steps: int = 10_000,
                inline_sync: bool = False, max_concurrency: int | None = None) -> Run:
        """A call on one thread: iterate `run.execute(...)`, then read `run.state`."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}.")
        return Run(self, thread_id, max_steps, inline_sync, max_concurrency)

    def cache_store(self) -> CacheStore:
        """Where cached node results live: the checkpointer's store, else this process."""
        return self.saver if self.saver is not None else self._memory_cache

    # -- reading ------------------------------------------------------------------------------

    async def get_state(self, thread_id: str, checkpoint_id: str | None = None, *,
                        blocking: bool = False) -> Snapshot:
        saver = self._require_saver("read a thread's state", blocking)
        loaded = await self.load_state(saver, thread_id, checkpoint_id, own=False)
        if loaded is None:
            raise _not_found(thread_id, checkpoint_id)
        state, chain, cost = loaded
        if checkpoint_id is None and cost is not None:
            self.states.put(thread_id, chain.head.id, chain.head.created_at, state, cost)
        return self.snapshot(chain.head, state, chain.pending.get(chain.head.id, []))

    async def load_state(self, saver: Checkpointer, thread_id: str, checkpoint_id: str | None,
                         *, own: bool) -> tuple[BaseModel, Chain, ReplayCost | None] | None:
        """The thread's latest (or given) checkpoint with its state and what rebuilding it from
        storage replays — from this process's cache when it holds the state at that checkpoint
        or one on its chain, else from the nearest stored snapshot. `own`: the caller takes the
        cached state (a run continuing the thread) instead of a copy (a reader); the cost is
        None when the state came whole from the cache (nothing new to remember). None if the
        thread (or checkpoint) does not exist."""
        known = self.states.known(thread_id)
        chain = await saver.load(thread_id, checkpoint_id, known=known)
        if chain is None:
            return None
        base = chain.records[0]
        if known is not None and base.id == known and base.snapshot is None:
            entry = (self.states.take if own else self.states.copy_of)(
                thread_id, base.id, base.created_at)
            if entry is not None:
                if len(chain.records) == 1:
                    return entry.state, chain, entry.cost if own else None
                state, cost = self.rebuild_counting(chain, entry.state, entry.cost)
                return state, chain, cost
            reloaded = await saver.load(thread_id, checkpoint_id)  # evicted meanwhile
            if reloaded is None:
                return None
            chain = reloaded
        state, cost = self.rebuild_counting(chain)
        return state, chain, cost

    async def history(self, thread_id: str, limit: int | None = None,
                      before: str | None = None, *, blocking: bool = False) -> list[Snapshot]:
        """The thread's checkpoints as snapshots, newest first (a page: see `list`). A page
        costs what it returns: states are rebuilt from the page's own records, and a parent
        outside the page from its replay chain (bounded by the snapshot interval)."""
        saver = self._require_saver("read a thread's history", blocking)
        records = await saver.list(thread_id, limit=limit, before=before)
        if not records:
            if before is None or not await saver.list(thread_id, limit=1):
                raise _not_found(thread_id, None)
            return []
        by_id = {r.id: r for r in records}
        states: dict[str, BaseModel] = {}
        outside = await saver.parents_outside(thread_id, records)
        for parent_id, chain in outside.items():
            by_id[parent_id] = chain.head
            if any(r.parent_id == parent_id and r.snapshot is None for r in records):
                states[parent_id] = self.rebuild(chain)
        pending = await saver.list_pending(list(by_id))
        for record in reversed(records):  # oldest first: each state from its parent's
            if record.snapshot is not None or record.parent_id is None:
                states[record.id] = self._decode_snapshot(record)
            else:
                parent = by_id.get(record.parent_id)
                if parent is None:  # dangling (loading it says what is damaged), or the
                    # input of a subgraph's thread that starts from its parent's state
                    own = await saver.load(thread_id, record.id)
                    if own is None or own.records[0].thread_id == thread_id:
                        raise _not_found(thread_id, record.parent_id)
                    states[record.id] = self.rebuild(own)
                    continue
                states[record.id] = self._apply_record(
                    states[parent.id], parent, record, pending.get(parent.id, []))
        return [replace(self.snapshot(r, states[r.id], pending.get(r.id, [])),
                        ran=ran_nodes(r, by_id.get(r.parent_id) if r.parent_id else None,
                                      pending))
                for r in records]

    async def threads(self, *, blocking: bool = False) -> list[Any]:
        return await self._require_saver("list threads", blocking).threads()

    # -- retention (see pruning) ----------------------------------------------------------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False,
                            blocking: bool = False) -> Removed:
        saver = self._require_saver("delete a thread", blocking)
        return await pruning.delete_thread(self, saver, thread_id, dry_run=dry_run)

    async def prune(self, thread_id: str | None, *, keep_last: int | None,
                    finished_before: float | None, dry_run: bool = False,
                    blocking: bool = False) -> Removed:
        saver = self._require_saver("prune threads", blocking)
        return await pruning.prune(self, saver, thread_id, keep_last=keep_last,
                                   finished_before=finished_before, dry_run=dry_run)

    # -- editing ------------------------------------------------------------------------------

    async def update_state(self, thread_id: str, values: Any, *, as_node: str | None = None,
                           checkpoint_id: str | None = None, blocking: bool = False) -> Snapshot:
        saver = self._require_saver("update a thread's state", blocking)
        spec = self.spec
        if as_node is not None and as_node not in spec.nodes:
            raise ThreadStateError(
                f"update_state(as_node={as_node!r}): no such node"
                f"{did_you_mean(as_node, list(spec.nodes))}; nodes: {', '.join(spec.nodes)}.")
        owner = Owner.new()
        await saver.acquire(thread_id, owner)
        try:
            loaded = await self.load_state(saver, thread_id, checkpoint_id, own=True)
            if loaded is None:
                raise _not_found(thread_id, checkpoint_id)
            state, chain, cost = loaded
            assert cost is not None
            head = chain.head
            head_extra = extra_of(head)
            writer = as_node or UPDATE
            update = spec.schema.validate_update(values, node=writer, step=head.step,
                                                 thread_id=thread_id)
            new_state = spec.schema.apply(state, [(writer, update)], step=head.step,
                                          thread_id=thread_id)
            encoded = spec.schema.encode_update(update, node=writer, step=head.step,
                                                thread_id=thread_id)
            extra: dict[str, Any] = {}
            kind, index = "update", 0
            if as_node is not None:
                run = Run(self, thread_id, 1, False)
                missing = run.load_pending(head, chain)
                if run.pending and [t.node for t in missing] == [as_node]:
                    # the update stands in for the one task the failed step still lacked:
                    # the step commits whole, its finished tasks' writes included
                    kind, index = "step", missing[0].index
                    run.pending[missing[0].key] = update
                    ran = sorted(decode_tasks(head.next), key=lambda t: self.task_order(t.key))
                    new_state = spec.schema.apply(
                        state, [(t.node, run.pending[t.key]) for t in ran], step=head.step,
                        thread_id=thread_id)
                else:
                    ran = [Task(as_node)]
                tasks, joins = await run.route(ran, new_state, head.step, decode_joins(head_extra))
                step, next_json, error = head.step + 1, encode_tasks(tasks), None
                status = "interrupted" if tasks else "done"
                if tasks:
                    extra["interrupt"] = "after"
            else:
                step, next_json, status, error = head.step, head.next, head.status, head.error
                joins = decode_joins(head_extra)
                carried = [*head_extra.get("carried", ()),
                           *([w.node, w.index, json.loads(w.writes)]
                             for w in chain.pending.get(head.id, []))]
                if carried:
                    extra["carried"] = carried
                if "interrupt" in head_extra:
                    extra["interrupt"] = head_extra["interrupt"]
                # the same tasks stay due: they keep their ids (idempotency keys)
                extra["origin"] = head_extra.get("origin", head.id)
            if joins:
                extra["joins"] = encode_joins(joins)
            writes = spec.schema.encode_writes([(writer, index, encoded)])
            snapshot = None
            if cost.due(*_counted(len(writes), spec.schema.appends_only(update)),
                        saver.keep_last):
                snapshot = cost.stored(spec.schema.encode_state(new_state))
            created = time.time()
            new_id = await saver.put(thread_id, owner, NewCheckpoint(
                parent_id=head.id, step=step, kind=kind, status=status, next=next_json,
                writes=writes, snapshot=snapshot, extra=json.dumps(extra) if extra else None,
                error=error, created_at=created))
            if self.remember_states:
                self.states.put(thread_id, new_id, created, new_state, cost)
        except BaseException as exc:
            await release_after(saver, thread_id, owner, exc)
            raise
        await saver.release(thread_id, owner)
        return await self.get_state(thread_id, new_id, blocking=blocking)

    # -- state reconstruction ---------------------------------------------------------------------

    def rebuild(self, chain: Chain, base: BaseModel | None = None) -> BaseModel:
        """The state at `chain.head`: the state at its first checkpoint (`base`, else that
        checkpoint's snapshot) plus the writes since, replayed.

        The writes of the whole chain are decoded in one call and folded into one new state
        (`StateSchema.replay`), so a long chain costs about what its writes hold. If they do
        not decode, each checkpoint is replayed on its own, which names the one that fails."""
        return self.rebuild_counting(chain, base)[0]

    def rebuild_counting(self, chain: Chain, base: BaseModel | None = None,
                         cost: ReplayCost | None = None) -> tuple[BaseModel, ReplayCost]:
        """`rebuild`, and what the rebuild replayed (see `snapshots`) on top of `cost`, what
        rebuilding the chain's first checkpoint costs (None: it has a snapshot)."""
        records = chain.records
        if base is None and records[0].thread_id != chain.head.thread_id:
            # a subgraph's thread that starts from its parent's state: the parent's part of
            # the chain is replayed by the parent's executor (its nodes, its merge order)
            split = next(i for i, r in enumerate(records) if r.thread_id == chain.head.thread_id)
            parent = self.parent_executor or self
            base, cost = parent.rebuild_counting(Chain(records[:split], chain.pending))
            chain = Chain(records[split - 1:], chain.pending)
        state = self._decode_snapshot(chain.records[0]) if base is None else base
        cost = ReplayCost(len(chain.records[0].snapshot or "")) if cost is None else cost
        if len(chain.records) == 1:
            return state, cost
        try:
            steps = self._chain_writes(chain)
        except (ValidationError, ValueError):
            steps = [self._record_writes(parent, record, chain.pending.get(parent.id, []))
                     for parent, record in pairwise(chain.records)]
            for (_, record), writes in zip(pairwise(chain.records), steps, strict=True):
                state = self.spec.schema.apply(state, writes, step=record.step,
                                               thread_id=record.thread_id)
        else:
            state = self.spec.schema.replay(state, steps, thread_id=chain.head.thread_id)
        appends = self.spec.schema.appends_only
        return state, cost.plus(chain, [not all(appends(u) for _, u in writes)
                                        for writes in steps])

    def _chain_writes(self, chain: Chain) -> list[list[tuple[str, dict[str, Any]]]]:
        """Each checkpoint's writes after the first, in the order a step applies them."""
        arrays = []
        for parent, record in pairwise(chain.records):
            items = []
            if record.kind == "step":
                carried = parent.extra and '"carried"' in parent.extra and \
                    extra_of(parent).get("carried")
                if carried:
                    items.append(json.dumps(carried)[1:-1])
                items += [f"[{json.dumps(w.node)},{w.index},{w.writes}]"
                          for w in chain.pending.get(parent.id, ())]
            if record.kind != "fork" and record.writes:
                text = record.writes
                if not (text.startswith("[") and text.endswith("]")):
                    raise ValueError("not a JSON array as a run writes it")
                items.append(text[1:-1])
            arrays.append("[" + ",".join(item for item in items if item) + "]")
        decoded = self.spec.schema.decode_chain_writes("[" + ",".join(arrays) + "]")
        if len(decoded) != len(arrays):
            raise ValueError("the writes do not split into one array per checkpoint")
        return [[(n, u) for n, _, u in (
            sorted(writes, key=self._write_order) if len(writes) > 1 else writes)]
            for writes in decoded]

    def _apply_record(self, state: BaseModel, parent: CheckpointRecord, record: CheckpointRecord,
                      parent_pending: Sequence[PendingWrite]) -> BaseModel:
        return self.spec.schema.apply(state, self._record_writes(parent, record, parent_pending),
                                      step=record.step, thread_id=record.thread_id)

    def _record_writes(self, parent: CheckpointRecord, record: CheckpointRecord,
                       parent_pending: Sequence[PendingWrite]) -> list[tuple[str, dict[str, Any]]]:
        return [(n, u) for n, _, u in self.step_writes(parent, record, parent_pending)]

    def step_writes(self, parent: CheckpointRecord, record: CheckpointRecord,
                    parent_pending: Sequence[PendingWrite]
                    ) -> list[tuple[str, int, dict[str, Any]]]:
        """What `record` applied to its parent's state, decoded, in merge order, as (node,
        index, update): a step's finished tasks (carried or pending on the parent), then its
        own inline writes; an input, update or compensation its own; a fork nothing. The one
        definition the live run's order is checked against (`_chain_writes` batches it)."""
        writes = self.finished_writes(parent, parent_pending) if record.kind == "step" else []
        if record.kind != "fork":
            writes += self.decode_record_writes(record)
        writes.sort(key=self._write_order)
        return writes

    def finished_writes(self, record: CheckpointRecord, pending: Sequence[PendingWrite]
                        ) -> list[tuple[str, int, dict[str, Any]]]:
        """The writes `record`'s step already keeps (carried onto it by update_state, or
        pending), decoded, in merge order."""
        try:
            writes = [*self.carried_writes(record), *(
                (w.node, w.index, self.spec.schema.decode_update(w.writes)) for w in pending)]
        except ValidationError as exc:
            raise _stale(record, exc) from exc
        writes.sort(key=self._write_order)
        return writes

    def carried_writes(self, record: CheckpointRecord) -> list[tuple[str, int, dict[str, Any]]]:
        """Writes of finished tasks that update_state carried onto `record`, validated."""
        carried = extra_of(record).get("carried")
        if not carried:
            return []
        return self.spec.schema.decode_writes(json.dumps(carried))

    def _decode_snapshot(self, record: CheckpointRecord) -> BaseModel:
        if record.snapshot is None:
            raise CheckpointError(
                f"checkpoint {record.id} of thread {record.thread_id!r} has no stored state and "
                "no parent to rebuild it from; the file is damaged.")
        try:
            return self.spec.schema.decode_state(record.snapshot)
        except ValidationError as exc:
            raise _stale(record, exc) from exc

    def _write_order(self, write: tuple[str, int, Any]) -> tuple[int, int]:
        return self.task_order((write[0], write[1]))

    def task_order(self, key: tuple[str, int]) -> tuple[int, int]:
        """Where a task's write goes in its step: declaration order, then task index."""
        node, index = key
        if node in (INPUT, UPDATE):
            return (-1, index)
        if node == COMPENSATE:  # after the writes it may be committed with (see compensation)
            return (len(self.spec.order) + 1, index)
        return (self.spec.order.get(node, len(self.spec.order)), index)

    def decode_record_writes(self, record: CheckpointRecord
                             ) -> list[tuple[str, int, dict[str, Any]]]:
        """The writes stored inline in a checkpoint."""
        if not record.writes:
            return []
        try:
            return self.spec.schema.decode_writes(record.writes)
        except ValidationError as exc:
            raise _stale(record, exc) from exc

    def child_executor(self, node: NodeSpec) -> Executor:
        """The executor of a subgraph node: its graph, this store, these listeners."""
        assert node.subgraph is not None
        child = self._children.get(node.name)
        if child is None:
            graph = node.subgraph.graph
            child = Executor(graph.spec, self.saver, name=f"{self.name}/{graph.name}")
            child.observer = self.observer
            child._memory_cache = self._memory_cache
            child.remember_states = False
            child.parent_executor = self
            self._children[node.name] = child
        return child

    async def run_writes(self, thread_id: str, saver: Checkpointer
                         ) -> tuple[list[CheckpointRecord],
                                    list[tuple[int, str, int, dict[str, Any]]],
                                    dict[str, list[PendingWrite]]]:
        """The latest run of a thread: its checkpoints (oldest first), the writes of its
        committed steps in order as (step, node, index, update), and its pending writes."""
        line = current_run(await saver.list(thread_id))
        pending = await saver.list_pending([r.id for r in line])
        writes: list[tuple[int, str, int, dict[str, Any]]] = []
        for parent, record in pairwise(line):
            if record.kind == "step":
                writes += [(parent.step, n, i, u) for n, i, u in
                           self.step_writes(parent, record, pending.get(parent.id, []))]
        return line, writes, pending

    async def rollback(self, thread_id: str, *, owner: Owner | None = None,
                       saver: Checkpointer | None = None, blocking: bool = False) -> BaseModel:
        """Run the compensations of the failed run's completed nodes (see `compensation`)."""
        saver = saver or self._require_saver("roll a run back", blocking)
        return await rollback(self, thread_id, saver=saver, owner=owner)

    def snapshot(self, record: CheckpointRecord, state: BaseModel,
                 pending: Sequence[PendingWrite]) -> Snapshot:
        finished = self.finished_writes(record, pending)
        done = {(n, i) for n, i, _ in finished}
        tasks = [t for t in decode_tasks(record.next) if t.key not in done]
        pending_updates: dict[str, Any] = {}
        for node, _, update in finished:
            _add_update(pending_updates, node, update)
        return Snapshot(
            thread_id=record.thread_id, checkpoint_id=record.id, parent_id=record.parent_id,
            step=record.step, state=state, next=tuple(t.node for t in tasks),
            status=record.status,  # type: ignore[arg-type]
            error=record.error, created_at=record.created_at, pending_writes=pending_updates,
            kind=record.kind, metadata=record_metadata(record))

    def _require_saver(self, what: str, blocking: bool) -> Checkpointer:
        """The checkpointer; with `blocking`, its view that does I/O in the calling thread."""
        if self.saver is None:
            raise _needs_checkpointer(what)
        return self.saver.in_caller_thread() if blocking else self.saver


class Run:
    """The mutable state of one call on one thread."""

    def __init__(self, executor: Executor, thread_id: str | None, max_steps: int,
                 inline_sync: bool, max_concurrency: int | None = None) -> None:
        self.executor = executor
        self.max_concurrency = max_concurrency
        self.spec = executor.spec
        self.saver = executor.saver
        if self.saver is not None and inline_sync:  # the sync API: our loop, nothing to block
            self.saver = self.saver.in_caller_thread()
        self.thread_id = thread_id
        self.max_steps = max_steps
        self.inline_sync = inline_sync
        self.owner = Owner.new()
        self.state: BaseModel
        self.step = 0
        self.head_id: str | None = None
        self.tasks: list[Task] = []
        self.joins: dict[int, set[str]] = {}
        self.pending: dict[tuple[str, int], dict[str, Any]] = {}
        self.encoded: dict[tuple[str, int], str] = {}
        """JSON of each pending update, made when the task finished (with a checkpointer)."""
        self.committed_pending: set[tuple[str, int]] = set()
        self.gotos: dict[tuple[str, int], list[str | Send]] = {}
        """`Command.goto` targets of finished tasks of this step."""
        self.meta: dict[tuple[str, int], dict[str, Any]] = {}
        """Per finished task: attempts, cache hit, goto (stored with its pending write)."""
        self.timings: dict[str, float] = {}
        self.waiting: dict[tuple[str, int], str] = {}
        """Tasks of this step paused in `wait_for`, with the event each waits for."""
        self.answers: dict[tuple[str, int], list[Any]] = {}
        """Events delivered to tasks of this step, in order (what `wait_for` returns)."""
        self.collected: list[tuple[str, dict[str, Any]]] | None = None
        """When a list, every step's writes are added to it (subgraphs without storage)."""
        self.observing = False
        self.step_origin: str | None = None
        """Set when the head was made by update_state: the checkpoint the tasks came from."""
        self.skip_interrupt_before = False
        self.replay = ReplayCost()
        """What rebuilding the head from storage replays: when to store a snapshot next."""
        self.head_created = 0.0
        """When the head checkpoint was made: with its id, it keys the state cache."""
        self.keep_last = self.saver.keep_last if self.saver is not None else None
        self.head_status: str | None = None
        self.head_extra: dict[str, Any] = {}
        """The status and extra data of the checkpoint a resumed run started from."""
        self.input_base: tuple[str, ReplayCost] | None = None
        """For a subgraph's new thread whose input is its parent thread's state at a stored
        checkpoint: that checkpoint and its replay cost. The thread's first checkpoint then
        has it as parent instead of storing the state again."""

    async def execute(self, input: Any, *, checkpoint_id: str | None = None,
                      resume: bool = False, event: dict[str, Any] | None = None
                      ) -> AsyncIterator[StepEvent]:
        """Run (or resume) the thread; yields one event per committed step.

        `event` delivers values to tasks paused in `wait_for` ({event name: value}).
        """
        if self.saver is None:
            if resume or checkpoint_id is not None or event is not None:
                raise _needs_checkpointer("resume or fork a run")
            await self.start_fresh(input)
            async for step_event in self.steps():
                yield step_event
            return
        if not isinstance(self.thread_id, str) or not self.thread_id:
            raise ThreadStateError(
                "this graph has a checkpointer, so every run needs a thread: pass "
                "thread_id='...' (any text naming the run, e.g. an order id).")
        if resume and input is not None:
            raise ThreadStateError("resume takes no input; use invoke(input, thread_id=...).")
        await self.saver.acquire(self.thread_id, self.owner)
        failure: BaseException | None = None
        try:
            await self.start_on_thread(input, checkpoint_id, resume)
            await self._deliver(event)
            async for step_event in self.steps():
                yield step_event
            if self.executor.remember_states and self.head_id is not None:
                self.executor.states.put(self.thread_id, self.head_id, self.head_created,
                                         self.state, self.replay)
        except StorageUnavailableError as exc:
            failure = exc
            await asyncio.shield(self._mark_storage_failure(exc))
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await asyncio.shield(release_after(self.saver, self.thread_id, self.owner, failure))

    async def _mark_storage_failure(self, exc: StorageUnavailableError) -> None:
        """The store refused a write mid-run (a full disk, a lock held too long): say so on the
        last committed checkpoint, as a node failure would, so the thread reads `failed` with
        the reason instead of `running`. If the store refuses that too, the error says so."""
        if self.head_id is None or self.thread_id is None:
            return
        try:
            await self._mark_failed(exc)
        except StateMachineError as again:
            exc.add_note(f"The thread could not be marked failed either ({again}); it still "
                         "reads as running at its last committed step.")

    # -- starting -----------------------------------------------------------------------------

    async def start_fresh(self, input: Any) -> None:
        if input is None:
            raise ThreadStateError(
                "invoke(None) continues a stored thread, but this graph has no checkpointer; "
                "pass the input state.")
        self.state = self.spec.schema.validate_input(input, thread_id=self.thread_id)
        self.tasks, self.joins = await self.route([Task(START)], self.state, 0, {})

    async def start_on_thread(self, input: Any, checkpoint_id: str | None, resume: bool) -> None:
        assert self.saver is not None and self.thread_id is not None
        loaded = await self.executor.load_state(self.saver, self.thread_id, checkpoint_id,
                                                own=True)
        if loaded is None:
            if checkpoint_id is not None or resume:
                raise _not_found(self.thread_id, checkpoint_id)
            if input is None:
                raise ThreadStateError(
                    f"thread {self.thread_id!r} does not exist yet, so there is nothing to "
                    "continue; start it with an input: invoke({...}, thread_id=...).")
            self.state = self.spec.schema.validate_input(input, thread_id=self.thread_id)
            await self._commit_run_start(None, 0, {})
            return
        state, chain, cost = loaded
        assert cost is not None
        self.replay = cost
        head = chain.head
        extra = extra_of(head)
        if input is not None:
            if checkpoint_id is None and head.status not in FINISHED:
                raise ThreadStateError(_unfinished_message(head))
            update = self.spec.schema.validate_update(input, node=INPUT, step=head.step,
                                                      thread_id=self.thread_id)
            self.state = self.spec.schema.apply(state, [(INPUT, update)], step=head.step,
                                                thread_id=self.thread_id)
            await self._commit_run_start(head.id, head.step, {}, update=update)
            return
        self.state, self.step = state, head.step
        self.joins = decode_joins(extra)
        # paused before these tasks (or paused, resumed, then failed in them): run them now
        self.skip_interrupt_before = head.status in ("interrupted", "failed") and \
            extra.get("interrupt") == "before"
        if checkpoint_id is not None:  # a fork: a new branch that runs the tasks again
            self.tasks = decode_tasks(head.next)
            await self._put(NewCheckpoint(
                parent_id=head.id, step=head.step, kind="fork", status="running",
                next=head.next, snapshot=self._snapshot_if_due(0, True),
                extra=self._extra_json()))
            return
        self.head_id, self.head_created = head.id, head.created_at
        self.step_origin = extra.get("origin")
        self.tasks = decode_tasks(head.next)
        self.load_pending(head, chain)
        self.answers = {task_key(k): list(v) for k, v in extra.get("answers", {}).items()}
        self.head_status, self.head_extra = head.status, extra

    def load_pending(self, head: CheckpointRecord, chain: Chain) -> list[Task]:
        """Take in the writes the head's step already has; returns its tasks still to run."""
        schema = self.spec.schema
        for node, index, update in self.executor.carried_writes(head):
            self.pending[(node, index)] = update
            self.encoded[(node, index)] = schema.encode_update(
                update, node=node, step=head.step, thread_id=self.thread_id)
        for write in chain.pending.get(head.id, []):
            key = (write.node, write.index)
            self.pending[key] = schema.decode_update(write.writes)
            self.encoded[key] = write.writes
            if write.meta:
                meta = json.loads(write.meta)
                self.meta[key] = meta
                if "goto" in meta:
                    self.gotos[key] = decode_goto(meta["goto"])
        self.committed_pending = set(self.pending)
        return [t for t in decode_tasks(head.next) if t.key not in self.pending]

    async def _deliver(self, event: dict[str, Any] | None) -> None:
        """Hand delivered event values to the tasks waiting for them, durably, before running."""
        waiting = self.head_extra.get("waiting") if self.head_status == "interrupted" else None
        if not waiting:
            if event is not None:
                raise ThreadStateError(
                    f"thread {self.thread_id!r} is not waiting for an event, so event="
                    f"{event!r} has nowhere to go; resume it without one.")
            return
        missing = [name for _, _, name in waiting if event is None or name not in event]
        if missing:
            raise ThreadStateError(
                f"thread {self.thread_id!r} is waiting for event {missing[0]!r} (node "
                f"{waiting[0][0]!r}); resume it with app.resume({self.thread_id!r}, "
                f"event={{{missing[0]!r}: ...}}).")
        assert event is not None and self.saver is not None and self.thread_id is not None
        for node, index, name in waiting:
            self.answers.setdefault((node, index), []).append(to_jsonable_python(event[name]))
        self.skip_interrupt_before = True
        extra = {k: v for k, v in self.head_extra.items() if k not in ("waiting", "interrupt")}
        extra["answers"] = {f"{n}|{i}": v for (n, i), v in self.answers.items()}
        await self.saver.mark(self.thread_id, self.owner, self.head_id or "", status="running",
                              extra=json.dumps(extra))

    async def _commit_run_start(self, parent_id: str | None, step: int,
                                joins: dict[int, set[str]],
                                update: dict[str, Any] | None = None) -> None:
        assert self.saver is not None and self.thread_id is not None
        self.step = step
        self.tasks, self.joins = await self.route([Task(START)], self.state, step, joins)
        writes = None
        if update is not None:
            encoded = self.spec.schema.encode_update(update, node=INPUT, step=step,
                                                     thread_id=self.thread_id)
            writes = self.spec.schema.encode_writes([(INPUT, 0, encoded)])
        status = "running" if self.tasks else "done"
        # a new thread's first checkpoint is where every replay starts: it always has the state
        appends = update is None or self.spec.schema.appends_only(update)
        if parent_id is None and self.input_base is not None:
            parent_id, self.replay = self.input_base
        snapshot = self._snapshot_if_due(len(writes or ""), appends) if parent_id is not None \
            else \
            self.replay.stored(self.spec.schema.encode_state(self.state))
        await self._put(NewCheckpoint(
            parent_id=parent_id, step=step, kind="input", status=status,
            next=encode_tasks(self.tasks), writes=writes, snapshot=snapshot,
            extra=self._extra_json()))

    # -- the step loop ------------------------------------------------------------------------

    async def steps(self) -> AsyncIterator[StepEvent]:
        steps_run = 0
        while self.tasks:
            if steps_run >= self.max_steps:
                await self._fail_step_limit()
            if not self.skip_interrupt_before and self.spec.interrupt_before and any(
                    t.node in self.spec.interrupt_before for t in self.tasks):
                await self._pause_before()
                return
            self.skip_interrupt_before = False
            event = await self._run_step()
            if event is None:  # a task waits for an event
                return
            steps_run += 1
            yield event
            if event.status == "interrupted":
                return

    async def _run_step(self) -> StepEvent | None:
        """Run one step and commit it; None when it paused for an event instead."""
        step, state = self.step, self.state
        observer = self.executor.observer
        self.observing = observing = observer.active  # asked once a step: it is on the hot path
        if observing:
            await observer.step_start(self.thread_id, step, tuple(t.node for t in self.tasks))
        self.timings = {}
        to_run = [t for t in self.tasks if t.key not in self.pending]
        results = await self._run_tasks(to_run, state, step)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self._fail(_pick_error(failures))
        if self.waiting:
            await self._pause_for_events()
            return None
        ordered = [(t, self.pending[t.key]) for t in self.tasks]
        if self.collected is not None:
            self.collected += [(t.node, update) for t, update in ordered]
        try:
            new_state = self.spec.schema.apply(
                state, [(t.node, update) for t, update in ordered], step=step,
                thread_id=self.thread_id)
            tasks, joins = await self.route([t for t, _ in ordered], new_state, step,
                                            self.joins)
        except Exception as exc:
            await self._fail(exc)
        status = "done" if not tasks else "running"
        if self.spec.interrupt_after and any(
                t.node in self.spec.interrupt_after for t, _ in ordered) and tasks:
            status = "interrupted"
        metadata = self._step_metadata()
        if self.saver is not None:
            await self._commit_step(ordered, new_state, tasks, joins, status, metadata)
        self.state, self.tasks, self.joins, self.step = new_state, tasks, joins, step + 1
        self.pending, self.encoded, self.committed_pending = {}, {}, set()
        self.gotos, self.meta, self.answers = {}, {}, {}
        self.step_origin = None
        updates: dict[str, Any] = {}
        for task, update in ordered:
            _add_update(updates, task.node, update)
        event = StepEvent(
            step=step, nodes=tuple(dict.fromkeys(t.node for t, _ in ordered)),
            updates=updates, state=new_state, status=status,  # type: ignore[arg-type]
            thread_id=self.thread_id, checkpoint_id=self.head_id, timings=self.timings,
            attempts=metadata.get("attempts", {}),
            cache_hits=tuple(metadata.get("cache_hits", ())))
        if observing:
            await observer.step_end(event)
        return event

    def _step_metadata(self) -> dict[str, Any]:
        """What the step's checkpoint records about its tasks: retries and cache hits."""
        attempts: dict[str, int] = {}
        hits: list[str] = []
        for (node, _), meta in sorted(self.meta.items(),
                                      key=lambda item: self.executor.task_order(item[0])):
            if meta.get("attempts", 1) > 1:
                attempts[node] = max(attempts.get(node, 1), meta["attempts"])
            if meta.get("cache_hit") and node not in hits:
                hits.append(node)
        metadata: dict[str, Any] = {}
        if attempts:
            metadata["attempts"] = attempts
        if hits:
            metadata["cache_hits"] = hits
        return metadata

    async def _pause_for_events(self) -> None:
        """End the run here: finished tasks' writes stay pending, the step waits for events."""
        if self.saver is None:
            node, event = next(iter(self.waiting.items()))
            raise ThreadStateError(
                f"node {node[0]!r} called wait_for({event!r}), which pauses the run until the "
                "event is delivered with resume(); that needs a checkpointer to keep the run: "
                "compile(checkpointer=...).")
        assert self.thread_id is not None and self.head_id is not None
        for task in self.tasks:
            if task.key in self.pending and task.key not in self.committed_pending:
                await self._commit_pending(task)
        extra = json.loads(self._extra_json() or "{}")
        extra["interrupt"] = "wait"
        extra["waiting"] = [[n, i, e] for (n, i), e in self.waiting.items()]
        if self.answers:
            extra["answers"] = {f"{n}|{i}": v for (n, i), v in self.answers.items()}
        await self.saver.mark(self.thread_id, self.owner, self.head_id, status="interrupted",
                              extra=json.dumps(extra))

    async def _run_tasks(self, tasks: list[Task], state: BaseModel,
                         step: int) -> list[BaseException | None]:
        """Run the tasks; each outcome is None (finished or waiting) or its exception."""
        if len(tasks) == 1:
            try:
                await self._execute(tasks[0], state, step, inline=self.inline_sync)
            except Exception as exc:
                return [exc]
            return [None]
        remaining = len(tasks)
        limit = self.max_concurrency or self.spec.max_concurrency
        gate = asyncio.Semaphore(limit) if limit else None

        async def run_one(task: Task) -> None:
            nonlocal remaining
            try:
                if gate is None:
                    await self._execute(task, state, step, inline=False)
                else:
                    async with gate:
                        await self._execute(task, state, step, inline=False)
            finally:
                remaining -= 1
            if self.saver is not None and remaining > 0 and task.key in self.pending:
                await self._commit_pending(task)

        outcomes = await asyncio.gather(*(run_one(t) for t in tasks), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation, KeyboardInterrupt: not a node failure
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    async def _execute(self, task: Task, state: BaseModel, step: int, *, inline: bool) -> None:
        """Run one task through its cache, timeout and retry policy.

        Its validated update (and, to be stored, its JSON) become pending; a task that calls
        `wait_for` for an event not yet delivered is recorded as waiting instead.
        """
        node = self.spec.nodes[task.node]
        arg = self._payload_input(node, task) if task.sent else state
        observer = self.executor.observer
        if self.observing:
            await observer.node_start(self.thread_id, step, task.node)
        cache_key = None
        if node.cache is not None:
            cache_key = cache_key_for(node.cache, arg)
            hit = await self.executor.cache_store().cache_get(
                self._cache_space(node), cache_key, now=get_clock().time())
            if hit is not None:
                cached = json.loads(hit)
                update = self.spec.schema.decode_update(json.dumps(cached["update"]))
                await self._finish(task, update, decode_goto(cached["goto"]),
                                   {"cache_hit": True}, step, 0.0)
                return
        policy = node.retry or self.spec.retry
        context = self._context(task, step) if node.call.wants_context else None
        attempt = 0
        captured = False
        started = time.perf_counter()
        while True:
            attempt += 1
            try:
                result = await self._call_node(node, task, arg, context, inline, step)
                break
            except WaitingForEvent as waiting:
                self.waiting[task.key] = waiting.event
                return
            except Exception as exc:
                if policy is not None and attempt < policy.max_attempts and \
                        policy.should_retry(exc):
                    delay = policy.delay(attempt)
                    await observer.node_retry(self.thread_id, step, task.node, attempt, exc,
                                              delay)
                    await get_clock().sleep(delay)
                    continue
                await observer.node_error(self.thread_id, step, task.node, exc, attempt)
                if node.on_error == "capture":
                    captured = True
                    result = {node.error_field: [NodeFailure(
                        node=task.node, error_type=type(exc).__name__, message=str(exc),
                        step=step, thread_id=self.thread_id)]}
                    break
                if attempt > 1:
                    exc.add_note(f"node {task.node!r} failed {attempt} attempts")
                exc.add_note(f"raised by node {task.node!r} at step {step}{self._of_thread()}")
                raise
        seconds = time.perf_counter() - started
        update, goto = self._split_result(node, result, step)
        if cache_key is not None and not captured:  # a failure is not a result to reuse
            value = json.dumps({"update": json.loads(self.spec.schema.encode_update(
                update, node=task.node, step=step, thread_id=self.thread_id)),
                "goto": encode_goto(goto)})
            assert node.cache is not None
            await self.executor.cache_store().cache_put(
                self._cache_space(node), cache_key, value, node.cache.ttl,
                now=get_clock().time())
        await self._finish(task, update, goto, {"attempts": attempt} if attempt > 1 else {},
                           step, seconds)

    async def _call_node(self, node: NodeSpec, task: Task, arg: Any, context: RunContext | None,
                         inline: bool, step: int) -> Any:
        info = node.call
        args = (arg, context) if info.wants_context else (arg,)
        answers = self.answers.get(task.key)
        token = current_answers.set(TaskAnswers(list(answers)) if answers else NO_ANSWERS)
        try:
            if node.subgraph is not None:
                call = self._run_subgraph(node, task, arg)
            else:  # with a timeout a sync node runs in a thread, so it can be abandoned
                call = call_user_function(info, args, inline and node.timeout is None)
            if node.timeout is None:
                return await call
            try:
                return await asyncio.wait_for(call, node.timeout)
            except TimeoutError:
                raise NodeTimeoutError(
                    f"node {task.node!r} ran longer than its timeout of {node.timeout} s at "
                    f"step {step}{self._of_thread()}", node=task.node, timeout=node.timeout,
                    step=step, thread_id=self.thread_id) from None
        finally:
            current_answers.reset(token)

    async def _run_subgraph(self, node: NodeSpec, task: Task, arg: Any) -> Any:
        """Run a subgraph node to its end; its update for the parent.

        With a checkpointer it runs as its own thread (`parent::node:index@checkpoint`, the
        same for every re-run of this task), so a resumed parent resumes it where it stopped,
        and a subgraph that waits for an event pauses the parent until the parent's resume
        delivers it.
        """
        sub = node.subgraph
        assert sub is not None
        child = self.executor.child_executor(node)
        child_input = arg if sub.input is None else sub.input(arg)  # None: the same schema
        if self.saver is None:
            run = child.new_run(self.thread_id, inline_sync=self.inline_sync)
            run.collected = []
            async for _ in run.execute(child_input):
                pass
            writes = [update for _, update in run.collected]
            final = run.state
        else:
            thread = f"{self.thread_id}::{node.name}:{task.index}@{self._origin(0)}"
            chain = await self.saver.load(thread)
            head = chain.head if chain is not None else None
            extra = extra_of(head) if head is not None else {}
            if head is not None and head.status in FINISHED:
                final = child.rebuild(chain)  # type: ignore[arg-type]
            else:
                event = None
                if head is not None and head.status == "interrupted" and "waiting" in extra:
                    name = extra["waiting"][0][2]
                    event = {name: _newest_answer(name)}
                run = child.new_run(thread, inline_sync=self.inline_sync)
                if head is None and not task.sent and self.step_origin is None and \
                        self.head_id is not None and arg is self.state and \
                        child.spec.schema.model is self.spec.schema.model:
                    # its input is this thread's state at the head: refer to it, not a copy
                    run.input_base = (self.head_id, self.replay.copy())
                async for _ in run.execute(child_input if head is None else None,
                                           resume=head is not None, event=event):
                    pass
                final = run.state
                ended = await self.saver.load(thread)
                assert ended is not None
                waiting = extra_of(ended.head).get("waiting")
                if ended.head.status == "interrupted":
                    if waiting:
                        raise WaitingForEvent(waiting[0][2])
                    raise ThreadStateError(
                        f"subgraph node {node.name!r} paused on an interrupt of its own; "
                        "interrupts inside subgraphs are not supported: use wait_for().")
            writes = [update for *_, update in (await child.run_writes(thread, self.saver))[1]]
        if sub.output is None:  # the same schema: its writes pass up
            return self.spec.schema.combine(writes)
        return sub.output(final)

    def _split_result(self, node: NodeSpec, result: Any, step: int
                      ) -> tuple[dict[str, Any], list[str | Send]]:
        """A node's return value as (validated update, Command targets)."""
        goto: list[str | Send] = []
        if isinstance(result, Command):
            goto = result.targets()
            for target in goto:
                name = target.node if isinstance(target, Send) else target
                if name not in node.destinations and not (name == END
                                                           and not isinstance(target, Send)):
                    raise InvalidRouteError(
                        f"node {node.name!r} returned Command(goto={name!r}), but its declared "
                        f"destinations are {list(node.destinations)} (step {step}"
                        f"{self._of_thread()}); add it: add_node(..., destinations=[...]).",
                        node=node.name, returned=name, allowed=node.destinations, step=step,
                        thread_id=self.thread_id)
            result = result.update
        update = self.spec.schema.validate_update(result, node=node.name, step=step,
                                                  thread_id=self.thread_id)
        return update, goto

    async def _finish(self, task: Task, update: dict[str, Any], goto: list[str | Send],
                meta: dict[str, Any], step: int, seconds: float) -> None:
        if self.saver is not None:  # unstorable values fail here, as this node's failure
            self.encoded[task.key] = self.spec.schema.encode_update(
                update, node=task.node, step=step, thread_id=self.thread_id)
        if goto:
            self.gotos[task.key] = goto
            meta = {**meta, "goto": encode_goto(goto)}
        if meta:
            self.meta[task.key] = meta
        self.timings[task.node] = self.timings.get(task.node, 0.0) + seconds
        self.pending[task.key] = update
        if self.observing:
            await self.executor.observer.node_end(self.thread_id, step, task.node, update,
                                                  seconds, meta)

    def _payload_input(self, node: NodeSpec, task: Task) -> Any:
        """A Send's stored payload, validated into the type the node's parameter declares."""
        if node.payload_type is None:
            return task.payload
        try:
            return node.payload_type.validate_python(task.payload)
        except ValidationError as exc:
            shown = "a value hidden: it holds a secret" if mentions_secret(task.payload) \
                else f"{task.payload!r:.80}"
            raise InvalidUpdateError(
                f"a Send to node {node.name!r} carried a payload that does not fit the type of "
                f"its parameter: {exc.errors(include_url=False)[0]['msg']} (got "
                f"{shown}){self._of_thread()}.", node=node.name,
                thread_id=self.thread_id) from None

    def _cache_space(self, node: NodeSpec) -> str:
        """Cache entries of different code never mix, even in graphs of the same name."""
        return f"{self.executor.name}:{node.name}:{node.code_fingerprint}"

    def _context(self, task: Task, step: int) -> RunContext:
        return RunContext(self.thread_id, step, task.node,
                          task_id(self.thread_id, self._origin(step), task.node, task.index))

    def _origin(self, step: int) -> str:
        """Where the current step's tasks were scheduled: what their ids derive from."""
        if self.step_origin is not None:
            return self.step_origin
        return self.head_id if self.head_id is not None else f"{self.owner.token}-{step}"

    # -- routing ------------------------------------------------------------------------------

    async def route(self, ran: Sequence[Task], state: BaseModel, step: int,
                    joins: dict[int, set[str]]) -> tuple[list[Task], dict[int, set[str]]]:
        """The tasks of the next step, after `ran` produced `state`."""
        spec = self.spec
        targets: list[str | Send] = []
        progress = joins
        for task in ran:
            node = task.node
            targets.extend(spec.edges.get(node, ()))
            for branch in spec.branches.get(node, ()):
                targets.extend(await self._take_branch(branch, state, step))
            targets.extend(self.gotos.get(task.key, ()))
            for join in spec.joins_by_source.get(node, ()):
                if progress is joins:
                    progress = {k: set(v) for k, v in joins.items()}
                seen = progress.setdefault(join.index, set())
                seen.add(node)
                if len(seen) == len(join.sources):
                    targets.append(join.target)
                    del progress[join.index]
        if len(targets) == 1 and isinstance(targets[0], str):
            return ([] if targets[0] == END else [Task(targets[0])]), progress
        names = {t for t in targets if isinstance(t, str) and t != END}
        tasks = [Task(t) for t in names]
        sent = Counter(names)
        for target in targets:
            if isinstance(target, Send):
                payload = self._storable_payload(target)
                tasks.append(Task(target.node, sent[target.node], payload, sent=True))
                sent[target.node] += 1
        tasks.sort(key=lambda t: (spec.order[t.node], t.index))
        return tasks, progress

    def _storable_payload(self, send: Send) -> Any:
        """A Send's payload in its JSON form, as it is stored: with or without a checkpointer,
        first run or resume, the node then gets the same input (see `_payload_input`)."""
        try:
            return to_jsonable_python(send.payload)
        except PydanticSerializationError as exc:
            raise InvalidUpdateError(
                f"the payload of Send({send.node!r}, ...) cannot be stored as JSON: {exc}",
                node=send.node, thread_id=self.thread_id) from exc

    async def _take_branch(self, branch: Branch, state: BaseModel,
                           step: int) -> list[str | Send]:
        info = branch.router
        args = (state, self._context(Task(branch.source), step)) if info.wants_context \
            else (state,)
        try:
            result = await call_user_function(info, args, inline=True)
        except Exception as exc:
            exc.add_note(f"raised by router {info.name!r} after node {branch.source!r} at "
                         f"step {step}{self._of_thread()}")
            raise
        return [self._resolve(branch, item, step) for item in route_items(result)]

    def _resolve(self, branch: Branch, item: Any, step: int) -> str | Send:
        target = resolve_route(self.spec, branch, item)
        if not isinstance(target, RefusedRoute):
            return target
        raise InvalidRouteError(
            f"router {branch.router.name!r} after node {branch.source!r} {target.reason} at "
            f"step {step}{self._of_thread()}.", node=branch.source, returned=item,
            allowed=list(target.allowed), step=step, thread_id=self.thread_id)

    # -- committing ---------------------------------------------------------------------------

    async def _commit_pending(self, task: Task) -> None:
        assert self.saver is not None and self.head_id is not None and self.thread_id
        meta = self.meta.get(task.key)
        await self.saver.put_pending(self.thread_id, self.owner, PendingWrite(
            self.head_id, task.node, task.index, self.encoded[task.key],
            json.dumps(meta) if meta else None))
        self.committed_pending.add(task.key)

    async def _commit_step(self, ordered: list[tuple[Task, dict[str, Any]]],
                           new_state: BaseModel, tasks: list[Task],
                           joins: dict[int, set[str]], status: str,
                           metadata: dict[str, Any]) -> None:
        assert self.saver is not None and self.thread_id is not None
        schema = self.spec.schema
        inline = [(t.node, t.index, self.encoded[t.key])
                  for t, _ in ordered if t.key not in self.committed_pending]
        writes = schema.encode_writes(inline) if inline else None
        appends = self.spec.schema.appends_only
        size = len(writes or "") + sum(len(self.encoded[key]) for key in self.committed_pending)
        self.joins = joins
        await self._put(NewCheckpoint(
            parent_id=self.head_id, step=self.step + 1, kind="step", status=status,
            next=encode_tasks(tasks), writes=writes,
            snapshot=self._snapshot_if_due(size, all(appends(u) for _, u in ordered),
                                           new_state),
            extra=self._extra_json(interrupt="after" if status == "interrupted" else None,
                                   metadata=metadata)))

    async def _put(self, checkpoint: NewCheckpoint) -> None:
        """Commit `checkpoint` as the new head."""
        assert self.saver is not None and self.thread_id is not None
        created = time.time()
        self.head_id = await self.saver.put(self.thread_id, self.owner,
                                            replace(checkpoint, created_at=created))
        self.head_created = created

    def _snapshot_if_due(self, size: int, appends: bool,
                         state: BaseModel | None = None) -> str | None:
        """The state as a snapshot for the next checkpoint (with `size` bytes of writes that
        only append, or not), if the replay it would otherwise add is due one (`snapshots`)."""
        if not self.replay.due(*_counted(size, appends), self.keep_last):
            return None
        return self.replay.stored(self.spec.schema.encode_state(
            self.state if state is None else state))

    async def _fail(self, exc: BaseException) -> None:
        """Keep what finished, mark the step failed, and raise `exc`."""
        if self.saver is not None and not isinstance(exc, ThreadBusyError):
            assert self.thread_id is not None and self.head_id is not None
            for task in self.tasks:
                if task.key in self.pending and task.key not in self.committed_pending:
                    await self._commit_pending(task)
            await self._mark_failed(exc)
            if self.spec.on_failure == "compensate":
                await self.executor.rollback(self.thread_id, owner=self.owner, saver=self.saver)
        raise exc

    async def _mark_failed(self, exc: BaseException) -> None:
        """Mark the step failed with `exc` on the last committed checkpoint."""
        assert self.saver is not None and self.thread_id is not None and self.head_id
        # a failed thread is read by people, often without the graph (statemachine show):
        # it gets its state whole, once (a thread takes no new input until it is resumed)
        error = f"{type(exc).__name__}: {exc}"
        if self.replay.steps_since and not isinstance(exc, StorageUnavailableError):
            snapshot = self.spec.schema.encode_state(self.state)
            try:
                await self.saver.mark(self.thread_id, self.owner, self.head_id,
                                      status="failed", error=error, snapshot=snapshot)
            except StorageUnavailableError:
                pass  # a full disk, say: the small mark below may still fit
            else:
                self.replay.stored(snapshot)
                return
        await self.saver.mark(self.thread_id, self.owner, self.head_id, status="failed",
                              error=error)

    async def _fail_step_limit(self) -> None:
        nodes = [t.node for t in self.tasks]
        error = StepLimitError(
            f"the run reached max_steps={self.max_steps} steps{self._of_thread()} and still had "
            f"node(s) {', '.join(map(repr, nodes))} to run at step {self.step}. If the graph "
            "loops on purpose, pass a larger max_steps" +
            ("; resume the thread to continue." if self.saver else "; otherwise check the "
             "router that should end the loop."), next_nodes=nodes, max_steps=self.max_steps)
        await self._fail(error)

    async def _pause_before(self) -> None:
        if self.saver is not None:
            assert self.thread_id is not None and self.head_id is not None
            await self.saver.mark(self.thread_id, self.owner, self.head_id,
                                  status="interrupted", extra=self._extra_json(interrupt="before"))

    def _extra_json(self, *, interrupt: str | None = None,
                    metadata: dict[str, Any] | None = None) -> str | None:
        extra: dict[str, Any] = dict(metadata or {})
        if self.joins:
            extra["joins"] = encode_joins(self.joins)
        if interrupt:
            extra["interrupt"] = interrupt
        return json.dumps(extra) if extra else None

    def _of_thread(self) -> str:
        return f" of thread {self.thread_id!r}" if self.thread_id is not None else ""


async def call_user_function(info: CallableInfo, args: tuple[Any, ...], inline: bool) -> Any:
    """Call a node, router or compensation: awaited if async, else inline or in a thread."""
    if info.is_async:
        return await info.fn(*args)
    result = _call_sync(info.fn, args) if inline else \
        await asyncio.to_thread(_call_sync, info.fn, args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _call_sync(fn: Any, args: tuple[Any, ...]) -> Any:
    """Call a sync function; a StopIteration it raises becomes a RuntimeError from it.

    A StopIteration cannot cross a coroutine (PEP 479) nor be set on a future (it would hang
    the run), so it is turned into the RuntimeError Python itself would make of it.
    """
    try:
        return fn(*args)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)!s} raised StopIteration") from exc


def _newest_answer(event: str) -> Any:
    """For a subgraph waiting for `event`: the value its parent's resume delivered last, or
    pause the parent. Each pause of the parent stands for exactly one pause of the subgraph,
    so the newest answer is the one for the subgraph's current wait."""
    answers = current_answers.get()
    if answers is None or not answers.answers:
        raise WaitingForEvent(event)
    return answers.answers[-1]


def _pick_error(failures: list[BaseException]) -> BaseException:
    """The first failure in task order, preferring a lost lease (nothing else can be saved)."""
    for failure in failures:
        if isinstance(failure, ThreadBusyError):
            return failure
    return failures[0]


def _add_update(updates: dict[str, Any], node: str, update: dict[str, Any]) -> None:
    if node not in updates:
        updates[node] = update
    elif isinstance(updates[node], list):
        updates[node].append(update)
    else:
        updates[node] = [updates[node], update]


def _unfinished_message(head: CheckpointRecord) -> str:
    what = {"failed": f"failed at step {head.step} ({head.error})",
            "interrupted": f"is paused before step {head.step}",
            "running": f"stopped at step {head.step} without finishing (its process ended)"}
    return (f"thread {head.thread_id!r} {what.get(head.status, head.status)}, so new input "
            "would drop its pending work. Continue it with app.resume(thread_id) (after "
            "app.update_state(...) if the state needs fixing), or start a new branch from a "
            "checkpoint with invoke(input, thread_id=..., checkpoint_id=...).")


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


def _not_found(thread_id: str, checkpoint_id: str | None) -> ThreadNotFoundError:
    if checkpoint_id is not None:
        return ThreadNotFoundError(
            f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}; app.history(thread_id) "
            "lists its checkpoints.")
    return ThreadNotFoundError(
        f"no thread {thread_id!r} in this store; app.threads() lists the threads there are.")


def _needs_checkpointer(what: str) -> StateMachineError:
    return ThreadStateError(
        f"to {what} the graph needs a checkpointer: compile(checkpointer=SQLiteCheckpointer("
        "'runs.db')) (or MemoryCheckpointer() for tests).")


def _counted(size: int, appends: bool) -> tuple[int, int]:
    """`ReplayCost.due`'s bytes that count and bytes that only append, of `size` bytes."""
    return (0, size) if appends else (size, 0)


def _stale(record: CheckpointRecord, exc: ValidationError) -> CheckpointError:
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return damaged(None, record.thread_id, record.id, "its stored state or writes are not "
                       f"valid JSON ({exc.errors(include_url=False)[0]['msg']})")
    fields = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
    return CheckpointError(
        f"checkpoint {record.id} of thread {record.thread_id!r} no longer fits the state "
        f"schema (field{'s' if len(fields) != 1 else ''} {', '.join(fields) or '?'}): "
        f"{exc.errors(include_url=False)[0]['msg']}. The schema changed since it was written; "
        "make the change backwards compatible (a default, a wider type) or migrate the data.")

