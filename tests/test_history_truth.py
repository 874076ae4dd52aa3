"""Histories that tell the truth: a pause, the delivery of an event and a failure after a pause
each have a checkpoint of their own (none is overwritten), and the step numbers a run prints
are the ones its history shows."""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, RunContext, StateGraph, wait_for

ROOT = Path(__file__).resolve().parent.parent


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []


def waiting_graph(fail: dict[str, bool], ids: list[str]) -> StateGraph:
    def ask(state: S, context: RunContext) -> dict:
        ids.append(context.task_id)
        answer = wait_for("ok")
        if fail["ask"]:
            raise RuntimeError("the approval service is down")
        return {"log": [f"ask {answer}"]}

    g = StateGraph(S)
    g.add_node("a", lambda state: {"log": ["a"]})
    g.add_node("ask", ask)
    g.add_node("c", lambda state: {"log": ["c"]})
    g.add_edge(START, "a")
    g.add_edge("a", "ask")
    g.add_edge("ask", "c")
    g.add_edge("c", END)
    return g


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_pause_a_delivery_and_a_failure_after_it_are_separate_checkpoints(store, tmp_path):
    fail, ids = {"ask": True}, []
    saver = MemoryCheckpointer() if store == "memory" else SQLiteCheckpointer(
        tmp_path / "runs.db")
    app = waiting_graph(fail, ids).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    paused = app.get_state("t")
    assert (paused.status, paused.metadata["waits_for"]) == ("interrupted", ["ok"])

    with pytest.raises(RuntimeError, match="approval service is down"):
        app.resume("t", event={"ok": "yes"})
    failed = app.get_state("t")
    # the delivery is a checkpoint of its own; the failure is marked on it, not on the pause
    assert failed.checkpoint_id != paused.checkpoint_id
    assert (failed.kind, failed.status, failed.parent_id) == ("event", "failed",
                                                               paused.checkpoint_id)
    assert failed.error == "RuntimeError: the approval service is down"
    assert failed.metadata["failed_nodes"] == ["ask"]
    still = app.get_state("t", paused.checkpoint_id)
    assert (still.status, still.metadata["waits_for"], still.error) == (
        "interrupted", ["ok"], None)

    fail["ask"] = False
    final = app.resume("t")  # the delivered answer was kept: no event needed again
    assert final.log == ["a", "ask yes", "c"]
    rows = [(s.step, s.kind, s.status) for s in reversed(app.history("t"))]
    assert rows == [(0, "input", "running"), (1, "step", "interrupted"), (1, "event", "failed"),
                    (1, "resume", "running"), (2, "step", "running"), (3, "step", "done")]
    assert len(set(ids)) == 1  # every run of the waiting task had the same id
    if store == "sqlite":
        saver.close()


def test_resuming_a_run_paused_before_a_node_keeps_the_pause_in_the_history(tmp_path):
    g = StateGraph(S)
    g.add_node("draft", lambda state: {"log": ["draft"]})
    g.add_node("send", lambda state: {"log": ["send"]})
    g.add_edge(START, "draft")
    g.add_edge("draft", "send")
    g.add_edge("send", END)
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = g.compile(checkpointer=saver, interrupt_before=["send"])
        app.invoke({}, thread_id="t")
        paused = app.get_state("t")
        assert (paused.status, paused.next) == ("interrupted", ("send",))
        assert app.resume("t").log == ["draft", "send"]
        assert app.get_state("t", paused.checkpoint_id).status == "interrupted"
        kinds = [(s.kind, s.status) for s in reversed(app.history("t"))]
        assert kinds == [("input", "running"), ("step", "interrupted"), ("resume", "running"),
                         ("step", "done")]


def test_two_failures_of_one_step_keep_both_errors(tmp_path):
    attempts = {"n": 0}

    def flaky(state: S) -> dict:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError(f"attempt {attempts['n']} failed")
        return {"log": ["charged"]}

    g = StateGraph(S)
    g.add_node("charge", flaky)
    g.add_edge(START, "charge")
    g.add_edge("charge", END)
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = g.compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            app.invoke({}, thread_id="t")
        with pytest.raises(ConnectionError):
            app.resume("t")
        assert app.resume("t").log == ["charged"]
        errors = [s.error for s in reversed(app.history("t")) if s.status == "failed"]
        assert errors == ["ConnectionError: attempt 1 failed",
                          "ConnectionError: attempt 2 failed"]


