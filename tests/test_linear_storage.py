"""Storage grows with what was written, for every shape a thread takes; reads stay bounded.

The byte counts are deterministic (same inputs, same SQLite pages), so they are asserted here;
the speeds are measured in benchmarks/ (`python -m benchmarks --only chat,big-append`).
Also here: the fold that rebuilds a state from many steps (`StateSchema.replay`) against
applying the steps one by one, the in-process state cache against storage, and a file
written by the engine before snapshots followed the thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import shutil
import sqlite3
import time
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, Send, StateGraph, ThreadStateError, reducers
from statemachine.snapshots import GROWTH
from statemachine.state import StateSchema

DATA = Path(__file__).parent / "data"


class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    turns: int = 0


def chat_graph(reply_size: int = 1000) -> StateGraph:
    def reply(state: Chat) -> dict:
        return {"messages": [f"{len(state.messages):05d}" + "r" * (reply_size - 5)]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def message(turn: int, size: int = 1000) -> dict:
    return {"messages": [f"{turn:05d}" + "u" * (size - 5)]}


def file_bytes(path: Path) -> int:
    """The database with whatever the checkpointer left beside it (it folds the WAL on close)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def chat_file(tmp_path: Path, turns: int) -> int:
    path = tmp_path / f"chat-{turns}.db"
    with SQLiteCheckpointer(path) as saver:
        app = chat_graph().compile(checkpointer=saver)
        for turn in range(turns):
            app.invoke(message(turn), thread_id="chat")
        assert len(app.get_state("chat").state.messages) == 2 * turns
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return file_bytes(path)


def snapshot_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT coalesce(sum(length(snapshot)), 0) FROM checkpoints"
                            ).fetchone()[0]


# -- how storage grows --------------------------------------------------------------------------

def test_a_chat_thread_grows_linearly_and_400_turns_fit_in_2_mb(tmp_path):
    """400 invokes on one thread, 1 KB in and 1 KB out each: 323 MB before snapshots followed
    the thread (every run stored the state twice), now about 1.2 MB for 800 KB of state."""
    sizes = {turns: chat_file(tmp_path, turns) for turns in (100, 200, 400, 800)}
    assert sizes[400] <= 2_000_000, sizes
    xs, ys = [math.log(t) for t in sizes], [math.log(b) for b in sizes.values()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)
    assert exponent <= 1.1, (exponent, sizes)


def test_appending_large_values_stores_each_once(tmp_path):
    """Five steps that each append 2 MB through a reducer: the writes hold them, and no
    snapshot copies them again (10 MB steps made a 170 MB file and a 50 MB WAL before)."""

    class Blobs(BaseModel):
        chunks: Annotated[list[str], operator.add] = []

    g = StateGraph(Blobs)
    names = [f"n{i}" for i in range(5)]
    for i, name in enumerate(names):
        g.add_node(name, lambda s, i=i: {"chunks": [chr(ord("a") + i) * 2_000_000]})
    g.add_edge(START, names[0])
    for a, b in pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    path = tmp_path / "big.db"
    with SQLiteCheckpointer(path) as saver:
        final = g.compile(checkpointer=saver).invoke({}, thread_id="big")
        assert [c[0] for c in final.chunks] == list("abcde")
    assert not Path(f"{path}-wal").exists()
    assert file_bytes(path) <= 1.5 * 10_000_000, file_bytes(path)


