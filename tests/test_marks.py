"""A mark changes a checkpoint in place (a pause, a failure): it adds to what the checkpoint
says and never drops it, and what it says is about the latest failure only."""

from __future__ import annotations

import operator
from typing import Annotated

import pytest
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, RunContext, StateGraph, ThreadStateError, wait_for


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []
    n: int = 0


def test_a_wait_after_an_edit_keeps_the_finished_work_and_the_task_ids(tmp_path):
    ids: list[tuple[str, str]] = []
    fails = {"b": True}

    def node(name: str):
        def run(state: S, context: RunContext) -> dict:
            ids.append((name, context.task_id))
            if name == "b" and fails["b"]:
                raise RuntimeError("b fails")
            if name == "w":
                return {"log": [f"approved {wait_for('approve')}"]}
            return {"log": [name]}
        return run

    g = StateGraph(S)
    for name in ("a", "b", "w"):
        g.add_node(name, node(name))
        g.add_edge(START, name)
    g.add_node("join", lambda state: {"n": len(state.log)})
    g.add_edge(["a", "b", "w"], "join")
    g.add_edge("join", END)
    app = g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "runs.db"))
    with pytest.raises(RuntimeError):
        app.invoke({}, thread_id="t")
    app.update_state("t", {"n": 99})  # the same tasks stay due, a's work carried
    fails["b"] = False
    app.resume("t")  # b runs, w waits: the pause must keep a's carried work and the ids
    paused = app.get_state("t")
    assert paused.status == "interrupted" and set(paused.pending_writes) == {"a", "b"}
    final = app.resume("t", event={"approve": "ok"})
    assert sorted(final.log) == ["a", "approved ok", "b"] and final.n == 3
    assert [name for name, _ in ids].count("a") == 1  # a never ran again
    w_ids = {task for name, task in ids if name == "w"}
    b_ids = {task for name, task in ids if name == "b"}
    assert len(w_ids) == 1 and len(b_ids) == 1  # every run of a task, the same id


def test_a_later_failure_elsewhere_does_not_keep_the_earlier_failed_nodes(tmp_path):
    broken = {"charge": True, "router": False}

    def charge(state: S) -> dict:
        if broken["charge"]:
            raise ConnectionError("gateway down")
        return {"log": ["charge"]}

    def route(state: S) -> str:
        if broken["router"]:
            raise RuntimeError("router bug")
        return END

    g = StateGraph(S)
    g.add_node("charge", charge)
    g.add_edge(START, "charge")
    g.add_conditional_edges("charge", route, [END])
    app = g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "runs.db"))
    with pytest.raises(ConnectionError):
        app.invoke({}, thread_id="t")
    assert app.get_state("t").metadata["failed_nodes"] == ["charge"]
    broken.update(charge=False, router=True)
    with pytest.raises(RuntimeError, match="router bug"):
        app.resume("t")
    failed = app.get_state("t")
    assert failed.error == "RuntimeError: router bug"
    assert "failed_nodes" not in failed.metadata and failed.pending_writes == {
        "charge": {"log": ["charge"]}}


def test_a_rollback_whose_process_ended_part_way_is_not_resumed_as_if_done(tmp_path):
    undone: list[str] = []
    killed = {"hotel": True}

    def cancel_hotel(state: S) -> None:
        if killed["hotel"]:  # SystemExit is not a failure a rollback records: as after kill -9
            raise SystemExit("killed")
        undone.append("hotel")

    g = StateGraph(S)
    g.add_node("hotel", lambda state: {"log": ["hotel"]}, compensate=cancel_hotel)
    g.add_node("flight", lambda state: {"log": ["flight"]},
               compensate=lambda state: undone.append("flight"))
    g.add_node("pay", lambda state: (_ for _ in ()).throw(ValueError("declined")))
    g.add_edge(START, "hotel")
    g.add_edge("hotel", "flight")
    g.add_edge("flight", "pay")
    g.add_edge("pay", END)
    path = tmp_path / "runs.db"
    app = g.compile(checkpointer=SQLiteCheckpointer(path))
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    with pytest.raises(SystemExit):
        app.rollback("t")  # flight's undo commits, the process "ends" in hotel's
    later = g.compile(checkpointer=SQLiteCheckpointer(path))
    head = later.get_state("t")
    assert (head.kind, head.status, undone) == ("compensation", "failed", ["flight"])
    with pytest.raises(ThreadStateError, match="rollback stopped part-way"):
        later.resume("t")
    with pytest.raises(ThreadStateError, match="rollback stopped part-way"):
        later.invoke({}, thread_id="t")
    killed["hotel"] = False
    later.rollback("t")
    assert later.get_state("t").status == "compensated" and undone == ["flight", "hotel"]
