"""Catching a node that changes the state it was given in place instead of returning an
update (`state.items.append(x)`). The executor keeps earlier states for history, resume and
forks, and shares values between them, so such a change rewrites history in memory while the
store keeps the old values: a fork from an earlier checkpoint would then diverge.

Two checks, chosen with `compile(check_mutation=...)` (default: the STATEMACHINE_CHECK_MUTATION
environment variable, else "sizes"):

- "sizes": the lengths of the fields the model declares as lists, dicts, sets or bytearrays,
  before and after each step (`Sizer`). Well under a microsecond a step: it catches the common
  case (append, extend, pop, a new key), not an item replaced in place nor a field declared
  otherwise (`list[int] | None`, `Any`).
- "full": the whole state as JSON before and after (`Fingerprint`): catches any change to a
  stored value, at the cost of serializing the state twice a step (tests, the testing
  toolkit, debugging; the toolkit always checks this way).
- "off".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Literal, get_origin

from pydantic import BaseModel

from .errors import InvalidUpdateError

CheckMutation = Literal["sizes", "full", "off"]
CHECK_MUTATION_MODES: tuple[str, ...] = ("sizes", "full", "off")
ENVIRONMENT = "STATEMACHINE_CHECK_MUTATION"

_CONTAINERS = (list, dict, set, bytearray)


class Sizer:
    """The lengths of the fields a state model declares as lists, dicts, sets or bytearrays:
    what "sizes" compares before and after a step, in well under a microsecond."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.fields = tuple(name for name, info in model.model_fields.items()
                            if (get_origin(info.annotation) or info.annotation) in _CONTAINERS)
        self.measure: Callable[[BaseModel], Any]
        if not self.fields:
            self.measure = _nothing
        elif len(self.fields) == 1:
            name = self.fields[0]
            self.measure = lambda state: _len(state.__dict__[name])
        else:
            get = itemgetter(*self.fields)
            self.measure = lambda state: tuple(map(_len, get(state.__dict__)))

    def changed_fields(self, state: BaseModel, before: Any) -> list[str]:
        """The fields whose length is no longer what `measure` gave (`before`)."""
        now = self.measure(state)
        if len(self.fields) == 1:
            return list(self.fields) if now != before else []
        return [name for name, old, new in zip(self.fields, before, now, strict=True)
                if old != new]


def _nothing(state: BaseModel) -> tuple[()]:
    return ()


def _len(value: Any) -> int:
    return len(value) if isinstance(value, _CONTAINERS) else -1


def mutated(fields: list[str], nodes: list[str], step: int, thread_id: str | None
            ) -> InvalidUpdateError:
    """The error for a step whose `nodes` changed `fields` of the state in place."""
    nodes = list(dict.fromkeys(nodes))
    who = f"node {nodes[0]!r}" if len(nodes) == 1 else \
        f"one of the nodes {', '.join(map(repr, nodes))}"
    of_thread = f" of thread {thread_id!r}" if thread_id is not None else ""
    return InvalidUpdateError(
        f"{who} changed the state it was given in place (field"
        f"{'s' if len(fields) != 1 else ''} {', '.join(map(repr, fields)) or '?'}) at step "
        f"{step}{of_thread} instead of returning an update: the stored state and history would "
        "no longer agree. Return new values, e.g. {'items': [*state.items, x]}, or an update "
        "through a reducer: {'items': [x]}.", node=nodes[0] if nodes else None,
        field=fields[0] if fields else None, step=step, thread_id=thread_id)


class Fingerprint:
    """What a value was before a user function saw it, to tell whether it changed it."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.text: str | None = None
        self.copy: Any = None
        self.usable = True
        try:
            if isinstance(value, BaseModel):
                self.text = value.model_dump_json(round_trip=True)
            else:
                from pydantic_core import to_json

                self.text = to_json(value).decode()
        except Exception:
            try:
                self.copy = copy.deepcopy(value)
                self.usable = bool(self.copy == value)  # no meaningful ==: cannot tell
            except Exception:
                self.usable = False

    def changed(self) -> bool:
        if not self.usable:
            return False
        try:
            if self.text is not None:
                if isinstance(self.value, BaseModel):
                    return self.value.model_dump_json(round_trip=True) != self.text
                from pydantic_core import to_json

                return to_json(self.value).decode() != self.text
            return bool(self.copy != self.value)
        except Exception:
            return True  # it no longer even serializes: it was changed

    def changed_fields(self) -> list[str]:
        if not isinstance(self.value, BaseModel) or self.text is None:
            return []
        try:
            old = json.loads(self.text)
            new = json.loads(self.value.model_dump_json(round_trip=True))
        except Exception:
            return []
        return [k for k in new if old.get(k) != new.get(k)]


def mutation_message(who: str, fp: Fingerprint, what: str = "input state") -> str:
    fields = fp.changed_fields()
    changed = f" (changed: {', '.join(fields)})" if fields else ""
    return (f"{who} changed its {what} in place{changed} instead of returning an update. The "
            "executor keeps earlier states for history and resume and shares values between "
            "them: return new values, e.g. {'items': [*state.items, x]}, or use a reducer.")
