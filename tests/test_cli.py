"""The command line, run as a user runs it: `python -m statemachine ...` in a subprocess.

Every command and its error paths, with exit codes (0 ok, 1 run failed, 2 usage/bad input,
3 invalid graph, 4 not found). The graphs live in tests/cli_graphs.py. Independent commands of
a test run concurrently (`cli_many`) to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), "COLUMNS": "200"}
ENV.pop("NO_COLOR", None)

OK, RUN_FAILED, USAGE, INVALID, NOT_FOUND = 0, 1, 2, 3, 4


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statemachine", *args], cwd=cwd,
                          env=env or ENV, input=stdin, capture_output=True, text=True,
                          timeout=60)


def cli_many(*calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args), calls))


def resume_command(stderr: str) -> list[str]:
    """The command a failed or paused run printed after 'resume with:'."""
    lines = [line for line in stderr.splitlines() if "resume with: " in line]
    assert len(lines) == 1, stderr
    return shlex.split(lines[0].split("resume with: ", 1)[1])


def run_words(words: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(words, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)


def holder(db: Path, thread: str) -> str | None:
    """The owner token of a thread's lease, straight from the file (None: free or absent)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT owner FROM threads WHERE thread_id = ?",
                               (thread,)).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def steps(stderr: str) -> list[tuple[int, str]]:
    """The progress lines of finished steps: (step, nodes)."""
    return [(int(m[1]), m[2]) for m in
            re.finditer(r"^✓ step (\d+)  (.+?)  [\d.:]+ (?:ms|s|min)$", stderr, re.M)]


def test_help_documents_every_command_and_the_exit_codes():
    top = cli("--help")
    assert top.returncode == OK
    for command in ("validate", "draw", "run", "resume", "history", "threads", "show"):
        assert re.search(rf"^\s+{command}\s", top.stdout, re.M), command
    assert "Exit codes:" in top.stdout
    for code, meaning in (("0", "success"), ("1", "the run failed"), ("2", "usage"),
                          ("3", "the graph is invalid"), ("4", "not found")):
        assert re.search(rf"^\s+{code}\s+{meaning}", top.stdout, re.M), (code, top.stdout)
    import statemachine.cli

    doc = statemachine.cli.__doc__ or ""
    for code in ("0  success", "1  the run failed", "2  usage error", "3  the graph is invalid",
                 "4  not found"):
        assert code in doc


