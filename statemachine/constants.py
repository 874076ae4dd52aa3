"""The two virtual nodes every graph has, and the engine's defaults."""

from typing import Final

START: Final = "__start__"
"""Where every run begins: edges from START choose the first node(s)."""

END: Final = "__end__"
"""Where a branch stops: a run ends when no node is left to run."""

DEFAULT_MAX_STEPS: Final = 10_000
"""How many steps one call runs before it stops with `StepLimitError` (`max_steps=`)."""

INPUT: Final = "__input__"
"""The pseudo-node that writes a run's input."""

UPDATE: Final = "__update__"
"""The pseudo-node that writes `update_state` values given without `as_node`."""

CONTINUATIONS: Final = frozenset({"resume", "event"})
"""Kinds of the checkpoint a run commits when it continues a paused or failed step (`event`
when it delivers events): the step's due tasks again, with the work it kept."""

INTERRUPTS: Final = "__interrupt__"
"""The key of the `updates` stream item saying a run paused, with what it waits for."""
