"""Threads know their graph: a thread is bound to the name and structure of the graph that
first ran it; another graph (or a version with other nodes or edges) is refused before
anything is written, naming both, until the thread is moved on purpose with `rebind`."""

from __future__ import annotations

import asyncio
import operator
import shutil
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from conftest import make_checkpointer
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import (
    END,
    START,
    CheckpointError,
    GraphMismatchError,
    StateGraph,
    ThreadNotFoundError,
    ThreadStateError,
)

DATA = Path(__file__).parent / "data"


class Order(BaseModel):
    log: Annotated[list[str], operator.add] = []
    fail: bool = False


def orders(*, audit: bool = False, note: str = "charged") -> StateGraph:
    """Version 1: charge; version 2 (`audit`): charge, then audit. `note` changes a node's
    code only, which is not a new structure."""
    def charge(state: Order) -> dict:
        if state.fail:
            raise ConnectionError("gateway down")
        return {"log": [note]}

    g = StateGraph(Order)
    g.add_node("charge", charge)
    g.add_edge(START, "charge")
    if audit:
        g.add_node("audit", lambda state: {"log": ["audited"]})
        g.add_edge("charge", "audit")
        g.add_edge("audit", END)
    else:
        g.add_edge("charge", END)
    return g


def fail_once(app, thread: str) -> None:
    with pytest.raises(ConnectionError):
        app.invoke({"fail": True}, thread_id=thread)
    app.update_state(thread, {"fail": False})


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_another_graph_is_refused_naming_both_and_nothing_is_written(kind, tmp_path, request):
    saver = make_checkpointer(kind, tmp_path, request)
    v1 = orders().compile(checkpointer=saver, name="orders")
    with pytest.raises(ConnectionError):
        v1.invoke({"fail": True}, thread_id="o-1")
    before = v1.history("o-1")

    other = orders().compile(checkpointer=saver, name="refunds")
    with pytest.raises(GraphMismatchError) as refused:
        other.resume("o-1")
    message = str(refused.value)
    assert "thread 'o-1' was run by graph 'orders' (structure " in message
    assert "not by this graph 'refunds'" in message and "app.rebind('o-1')" in message
    assert (refused.value.stored, refused.value.graph) == ("orders", "refunds")
    # the same structure under another name is another graph all the same
    assert refused.value.stored_fingerprint == refused.value.fingerprint
    for attempt in (lambda: other.invoke({"fail": False}, thread_id="o-1"),
                    lambda: other.update_state("o-1", {"fail": False}),
                    lambda: other.rollback("o-1"),
                    lambda: other.fork("o-1", before[-1].checkpoint_id),
                    lambda: other.fork("o-1", before[-1].checkpoint_id, to_thread="copy")):
        with pytest.raises(GraphMismatchError):
            attempt()
    after = v1.history("o-1")
    assert [(s.checkpoint_id, s.status, s.error) for s in after] == \
        [(s.checkpoint_id, s.status, s.error) for s in before]  # the stored error untouched
    assert "copy" not in {t.thread_id for t in v1.threads()}  # no fork was made
    saver.close()


