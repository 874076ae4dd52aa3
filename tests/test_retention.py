"""Retention: deleting threads and pruning old checkpoints, on every store.

Real graphs (a chat with a subgraph node, forks, update_state, failed runs) run on memory,
SQLite and PostgreSQL; after a prune every kept checkpoint must read, fork and resume exactly
as before, which is checked by comparing `get_state` of every kept id before and after,
resuming a failed kept head, rolling a failed run back, and forking from the oldest kept
checkpoint beside an unpruned twin thread. SQLite's file must shrink for real (sizes on
disk), and a prune killed with SIGKILL at any moment leaves a sound file in which every
thread is either pruned or untouched.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import STORES, make_store, postgres_schema
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, Removed, SQLiteCheckpointer
from checkpoints.base import Owner
from checkpoints.retention import FINISHED, origin_in_name, parent_thread
from checkpoints.sqlite_retention import shrink
from statemachine import (
    END,
    START,
    StateGraph,
    ThreadBusyError,
    ThreadNotFoundError,
)
from statemachine._sync import run_sync

ROOT = Path(__file__).resolve().parent.parent


class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    turns: int = 0


def research_graph() -> Any:
    """The subgraph: two steps of its own, same state schema as the chat."""
    g = StateGraph(Chat)
    g.add_node("search", lambda s: {"messages": [f"searched {len(s.messages)}"]})
    g.add_node("summarise", lambda s: {"messages": ["summary"]})
    g.add_edge(START, "search")
    g.add_edge("search", "summarise")
    g.add_edge("summarise", END)
    return g.compile()


def chat_graph(fail: set[str] | None = None, undone: list[str] | None = None) -> StateGraph:
    """reply -> research (a subgraph node) and side, in parallel -> note. `reply` fails on a
    message in `fail`; `side` and `note` while their name is in it (once each). Compensations
    are logged in `undone`."""
    fail = set() if fail is None else fail

    def reply(s: Chat) -> dict:
        if s.messages and s.messages[-1] in fail:
            fail.discard(s.messages[-1])
            raise RuntimeError(f"asked to fail on {s.messages[-1]!r}")
        return {"messages": [f"reply to {s.messages[-1] if s.messages else ''}"],
                "turns": s.turns + 1}

    def note(s: Chat) -> dict:
        if "note" in fail:
            fail.discard("note")
            raise RuntimeError("note failed")
        return {"messages": [f"note {s.turns}"]}

    def undo(name: str):
        def compensate(s: Chat) -> dict:
            if undone is not None:
                undone.append(f"{name} {s.turns}")
            return {"messages": [f"undo {name}"]}
        return compensate

    def side(s: Chat) -> dict:
        if "side" in fail:
            fail.discard("side")
            raise RuntimeError("side failed")
        return {"messages": ["side"]}

    g = StateGraph(Chat)
    g.add_node("reply", reply, compensate=undo("reply"))
    g.add_node("research", research_graph())
    g.add_node("side", side)
    g.add_node("note", note, compensate=undo("note"))
    g.add_edge(START, "reply")
    for branch in ("research", "side"):
        g.add_edge("reply", branch)
        g.add_edge(branch, "note")
    g.add_edge("note", END)
    return g


def converse(app: Any, thread: str, fail: set[str], turns: int = 4) -> None:
    """A conversation with every kind of checkpoint: runs, a failed run resumed, an
    update_state, a fork, and more runs after it."""
    for i in range(turns):
        app.invoke({"messages": [f"hello {i}"]}, thread_id=thread)
    fail.add("broken")
    with pytest.raises(RuntimeError):
        app.invoke({"messages": ["broken"]}, thread_id=thread)
    app.resume(thread)
    app.update_state(thread, {"messages": ["edited by hand"]})
    history = app.history(thread)
    app.invoke(None, thread_id=thread, checkpoint_id=history[len(history) // 2].checkpoint_id)
    app.invoke({"messages": ["after the fork"]}, thread_id=thread)


def all_threads(saver: Any) -> list[str]:
    return sorted(t.thread_id for t in run_sync(saver.threads))


def states(app: Any, thread: str) -> dict[str, Any]:
    """Every checkpoint of a thread, as `get_state` reads it."""
    return {s.checkpoint_id: app.get_state(thread, s.checkpoint_id)
            for s in app.history(thread)}


def everything(app: Any, saver: Any) -> dict[str, dict[str, Any]]:
    return {thread: states(app, thread) for thread in all_threads(saver)}


def extra_origins(saver: Any, thread: str, kept: set[str]) -> set[str]:
    origins = set()
    for record in run_sync(lambda: saver.list(thread)):
        if record.id in kept and record.extra:
            origin = json.loads(record.extra).get("origin")
            if origin is not None:
                origins.add(str(origin))
    return origins


def check_pruned(app: Any, saver: Any, before: dict[str, dict[str, Any]], keep_last: int,
                 removed: Removed) -> dict[str, dict[str, Any]]:
    """What every prune must leave: kept checkpoints read exactly as before, each thread keeps
    its `keep_last` newest, subgraph threads remain only under a kept origin, and `removed`
    counts what went."""
    after = everything(app, saver)
    for thread, kept in after.items():
        assert thread in before, thread
        for cid, snapshot in kept.items():
            assert snapshot == before[thread][cid], (thread, cid)
        newest = sorted(before[thread], key=int)[-keep_last:]
        assert set(newest) <= set(kept), (thread, newest, sorted(kept))
        if "::" in thread:
            parent = parent_thread(thread, after)
            assert parent is not None, thread
            parent_kept = set(after[parent])
            assert origin_in_name(thread) in parent_kept | extra_origins(
                saver, parent, parent_kept), thread
    gone = set(before) - set(after)
    assert set(removed.threads) == gone
    assert removed.checkpoints == {
        t: len(before[t]) - len(after.get(t, {})) for t in before
        if len(before[t]) != len(after.get(t, {}))}
    assert removed.kept == {t: len(after[t]) for t in after if t in removed.kept}
    return after


def prune(saver: Any, **options: Any) -> Removed:
    return run_sync(lambda: saver.prune(**options))


def delete(saver: Any, thread: str, **options: Any) -> Removed:
    return run_sync(lambda: saver.delete_thread(thread, **options))


def count_rows(store: Any, saver: Any = None) -> dict[str, int]:
    """Rows of each table, read from outside statemachine (memory: from its dicts). SQLite's
    placeholder row keeping the highest checkpoint id taken (thread 0) is no checkpoint."""
    if store.kind == "memory":
        saver = saver or store.open()
        return {"threads": len(saver._threads), "checkpoints": len(saver._records),
                "pending_writes": sum(map(len, saver._pending.values())),
                "jobs": len(saver._jobs)}
    counts = {table: store.query(f"SELECT count(*) FROM {table}")[0][0]
              for table in ("threads", "pending_writes", "jobs")}
    counts["checkpoints"] = store.query("SELECT count(*) FROM checkpoints WHERE thread <> 0"
                                        )[0][0]
    return counts


def open_with(store: Any, **options: Any) -> Any:
    """A checkpointer of the store with `options` (memory: a new, empty one — a memory
    store is one object, made with its options)."""
    return MemoryCheckpointer(**options) if store.kind == "memory" else store.open(**options)


# -- prune(keep_last=...) --------------------------------------------------------------------

def test_prune_keeps_the_newest_and_every_kept_checkpoint_reads_as_before(store):
    fail: set[str] = set()
    saver = store.open()
    app = chat_graph(fail).compile(checkpointer=saver)
    converse(app, "chat", fail)
    converse(app, "other", fail, turns=2)
    before = everything(app, saver)
    assert len(before) > 10  # the two threads and their subgraph runs
    rows = count_rows(store)

    dry = prune(saver, keep_last=3, dry_run=True)
    assert count_rows(store) == rows and everything(app, saver) == before
    removed = prune(saver, keep_last=3)
    assert removed == dry if store.kind == "memory" else \
        (removed.threads, removed.checkpoints, removed.kept, removed.pending_writes) == \
        (dry.threads, dry.checkpoints, dry.kept, dry.pending_writes)
    after = check_pruned(app, saver, before, 3, removed)
    assert removed.threads and removed.skipped == ()
    assert sum(removed.checkpoints.values()) == rows["checkpoints"] - count_rows(store)[
        "checkpoints"]
    # the subgraph runs of the kept steps are kept: the head's own one among them
    head = app.get_state("chat")
    assert any(t.startswith("chat::research:") for t in after)
    assert head.state == before["chat"][head.checkpoint_id].state
    # pruning again removes nothing more
    again = prune(saver, keep_last=3)
    assert (again.threads, again.checkpoints) == ((), {})


def test_the_same_prune_removes_the_same_on_every_store(tmp_path, request):
    """Memory, SQLite and PostgreSQL number checkpoints alike from an empty store, so one
    conversation pruned alike must report the very same removal."""
    results = {}
    for kind in STORES:
        store = make_store(kind, tmp_path / kind, request)
        (tmp_path / kind).mkdir()
        try:
            fail: set[str] = set()
            saver = store.open()
            app = chat_graph(fail).compile(checkpointer=saver)
            converse(app, "chat", fail)
            pruned = prune(saver, keep_last=2)
            deleted = delete(saver, "chat", dry_run=True)
            results[kind] = [(r.threads, r.checkpoints, r.kept, r.pending_writes, r.jobs)
                             for r in (pruned, deleted)]
        finally:
            store.close()
    assert results["sqlite"] == results["memory"] == results["postgres"]


def test_a_failed_kept_head_resumes_as_an_unpruned_twin_does(store):
    """Two threads through the same failures; one is pruned to its last checkpoint. Both
    resume to the same state, and the pruned one's history still starts a readable chain."""
    fail: set[str] = set()
    saver = store.open()
    app = chat_graph(fail).compile(checkpointer=saver)
    for thread in ("pruned", "twin"):
        for i in range(3):
            app.invoke({"messages": [f"hello {i}"]}, thread_id=thread)
        fail.add("note")
        with pytest.raises(RuntimeError, match="note failed"):
            app.invoke({"messages": ["fail later"]}, thread_id=thread)
    before = everything(app, saver)
    removed = prune(saver, thread_id="pruned", keep_last=1)
    check_pruned(app, saver, before, 1, removed)
    assert set(removed.kept) >= {"pruned"} and "twin" not in removed.kept
    assert app.get_state("pruned").status == "failed"
    assert app.resume("pruned") == app.resume("twin")
    assert app.get_state("pruned").state == app.get_state("twin").state


