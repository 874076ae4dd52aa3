"""Async runs on SQLite commit small steps on the event loop's own thread (no thread hop),
and never make the loop wait: a file locked by another process, a large write and the
write-ahead log's folding all happen off the loop, and nothing is lost on the way."""

from __future__ import annotations

import asyncio
import operator
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer, SQLiteStore
from statemachine import END, START, RunContext, StateGraph


class Chat(BaseModel):
    turns: Annotated[list[str], operator.add] = []


class Count(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []


def counting(steps: int, *, text: str = "x", store: bool = False) -> StateGraph:
    async def work(state: Count, ctx: RunContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        if store:
            ctx.store.put(("runs", ctx.thread_id), f"n{state.n}", {"n": state.n})
        return {"n": state.n + 1, "log": [text]}

    g = StateGraph(Count)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "work" if s.n < steps else END, ["work", END])
    return g


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the file's write lock for `seconds` (started when this
    returns)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys, time
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        print("held", flush=True)
        time.sleep({seconds})
        conn.execute("COMMIT")
        """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


async def longest_pause(during: Any) -> tuple[Any, float]:
    """What `during` returns, and the longest the event loop went without running a
    ticker meanwhile (seconds)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        result = await during
    finally:
        done.set()
        await ticker
    return result, max(gaps, default=0.0)


def test_an_async_run_waits_for_a_locked_file_without_holding_up_the_loop(tmp_path):
    path = tmp_path / "runs.db"
    app_saver = SQLiteCheckpointer(path)
    app = counting(40).compile(checkpointer=app_saver)

    async def main() -> tuple[Any, float]:
        await app.ainvoke({}, thread_id="warm", max_steps=100)  # the file and tables exist
        child = hold_write_lock(path, 1.2)
        try:
            started = time.perf_counter()
            outcome = await longest_pause(app.ainvoke({}, thread_id="t", max_steps=100))
            waited = time.perf_counter() - started
        finally:
            child.wait(10)
        await app_saver.aclose()
        return outcome, waited

    (final, pause), waited = asyncio.run(main())
    assert final.n == 40 and final.log == ["x"] * 40
    assert waited >= 0.6  # it did wait for the lock...
    assert pause < 0.5  # ...in a thread: the loop kept running its other tasks (a blocked
    # loop would pause for the lock's 1.2 s; the margin is for a loaded CI machine)
    with SQLiteCheckpointer(path, read_only=True) as reader:
        app = counting(40).compile(checkpointer=reader)
        assert len(app.history("t")) == 41  # the input step and 40 steps


def test_memory_committed_with_a_step_waits_for_a_locked_file_off_the_loop(tmp_path):
    path = tmp_path / "runs.db"
    saver, store = SQLiteCheckpointer(path), SQLiteStore(path)
    app = counting(20, store=True).compile(checkpointer=saver, store=store)

    async def main() -> float:
        await app.ainvoke({}, thread_id="warm", max_steps=100)
        child = hold_write_lock(path, 1.2)
        try:
            _, pause = await longest_pause(app.ainvoke({}, thread_id="t", max_steps=100))
        finally:
            child.wait(10)
        await saver.aclose()
        return pause

    assert asyncio.run(main()) < 0.5  # blocked, the loop would pause the lock's 1.2 s
    keys = sorted(item.key for item in store.search(("runs", "t"), limit=100))
    assert keys == sorted(f"n{i}" for i in range(20))  # each memory once, none lost
    store.close()


def test_small_commits_run_on_the_loop_and_large_ones_in_a_thread(tmp_path):
    """A step's commit is on the loop's thread unless its writes are large (64 KiB)."""
    saver = SQLiteCheckpointer(tmp_path / "runs.db")
    threads: dict[str, set[int]] = {"small": set(), "large": set()}
    on_loop = saver._on_loop
    assert on_loop is not None

    def trace(statement: str) -> None:
        if statement.startswith("INSERT INTO checkpoints"):
            size = "large" if len(statement) > 64 * 1024 else "small"
            threads[size].add(threading.get_ident())

    on_loop._conn.set_trace_callback(trace)
    big = "y" * (70 * 1024)

    async def main() -> int:
        await counting(3).compile(checkpointer=saver).ainvoke({}, thread_id="small")
        await counting(2, text=big).compile(checkpointer=saver).ainvoke({}, thread_id="big")
        await saver.aclose()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads["small"] == {loop_thread}
    assert threads["large"] == set()  # never on the loop's connection
    with SQLiteCheckpointer(tmp_path / "runs.db", read_only=True) as reader:
        state = counting(2, text=big).compile(checkpointer=reader).get_state("big").state
        assert state.log == [big, big]