def test_the_console_script_entry_point_runs_the_same_commands():
    result = subprocess.run(
        [sys.executable, "-c", "from statemachine.cli import main; main()", "validate",
         "tests.cli_graphs:passing"], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == OK, result.stderr
    assert "is valid" in result.stdout


# -- validate --------------------------------------------------------------------------------------

def test_validate_accepts_valid_graphs_in_every_form():
    state_graph, by_path, warned = cli_many(
        ("validate", "tests.cli_graphs:passing"), ("validate", "examples/quickstart.py:graph"),
        ("validate", "tests.cli_graphs:unmapped", "--json"))
    for result in (state_graph, by_path):
        assert result.returncode == OK, result.stderr
        assert "is valid" in result.stdout
        assert result.stderr == ""
    assert "4 nodes (prepare, left, right, finish)" in state_graph.stdout
    assert "1 node (work)" in by_path.stdout
    # a warning is reported, but the graph is valid
    assert warned.returncode == OK
    report = json.loads(warned.stdout)
    assert (report["valid"], report["nodes"], report["problems"]) == (True, ["prepare"], [])
    assert [w.split(":")[0] for w in report["warnings"]] == ["RouterWithoutPathMapWarning"]


def test_validate_prints_every_problem_and_exits_3():
    text, as_json, at_import = cli_many(
        ("validate", "tests.cli_graphs:invalid"),
        ("validate", "tests.cli_graphs:invalid", "--json"),
        ("validate", "tests.cli_graphs_broken:app"))
    assert text.returncode == INVALID
    assert "4 problems" in text.stdout
    for code in ("unknown_node", "unreachable_node", "dead_end"):
        assert f"[{code}]" in text.stdout
    assert "'missing'" in text.stdout and "'orphan'" in text.stdout
    assert "hint:" in text.stdout

    assert as_json.returncode == INVALID
    report = json.loads(as_json.stdout)
    assert report["valid"] is False
    assert sorted(p["code"] for p in report["problems"]) == \
        ["dead_end", "dead_end", "unknown_node", "unreachable_node"]
    assert {"missing"} in [set(p["nodes"]) for p in report["problems"]]

    # the module compiles an invalid graph when it is imported: still a validation report
    assert at_import.returncode == INVALID, at_import.stderr
    assert "[unknown_node]" in at_import.stdout and "'nowhere'" in at_import.stdout


BAD_TARGETS = [
    ("tests.nope:graph", NOT_FOUND, "no module named 'tests.nope'"),
    ("tests.cli_graphs:pasing", NOT_FOUND, "has no attribute 'pasing' (did you mean 'passing'?)"),
    ("tests.cli_graphs:not_a_graph", USAGE, "is an int, not a StateGraph or CompiledGraph"),
    ("tests.cli_graphs", USAGE, "is not MODULE:ATTRIBUTE"),
    ("tests.cli_graphs_crash:app", USAGE, "importing 'tests.cli_graphs_crash' failed: KeyError"),
    ("examples/nope.py:app", NOT_FOUND, "no file 'examples/nope.py'"),
]


def test_bad_graph_targets_are_clear_errors():
    results = cli_many(*(("validate", target) for target, _, _ in BAD_TARGETS))
    for (target, code, message), result in zip(BAD_TARGETS, results, strict=True):
        assert result.returncode == code, (target, result.stderr)
        assert message in result.stderr, target
        assert result.stdout == "", target
        if target.endswith("crash:app"):  # the user's frame, not the import machinery's
            assert 'cli_graphs_crash.py", line 4' in result.stderr
            assert "importlib" not in result.stderr
        else:
            assert "Traceback" not in result.stderr, target
        if target in ("tests.cli_graphs:pasing", "tests.cli_graphs:not_a_graph",
                      "tests.cli_graphs"):
            assert "tests.cli_graphs:passing" in result.stderr  # the graphs the module offers


def test_commands_that_run_a_graph_load_it_the_same_way(tmp_path):
    db = str(tmp_path / "runs.db")
    results = cli_many(("run", "tests.cli_graphs:make_graph"),
                       ("resume", "tests.nope:graph", "--db", db, "--thread", "t1"))
    assert [r.returncode for r in results] == [USAGE, NOT_FOUND]
    assert "is a function, not a StateGraph or CompiledGraph" in results[0].stderr
    assert "no module named 'tests.nope'" in results[1].stderr


# -- run -------------------------------------------------------------------------------------------

def test_run_prints_the_final_state_as_json_and_the_steps_on_stderr():
    result = cli("run", "tests.cli_graphs:passing", "--input", '{"count": 5}')
    assert result.returncode == OK, result.stderr
    assert json.loads(result.stdout) == {"count": 6, "log": ["prepare", "left", "right",
                                                            "finish"]}
    assert steps(result.stderr) == [(0, "prepare"), (1, "left, right"), (2, "finish")]
    assert "done: 3 steps" in result.stderr
    # a node's print() goes to stderr: stdout stays parseable JSON
    assert "left says hello on stdout" in result.stderr
    assert "hello" not in result.stdout


def test_run_reads_its_input_from_a_file(tmp_path):
    (tmp_path / "input.json").write_text('{"target": 2}')
    result = cli("run", "tests.cli_graphs:counter", "--input", f"@{tmp_path / 'input.json'}",
                 "-q")
    assert result.returncode == OK, result.stderr
    assert json.loads(result.stdout)["log"] == ["step 0", "step 1"]
    assert result.stderr == ""  # --quiet


BAD_INPUT = [
    (("--input", '{"count": 0'), USAGE, "--input is not valid JSON (text): Expecting"),
    (("--input", "[1, 2]"), USAGE, "--input must be a JSON object"),
    (("--input", '{"count": "many"}'), USAGE, "count"),
    (("--input", "@no-such-input.json"), NOT_FOUND, "no file 'no-such-input.json'"),
    (("--thread", "t1"), USAGE, "--thread needs --db"),
]


def test_run_rejects_bad_input():
    results = cli_many(*(("run", "tests.cli_graphs:passing", *args) for args, _, _ in BAD_INPUT))
    for (args, code, message), result in zip(BAD_INPUT, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, args
        assert result.stdout == "", args
        assert "step 0" not in result.stderr  # nothing ran


def test_a_failed_run_without_a_database_says_it_cannot_be_resumed(tmp_path):
    result = cli("run", "tests.cli_graphs:flaky", "--input",
                 json.dumps({"flag": str(tmp_path / "flag")}))
    assert result.returncode == RUN_FAILED
    assert "ConnectionError: payment gateway unreachable" in result.stderr
    assert "raised by node 'charge' at step 1" in result.stderr
    assert "run with --db FILE --thread ID" in result.stderr
    assert "resume with" not in result.stderr
    assert result.stdout == ""


def test_a_failed_run_resumes_in_another_process_with_the_printed_command(tmp_path):
    db, flag = tmp_path / "runs.db", tmp_path / "flag"
    thread = "order 42's"  # needs quoting in a shell command
    failed = cli("run", "tests.cli_graphs:flaky", "--db", str(db), "--thread", thread,
                 "--input", json.dumps({"flag": str(flag)}))
    assert failed.returncode == RUN_FAILED
    assert failed.stdout == ""
    assert "✗ step 1  charge  failed: ConnectionError: payment gateway unreachable" \
        in failed.stderr
    assert "the run failed at step 1" in failed.stderr
    assert "kept: the updates of reserve" in failed.stderr
    command = resume_command(failed.stderr)
    assert command[-6:] == ["resume", "tests.cli_graphs:flaky", "--db", str(db), "--thread",
                            thread]
    python = shutil.which(command[0]) or command[0]
    assert os.path.realpath(python) == os.path.realpath(sys.executable)
    assert command[1:3] == ["-m", "statemachine"]

    history, show, again, drawn = cli_many(
        ("history", "--db", str(db), "--thread", thread, "--json"),
        ("show", "--db", str(db), "--thread", thread),
        ("run", "tests.cli_graphs:flaky", "--db", str(db), "--thread", thread,
         "--input", json.dumps({"flag": str(flag)})),
        ("draw", "tests.cli_graphs:flaky", "--db", str(db), "--thread", thread,
         "--format", "svg"))
    rows = json.loads(history.stdout)
    assert [(r["kind"], r["status"], r["nodes"]) for r in rows] == \
        [("step", "failed", ["prepare"]), ("input", "running", [])]
    assert rows[0]["next"] == ["charge"] and rows[0]["pending_writes"] == ["reserve"]
    assert rows[0]["error"] == "ConnectionError: payment gateway unreachable"
    assert json.loads(show.stdout) == {"flag": str(flag), "log": ["prepare"], "receipt": ""}
    assert "kept: reserve" in show.stderr and "next: charge" in show.stderr
    # new input on a failed thread is refused, with the way forward
    assert again.returncode == USAGE
    assert "would drop its pending work" in again.stderr
    assert "continue it with: " in again.stderr and "resume tests.cli_graphs:flaky" in again.stderr
    # the diagram of the failed run: the failed node in red, the visited one green
    assert drawn.returncode == OK, drawn.stderr
    root = ET.fromstring(drawn.stdout)
    classes = {g.get("id"): (g.get("class") or "").split()
               for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert "failed" in classes["charge"] and "visited" in classes["prepare"]
    assert "failed" not in classes["ship"] and "visited" not in classes["ship"]
    assert any("failed at step 1" in (t.text or "")
               for t in root.iter("{http://www.w3.org/2000/svg}text"))

    flag.touch()
    resumed = run_words(command)
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout) == {
        "flag": str(flag), "log": ["prepare", "reserve", "charge", "ship"], "receipt": "rcpt-1"}
    # only charge runs again: prepare's step was committed, reserve's update was kept
    assert steps(resumed.stderr) == [(1, "reserve (kept), charge"), (2, "ship")]

    stored, through_graph, table, done_again = cli_many(
        ("history", "--db", str(db), "--thread", thread, "--json"),
        ("history", "--db", str(db), "--thread", thread, "--json", "--graph",
         "tests.cli_graphs:flaky"),
        ("history", "--db", str(db), "--thread", thread),
        ("resume", "tests.cli_graphs:flaky", "--db", str(db), "--thread", thread))
    rows = json.loads(stored.stdout)
    assert [(r["step"], r["kind"], r["nodes"], r["status"]) for r in rows] == [
        (3, "step", ["ship"], "done"), (2, "step", ["reserve", "charge"], "running"),
        (1, "resume", [], "running"), (1, "step", ["prepare"], "failed"),
        (0, "input", [], "running")]
    # the step numbers the run printed: prepare ran at step 0, charge failed at step 1
    assert [r["nodes_step"] for r in rows] == [2, 1, None, 0, None]
    # read without the graph's code, the stored writes say the same as app.history()
    assert rows == json.loads(through_graph.stdout)
    lines = table.stdout.splitlines()
    assert re.search(r"\b3\s+step\s+ship \(step 2\)\s+done\b", table.stdout)
    assert re.search(r"\b2\s+step\s+reserve, charge \(step 1\)\s+running\s+ship\b",
                     table.stdout)
    assert re.search(r"\b1\s+resume\s+\(resume\)\s+running\s+charge\s", table.stdout)
    assert re.search(r"\b1\s+step\s+prepare \(step 0\)\s+failed in charge\s+charge "
                     r"\(kept: reserve\)", table.stdout)
    assert re.search(r"\b0\s+input\s+\(input\)\s+running\s+prepare\b", table.stdout)
    assert any(line.startswith("checkpoint ") and "ConnectionError" in line for line in lines)
    assert done_again.returncode == OK
    assert "already finished (done); nothing to run" in done_again.stderr
    assert json.loads(done_again.stdout)["receipt"] == "rcpt-1"


def test_a_compiled_graph_runs_on_the_given_database_with_a_generated_thread(tmp_path):
    db = tmp_path / "runs.db"
    result, nested = cli_many(("run", "tests.cli_graphs:compiled", "--db", str(db)),
                              ("run", "tests.cli_graphs:research", "--db", str(db),
                               "--thread", "r"))
    assert result.returncode == OK, result.stderr
    generated = re.search(r"^thread (run-\S+)$", result.stderr, re.M)
    assert generated, result.stderr
    # a subgraph's steps are shown indented under the step that runs it
    assert nested.returncode == OK, nested.stderr
    assert re.search(r"^✓ step 0  plan .*\n    ✓ step 0  search .*\n    ✓ step 1  summarize .*"
                     r"\n✓ step 1  research .*\n✓ step 2  write ", nested.stderr), nested.stderr
    assert json.loads(nested.stdout)["log"] == ["prepare", "search", "summarize", "finish"]

    listed, everything = cli_many(("threads", "--db", str(db), "--json"),
                                  ("threads", "--db", str(db), "--json", "--all"))
    assert sorted((t["thread_id"], t["status"], t["step"]) for t in json.loads(listed.stdout)) \
        == [("r", "done", 3), (generated[1], "done", 3)]
    inner = [t["thread_id"] for t in json.loads(everything.stdout)
             if t["thread_id"] not in ("r", generated[1])]
    assert len(inner) == 1 and inner[0].startswith("r::research:0@")


def test_a_run_that_waits_for_an_event_pauses_and_resumes_with_it(tmp_path):
    db = tmp_path / "runs.db"
    paused = cli("run", "tests.cli_graphs:approval", "--db", str(db), "--thread", "a1",
                 "--input", '{"request": "laptop"}')
    assert paused.returncode == OK, paused.stderr
    assert json.loads(paused.stdout)["log"] == ["submitted laptop"]
    assert "paused at step 1 waiting for event 'approval'" in paused.stderr
    command = resume_command(paused.stderr)
    assert command[-2:] == ["--event", '{"approval": ...}']  # a template to fill in

    history, no_event, wrong_json = cli_many(
        ("history", "--db", str(db), "--thread", "a1", "--json"),
        ("resume", "tests.cli_graphs:approval", "--db", str(db), "--thread", "a1"),
        ("resume", "tests.cli_graphs:approval", "--db", str(db), "--thread", "a1",
         "--event", '["approval"]'))
    head = json.loads(history.stdout)[0]
    assert (head["status"], head["waits_for"], head["next"]) == \
        ("interrupted", ["approval"], ["approve"])
    assert no_event.returncode == USAGE
    assert "waiting for event 'approval'; deliver it with --event" in no_event.stderr
    assert wrong_json.returncode == USAGE and "--event must be a JSON object" in wrong_json.stderr

    resumed = cli(*command[command.index("resume"):-1], '{"approval": {"ok": true}}')
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout) == {"request": "laptop", "approved": True,
                                          "log": ["submitted laptop", "decided"]}
    assert steps(resumed.stderr) == [(1, "approve")]


def test_an_interrupt_of_a_compiled_graph_pauses_a_run_on_the_given_database(tmp_path):
    db = tmp_path / "runs.db"
    paused = cli("run", "tests.cli_graphs:reviewed", "--db", str(db), "--thread", "r1")
    assert paused.returncode == OK, paused.stderr
    assert json.loads(paused.stdout)["log"] == ["prepare", "left", "right"]
    assert "paused at step 2 before finish (an interrupt)" in paused.stderr
    resumed = run_words(resume_command(paused.stderr))
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout)["log"] == ["prepare", "left", "right", "finish"]
    assert steps(resumed.stderr) == [(2, "finish")]