def test_the_step_numbers_a_run_prints_are_those_of_its_history(tmp_path):
    """Run from the command line as a user would: every "✓ step N  nodes" line of the run's
    output is a history row whose nodes ran at step N, and the failure's step is the failed
    row's step."""
    db, flag = tmp_path / "runs.db", tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "statemachine", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)

    graph = ("run", "tests.cli_graphs:flaky", "--db", str(db), "--thread", "t")
    failed = cli(*graph, "--input", json.dumps({"flag": str(flag)}))
    flag.touch()
    resumed = cli("resume", "tests.cli_graphs:flaky", "--db", str(db), "--thread", "t")
    history = cli("history", "--db", str(db), "--thread", "t", "--json")
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads(history.stdout)

    printed = re.findall(r"✓ step (\d+)\s+(.+?)\s+\d+ ms", failed.stderr + resumed.stderr)
    assert printed, failed.stderr
    for step, names in printed:
        ran = [name.removesuffix(" (kept)") for name in names.split(", ")]
        assert any(r["nodes_step"] == int(step) and set(ran) <= set(r["nodes"])
                   for r in rows), (step, ran, rows)
    failure = re.search(r"the run failed at step (\d+)", failed.stderr)
    assert failure is not None
    [failed_row] = [r for r in rows if r["status"] == "failed"]
    assert failed_row["step"] == int(failure.group(1))
    assert failed_row["failed_nodes"] == ["charge"]


def test_a_command_of_a_finished_task_survives_two_failures_of_its_step(tmp_path):
    """The kept work a resume carries includes what the task decided: a's Command(goto='x')
    still routes after b failed twice (and after a kill while b re-ran, see test_crash)."""
    from statemachine import Command

    fails = {"b": 2}

    def b(state: S) -> dict:
        if fails["b"]:
            fails["b"] -= 1
            raise RuntimeError("b down")
        return {"log": ["b"]}

    g = StateGraph(S)
    g.add_node("a", lambda state: Command(update={"log": ["a"]}, goto="x"),
               destinations=("x",))
    g.add_node("b", b)
    g.add_node("x", lambda state: {"log": ["x"]})
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("b", END)
    g.add_edge("x", END)
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = g.compile(checkpointer=saver)
        for attempt in (lambda: app.invoke({}, thread_id="t"), lambda: app.resume("t")):
            with pytest.raises(RuntimeError):
                attempt()
        assert sorted(app.resume("t").log) == ["a", "b", "x"]


def test_an_approved_step_edited_after_it_failed_does_not_ask_again(tmp_path):
    fail = {"b": True}

    def b(state: S) -> dict:
        if fail["b"]:
            raise ValueError("negative amount")
        return {"log": ["b"]}

    g = StateGraph(S)
    g.add_node("a", lambda state: {"log": ["a"]})
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = g.compile(checkpointer=saver, interrupt_before=["b"])
        app.invoke({}, thread_id="t")  # paused before b
        with pytest.raises(ValueError):
            app.resume("t")  # approved: b runs and fails
        app.update_state("t", {"log": ["fixed"]})
        fail["b"] = False
        final = app.resume("t")
        assert app.get_state("t").status == "done" and final.log == ["a", "fixed", "b"]


CHILD = """
import operator, os, sys
from typing import Annotated
from pydantic import BaseModel
from checkpoints import SQLiteCheckpointer
from statemachine import END, START, Command, RunContext, StateGraph

class S(BaseModel):
    log: Annotated[list[str], operator.add] = []

def b(state, ctx: RunContext):
    print(ctx.task_id, flush=True)
    if sys.argv[2] == "fail":
        raise RuntimeError("b down")
    if sys.argv[2] == "kill":
        os._exit(9)
    return {"log": ["b"]}

g = StateGraph(S)
g.add_node("a", lambda s: Command(update={"log": ["a"]}, goto="x"), destinations=("x",))
g.add_node("b", b)
g.add_node("x", lambda s: {"log": ["x"]})
g.add_edge(START, "a"); g.add_edge(START, "b"); g.add_edge("x", END); g.add_edge("b", END)
app = g.compile(checkpointer=SQLiteCheckpointer(sys.argv[1]))
if sys.argv[2] == "fail":
    try:
        app.invoke({}, thread_id="t")
    except RuntimeError:
        pass
else:
    print(sorted(app.resume("t").log), flush=True)
"""


def test_a_process_killed_after_its_resume_checkpoint_loses_no_kept_work(tmp_path):
    """A real process is killed while the resumed step runs (its 'resume' checkpoint is
    committed): the next resume applies a's kept work once, with its Command, and b keeps
    its task id throughout."""
    db = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def child(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", CHILD, str(db), mode], env=env,
                              capture_output=True, text=True, timeout=60)

    failed, killed, done = child("fail"), child("kill"), child("done")
    assert killed.returncode == 9 and done.returncode == 0, done.stderr
    ids = {failed.stdout.split()[0], killed.stdout.split()[0], done.stdout.splitlines()[0]}
    assert len(ids) == 1
    assert done.stdout.splitlines()[1] == "['a', 'b', 'x']"
