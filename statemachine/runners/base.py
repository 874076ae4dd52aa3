"""What every cluster runner does alike: pack a task in the driver, unpack its outcome, and
gather the chunks it emits while it runs. An engine (`DaskRunner`, `RayRunner`) only
submits the packed bytes and hands back the outcome's bytes and each chunk's.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import GraphValidationError, Problem, RemoteTaskError, TaskSerializationError

CHUNK_WAIT = 30.0
"""Seconds the driver waits, after a task's outcome arrives, for chunks it emitted that are
still on their way (they travel apart from the outcome on Dask)."""


class Runner(ABC):
    """Where a step's node tasks run instead of the driver's threads and event loop.

    The step loop, routing, validation, the reducers and every commit stay in the driver;
    the runner executes node tasks (parallel nodes and each `Send`), sync or async, and sends
    back their return values. Execution is at least once per task (a lost worker's task runs
    again elsewhere); the commit stays exactly once (`RunContext.task_id` is the idempotency
    key for a node's own side effects). Use one as `compile(..., runner=...)`, or per call
    (`invoke(..., runner=...)`); `add_node(..., runner="local")` keeps a node in the driver.
    """

    engine: ClassVar[str] = "cluster"
    """The engine's name, as messages say it ("Dask", "Ray")."""

    @abstractmethod
    async def submit(self, blob: bytes, *, node: str, stream: ChunkStream | None) -> bytes:
        """Run the packed task on the cluster and return its outcome's bytes (those
        `remote_task.execute` made). `stream`, when given, receives each chunk's bytes as the
        task emits them. Cancelling the awaiting coroutine cancels the remote task."""

    @abstractmethod
    def close(self) -> None:
        """Let go of what this runner started (a client or cluster connection it opened)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- packing ------------------------------------------------------------------------------

    def pack(self, task: Any, *, where: str) -> bytes:
        """The task's bytes (a `RemoteTask`), or `TaskSerializationError` naming the node and
        which of its parts cannot travel. `where` says the step and thread, for messages."""
        import cloudpickle

        try:
            return cloudpickle.dumps(task)
        except Exception as exc:
            part, error = _unpicklable_part(task, exc)
            raise TaskSerializationError(
                f"node {task.node!r} cannot run on the {self.engine} cluster: its {part} "
                f"cannot be serialised ({type(error).__name__}: {error}) {where}. Nothing of "
                f"the step was submitted. Make it picklable (a function defined at module "
                f"level in a module the workers can import; plain data), or keep the node "
                f"in the driver: add_node(..., runner='local').", node=task.node, part=part,
                step=task.step, thread_id=task.thread_id) from None

    async def run(self, blob: bytes, *, node: str,
                  deliver: Callable[[Any], None] | None) -> Any:
        """Run a packed task and return its outcome (`remote_task.Outcome`) once every chunk
        it emitted has reached `deliver` (None: nobody streams them); its exception is
        re-raised as itself when it came back whole, else as `RemoteTaskError` with its
        type name and traceback text."""
        import cloudpickle

        stream = ChunkStream(deliver) if deliver is not None else None
        try:
            outcome = cloudpickle.loads(await self.submit(blob, node=node, stream=stream))
            if stream is not None:
                await stream.complete(outcome.chunks)
        finally:
            if stream is not None:
                stream.close()
        return self.raise_for(outcome, node=node)

    def raise_for(self, outcome: Any, *, node: str) -> Any:
        """The outcome, unless the task raised: then its exception."""
        if outcome.error is not None:
            error = outcome.error
            error.add_note(f"it ran on {outcome.where or f'the {self.engine} cluster'}; "
                           f"the remote traceback:\n{outcome.remote_traceback.rstrip()}")
            raise error
        if outcome.error_type:
            raise RemoteTaskError(
                f"node {node!r} raised {outcome.error_type}: {outcome.error_text} on "
                f"{outcome.where or f'the {self.engine} cluster'} (the exception could not be "
                f"sent back as itself: its type cannot be pickled or imported here); the "
                f"remote traceback:\n{outcome.remote_traceback.rstrip()}", node=node,
                error_type=outcome.error_type, remote_traceback=outcome.remote_traceback,
                where=outcome.where)
        return outcome


def check_runner(spec: Any, runner: Any) -> Runner | None:
    """`runner` if it is one (or None); with it, every node bound for the cluster must be a
    function that can travel there: a `GraphValidationError` lists each one that cannot."""
    if runner is None:
        return None
    if not isinstance(runner, Runner):
        raise TypeError(f"runner must be a statemachine.runners.Runner (DaskRunner, RayRunner), "
                        f"got {type(runner).__name__}.")
    import cloudpickle

    problems = []
    for node in spec.nodes.values():
        if node.subgraph is not None or node.local:
            continue
        try:
            cloudpickle.dumps(node.call.fn)
        except Exception as exc:
            problems.append(Problem(
                "unserializable_node", f"node {node.name!r} cannot run on the {runner.engine} "
                f"cluster: its function cannot be serialised ({type(exc).__name__}: {exc}).",
                nodes=(node.name,), hint="define it at module level in a module the workers "
                "can import, or keep it in the driver: add_node(..., runner='local')."))
    if problems:
        raise GraphValidationError(problems)
    return runner


def _unpicklable_part(task: Any, first: Exception) -> tuple[str, Exception]:
    """Which part of a task does not pickle, and why."""
    import cloudpickle

    parts = (("function", task.fn), ("input" if task.index == 0 else "Send payload", task.arg),
             ("call's context", task.context), ("delivered answers", task.answers))
    for name, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            return name, exc
    return "task", first


class ChunkStream:
    """The chunks one remote task emits, as they arrive (from any thread): each is unpickled
    and handed to the task's emitter on the driver's event loop, in order; `complete` waits
    until all the task sent have arrived."""

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._received = 0
        self._expected: int | None = None
        self._all_in = asyncio.Event()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call `closer` once the task's chunks are all in (an engine's unsubscribe)."""
        self._closers.append(closer)

    def close(self) -> None:
        for closer in self._closers:
            closer()
        self._closers.clear()

    def put(self, data: bytes) -> None:
        """One chunk's bytes arrived (any thread)."""
        self._loop.call_soon_threadsafe(self._on_loop, data)

    def _on_loop(self, data: bytes) -> None:
        import cloudpickle

        self._received += 1
        self._deliver(cloudpickle.loads(data))
        if self._expected is not None and self._received >= self._expected:
            self._all_in.set()

    async def complete(self, count: int, timeout: float = CHUNK_WAIT) -> None:
        """Wait (at most `timeout` seconds) until `count` chunks have arrived."""
        self._expected = count
        if self._received >= count:
            return
        # chunks are live output, not state: past the wait, the task's update is what counts
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_in.wait(), timeout)