def test_a_busy_thread_is_refused_and_ctrl_c_leaves_a_resumable_run(tmp_path):
    db, flag = tmp_path / "runs.db", tmp_path / "flag"
    args = ("run", "tests.cli_graphs:slow", "--db", str(db), "--thread", "s1",
            "--input", json.dumps({"flag": str(flag)}))
    first = subprocess.Popen([sys.executable, "-m", "statemachine", *args], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until the first run holds the thread (read the file directly)
            if holder(db, "s1"):
                break
            time.sleep(0.05)
        threads = cli("threads", "--db", str(db), "--json")
        assert [(t["thread_id"], t["busy"]) for t in json.loads(threads.stdout)] == \
            [("s1", True)]
        second = cli(*args)
        assert second.returncode == 5, second.stderr
        assert "thread 's1' is being run by another run right now" in second.stderr
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and out == ""
    flag.touch()
    resumed = run_words(resume_command(err))
    assert resumed.returncode == OK, resumed.stderr
    assert json.loads(resumed.stdout)["log"] == ["flag found"]


def test_history_without_the_graph_matches_app_history_for_every_kind_of_checkpoint(tmp_path):
    import cli_graphs

    from checkpoints import SQLiteCheckpointer

    db, flag = tmp_path / "runs.db", tmp_path / "flag"
    with SQLiteCheckpointer(db) as saver:
        app = cli_graphs.flaky.compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            app.invoke({"flag": str(flag)}, thread_id="A")
        app.update_state("A", {"log": ["note"]})  # carries reserve's kept update along
        flag.touch()
        app.resume("A")
        first = app.history("A")[-1].checkpoint_id
        app.invoke(None, thread_id="A", checkpoint_id=first)  # a fork
        app.update_state("A", {"log": ["by hand"]}, as_node="ship")
        flag.unlink()
        saga = cli_graphs.saga.compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            saga.invoke({"flag": str(flag)}, thread_id="B")
        saga.rollback("B")
    raw_a, graph_a, raw_b, graph_b = cli_many(
        ("history", "--db", str(db), "--thread", "A", "--json"),
        ("history", "--db", str(db), "--thread", "A", "--json", "--graph",
         "tests.cli_graphs:flaky"),
        ("history", "--db", str(db), "--thread", "B", "--json"),
        ("history", "--db", str(db), "--thread", "B", "--json", "--graph",
         "tests.cli_graphs:saga"))
    rows_a, rows_b = json.loads(raw_a.stdout), json.loads(raw_b.stdout)
    assert rows_a == json.loads(graph_a.stdout)
    assert rows_b == json.loads(graph_b.stdout)
    assert [r["kind"] for r in rows_a] == ["update", "step", "step", "step", "fork", "step",
                                           "step", "resume", "update", "step", "input"]
    assert [r["nodes"] for r in rows_a][:4] == [["ship"], ["ship"], ["reserve", "charge"],
                                                ["prepare"]]
    assert rows_a[8]["pending_writes"] == ["reserve"]  # carried by the update
    assert rows_a[7]["pending_writes"] == ["reserve"]  # and on by the resume
    assert [(r["kind"], r["status"], r["compensates"]) for r in rows_b] == [
        ("compensation", "compensated", "book"), ("step", "failed", None),
        ("input", "running", None)]


# -- show ------------------------------------------------------------------------------------------

def test_show_is_exact_with_a_snapshot_or_the_graph_and_says_when_it_is_not(tmp_path):
    db = tmp_path / "runs.db"
    assert cli("run", "tests.cli_graphs:counter", "--db", str(db), "--thread", "c",
               "-q").returncode == OK
    with sqlite3.connect(db) as conn:  # step 2 stores its writes only (the payload outweighs)
        middle = str(conn.execute("SELECT id FROM checkpoints WHERE step = 2 AND snapshot IS "
                                  "NULL").fetchone()[0])

    raw, exact, missing = cli_many(
        ("show", "--db", str(db), "--thread", "c", "--checkpoint", middle),
        ("show", "--db", str(db), "--thread", "c", "--checkpoint", middle,
         "--graph", "tests.cli_graphs:counter"),
        ("show", "--db", str(db), "--thread", "c", "--checkpoint", "999"))
    assert raw.returncode == OK
    assert "stores no snapshot" in raw.stderr and "--graph" in raw.stderr
    dump = json.loads(raw.stdout)
    assert dump["exact"] is False and dump["checkpoint_id"] == middle
    state = dump["snapshot"]["state"]
    assert (state["count"], state["log"]) == (0, [])
    # replaying the raw writes by hand (count: last wins, log: appended) gives the exact state
    for checkpoint in dump["writes_since"]:
        for node, index, update in checkpoint["writes"]:
            assert (node, index) == ("work", 0)
            state["count"] = update.get("count", state["count"])
            state["log"] = state["log"] + update.get("log", [])
    assert exact.returncode == OK, exact.stderr
    assert json.loads(exact.stdout) == state
    assert (state["count"], state["log"]) == (2, ["step 0", "step 1"])

    assert missing.returncode == NOT_FOUND
    assert "thread 'c' has no checkpoint '999'" in missing.stderr


# -- reading commands: missing things --------------------------------------------------------------

def test_reading_commands_never_create_a_database(tmp_path):
    db = tmp_path / "missing.db"
    results = cli_many(
        ("threads", "--db", str(db)),
        ("history", "--db", str(db), "--thread", "t1"),
        ("show", "--db", str(db), "--thread", "t1"),
        ("resume", "tests.cli_graphs:flaky", "--db", str(db), "--thread", "t1"),
        ("draw", "tests.cli_graphs:flaky", "--db", str(db), "--thread", "t1"))
    for result in results:
        assert result.returncode == NOT_FOUND, result.stderr
        assert f"no database file '{db}'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_threads_and_the_errors_of_reading_commands(tmp_path):
    db = tmp_path / "runs.db"
    cli_many(("run", "tests.cli_graphs:passing", "--db", str(db), "--thread", "order-1", "-q"),
             ("run", "tests.cli_graphs:flaky", "--db", str(db), "--thread", "broken", "-q",
              "--input", json.dumps({"flag": str(tmp_path / "flag")})))
    empty, foreign = tmp_path / "empty.db", tmp_path / "foreign.db"
    empty.touch()
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    table, as_json, *results = cli_many(
        ("threads", "--db", str(db)),
        ("threads", "--db", str(db), "--json"),
        ("history", "--db", str(db), "--thread", "order-2"),
        ("resume", "tests.cli_graphs:passing", "--db", str(db), "--thread", "order-2"),
        ("threads", "--db", str(empty)),
        ("threads", "--db", str(foreign)),
        ("threads",))
    assert table.returncode == OK
    assert re.search(r"^\s*order-1\s+done\s+3\s", table.stdout, re.M), table.stdout
    assert re.search(r"^\s*broken\s+failed\s+1\s", table.stdout, re.M), table.stdout
    assert "thread broken: ConnectionError: payment gateway unreachable" in table.stdout
    rows = {t["thread_id"]: t for t in json.loads(as_json.stdout)}
    assert {k: (v["status"], v["step"], v["busy"]) for k, v in rows.items()} == \
        {"order-1": ("done", 3, False), "broken": ("failed", 1, False)}

    for result in results[:2]:
        assert result.returncode == NOT_FOUND, result.stderr
        assert "no thread 'order-2'" in result.stderr
        assert "(did you mean 'order-1'?)" in result.stderr
    assert results[2].returncode == USAGE and "is empty, not a checkpoint database" \
        in results[2].stderr
    assert empty.stat().st_size == 0
    assert results[3].returncode == USAGE and "another application" in results[3].stderr
    assert results[4].returncode == USAGE and "--db FILE is required" in results[4].stderr


# -- draw ------------------------------------------------------------------------------------------

def test_draw_prints_text_formats_and_writes_files_by_extension(tmp_path):
    svg, png, dot_file = tmp_path / "flow.svg", tmp_path / "flow.png", tmp_path / "flow.gv"
    mermaid, dot, to_svg, to_png, to_dot, unknown, binary = cli_many(
        ("draw", "tests.cli_graphs:passing"),
        ("draw", "tests.cli_graphs:passing", "--format", "dot"),
        ("draw", "tests.cli_graphs:passing", "-o", str(svg)),
        ("draw", "tests.cli_graphs:passing", "-o", str(png)),
        ("draw", "tests.cli_graphs:passing", "-o", str(dot_file)),
        ("draw", "tests.cli_graphs:passing", "-o", str(tmp_path / "flow.txt")),
        ("draw", "tests.cli_graphs:passing", "--format", "png"))
    assert mermaid.returncode == OK and "flowchart TD" in mermaid.stdout
    assert "n_prepare --> n_left" in mermaid.stdout
    assert dot.returncode == OK and dot.stdout.startswith("digraph StateGraph {")
    assert to_svg.returncode == OK and f"wrote {svg} (svg" in to_svg.stderr
    ids = {g.get("id") for g in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}g")
           if "node" in (g.get("class") or "").split()}
    assert {"prepare", "left", "right", "finish", "__start__", "__end__"} <= ids
    assert to_png.returncode == OK and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert to_dot.returncode == OK and dot_file.read_text() == dot.stdout
    assert unknown.returncode == USAGE and "cannot tell the format of 'flow.txt'" in unknown.stderr
    assert binary.returncode == USAGE and "png is binary" in binary.stderr
    assert not (tmp_path / "flow.txt").exists()


