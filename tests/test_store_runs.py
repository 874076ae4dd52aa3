"""The store inside runs (`ctx.store`): a node's memory writes commit with its step, exactly
once: not when it fails, once when it is retried, once when it is killed mid-step and
resumed (real processes, killed at every point a hypothesis property picks), and a node
reads its own buffered writes."""

from __future__ import annotations

import contextlib
import operator
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from conftest import side_by_side
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, MemoryStore, SQLiteCheckpointer, SQLiteStore
from statemachine import (
    END,
    START,
    GraphValidationError,
    RetryPolicy,
    RunContext,
    StateGraph,
)

CHILD = Path(__file__).resolve().parent / "store_child.py"


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []


@pytest.fixture(params=["none", "memory", "sqlite", "postgres"])
def pair(request, tmp_path):
    """(checkpointer, store) as users pair them."""
    if request.param == "none":
        yield None, MemoryStore()
    elif request.param == "memory":
        yield MemoryCheckpointer(), MemoryStore()
    elif request.param == "sqlite":
        db = tmp_path / "runs.db"
        with SQLiteCheckpointer(db) as saver, SQLiteStore(db) as store:
            yield saver, store
    else:
        from conftest import postgres_schema

        from checkpoints import PostgresCheckpointer, PostgresStore

        dsn, schema = request.getfixturevalue("postgres_dsn"), postgres_schema()
        with PostgresCheckpointer(dsn, schema=schema) as saver, \
                PostgresStore(dsn, schema=schema) as store:
            assert saver.commits_memory_of(store)
            yield saver, store


def test_a_node_reads_its_own_writes_and_they_commit_with_the_step(pair):
    saver, store = pair
    seen = []

    def remember(state: S, ctx: RunContext) -> dict:
        ns = ("users", "u1", "memories")
        assert ctx.store.get(ns, "diet") is None
        ctx.store.put(ns, "diet", {"text": "vegetarian", "kind": "pref"})
        ctx.store.put(ns, "old", {"text": "gone soon", "kind": "pref"})
        ctx.store.delete(ns, "old")
        seen.append(ctx.store.get(ns, "diet").value["text"])
        seen.append([i.key for i in ctx.store.search(("users",), filter={"kind": "pref"})])
        seen.append(ctx.store.list_namespaces())
        assert store.get(ns, "diet") is None  # not in the store until the step commits
        return {"log": ["remembered"]}

    g = StateGraph(S)
    g.add_node("remember", remember)
    g.add_edge(START, "remember")
    g.add_edge("remember", END)
    app = g.compile(checkpointer=saver, store=store)
    app.invoke({}, thread_id="t")
    assert seen == ["vegetarian", ["diet"], [("users", "u1", "memories")]]
    assert store.get(("users", "u1", "memories"), "diet").value["text"] == "vegetarian"
    assert store.get(("users", "u1", "memories"), "old") is None


def test_failed_attempts_leave_nothing_and_a_retried_node_writes_once(pair):
    saver, store = pair
    attempts = []

    def flaky(state: S, ctx: RunContext) -> dict:
        attempts.append(1)
        ctx.store.put(("attempts",), f"try-{len(attempts)}", {"n": len(attempts)})
        if len(attempts) < 3:
            raise ConnectionError("model timed out")
        return {"log": ["ok"]}

    def broken(state: S, ctx: RunContext) -> dict:
        ctx.store.put(("broken",), "k", {"n": 1})
        raise ValueError("no")

    g = StateGraph(S)
    g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0))
    g.add_node("broken", broken)
    g.add_edge(START, "flaky")
    g.add_edge("flaky", "broken")
    g.add_edge("broken", END)
    app = g.compile(checkpointer=saver, store=store)
    with pytest.raises(ValueError, match="no"):
        app.invoke({}, thread_id="t")
    assert [i.key for i in store.search(("attempts",))] == ["try-3"]
    assert store.search(("broken",)) == []


