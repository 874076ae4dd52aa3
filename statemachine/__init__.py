"""statemachine: durable, stateful workflows as graphs.

Declare the state as a pydantic model (reducers say how updates merge), build a `StateGraph`
of plain functions or coroutines, `compile()` it (every problem reported at once), and run it
with `invoke`/`stream`, checkpointed to SQLite step by step when you give it a checkpointer.
"""

from . import reducers
from .compiled import CompiledGraph
from .compiler import GraphSpec, RouterWithoutPathMapWarning
from .constants import END, START
from .errors import (
    CheckpointError,
    GraphValidationError,
    InvalidRouteError,
    InvalidUpdateError,
    Problem,
    StateMachineError,
    StepLimitError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
)
from .graph import StateGraph
from .types import RunContext, Snapshot, StepEvent

__all__ = [
    "END",
    "START",
    "CheckpointError",
    "CompiledGraph",
    "GraphSpec",
    "GraphValidationError",
    "InvalidRouteError",
    "InvalidUpdateError",
    "Problem",
    "RouterWithoutPathMapWarning",
    "RunContext",
    "Snapshot",
    "StateGraph",
    "StateMachineError",
    "StepEvent",
    "StepLimitError",
    "ThreadBusyError",
    "ThreadNotFoundError",
    "ThreadStateError",
    "reducers",
]
