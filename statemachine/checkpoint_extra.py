"""A checkpoint's `extra` data, typed: what a run stores about a checkpoint besides its writes
and next tasks, with one encode and one decode. Storage keeps it as opaque JSON text.

Keys a newer version may add are kept as they are (`other`), so reading and rewriting a
checkpoint's extra data never drops what this version does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from checkpoints.base import CheckpointRecord
from checkpoints.rows import damaged

from .waiting import INTERRUPT_EVENT, Interrupt

PauseKind = Literal["before", "after", "wait"]
TaskKey = tuple[str, int]


class Question(NamedTuple):
    """What a paused task waits for, as callers see it (`Interrupt`)."""

    id: str
    node: str
    task_index: int
    event: str
    value: Any
    """What `interrupt` asked, or {"wait_for": event}."""
    position: int
    """Where its answer goes among the task's answers."""

    def shown(self) -> Interrupt:
        """As `Snapshot.interrupts` and the stream show it."""
        waits_for = None if self.event.startswith(INTERRUPT_EVENT) else self.event
        return Interrupt(self.id, self.node, self.value, waits_for)


@dataclass(slots=True)
class CheckpointExtra:
    attempts: dict[str, int] = field(default_factory=dict)
    """Nodes of the step that needed more than one attempt, with their attempts."""
    cache_hits: list[str] = field(default_factory=list)
    """Nodes of the step whose result came from the cache."""
    compensates: tuple[int, str, int] | None = None
    """On a compensation checkpoint: the task it undid (step, node, index)."""
    undo_failed: tuple[int, str, int] | None = None
    """On a checkpoint where a rollback stopped: the task whose compensation failed (its error
    is the checkpoint's error)."""
    carried: list[list[Any]] = field(default_factory=list)
    """[node, index, update] of finished tasks carried onto this checkpoint by update_state or
    by a resume (the step still runs its other tasks)."""
    carried_meta: dict[TaskKey, dict[str, Any]] = field(default_factory=dict)
    """What those tasks decided besides their update, as their pending writes kept it
    (`Command` targets, attempts, a cache hit)."""
    origin: str | None = None
    """Set by update_state: the checkpoint the due tasks were scheduled at (their ids)."""
    joins: dict[int, set[str]] = field(default_factory=dict)
    """Progress of the graph's joins: join index -> sources seen."""
    interrupt: PauseKind | None = None
    """Why the run paused here: before the next tasks, after this step, waiting for events."""
    failed: list[str] = field(default_factory=list)
    """On a checkpoint marked failed: the nodes whose tasks raised (none when a router, a merge
    or the step limit failed the step: the error names those)."""
    waiting: list[tuple[str, int, str]] = field(default_factory=list)
    """Tasks waiting in `wait_for`: (node, index, event)."""
    answers: dict[TaskKey, list[Any]] = field(default_factory=dict)
    """Events delivered to the due tasks, in order."""
    questions: list[Question] = field(default_factory=list)
    """What the paused tasks wait for. Kept on the checkpoint delivering the answers, so a
    wrong answer can be replaced."""
    other: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept as they are."""

    def encode(self) -> str | None:
        """The JSON text to store; None when there is nothing to say."""
        out: dict[str, Any] = {}
        if self.attempts:
            out["attempts"] = self.attempts
        if self.cache_hits:
            out["cache_hits"] = self.cache_hits
        if self.compensates is not None:
            out["compensates"] = list(self.compensates)
        if self.undo_failed is not None:
            out["undo_failed"] = list(self.undo_failed)
        if self.carried:
            out["carried"] = self.carried
        if self.carried_meta:
            out["carried_meta"] = {f"{n}|{i}": m for (n, i), m in self.carried_meta.items()}
        if self.origin is not None:
            out["origin"] = self.origin
        joins = {str(k): sorted(v) for k, v in self.joins.items() if v}
        if joins:
            out["joins"] = joins
        if self.interrupt is not None:
            out["interrupt"] = self.interrupt
        if self.failed:
            out["failed"] = self.failed
        if self.waiting:
            out["waiting"] = [list(w) for w in self.waiting]
        if self.answers:
            out["answers"] = {f"{n}|{i}": v for (n, i), v in self.answers.items()}
        if self.questions:
            out["questions"] = [list(q) for q in self.questions]
        out.update(self.other)
        return json.dumps(out) if out else None

    def metadata(self) -> dict[str, Any]:
        """What `Snapshot.metadata` shows of it."""
        shown: dict[str, Any] = {}
        if self.attempts:
            shown["attempts"] = self.attempts
        if self.cache_hits:
            shown["cache_hits"] = self.cache_hits
        if self.compensates is not None:
            shown["compensates"] = list(self.compensates)
        if self.undo_failed is not None:
            shown["undo_failed"] = list(self.undo_failed)
        if self.failed:
            shown["failed_nodes"] = list(self.failed)
        if self.waiting:
            shown["waits_for"] = [event for _, _, event in self.waiting]
        return shown

    def copy(self, **changes: Any) -> CheckpointExtra:
        return replace(self, **changes)


def decode_extra(text: str | None) -> CheckpointExtra:
    """The typed form of stored extra JSON; ValueError (or a KeyError, TypeError) if it is
    not what a run stores."""
    if not text:
        return CheckpointExtra()
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    extra = CheckpointExtra()
    for key, value in raw.items():
        if key == "attempts":
            extra.attempts = {str(k): int(v) for k, v in value.items()}
        elif key == "cache_hits":
            extra.cache_hits = [str(n) for n in value]
        elif key == "compensates":
            step, node, index = value
            extra.compensates = (int(step), str(node), int(index))
        elif key == "undo_failed":
            step, node, index = value
            extra.undo_failed = (int(step), str(node), int(index))
        elif key == "carried":
            extra.carried = [list(w) for w in value]
        elif key == "carried_meta":
            extra.carried_meta = {_task_key(task): dict(meta) for task, meta in value.items()}
        elif key == "origin":
            extra.origin = str(value)
        elif key == "joins":
            extra.joins = {int(k): set(v) for k, v in value.items()}
        elif key == "interrupt":
            if value in ("before", "after", "wait"):
                extra.interrupt = value
            else:  # a kind of pause a newer version knows: kept as it is
                extra.other[key] = value
        elif key == "failed":
            extra.failed = [str(n) for n in value]
        elif key == "waiting":
            extra.waiting = [(str(n), int(i), str(e)) for n, i, e in value]
        elif key == "questions":
            extra.questions = [Question(str(i), str(n), int(x), str(e), v, int(p))
                               for i, n, x, e, v, p in value]
        elif key == "answers":
            extra.answers = {_task_key(task): list(values) for task, values in value.items()}
        else:
            extra.other[key] = value
    return extra


def _task_key(text: str) -> TaskKey:
    """A task's key as stored: "node|index"."""
    node, _, index = text.rpartition("|")
    return node, int(index)


def extra_of(record: CheckpointRecord) -> CheckpointExtra:
    """`record`'s extra data, typed; a `CheckpointError` naming it if it is damaged."""
    try:
        return decode_extra(record.extra)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise damaged(None, record.thread_id, record.id,
                      f"its extra data is not what a run stores ({exc})") from None
