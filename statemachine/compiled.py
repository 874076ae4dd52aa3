"""`CompiledGraph`: a validated graph, ready to run. Every method has an async twin.

The sync methods wrap the async ones (see `_sync`). In `invoke`/`stream`, a step that runs a
single sync node calls it directly in the calling thread, as a plain function call would;
nodes of a parallel step, and every sync node under `ainvoke`/`astream`, run in worker threads
so they overlap and never block your event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import networkx as nx
from pydantic import BaseModel

from ._sync import iterate_sync, run_sync
from .commands import NO_RESUME
from .constants import DEFAULT_MAX_STEPS
from .executor import Executor
from .graph_binding import GraphIdentity
from .memory import check_store, check_subgraph_stores
from .runners import Runner, check_runner
from .spec import GraphSpec
from .streaming import StreamChannel, check_modes, shape
from .types import Snapshot

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer, JobInfo, Removed, ThreadInfo
    from checkpoints.store_base import BaseStore


class CompiledGraph:
    """A graph that passed validation. Run it with `invoke`, `stream`, `resume`."""

    def __init__(self, spec: GraphSpec, *, checkpointer: Checkpointer | None = None,
                 name: str | None = None, store: BaseStore | None = None,
                 runner: Runner | None = None) -> None:
        self.spec = spec
        self.checkpointer = checkpointer
        self.store = check_store(store, checkpointer)
        check_subgraph_stores(spec, checkpointer, self.store)
        """The long-term memory nodes reach as `ctx.store` (`statemachine.memory`)."""
        self.name = name or f"{spec.schema.model.__name__}Graph"
        self._executor = Executor(spec, checkpointer, name=self.name, named=name is not None,
                                  store=self.store, runner=check_runner(spec, runner))

    def __repr__(self) -> str:
        return (f"<CompiledGraph {self.name!r}: {len(self.spec.nodes)} nodes, "
                f"checkpointer={self.checkpointer!r}>")

    @property
    def state_schema(self) -> type[BaseModel]:
        return self.spec.schema.model

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.spec.nodes)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Jupyter shows the diagram: SVG when Graphviz's `dot` is installed, else Mermaid."""
        import visualize

        bundle = {"text/plain": repr(self),
                  "text/markdown": f"```mermaid\n{visualize.to_mermaid(self)}```"}
        with contextlib.suppress(visualize.GraphvizNotFoundError):
            bundle["image/svg+xml"] = visualize.render_bytes(self, "svg").decode()
        return bundle

    def _repr_svg_(self) -> str | None:
        import visualize

        try:
            return visualize.render_bytes(self, "svg").decode()
        except visualize.GraphvizNotFoundError:
            return None

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a networkx DiGraph (START and END included), a copy you may change."""
        return self.spec.digraph.copy()

    # -- running ------------------------------------------------------------------------------

    def invoke(self, input: Any, thread_id: str | None = None, *,
               checkpoint_id: str | None = None, max_steps: int = DEFAULT_MAX_STEPS,
               max_concurrency: int | None = None, context: Any = None,
               runner: Runner | None = None) -> Any:
        """Run to the end and return the final state. A run that pauses (an interrupt, a
        `wait_for`, `interrupt_before`/`after`) returns normally too, with the state as of
        the pause: the state its paused step started from (`get_state(thread_id)` then says
        what waits, and `resume` continues). `context`: the call's run-scoped dependencies,
        in every node's `RunContext.context`, never stored (validated into the graph's
        `context_schema` when it has one). `runner`: where this call's node tasks run
        (`statemachine.runners`), instead of the graph's."""
        return run_sync(lambda: self._ainvoke(
            input, thread_id, checkpoint_id=checkpoint_id, max_steps=max_steps,
            max_concurrency=max_concurrency, inline_sync=True, context=context,
            runner=runner))

    async def ainvoke(self, input: Any, thread_id: str | None = None, *,
                      checkpoint_id: str | None = None, max_steps: int = DEFAULT_MAX_STEPS,
                      max_concurrency: int | None = None, context: Any = None,
                      runner: Runner | None = None) -> Any:
        return await self._ainvoke(input, thread_id, checkpoint_id=checkpoint_id,
                                   max_steps=max_steps, max_concurrency=max_concurrency,
                                   inline_sync=False, context=context, runner=runner)

    def stream(self, input: Any, thread_id: str | None = None, *,
               checkpoint_id: str | None = None, max_steps: int = DEFAULT_MAX_STEPS,
               max_concurrency: int | None = None, context: Any = None,
               stream_mode: str | Sequence[str] = "steps",
               subgraphs: bool = False, runner: Runner | None = None) -> Iterator[Any]:
        """Run, yielding as it goes. `stream_mode`: "steps" (one `StepEvent` per committed
        step), "values" (the state where the run starts and after each step), "updates"
        ({node: update} as each task finishes), "custom" (what nodes `emit`, as they emit
        it), or a list of them (then `(mode, payload)` pairs; see `streaming`).
        `subgraphs=True` also streams what subgraph nodes' runs produce, each item prefixed by
        its namespace: `(namespace, payload)`, or `(namespace, mode, payload)` with several
        modes; the namespace is `()` for this graph, `("node:<task id>",)` inside a subgraph."""
        check_modes(stream_mode)
        return iterate_sync(lambda: self._astream(
            input, thread_id, checkpoint_id=checkpoint_id, max_steps=max_steps,
            max_concurrency=max_concurrency, inline_sync=True, context=context,
            stream_mode=stream_mode, subgraphs=subgraphs, runner=runner))

    def astream(self, input: Any, thread_id: str | None = None, *,
                checkpoint_id: str | None = None, max_steps: int = DEFAULT_MAX_STEPS,
                max_concurrency: int | None = None, context: Any = None,
                stream_mode: str | Sequence[str] = "steps",
                subgraphs: bool = False, runner: Runner | None = None) -> AsyncIterator[Any]:
        check_modes(stream_mode)
        return self._astream(input, thread_id, checkpoint_id=checkpoint_id,
                             max_steps=max_steps, max_concurrency=max_concurrency,
                             inline_sync=False, context=context, stream_mode=stream_mode,
                             subgraphs=subgraphs, runner=runner)

    def resume(self, thread_id: str, *, event: dict[str, Any] | None = None,
               answer: Any = NO_RESUME, max_steps: int = DEFAULT_MAX_STEPS,
               max_concurrency: int | None = None, context: Any = None,
               runner: Runner | None = None) -> Any:
        """Continue a failed, interrupted, waiting or crashed run; returns its final state.

        `event` delivers values to a run paused in `wait_for`: {event name: value}. `answer`
        answers what a node asked with `interrupt` (several questions: {interrupt id: answer},
        ids in `get_state(thread).interrupts`); given to a run that failed after an answer,
        it replaces that answer. `context` is this call's (no call's context is stored).
        """
        return run_sync(lambda: self._ainvoke(
            None, thread_id, max_steps=max_steps, max_concurrency=max_concurrency,
            inline_sync=True, resume=True, event=event, answer=answer, context=context,
            runner=runner))

    async def aresume(self, thread_id: str, *, event: dict[str, Any] | None = None,
                      answer: Any = NO_RESUME, max_steps: int = DEFAULT_MAX_STEPS,
                      max_concurrency: int | None = None, context: Any = None,
                      runner: Runner | None = None) -> Any:
        return await self._ainvoke(None, thread_id, max_steps=max_steps,
                                   max_concurrency=max_concurrency, inline_sync=False,
                                   resume=True, event=event, answer=answer, context=context,
                                   runner=runner)

    async def _ainvoke(self, input: Any, thread_id: str | None, *, inline_sync: bool,
                       checkpoint_id: str | None = None, max_steps: int = DEFAULT_MAX_STEPS,
                       max_concurrency: int | None = None, resume: bool = False,
                       event: dict[str, Any] | None = None, answer: Any = NO_RESUME,
                       context: Any = None, runner: Runner | None = None) -> Any:
        run = self._executor.new_run(thread_id, max_steps=max_steps, inline_sync=inline_sync,
                                     max_concurrency=max_concurrency, context=context,
                                     runner=runner)
        async for _ in run.execute(input, checkpoint_id=checkpoint_id, resume=resume,
                                   event=event, answer=answer):
            pass
        return run.state

    async def _astream(self, input: Any, thread_id: str | None, *, inline_sync: bool,
                       checkpoint_id: str | None, max_steps: int,
                       max_concurrency: int | None, context: Any = None,
                       stream_mode: str | Sequence[str] = "steps",
                       subgraphs: bool = False, runner: Runner | None = None
                       ) -> AsyncIterator[Any]:
        run = self._executor.new_run(thread_id, max_steps=max_steps, inline_sync=inline_sync,
                                     max_concurrency=max_concurrency, context=context,
                                     runner=runner)
        if stream_mode == "steps" and not subgraphs:
            async for event in run.execute(input, checkpoint_id=checkpoint_id):
                yield event
            return
        modes, single = check_modes(stream_mode)
        channel = run.runner.channel = StreamChannel(modes, subgraphs=subgraphs)

        async def produce() -> None:  # the run, in a task of its own: the caller reads
            try:
                async for _ in run.execute(input, checkpoint_id=checkpoint_id):
                    pass  # the run reports each step into the channel (`Run.steps`)
            finally:
                channel.close()

        producer = asyncio.ensure_future(produce())
        try:
            async for item in channel.items():
                yield shape(item, single, subgraphs)
            await producer  # the run's own error, if it failed
        finally:
            if not producer.done():  # the caller stopped reading: stop the run
                producer.cancel()
            with contextlib.suppress(BaseException):  # its error, if any, is the caller's
                await producer

    # -- the work queue (statemachine worker) ------------------------------------------------------

    def submit(self, input: Any, thread_id: str, *, event: dict[str, Any] | None = None,
               answer: Any = NO_RESUME, max_attempts: int = 3) -> str:
        """Queue a run of `thread_id` for a worker (`statemachine worker`) and return at once.

        `input` starts a new thread, or a new run of a finished one; None continues an
        unfinished thread (failed, crashed, with `event` one waiting in `wait_for`, with
        `answer` one asking in `interrupt`: as `resume(answer=...)`; `Command(resume=...)` as
        the input is the same). The input is checked against the state schema now. A run that
        fails is retried up to `max_attempts` times in all. Returns the thread id.
        """
        from .worker import submit

        return run_sync(lambda: submit(self, input, thread_id, event=event, answer=answer,
                                       max_attempts=max_attempts))

    async def asubmit(self, input: Any, thread_id: str, *, event: dict[str, Any] | None = None,
                      answer: Any = NO_RESUME, max_attempts: int = 3) -> str:
        from .worker import submit

        return await submit(self, input, thread_id, event=event, answer=answer,
                            max_attempts=max_attempts)

    def jobs(self) -> list[JobInfo]:
        """This graph's jobs in the queue with their status (queued, running, done,
        interrupted, failed) and attempts, oldest first."""
        return run_sync(self.ajobs)

    async def ajobs(self) -> list[JobInfo]:
        from .worker import _saver

        return await _saver(self).jobs(graph=self.name)

    # -- sagas and observability ------------------------------------------------------------------

    def rollback(self, thread_id: str, *, context: Any = None) -> Any:
        """Undo a failed run: run the compensations of its completed nodes, newest first.

        Each compensation commits its own checkpoint, so a rollback that crashes resumes where
        it stopped; the thread ends "compensated" and rolling back again does nothing.
        Returns the state after the compensations.
        """
        return run_sync(lambda: self._executor.rollback(thread_id, blocking=True,
                                                        context=context))

    async def arollback(self, thread_id: str, *, context: Any = None) -> Any:
        return await self._executor.rollback(thread_id, context=context)

    def add_listener(self, listener: Any) -> None:
        """Call `listener`'s hooks (on_step_start, on_node_end, ...) as runs progress.

        See `statemachine.observe` for the hooks; a listener may define any of them.
        """
        self._executor.observer.add(listener)

    def remove_listener(self, listener: Any) -> None:
        self._executor.observer.remove(listener)

    # -- threads and checkpoints ----------------------------------------------------------------

    def get_state(self, thread_id: str, checkpoint_id: str | None = None) -> Snapshot[Any]:
        """The latest (or given) checkpoint of a thread; `ThreadNotFoundError` if there is none."""
        return run_sync(lambda: self._executor.get_state(thread_id, checkpoint_id,
                                                          blocking=True))

    async def aget_state(self, thread_id: str, checkpoint_id: str | None = None) -> Snapshot[Any]:
        return await self._executor.get_state(thread_id, checkpoint_id)

    def history(self, thread_id: str, *, limit: int | None = None,
                before: str | None = None) -> list[Snapshot[Any]]:
        """The checkpoints of a thread (all branches), newest first: at most `limit`, and with
        `before` (a checkpoint id) only older ones — pass the last one's id to page on. A page
        costs what it returns, however long the thread."""
        return run_sync(lambda: self._executor.history(thread_id, limit, before, blocking=True))

    async def ahistory(self, thread_id: str, *, limit: int | None = None,
                       before: str | None = None) -> list[Snapshot[Any]]:
        return await self._executor.history(thread_id, limit, before)

    def update_state(self, thread_id: str, values: Any, as_node: str | None = None, *,
                     checkpoint_id: str | None = None, context: Any = None) -> Snapshot[Any]:
        """Commit `values` as a new checkpoint (through the reducers) and return it.

        With `as_node`, the values count as that node's output and `next` follows its edges
        (its routers get `context` in their `RunContext`, as in a run); without, `next` and
        the thread's status stay as they were. With `checkpoint_id`, the new checkpoint
        branches off that older one.
        """
        return run_sync(lambda: self._executor.update_state(
            thread_id, values, as_node=as_node, checkpoint_id=checkpoint_id, blocking=True,
            context=context))

    async def aupdate_state(self, thread_id: str, values: Any, as_node: str | None = None, *,
                            checkpoint_id: str | None = None,
                            context: Any = None) -> Snapshot[Any]:
        return await self._executor.update_state(thread_id, values, as_node=as_node,
                                                 checkpoint_id=checkpoint_id, context=context)

    def fork(self, thread_id: str, checkpoint_id: str, *,
             to_thread: str | None = None) -> Snapshot[Any]:
        """Branch off at an older checkpoint, paused before the tasks that were due there:
        `resume` runs them again (a thread poisoned by a bad event or a bad update is saved
        this way). The fork becomes the thread's head, its newer checkpoints kept in history;
        with `to_thread` it starts a new thread instead, leaving this one as it is."""
        return run_sync(lambda: self._executor.fork(thread_id, checkpoint_id,
                                                    to_thread=to_thread, blocking=True))

    async def afork(self, thread_id: str, checkpoint_id: str, *,
                    to_thread: str | None = None) -> Snapshot[Any]:
        return await self._executor.fork(thread_id, checkpoint_id, to_thread=to_thread)

    @property
    def identity(self) -> GraphIdentity:
        """What threads this graph runs are bound to: its name and a fingerprint of its
        structure (nodes and edges; not the nodes' code, not the state schema). Running,
        editing or rolling back a thread bound to another identity raises
        `GraphMismatchError`."""
        return self._executor.identity

    def rebind(self, thread_id: str) -> GraphIdentity | None:
        """Move a thread to this graph on purpose (a new version of its graph, deployed):
        from now on this graph runs it and others are refused. Returns what it was bound to
        before (None: nothing yet). Refused if the thread is due to run nodes this graph
        lacks; its checkpoints are not changed."""
        return run_sync(lambda: self._executor.rebind(thread_id, blocking=True))

    async def arebind(self, thread_id: str) -> GraphIdentity | None:
        return await self._executor.rebind(thread_id)

    def threads(self) -> list[ThreadInfo]:
        """Every thread in the checkpointer's store with its status, newest first."""
        return run_sync(lambda: self._executor.threads(blocking=True))

    async def athreads(self) -> list[ThreadInfo]:
        return await self._executor.threads()

    # -- retention ------------------------------------------------------------------------------

    def delete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        """Remove the thread with its subgraph threads, pending writes and jobs, at once and
        whole; `ThreadBusyError` if a live run holds it. `dry_run`: only say what would go."""
        return run_sync(lambda: self._executor.delete_thread(thread_id, dry_run=dry_run,
                                                             blocking=True))

    async def adelete_thread(self, thread_id: str, *, dry_run: bool = False) -> Removed:
        return await self._executor.delete_thread(thread_id, dry_run=dry_run)

    def prune(self, thread_id: str | None = None, *, keep_last: int | None = None,
              finished_before: datetime | float | None = None,
              dry_run: bool = False) -> Removed:
        """Remove old checkpoints: with `keep_last`, keep each thread's (or `thread_id`'s)
        newest `keep_last` (its oldest kept one gets a snapshot first, so nothing older has to
        stay); without it, delete whole threads. `finished_before` (a datetime, naive meaning
        UTC, or a unix time) limits it to threads that finished before then. Threads a run
        holds are skipped. Every kept checkpoint still reads, forks and resumes exactly. See
        docs/retention.md."""
        return run_sync(lambda: self._executor.prune(
            thread_id, keep_last=keep_last, finished_before=_unix_time(finished_before),
            dry_run=dry_run, blocking=True))

    async def aprune(self, thread_id: str | None = None, *, keep_last: int | None = None,
                     finished_before: datetime | float | None = None,
                     dry_run: bool = False) -> Removed:
        return await self._executor.prune(
            thread_id, keep_last=keep_last, finished_before=_unix_time(finished_before),
            dry_run=dry_run)


def _unix_time(moment: datetime | float | None) -> float | None:
    """A datetime (naive: UTC) or a unix time, as a unix time."""
    if isinstance(moment, datetime):
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return moment