def test_the_write_ahead_log_stays_small_through_a_long_async_run(tmp_path):
    """The loop's connection folds no log itself; a thread does, every few hundred commits."""
    path = tmp_path / "runs.db"
    saver = SQLiteCheckpointer(path)
    app = counting(3_000).compile(checkpointer=saver)
    wal = Path(f"{path}-wal")

    async def main() -> int:
        await app.ainvoke({}, thread_id="t", max_steps=4_000)
        size = wal.stat().st_size
        await saver.aclose()
        return size

    size = asyncio.run(main())
    # unfolded, 3,000 commits of ~2 pages would leave a log of ~25 MB
    assert size < 6 * 1024 * 1024, size


def test_many_async_conversations_in_two_processes_on_one_file_lose_nothing(tmp_path):
    """Two processes, each 50 conversations at once via asyncio.gather: every turn of every
    conversation is committed once, and no run fails with 'database is locked'."""
    path = tmp_path / "chat.db"
    SQLiteCheckpointer(path).close()
    script = textwrap.dedent(f"""
        import asyncio, operator, random, sys
        from typing import Annotated
        from pydantic import BaseModel
        from checkpoints import SQLiteCheckpointer
        from statemachine import END, START, StateGraph

        class Chat(BaseModel):
            turns: Annotated[list[str], operator.add] = []

        async def reply(state):
            await asyncio.sleep(random.uniform(0.001, 0.01))
            return {{"turns": [f"answer {{len(state.turns)}}"]}}

        g = StateGraph(Chat)
        g.add_node("reply", reply)
        g.add_edge(START, "reply")
        g.add_edge("reply", END)

        async def main(who):
            saver = SQLiteCheckpointer({str(path)!r})
            app = g.compile(checkpointer=saver)

            async def talk(i):
                for turn in range(10):
                    await app.ainvoke({{"turns": [f"question {{turn}}"]}},
                                      thread_id=f"{{who}}/{{i}}")

            await asyncio.gather(*(talk(i) for i in range(50)))
            await saver.aclose()

        asyncio.run(main(sys.argv[1]))
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", script, who], env=env,
                                 stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM threads").fetchone()[0] == 100
    finally:
        conn.close()
    with SQLiteCheckpointer(path, read_only=True) as reader:
        g = StateGraph(Chat)
        g.add_node("reply", lambda s: {})
        g.add_edge(START, "reply")
        g.add_edge("reply", END)
        app = g.compile(checkpointer=reader)
        for who in ("a", "b"):
            for i in range(50):
                turns = app.get_state(f"{who}/{i}").state.turns
                assert turns == [t for n in range(10) for t in (f"question {n}",
                                                                f"answer {2 * n + 1}")]


def test_synchronous_full_fsyncs_every_commit_and_runs_the_same(tmp_path):
    saver = SQLiteCheckpointer(tmp_path / "safe.db", synchronous="full")
    assert repr(saver) == f"SQLiteCheckpointer({str(tmp_path / 'safe.db')!r}, synchronous='full')"
    assert saver._direct.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert saver._on_loop is None  # an fsync never runs on the event loop

    async def main() -> Any:
        final = await counting(5).compile(checkpointer=saver).ainvoke({}, thread_id="t")
        await saver.aclose()
        return final

    assert asyncio.run(main()).n == 5
    with pytest.raises(ValueError, match="synchronous must be 'normal' or 'full', not 'off'"):
        SQLiteCheckpointer(tmp_path / "x.db", synchronous="off")  # type: ignore[arg-type]


def test_async_reads_run_on_the_loop_and_never_wait_for_a_writer(tmp_path):
    """A read through the async API is done on the loop's own connection (a thread hop costs
    more than the read) and, in WAL mode, never waits for another process's write lock."""
    path = tmp_path / "runs.db"
    saver = SQLiteCheckpointer(path)
    app = counting(5).compile(checkpointer=saver)
    on_loop = saver._on_loop
    assert on_loop is not None
    reads: list[int] = []
    on_loop._conn.set_trace_callback(
        lambda sql: reads.append(threading.get_ident()) if sql.lstrip().startswith(
            ("SELECT", "WITH")) else None)

    async def main() -> tuple[Any, float, int]:
        await app.ainvoke({}, thread_id="t")
        child = hold_write_lock(path, 1.0)
        try:
            started = time.perf_counter()
            snapshot = await app.aget_state("t")
            took = time.perf_counter() - started
        finally:
            child.wait(10)
        await saver.aclose()
        return snapshot, took, threading.get_ident()

    snapshot, took, loop_thread = asyncio.run(main())
    assert snapshot.state.n == 5 and snapshot.status == "done"
    assert took < 0.5  # the writer's lock (held 1 s) is not waited for
    assert reads and set(reads) == {loop_thread}
