"""A property over whole thread lives, on every store: whatever sequence of turns, failures and
resumes, edits, forks and prunes a thread goes through, every checkpoint still kept reads the
state a plain model of the same history says (from the process that ran it and from a fresh
one), and the store grows linearly with what was written.

The model is independent of the engine: a list of messages per checkpoint, worked out from
what each operation means (a turn appends the input and a reply, an edit appends its text, a
fork starts from the state it forks, a prune removes only checkpoints older than those kept).
"""

from __future__ import annotations

import operator
import uuid
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import STORES, postgres_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, StateGraph, ThreadNotFoundError

PAD = "x" * 300
"""Every message carries this much, so bytes written dominate fixed per-row costs."""


class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []


class Arm:
    """When armed, the next reply fails once (an injected failure)."""

    armed = False


def chat_graph(arm: Arm) -> StateGraph:
    def reply(state: Chat) -> dict:
        if arm.armed:
            arm.armed = False
            raise ConnectionError("injected failure")
        return {"messages": [reply_to(state.messages[-1])]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def reply_to(text: str) -> str:
    return "re:" + text[:12] + PAD


operations = st.lists(st.one_of(
    st.tuples(st.just("turn"), st.text("abc", min_size=1, max_size=5)),
    st.tuples(st.just("fail"), st.text("abc", min_size=1, max_size=5)),
    st.tuples(st.just("resume"), st.just("")),
    st.tuples(st.just("edit"), st.text("def", min_size=1, max_size=5)),
    st.tuples(st.just("fork"), st.integers(0, 50)),
    st.tuples(st.just("prune"), st.integers(1, 6)),
), min_size=1, max_size=14)


def open_store(kind: str, tmp_path: Path, dsn: str | None) -> tuple[Any, Any]:
    """(a checkpointer on a new store, a function opening another one on the same store)."""
    if kind == "memory":
        saver = MemoryCheckpointer()
        return saver, lambda: saver
    if kind == "sqlite":
        path = tmp_path / f"{uuid.uuid4().hex}.db"
        return SQLiteCheckpointer(path), lambda: SQLiteCheckpointer(path)
    from checkpoints import PostgresCheckpointer

    schema = postgres_schema()
    return (PostgresCheckpointer(dsn, schema=schema),
            lambda: PostgresCheckpointer(dsn, schema=schema))


class Model:
    """The expected messages at every checkpoint made, by id, and which are still kept."""

    def __init__(self) -> None:
        self.states: dict[str, list[str]] = {}
        self.order: list[str] = []  # ids in the order they were made
        self.kept: set[str] = set()
        self.written = 0  # bytes of message text the history wrote

    def made(self, checkpoint_id: str, messages: list[str]) -> None:
        assert checkpoint_id not in self.states, "an id was given twice"
        self.states[checkpoint_id] = messages
        self.order.append(checkpoint_id)
        self.kept.add(checkpoint_id)


@pytest.mark.parametrize("kind", STORES)
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations)
def test_every_kept_checkpoint_reads_what_the_history_says(kind, ops, tmp_path, request):
    dsn = request.getfixturevalue("postgres_dsn") if kind == "postgres" else None
    saver, reopen = open_store(kind, tmp_path, dsn)
    arm = Arm()
    app = chat_graph(arm).compile(checkpointer=saver)
    model, thread = Model(), "t"
    try:
        for op, arg in ops:
            apply(app, model, thread, arm, op, arg)
            check(app, model, thread)
        fresh = reopen()
        try:
            check(chat_graph(arm).compile(checkpointer=fresh), model, thread)
        finally:
            if fresh is not saver:
                fresh.close()
        if kind == "sqlite":
            saver.close()
            path = saver.path
            size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
            # linear in what was written: a bounded multiple of the text, plus a row's worth
            # of fixed costs per checkpoint, plus an empty database's pages
            assert size <= 8 * model.written + 600 * len(model.order) + 200_000, \
                (size, model.written, len(model.order))
    finally:
        saver.close()


def head(app: Any, thread: str) -> Any | None:
    try:
        return app.history(thread, limit=1)[0]
    except ThreadNotFoundError:
        return None


def newest(app: Any, thread: str, count: int) -> list[Any]:
    """The `count` checkpoints made last, oldest first."""
    return list(reversed(app.history(thread, limit=count)))


def apply(app: Any, model: Model, thread: str, arm: Arm, op: str, arg: Any) -> None:
    last = head(app, thread)
    state = model.states[last.checkpoint_id] if last is not None else []
    if op in ("turn", "fail") and (last is None or last.status == "done"):
        text = arg + PAD
        model.written += len(text) + len(reply_to(text))
        if op == "fail":
            arm.armed = True
            with pytest.raises(ConnectionError):
                app.invoke({"messages": [text]}, thread_id=thread)
            [made] = newest(app, thread, 1)
            assert made.status == "failed"
            model.made(made.checkpoint_id, [*state, text])
            return
        app.invoke({"messages": [text]}, thread_id=thread)
        given_input, replied = newest(app, thread, 2)
        model.made(given_input.checkpoint_id, [*state, text])
        model.made(replied.checkpoint_id, [*state, text, reply_to(text)])
    elif op == "resume" and last is not None and last.status == "failed":
        app.resume(thread)
        # the failed checkpoint stays as it was: the resume continues on one of its own
        continued, made = newest(app, thread, 2)
        assert (continued.kind, continued.status, continued.parent_id) == \
            ("resume", "running", last.checkpoint_id)
        assert app.get_state(thread, last.checkpoint_id).status == "failed"
        model.made(continued.checkpoint_id, list(state))
        model.written += len(reply_to(state[-1]))
        model.made(made.checkpoint_id, [*state, reply_to(state[-1])])
    elif op == "edit" and last is not None:
        text = arg + PAD
        model.written += len(text)
        app.update_state(thread, {"messages": [text]})
        [made] = newest(app, thread, 1)
        model.made(made.checkpoint_id, [*state, text])
    elif op == "fork" and last is not None and (last.status == "done" or last.status == "failed"):
        kept = [c for c in model.order if c in model.kept]
        origin = kept[arg % len(kept)]
        base = model.states[origin]
        runs_reply = "reply" in app.get_state(thread, origin).next
        app.invoke(None, thread_id=thread, checkpoint_id=origin)
        made = newest(app, thread, 2 if runs_reply else 1)
        model.made(made[0].checkpoint_id, list(base))
        if runs_reply:
            model.written += len(reply_to(base[-1]))
            model.made(made[1].checkpoint_id, [*base, reply_to(base[-1])])
    elif op == "prune" and last is not None:
        removed = app.prune(thread_id=thread, keep_last=arg)
        remaining = {s.checkpoint_id for s in app.history(thread)}
        newest_ids = model.order[-arg:]
        assert set(newest_ids) <= remaining, "a checkpoint asked to be kept was removed"
        assert remaining <= model.kept, "a removed checkpoint came back"
        assert sum(removed.checkpoints.values()) == len(model.kept - remaining)
        model.kept = remaining


def check(app: Any, model: Model, thread: str) -> None:
    if not model.order:
        return
    history = {s.checkpoint_id: s.state.messages for s in app.history(thread)}
    assert set(history) == model.kept
    for checkpoint_id in model.kept:
        assert history[checkpoint_id] == model.states[checkpoint_id], checkpoint_id
        assert app.get_state(thread, checkpoint_id).state.messages == \
            model.states[checkpoint_id], checkpoint_id
    assert app.get_state(thread).state.messages == model.states[max(
        model.kept, key=model.order.index)]