def test_rolling_back_a_pruned_failed_run_undoes_every_node_it_completed(store):
    """A failed run keeps its whole line, however small keep_last: rollback compensates
    every node the run completed, found there (the trimmed twin must match the untouched)."""
    fail: set[str] = set()
    undone: list[str] = []
    saver = store.open()
    app = chat_graph(fail, undone).compile(checkpointer=saver)
    for thread in ("pruned", "twin"):
        app.invoke({"messages": ["hello"]}, thread_id=thread)
        fail.add("note")
        with pytest.raises(RuntimeError, match="note failed"):
            app.invoke({"messages": ["fail later"]}, thread_id=thread)
    removed = prune(saver, thread_id="pruned", keep_last=1)
    assert removed.checkpoints.get("pruned", 0) >= 1  # the first, finished run went
    left = run_sync(lambda: saver.list("pruned"))
    assert [r.kind for r in left].count("input") == 1 and left[-1].kind == "input"
    twin = app.rollback("twin")
    undone_twin, undone[:] = list(undone), []
    assert app.rollback("pruned") == twin
    assert undone == undone_twin == ["reply 2"]


def test_forking_from_the_oldest_kept_checkpoint_runs_as_from_its_twin(store):
    fail: set[str] = set()
    saver = store.open()
    app = chat_graph(fail).compile(checkpointer=saver)
    for thread in ("pruned", "twin"):
        converse(app, thread, fail, turns=3)
    ids = {t: sorted((s.checkpoint_id for s in app.history(t)), key=int)
           for t in ("pruned", "twin")}
    prune(saver, thread_id="pruned", keep_last=4)
    kept = sorted(states(app, "pruned"), key=int)
    oldest = kept[0]
    twin = ids["twin"][ids["pruned"].index(oldest)]
    assert app.get_state("pruned", oldest).state == app.get_state("twin", twin).state
    forked = app.invoke(None, thread_id="pruned", checkpoint_id=oldest)
    assert forked == app.invoke(None, thread_id="twin", checkpoint_id=twin)
    assert app.invoke({"messages": ["more"]}, thread_id="pruned") == \
        app.invoke({"messages": ["more"]}, thread_id="twin")


