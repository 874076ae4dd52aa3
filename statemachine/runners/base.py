"""What every cluster runner does alike: pack a task in the driver, unpack its outcome, and
gather the chunks it emits while it runs. An engine (`DaskRunner`, `RayRunner`) only
submits the packed bytes and hands back the outcome's bytes and each chunk's.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
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

    chunks_in_order: ClassVar[bool] = False
    """Whether a task's chunks reach the driver before its outcome (Ray's streaming task);
    else the driver waits for the count its outcome reports (Dask's events travel apart)."""

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
                  deliver: Callable[[Any], None] | None) -> Completed:
        """Run a packed task and return what it came to (`Completed`) once every chunk its
        run emitted has reached `deliver` (None: nobody streams them); its exception is
        re-raised as itself when it can be rebuilt here, else as `RemoteTaskError` with its
        type name and traceback text."""
        stream = ChunkStream(deliver) if deliver is not None else None
        try:
            outcome = _loads(await self.submit(blob, node=node, stream=stream))
            if stream is not None and not self.chunks_in_order:
                await stream.complete(outcome.attempt, outcome.chunks)
        finally:
            if stream is not None:
                stream.close()
        return self.completed(outcome, node=node)

    def completed(self, outcome: Any, *, node: str) -> Completed:
        """What the outcome says, each part loaded here; the task's exception raised."""
        where = outcome.where or f"the {self.engine} cluster"
        if outcome.error_type:
            if outcome.error is not None:
                try:
                    error = _loads(outcome.error)
                except Exception as exc:
                    outcome.unsent = f"it cannot be rebuilt here: {type(exc).__name__}: {exc}"
                else:
                    error.add_note(f"it ran on {where}; the remote traceback:\n"
                                   f"{outcome.remote_traceback.rstrip()}")
                    raise error
            raise RemoteTaskError(
                f"node {node!r} raised {outcome.error_type}: {outcome.error_text} on {where}; "
                f"the exception could not be sent back as itself ({outcome.unsent}); the "
                f"remote traceback:\n{outcome.remote_traceback.rstrip()}", node=node,
                error_type=outcome.error_type, remote_traceback=outcome.remote_traceback,
                where=outcome.where, remote_message=outcome.error_text)
        parts = {}
        for part in ("value", "waiting", "writes"):
            data = getattr(outcome, part)
            if data is None:
                continue
            try:
                parts[part] = _loads(data)
            except Exception as exc:
                raise TypeError(
                    f"node {node!r} ran on {where}, but its "
                    f"{'return value' if part == 'value' else part} cannot be loaded in the "
                    f"driver: {type(exc).__name__}: {exc} (the driver must be able to import "
                    f"every type a node returns)") from None
        return Completed(parts.get("value"), parts.get("waiting"), parts.get("writes") or [])


@dataclass(frozen=True, slots=True)
class Completed:
    """A remote task's result, loaded in the driver."""

    value: Any
    """What the node returned."""
    waiting: tuple[str, Any] | None
    """(event, question) when it paused in `wait_for` or `interrupt`."""
    writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
    """Its store writes, to replay into the task's buffer."""


def _loads(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


def check_runner(spec: Any, runner: Any) -> Runner | None:
    """`runner` if it is one (or None); with it, every node bound for the cluster must be a
    function that can travel there: a `GraphValidationError` lists each one that cannot."""
    if runner is None:
        return None
    if not isinstance(runner, Runner):
        raise TypeError(f"runner must be a statemachine.runners.Runner (DaskRunner, RayRunner), "
                        f"got {type(runner).__name__}.")
    import cloudpickle

    problems: list[Problem] = []
    _check_nodes(spec, runner, problems, cloudpickle.dumps, "")
    if problems:
        raise GraphValidationError(problems)
    return runner


def _check_nodes(spec: Any, runner: Runner, problems: list[Problem], dumps: Callable[[Any], Any],
                 inside: str) -> None:
    """Every node of `spec` bound for the cluster, and those of its subgraphs (their nodes
    run on the call's runner too), must pickle."""
    for node in spec.nodes.values():
        if node.local:
            continue
        where = f"{inside}node {node.name!r}"
        if node.subgraph is not None:
            _check_nodes(node.subgraph.graph.spec, runner, problems, dumps,
                         f"subgraph {node.name!r}'s ")
            continue
        try:
            dumps(node.call.fn)
        except Exception as exc:
            problems.append(Problem(
                "unserializable_node", f"{where} cannot run on the {runner.engine} cluster: "
                f"its function cannot be serialised ({type(exc).__name__}: {exc}).",
                nodes=(node.name,), hint="define it at module level in a module the workers "
                "can import, or keep it in the driver: add_node(..., runner='local')."))


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
    until all that the finishing run of the task sent have arrived. Chunks are counted per
    run (`attempt`): a run lost with its worker may have sent some, which were streamed live
    and do not count for the run that finished."""

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._received: dict[str, int] = {}
        self._waiting: tuple[str, int] | None = None
        self._all_in = asyncio.Event()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call `closer` once the task's chunks are all in (an engine's unsubscribe)."""
        self._closers.append(closer)

    def close(self) -> None:
        for closer in self._closers:
            closer()
        self._closers.clear()

    def put(self, attempt: str, data: bytes) -> None:
        """One chunk of run `attempt` arrived (any thread)."""
        self._loop.call_soon_threadsafe(self._on_loop, attempt, data)

    def _on_loop(self, attempt: str, data: bytes) -> None:
        self._received[attempt] = self._received.get(attempt, 0) + 1
        self._deliver(_loads(data))
        if self._waiting is not None and self._received[attempt] >= self._waiting[1] and \
                attempt == self._waiting[0]:
            self._all_in.set()

    async def complete(self, attempt: str, count: int, timeout: float = CHUNK_WAIT) -> None:
        """Wait (at most `timeout` seconds) until run `attempt`'s `count` chunks arrived."""
        self._waiting = (attempt, count)
        if self._received.get(attempt, 0) >= count:
            return
        # chunks are live output, not state: past the wait, the task's update is what counts
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_in.wait(), timeout)
