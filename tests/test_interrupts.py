"""interrupt(): a node pauses the run, durably, asking a question, and gets the answer back on
resume; the pause is visible in what invoke's stream and get_state return; a wrong answer
never leaves a thread stuck."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel
from test_cli import OK, RUN_FAILED, USAGE, cli

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import (
    END,
    START,
    Command,
    Interrupt,
    StateGraph,
    ThreadStateError,
    interrupt,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


class S(BaseModel):
    draft: str = "v1"
    log: Annotated[list[str], operator.add] = []


def one_node(fn) -> StateGraph:
    g = StateGraph(S)
    g.add_node("ask", fn)
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    return g


def test_a_node_asks_the_run_pauses_and_the_answer_comes_back():
    runs = []

    def ask(state: S) -> dict:
        runs.append("ran")
        first = interrupt({"question": "approve?", "draft": state.draft})
        second = interrupt("a note?")  # answers are replayed in order on each resume
        return {"log": [f"{first} / {second}"]}

    app = one_node(ask).compile(checkpointer=MemoryCheckpointer())
    events = list(app.stream({}, thread_id="t"))
    assert [e.status for e in events] == ["interrupted"]  # the pause is in the stream
    [asked] = events[-1].interrupts
    assert isinstance(asked, Interrupt) and asked.node == "ask"
    assert asked.value == {"question": "approve?", "draft": "v1"}
    assert app.get_state("t").interrupts == (asked,)

    app.invoke(Command(resume="yes"), thread_id="t")
    [second] = app.get_state("t").interrupts
    assert second.value == "a note?" and second.id != asked.id
    assert app.resume("t", answer="ship it").log == ["yes / ship it"]
    assert len(runs) == 3 and app.get_state("t").interrupts == ()
    with pytest.raises(ThreadStateError, match="asked nothing"):
        app.resume("t", answer="late")


def test_parallel_questions_are_answered_by_id_and_updates_mode_shows_the_pause():
    def asker(name: str):
        def ask(state: S) -> dict:
            return {"log": [f"{name}: {interrupt(f'{name}?')}"]}
        return ask

    g = StateGraph(S)
    for name in ("legal", "finance"):
        g.add_node(name, asker(name))
        g.add_edge(START, name)
        g.add_edge(name, END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    updates = list(app.stream({}, thread_id="t", stream_mode="updates"))
    [paused] = [u for u in updates if "__interrupt__" in u]
    assert sorted(i.value for i in paused["__interrupt__"]) == ["finance?", "legal?"]
    ids = {i.node: i.id for i in app.get_state("t").interrupts}
    with pytest.raises(ThreadStateError, match="waits for 2 answers: answer each by its id"):
        app.resume("t", answer="yes")
    final = app.resume("t", answer={ids["legal"]: "ok", ids["finance"]: "no budget"})
    assert sorted(final.log) == ["finance: no budget", "legal: ok"]


def test_a_wrong_answer_fails_the_node_and_a_new_answer_finishes_the_run(tmp_path):
    def ask(state: S) -> dict:
        verdict = interrupt("approve? yes/no")
        return {"log": [{"yes": "approved", "no": "rejected"}[verdict]]}

    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = one_node(ask).compile(checkpointer=saver)
        app.invoke({}, thread_id="t")
        with pytest.raises(KeyError):
            app.resume("t", answer="yse")  # a typo: the node fails with it
        with pytest.raises(KeyError):
            app.resume("t")  # resuming alone repeats the stored answer
        assert app.resume("t", answer="yes").log == ["approved"]  # a new one replaces it
        kinds = [(s.kind, s.status) for s in reversed(app.history("t"))]
        assert kinds == [("input", "interrupted"), ("event", "failed"), ("resume", "failed"),
                         ("event", "running"), ("step", "done")]


def test_wait_for_shows_up_as_an_interrupt_and_without_a_store_a_question_is_refused():
    g = one_node(lambda state: {"log": [str(wait_for("approval"))]})
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    [waiting] = app.get_state("t").interrupts
    assert waiting.value == {"wait_for": "approval"}
    assert app.resume("t", answer={waiting.id: "ok"}).log == ["ok"]  # or event=...
    with pytest.raises(ThreadStateError, match=r"called interrupt\(...\), which pauses"):
        one_node(lambda state: {"log": [interrupt("?")]}).compile().invoke({})


CHILD = """
import os, sys
from checkpoints import SQLiteCheckpointer
from tests.cli_graphs import asking
app = asking.compile(checkpointer=SQLiteCheckpointer(sys.argv[1]))
if sys.argv[2] == "answer-and-die":
    import dataclasses
    from tests.cli_graphs import review
    def dying(state):
        review(state)  # the answer is in: the node runs with it...
        os._exit(9)    # ...and the process dies before the step commits
    node = app.spec.nodes["review"]
    app.spec.nodes["review"] = dataclasses.replace(
        node, call=dataclasses.replace(node.call, fn=dying))
    app.resume("t", answer="yes")