def test_edits_forks_and_fan_outs_do_not_copy_the_state_each_time(tmp_path):
    """update_state, forks from one checkpoint, and Send fan-outs on a thread whose state is
    large: each adds what it wrote, not another copy of the state."""

    def fan(state: Chat) -> list[Send]:
        return [Send("part", {"messages": [f"part {i}"]}) for i in range(4)]

    g = StateGraph(Chat)
    g.add_node("reply", lambda s: {"turns": s.turns + 1})
    g.add_node("part", lambda s: {"messages": [s["messages"][-1] + " done"]})
    g.add_edge(START, "reply")
    g.add_conditional_edges("reply", fan, ["part"])
    g.add_edge("part", END)
    path = tmp_path / "shapes.db"
    big = {"messages": [f"{i:05d}" + "x" * 995 for i in range(300)]}  # ~300 KB of state
    with SQLiteCheckpointer(path) as saver:
        app = g.compile(checkpointer=saver)
        app.invoke(big, thread_id="t")
        for turn in range(30):
            app.invoke(message(turn, 100), thread_id="t")
        for turn in range(30):
            app.update_state("t", message(turn, 100), as_node="part")
        fork_from = app.history("t")[-1].checkpoint_id
        for _ in range(30):
            app.invoke(None, thread_id="t", checkpoint_id=fork_from)
        state = app.get_state("t").state
        state_json = len(state.model_dump_json())
    # each of the 90 edits, forks and turns copying the state would be 90 x 300 KB = 27 MB
    assert snapshot_bytes(path) <= (1 + GROWTH) / GROWTH * state_json + 4 * 300_000
    assert file_bytes(path) <= 3_000_000, file_bytes(path)


# -- replaying many steps in one fold --------------------------------------------------------------

class Mixed(BaseModel):
    log: Annotated[list[str], operator.add] = []
    text: Annotated[str, operator.add] = ""
    tags: Annotated[list[int], reducers.append] = []
    maybe: Annotated[list[int] | None, reducers.append] = None
    best: Annotated[int, max] = 0
    n: int = 0
    label: str = ""


MIXED = StateSchema(Mixed)

updates = st.fixed_dictionaries({}, optional={
    "log": st.lists(st.text(max_size=3), max_size=3),
    "text": st.text(max_size=4),
    "tags": st.lists(st.integers(-5, 5), max_size=3),
    "maybe": st.none() | st.lists(st.integers(0, 3), max_size=2),
    "best": st.integers(-10, 10),
})
overwrites = st.fixed_dictionaries(
    {}, optional={"n": st.integers(0, 9), "label": st.text(max_size=3)})


@st.composite
def steps(draw: Any) -> list[list[tuple[str, dict[str, Any]]]]:
    """Steps of one to three writers; a field without a reducer has one writer a step."""
    result = []
    for _ in range(draw(st.integers(0, 12))):
        writers = draw(st.integers(1, 3))
        step = [(f"w{i}", dict(draw(updates))) for i in range(writers)]
        step[draw(st.integers(0, writers - 1))][1].update(draw(overwrites))
        result.append(step)
    return result


@settings(max_examples=150, deadline=None)
@given(start=st.builds(Mixed, log=st.lists(st.text(max_size=2), max_size=2),
                       text=st.text(max_size=3), maybe=st.none() | st.just([1])),
       steps=steps())
def test_replaying_steps_in_one_fold_equals_applying_them_one_by_one(start, steps):
    before = start.model_dump()
    one_by_one = start
    for step in steps:
        one_by_one = MIXED.apply(one_by_one, step)
    folded = MIXED.replay(start, steps)
    assert folded.model_dump() == one_by_one.model_dump()
    assert start.model_dump() == before  # the fold grows its own copies, never the input's


# -- the state cache against storage ---------------------------------------------------------------

