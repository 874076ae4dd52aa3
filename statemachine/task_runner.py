"""Running a step's tasks: calling the user's nodes with their cache, timeout and retry
policies, concurrently when there are several, and collecting what each produced.

The step loop (`run.Run`) decides what runs and commits the outcome; this module only runs
tasks and records, per task, its validated update, its `Command` targets, its metadata, or
that it waits for an event.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from checkpoints.base import Checkpointer
from checkpoints.store_types import StoreWrite

from .calls import call_user_function
from .clock import get_clock
from .commands import Command, Send
from .constants import END
from .errors import InvalidRouteError, InvalidUpdateError, NodeTimeoutError, RemoteTaskError
from .memory import Buffered, TaskStore
from .records import Task, cache_key_for, decode_goto, encode_goto
from .secret_types import mentions_secret
from .snapshots import ReplayCost
from .spec import NodeSpec
from .streaming import Emitter, StreamChannel, current_emitter
from .subgraph_tasks import run_subgraph
from .types import NodeFailure, RunContext, task_id
from .waiting import NO_ANSWERS, TaskAnswers, WaitingForEvent, current_answers

if TYPE_CHECKING:
    from .executor import Executor
    from .runners import Runner

Key = tuple[str, int]
"""A task of a step: (node, task index)."""


@dataclass(slots=True)
class StepResults:
    """What the tasks of the current step produced so far (a resumed step starts with what
    its finished tasks stored)."""

    pending: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """Each finished task's validated update."""
    encoded: dict[Key, str] = field(default_factory=dict)
    """JSON of each pending update, made when the task finished (with a checkpointer)."""
    committed: set[Key] = field(default_factory=set)
    """Tasks whose writes are already stored as pending writes."""
    gotos: dict[Key, list[str | Send]] = field(default_factory=dict)
    """`Command.goto` targets of finished tasks."""
    meta: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """Per finished task: attempts, cache hit, goto (stored with its pending write)."""
    timings: dict[str, float] = field(default_factory=dict)
    waiting: dict[Key, str] = field(default_factory=dict)
    """Tasks paused in `wait_for` or `interrupt`, with the event each waits for."""
    questions: dict[Key, Any] = field(default_factory=dict)
    """What the tasks paused in `interrupt` asked."""
    answers: dict[Key, list[Any]] = field(default_factory=dict)
    """Events delivered to the tasks, in order (what `wait_for` returns)."""
    memory: dict[Key, list[StoreWrite]] = field(default_factory=dict)
    """Store writes of finished tasks not committed yet (`statemachine.memory`)."""

    def metadata(self, tasks: list[Task]) -> dict[str, Any]:
        """What the step's checkpoint records about its tasks (in step order): retries and
        cache hits."""
        if not self.meta:
            return {}
        attempts: dict[str, int] = {}
        hits: list[str] = []
        for task in tasks:
            meta = self.meta.get(task.key)
            if meta is None:
                continue
            if meta.get("attempts", 1) > 1:
                attempts[task.node] = max(attempts.get(task.node, 1), meta["attempts"])
            if meta.get("cache_hit") and task.node not in hits:
                hits.append(task.node)
        metadata: dict[str, Any] = {}
        if attempts:
            metadata["attempts"] = attempts
        if hits:
            metadata["cache_hits"] = hits
        return metadata


@dataclass(frozen=True, slots=True)
class StepInput:
    """What a step's tasks start from."""

    step: int
    state: BaseModel
    origin: str
    """Where the step's tasks were scheduled: what their ids derive from."""
    base: tuple[str, ReplayCost] | None = None
    """The stored checkpoint whose state is `state`, with its replay cost, when there is one
    (a subgraph thread's first checkpoint can then refer to it instead of copying it)."""


