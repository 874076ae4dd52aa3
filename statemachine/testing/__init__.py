"""Property-based testing of workflows, with hypothesis (`pip install 'statemachine[testing]'`).

    from statemachine.testing import (check_nodes, check_resume, check_runs, preserves,
                                      states, transition_machine)

    def test_nodes():        check_nodes(app, invariant=preserves(lambda s: s.count >= 0))
    def test_runs():         check_runs(app, inputs=states(State, count=st.integers(0, 9)),
                                        final=lambda s: s.done)
    def test_resume():       check_resume(app, inputs=states(State, count=st.integers(0, 9)))
    TestPaths = transition_machine(app, invariant=...).TestCase

- `states(Model, **overrides)`: valid instances of a pydantic state model.
- `check_nodes`: each node and router alone, on generated states.
- `check_runs`: whole runs: termination, a per-step invariant, the final state.
- `transition_machine` / `check_transitions`: a hypothesis state machine over the graph's
  transitions, shrinking a failing path to the shortest one.
- `check_resume`: a run interrupted at any node call and resumed ends as if uninterrupted.

Every checker raises `PropertyCheckError` (an AssertionError) naming what failed, why, and the
minimal example; it respects the loaded hypothesis profile (`max_examples=` overrides only
that) and runs retries on a `FakeClock`, so nothing sleeps.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "statemachine.testing needs hypothesis, which is an optional dependency: "
        "pip install 'statemachine[testing]'") from exc

from collections.abc import Callable
from typing import Any

from ._common import Failure, Invariant, PropertyCheckError
from ._machine import GraphStateMachine, check_transitions, transition_machine
from ._nodes import check_nodes
from ._resume import SimulatedCrash, SimulatedFailure, check_resume
from ._runs import CHECK_MAX_STEPS, check_runs
from ._strategies import states, values_of


def preserves(predicate: Callable[[Any], Any]) -> Invariant:
    """An invariant saying a step keeps `predicate` true: `not predicate(before) or
    predicate(after)`. Generated states need not satisfy it; those that do must keep it."""

    def invariant(before: Any, after: Any) -> bool:
        return not predicate(before) or bool(predicate(after))

    invariant.__name__ = f"preserves({getattr(predicate, '__name__', 'predicate')})"
    return invariant


__all__ = [
    "CHECK_MAX_STEPS",
    "Failure",
    "GraphStateMachine",
    "Invariant",
    "PropertyCheckError",
    "SimulatedCrash",
    "SimulatedFailure",
    "check_nodes",
    "check_resume",
    "check_runs",
    "check_transitions",
    "preserves",
    "states",
    "transition_machine",
    "values_of",
]
