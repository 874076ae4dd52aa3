"""A run that finishes gives its thread up in the same commit as its last step (one commit a
chat turn fewer), on every store: the thread is free the moment `invoke` returns, a run that
lost its lease can neither commit nor release, and a stuck or failed run still releases."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from typing import Annotated

import pytest
from pydantic import BaseModel

from checkpoints.base import NewCheckpoint, Owner
from statemachine import END, START, StateGraph, ThreadBusyError


class Chat(BaseModel):
    turns: Annotated[list[str], operator.add] = []


def chat() -> StateGraph:
    g = StateGraph(Chat)
    g.add_node("reply", lambda s: {"turns": [f"answer {len(s.turns)}"]})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def owner_of(store, thread_id: str) -> str | None:
    return store.query("SELECT owner FROM threads WHERE thread_id = ?", thread_id)[0][0]


def test_a_finished_turn_leaves_its_thread_free_and_whole(store):
    saver = store.open()
    app = chat().compile(checkpointer=saver)
    for turn in range(3):
        app.invoke({"turns": [f"question {turn}"]}, thread_id="t")
        if store.kind != "memory":
            assert owner_of(store, "t") is None  # given up by the last commit itself
    state = app.get_state("t")
    assert state.status == "done"
    assert state.state.turns == ["question 0", "answer 1", "question 1", "answer 3",
                                 "question 2", "answer 5"]
    other = Owner.new()  # free: anyone takes it at once
    asyncio.run(saver.acquire("t", other))
    asyncio.run(saver.release("t", other))


def test_put_with_release_by_a_run_that_lost_the_thread_changes_nothing(store):
    saver = store.open()
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["hello"]}, thread_id="t")
    head = app.get_state("t").checkpoint_id
    holder, stale = Owner.new(), Owner.new()

    async def main() -> None:
        await saver.acquire("t", holder)
        with pytest.raises(ThreadBusyError):
            await saver.put("t", stale, NewCheckpoint(head, 9, "step", "done", "[]"),
                            release=True)
        # the holder still holds it, and can commit and release in one go
        await saver.put("t", holder, NewCheckpoint(head, 2, "step", "done", "[]"),
                        release=True)
        await saver.acquire("t", stale)  # free again
        await saver.release("t", stale)

    asyncio.run(main())
    assert len(app.history("t")) == 3  # input, reply, and the holder's one commit


def test_the_last_commit_and_the_release_are_one_sqlite_transaction(tmp_path):
    from checkpoints import SQLiteCheckpointer

    saver = SQLiteCheckpointer(tmp_path / "runs.db")
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["warm"]}, thread_id="t")
    statements: list[str] = []
    saver._direct.set_trace_callback(statements.append)
    app.invoke({"turns": ["hello"]}, thread_id="t")
    saver._direct.set_trace_callback(None)
    saver.close()
    writes = [s.split()[0] for s in statements if s.split()[0] in (
        "INSERT", "UPDATE", "BEGIN", "COMMIT", "DELETE")]
    # taking the lease and the input step, together (the head was the last turn's, whose
    # state this process kept); then the reply's step and the release, together
    assert writes == ["BEGIN", "INSERT", "INSERT", "COMMIT",
                      "BEGIN", "INSERT", "UPDATE", "COMMIT"], statements
    # the thread's graph came back from taking the lease: no read of its own
    assert "RETURNING coalesce(graph, '')" in statements[1]
    assert not [s for s in statements if s.startswith("SELECT") and "graph" in s], statements
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        assert conn.execute("SELECT owner FROM threads").fetchall() == [(None,)]


def failing_chat() -> StateGraph:
    def broken(state: Chat) -> dict:
        raise RuntimeError("model down")

    g = StateGraph(Chat)
    g.add_node("reply", broken)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def test_a_failed_run_still_gives_its_thread_up(store):
    app = failing_chat().compile(checkpointer=store.open())
    with pytest.raises(RuntimeError, match="model down"):
        app.invoke({"turns": ["hello"]}, thread_id="t")
    if store.kind != "memory":
        assert owner_of(store, "t") is None
    assert app.get_state("t").status == "failed"


def test_keep_last_trims_when_the_run_ends(store):
    from checkpoints import MemoryCheckpointer

    saver = MemoryCheckpointer(keep_last=2) if store.kind == "memory" else \
        store.open(keep_last=2)
    app = chat().compile(checkpointer=saver)
    for turn in range(4):
        app.invoke({"turns": [f"q{turn}"]}, thread_id="t")
    assert len(app.history("t")) == 2
    assert app.get_state("t").state.turns[-1] == "answer 7"


@pytest.mark.parametrize("keep_last", [None, 2])
def test_a_finished_run_does_not_release_again_and_a_failed_one_does(durable_store, keep_last):
    """The finished run's release is its last commit (with keep_last, its trim too): no
    second release call. A failed run's release is its own call."""
    saver = durable_store.open(keep_last=keep_last)
    released: list[str] = []
    real = saver.release

    async def recorded(thread_id: str, owner: Owner) -> None:
        released.append(thread_id)
        await real(thread_id, owner)

    saver.release = recorded
    app = chat().compile(checkpointer=saver)
    for turn in range(3):
        app.invoke({"turns": [f"q{turn}"]}, thread_id="t")
    assert released == []
    assert owner_of(durable_store, "t") is None
    if keep_last is not None:
        assert len(app.history("t")) == keep_last

    with pytest.raises(RuntimeError):
        failing_chat().compile(checkpointer=saver).invoke({"turns": ["q"]}, thread_id="f")
    assert released == ["f"]
