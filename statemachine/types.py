"""The values the executor hands to users: run context, step events and snapshots."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from checkpoints.base import Status

from .streaming import emit
from .waiting import Interrupt

StateT = TypeVar("StateT", bound=BaseModel)


def task_id(*parts: object) -> str:
    """A stable id for a task: the same parts (thread, step origin, node, index) always give
    the same 32 hex digits, so a task re-run after a crash keeps its id."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a node may know about the task it is running (its optional second parameter).

    `task_id` is the same every time this task runs, including after a crash and resume: use it
    as an idempotency key for side effects (a payment, an email).
    """

    thread_id: str | None
    step: int
    node: str
    task_id: str
    undoes_task_id: str | None = None
    """For a compensation: the `task_id` of the task it undoes (what that task saw), to find
    the side effect to undo; its own `task_id` stays its own idempotency key."""
    index: int = 0
    """Which of the step's tasks of this node it is: 0, or a `Send`'s position among the
    node's tasks of the step."""
    context: Any = field(default=None, repr=False)
    """The call's `context=` (validated into the graph's `context_schema`): per-call
    dependencies, never checkpointed (nor shown in the repr: it may hold a key)."""

    emitter: Any = field(default=None, repr=False, compare=False)
    """Where `emit` sends chunks (None: nobody streams them)."""
    store: Any = field(default=None, repr=False, compare=False)
    """The compiled store as this task sees it (`statemachine.memory.TaskStore`): writes
    commit with the task, exactly once; None when the graph was compiled without one."""

    def emit(self, chunk: Any) -> None:
        """Stream `chunk` to a caller reading stream_mode="custom" (`streaming.emit`); from
        any thread, including ones the node starts itself (plain `emit` works only in the
        node's own thread and tasks)."""
        if self.emitter is not None:
            self.emitter(chunk)
        else:
            emit(chunk)


@dataclass(frozen=True, slots=True)
class StepEvent(Generic[StateT]):
    """One finished step: which nodes ran, what each returned, and the state after it."""

    step: int
    nodes: tuple[str, ...]
    updates: dict[str, Any]
    """node -> its validated update (a list of updates when a node ran several times)."""
    state: StateT
    status: Status
    thread_id: str | None = None
    checkpoint_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """node -> seconds it ran in this step (summed over its tasks)."""
    attempts: dict[str, int] = field(default_factory=dict)
    """node -> attempts it took, for nodes that were retried."""
    cache_hits: tuple[str, ...] = ()
    """Nodes whose update came from the cache instead of running."""
    interrupts: tuple[Interrupt, ...] = ()
    """When the step paused in `interrupt` or `wait_for` (status "interrupted"): what it
    waits for."""


@dataclass(frozen=True)
class Snapshot(Generic[StateT]):
    """A committed checkpoint of a thread, as `get_state` and `history` return it."""

    thread_id: str
    checkpoint_id: str
    parent_id: str | None
    step: int
    """The step the thread is at: the one `next` would run (for a failed run, the failed one)."""
    state: StateT
    next: tuple[str, ...]
    """Nodes still to run from here (without those whose writes are already pending)."""
    status: Status
    error: str | None
    created_at: float
    pending_writes: dict[str, Any] = field(default_factory=dict)
    """Updates of tasks of this step that finished before the step failed: applied on resume."""
    kind: str = "step"
    """How this checkpoint was made: input, step, update, fork, compensation, or resume and
    event (a paused or failed step continued, with delivered events for `event`)."""
    ran: tuple[str, ...] = ()
    """Nodes whose updates made this checkpoint, in merge order (filled in by `history`)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the step recorded: `attempts` of retried nodes, `cache_hits`, what it `waits_for`."""
    interrupts: tuple[Interrupt, ...] = ()
    """On a paused checkpoint: what its tasks wait for (`interrupt` questions, and
    `wait_for` events as {"wait_for": name}), each with the id to answer it by."""


class NodeFailure(BaseModel):
    """A node's failure, captured into the state by `add_node(..., on_error="capture")`."""

    model_config = ConfigDict(frozen=True)

    node: str
    error_type: str
    message: str
    step: int
    thread_id: str | None = None

    def __str__(self) -> str:
        return f"node {self.node!r} failed at step {self.step}: {self.error_type}: {self.message}"