def test_a_new_version_with_other_nodes_is_refused_until_the_thread_is_rebound(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        v1 = orders().compile(checkpointer=saver, name="orders")
        with pytest.raises(ConnectionError):
            v1.invoke({"fail": True}, thread_id="o-1")
        v1.update_state("o-1", {"fail": False})

        v2 = orders(audit=True).compile(checkpointer=saver, name="orders")
        assert v2.identity.name == v1.identity.name
        assert v2.identity.fingerprint != v1.identity.fingerprint
        with pytest.raises(GraphMismatchError, match=r"graph 'orders' \(structure [0-9a-f]{12}\)"
                           r", and this graph 'orders' has another structure \([0-9a-f]{12}: "
                           r"nodes added: audit\)"):
            v2.resume("o-1")
        assert v2.rebind("o-1") == v1.identity  # what it was bound to before
        assert v2.resume("o-1").log == ["charged", "audited"]
        with pytest.raises(GraphMismatchError, match="nodes removed: audit"):
            v1.invoke({}, thread_id="o-1")  # and now the old version is the stranger
        assert v2.rebind("o-1") == v2.identity  # rebinding again changes nothing


def test_changing_a_nodes_code_or_the_name_of_nothing_else_is_the_same_graph(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        orders().compile(checkpointer=saver, name="orders").invoke({}, thread_id="o-1")
        fixed = orders(note="charged (fixed)").compile(checkpointer=saver, name="orders")
        assert fixed.invoke({}, thread_id="o-1").log == ["charged", "charged (fixed)"]


def test_a_thread_whose_first_run_wrote_nothing_is_not_bound(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        v1 = orders().compile(checkpointer=saver, name="orders")
        with pytest.raises(ThreadStateError):
            v1.invoke(None, thread_id="o-1")  # no input: nothing to start, nothing stored
        other = orders().compile(checkpointer=saver, name="refunds")
        assert other.invoke({}, thread_id="o-1").log == ["charged"]
        assert other.rebind("o-1") == other.identity


def test_rebind_refuses_a_graph_that_could_not_continue_the_thread(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        v2 = orders(audit=True).compile(checkpointer=saver, name="orders",
                                        interrupt_before=["audit"])
        v2.invoke({}, thread_id="o-1")  # paused before audit
        v1 = orders().compile(checkpointer=saver, name="orders")
        with pytest.raises(ThreadStateError, match="due to run node 'audit', which graph "
                                                   "'orders' does not have"):
            v1.rebind("o-1")
        with pytest.raises(GraphMismatchError):
            v1.resume("o-1")  # still bound to v2
        assert v2.resume("o-1").log == ["charged", "audited"]
        with pytest.raises(ThreadNotFoundError, match="no thread 'nope'"):
            v1.rebind("nope")


def test_threads_stored_before_binding_are_bound_by_their_next_run(tmp_path):
    """tests/data/schema4_chat.db was written before threads recorded their graph: read-only
    it says nothing of graphs; opened to write it is migrated, and the next run binds."""
    from data.make_schema4_fixture import graph

    path = tmp_path / "old.db"
    shutil.copy(DATA / "schema4_chat.db", path)
    reader = SQLiteCheckpointer(path, read_only=True)
    app = graph().compile(checkpointer=reader)
    assert app.get_state("chat").status == "done"
    assert asyncio.run(reader.thread_graphs(["chat", "other"])) == {}  # no such column
    with SQLiteCheckpointer(path) as saver:
        app = graph().compile(checkpointer=saver, name="chat-v1")
        app.invoke({"messages": ["again"]}, thread_id="chat")
        other = graph().compile(checkpointer=saver, name="chat-v2")
        with pytest.raises(GraphMismatchError, match="run by graph 'chat-v1'"):
            other.invoke({"messages": ["more"]}, thread_id="chat")
        assert other.invoke({"messages": ["x"]}, thread_id="other").messages[-1] == \
            "done part 2"  # 'other' was never run since: the first graph to run it binds it
    # the reader opened before the file was migrated sees the bindings now
    assert set(asyncio.run(reader.thread_graphs(["chat", "other"]))) == {"chat", "other"}
    reader.close()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        bound = dict(conn.execute("SELECT thread_id, graph IS NOT NULL FROM threads"))
    assert bound == {"chat": 1, "other": 1}


def test_a_default_name_does_not_tell_graphs_apart_only_their_structure(tmp_path):
    """Without compile(name=...), a graph is named after its state model: renaming the model
    (or upgrading it with migrations) is the same graph, while another structure is not."""
    class OrderV2(Order):
        pass

    def on(model: type[BaseModel]) -> StateGraph:
        g = StateGraph(model)
        g.add_node("charge", lambda state: {"log": ["charged"]})
        g.add_edge(START, "charge")
        g.add_edge("charge", END)
        return g

    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        first = on(Order).compile(checkpointer=saver)
        first.invoke({}, thread_id="o-1")
        renamed = on(OrderV2).compile(checkpointer=saver)
        assert (first.identity.name, renamed.identity.name) == ("OrderGraph", "OrderV2Graph")
        assert renamed.invoke({}, thread_id="o-1").log == ["charged", "charged"]
        with pytest.raises(GraphMismatchError, match="nodes added: audit"):
            orders(audit=True).compile(checkpointer=saver).invoke({}, thread_id="o-1")


def test_a_refused_run_or_edit_does_not_bind_an_old_thread_to_its_graph(tmp_path):
    """A thread stored before binding is bound by the first graph that writes to it, not by
    one that was refused: the graph that ran it can still continue it."""
    from data.make_schema4_fixture import graph

    path = tmp_path / "old.db"
    shutil.copy(DATA / "schema4_chat.db", path)
    with SQLiteCheckpointer(path) as saver:
        strangers = orders().compile(checkpointer=saver, name="orders")
        with pytest.raises(CheckpointError, match="fields 'messages', 'turns'"):
            strangers.update_state("chat", {"fail": True})  # its states are not ours
        with pytest.raises(CheckpointError, match="field 'messages'"):
            strangers.rollback("chat")
        assert asyncio.run(saver.thread_graphs(["chat"])) == {}
        own = graph().compile(checkpointer=saver, name="chat")
        assert own.invoke({"messages": ["again"]}, thread_id="chat").messages[-1] == \
            "done part 2"
        with pytest.raises(GraphMismatchError):
            strangers.update_state("chat", {"fail": True})


def test_prune_through_a_graph_leaves_other_graphs_threads_readable(tmp_path):
    """app.prune(keep_last=...) stores the state of each trimmed thread's oldest kept
    checkpoint; another graph's thread (whose reducers differ) is left to the store's own
    rules, so it reads as before."""
    class Log(BaseModel):
        log: Annotated[list[str], operator.add] = []

    class Plain(BaseModel):
        log: list[str] = []

    def one(model: type[BaseModel], name: str) -> StateGraph:
        g = StateGraph(model)
        g.add_node("step", lambda state: {"log": [f"entry {len(state.log)}"]})
        g.add_edge(START, "step")
        g.add_edge("step", END)
        return g

    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        appends = one(Log, "B").compile(checkpointer=saver, name="B")
        for _ in range(6):
            appends.invoke({}, thread_id="b1")
        before = appends.get_state("b1").state.log
        replaces = one(Plain, "A").compile(checkpointer=saver, name="A")
        replaces.invoke({}, thread_id="a1")
        replaces.invoke({}, thread_id="a1")
        removed = replaces.prune(keep_last=1)
        assert removed.kept["a1"] == 1  # its own thread: cut exactly
        assert removed.kept.get("b1", 99) > 1
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        assert one(Log, "B").compile(checkpointer=saver, name="B").get_state(
            "b1").state.log == before


def test_a_worker_of_a_new_version_hands_an_old_threads_job_back_and_submit_says_why(tmp_path):
    """A rolling deploy: the job of a thread the old version runs is not failed by a worker
    of the new one, it goes back to the queue for a worker of the old one; submitting it
    through the new version is refused at once."""
    import asyncio as aio

    from statemachine import Worker

    with SQLiteCheckpointer(tmp_path / "runs.db", lease_seconds=1.0) as saver:
        v1 = orders().compile(checkpointer=saver, name="orders")
        v2 = orders(audit=True).compile(checkpointer=saver, name="orders")
        fail_once(v1, "o-1")
        with pytest.raises(GraphMismatchError):
            v2.submit(None, thread_id="o-1")
        v1.submit(None, thread_id="o-1")

        async def drain(app) -> object:
            worker = Worker(app, poll_interval=0.05)
            return await worker.run(drain=True)

        handed = aio.run(drain(v2))
        assert (handed.other_graph, handed.failed, handed.done) == (1, 0, 0)
        [job] = v1.jobs()
        assert job.status == "queued" and "run by graph 'orders'" in (job.error or "")
        assert aio.run(drain(v1)).done == 1  # once the job is due again
        assert v1.get_state("o-1").state.log == ["charged"]