def test_a_subgraph_thread_goes_with_the_checkpoint_that_ran_it(store):
    saver = store.open()
    app = chat_graph().compile(checkpointer=saver)
    for i in range(4):
        app.invoke({"messages": [f"hello {i}"]}, thread_id="chat")
    subgraphs = [t for t in all_threads(saver) if t.startswith("chat::")]
    assert len(subgraphs) == 4
    removed = prune(saver, keep_last=1)
    left = [t for t in all_threads(saver) if t.startswith("chat::")]
    # the head's run is the only one whose research step is kept
    assert len(left) <= 1 and set(removed.threads) == set(subgraphs) - set(left)
    kept = set(states(app, "chat"))
    assert all(origin_in_name(t) in kept for t in left)


def nested_graph() -> StateGraph:
    """outer: ask -> middle (a subgraph whose own node `inner` is a subgraph) -> END."""
    middle = StateGraph(Chat)
    middle.add_node("plan", lambda s: {"messages": ["plan"]})
    middle.add_node("inner", research_graph())
    middle.add_edge(START, "plan")
    middle.add_edge("plan", "inner")
    middle.add_edge("inner", END)
    g = StateGraph(Chat)
    g.add_node("ask", lambda s: {"messages": ["ask"], "turns": s.turns + 1})
    g.add_node("middle", middle.compile())
    g.add_edge(START, "ask")
    g.add_edge("ask", "middle")
    g.add_edge("middle", END)
    return g


def test_nested_subgraph_threads_are_trimmed_and_deleted_with_their_parents(store):
    saver = store.open()
    app = nested_graph().compile(checkpointer=saver)
    for i in range(4):
        app.invoke({"messages": [f"hello {i}"]}, thread_id="t")
        app.invoke({"messages": [f"hello {i}"]}, thread_id="t2")
    nested = [t for t in all_threads(saver) if t.count("::") == 2]
    assert len(nested) == 8 and all(t.startswith(("t::middle:0@", "t2::middle:0@"))
                                    for t in nested)
    before = everything(app, saver)
    removed = prune(saver, keep_last=2)
    after = check_pruned(app, saver, before, 2, removed)
    assert {t for t in nested if t not in after} <= set(removed.threads)
    # a middle thread deleted on its own takes its inner thread, and nothing else
    middle = next(t for t in after if t.startswith("t::") and t.count("::") == 1)
    inner = [t for t in after if t.startswith(middle + "::")]
    assert len(inner) == 1 and set(delete(saver, middle).threads) == {middle, *inner}
    assert delete(saver, "t").threads[0] == "t"
    assert all(t.startswith("t2") for t in all_threads(saver))


