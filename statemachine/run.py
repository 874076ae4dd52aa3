"""The step loop: one call (`invoke`, `resume`, a fork) on one thread, step by step.

One step (superstep) runs every triggered task concurrently (`task_runner`), applies their
updates through the reducers in merge order (the order the step lists its tasks: declaration
order, then task index, never completion order), evaluates the routers on the new state
(`routing`), and commits one checkpoint (`committer`). docs/design.md sets out the commit
protocol and its guarantees; docs/reliability.md says what it withstands, and how that is
tested. In short:

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
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from checkpoints.base import CheckpointRecord, Owner, PendingWrite

from .checkpoint_extra import CheckpointExtra, Question
from .commands import NO_RESUME, Command
from .committer import Committer, release_after
from .constants import INTERRUPTS, START
from .errors import (
    StepLimitError,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadStateError,
)
from .graph_binding import bind, check_binding
from .mutation import Fingerprint, mutated
from .records import Task
from .routing import Joins, next_tasks
from .run_start import deliver, start_on_thread, take_with_input
from .state_cache import detached
from .task_runner import StepInput, StepResults, TaskRunner
from .thread_errors import needs_checkpointer
from .types import StepEvent, task_id
from .waiting import INTERRUPT_EVENT, Interrupt

if TYPE_CHECKING:
    from .executor import Executor
    from .snapshots import ReplayCost


class Run:
    """The mutable state of one call on one thread."""

    def __init__(self, executor: Executor, thread_id: str | None, max_steps: int,
                 inline_sync: bool, max_concurrency: int | None = None) -> None:
        self.executor = executor
        self.spec = executor.spec
        saver = executor.saver
        if saver is not None and inline_sync:  # the sync API: our loop, nothing to block
            saver = saver.in_caller_thread()
        self.saver = saver
        self.thread_id = thread_id
        self.max_steps = max_steps
        self.owner = Owner.new()
        self.committer = Committer(saver, thread_id, self.owner, self.spec.schema,
                                   executor.store) \
            if saver is not None and isinstance(thread_id, str) and thread_id else None
        self.runner = TaskRunner(executor, thread_id, saver, inline_sync=inline_sync,
                                 max_concurrency=max_concurrency)
        self.state: BaseModel
        self.step = 0
        self.tasks: list[Task] = []
        self.joins: Joins = {}
        self.collected: list[tuple[str, dict[str, Any]]] | None = None
        """When a list, every step's writes are added to it (subgraphs without storage)."""
        self.step_origin: str | None = None
        """Set when the head was made by update_state: the checkpoint the tasks came from."""
        self.skip_interrupt_before = False
        self.head_status: str | None = None
        self.head_extra = CheckpointExtra()
        """The status and extra data of the checkpoint a resumed run started from."""
        self.head_record: CheckpointRecord | None = None
        self.head_pending: list[PendingWrite] = []
        """That checkpoint, and the writes its step kept (carried on if the run continues
        it on a checkpoint of its own)."""
        self.bound_graph: str | None = None
        """The thread's graph binding as stored when this run took it (or bound it): the text
        the next turn expects to find (`take_with_input`); None when not known."""
        self.input_base: tuple[str, ReplayCost] | None = None
        """For a subgraph's new thread whose input is its parent thread's state at a stored
        checkpoint: that checkpoint and its replay cost. The thread's first checkpoint then
        has it as parent instead of storing the state again."""

    @property
    def head_id(self) -> str | None:
        return self.committer.head_id if self.committer is not None else None

    async def execute(self, input: Any, *, checkpoint_id: str | None = None,
                      resume: bool = False, event: dict[str, Any] | None = None,
                      answer: Any = NO_RESUME) -> AsyncIterator[StepEvent]:
        """Run (or resume) the thread; yields one event per committed step.

        `event` delivers values to tasks paused in `wait_for` ({event name: value}), `answer`
        answers `interrupt` questions; `Command(resume=...)` as the input is `answer`.
        """
        if isinstance(input, Command):
            if not input.resumes or input.update is not None or input.goto:
                raise ThreadStateError(
                    "a Command given to invoke or stream answers a paused run: "
                    "Command(resume=answer), without update or goto (a node returns those).")
            input, resume, answer = None, True, input.resume
        if self.saver is not None and self.thread_id is not None and \
                not isinstance(self.thread_id, str):
            raise ThreadStateError(
                f"thread_id must be text, got {type(self.thread_id).__name__} "
                f"{self.thread_id!r}: pass thread_id={str(self.thread_id)!r}.")
        if self.saver is None:
            if resume or checkpoint_id is not None or event is not None or \
                    answer is not NO_RESUME:
                raise needs_checkpointer("resume or fork a run")
            if self.spec.on_failure == "compensate":
                raise needs_checkpointer(
                    "run with on_failure='compensate' (the rollback reads which nodes completed "
                    "from the thread's checkpoints)")
            await self.start_fresh(input)
            async for step_event in self.steps():
                yield step_event
            return
        if self.committer is None or self.thread_id is None:
            raise ThreadStateError(
                "this graph has a checkpointer, so every run needs a thread: pass "
                "thread_id='...' (any text naming the run, e.g. an order id).")
        if resume and input is not None:
            raise ThreadStateError("resume takes no input; use invoke(input, thread_id=...).")
        committer = self.committer
        started = False
        if input is not None and checkpoint_id is None and event is None and \
                answer is NO_RESUME and self.saver.takes_with_input:
            lease, started = await take_with_input(self, input)
        else:
            lease = await self.saver.lease(self.thread_id, self.owner)
        failure: BaseException | None = None
        try:
            if not started:  # else the thread is bound to this graph: its head was ours
                identity = self.executor.identity
                unbound = self.executor.binds_threads and \
                    await check_binding(self.saver, self.thread_id, identity, lease.graph)
                await start_on_thread(self, input, checkpoint_id, resume, lease.head)
                await deliver(self, event, answer)
                await bind(self.saver, self.thread_id, self.owner, identity, unbound)
                self.bound_graph = identity.encode() if unbound else lease.graph or None
            async for step_event in self.steps():
                yield step_event
            if self.executor.remember_states and committer.head_id is not None:
                self.executor.states.put(self.thread_id, committer.head_id,
                                         committer.head_created, self.state, committer.replay,
                                         committer.finished_head(), self.bound_graph)
        except StorageUnavailableError as exc:
            failure = exc
            # the state is known from then on; a failed or paused head this run never got
            # past keeps its own error and status
            if committer.head_id is not None and not committer.released and (
                    committer.wrote or self.head_status in (None, "running")):
                await asyncio.shield(committer.mark_storage_failure(exc, self.state))
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if not committer.released:
                await asyncio.shield(release_after(self.saver, self.thread_id, self.owner,
                                                   failure))

    # -- starting -----------------------------------------------------------------------------

    async def start_fresh(self, input: Any) -> None:
        if input is None:
            raise ThreadStateError(
                "invoke(None) continues a stored thread, but this graph has no checkpointer; "
                "pass the input state.")
        self.state = self.spec.schema.validate_input(input, thread_id=self.thread_id)
        self.tasks, self.joins = await self.route([Task(START)], self.state, 0, {})

    # -- the step loop ------------------------------------------------------------------------

    async def steps(self) -> AsyncIterator[StepEvent]:
        steps_run = 0
        channel = self.runner.channel
        if channel is not None and channel.values:  # where the run starts from
            channel.put("values", detached(self.state))
        while self.tasks:
            if steps_run >= self.max_steps:
                await self._fail_step_limit()
            if not self.skip_interrupt_before and self.spec.interrupt_before and any(
                    t.node in self.spec.interrupt_before for t in self.tasks):
                if self.committer is not None:
                    await self.committer.mark("interrupted", self.committer.extra_with(
                        joins=self.joins, interrupt="before", failed=[]))
                if channel is not None and channel.updates:  # paused, asking nothing
                    channel.put("updates", {INTERRUPTS: ()})
                return
            self.skip_interrupt_before = False
            event = await self._run_step()
            if event is None:  # a task waits for an event
                return
            steps_run += 1
            if channel is not None:  # streamed: reported, and read before the next step
                channel.report(event)
                await channel.drained()
            yield event
            if event.status == "interrupted":
                return

    def origin(self, step: int) -> str:
        """Where the current step's tasks were scheduled: what their ids derive from."""
        if self.step_origin is not None:
            return self.step_origin
        head_id = self.head_id
        return head_id if head_id is not None else f"{self.owner.token}-{step}"

    async def route(self, ran: list[Task], state: BaseModel, step: int,
                    joins: Joins) -> tuple[list[Task], Joins]:
        return await next_tasks(self.spec, ran, state, step, joins,
                                gotos=self.runner.results.gotos, thread_id=self.thread_id,
                                origin=self.origin(step), context=self.runner.call_context)

    async def _run_step(self) -> StepEvent | None:
        """Run one step and commit it; None when it paused for an event instead."""
        step, state, tasks = self.step, self.state, self.tasks
        observer = self.executor.observer
        runner, committer = self.runner, self.committer
        results = runner.results
        runner.observing = observing = observer.active
        if observing:
            await observer.step_start(self.thread_id, step, tuple(t.node for t in tasks))
        base = None
        if committer is not None and committer.head_id is not None and self.step_origin is None:
            base = (committer.head_id, committer.replay)
            origin = committer.head_id
        else:
            origin = self.origin(step)
        at = StepInput(step, state, origin, base)
        to_run = [t for t in tasks if t.key not in results.pending]
        check = self.spec.check_mutation
        if check == "sizes":
            sizer = self.spec.schema.sizer
            before: Any = sizer.measure(state)
        elif check == "full":
            before = Fingerprint(state)
        outcomes = await runner.run(to_run, at, None if committer is None else
                                    lambda task: committer.put_pending(task, results))
        if check == "sizes" and sizer.measure(state) != before:
            await self._fail_mutation(sizer.changed_fields(state, before), to_run)
        elif check == "full" and before.changed():
            await self._fail_mutation(before.changed_fields(), to_run)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            await self._fail(_pick_error(failures), nodes=[
                t.node for t, o in zip(to_run, outcomes, strict=True)
                if isinstance(o, BaseException)])
        if results.waiting:
            interrupts = await self._pause_for_events(origin)
            finished = [(t.node, results.pending[t.key]) for t in tasks
                        if t.key in results.pending]
            pause = StepEvent(
                step=step, nodes=tuple(dict.fromkeys(node for node, _ in finished)),
                updates=merged_updates(finished), state=state, status="interrupted",
                thread_id=self.thread_id, checkpoint_id=self.head_id, timings=results.timings,
                interrupts=interrupts)
            if runner.channel is not None and runner.channel.updates:
                runner.channel.put("updates", {INTERRUPTS: interrupts})
            return pause
        updates = [(t.node, results.pending[t.key]) for t in tasks]
        if self.collected is not None:
            self.collected += updates
        try:
            new_state = self.spec.schema.apply(state, updates, step=step,
                                               thread_id=self.thread_id)
            next_up, joins = await next_tasks(self.spec, tasks, new_state, step, self.joins,
                                              gotos=results.gotos, thread_id=self.thread_id,
                                              origin=origin, context=runner.call_context)
        except Exception as exc:
            await self._fail(exc)
        status = "done" if not next_up else "running"
        if self.spec.interrupt_after and next_up and any(
                t.node in self.spec.interrupt_after for t in tasks):
            status = "interrupted"
        metadata = results.metadata(tasks)
        if committer is not None:
            extra = None
            if joins or metadata or status == "interrupted":  # else nothing to say (hot path)
                extra = CheckpointExtra(
                    attempts=metadata.get("attempts", {}),
                    cache_hits=metadata.get("cache_hits", []), joins=joins,
                    interrupt="after" if status == "interrupted" else None).encode()
            # a finished run writes nothing more: its last commit gives the thread up too
            await committer.put_step(step, tasks, results, new_state, next_up, status, extra,
                                     release=status == "done")
        elif results.memory:  # nothing is stored: the step's memory applies as it merges
            assert runner.store is not None
            await runner.store.aapply([w for t in tasks for w in results.memory.get(t.key, ())])
        self.state, self.tasks, self.joins, self.step = new_state, next_up, joins, step + 1
        runner.results = StepResults()
        self.step_origin = None
        event = StepEvent(
            step=step, nodes=tuple(dict.fromkeys(node for node, _ in updates)),
            updates=merged_updates(updates), state=new_state,
            status=status,  # type: ignore[arg-type]
            thread_id=self.thread_id, checkpoint_id=self.head_id, timings=results.timings,
            attempts=metadata.get("attempts", {}),
            cache_hits=tuple(metadata.get("cache_hits", ())))
        if observing:
            await observer.step_end(event)
        return event

    async def _fail_mutation(self, fields: list[str], ran: list[Task]) -> None:
        """Fail the step whose nodes changed `fields` of the state in place (see `mutation`).
        The changed state is not what the store holds, so it is not stored with the mark, and
        the writes made from it are dropped (unless several tasks ran and some are stored)."""
        error = mutated(fields, [t.node for t in ran], self.step, self.thread_id)
        results = self.runner.results
        for task in ran:
            if task.key not in results.committed:
                results.pending.pop(task.key, None)
        kept = [t.node for t in ran if t.key in results.committed]
        if kept and self.committer is not None and self.committer.head_id is not None:
            error.add_note(
                f"The writes of {', '.join(map(repr, kept))} were stored as they finished, "
                "before the change was seen, and resume would keep them; once the code is "
                f"fixed, run the whole step again with app.fork({self.thread_id!r}, "
                f"{self.committer.head_id!r}) then resume.")
        await self._fail(error, state_changed=True, nodes=[t.node for t in ran])

    async def _pause_for_events(self, origin: str) -> tuple[Interrupt, ...]:
        """End the run here: finished tasks' writes stay pending, the step waits for events
        and answers; what it waits for, as the caller sees it."""
        results = self.runner.results
        if self.committer is None:
            node, event = next(iter(results.waiting.items()))
            call = "interrupt(...)" if event.startswith(INTERRUPT_EVENT) else \
                f"wait_for({event!r})"
            raise ThreadStateError(
                f"node {node[0]!r} called {call}, which pauses the run until it is answered "
                "with resume(); that needs a checkpointer to keep the run: "
                "compile(checkpointer=...).")
        questions = [
            Question(task_id(self.thread_id, origin, n, i, e), n, i, e,
                     to_jsonable_python(results.questions[(n, i)])
                     if (n, i) in results.questions else {"wait_for": e},
                     len(results.answers.get((n, i), ())))
            for (n, i), e in results.waiting.items()]
        await self.committer.keep_finished(self.tasks, results)
        await self.committer.mark("interrupted", self.committer.extra_with(
            joins=self.joins, interrupt="wait", answers=dict(results.answers), failed=[],
            waiting=[(n, i, e) for (n, i), e in results.waiting.items()],
            questions=questions))
        return tuple(q.shown() for q in questions)

    async def _fail(self, exc: BaseException, *, state_changed: bool = False,
                    nodes: Sequence[str] = ()) -> None:
        """Keep what finished, mark the step failed, and raise `exc`. `state_changed`: a node
        changed the state in place, so it is not stored with the mark."""
        committer = self.committer
        if committer is not None and not isinstance(exc, ThreadBusyError):
            assert self.thread_id is not None and self.saver is not None
            try:
                await committer.keep_finished(self.tasks, self.runner.results)
            except (ThreadBusyError, StorageUnavailableError):
                raise
            except Exception as refused:  # a finished task's update the store refused: that
                # task runs again on resume; the step is marked failed all the same
                if refused is not exc:
                    exc.add_note(f"Storing a finished task's update failed too: {refused}")
            await committer.mark_failed(exc, None if state_changed else self.state, nodes)
            if self.spec.on_failure == "compensate":
                await self.executor.rollback(self.thread_id, owner=self.owner, saver=self.saver,
                                             context=self.runner.call_context, validated=True)
        raise exc

    async def _fail_step_limit(self) -> None:
        nodes = [t.node for t in self.tasks]
        error = StepLimitError(
            f"the run reached max_steps={self.max_steps} steps{self.runner.of_thread()} and "
            f"still had node(s) {', '.join(map(repr, nodes))} to run at step {self.step}. If "
            "the graph loops on purpose, pass a larger max_steps" +
            ("; resume the thread to continue." if self.saver else "; otherwise check the "
             "router that should end the loop."), next_nodes=nodes, max_steps=self.max_steps)
        await self._fail(error)


def merged_updates(updates: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A step's updates by node: a node's update, or the list of them when it ran several
    tasks (a `Send` fan-out)."""
    merged: dict[str, Any] = {}
    for node, update in updates:
        if node not in merged:
            merged[node] = update
        elif isinstance(merged[node], list):
            merged[node].append(update)
        else:
            merged[node] = [merged[node], update]
    return merged


def _pick_error(failures: list[BaseException]) -> BaseException:
    """The first failure in task order, preferring a lost lease (nothing else can be saved)."""
    for failure in failures:
        if isinstance(failure, ThreadBusyError):
            return failure
    return failures[0]
