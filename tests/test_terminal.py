"""Stored text cannot drive the terminal: thread ids and errors holding escape sequences (clear
screen, window title, hyperlinks, C1 controls, carriage returns) or rich markup are printed
visibly and literally by every command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph
from statemachine.terminal import json_safe, safe, visible
from tests.test_cli import ENV, ROOT

HOSTILE = ("\x1b[2J\x1b]0;pwned\x07\x9b31m\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
           "\rOVER\u202eTXT [red]x[/red] [link=http://evil.example]l[/link]")
THREAD = "t\x1b[2J[bold]b[/bold]\x9b\r\n2"
RAW = ("\x1b", "\x9b", "\x07", "\r", "\u202e")


class State(BaseModel):
    count: int = 0


def explode(state: State) -> dict:
    raise RuntimeError(HOSTILE)


hostile = StateGraph(State)
hostile.add_node(f"node{HOSTILE[:4]}", explode)
hostile.add_edge(START, f"node{HOSTILE[:4]}")
hostile.add_edge(f"node{HOSTILE[:4]}", END)


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "statemachine", *args], cwd=ROOT, env=ENV,
                          capture_output=True, timeout=60)


def assert_inert(result: subprocess.CompletedProcess[bytes]) -> str:
    """The output holds no raw control character; returns it as text."""
    for stream in (result.stdout, result.stderr):
        text = stream.decode()
        for raw in RAW:
            assert raw not in text, (raw, text)
    return result.stdout.decode() + result.stderr.decode()


@pytest.fixture
def db(tmp_path):
    """A database whose thread THREAD failed with HOSTILE, and holds a job of THREAD too."""
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = hostile.compile(checkpointer=saver)
        with pytest.raises(RuntimeError):
            app.invoke({}, thread_id=THREAD)
        app.submit({}, f"{THREAD}-job")
    return path


def test_reading_commands_print_hostile_ids_and_errors_visibly_and_literally(db):
    shown = [assert_inert(r) for r in (
        run("threads", "--db", str(db)), run("history", "--db", str(db), "--thread", THREAD),
        run("show", "--db", str(db), "--thread", THREAD), run("jobs", "--db", str(db)),
        run("history", "--db", str(db), "--thread", THREAD + "x"))]
    threads, history, show, jobs, missing = shown
    for text in (threads, history, show, jobs):
        assert "[bold]b[/bold]" in text  # markup printed as it is, not applied
        assert r"t\x1b[2J[bold]b[/bold]\x9b\r\n2" in text
    for text in (threads, history, show):
        assert r"\x1b]0;pwned\x07\x9b31m" in text and r"\rOVER\u202eTXT" in text
        assert "[red]x[/red] [link=http://evil.example]l[/link]" in text
    assert r"no thread 't\x1b[2J[bold]b[/bold]\x9b\r\n2x'" in missing


def test_json_output_carries_no_raw_c1_or_bidi_controls_and_decodes_to_the_same_text(db):
    for args in (("threads", "--json"), ("history", "--thread", THREAD, "--json"),
                 ("jobs", "--json")):
        result = run(*args, "--db", str(db))
        assert_inert(result)
        rows = json.loads(result.stdout)
        assert all(row.get("thread_id", THREAD).startswith(THREAD) for row in rows)
    history = json.loads(run("history", "--thread", THREAD, "--json", "--db", str(db)).stdout)
    assert HOSTILE in history[0]["error"]


def test_run_and_resume_print_a_hostile_error_and_thread_visibly(db):
    target = "tests.test_terminal:hostile"
    ran = run("run", target, "--db", str(db), "--thread", THREAD + "new")
    resumed = run("resume", target, "--db", str(db), "--thread", THREAD)
    for result in (ran, resumed):
        assert result.returncode == 1
        text = assert_inert(result)
        assert r"\x1b]0;pwned" in text and "[red]x[/red]" in text
        # every line naming the error shows it whole: BEL and CR are not dropped
        failed = [line for line in text.splitlines() if "pwned" in line]
        assert failed and all(r"\x1b]0;pwned\x07" in line for line in failed), failed


@given(st.text())
def test_visible_leaves_no_control_character_and_keeps_everything_else(text):
    shown = visible(text, one_line=True)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert visible(text).replace("\n", "") == visible(text.replace("\n", ""))
    assert safe(text).plain == visible(text)
    assert json.loads(json_safe(json.dumps(text, ensure_ascii=False))) == text
    if text.isprintable():
        assert shown == text


def test_a_hint_shows_a_hostile_id_exactly(db):
    """Hints name ids as they are: BEL and CR used to vanish (rich drops them) before the
    console could show them, so the id printed was not the real one."""
    missing = assert_inert(run("history", "--db", str(db), "--thread", THREAD + "x"))
    hint = next(line for line in missing.splitlines() if "hint:" in line)
    assert r"t\x1b[2J[bold]b[/bold]\x9b\r\n2" in hint, hint
