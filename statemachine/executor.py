"""The executor: one compiled graph's engine, with or without a checkpointer.

It starts runs (`run.Run`, the step loop), reads threads back (states rebuilt by
`replay.Replayer`, the latest kept in `state_cache`), and hands editing, rollback and
retention to their modules (`editing`, `compensation`, `pruning`). docs/design.md sets out
the layers, the commit protocol and its guarantees.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from pydantic import BaseModel

from checkpoints.base import (
    CacheStore,
    Chain,
    Checkpointer,
    CheckpointRecord,
    HeadMark,
    Owner,
    PendingWrite,
    Removed,
)
from checkpoints.memory import MemoryCache

from . import editing, graph_binding, pruning
from .checkpoint_extra import extra_of
from .compensation import current_run, rollback
from .constants import DEFAULT_MAX_STEPS
from .graph_binding import GraphIdentity, identity_of
from .observe import Observer
from .records import decode_tasks, ran_nodes
from .replay import Replayer
from .run import Run, merged_updates
from .runners import Runner, check_runner
from .snapshots import ReplayCost
from .spec import GraphSpec, NodeSpec
from .state_cache import StateCache
from .thread_errors import needs_checkpointer, not_found
from .types import Snapshot


class Executor:
    """Runs one compiled graph, with or without a checkpointer."""

    def __init__(self, spec: GraphSpec, checkpointer: Checkpointer | None, *,
                 name: str = "graph", named: bool = True, store: Any = None,
                 runner: Runner | None = None) -> None:
        self.spec = spec
        self.cluster = runner
        """Where node tasks run unless a call says otherwise (`statemachine.runners`)."""
        self._checked_runners: weakref.WeakSet[Runner] = weakref.WeakSet()
        """Per-call runners whose check of this graph's nodes (they pickle) has passed."""
        self.saver = checkpointer
        self.store = store
        """The compiled store (`statemachine.memory`), or None."""
        self.name = name
        self.observer = Observer()
        self._memory_cache = MemoryCache()
        self._children: dict[str, Executor] = {}
        self.states = StateCache(check_created=checkpointer is None or checkpointer.reuses_ids)
        """The latest state of threads run or read here (see `state_cache`)."""
        self.remember_states = True
        """False for a subgraph's executor: each of its threads runs once, for one task."""
        self.replayer = Replayer(spec.schema)
        """Rebuilds this graph's states from storage."""
        self.identity = identity_of(spec, name, named=named)
        """What threads run here are bound to (`graph_binding`)."""
        self.binds_threads = True
        """False for a subgraph's executor."""

    # -- running ----------------------------------------------------------------------------

    def new_run(self, thread_id: str | None, *, max_steps: int = DEFAULT_MAX_STEPS,
                inline_sync: bool = False, max_concurrency: int | None = None,
                context: Any = None, runner: Runner | None = None) -> Run:
        """A call on one thread: iterate `run.execute(...)`, then read `run.state`.
        `context` is the call's run-scoped context (`run_context`), validated here."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}.")
        run = Run(self, thread_id, max_steps, inline_sync, max_concurrency)
        if runner is not None and runner not in self._checked_runners:
            check_runner(self.spec, runner)  # pickles every node: once a runner, not per call
            self._checked_runners.add(runner)
        run.runner.cluster = runner if runner is not None else self.cluster
        run.runner.raw_context = context
        run.runner.call_context = context if self.spec.context is None else \
            self.spec.context.validate(context)
        return run

    def cache_store(self) -> CacheStore:
        """Where cached node results live: the checkpointer's store, else this process."""
        return self.saver if self.saver is not None else self._memory_cache

    # -- reading ------------------------------------------------------------------------------

    async def get_state(self, thread_id: str, checkpoint_id: str | None = None, *,
                        blocking: bool = False) -> Snapshot:
        saver = self.require_saver("read a thread's state", blocking)
        loaded = await self.load_state(saver, thread_id, checkpoint_id, own=False)
        if loaded is None:
            raise not_found(thread_id, checkpoint_id)
        state, chain, cost = loaded
        if checkpoint_id is None and cost is not None:
            self.states.put(thread_id, chain.head.id, chain.head.created_at, state, cost)
        return self.snapshot(chain.head, state, chain.pending.get(chain.head.id, []))

    async def load_state(self, saver: Checkpointer, thread_id: str, checkpoint_id: str | None,
                         *, own: bool, head: HeadMark | None = None
                         ) -> tuple[BaseModel, Chain, ReplayCost | None] | None:
        """The thread's latest (or given) checkpoint with its state and what rebuilding it from
        storage replays — from this process's cache when it holds the state at that checkpoint
        or one on its chain, else from the nearest stored snapshot. `own`: the caller takes the
        cached state (a run continuing the thread) instead of a copy (a reader); the cost is
        None when the state came whole from the cache (nothing new to remember). None if the
        thread (or checkpoint) does not exist. `head`: the head as read when the caller
        took the thread; if it is the checkpoint a run here finished at, or says the thread
        has none, nothing is read."""
        if head is not None and own and checkpoint_id is None:
            if head.id is None:  # read with the lease: no checkpoint at all (a new
                self.states.forget(thread_id)  # thread)
                return None
            taken = self.states.take_at_head(thread_id, head)
            if taken is not None:
                at_head, record = taken
                return at_head.state, Chain([record], {}), at_head.cost
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
                state, cost = self.replayer.rebuild_counting(chain, entry.state, entry.cost)
                return state, chain, cost
            reloaded = await saver.load(thread_id, checkpoint_id)  # evicted meanwhile
            if reloaded is None:
                return None
            chain = reloaded
        state, cost = self.replayer.rebuild_counting(chain)
        return state, chain, cost

    async def history(self, thread_id: str, limit: int | None = None,
                      before: str | None = None, *, blocking: bool = False) -> list[Snapshot]:
        """The thread's checkpoints as snapshots, newest first (a page: see `list`). A page
        costs what it returns: states are rebuilt from the page's own records, and a parent
        outside the page from its replay chain (bounded by the snapshot interval)."""
        saver = self.require_saver("read a thread's history", blocking)
        records = await saver.list(thread_id, limit=limit, before=before)
        if not records:
            if before is None or not await saver.list(thread_id, limit=1):
                raise not_found(thread_id, None)
            return []
        by_id = {r.id: r for r in records}
        states: dict[str, BaseModel] = {}
        outside = await saver.parents_outside(thread_id, records)
        for parent_id, chain in outside.items():
            by_id[parent_id] = chain.head
            if any(r.parent_id == parent_id and r.snapshot is None for r in records):
                states[parent_id] = self.replayer.rebuild(chain)
        pending = await saver.list_pending(list(by_id))
        for record in reversed(records):  # oldest first: each state from its parent's
            if record.snapshot is not None or record.parent_id is None:
                states[record.id] = self.replayer.decode_snapshot(record)
            else:
                parent = by_id.get(record.parent_id)
                if parent is None:  # dangling (loading it says what is damaged), or the
                    # input of a subgraph's thread that starts from its parent's state
                    own = await saver.load(thread_id, record.id)
                    if own is None or own.records[0].thread_id == thread_id:
                        raise not_found(thread_id, record.parent_id)
                    states[record.id] = self.replayer.rebuild(own)
                    continue
                states[record.id] = self.replayer.apply_record(
                    states[parent.id], parent, record, pending.get(parent.id, []))
        return [replace(self.snapshot(r, states[r.id], pending.get(r.id, [])),
                        ran=ran_nodes(r, by_id.get(r.parent_id) if r.parent_id else None,
                                      pending))
                for r in records]

    async def threads(self, *, blocking: bool = False) -> list[Any]:
        return await self.require_saver("list threads", blocking).threads()

    async def fork(self, thread_id: str, checkpoint_id: str, *, to_thread: str | None = None,
                   blocking: bool = False) -> Snapshot:
        return await editing.fork(self, thread_id, checkpoint_id, to_thread=to_thread,
                                  blocking=blocking)

    async def rebind(self, thread_id: str, *, blocking: bool = False) -> GraphIdentity | None:
        saver = self.require_saver("bind a thread to this graph", blocking)
        return await graph_binding.rebind(saver, thread_id, self.identity, tuple(self.spec.nodes))

    # -- retention (see pruning) ----------------------------------------------------------

    async def delete_thread(self, thread_id: str, *, dry_run: bool = False,
                            blocking: bool = False) -> Removed:
        saver = self.require_saver("delete a thread", blocking)
        return await pruning.delete_thread(self, saver, thread_id, dry_run=dry_run)

    async def prune(self, thread_id: str | None, *, keep_last: int | None,
                    finished_before: float | None, dry_run: bool = False,
                    blocking: bool = False) -> Removed:
        saver = self.require_saver("prune threads", blocking)
        return await pruning.prune(self, saver, thread_id, keep_last=keep_last,
                                   finished_before=finished_before, dry_run=dry_run)

    # -- editing (see editing) --------------------------------------------------------------

    async def update_state(self, thread_id: str, values: Any, *, as_node: str | None = None,
                           checkpoint_id: str | None = None, blocking: bool = False,
                           context: Any = None) -> Snapshot:
        return await editing.update_state(self, thread_id, values, as_node=as_node,
                                          checkpoint_id=checkpoint_id, blocking=blocking,
                                          context=context)

    def child_executor(self, node: NodeSpec) -> Executor:
        """The executor of a subgraph node: its graph, this store, these listeners."""
        assert node.subgraph is not None
        child = self._children.get(node.name)
        if child is None:
            graph = node.subgraph.graph
            child = Executor(graph.spec, self.saver, name=f"{self.name}/{graph.name}",
                             store=self.store if self.store is not None else graph.store,
                             runner=graph._executor.cluster)
            child.observer = self.observer
            child._memory_cache = self._memory_cache
            child.remember_states = False
            child.binds_threads = False  # its threads belong to the parent's, bound there
            child.replayer.parent = self.replayer
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
                           self.replayer.step_writes(parent, record, pending.get(parent.id, []))]
        return line, writes, pending

    async def rollback(self, thread_id: str, *, owner: Owner | None = None,
                       saver: Checkpointer | None = None, blocking: bool = False,
                       context: Any = None, validated: bool = False) -> BaseModel:
        """Run the compensations of the failed run's completed nodes (see `compensation`);
        `context` is the call's run-scoped context (`validated`: already, by the run)."""
        saver = saver or self.require_saver("roll a run back", blocking)
        if not validated and self.spec.context is not None:
            context = self.spec.context.validate(context)
        return await rollback(self, thread_id, saver=saver, owner=owner, context=context)

    def snapshot(self, record: CheckpointRecord, state: BaseModel,
                 pending: Sequence[PendingWrite]) -> Snapshot:
        finished = self.replayer.finished_writes(record, pending)
        done = {(n, i) for n, i, _ in finished}
        tasks = [t for t in decode_tasks(record.next) if t.key not in done]
        pending_updates = merged_updates([(node, update) for node, _, update in finished])
        extra = extra_of(record)
        return Snapshot(
            thread_id=record.thread_id, checkpoint_id=record.id, parent_id=record.parent_id,
            step=record.step, state=state, next=tuple(t.node for t in tasks),
            status=record.status,  # type: ignore[arg-type]
            error=record.error, created_at=record.created_at, pending_writes=pending_updates,
            kind=record.kind, metadata=extra.metadata(),
            interrupts=tuple(q.shown() for q in extra.questions)
            if record.status == "interrupted" else ())

    def require_saver(self, what: str, blocking: bool) -> Checkpointer:
        """The checkpointer; with `blocking`, its view that does I/O in the calling thread."""
        if self.saver is None:
            raise needs_checkpointer(what)
        return self.saver.in_caller_thread() if blocking else self.saver