class TaskRunner:
    """Runs the tasks of one run's steps, recording their outcomes in `results`."""

    def __init__(self, executor: Executor, thread_id: str | None, saver: Checkpointer | None,
                 *, inline_sync: bool, max_concurrency: int | None) -> None:
        self.executor = executor
        self.spec = executor.spec
        self.thread_id = thread_id
        self.saver = saver
        """The run's store, if any: updates are then encoded as their tasks finish."""
        self.inline_sync = inline_sync
        self.max_concurrency = max_concurrency
        self.call_context: Any = None
        """The call's run-scoped context, handed to every node (`RunContext.context`)."""
        self.raw_context: Any = None
        """That context as the call gave it: a subgraph validates it into its own schema."""
        self.channel: StreamChannel | None = None
        """Where a streamed run's updates and emitted chunks go (`streaming`)."""
        self._emitters: dict[tuple[str, int], Emitter] = {}
        """The running tasks' emitters, while chunks are streamed."""
        self.store = executor.store
        self._buffers: dict[tuple[str, int], list[Buffered]] = {}
        """The running tasks' store writes, until they finish (`statemachine.memory`)."""
        self.results = StepResults()
        self.observing = False
        """Whether listeners are attached: asked once a step, it is on the hot path."""
        self.cluster: Runner | None = None
        """Where node tasks run instead of here (`statemachine.runners`), if anywhere."""
        self._packed: dict[Key, bytes] = {}
        """The step's tasks bound for the cluster, packed (each attempt submits them)."""
        self._inputs: dict[Key, Any] = {}
        """Their inputs (a Send's payload validated), checked while packing."""

    async def run(self, tasks: list[Task], at: StepInput,
                  finished: Callable[[Task], Awaitable[None]] | None = None
                  ) -> list[BaseException | None]:
        """Run the tasks; each outcome is None (finished or waiting) or its exception.
        `finished` is called for each task that finished while others still run."""
        if self._emitters:
            self._emitters.clear()  # those of tasks that failed
        if self._buffers:
            self._buffers.clear()
        if self.cluster is not None:  # all are packed before any is submitted
            unsent = self._pack(tasks, at)
            if unsent:
                return [unsent.get(task.key) for task in tasks]
        if len(tasks) == 1:
            try:
                await self._execute(tasks[0], at, inline=self.inline_sync)
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
                    await self._execute(task, at, inline=False)
                else:
                    async with gate:
                        await self._execute(task, at, inline=False)
            finally:
                remaining -= 1
            if finished is not None and remaining > 0 and task.key in self.results.pending:
                await finished(task)

        outcomes = await asyncio.gather(*(run_one(t) for t in tasks), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation, KeyboardInterrupt: not a node failure
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    def context(self, task: Task, at: StepInput) -> RunContext:
        store = None
        if self.store is not None:
            store = TaskStore(self.store, self._new_buffer(task))
        return RunContext(self.thread_id, at.step, task.node,
                          task_id(self.thread_id, at.origin, task.node, task.index),
                          index=task.index, context=self.call_context,
                          emitter=self._emitters.get(task.key), store=store)

    def _new_buffer(self, task: Task) -> list[Buffered]:
        buffer: list[Buffered] = []
        self._buffers[task.key] = buffer
        return buffer

    def _emitter(self, task: Task, at: StepInput) -> Emitter | None:
        """Where the task's emitted chunks go, while they are streamed."""
        channel = self.channel
        if channel is None or not channel.live:
            return None
        emitter = self._emitters[task.key] = Emitter(channel, task.node, {
            "thread_id": self.thread_id, "step": at.step, "node": task.node,
            "task_id": task_id(self.thread_id, at.origin, task.node, task.index)})
        return emitter

    async def _execute(self, task: Task, at: StepInput, *, inline: bool) -> None:
        """Run one task through its cache, timeout and retry policy.

        Its validated update (and, to be stored, its JSON) become pending; a task that calls
        `wait_for` for an event not yet delivered is recorded as waiting instead.
        """
        node = self.spec.nodes[task.node]
        step = at.step
        arg = self._inputs.pop(task.key) if task.key in self._inputs else \
            self._payload_input(node, task) if task.sent else at.state
        observer = self.executor.observer
        if self.observing:
            await observer.node_start(self.thread_id, step, task.node)
        if self.channel is not None:
            self._emitter(task, at)
        cache_key = None
        if node.cache is not None:
            cache_key = cache_key_for(node.cache, arg, self.call_context
                                      if node.call.wants_context else None)
            hit = await self.executor.cache_store().cache_get(
                self._cache_space(node), cache_key, now=get_clock().time())
            if hit is not None:
                cached = json.loads(hit)
                update = self.spec.schema.decode_update(json.dumps(cached["update"]))
                await self._finish(task, update, decode_goto(cached["goto"]),
                                   {"cache_hit": True}, step, 0.0)
                return
        policy = node.retry or self.spec.retry
        wants_context = node.call.wants_context
        attempt = 0
        captured = False
        started = time.perf_counter()
        memory: list[StoreWrite] = []
        while True:
            attempt += 1
            # each attempt has a context (and store buffer) of its own: an attempt abandoned
            # at its timeout, still running, writes where nothing reads any more
            context = self.context(task, at) if wants_context else None
            try:
                result = await self._call_node(node, task, arg, context, inline, at)
                if self.store is not None:  # embedded: a failure is this attempt's
                    memory = await self._memory_of(task)
                break
            except WaitingForEvent as waiting:
                self.results.waiting[task.key] = waiting.event
                if waiting.question is not None:
                    self.results.questions[task.key] = waiting.question
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
                    self._buffers.pop(task.key, None)
                    kind, message = type(exc).__name__, str(exc)
                    if isinstance(exc, RemoteTaskError):  # as the remote exception says
                        kind, message = exc.error_type.rsplit(".", 1)[-1], exc.remote_message
                    result = {node.error_field: [NodeFailure(
                        node=task.node, error_type=kind, message=message,
                        step=step, thread_id=self.thread_id)]}
                    break
                if attempt > 1:
                    exc.add_note(f"node {task.node!r} failed {attempt} attempts")
                exc.add_note(f"raised by node {task.node!r} at step {step}{self.of_thread()}"
                             + (f", in the task a Send gave {_payload_shown(task.payload)}"
                                if task.sent else ""))
                raise
        seconds = time.perf_counter() - started
        update, goto = self._split_result(node, result, step)
        if cache_key is not None and not captured and not memory:
            # a failure is not a result to reuse, nor one that wrote memories (a hit would
            # skip them: a step that failed to commit them would never write them)
            value = json.dumps({"update": json.loads(self.spec.schema.encode_update(
                update, node=task.node, step=step, thread_id=self.thread_id)),
                "goto": encode_goto(goto)})
            assert node.cache is not None
            await self.executor.cache_store().cache_put(
                self._cache_space(node), cache_key, value, node.cache.ttl,
                now=get_clock().time())
        await self._finish(task, update, goto, {"attempts": attempt} if attempt > 1 else {},
                           step, seconds, memory)

    async def _memory_of(self, task: Task) -> list[StoreWrite]:
        """The task's store writes, embedded and ready to commit with it."""
        buffer = self._buffers.pop(task.key, None)
        if not buffer or self.store is None:
            return []
        if self.store.index is None:  # nothing to embed: no await on a step's hot path
            return [write for write, _ in buffer]
        return await self.store.prepare(buffer)

    async def _call_node(self, node: NodeSpec, task: Task, arg: Any, context: RunContext | None,
                         inline: bool, at: StepInput) -> Any:
        info = node.call
        args = (arg, context) if info.wants_context else (arg,)
        answers = self.results.answers.get(task.key)
        token = current_answers.set(TaskAnswers(list(answers)) if answers else NO_ANSWERS)
        task_emitter = self._emitters.get(task.key)
        emitting = task_emitter is not None
        emitter = current_emitter.set(task_emitter) if task_emitter is not None else None
        try:
            packed = self._packed.get(task.key) if self._packed else None
            if packed is not None:
                call = self._run_remote(task, packed, context)
            elif node.subgraph is not None:
                call = run_subgraph(self, node, task, arg, at)
            else:  # with a timeout a sync node runs in a thread, so it can be abandoned; so
                # does one whose emitted chunks are streamed, so they reach the caller live
                call = call_user_function(info, args,
                                          inline and node.timeout is None and not emitting)
            if node.timeout is None:
                return await call
            try:
                return await asyncio.wait_for(call, node.timeout)
            except TimeoutError:
                raise NodeTimeoutError(
                    f"node {task.node!r} ran longer than its timeout of {node.timeout} s at "
                    f"step {at.step}{self.of_thread()}", node=task.node, timeout=node.timeout,
                    step=at.step, thread_id=self.thread_id) from None
        finally:
            current_answers.reset(token)
            if emitter is not None:
                current_emitter.reset(emitter)

    def _pack(self, tasks: list[Task], at: StepInput) -> dict[Key, BaseException]:
        """Pack the tasks bound for the cluster (all but subgraph nodes and those added with
        runner="local"); the tasks that cannot be, with why (then none is submitted)."""
        from .runners.remote_task import RemoteTask

        cluster = self.cluster
        assert cluster is not None
        self._packed.clear()
        self._inputs.clear()
        unsent: dict[Key, BaseException] = {}
        streams = self.channel is not None and self.channel.live
        where = f"(step {at.step}{self.of_thread()})"
        for task in tasks:
            node = self.spec.nodes[task.node]
            if node.subgraph is not None or node.local:
                continue
            try:
                arg = self._payload_input(node, task) if task.sent else at.state
                self._packed[task.key] = cluster.pack(RemoteTask(
                    node.call.fn, arg, node.call.is_async, node.call.wants_context, task.node,
                    self.thread_id, at.step,
                    task_id(self.thread_id, at.origin, task.node, task.index), task.index,
                    self.call_context, tuple(self.results.answers.get(task.key, ())),
                    streams, self.store is not None), where=where)
            except Exception as exc:
                unsent[task.key] = exc
                continue
            self._inputs[task.key] = arg
        return unsent

    async def _run_remote(self, task: Task, packed: bytes, context: RunContext | None) -> Any:
        """Run a packed task on the cluster; its return value, once its emitted chunks are
        in. Its store writes join this attempt's buffer, as a local task's would."""
        cluster = self.cluster
        assert cluster is not None
        done = await cluster.run(packed, node=task.node, deliver=self._emitters.get(task.key))
        if done.waiting is not None:
            raise WaitingForEvent(*done.waiting)
        if done.writes:
            assert context is not None and context.store is not None
            for kind, args, options in done.writes:
                getattr(context.store, kind)(*args, **options)
        return done.value

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
                        f"{self.of_thread()}); add it: add_node(..., destinations=[...]).",
                        node=node.name, returned=name, allowed=node.destinations, step=step,
                        thread_id=self.thread_id)
            result = result.update
        update = self.spec.schema.validate_update(result, node=node.name, step=step,
                                                  thread_id=self.thread_id)
        return update, goto

    async def _finish(self, task: Task, update: dict[str, Any], goto: list[str | Send],
                      meta: dict[str, Any], step: int, seconds: float,
                      memory: list[StoreWrite] | None = None) -> None:
        results = self.results
        if memory:
            results.memory[task.key] = memory
        if self.saver is not None:  # unstorable values fail here, as this node's failure
            results.encoded[task.key] = self.spec.schema.encode_update(
                update, node=task.node, step=step, thread_id=self.thread_id)
        if goto:
            results.gotos[task.key] = goto
            meta = {**meta, "goto": encode_goto(goto)}
        if meta:
            results.meta[task.key] = meta
        results.timings[task.node] = results.timings.get(task.node, 0.0) + seconds
        results.pending[task.key] = update
        if self.channel is not None:
            if self.channel.updates:  # a copy: the reader's to keep
                self.channel.put("updates", {task.node: copy.deepcopy(update)})
            task_emitter = self._emitters.pop(task.key, None)
            if task_emitter is not None and self.spec.nodes[task.node].subgraph is None:
                # (a subgraph's nodes streamed their messages themselves)
                task_emitter.finished(update, self.spec.schema.message_fields)
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
            raise InvalidUpdateError(
                f"a Send to node {node.name!r} carried a payload that does not fit the type of "
                f"its parameter: {exc.errors(include_url=False)[0]['msg']} (got "
                f"{_payload_shown(task.payload)}){self.of_thread()}.", node=node.name,
                thread_id=self.thread_id) from None

    def _cache_space(self, node: NodeSpec) -> str:
        """Cache entries of different code never mix, even in graphs of the same name."""
        return f"{self.executor.name}:{node.name}:{node.code_fingerprint}"

    def of_thread(self) -> str:
        return f" of thread {self.thread_id!r}" if self.thread_id is not None else ""


def _payload_shown(payload: Any) -> str:
    """A Send's payload as an error message shows it: short, and never a secret."""
    return "a value hidden: it holds a secret" if mentions_secret(payload) else \
        f"{payload!r:.80}"
