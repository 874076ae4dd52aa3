"""A node task as a cluster runs it: packed in the driver, run on a worker, its outcome sent
back as bytes.

The driver packs what the task needs (`RemoteTask`: the node's function, its input, the
fields of its `RunContext`, the answers delivered to it) with cloudpickle, once per task
and before anything of the step is submitted, so a value that cannot travel is an error
naming the node before any work starts. A worker calls `execute` on those bytes: it runs
the node (an async one on an event loop of its own), and returns the bytes of an `Outcome`:
the node's return value, or the exception it raised (sent as itself when it survives
pickling, else as its type name, message and traceback text), or the event it waits for.

In the task, `ctx.emit` and `emit` send each chunk to the driver through the engine's own
channel (`sink`) while the node runs; `ctx.store` buffers the task's writes, which travel
back with its outcome and commit in the driver with the task, as they do locally. Reads of
the store need the driver's database and are not available on a worker.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from ..calls import _call_sync
from ..streaming import current_emitter
from ..types import RunContext
from ..waiting import NO_ANSWERS, TaskAnswers, WaitingForEvent, current_answers

Sink = Callable[[str, bytes], None]
"""Where a worker sends each chunk a task emits (the engine's channel): the run's attempt tag
and the chunk's bytes."""


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """Everything a worker needs to run one node task."""

    fn: Callable[..., Any]
    arg: Any
    """The node's input: the state, or a `Send`'s payload."""
    is_async: bool
    wants_context: bool
    node: str
    thread_id: str | None
    step: int
    task_id: str
    index: int
    context: Any
    """The call's `context=` (`RunContext.context`)."""
    answers: tuple[Any, ...] = ()
    """Events delivered to the task so far (what `wait_for` and `interrupt` return)."""
    streams: bool = False
    """Whether the task's emitted chunks are streamed to the driver while it runs."""
    has_store: bool = False
    """Whether the graph has a store: `ctx.store` then buffers the task's writes."""


@dataclass(slots=True)
class Outcome:
    """What a task came to, as it travels back to the driver. What the user's code made (the
    return value, the exception, the question, the store writes) is pickled apart, each in
    its own bytes, so the outcome itself always loads in the driver, and a part that does
    not (a type the driver cannot import) is an error naming the node, not a bare
    `ModuleNotFoundError`."""

    value: bytes | None = None
    """The node's return value, pickled (when it returned)."""
    error: bytes | None = None
    """The exception it raised, pickled, when that loaded back as itself on the worker."""
    error_type: str = ""
    """The raised exception's qualified type name (always set when it raised)."""
    error_text: str = ""
    """str() of the exception."""
    unsent: str = ""
    """Why the exception could not travel as itself, when it could not."""
    remote_traceback: str = ""
    waiting: bytes | None = None
    """(event, question), pickled, when the task paused in `wait_for` or `interrupt`."""
    writes: bytes | None = None
    """The task's store writes, pickled: [("put" | "delete", args, keyword arguments)]."""
    chunks: int = 0
    """How many chunks this attempt emitted (the driver waits for all of them to arrive)."""
    attempt: str = ""
    """Which run of the task this is: its chunks carry the same tag (a task whose worker was
    lost runs again, and the lost run's chunks may still arrive)."""
    where: str = ""
    """The worker that ran it, as the engine names it."""


class RemoteEmitter:
    """`emit` in a task on a worker: each chunk is pickled and sent to the driver."""

    def __init__(self, sink: Sink, node: str, attempt: str) -> None:
        self.sink, self.node, self.attempt = sink, node, attempt
        self.sent = 0

    def __call__(self, chunk: Any) -> None:
        try:
            data = cloudpickle.dumps(chunk)
        except Exception as exc:
            raise TypeError(f"node {self.node!r} emitted a chunk that cannot be sent to the "
                            f"driver from the cluster: {type(exc).__name__}: {exc}") from None
        self.sink(self.attempt, data)
        self.sent += 1


class RemoteTaskStore:
    """`ctx.store` in a task on a worker: writes are buffered and sent back with the task's
    outcome, to be checked and committed in the driver with the task (exactly once, as
    locally); reads are refused with an error saying how to run the node in the driver."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __repr__(self) -> str:
        return f"<the store as node {self.node!r} sees it on a worker: " \
               f"{len(self.writes)} buffered writes>"

    def put(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
            index: bool | Sequence[str] | None = None, **ttl: Any) -> None:
        self.writes.append(("put", (tuple(namespace), key, value, index), dict(ttl)))

    def delete(self, namespace: Sequence[str], key: str) -> None:
        self.writes.append(("delete", (tuple(namespace), key), {}))

    async def aput(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
                   index: bool | Sequence[str] | None = None, **ttl: Any) -> None:
        self.put(namespace, key, value, index, **ttl)

    async def adelete(self, namespace: Sequence[str], key: str) -> None:
        self.delete(namespace, key)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"node {self.node!r} runs on a cluster, where ctx.store can write (the writes "
            f"commit with the task in the driver) but not {name}: reads need the driver's "
            f"database. Run the node in the driver: add_node(..., runner='local').")


def execute(blob: bytes, sink: Sink | None, where: str) -> bytes:
    """Run the packed task on this worker; the bytes of its `Outcome`."""
    task: RemoteTask = cloudpickle.loads(blob)
    attempt = uuid.uuid4().hex[:12]
    emitter = RemoteEmitter(sink, task.node, attempt) if task.streams and sink is not None \
        else None
    store = RemoteTaskStore(task.node) if task.has_store else None
    outcome = Outcome(attempt=attempt, where=where)
    answers = current_answers.set(TaskAnswers(list(task.answers)) if task.answers
                                  else NO_ANSWERS)
    emitting = current_emitter.set(emitter)  # type: ignore[arg-type]  # a callable will do
    value: Any = None
    try:
        context = RunContext(task.thread_id, task.step, task.node, task.task_id,
                             index=task.index, context=task.context, emitter=emitter,
                             store=store)
        args = (task.arg, context) if task.wants_context else (task.arg,)
        if task.is_async:
            value = asyncio.run(task.fn(*args))
        else:
            value = _call_sync(task.fn, args)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        _put(outcome, "value", value, task.node, "returned a value")
    except WaitingForEvent as waiting:
        _put(outcome, "waiting", (waiting.event, waiting.question), task.node,
             "paused with a question")
    except BaseException as exc:  # SystemExit too: a node's, not the worker's, to end
        _failed(outcome, exc)
    finally:
        current_emitter.reset(emitting)
        current_answers.reset(answers)
    if store is not None and store.writes and not outcome.error_type:
        _put(outcome, "writes", store.writes, task.node, "wrote to the store a value")
    if emitter is not None:
        outcome.chunks = emitter.sent
    return cloudpickle.dumps(outcome)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _put(outcome: Outcome, part: str, value: Any, node: str, what: str) -> None:
    """Pickle `value` into the outcome's `part`; one that cannot be becomes the node's error."""
    try:
        setattr(outcome, part, cloudpickle.dumps(value))
    except Exception as exc:
        _failed(outcome, TypeError(f"node {node!r} {what} that cannot be sent back from the "
                                   f"cluster: {type(exc).__name__}: {exc}"))


def _failed(outcome: Outcome, exc: BaseException) -> None:
    """Record the exception: its words always, itself when it loads back as itself (an
    exception whose constructor needs more than its message does not)."""
    outcome.value = outcome.waiting = outcome.writes = None
    outcome.error_type = _qualified_name(type(exc))
    outcome.error_text = str(exc)
    outcome.remote_traceback = "".join(traceback.format_exception(exc))
    try:
        if not isinstance(exc, Exception):  # SystemExit in a node ends the node, not the driver
            raise TypeError(f"{type(exc).__name__} is not an Exception")
        data = cloudpickle.dumps(exc)
        again = cloudpickle.loads(data)
        if type(again) is not type(exc):
            raise TypeError(f"it loads back as {type(again).__name__}")
        outcome.error = data
    except Exception as unsent:
        outcome.unsent = f"{type(unsent).__name__}: {unsent}"


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else \
        f"{module}.{kind.__qualname__}"