def test_a_finished_parallel_task_keeps_its_memory_and_is_not_run_again(tmp_path):
    db = tmp_path / "runs.db"
    fail = {"right": True}
    runs: list[str] = []

    def task(name: str):
        def node(state: S, ctx: RunContext) -> dict:
            runs.append(name)
            ctx.store.put(("done",), name, {"by": name})
            if fail.get(name):
                raise ConnectionError(f"{name} failed")
            return {"log": [name]}
        return node

    g = StateGraph(S)
    g.add_node("left", task("left"))
    g.add_node("right", task("right"))
    g.add_edge(START, "left")
    g.add_edge(START, "right")
    g.add_edge("left", END)
    g.add_edge("right", END)
    with SQLiteCheckpointer(db) as saver, SQLiteStore(db) as store:
        app = g.compile(checkpointer=saver, store=store)
        with pytest.raises(ConnectionError):
            app.invoke({}, thread_id="t")
        assert [i.key for i in store.search(("done",))] == ["left"]  # with its pending write
        fail["right"] = False
        app.resume("t")
        assert sorted(i.key for i in store.search(("done",))) == ["left", "right"]
    assert sorted(runs) == ["left", "right", "right"]


class RefusingStore(MemoryStore):
    """A store in this process whose writes fail (a full disk, say)."""

    async def aapply(self, writes) -> None:
        if writes:
            raise OSError(f"store down: {len(writes)} writes not applied")
        await super().aapply(writes)


def test_tasks_finishing_together_whose_memories_fail_fail_their_run_and_keep_their_writes(
        tmp_path):
    """A MemoryStore beside a SQLite checkpointer gets a task's memories right after its
    pending write commits; when that fails for tasks finishing together (one commit), the run
    fails with that failure, their writes stored once and nothing reported applied."""
    import asyncio

    async def node(state: S, ctx: RunContext) -> dict:
        if ctx.node != "slow":
            ctx.store.put(("mem",), ctx.node, {"by": ctx.node})
        await asyncio.sleep(0.3 if ctx.node == "slow" else 0.01)
        return {"log": [ctx.node]}

    store = RefusingStore()
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = side_by_side(S, dict.fromkeys(("a", "b", "slow"), node)).compile(
            checkpointer=saver, store=store)
        with pytest.raises(OSError, match="store down"):
            asyncio.run(app.ainvoke({}, thread_id="t"))
        assert store.search(("mem",)) == []
    with contextlib.closing(sqlite3.connect(tmp_path / "runs.db")) as conn:
        assert sorted(conn.execute("SELECT node FROM pending_writes").fetchall()) == [
            ("a",), ("b",), ("slow",)]


def test_a_store_outside_the_checkpointers_database_is_refused(tmp_path):
    g = StateGraph(S)
    g.add_node("n", lambda state: {})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    with SQLiteCheckpointer(tmp_path / "a.db") as saver, \
            SQLiteStore(tmp_path / "b.db") as store, \
            pytest.raises(GraphValidationError, match="not in the database of checkpointer"):
        g.compile(checkpointer=saver, store=store)
    with pytest.raises(GraphValidationError, match="must be a checkpoints store"):
        g.compile(store={"not": "a store"})


def child(db: Path, mode: str, die: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(CHILD), str(db), "t", mode]
    if die:
        args += ["--die-in", die]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


KILLS = [f"{node}:{when}" for node in ("a", "left", "right", "b")
         for when in ("written", "returned", "committed")]


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kills=st.lists(st.sampled_from(KILLS), min_size=1, max_size=2))
def test_killed_mid_step_and_resumed_every_memory_is_written_exactly_once(tmp_path_factory,
                                                                          kills):
    db = tmp_path_factory.mktemp("kill") / "runs.db"
    first = child(db, "run", kills[0])
    assert first.returncode == 9, first.stderr
    for die in kills[1:]:
        again = child(db, "resume", die)
        assert again.returncode in (0, 9), again.stderr
    final = child(db, "resume")
    assert final.returncode == 0 or "finished" in final.stderr, final.stderr
    with SQLiteStore(db, read_only=True) as store:
        counts = {i.key: i.value["n"] for i in store.search(("counters",))}
        seen = store.search(("seen",), limit=100)
    # a ran once, b once, each branch once: every increment exactly once
    assert counts == {"total": 2, "left": 1, "right": 1}
    assert sorted(i.key.split("-")[0] for i in seen) == ["a", "b", "left", "right"]


