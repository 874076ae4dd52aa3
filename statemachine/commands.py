"""What nodes and routers may return besides a plain update: `Send` and `Command`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class _NoResume:
    def __repr__(self) -> str:
        return "<no answer>"


NO_RESUME: Any = _NoResume()


@dataclass(frozen=True)
class Send:
    """Run `node` once more in the next step, with `payload` as its input instead of the state.

    A router (or a node's `Command.goto`) returning one `Send` per item fans the same node out
    over the items; their updates merge through the reducers in the order of the Sends.
    The payload must be storable as JSON when the graph has a checkpointer.
    """

    node: str
    payload: Any = None


@dataclass(frozen=True)
class Command:
    """Update the state and choose what runs next, from inside a node.

    `goto` is a node name, END, a `Send`, or a list of them. The node must declare where it
    may go — `add_node(..., destinations=("a", "b"))` — so validation and diagrams stay exact.
    """

    update: Mapping[str, Any] | None = None
    goto: str | Send | Sequence[str | Send] = field(default=())
    resume: Any = field(default=NO_RESUME)
    """Given to `invoke`/`stream` (not returned by a node): the answer to a paused run's
    `interrupt` question, `{interrupt id: answer}` for several; see `resume(answer=...)`."""

    @property
    def resumes(self) -> bool:
        return self.resume is not NO_RESUME

    def targets(self) -> list[str | Send]:
        goto = self.goto
        if isinstance(goto, (str, Send)):
            return [goto]
        return list(goto)
