"""Getting a run back from the command line, as an operator does: `update`, `fork` and
`rollback` (with `resume`, `show` and `history`) in subprocesses on a real SQLite file. Each
command says what it did and prints the commands that continue and undo it; the tests run
those printed commands as they are."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from test_cli import NOT_FOUND, OK, RUN_FAILED, USAGE, cli, run_words

TRIP = "tests.cli_graphs:trip"


def printed(stdout: str, label: str) -> list[str]:
    """The command a recovery command printed after `label:`."""
    lines = [line for line in stdout.splitlines() if line.strip().startswith(f"{label}:")]
    assert len(lines) == 1, stdout
    return shlex.split(lines[0].split(f"{label}:", 1)[1])


def state(db: Path, thread: str) -> dict:
    shown = cli("show", "--db", str(db), "--thread", thread, "--graph", TRIP)
    assert shown.returncode == OK, shown.stderr
    return json.loads(shown.stdout)


def head(db: Path, thread: str) -> dict:
    rows = cli("history", "--db", str(db), "--thread", thread, "--json")
    assert rows.returncode == OK, rows.stderr
    return json.loads(rows.stdout)[0]


def failed_run(db: Path, thread: str = "t", **input_: object) -> None:
    ran = cli("run", TRIP, "--db", str(db), "--thread", thread, "--input",
              json.dumps({"poisoned": True, **input_}))
    assert ran.returncode == RUN_FAILED, ran.stderr
    assert "card declined" in ran.stderr


def test_a_poisoned_thread_is_fixed_with_update_then_resume_and_the_undo_restores_it(tmp_path):
    db = tmp_path / "runs.db"
    failed_run(db)
    before = head(db, "t")
    assert before["status"] == "failed" and before["next"] == ["pay"]

    fixed = cli("update", TRIP, "--db", str(db), "--thread", "t", "--values",
                '{"poisoned": false}')
    assert fixed.returncode == OK, fixed.stderr
    assert f"after checkpoint {before['checkpoint_id']}" in fixed.stdout
    assert "status failed, next: pay" in fixed.stdout
    assert "fields: poisoned" in fixed.stdout  # the fields, never their values
    assert state(db, "t")["poisoned"] is False

    # the printed undo puts the thread back exactly: the poisoned state, the same task due
    undo = run_words(printed(fixed.stdout, "undo"))
    assert undo.returncode == OK, undo.stderr
    assert state(db, "t")["poisoned"] is True and head(db, "t")["next"] == ["pay"]
    # and the fix again, then the printed continue command finishes the run
    again = cli("update", TRIP, "--db", str(db), "--thread", "t", "--values",
                '{"poisoned": false}')
    resumed = run_words(printed(again.stdout, "continue"))
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout)["log"] == ["hotel", "flight", "pay"]
    assert head(db, "t")["status"] == "done"


def test_update_as_a_node_routes_on_from_it(tmp_path):
    db = tmp_path / "runs.db"
    failed_run(db)
    done = cli("update", TRIP, "--db", str(db), "--thread", "t", "--as-node", "pay",
               "--values", '{"log": ["paid by phone"]}', "--json")
    assert done.returncode == OK, done.stderr
    row = json.loads(done.stdout)
    assert row["kind"] == "update" and row["status"] == "done" and row["next"] == []
    assert state(db, "t")["log"] == ["hotel", "flight", "paid by phone"]


def test_fork_branches_off_an_older_checkpoint_on_the_thread_or_to_a_new_one(tmp_path):
    db = tmp_path / "runs.db"
    ran = cli("run", TRIP, "--db", str(db), "--thread", "t")
    assert ran.returncode == OK, ran.stderr
    rows = json.loads(cli("history", "--db", str(db), "--thread", "t", "--json").stdout)
    before_flight = next(r for r in rows if r["next"] == ["flight"])

    to_new = cli("fork", TRIP, "--db", str(db), "--thread", "t", "--checkpoint",
                 before_flight["checkpoint_id"], "--to", "t2")
    assert to_new.returncode == OK, to_new.stderr
    assert "onto new thread t2" in to_new.stdout and "next: flight" in to_new.stdout
    assert head(db, "t2")["status"] == "interrupted"
    resumed = run_words(printed(to_new.stdout, "continue"))
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout)["log"] == ["hotel", "flight", "pay"]
    assert head(db, "t")["status"] == "done"  # the source is left as it was
    dropped = run_words(printed(to_new.stdout, "undo"))  # delete the new thread
    assert dropped.returncode == OK and "t2" not in cli("threads", "--db", str(db)).stdout

    same = cli("fork", TRIP, "--db", str(db), "--thread", "t", "--checkpoint",
               before_flight["checkpoint_id"], "--json")
    assert same.returncode == OK, same.stderr
    assert json.loads(same.stdout)["next"] == ["flight"]
    assert state(db, "t")["log"] == ["hotel"]
    assert cli("resume", TRIP, "--db", str(db), "--thread", "t").returncode == OK
    assert state(db, "t")["log"] == ["hotel", "flight", "pay"]


def test_a_failed_compensation_is_kept_shown_explained_and_continued(tmp_path):
    db, down = tmp_path / "runs.db", tmp_path / "airline-down"
    failed_run(db, airline_down=str(down))
    down.touch()
    stopped = cli("rollback", TRIP, "--db", str(db), "--thread", "t")
    assert stopped.returncode == RUN_FAILED, stopped.stderr
    assert "compensation of node 'flight' (step 1) failed" in stopped.stdout
    assert "ConnectionError: airline API down" in stopped.stdout

    row = head(db, "t")
    assert row["status"] == "rollback_failed"
    assert row["error"] == "ConnectionError: airline API down"
    shown = cli("history", "--db", str(db), "--thread", "t")
    assert "airline API down" in shown.stdout and "card declined" in shown.stdout
    refused = cli("resume", TRIP, "--db", str(db), "--thread", "t")
    assert refused.returncode == USAGE
    assert "rollback stopped at the compensation of node 'flight'" in refused.stderr

    down.unlink()
    retried = run_words(printed(stopped.stdout, "after fixing the cause, continue the rollback"))
    assert retried.returncode == OK, retried.stderr
    assert "flight (step 1), hotel (step 0)" in retried.stdout
    assert head(db, "t")["status"] == "compensated"
    assert state(db, "t")["log"] == ["hotel", "flight", "cancel flight", "cancel hotel"]
    again = cli("rollback", TRIP, "--db", str(db), "--thread", "t")
    assert again.returncode == OK and "already rolled back" in again.stdout


def test_recovery_commands_name_what_is_missing(tmp_path):
    db = tmp_path / "runs.db"
    failed_run(db)
    assert cli("update", TRIP, "--db", str(db), "--thread", "nope", "--values",
               "{}").returncode == NOT_FOUND
    bad = cli("update", TRIP, "--db", str(db), "--thread", "t", "--values", "[1]")
    assert bad.returncode == USAGE and "--values must be a JSON object" in bad.stderr
    taken = cli("fork", TRIP, "--db", str(db), "--thread", "t", "--checkpoint",
                head(db, "t")["checkpoint_id"], "--to", "t")
    assert taken.returncode == USAGE and "already exists" in taken.stderr
    gone = cli("fork", TRIP, "--db", str(db), "--thread", "t", "--checkpoint", "999")
    assert gone.returncode == NOT_FOUND and "no checkpoint '999'" in gone.stderr


def test_a_failed_row_names_the_node_that_failed_not_the_one_before_it(tmp_path):
    db = tmp_path / "runs.db"
    failed_run(db)
    row = head(db, "t")
    assert row["status"] == "failed" and row["nodes"] == ["flight"]
    assert row["failed_nodes"] == ["pay"]
    shown = cli("history", "--db", str(db), "--thread", "t")
    assert "failed in pay" in shown.stdout
    fixed = cli("update", TRIP, "--db", str(db), "--thread", "t", "--values",
                '{"poisoned": false}')
    assert fixed.returncode == OK
    assert cli("resume", TRIP, "--db", str(db), "--thread", "t").returncode == OK
    rows = json.loads(cli("history", "--db", str(db), "--thread", "t", "--json").stdout)
    # the update kept the step failed, with its error and what failed
    assert [(r["kind"], r["failed_nodes"]) for r in rows if r["status"] == "failed"] == [
        ("update", ["pay"]), ("step", ["pay"])]
    assert rows[0]["status"] == "done" and rows[0]["failed_nodes"] == []


def test_a_thread_resumed_with_another_graph_is_refused_and_its_error_kept(tmp_path):
    from checkpoints import SQLiteCheckpointer
    from statemachine import END, START, GraphMismatchError, StateGraph, ThreadStateError
    from tests.cli_graphs import TripState
    from tests.cli_graphs import trip as trip_graph

    db = tmp_path / "runs.db"
    failed_run(db)
    other = StateGraph(TripState)
    other.add_node("hotel", lambda state: {"log": ["other hotel"]})
    other.add_edge(START, "hotel")
    other.add_edge("hotel", END)
    app = other.compile(checkpointer=SQLiteCheckpointer(db), name="other")
    before = app.get_state("t")

    with pytest.raises(GraphMismatchError, match=r"thread 't' was run by graph 'TripStateGraph' "
                       r"\(structure [0-9a-f]{12}\), and this graph 'other' has another "
                       r"structure \([0-9a-f]{12}: nodes removed: flight, pay\)") as refused_:
        app.resume("t")
    assert isinstance(refused_.value, ThreadStateError)
    assert (refused_.value.stored, refused_.value.graph) == ("TripStateGraph", "other")
    after = trip_graph.compile(checkpointer=SQLiteCheckpointer(db)).get_state("t")
    assert after.checkpoint_id == before.checkpoint_id and after.error == before.error
    assert "card declined" in (after.error or "")
    # and moving it on purpose is refused too: 'other' could never run the due node
    with pytest.raises(ThreadStateError, match=r"due to run node 'pay', which graph 'other' "
                       r"does not have"):
        app.rebind("t")
    # from the command line: a graph of another state model, refused naming both graphs
    refused = cli("resume", "tests.cli_graphs:passing", "--db", str(db), "--thread", "t")
    assert refused.returncode == USAGE, refused.stderr
    assert "was run by graph 'TripStateGraph'" in refused.stderr
    assert head(db, "t")["error"] == before.error


def test_the_undo_of_an_update_of_an_older_checkpoint_restores_the_head_it_replaced(tmp_path):
    db = tmp_path / "runs.db"
    failed_run(db)
    rows = json.loads(cli("history", "--db", str(db), "--thread", "t", "--json").stdout)
    failed_head, first = rows[0], rows[-1]
    branched = cli("update", TRIP, "--db", str(db), "--thread", "t", "--checkpoint",
                   first["checkpoint_id"], "--values", '{"poisoned": false}')
    assert branched.returncode == OK, branched.stderr
    assert head(db, "t")["next"] == ["hotel"]
    undone = run_words(printed(branched.stdout, "undo"))
    assert undone.returncode == OK, undone.stderr
    back = head(db, "t")
    assert (back["status"], back["next"], back["pending_writes"]) == (
        failed_head["status"], failed_head["next"], failed_head["pending_writes"])
    assert state(db, "t")["poisoned"] is True and state(db, "t")["log"] == ["hotel", "flight"]


def test_a_new_version_is_refused_with_the_rebind_command_and_rebind_moves_threads(tmp_path):
    """Deploying a graph with another structure: its in-flight threads are refused with the
    command that moves them; `rebind --all` moves every thread of the old version; the
    threads list says which graph runs each thread."""
    db, flag = tmp_path / "runs.db", tmp_path / "flag"
    for thread in ("o-1", "o-2"):
        ran = cli("run", "tests.cli_graphs:shipping_v1", "--db", str(db), "--thread", thread,
                  "--input", json.dumps({"flag": str(flag)}))
        assert ran.returncode == RUN_FAILED, ran.stderr
    flag.touch()
    refused = cli("resume", "tests.cli_graphs:shipping_v2", "--db", str(db), "--thread", "o-1")
    assert refused.returncode == USAGE
    assert "thread 'o-1' was run by graph 'shipping' (structure " in refused.stderr
    assert "nodes added: audit" in refused.stderr
    moved = run_words(shlex.split(refused.stderr.split("on purpose: ")[-1].strip()))
    assert moved.returncode == OK, moved.stderr
    assert "thread o-1: now bound to graph 'shipping'" in moved.stdout
    resumed = cli("resume", "tests.cli_graphs:shipping_v2", "--db", str(db), "--thread", "o-1")
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout)["log"] == ["charge", "ship", "audit"]

    every = cli("rebind", "tests.cli_graphs:shipping_v2", "--db", str(db), "--all")
    assert every.returncode == OK, every.stderr
    assert "thread o-2: now bound" in every.stdout and "o-1" not in every.stdout
    listed = json.loads(cli("threads", "--db", str(db), "--json").stdout)
    structures = {row["thread_id"]: (row["graph"], row["graph_structure"]) for row in listed}
    assert structures["o-1"] == structures["o-2"] and structures["o-1"][0] == "shipping"
    again = cli("rebind", "tests.cli_graphs:shipping_v2", "--db", str(db), "--all")
    assert "nothing to do" in again.stdout
    # the old version is now refused the same way, and the same command moves it back
    old = cli("resume", "tests.cli_graphs:shipping_v1", "--db", str(db), "--thread", "o-2")
    assert old.returncode == USAGE and "nodes removed: audit" in old.stderr
    usage = cli("rebind", "tests.cli_graphs:shipping_v2", "--db", str(db))
    assert usage.returncode == USAGE and "--thread ID, or pass --all" in usage.stderr


def test_a_thread_poisoned_by_a_bad_event_is_forked_at_its_pause_and_given_a_good_one(tmp_path):
    """A bad event fails the waiting node, and every resume delivers it again. The pause is
    still its own checkpoint: fork there, and the thread waits for the event anew."""
    db, graph = tmp_path / "runs.db", "tests.cli_graphs:approval"
    paused = cli("run", graph, "--db", str(db), "--thread", "a", "--input",
                 '{"request": "laptop"}')
    assert paused.returncode == OK, paused.stderr
    poisoned = cli("resume", graph, "--db", str(db), "--thread", "a", "--event",
                   '{"approval": "yes"}')  # the node wants {"ok": ...}
    assert poisoned.returncode == RUN_FAILED and "TypeError" in poisoned.stderr
    again = cli("resume", graph, "--db", str(db), "--thread", "a")
    assert again.returncode == RUN_FAILED and "TypeError" in again.stderr  # still poisoned
    rows = json.loads(cli("history", "--db", str(db), "--thread", "a", "--json").stdout)
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("resume", "failed"), ("event", "failed"), ("step", "interrupted"), ("input", "running")]
    pause = rows[2]
    assert pause["waits_for"] == ["approval"] and pause["error"] is None

    forked = cli("fork", graph, "--db", str(db), "--thread", "a", "--checkpoint",
                 pause["checkpoint_id"])
    assert forked.returncode == OK, forked.stderr
    waiting = run_words(printed(forked.stdout, "continue"))
    assert waiting.returncode == OK, waiting.stderr
    assert "waiting for event 'approval'" in waiting.stderr
    done = cli("resume", graph, "--db", str(db), "--thread", "a", "--event",
               '{"approval": {"ok": true}}')
    assert done.returncode == OK, done.stderr
    assert json.loads(done.stdout) == {"request": "laptop", "approved": True,
                                       "log": ["submitted laptop", "decided"]}