@settings(max_examples=20)
@given(ops=st.lists(st.sampled_from(["turn", "fail", "update", "fork", "fork-old"]),
                    min_size=1, max_size=7),
       keep_last=st.integers(1, 6))
def test_any_history_pruned_to_any_size_reads_as_before(ops, keep_last):
    """Any sequence of runs, failures (left failed or resumed), state updates and forks,
    pruned to any keep_last, on memory and SQLite: what is kept reads exactly as before, and
    the thread resumes (or takes new input) as an unpruned twin does."""
    with tempfile.TemporaryDirectory() as tmp, \
            SQLiteCheckpointer(Path(tmp) / "runs.db") as sqlite:
        for saver in (MemoryCheckpointer(), sqlite):
            fail: set[str] = set()
            app = chat_graph(fail).compile(checkpointer=saver)
            for thread in ("pruned", "twin"):
                play(app, thread, ops, fail)
            before = everything(app, saver)
            removed = prune(saver, thread_id="pruned", keep_last=keep_last)
            check_pruned(app, saver, before, keep_last, removed)
            assert all(not t.startswith("twin") for t in removed.checkpoints)
            head = app.get_state("pruned")
            if head.status in FINISHED:
                outcomes = [app.invoke({"messages": ["again"]}, thread_id=t)
                            for t in ("pruned", "twin")]
            else:
                outcomes = [app.resume(t) for t in ("pruned", "twin")]
            assert outcomes[0] == outcomes[1]


