"""statemachine: durable, stateful workflows as graphs.

Declare the state as a pydantic model (reducers say how updates merge), build a `StateGraph`
of plain functions or coroutines, `compile()` it (every problem reported at once), and run it
with `invoke`/`stream`, checkpointed to SQLite (or PostgreSQL) step by step when you give it a
checkpointer. `app.submit()` queues runs for `Worker`s (`statemachine worker`) to execute.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from . import reducers
from .clock import FakeClock, use_clock
from .commands import Command, Send
from .compiled import CompiledGraph
from .compiler import GraphSpec, RouterWithoutPathMapWarning
from .constants import END, START
from .errors import (
    CheckpointerRequiredError,
    CheckpointError,
    GraphMismatchError,
    GraphValidationError,
    InvalidContextError,
    InvalidRouteError,
    InvalidUpdateError,
    NodeTimeoutError,
    Problem,
    RemoteTaskError,
    StateMachineError,
    StepLimitError,
    StorageUnavailableError,
    TaskSerializationError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
)
from .graph import StateGraph
from .migrations import Drop, Rename
from .policies import CachePolicy, RetryPolicy
from .streaming import emit
from .types import NodeFailure, RunContext, Snapshot, StepEvent
from .waiting import Interrupt, interrupt, wait_for
from .worker import Worker, WorkerStats

try:  # the version lives in pyproject.toml only; an installed package reports it
    __version__ = _distribution_version("statemachine")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown (not installed)"

__all__ = [
    "END",
    "START",
    "CachePolicy",
    "CheckpointError",
    "CheckpointerRequiredError",
    "Command",
    "CompiledGraph",
    "Drop",
    "FakeClock",
    "GraphMismatchError",
    "GraphSpec",
    "GraphValidationError",
    "Interrupt",
    "InvalidContextError",
    "InvalidRouteError",
    "InvalidUpdateError",
    "NodeFailure",
    "NodeTimeoutError",
    "Problem",
    "RemoteTaskError",
    "Rename",
    "RetryPolicy",
    "RouterWithoutPathMapWarning",
    "RunContext",
    "Send",
    "Snapshot",
    "StateGraph",
    "StateMachineError",
    "StepEvent",
    "StepLimitError",
    "StorageUnavailableError",
    "TaskSerializationError",
    "ThreadBusyError",
    "ThreadNotFoundError",
    "ThreadStateError",
    "Worker",
    "WorkerStats",
    "emit",
    "interrupt",
    "reducers",
    "use_clock",
    "wait_for",
]