def test_draw_without_graphviz_explains_how_to_install_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**ENV, "PATH": str(empty)}
    svg = cli("draw", "tests.cli_graphs:passing", "-o", str(tmp_path / "flow.svg"), env=env)
    assert svg.returncode == NOT_FOUND
    assert "needs Graphviz's `dot` program" in svg.stderr
    assert "apt-get install graphviz" in svg.stderr and "--format mermaid" in svg.stderr
    assert not (tmp_path / "flow.svg").exists()


# -- paging ----------------------------------------------------------------------------------------

def more_command(stderr: str) -> list[str]:
    """The command a page that is not the last printed after 'more with:'."""
    lines = [line for line in stderr.splitlines() if " shown; more with: " in line]
    assert len(lines) == 1, stderr
    return shlex.split(lines[0].split("more with: ", 1)[1])


def test_history_and_threads_show_a_page_and_print_the_command_for_the_next(tmp_path):
    from checkpoints import SQLiteCheckpointer
    from tests.cli_graphs import counter

    db = tmp_path / "runs.db"
    with SQLiteCheckpointer(db) as saver:
        app = counter.compile(checkpointer=saver)
        app.invoke({"target": 120}, thread_id="long")
        for i in range(104):
            app.invoke({"target": 1}, thread_id=f"t{i:03d}")
        every_checkpoint = [s.checkpoint_id for s in app.history("long")]
    assert len(every_checkpoint) > 120

    seen: list[str] = []
    result = cli("history", "--db", str(db), "--thread", "long", "--json")
    pages = 0
    while True:
        assert result.returncode == OK, result.stderr
        rows = json.loads(result.stdout)
        pages += 1
        seen += [row["checkpoint_id"] for row in rows]
        if " shown; more with: " not in result.stderr:
            break
        assert len(rows) == 50
        command = more_command(result.stderr)
        assert command[command.index("--before") + 1] == rows[-1]["checkpoint_id"]
        result = run_words(command)
    assert seen == every_checkpoint and pages == 3  # newest first, each once

    table = cli("history", "--db", str(db), "--thread", "long", "--limit", "7")
    assert re.findall(r"^\s+(\d+)\s+\d+\s+step", table.stdout, re.M) == every_checkpoint[:7]
    assert "7 shown; more with: " in table.stderr and "--limit 7" in table.stderr
    older = run_words(more_command(table.stderr))
    assert re.findall(r"^\s+(\d+)\s+\d+\s+step", older.stdout, re.M) == \
        every_checkpoint[7:14]

    graph = cli("history", "--db", str(db), "--thread", "long", "--graph",
                "tests.cli_graphs:counter", "--limit", "5", "--json")
    assert [row["checkpoint_id"] for row in json.loads(graph.stdout)] == every_checkpoint[:5]
    assert "--graph tests.cli_graphs:counter" in graph.stderr
    assert [row["checkpoint_id"] for row in json.loads(run_words(more_command(
        graph.stderr)).stdout)] == every_checkpoint[5:10]

    first = cli("threads", "--db", str(db), "--json")
    names = [row["thread_id"] for row in json.loads(first.stdout)]
    assert len(names) == 100 and "100 shown" in first.stderr
    rest = run_words(more_command(first.stderr))
    tail = [row["thread_id"] for row in json.loads(rest.stdout)]
    assert " shown; more with: " not in rest.stderr
    assert sorted(names + tail) == sorted(["long", *(f"t{i:03d}" for i in range(104))])
    small = cli("threads", "--db", str(db), "--limit", "3", "--offset", "3")
    assert re.findall(r"^ (t\d+) ", small.stdout, re.M) == names[3:6]