def test_changing_a_returned_state_in_place_never_reaches_the_thread(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = chat_graph(10).compile(checkpointer=saver)
        result = app.invoke(message(0, 10), thread_id="t")
        result.messages.append("not from any node")  # a caller's own change
        app.get_state("t").state.messages.clear()
        second = app.invoke(message(1, 10), thread_id="t")
        assert "not from any node" not in second.messages and len(second.messages) == 4
        assert app.get_state("t").state == second
    with SQLiteCheckpointer(path) as saver:  # what another process reads
        assert chat_graph(10).compile(checkpointer=saver).get_state("t").state == second


def test_a_thread_moved_on_by_another_process_is_read_from_storage(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as mine, SQLiteCheckpointer(path) as theirs:
        app, other = (chat_graph(10).compile(checkpointer=c) for c in (mine, theirs))
        app.invoke(message(0, 10), thread_id="t")
        other.invoke(message(1, 10), thread_id="t")
        assert len(app.get_state("t").state.messages) == 4
        assert len(app.invoke(message(2, 10), thread_id="t").messages) == 6
        # ...and deleted and begun again, its new first checkpoint taking a freed row id
        with sqlite3.connect(path) as conn:
            head = conn.execute("SELECT max(id) FROM checkpoints").fetchone()[0]
            conn.execute("DELETE FROM checkpoints")
        other.invoke({"messages": ["fresh"]}, thread_id="t")
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT max(id) FROM checkpoints").fetchone()[0] <= head
        assert app.get_state("t").state.messages[0] == "fresh"


def counting_loads(saver: Any) -> list[str]:
    """The thread ids `saver.load` is called with from now on (the real load runs)."""
    calls: list[str] = []
    load = saver.load

    async def counted(thread_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(thread_id)
        return await load(thread_id, *args, **kwargs)

    saver.load = counted
    return calls


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_chats_next_turn_starts_from_the_cached_head_without_reading_it(kind, tmp_path,
                                                                           request):
    """Taking the thread reads the head's identity in the same statement: a turn after one
    this process finished starts from the cached state and reads no checkpoint back; what
    it commits is what a cold reader (another checkpointer) rebuilds."""
    from conftest import make_checkpointer

    saver = make_checkpointer(kind, tmp_path, request)
    with saver:
        loads = counting_loads(saver)
        app = chat_graph(10).compile(checkpointer=saver)
        for turn in range(6):
            app.invoke(message(turn, 10), thread_id="t")
        # none: the lease said the new thread had no checkpoint, then each turn found the
        # head this process left
        assert loads == []
        assert asyncio.run(app.ainvoke(message(6, 10), thread_id="t")).messages[-2:] == [
            message(6, 10)["messages"][0], "00013" + "r" * 5]
        assert loads == []
        last = app.get_state("t")
    cold = make_checkpointer(kind, tmp_path, request) if kind == "sqlite" else None
    if cold is not None:
        with cold:
            snapshot = chat_graph(10).compile(checkpointer=cold).get_state("t")
            assert snapshot.state == last.state and len(snapshot.state.messages) == 14
            assert snapshot.checkpoint_id == last.checkpoint_id


def test_a_head_changed_elsewhere_is_read_back_before_the_next_turn(tmp_path):
    """The cached head is used only while it is the thread's head as this process left it:
    a turn run by another process, a mark on the head (here a pause, made by hand) or a new
    thread in its place is read from storage, and the run acts on what it reads."""
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as mine, SQLiteCheckpointer(path) as theirs:
        loads = counting_loads(mine)
        app, other = (chat_graph(10).compile(checkpointer=c) for c in (mine, theirs))
        app.invoke(message(0, 10), thread_id="t")
        other.invoke(message(1, 10), thread_id="t")
        assert len(app.invoke(message(2, 10), thread_id="t").messages) == 6
        assert loads == ["t"]  # the other's turn moved the head (the first turn read none)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE checkpoints SET status = 'interrupted', marked_at = 1 "
                         "WHERE id = (SELECT max(id) FROM checkpoints)")
        with pytest.raises(ThreadStateError, match="is paused"):
            app.invoke(message(3, 10), thread_id="t")
        assert loads == ["t", "t"]
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE checkpoints SET status = 'done'")
        assert len(app.invoke(message(3, 10), thread_id="t").messages) == 8
        other.delete_thread("t")
        assert app.invoke(message(9, 10), thread_id="t").messages[0] == message(9, 10)[
            "messages"][0]
        assert len(app.get_state("t").state.messages) == 2


def test_a_head_committed_while_the_lease_waits_is_read_not_dropped(tmp_path):
    """SQLite: a transaction giving the thread up and moving its head on together (an edit
    made by hand) holds the file's write lock when our turn takes the thread; the lease
    waits, then reads the head as it is after the wait, and the turn builds on the edit."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = chat_graph(10).compile(checkpointer=saver)
        app.invoke(message(0, 10), thread_id="t")  # this process caches its head
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE threads SET owner = NULL WHERE thread_id = 't'")
        conn.execute(
            "INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, extra, "
            "created_at) SELECT thread, id, step, 'update', 'done', '[]', "
            """'[["__update__",0,{"messages":["edited"]}]]', '{"origin": "' || id || '"}', """
            "created_at + 1 FROM checkpoints ORDER BY id DESC LIMIT 1")
        with ThreadPoolExecutor(1) as pool:
            turn = pool.submit(app.invoke, message(1, 10), thread_id="t")
            time.sleep(0.3)  # the turn waits for the write lock meanwhile
            assert not turn.done()
            conn.execute("COMMIT")
            conn.close()
            final = turn.result(timeout=10)
        assert final.messages[:3] == [*message(0, 10)["messages"], "00001rrrrr", "edited"]
        assert len(final.messages) == 5
    with SQLiteCheckpointer(path) as cold:
        assert chat_graph(10).compile(checkpointer=cold).get_state("t").state == final


def test_a_checkpointer_whose_acquire_is_its_own_still_takes_every_run_through_it(tmp_path):
    """A subclass overriding `acquire` (to count, to check access) is called for every run:
    the lease that also reads the head is only taken where `acquire` is the store's own."""
    taken: list[str] = []

    class Counting(SQLiteCheckpointer):
        async def acquire(self, thread_id: str, owner: Any) -> str | None:
            taken.append(thread_id)
            return await super().acquire(thread_id, owner)

    with Counting(tmp_path / "runs.db") as saver:
        app = chat_graph(10).compile(checkpointer=saver)
        for turn in range(3):
            app.invoke(message(turn, 10), thread_id="t")
        assert taken == ["t", "t", "t"]
        assert len(app.get_state("t").state.messages) == 6


def test_every_checkpoint_reads_the_same_cold_warm_and_through_history(tmp_path):
    """States rebuilt by the one-fold replay (get_state), step by step (history), from the
    cache and by a fresh process agree, over a thread with interrupts and edits."""
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = chat_graph(50).compile(checkpointer=saver)
        for turn in range(60):
            app.invoke(message(turn, 50), thread_id="t")
            if turn % 7 == 0:
                app.update_state("t", {"turns": turn})
        warm = app.get_state("t").state
        history = {s.checkpoint_id: s.state for s in app.history("t")}
    with SQLiteCheckpointer(path) as saver:
        cold = chat_graph(50).compile(checkpointer=saver)
        assert cold.get_state("t").state == warm
        for checkpoint_id, state in history.items():
            assert cold.get_state("t", checkpoint_id).state == state


# -- files written before this storage ---------------------------------------------------------

def test_a_file_written_before_reads_and_runs(tmp_path):
    """tests/data/schema4_chat.db was written by the engine that stored a snapshot at every
    run's start and end (see make_schema4_fixture.py): every checkpoint reads as it did, and
    the thread goes on."""
    from data.make_schema4_fixture import graph

    path = tmp_path / "old.db"
    shutil.copy(DATA / "schema4_chat.db", path)
    expected = json.loads((DATA / "schema4_chat.json").read_text())
    with SQLiteCheckpointer(path) as saver:
        app = graph().compile(checkpointer=saver)
        for thread, states in expected.items():
            got = {s.checkpoint_id: s.state.model_dump() for s in app.history(thread)}
            assert got == states
            for checkpoint_id, state in states.items():
                assert app.get_state(thread, checkpoint_id).state.model_dump() == state
        before = app.get_state("chat").state
        after = app.invoke({"messages": ["one more"]}, thread_id="chat")
        assert after.messages[:len(before.messages)] == before.messages
        assert after.messages[len(before.messages):][:2] == ["one more", "reply to one more"]
    with SQLiteCheckpointer(path) as saver:
        assert graph().compile(checkpointer=saver).get_state("chat").state == after


# -- subgraph threads that start from their parent's checkpoint --------------------------------

class Log(BaseModel):
    log: Annotated[list[str], operator.add] = []
    note: str = ""


def sub_and_flaky(failures: dict[str, int]) -> StateGraph:
    """A subgraph `sub` (one node `c1`) beside `boom`, which fails `failures["boom"]` times;
    then `after`. The subgraph's thread starts from the parent's input checkpoint."""
    child = StateGraph(Log)
    child.add_node("c1", lambda s: {"log": ["c1"]})
    child.add_edge(START, "c1")
    child.add_edge("c1", END)

    def boom(state: Log) -> dict:
        if failures["boom"] > 0:
            failures["boom"] -= 1
            raise ConnectionError("boom")
        return {"log": ["boom"]}

    g = StateGraph(Log)
    g.add_node("sub", child.compile())
    g.add_node("boom", boom)
    g.add_node("after", lambda s: {"log": ["after"]})
    g.add_edge(START, "sub")
    g.add_edge(START, "boom")
    g.add_edge(["sub", "boom"], "after")
    g.add_edge("after", END)
    return g


def test_a_kept_subgraph_thread_keeps_the_parent_checkpoint_it_starts_from(tmp_path):
    """The subgraph thread is kept (an edit carries its origin), so the parent checkpoint its
    first checkpoint points to stays too, even when older than what was asked to keep."""
    for saver in (MemoryCheckpointer(), SQLiteCheckpointer(tmp_path / "runs.db")):
        app = sub_and_flaky({"boom": 1}).compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            app.invoke({"note": "x" * 2000}, thread_id="t")
        app.update_state("t", {"note": "fixed"})  # carries the failed step's origin
        app.invoke(None, thread_id="t")
        sub = next(t.thread_id for t in app.threads() if "::" in t.thread_id)
        assert app.get_state(sub).state.log == ["c1"]
        removed = app.prune("t", keep_last=len(app.history("t")) - 1)
        assert sub in removed.kept
        fresh = sub_and_flaky({"boom": 0}).compile(checkpointer=saver)  # nothing in memory
        assert fresh.get_state(sub).state.log == ["c1"]
        assert fresh.get_state("t").state.log == ["c1", "boom", "after"]
        saver.close()


def test_a_subgraph_thread_stores_no_copy_of_its_parents_state(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = sub_and_flaky({"boom": 0}).compile(checkpointer=saver)
        for turn in range(40):
            app.invoke({"note": f"{turn}" + "n" * 5000}, thread_id="t")
        subs = [t.thread_id for t in app.threads() if "::" in t.thread_id]
        assert len(subs) == 40
        assert app.get_state(subs[-1]).state.log[-1] == "c1"
    with sqlite3.connect(path) as conn:
        copies = conn.execute(
            "SELECT count(*) FROM checkpoints c JOIN threads t ON t.key = c.thread "
            "WHERE t.thread_id LIKE 't::%' AND c.snapshot IS NOT NULL").fetchone()[0]
    # 40 copies of a growing state before; now a subgraph thread stores a snapshot only when
    # its chain (which runs on into the parent's) is due one, like any checkpoint
    assert copies <= 3
    with SQLiteCheckpointer(path) as saver:  # a fresh process reads every subgraph thread
        fresh = sub_and_flaky({"boom": 0}).compile(checkpointer=saver)
        assert all(fresh.get_state(s).state.log[-1] == "c1" for s in subs)
        for sub in subs[:3]:  # its first checkpoint holds the parent's state, read from there
            newest, *_, first = [s.state.log for s in fresh.history(sub)]
            assert newest == [*first, "c1"] and len(first) % 3 == 0


def test_the_cache_counts_appended_state_against_its_limit(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = chat_graph().compile(checkpointer=saver)
        for turn in range(50):
            app.invoke(message(turn), thread_id="chat")
        entry = app._executor.states.take("chat", *(lambda s: (s.checkpoint_id, s.created_at))(
            app.get_state("chat")))
        assert entry is not None
        assert entry.size >= len(entry.state.model_dump_json()) * 0.9
