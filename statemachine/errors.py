"""Every error the library raises on purpose. All subclass `StateMachineError`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Literal, get_args

# the storage layer's errors (and the base class), defined there so it imports no engine code
from checkpoints.errors import (
    CheckpointError,
    StateMachineError,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFoundError,
)

__all__ = [
    "CheckpointError",
    "CheckpointerRequiredError",
    "GraphValidationError",
    "InvalidRouteError",
    "InvalidUpdateError",
    "NodeTimeoutError",
    "Problem",
    "RemoteTaskError",
    "StateMachineError",
    "StepLimitError",
    "StorageUnavailableError",
    "TaskSerializationError",
    "ThreadBusyError",
    "ThreadNotFoundError",
    "ThreadStateError",
    "closest_name",
    "did_you_mean",
]


ProblemCode = Literal[
    "schema_not_model", "invalid_reducer", "reserved_name", "duplicate_node",
    "node_not_callable", "bad_signature", "invalid_edge", "unknown_node", "invalid_path_map",
    "invalid_option", "invalid_error_field", "subgraph_schema", "invalid_migration",
    "secret_field", "no_entry", "unserializable_node",
    "unreachable_node", "dead_end", "no_path_to_end",
]
"""Every code a `Problem` can have; the type checker holds the compiler to this list."""

PROBLEM_CODES: tuple[str, ...] = get_args(ProblemCode)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph, as data first and prose second.

    `code` is stable and machine-readable (one of `PROBLEM_CODES`), `nodes` are the node
    names involved, `message` says what is wrong and `hint` how to fix it.
    """

    code: ProblemCode
    message: str
    nodes: tuple[str, ...] = ()
    hint: str | None = None

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" + (f" Hint: {self.hint}" if self.hint else "")


class GraphValidationError(StateMachineError, ValueError):
    """`compile()` found problems; `.problems` lists every one of them, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        lines = [f"the graph has {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))

    @property
    def codes(self) -> list[str]:
        return [problem.code for problem in self.problems]


class InvalidUpdateError(StateMachineError, ValueError):
    """A node returned something that is not a valid update of the state."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        field: str | None = None,
        step: int | None = None,
        thread_id: str | None = None,
    ) -> None:
        self.node, self.field, self.step, self.thread_id = node, field, step, thread_id
        super().__init__(message)


class InvalidRouteError(StateMachineError, ValueError):
    """A router returned a route that is not among the ones it declared."""

    def __init__(
        self,
        message: str,
        *,
        node: str,
        returned: object,
        allowed: Iterable[str],
        step: int | None = None,
        thread_id: str | None = None,
    ) -> None:
        self.node, self.returned, self.allowed = node, returned, tuple(allowed)
        self.step, self.thread_id = step, thread_id
        super().__init__(message)


class StepLimitError(StateMachineError):
    """A call ran `max_steps` steps and the graph still had nodes to run."""

    def __init__(self, message: str, *, next_nodes: Sequence[str], max_steps: int) -> None:
        self.next_nodes, self.max_steps = tuple(next_nodes), max_steps
        super().__init__(message)


class NodeTimeoutError(StateMachineError, TimeoutError):
    """A node ran longer than its `timeout`. A `TimeoutError`, so retry policies can match it."""

    def __init__(self, message: str, *, node: str, timeout: float, step: int | None = None,
                 thread_id: str | None = None) -> None:
        self.node, self.timeout, self.step, self.thread_id = node, timeout, step, thread_id
        super().__init__(message)


class TaskSerializationError(StateMachineError, TypeError):
    """A task bound for a cluster (`statemachine.runners`) could not be serialised: its node's
    function, its input (the state or a `Send`'s payload) or the call's context. Raised in
    the driver before any task of the step is submitted; the message names the node, what
    could not be sent and why."""

    def __init__(self, message: str, *, node: str, part: str, step: int | None = None,
                 thread_id: str | None = None) -> None:
        self.node, self.part, self.step, self.thread_id = node, part, step, thread_id
        super().__init__(message)


class RemoteTaskError(StateMachineError):
    """A node running on a cluster raised an exception that could not be sent back as itself
    (its type cannot be pickled or imported in the driver). `error_type` is the remote
    exception's qualified type name, `remote_message` its text and `remote_traceback` its
    traceback. The default retry policy retries it as it would the remote exception itself
    (by its type's name), and `on_error="capture"` records the remote type."""

    def __init__(self, message: str, *, node: str, error_type: str, remote_traceback: str,
                 where: str = "", remote_message: str = "") -> None:
        self.node, self.error_type, self.where = node, error_type, where
        self.remote_traceback, self.remote_message = remote_traceback, remote_message
        super().__init__(message)


class ThreadStateError(StateMachineError):
    """The thread is not in a state that allows what was asked (e.g. new input on a failed run)."""


class GraphMismatchError(ThreadStateError):
    """The thread was run by another graph, or by a version of this one with another
    structure: nothing was run or written. The message names both and the way to move the
    thread on purpose (`app.rebind`)."""

    def __init__(self, message: str, *, thread_id: str, stored: str, stored_fingerprint: str,
                 graph: str, fingerprint: str) -> None:
        super().__init__(message)
        self.thread_id = thread_id
        self.stored, self.stored_fingerprint = stored, stored_fingerprint
        self.graph, self.fingerprint = graph, fingerprint

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickled by hand
        return (_graph_mismatch, (str(self), self.thread_id, self.stored,
                                  self.stored_fingerprint, self.graph, self.fingerprint))


def _graph_mismatch(message: str, thread_id: str, stored: str, stored_fingerprint: str,
                    graph: str, fingerprint: str) -> GraphMismatchError:
    return GraphMismatchError(message, thread_id=thread_id, stored=stored,
                              stored_fingerprint=stored_fingerprint, graph=graph,
                              fingerprint=fingerprint)


class InvalidContextError(StateMachineError, ValueError):
    """The `context=` of a call does not fit the graph's `context_schema`."""


class CheckpointerRequiredError(StateMachineError):
    """The operation needs a graph compiled with a checkpointer."""


def closest_name(name: object, known: Iterable[str]) -> str | None:
    """The known name closest to `name` (for typos), or None."""
    matches = get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a known name is close to `name`, else ''."""
    match = closest_name(name, known)
    return f" (did you mean {match!r}?)" if match else ""