def test_an_attempt_abandoned_at_its_timeout_writes_nothing_that_commits(pair):
    import time as clock

    saver, store = pair
    attempts = []

    def slow_then_quick(state: S, ctx: RunContext) -> dict:
        attempts.append(1)
        me = len(attempts)
        clock.sleep(0.5 if me == 1 else 0.05)  # the first outlives its timeout, then writes
        ctx.store.put(("a",), f"from-attempt-{me}", {"n": me})
        return {"log": [f"attempt {me}"]}

    g = StateGraph(S)
    g.add_node("work", slow_then_quick, timeout=0.3,
               retry=RetryPolicy(max_attempts=2, initial_interval=0))
    g.add_edge(START, "work")
    g.add_edge("work", END)
    g.compile(checkpointer=saver, store=store).invoke({}, thread_id="t")
    clock.sleep(0.4)  # the abandoned attempt has written into its own buffer by now
    assert [i.key for i in store.search(("a",))] == ["from-attempt-2"]


def test_an_embedding_that_fails_is_retried_and_a_node_that_writes_is_not_cached(tmp_path):
    from statemachine import CachePolicy

    failures = {"left": 1}
    runs = []

    def embed(texts: list[str]) -> list[list[float]]:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("embedding API: 429")
        return [[1.0, 0.0] for _ in texts]

    def remember(state: S, ctx: RunContext) -> dict:
        runs.append(1)
        ctx.store.put(("m",), "k", {"text": "hello"})
        return {"log": ["remembered"]}

    g = StateGraph(S)
    g.add_node("remember", remember, cache=CachePolicy(),
               retry=RetryPolicy(max_attempts=2, initial_interval=0))
    g.add_edge(START, "remember")
    g.add_edge("remember", END)
    db = tmp_path / "runs.db"
    with SQLiteCheckpointer(db) as saver, \
            SQLiteStore(db, index={"embed": embed, "dims": 2, "fields": ["text"]}) as store:
        app = g.compile(checkpointer=saver, store=store)
        app.invoke({}, thread_id="t")
        assert len(runs) == 2 and store.get(("m",), "k").value == {"text": "hello"}
        app.invoke({}, thread_id="u")  # no cache hit: a hit would skip its memory
        assert len(runs) == 3


def test_a_node_rewriting_an_indexed_item_leaves_no_stale_vector(tmp_path):
    """A memory a step writes again (its commit's connection, not the store's) drops the old
    item's embedding with it: the item then ranks by its new text only."""
    def embed(texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0] if "tea" in text else [0.0, 1.0] for text in texts]

    def rewrite(state: S, ctx: RunContext) -> dict:
        ctx.store.put(("m",), "drink", {"text": "coffee"}, index=False)
        ctx.store.put(("m",), "food", {"text": "coffee cake"})
        return {"log": ["rewrote"]}

    g = StateGraph(S)
    g.add_node("rewrite", rewrite)
    g.add_edge(START, "rewrite")
    g.add_edge("rewrite", END)
    db = tmp_path / "runs.db"
    with SQLiteCheckpointer(db) as saver, \
            SQLiteStore(db, index={"embed": embed, "dims": 2, "fields": ["text"]}) as store:
        store.put(("m",), "drink", {"text": "tea"})
        store.put(("m",), "food", {"text": "tea cake"})
        assert [i.score for i in store.search(("m",), query="tea")] == [1.0, 1.0]
        g.compile(checkpointer=saver, store=store).invoke({}, thread_id="t")
        scores = {i.key: i.score for i in store.search(("m",), query="tea")}
        assert scores == {"food": 0.0, "drink": None}


def test_read_only_stores_and_a_subgraphs_store_elsewhere_are_refused(tmp_path):
    inner = StateGraph(S)
    inner.add_node("n", lambda state: {})
    inner.add_edge(START, "n")
    inner.add_edge("n", END)
    db = tmp_path / "runs.db"
    with SQLiteCheckpointer(db) as saver, SQLiteStore(db) as store, \
            SQLiteStore(tmp_path / "other.db") as elsewhere:
        with pytest.raises(GraphValidationError, match="read-only"):
            inner.compile(checkpointer=saver, store=SQLiteStore(db, read_only=True))
        outer = StateGraph(S)
        outer.add_node("sub", inner.compile(store=elsewhere))
        outer.add_edge(START, "sub")
        outer.add_edge("sub", END)
        with pytest.raises(GraphValidationError, match="not in the database"):
            outer.compile(checkpointer=saver)
        assert outer.compile(checkpointer=saver, store=store) is not None
