"""`wait_for` and `interrupt`: pause a run durably until an event is delivered with
`resume(event=...)`, or a question `interrupt` asked is answered with `resume(answer=...)`."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python


@dataclass
class TaskAnswers:
    """The events already delivered to the running task, in the order it waited for them."""

    answers: list[Any] = field(default_factory=list)
    position: int = 0


NO_ANSWERS = TaskAnswers()
"""Shared by tasks with no delivered events: `wait_for` reads it and pauses, never changes it."""

current_answers: ContextVar[TaskAnswers | None] = ContextVar("statemachine_answers", default=None)


class WaitingForEvent(BaseException):
    """Raised by `wait_for` (and `interrupt`) to end the task until the event arrives.

    A BaseException, so a node's own `except Exception` cannot swallow the pause. `question`
    is what an `interrupt` asked (None for `wait_for`).
    """

    def __init__(self, event: str, question: Any = None) -> None:
        self.event = event
        self.question = question
        super().__init__(event)


INTERRUPT_EVENT = "__interrupt__"
"""Events an `interrupt` waits for are named this, then the position of its answer among the
task's answers: `__interrupt__0`, `__interrupt__1`..."""


@dataclass(frozen=True, slots=True)
class Interrupt:
    """A question a paused node asked with `interrupt(value)`: answer it with
    `app.resume(thread, answer=...)` (several: `answer={id: ..., id: ...}`) or
    `invoke(Command(resume=...), thread_id=...)`."""

    id: str
    node: str
    value: Any
    waits_for: str | None = None
    """For a `wait_for` pause: the event (its value is {"wait_for": event}); None for an
    `interrupt` question."""


def interrupt(value: Any) -> Any:
    """Pause the run here, durably, asking `value` (any JSON-able data: a question, a draft
    to approve); return the answer given on resume. Like `wait_for`, the node runs again from
    its start on resume and each `interrupt` returns, in order, the answers given so far: keep
    what comes before it idempotent."""
    answers = _task_answers("interrupt()")
    if answers.position >= len(answers.answers):  # it will pause: what it asks is stored
        try:
            to_jsonable_python(value)
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            raise TypeError(f"interrupt() was asked a value that cannot be stored as JSON "
                            f"({str(exc).splitlines()[0]}): ask plain data, like "
                            "{'question': ..., 'draft': ...}.") from None
    return _next(answers, WaitingForEvent(f"{INTERRUPT_EVENT}{answers.position}", value))


def wait_for(event: str) -> Any:
    """The value delivered for `event`; pauses the run until it is delivered.

    On resume the node runs again from its start and each `wait_for` returns, in order, the
    values delivered so far; only the first unanswered one pauses it. Everything the node does
    before its last wait therefore runs again on each resume: keep it idempotent.
    """
    return _next(_task_answers("wait_for()"), WaitingForEvent(event))


def _task_answers(call: str) -> TaskAnswers:
    answers = current_answers.get()
    if answers is None:
        raise RuntimeError(f"{call} can only be called inside a running node.")
    return answers


def _next(answers: TaskAnswers, pause: WaitingForEvent) -> Any:
    """The next answer given to the task, in order; `pause` when there is none yet."""
    if answers.position < len(answers.answers):
        answer = answers.answers[answers.position]
        answers.position += 1
        return answer
    raise pause
