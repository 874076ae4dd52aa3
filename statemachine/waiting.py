"""`wait_for`: pause a run durably until an event is delivered with `resume(event=...)`."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskAnswers:
    """The events already delivered to the running task, in the order it waited for them."""

    answers: list[Any] = field(default_factory=list)
    position: int = 0


NO_ANSWERS = TaskAnswers()
"""Shared by tasks with no delivered events: `wait_for` reads it and pauses, never changes it."""

current_answers: ContextVar[TaskAnswers | None] = ContextVar("statemachine_answers", default=None)


class WaitingForEvent(BaseException):
    """Raised by `wait_for` to end the task until the event arrives.

    A BaseException, so a node's own `except Exception` cannot swallow the pause.
    """

    def __init__(self, event: str) -> None:
        self.event = event
        super().__init__(event)


def wait_for(event: str) -> Any:
    """The value delivered for `event`; pauses the run until it is delivered.

    On resume the node runs again from its start and each `wait_for` returns, in order, the
    values delivered so far; only the first unanswered one pauses it. Everything the node does
    before its last wait therefore runs again on each resume: keep it idempotent.
    """
    answers = current_answers.get()
    if answers is None:
        raise RuntimeError("wait_for() can only be called inside a running node.")
    if answers.position < len(answers.answers):
        value = answers.answers[answers.position]
        answers.position += 1
        return value
    raise WaitingForEvent(event)