def play(app: Any, thread: str, ops: list[str], fail: set[str]) -> None:
    for i, op in enumerate(ops):
        head = app.get_state(thread) if _exists(app, thread) else None
        if head is not None and head.status not in FINISHED and op != "fail-again":
            app.resume(thread)  # a failure is resumed by the next operation
            head = app.get_state(thread)
        if op == "turn" or head is None:
            app.invoke({"messages": [f"turn {i}"]}, thread_id=thread)
        elif op == "fail":
            fail.add(f"fail {i}")
            with pytest.raises(RuntimeError):
                app.invoke({"messages": [f"fail {i}"]}, thread_id=thread)
        elif op == "update":
            app.update_state(thread, {"messages": [f"update {i}"]})
        else:
            ids = [s.checkpoint_id for s in app.history(thread)]
            app.invoke(None, thread_id=thread,
                       checkpoint_id=ids[-1] if op == "fork-old" else ids[len(ids) // 2])


def _exists(app: Any, thread: str) -> bool:
    try:
        app.get_state(thread)
    except ThreadNotFoundError:
        return False
    return True


# -- add_snapshot ----------------------------------------------------------------------------

def test_add_snapshot_is_fenced_and_lets_a_prune_cut_at_the_newest(store):
    saver = store.open()
    app = long_loop(12).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    records = run_sync(lambda: saver.list("t"))
    target = next(r for r in records[1:] if r.snapshot is None)  # a step stored as writes
    owner, stranger = Owner.new(), Owner.new()
    snapshot = app.get_state("t", target.id).state.model_dump_json()
    with pytest.raises(ThreadBusyError):  # not acquired: fenced out
        run_sync(lambda: saver.add_snapshot("t", owner, target.id, snapshot))
    run_sync(lambda: saver.acquire("t", owner))
    with pytest.raises(ThreadBusyError):
        run_sync(lambda: saver.add_snapshot("t", stranger, target.id, snapshot))
    with pytest.raises(ThreadNotFoundError, match="no checkpoint '999999'"):
        run_sync(lambda: saver.add_snapshot("t", owner, "999999", snapshot))
    run_sync(lambda: saver.add_snapshot("t", owner, target.id, snapshot))
    run_sync(lambda: saver.add_snapshot("t", owner, target.id, '{"n": -1}'))  # has one now
    run_sync(lambda: saver.release("t", owner))
    stored = {r.id: r for r in run_sync(lambda: saver.list("t"))}[target.id]
    assert stored.snapshot == snapshot
    newer = [r.id for r in records if int(r.id) >= int(target.id)]
    before = states(app, "t")
    removed = prune(saver, thread_id="t", keep_last=len(newer))
    assert removed.kept == {"t": len(newer)}  # nothing older needed: it holds its state
    assert states(app, "t") == {cid: before[cid] for cid in newer}


class Counter(BaseModel):
    n: int = 0
    items: Annotated[list[str], operator.add] = []


def long_loop(limit: int, size: int = 10) -> StateGraph:
    """One node appending `size` characters per step, `limit` steps."""

    def work(state: Counter) -> dict:
        return {"n": state.n + 1, "items": [f"{state.n:04d}" + "x" * size]}

    g = StateGraph(Counter)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "again" if s.n < limit else "done",
                            {"again": "work", "done": END})
    return g


# -- keep_last on release --------------------------------------------------------------------

def test_keep_last_trims_each_thread_when_its_run_releases_it(store):
    saver = open_with(store, keep_last=2)
    plain = MemoryCheckpointer()
    trimmed, full = (chat_graph().compile(checkpointer=each) for each in (saver, plain))
    for i in range(5):
        # the subgraph's writes reach the parent whole: its own release does not cut the run
        # that the parent's open step is about to read back
        assert trimmed.invoke({"messages": [f"hello {i}"]}, thread_id="chat") == \
            full.invoke({"messages": [f"hello {i}"]}, thread_id="chat")
    kept, every = states(trimmed, "chat"), states(full, "chat")
    assert 2 <= len(kept) < len(every) // 3
    newest = sorted(every, key=int)[-2:]
    assert [kept[c].state for c in sorted(kept, key=int)[-2:]] == \
        [every[c].state for c in newest]
    subgraphs = [t for t in all_threads(saver) if t.startswith("chat::")]
    assert len(subgraphs) <= 1 < len([t for t in all_threads(plain) if t.startswith("chat::")])
    assert trimmed.invoke({"messages": ["more"]}, thread_id="chat") == \
        full.invoke({"messages": ["more"]}, thread_id="chat")


def test_keep_last_on_release_is_fenced_by_the_owner(store):
    saver = open_with(store)
    app = long_loop(6).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    every = len(states(app, "t"))
    saver.keep_last = 1  # what keep_last=1 at construction sets
    owner = Owner.new()
    run_sync(lambda: saver.acquire("t", owner))
    # a release by a run that does not hold the thread neither trims nor releases it
    run_sync(lambda: saver.release("t", Owner.new()))
    assert len(states(app, "t")) == every
    with pytest.raises(ThreadBusyError):
        app.invoke({}, thread_id="t")
    run_sync(lambda: saver.release("t", owner))
    # trimmed to the head, plus what it needs back to a snapshot (this thread ran before
    # keep_last was set, so its snapshots were not placed for it)
    assert len(states(app, "t")) < every
    assert app.get_state("t").state.n == 6


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_keep_last_must_be_a_whole_number_of_at_least_one(store, value):
    with pytest.raises(ValueError, match="keep_last must be a whole number of at least 1"):
        open_with(store, keep_last=value)
    saver = store.open()
    with pytest.raises(ValueError, match="keep_last must be a whole number of at least 1"):
        prune(saver, keep_last=value)


def test_prune_refuses_to_delete_everything(store):
    saver = store.open()
    long_loop(2).compile(checkpointer=saver).invoke({}, thread_id="t")
    with pytest.raises(ValueError, match="would delete every thread"):
        prune(saver)
    with pytest.raises(ValueError, match="finished_before must be a unix time"):
        prune(saver, finished_before="yesterday")
    with pytest.raises(ThreadNotFoundError, match="no thread 'nope'"):
        prune(saver, thread_id="nope", keep_last=1)
    assert all_threads(saver) == ["t"]


# -- prune(finished_before=...) --------------------------------------------------------------

def test_finished_before_deletes_only_threads_that_finished_before_it(store):
    fail: set[str] = set()
    saver = store.open()
    app = chat_graph(fail).compile(checkpointer=saver)
    app.invoke({"messages": ["old"]}, thread_id="old done")
    fail.add("broken")
    with pytest.raises(RuntimeError):
        app.invoke({"messages": ["broken"]}, thread_id="old failed")
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    app.invoke({"messages": ["new"]}, thread_id="new done")
    before = everything(app, saver)
    removed = prune(saver, finished_before=cutoff)
    assert removed.threads[0] == "old done"
    assert {t for t in removed.threads} == {t for t in before if t.startswith("old done")}
    assert removed.kept == {} and removed.skipped == ()
    left = all_threads(saver)
    assert "old failed" in left and "new done" in left and "old done" not in left
    assert everything(app, saver) == {t: before[t] for t in left}
    # with keep_last, the old finished threads are trimmed instead
    trimmed = prune(saver, finished_before=time.time() + 1, keep_last=1)
    assert set(trimmed.kept) >= {"new done"} and "old failed" not in trimmed.kept


# -- delete_thread ---------------------------------------------------------------------------

def test_delete_removes_the_thread_its_subgraph_threads_and_its_job(store):
    fail: set[str] = set()
    saver = store.open()
    app = chat_graph(fail).compile(checkpointer=saver)
    names = ["a_b", "a%b", "aXb", "a_bc", "a_b:c", "a"]  # LIKE wildcards are themselves
    for name in names:
        app.invoke({"messages": ["hi"]}, thread_id=name)
    fail.add("side")
    with pytest.raises(RuntimeError, match="side failed"):  # research's write is kept
        app.invoke({"messages": ["broken"]}, thread_id="a_b")
    app.submit(None, "a_b")
    rows = count_rows(store)
    before = everything(app, saver)
    family = [t for t in before if t == "a_b" or t.startswith("a_b::")]
    assert len(family) == 3

    dry = delete(saver, "a_b", dry_run=True)
    assert count_rows(store) == rows
    removed = delete(saver, "a_b")
    assert (removed.threads, removed.checkpoints, removed.jobs) == \
        (dry.threads, dry.checkpoints, dry.jobs)
    assert set(removed.threads) == set(family) and removed.jobs == 1
    assert removed.pending_writes >= 1
    assert removed.checkpoints == {t: len(before[t]) for t in family}
    assert removed.kept == {} and removed.skipped == ()
    after = count_rows(store)
    assert rows["checkpoints"] - after["checkpoints"] == sum(removed.checkpoints.values())
    assert rows["pending_writes"] - after["pending_writes"] == removed.pending_writes
    assert (rows["jobs"] - after["jobs"], rows["threads"] - after["threads"]) == (1, 3)
    assert everything(app, saver) == {t: s for t, s in before.items() if t not in family}
    with pytest.raises(ThreadNotFoundError, match="no thread 'a_b'"):
        delete(saver, "a_b")
    with pytest.raises(ThreadNotFoundError, match="no thread 'a_'"):
        delete(saver, "a_")
    assert app.invoke({"messages": ["again"]}, thread_id="a_b").turns == 1  # a new thread


def test_a_thread_deleted_and_started_again_never_repeats_a_task_id(store):
    """Task ids (the idempotency keys nodes give payment providers) come from checkpoint
    ids. SQLite numbers a new row one past the highest id left, so deleting the newest
    thread used to hand its ids out again: the same thread id started anew repeated every
    task id of the deleted run, and a provider would drop the new charges as duplicates."""
    seen: list[str] = []

    def charge(s: Counter, context: Any) -> dict:
        seen.append(context.task_id)
        return {"n": s.n + 1}

    g = StateGraph(Counter)
    g.add_node("charge", charge)
    g.add_edge(START, "charge")
    g.add_conditional_edges("charge", lambda s: "again" if s.n < 3 else "done",
                            {"again": "charge", "done": END})
    saver = store.open()
    app = g.compile(checkpointer=saver)
    app.invoke({}, thread_id="other")
    app.invoke({}, thread_id="order-42")
    old_ids = set(states(app, "order-42"))
    first = list(seen)
    delete(saver, "order-42")
    app.invoke({}, thread_id="order-42")
    assert not old_ids & set(states(app, "order-42"))
    assert len(seen) == 2 * len(first) - 3 and not set(first[3:]) & set(seen[len(first):])
    # trimming the newest thread (its head stays) and deleting again keeps ids increasing
    prune(saver, keep_last=1)
    newest = max(int(c) for c in states(app, "order-42"))
    delete(saver, "order-42")
    app.invoke({}, thread_id="order-42")
    assert min(int(c) for c in states(app, "order-42")) > newest
    assert all_threads(saver) == ["order-42", "other"]


def test_delete_and_prune_leave_a_thread_a_live_run_holds(store):
    entered, release = threading.Event(), threading.Event()

    def wait(s: Chat) -> dict:
        entered.set()
        assert release.wait(20)
        return {"messages": ["released"]}

    g = StateGraph(Chat)
    g.add_node("wait", wait)
    g.add_edge(START, "wait")
    g.add_edge("wait", END)
    saver = store.open()
    app = g.compile(checkpointer=saver)
    release.set()
    app.invoke({"messages": ["first"]}, thread_id="busy")
    app.invoke({"messages": ["first"]}, thread_id="idle")
    entered.clear()
    release.clear()
    runner = threading.Thread(target=lambda: app.invoke({"messages": ["second"]},
                                                         thread_id="busy"))
    runner.start()
    try:
        assert entered.wait(20)
        rows = count_rows(store)
        with pytest.raises(ThreadBusyError, match="cannot delete thread 'busy': a live run "
                                                  "holds thread 'busy'"):
            delete(saver, "busy")
        with pytest.raises(ThreadBusyError):
            delete(saver, "busy", dry_run=True)
        removed = app.prune(keep_last=1)  # gives idle's head a snapshot, then prunes
        assert removed.skipped == ("busy",) and "busy" not in removed.kept
        assert "idle" in removed.checkpoints
        assert count_rows(store)["checkpoints"] == rows["checkpoints"] - \
            removed.checkpoints["idle"]
    finally:
        release.set()
        runner.join(20)
    assert app.get_state("busy").state.messages == ["first", "released", "second",
                                                    "released"]
    assert delete(saver, "busy").threads == ("busy",)


def test_a_lapsed_holder_does_not_block_a_delete(durable_store):
    saver = durable_store.open()
    app = long_loop(2).compile(checkpointer=saver)
    app.invoke({}, thread_id="dead")
    app.invoke({}, thread_id="elsewhere")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    from checkpoints.base import process_space

    # a holder of this machine whose process is gone, with a lease still running
    durable_store.change("UPDATE threads SET owner = 'gone', owner_pid = ?, owner_host = ?, "
                         "lease_expires = ? WHERE thread_id = 'dead'", gone.pid,
                         process_space(), time.time() + 3600)
    # a holder elsewhere whose lease ran out
    durable_store.change("UPDATE threads SET owner = 'other', owner_pid = 1, owner_host = "
                         "'elsewhere', lease_expires = ? WHERE thread_id = 'elsewhere'",
                         time.time() - 60)
    assert delete(saver, "dead").threads == ("dead",)
    assert prune(saver, thread_id="elsewhere", finished_before=time.time() + 1).threads == \
        ("elsewhere",)
    # ... but a live holder elsewhere does
    app.invoke({}, thread_id="live")
    durable_store.change("UPDATE threads SET owner = 'other', owner_pid = 1, owner_host = "
                         "'elsewhere', lease_expires = ? WHERE thread_id = 'live'",
                         time.time() + 3600)
    with pytest.raises(ThreadBusyError):
        delete(saver, "live")


# -- SQLite: the file gets smaller ------------------------------------------------------------

class Draft(BaseModel):
    n: int = 0
    draft: str = ""


def revisions(limit: int, size: int = 10) -> StateGraph:
    """A document rewritten whole at each of `limit` steps (`size` characters): every
    checkpoint is large, and only the newest matter."""

    def revise(state: Draft) -> dict:
        return {"n": state.n + 1, "draft": f"{state.n:04d}" + "x" * size}

    g = StateGraph(Draft)
    g.add_node("revise", revise)
    g.add_edge(START, "revise")
    g.add_conditional_edges("revise", lambda s: "again" if s.n < limit else "done",
                            {"again": "revise", "done": END})
    return g


def big_store(path: Path, threads: int = 6, steps: int = 12, size: int = 40_000) -> None:
    """Threads of `steps` revisions of `size` characters each: most of the file is history."""
    with SQLiteCheckpointer(path) as saver:
        app = revisions(steps, size).compile(checkpointer=saver)
        for i in range(threads):
            app.invoke({}, thread_id=f"big-{i}")


def sqlite_pragma(path: Path, name: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir()
               if p.name in (path.name, path.name + "-wal"))


def test_new_files_are_made_with_incremental_auto_vacuum(tmp_path):
    path = tmp_path / "runs.db"
    SQLiteCheckpointer(path).close()
    assert sqlite_pragma(path, "auto_vacuum") == 2
    assert sqlite_pragma(path, "journal_mode") == "wal"


def test_a_pruned_file_is_much_smaller_on_disk(tmp_path):
    path = tmp_path / "runs.db"
    big_store(path)
    start = disk_bytes(path)
    with SQLiteCheckpointer(path) as saver:
        app = revisions(12).compile(checkpointer=saver)
        before = everything(app, saver)
        removed = app.prune(keep_last=1)
        assert removed.bytes_before >= start  # with the snapshots app.prune gave first
        assert removed.bytes_after == disk_bytes(path) == path.stat().st_size
        assert removed.notes == ()
        assert everything(app, saver) == {t: {c: s for c, s in before[t].items()
                                              if c in removed_ids(saver, t)} for t in before}
    # each thread keeps one checkpoint of its 13 (with its 40 KB write and a 40 KB snapshot)
    assert disk_bytes(path) < start / 6, (start, disk_bytes(path))
    assert sqlite_pragma(path, "freelist_count") == 0


def removed_ids(saver: Any, thread: str) -> set[str]:
    return {r.id for r in run_sync(lambda: saver.list(thread))}


def make_old_file(path: Path) -> None:
    """A file as statemachine made it before retention: auto_vacuum NONE."""
    big_store(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
    assert sqlite_pragma(path, "auto_vacuum") == 0


def test_a_file_made_before_is_converted_once_on_its_first_prune(tmp_path):
    path = tmp_path / "old.db"
    make_old_file(path)
    start = disk_bytes(path)
    with SQLiteCheckpointer(path) as saver:
        app = revisions(12).compile(checkpointer=saver)
        before = everything(app, saver)
        first = app.prune("big-0", keep_last=1)
        assert len(first.notes) == 1 and "converted" in first.notes[0], first.notes
        assert first.bytes_after < start
        second = app.prune(keep_last=1)
        assert second.notes == ()  # incremental from now on
        assert everything(app, saver) == {t: {c: s for c, s in before[t].items()
                                              if c in removed_ids(saver, t)} for t in before}
    assert sqlite_pragma(path, "auto_vacuum") == 2
    assert disk_bytes(path) < start / 6
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


READER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM checkpoints").fetchone()
print("reading", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_a_reader_in_the_way_leaves_the_rows_removed_and_says_the_file_shrinks_later(
        tmp_path):
    path = tmp_path / "runs.db"
    big_store(path, threads=3)
    start = disk_bytes(path)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        with SQLiteCheckpointer(path, busy_timeout=0.3) as saver:
            removed = revisions(12).compile(checkpointer=saver).prune(keep_last=1)
            assert sum(removed.checkpoints.values()) > 20
            assert any("another connection was reading" in n for n in removed.notes), \
                removed.notes
            assert removed.bytes_after is not None
            reader.communicate("\n", timeout=30)
            assert prune(saver, keep_last=1).checkpoints == {}
    finally:
        if reader.poll() is None:
            reader.kill()
    assert disk_bytes(path) < start / 4  # the last connection's close folded the log back


def test_a_vacuum_that_cannot_get_its_lock_keeps_the_rows_removed(tmp_path):
    """Another process takes the write lock between the removal and the conversion VACUUM:
    the prune still succeeds, the rows stay removed, and it says the file was not shrunk."""
    from test_storage_safety import hold_write_lock

    path = tmp_path / "old.db"
    make_old_file(path)
    holders = []
    with SQLiteCheckpointer(path, busy_timeout=0.3) as saver:
        def trace(statement: str) -> None:
            if statement.strip().upper() == "VACUUM" and not holders:
                holders.append(hold_write_lock(path, 2.0))

        saver._direct.set_trace_callback(trace)
        removed = prune(saver, keep_last=1)
        saver._direct.set_trace_callback(None)
        assert holders, "the prune never reached its VACUUM"
        assert any("not shrunk" in n and "locked" in n for n in removed.notes), removed.notes
        assert sum(removed.checkpoints.values()) > 20
        holders[0].wait(10)
        assert all(len(states(revisions(12).compile(checkpointer=saver), t)) <= 5
                   for t in all_threads(saver))
    assert sqlite_pragma(path, "auto_vacuum") == 0  # converted by a later prune instead


def test_shrink_is_never_an_error(tmp_path):
    from test_storage_safety import hold_write_lock

    path = tmp_path / "runs.db"
    big_store(path, threads=1, steps=3)
    holder = hold_write_lock(path, 1.0)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0.2)) as conn:
        notes = shrink(conn)
    holder.wait(10)
    assert notes and all("locked" in n or "reading" in n for n in notes), notes


# -- SQLite: killed mid-prune --------------------------------------------------------------------

PRUNER = """
import json, sys, time
from checkpoints import SQLiteCheckpointer
from statemachine._sync import run_sync
with SQLiteCheckpointer(sys.argv[1]) as saver:
    print("pruning", flush=True)
    started = time.monotonic()
    removed = run_sync(lambda: saver.prune(keep_last=2))
    print(json.dumps({"seconds": time.monotonic() - started, "notes": removed.notes}),
          flush=True)
"""


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    """Two big files (one made before incremental auto-vacuum), their checkpoints' states
    before any prune, and what a finished prune keeps of each thread."""
    root = tmp_path_factory.mktemp("killed")
    made = {}
    for layout in ("incremental", "old"):
        path = root / f"{layout}.db"
        big_store(path, threads=80, steps=16, size=50_000)
        if layout == "old":
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                conn.execute("PRAGMA auto_vacuum = NONE")
                conn.execute("VACUUM")
        with SQLiteCheckpointer(path) as saver:
            before = fingerprints(saver)
        finished = root / f"{layout}-finished.db"
        shutil.copyfile(path, finished)
        child = subprocess.run([sys.executable, "-c", PRUNER, str(finished)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr
        seconds = json.loads(child.stdout.splitlines()[-1])["seconds"]
        with SQLiteCheckpointer(finished) as saver:
            kept = {t: set(ids) for t, ids in fingerprints(saver).items()}
        made[layout] = (path, before, kept, seconds)
    return made


def fingerprints(saver: Any) -> dict[str, dict[str, str]]:
    """Every checkpoint's state as JSON, by thread and id: loading each one is the check
    that it is readable."""
    app = revisions(1).compile(checkpointer=saver)
    return {t: {cid: s.state.model_dump_json() for cid, s in states(app, t).items()}
            for t in all_threads(saver)}


@pytest.mark.parametrize("layout", ["incremental", "old"])
@pytest.mark.parametrize("moment", [0.0, 0.2, 0.4, 0.6, 0.8, 1.2])
def test_a_prune_killed_at_any_moment_leaves_each_thread_pruned_or_untouched(
        killable, tmp_path, layout, moment):
    source, before, kept, seconds = killable[layout]
    path = tmp_path / "runs.db"
    shutil.copyfile(source, path)
    child = subprocess.Popen([sys.executable, "-c", PRUNER, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "pruning\n"
        time.sleep(seconds * moment)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SQLiteCheckpointer(path) as saver:
        after = fingerprints(saver)  # every remaining checkpoint loads
    assert set(after) == set(before)
    pruned = 0
    for thread, found in after.items():
        assert set(found) in (set(before[thread]), kept[thread]), thread
        pruned += set(found) == kept[thread]
        assert found == {cid: before[thread][cid] for cid in found}, thread
    if moment > 1:
        assert pruned == len(after)


# -- the schema stays -----------------------------------------------------------------------------

def test_retention_does_not_change_the_schema_version(tmp_path):
    from checkpoints import sqlite as sqlite_module

    path = tmp_path / "runs.db"
    big_store(path, threads=2, steps=3, size=10)
    with SQLiteCheckpointer(path) as saver:
        prune(saver, keep_last=1)
        delete(saver, "big-0")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == \
            [(sqlite_module.SCHEMA_VERSION,)]


def test_a_postgres_store_reuses_the_space_it_frees(request):
    """PostgreSQL deletes rows in one transaction; nothing of the removed threads is left."""
    from checkpoints import PostgresCheckpointer

    dsn = request.getfixturevalue("postgres_dsn")
    schema = postgres_schema()
    with PostgresCheckpointer(dsn, schema=schema) as saver:
        app = long_loop(6).compile(checkpointer=saver)
        for i in range(3):
            app.invoke({}, thread_id=f"t{i}")
        removed = prune(saver, finished_before=time.time() + 1)
        assert sorted(removed.threads) == ["t0", "t1", "t2"]
        assert (removed.bytes_before, removed.bytes_after, removed.notes) == (None, None, ())
        assert all_threads(saver) == []
