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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..calls import _call_sync
from ..streaming import current_emitter
from ..types import RunContext
from ..waiting import NO_ANSWERS, TaskAnswers, WaitingForEvent, current_answers

Sink = Callable[[bytes], None]
"""Where a worker sends the bytes of each chunk a task emits (the engine's channel)."""


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
    """What a task came to, as it travels back to the driver."""

    value: Any = None
    """The node's return value (when it returned)."""
    error: BaseException | None = None
    """The exception it raised, when that survives pickling."""
    error_type: str = ""
    """The raised exception's qualified type name (always set when it raised)."""
    error_text: str = ""
    """str() of the exception."""
    remote_traceback: str = ""
    waiting: tuple[str, Any] | None = None
    """(event, question) when the task paused in `wait_for` or `interrupt`."""
    writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    """The task's store writes: ("put" | "delete", args, keyword arguments)."""
    chunks: int = 0
    """How many chunks the task emitted (the driver waits for all of them to arrive)."""
    where: str = ""
    """The worker that ran it, as the engine names it."""


class RemoteEmitter:
    """`emit` in a task on a worker: each chunk is pickled and sent to the driver."""

    def __init__(self, sink: Sink, node: str) -> None:
        self.sink, self.node = sink, node
        self.sent = 0

    def __call__(self, chunk: Any) -> None:
        try:
            data = cloudpickle.dumps(chunk)
        except Exception as exc:
            raise TypeError(f"node {self.node!r} emitted a chunk that cannot be sent to the "
                            f"driver from the cluster: {type(exc).__name__}: {exc}") from None
        self.sink(data)
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
    emitter = RemoteEmitter(sink, task.node) if task.streams and sink is not None else None
    store = RemoteTaskStore(task.node) if task.has_store else None
    outcome = Outcome(where=where)
    answers = current_answers.set(TaskAnswers(list(task.answers)) if task.answers
                                  else NO_ANSWERS)
    emitting = current_emitter.set(emitter)  # type: ignore[arg-type]  # a callable will do
    try:
        context = RunContext(task.thread_id, task.step, task.node, task.task_id,
                             index=task.index, context=task.context, emitter=emitter,
                             store=store)
        args = (task.arg, context) if task.wants_context else (task.arg,)
        if task.is_async:
            outcome.value = asyncio.run(task.fn(*args))
        else:
            result = _call_sync(task.fn, args)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            outcome.value = result
    except WaitingForEvent as waiting:
        outcome.waiting = (waiting.event, waiting.question)
    except Exception as exc:
        outcome.error = exc
        outcome.error_type = _qualified_name(type(exc))
        outcome.error_text = str(exc)
        outcome.remote_traceback = traceback.format_exc()
    finally:
        current_emitter.reset(emitting)
        current_answers.reset(answers)
    if store is not None:
        outcome.writes = store.writes
    if emitter is not None:
        outcome.chunks = emitter.sent
    return _dumped(outcome, task.node)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _dumped(outcome: Outcome, node: str) -> bytes:
    """The outcome's bytes. An exception that does not come back as itself (its pickle
    fails, or loads as something else) travels as its type name, text and traceback; a
    return value that cannot be pickled becomes the node's error."""
    error = outcome.error
    if error is not None:
        try:
            again = cloudpickle.loads(cloudpickle.dumps(error))
            if type(again) is not type(error):
                raise TypeError(f"it came back as {type(again).__name__}")
        except Exception:
            outcome.error = None
    try:
        return cloudpickle.dumps(outcome)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if error is None:  # its return value (or its question) is what would not pickle
        what = "paused with a question" if outcome.waiting is not None else "returned a value"
        failed = TypeError(f"node {node!r} {what} that cannot be sent back from the cluster: "
                           f"{problem}")
        outcome.error, outcome.error_type = failed, "TypeError"
        outcome.error_text = str(failed)
    outcome.value, outcome.waiting, outcome.writes = None, None, []
    try:
        return cloudpickle.dumps(outcome)
    except Exception:  # the error itself, after all: send its words only
        outcome.error = None
        return cloudpickle.dumps(outcome)


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else \
        f"{module}.{kind.__qualname__}"
