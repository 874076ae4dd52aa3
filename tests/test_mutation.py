"""A node that changes the state it was given in place, instead of returning an update, is
caught at the end of its step and named, with the field; the store keeps the unchanged state,
so history, resume and forks agree with what was stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, GraphValidationError, InvalidUpdateError, StateGraph

ROOT = Path(__file__).resolve().parent.parent


class S(BaseModel):
    items: list[int] = [1]
    tags: dict[str, int] = {}
    n: int = 0


def graph(body) -> StateGraph:
    g = StateGraph(S)
    g.add_node("prepare", lambda state: {"n": 1})
    g.add_node("sloppy", body)
    g.add_node("after", lambda state: {"n": state.n + 10})
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "sloppy")
    g.add_edge("sloppy", "after")
    g.add_edge("after", END)
    return g


def appends(state: S) -> dict:
    state.items.append(7)
    return {"n": state.n + 1}


def replaces(state: S) -> dict:
    state.items[0] = 9
    return {"n": state.n + 1}


def fine(state: S) -> dict:
    return {"items": [*state.items, 7], "n": state.n + 1}


def test_an_append_in_place_is_caught_by_default_and_the_store_keeps_the_unchanged_state(
        tmp_path):
    path = tmp_path / "runs.db"
    app = graph(appends).compile(checkpointer=SQLiteCheckpointer(path))
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="t")
    error = info.value
    assert error.node == "sloppy" and error.field == "items" and error.step == 1
    assert "node 'sloppy' changed the state it was given in place (field 'items')" in str(error)
    stored = graph(fine).compile(checkpointer=SQLiteCheckpointer(path))
    failed = stored.get_state("t")
    assert failed.status == "failed" and failed.state.items == [1] and failed.next == ("sloppy",)
    # fixed code resumes from the stored state: the history agrees with what ran
    final = stored.resume("t")
    assert final.items == [1, 7] and final.n == 12
    history = [s.state.items for s in stored.history("t")]
    assert history[0] == [1, 7] and history[-1] == [1] and set(map(tuple, history)) == {
        (1,), (1, 7)}


@pytest.mark.parametrize(("mode", "body", "caught"), [
    ("sizes", appends, True), ("sizes", replaces, False), ("full", replaces, True),
    ("full", appends, True), ("off", appends, False), ("sizes", fine, False),
    ("full", fine, False)])
def test_each_mode_catches_what_it_says(mode, body, caught):
    app = graph(body).compile(check_mutation=mode)
    if caught:
        with pytest.raises(InvalidUpdateError, match="changed the state it was given in place"):
            app.invoke({})
    else:
        app.invoke({})


def test_a_parallel_step_names_the_nodes_that_may_have_done_it():
    g = StateGraph(S)
    g.add_node("a", lambda state: {"n": 1})
    g.add_node("b", lambda state: state.tags.update(x=1))
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    with pytest.raises(InvalidUpdateError, match=r"one of the nodes 'a', 'b' changed .*'tags'"):
        g.compile().invoke({})


def test_the_environment_sets_the_default_and_a_bad_mode_is_a_compile_problem():
    code = ("from tests.test_mutation import graph, replaces\n"
            "from statemachine import InvalidUpdateError\n"
            "try:\n    graph(replaces).compile().invoke({})\nexcept InvalidUpdateError:\n"
            "    print('caught')\nelse:\n    print('missed')\n")
    for value, expected in (("full", "caught"), ("off", "missed"), ("", "missed")):
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                        "STATEMACHINE_CHECK_MUTATION": value})
        assert ran.stdout.strip() == expected, ran.stderr
    with pytest.raises(GraphValidationError, match="check_mutation"):
        graph(fine).compile(check_mutation="always")


def test_in_a_parallel_step_the_error_says_how_to_run_the_whole_step_again(tmp_path):
    import time

    def sloppy(state: S) -> dict:
        state.items.append(1)
        return {"n": len(state.items)}

    def slow(state: S) -> dict:
        time.sleep(0.2)
        return {"tags": {"b": 1}}

    def build(first):
        g = StateGraph(S)
        g.add_node("a", first)
        g.add_node("b", slow)
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge("a", END)
        g.add_edge("b", END)
        return g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "runs.db"))

    app = build(sloppy)
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="t")
    notes = "\n".join(info.value.__notes__)
    head = app.get_state("t").checkpoint_id
    assert f"app.fork('t', {head!r})" in notes and "'a'" in notes
    fixed = build(lambda state: {"n": len(state.items) + 1})
    fixed.fork("t", head)
    final = fixed.resume("t")
    assert final.items == [1] and final.n == 2 and final.tags == {"b": 1}