else:
    print(app.resume("t").approved)
"""


def test_an_answer_delivered_before_a_crash_is_kept(tmp_path):
    db = tmp_path / "runs.db"
    paused = cli("run", "tests.cli_graphs:asking", "--db", str(db), "--thread", "t")
    assert paused.returncode == OK, paused.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    died = subprocess.run([sys.executable, "-c", CHILD, str(db), "answer-and-die"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert died.returncode == 9, died.stderr
    again = subprocess.run([sys.executable, "-c", CHILD, str(db), "resume"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "True"


def test_the_command_line_shows_the_question_and_takes_the_answer(tmp_path):
    db, graph = tmp_path / "runs.db", "tests.cli_graphs:asking"
    paused = cli("run", graph, "--db", str(db), "--thread", "t")
    assert paused.returncode == OK, paused.stderr
    assert 'asking review: {"question": "approve?", "draft": "v1"}' in paused.stderr
    assert "--answer '...'" in paused.stderr
    rows = json.loads(cli("history", "--db", str(db), "--thread", "t", "--json").stdout)
    assert rows[0]["waits_for"] == ["an answer"]
    missing = cli("resume", graph, "--db", str(db), "--thread", "t")
    assert missing.returncode == USAGE and "give it with --answer" in missing.stderr
    wrong = cli("resume", graph, "--db", str(db), "--thread", "t", "--answer", '"maybe"')
    assert wrong.returncode == RUN_FAILED and "KeyError" in wrong.stderr
    fixed = cli("resume", graph, "--db", str(db), "--thread", "t", "--answer", '"yes"')
    assert fixed.returncode == OK, fixed.stderr
    assert json.loads(fixed.stdout) == {"draft": "v1", "approved": True}


def test_resuming_a_question_without_an_answer_says_how_to_give_one():
    app = one_node(lambda state: {"log": [interrupt("which plan?")]}).compile(
        checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    with pytest.raises(ThreadStateError, match=r"waits for an answer: .*'which plan\?'. Give "
                                               r"it with app.resume\('t', answer=...\)"):
        app.resume("t")
    assert app.get_state("t").status == "interrupted"  # nothing changed


def test_a_question_asked_inside_a_subgraph_is_the_parents_to_answer():
    inner = one_node(lambda state: {"log": [f"answer {interrupt('inner question?')}"]})
    g = StateGraph(S)
    g.add_node("pre", lambda state: {"log": ["pre"]})
    g.add_node("sub", inner.compile(name="inner"))
    g.add_edge(START, "pre")
    g.add_edge("pre", "sub")
    g.add_edge("sub", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    [asked] = app.get_state("t").interrupts
    assert (asked.node, asked.value) == ("sub", "inner question?")
    assert app.resume("t", answer=42).log == ["pre", "answer 42"]


def test_an_update_to_a_paused_thread_keeps_its_question_and_earlier_answers():
    def ask_twice(state: S) -> dict:
        first = interrupt("first?")
        second = interrupt("second?")
        return {"log": [f"{first}/{second}"]}

    app = one_node(ask_twice).compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    app.resume("t", answer="a")
    [asked] = app.get_state("t").interrupts
    assert asked.value == "second?"
    after = app.update_state("t", {"log": ["operator note"]})
    assert after.status == "interrupted"
    assert [i.value for i in after.interrupts] == ["second?"]  # still asks, same id
    assert after.interrupts[0].id == asked.id
    assert app.resume("t", answer="b").log == ["operator note", "a/b"]  # "a" kept


def test_asking_something_that_is_not_json_fails_the_node_with_a_clear_error():
    class Thing:
        pass

    app = one_node(lambda state: {"log": [interrupt({"obj": Thing()})]}).compile(
        checkpointer=MemoryCheckpointer())
    with pytest.raises(TypeError, match=r"interrupt\(\) was asked a value that cannot be "
                                        r"stored as JSON") as info:
        app.invoke({}, thread_id="t")
    assert any("node" in note for note in getattr(info.value, "__notes__", []))
    snapshot = app.get_state("t")
    assert snapshot.status == "failed" and "cannot be stored as JSON" in snapshot.error


def test_a_wrong_answer_that_makes_the_router_fail_is_replaced_and_the_node_runs_again():
    class Choice(BaseModel):
        choice: str = ""

    runs: list[str] = []

    def ask(state: Choice) -> dict:
        answer = interrupt("approve or reject?")
        runs.append(answer)
        return {"choice": answer}

    def route(state: Choice) -> str:
        return {"approve": "ok", "reject": "no"}[state.choice]

    g = StateGraph(Choice)
    g.add_node("ask", ask)
    g.add_node("ok", lambda state: {})
    g.add_node("no", lambda state: {})
    g.add_edge(START, "ask")
    g.add_conditional_edges("ask", route, ["ok", "no"])
    g.add_edge("ok", END)
    g.add_edge("no", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    with pytest.raises(KeyError, match="aprove"):
        app.resume("t", answer="aprove")
    assert app.resume("t", answer="approve").choice == "approve"
    assert runs == ["aprove", "approve"] and app.get_state("t").status == "done"


def parallel_askers() -> StateGraph:
    def asker(name: str):
        def node(state: S) -> dict:
            return {"log": [f"{name}={interrupt(f'{name}: approve?')}"]}
        return node

    g = StateGraph(S)
    g.add_node("legal", asker("legal"))
    g.add_node("finance", asker("finance"))
    g.add_edge(START, "legal")
    g.add_edge(START, "finance")
    g.add_edge("legal", END)
    g.add_edge("finance", END)
    return g


def test_parallel_questions_inside_a_subgraph_are_each_asked_and_answered_on_their_own():
    g = StateGraph(S)
    g.add_node("sub", parallel_askers().compile(name="approvals"))
    g.add_edge(START, "sub")
    g.add_edge("sub", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    [first] = app.get_state("t").interrupts
    app.invoke(Command(resume="OK-1"), thread_id="t")
    [second] = app.get_state("t").interrupts  # the other one is asked now, not answered
    assert {first.value, second.value} == {"legal: approve?", "finance: approve?"}
    assert first.id != second.id
    with pytest.raises(ThreadStateError, match="asks no question with id"):
        app.resume("t", answer={first.id: "again"})  # an answered question's id
    final = app.resume("t", answer={second.id: "OK-2"})
    assert sorted(final.log) == sorted([f"{first.value.split(':')[0]}=OK-1",
                                        f"{second.value.split(':')[0]}=OK-2"])


def test_parallel_questions_may_be_answered_one_at_a_time():
    app = parallel_askers().compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    questions = {i.value: i.id for i in app.get_state("t").interrupts}
    app.resume("t", answer={questions["legal: approve?"]: "yes"})
    [left] = app.get_state("t").interrupts
    assert left.value == "finance: approve?"
    assert sorted(app.resume("t", answer="no").log) == ["finance=no", "legal=yes"]


def test_a_wrong_answer_inside_a_subgraph_is_replaced_from_the_parent():
    inner = one_node(lambda state: {"log": [str(int(interrupt("a number?")))]})
    g = StateGraph(S)
    g.add_node("sub", inner.compile(name="inner"))
    g.add_edge(START, "sub")
    g.add_edge("sub", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    with pytest.raises(ValueError, match="not a number"):
        app.resume("t", answer="not a number")
    assert app.resume("t", answer="42").log == ["42"]


def test_replacing_the_wrong_one_of_two_parallel_answers_needs_only_that_answer():
    def asker(name: str):
        def node(state: S) -> dict:
            return {"log": [f"{name}={int(interrupt({'who': name}))}"]}
        return node

    g = StateGraph(S)
    g.add_node("a", asker("a"))
    g.add_node("b", asker("b"))
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    ids = {i.value["who"]: i.id for i in app.get_state("t").interrupts}
    with pytest.raises(ValueError, match="'x'"):
        app.resume("t", answer={ids["a"]: "1", ids["b"]: "x"})
    assert sorted(app.resume("t", answer="5").log) == ["a=1", "b=5"]  # b's alone


def test_the_work_queue_answers_a_question(tmp_path):
    from statemachine._sync import run_sync
    from statemachine.worker import Worker
    from tests.test_cli import OK, USAGE, cli

    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = one_node(lambda state: {"log": [f"answer={interrupt('go?')}"]}).compile(
            checkpointer=saver)
        for thread in ("a", "b"):
            app.submit({}, thread)
        run_sync(lambda: Worker(app, poll_interval=0.01).run(drain=True))
        assert app.get_state("a").status == "interrupted"
        with pytest.raises(ThreadStateError, match=r"waits for an answer: .*'go\?'.*answer="):
            app.submit(None, "a")  # it would only fail in the worker
        app.submit(None, "a", answer="yes")
        app.submit(Command(resume="sure"), "b")
        stats = run_sync(lambda: Worker(app, poll_interval=0.01).run(drain=True))
        assert stats.done == 2
        assert app.get_state("a").state.log == ["answer=yes"]
        assert app.get_state("b").state.log == ["answer=sure"]
    db, graph = str(tmp_path / "cli.db"), "tests.cli_graphs:asking"
    assert cli("submit", graph, "--db", db, "--thread", "t", "--input", "{}").returncode == OK
    assert cli("worker", graph, "--db", db, "--drain", "-q").returncode == OK
    refused = cli("submit", graph, "--db", db, "--thread", "t")
    assert refused.returncode == USAGE and "waits for an answer" in refused.stderr
    assert cli("submit", graph, "--db", db, "--thread", "t", "--answer", '"yes"').returncode == OK
    assert cli("worker", graph, "--db", db, "--drain", "-q").returncode == OK
    shown = cli("show", "--db", db, "--thread", "t")
    assert json.loads(shown.stdout)["approved"] is True
