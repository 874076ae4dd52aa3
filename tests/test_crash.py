"""Crash safety with real processes: a run killed with SIGKILL resumes in a fresh process.

The child script (written into the test's directory, run with `sys.executable`) runs a
three-round workflow on a SQLite file: prepare -> fetch_a | fetch_b | fetch_c -> merge, nine
steps in all. Every node appends `step node task_id pid` to a side-effect log (fsync'd) before
it returns, so after a crash and a resume the log shows exactly which tasks ran how often:
a task whose writes were committed runs once; only the step in flight when the process died
may run again, with the same task id.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHILD = r'''
import json, os, signal, sqlite3, sys, time
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph, ThreadBusyError, ThreadStateError, reducers

DB, LOG, THREAD, MODE = sys.argv[1:5]
CRASH = json.loads(os.environ.get("CRASH") or "null")  # {"step", "node", "when"}
BLOCK = json.loads(os.environ.get("BLOCK") or "null")  # {"step", "node", "until": path}
GATE = json.loads(os.environ.get("GATE") or "null")  # {"ready": path, "go": path}
PAUSE = float(os.environ.get("PAUSE") or 0)
LEASE = float(os.environ.get("LEASE") or 30)
ROUNDS = 3
FETCHES = ("fetch_a", "fetch_b", "fetch_c")


class State(BaseModel):
    round: int = 0
    total: int = 0
    log: Annotated[list[str], reducers.append] = []


def side_effect(context):
    with open(LOG, "a") as f:
        f.write(f"{context.step} {context.node} {context.task_id} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


def at(spec, context):
    return spec is not None and spec["step"] == context.step and spec["node"] == context.node


def wait_for_siblings():
    """Until the other fetches of this step have committed their pending writes."""
    conn = sqlite3.connect(DB, timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline:
        (n,) = conn.execute(
            "SELECT count(*) FROM pending_writes WHERE checkpoint = (SELECT max(c.id) FROM "
            "checkpoints c JOIN threads t ON t.key = c.thread WHERE t.thread_id = ?)",
            (THREAD,)).fetchone()
        if n == len(FETCHES) - 1:
            return
        time.sleep(0.01)
    raise RuntimeError("the sibling writes were never committed")


def task(update):
    def node(state, context):
        if at(CRASH, context) and CRASH["when"] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(PAUSE)
        side_effect(context)
        if at(BLOCK, context):
            while not os.path.exists(BLOCK["until"]):
                time.sleep(0.02)
        if at(CRASH, context):
            if CRASH["when"] == "after_siblings":
                wait_for_siblings()
            os.kill(os.getpid(), signal.SIGKILL)
        return update(state)
    return node


def graph():
    g = StateGraph(State)
    g.add_node("prepare", task(lambda s: {"round": s.round + 1, "log": [f"prepare{s.round}"]}))
    for name in FETCHES:
        g.add_node(name, task(lambda s, n=name: {"log": [f"{n}{s.round}"]}))
    g.add_node("merge", task(lambda s: {"total": s.total + len(s.log), "log": ["merge"]}))
    g.add_edge(START, "prepare")
    for name in FETCHES:
        g.add_edge("prepare", name)
        g.add_edge(name, "merge")
    g.add_conditional_edges("merge", lambda s: "again" if s.round < ROUNDS else "done",
                            {"again": "prepare", "done": END})
    return g


with SQLiteCheckpointer(DB, lease_seconds=LEASE) as saver:
    app = graph().compile(checkpointer=saver)
    if GATE:  # started and imported; the test says when to go
        open(GATE["ready"], "w").close()
        while not os.path.exists(GATE["go"]):
            time.sleep(0.005)
    try:
        final = app.invoke({}, thread_id=THREAD) if MODE == "run" else app.resume(THREAD)
    except ThreadBusyError as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
    except ThreadStateError as exc:
        print(exc, file=sys.stderr)
        sys.exit(4)
    print(final.model_dump_json())
'''

STEPS = 9
"""prepare, fetches, merge; three rounds."""
THREAD = "order-42"


class Child:
    """One child process running the workflow on `workdir/runs.db`."""

    def __init__(self, workdir: Path, mode: str, **env: object) -> None:
        script = workdir / "child.py"
        if not script.exists():
            script.write_text(CHILD)
        environ = {**os.environ, **{k: v if isinstance(v, str) else json.dumps(v)
                                    for k, v in env.items()}}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(workdir / "runs.db"), str(workdir / "effects.log"),
             THREAD, mode], cwd=workdir, env=environ, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 20) -> Child:
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.elapsed = time.monotonic() - self.started
        self.rc = self.proc.returncode
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.communicate(timeout=10)

    @property
    def final(self) -> dict:
        assert self.rc == 0, self.err
        return json.loads(self.out)


def run(workdir: Path, mode: str, **env: object) -> Child:
    return Child(workdir, mode, **env).wait()


def effects(workdir: Path) -> list[tuple[int, str, str, int]]:
    path = workdir / "effects.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().split("\n")[:-1]:  # a line still being written is not one
        step, node, task_id, pid = line.split()
        rows.append((int(step), node, task_id, int(pid)))
    return rows


def wait_until(condition, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def query(workdir: Path, sql: str, *args: object) -> list[tuple]:
    path = workdir / "runs.db"
    assert path.exists(), "the child has not created the database yet"  # connect would
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def head(workdir: Path) -> tuple[int, str]:
    """(step, status) of the thread's latest checkpoint, read straight from the file."""
    return query(workdir, "SELECT c.step, c.status FROM checkpoints c JOIN threads t ON "
                          "t.key = c.thread WHERE t.thread_id = ? ORDER BY c.id DESC LIMIT 1",
                 THREAD)[0]


def listed_busy(workdir: Path) -> bool:
    """What `threads()` says of the thread's `busy`, read by this (another) process."""
    from checkpoints import SQLiteCheckpointer
    from statemachine._sync import run_sync

    with SQLiteCheckpointer(workdir / "runs.db") as saver:
        (info,) = run_sync(saver.threads)
    return info.busy


def lease_expires(workdir: Path) -> float | None:
    """When the thread's lease runs out unless renewed, read straight from the file."""
    rows = query(workdir, "SELECT lease_expires FROM threads WHERE thread_id = ?", THREAD)
    return rows[0][0] if rows else None


def pending_count(workdir: Path) -> int:
    """Pending writes of the thread's latest checkpoint (-1 before the file exists)."""
    if not (workdir / "runs.db").exists():
        return -1
    return query(workdir, "SELECT count(*) FROM pending_writes WHERE checkpoint = (SELECT "
                          "max(c.id) FROM checkpoints c JOIN threads t ON t.key = c.thread "
                          "WHERE t.thread_id = ?)", THREAD)[0][0]


def assert_linear_history(workdir: Path, checkpoints: int) -> None:
    """One branch: every checkpoint's parent is the one before it (no fork by a lost run)."""
    rows = query(workdir, "SELECT c.id, c.parent FROM checkpoints c JOIN threads t ON "
                          "t.key = c.thread WHERE t.thread_id = ? ORDER BY c.id", THREAD)
    assert len(rows) == checkpoints
    assert rows[0][1] is None
    for (before, _), (_, parent) in itertools.pairwise(rows):
        assert parent == before


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run: its final state, its side effects, its checkpoint count."""
    workdir = tmp_path_factory.mktemp("reference")
    child = run(workdir, "run")
    rows = effects(workdir)
    keys = Counter((step, node) for step, node, _, _ in rows)
    assert set(keys.values()) == {1} and len(keys) == 5 * 3
    assert max(step for step, _ in keys) == STEPS - 1
    count = query(workdir, "SELECT count(*) FROM checkpoints")[0][0]
    return {"final": child.final, "keys": keys, "checkpoints": count}


def check_side_effects(rows, reference, crash_step: int, first_pid: int,
                       second_pid: int) -> Counter:
    """Each task ran once, except tasks of the step in flight, which may have run twice (with
    the same task id). Returns the counts per (step, node)."""
    counts = Counter((step, node) for step, node, _, _ in rows)
    assert set(counts) == set(reference["keys"])
    for key, n in counts.items():
        assert n == 1 or (n == 2 and key[0] == crash_step), (key, n)
        ids = {task_id for step, node, task_id, _ in rows if (step, node) == key}
        assert len(ids) == 1, f"{key} ran again with another task id"
    for step, node, _, pid in rows:
        if step < crash_step:
            assert pid == first_pid, (step, node)
        elif step > crash_step:
            assert pid == second_pid, (step, node)
    return counts


CRASH_POINTS = [
    (0, "prepare", "after"),  # the first step: nothing but the input is committed
    (1, "fetch_b", "after_siblings"),  # a parallel step, two of three writes pending
    (1, "fetch_c", "before"),  # a parallel step, siblings in any state
    (5, "merge", "before"),
    (7, "fetch_a", "after_siblings"),
    (8, "merge", "after"),  # the last step
]


@pytest.mark.parametrize(("step", "node", "when"), CRASH_POINTS,
                         ids=[f"{s}-{n}-{w}" for s, n, w in CRASH_POINTS])
def test_run_killed_at_a_step_resumes_in_a_fresh_process(tmp_path, reference, step, node, when):
    crashed = run(tmp_path, "run", CRASH={"step": step, "node": node, "when": when})
    assert crashed.rc == -signal.SIGKILL, crashed.err
    # every step before the crash is committed, the one in flight is not
    assert head(tmp_path) == (step, "running")

    resumed = run(tmp_path, "resume")
    # the dead owner's 30 s lease does not hold the thread: same host, its pid is gone
    assert resumed.elapsed < 10
    assert resumed.final == reference["final"]
    assert head(tmp_path) == (STEPS, "done")
    assert_linear_history(tmp_path, reference["checkpoints"])

    counts = check_side_effects(effects(tmp_path), reference, step, crashed.pid, resumed.pid)
    assert counts[(step, node)] == (1 if when == "before" else 2)
    if when == "after_siblings":  # siblings whose writes were committed never run again
        assert all(n == 1 for (s, other), n in counts.items() if s == step and other != node)


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(after_effects=st.integers(1, 14))
def test_run_killed_at_any_moment_resumes_to_the_same_state(tmp_path_factory, reference,
                                                             after_effects):
    workdir = tmp_path_factory.mktemp("kill")
    child = Child(workdir, "run", PAUSE="0.02")
    try:
        wait_until(lambda: len(effects(workdir)) >= after_effects or child.proc.poll() is not None,
                   what="the child's side effects")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    crash_step, _ = head(workdir)

    resumed = run(workdir, "resume")
    assert resumed.final == reference["final"]
    assert_linear_history(workdir, reference["checkpoints"])
    check_side_effects(effects(workdir), reference, crash_step, child.pid, resumed.pid)


def test_killed_process_does_not_lock_its_thread(tmp_path, reference):
    never = tmp_path / "never"
    holder = Child(tmp_path, "run", BLOCK={"step": 4, "node": "fetch_b", "until": str(never)})
    try:
        wait_until(lambda: (4, "fetch_b") in {(s, n) for s, n, _, _ in effects(tmp_path)},
                   what="fetch_b to start")
        wait_until(lambda: pending_count(tmp_path) == 2, what="the siblings to commit")
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.wait()
    assert head(tmp_path) == (4, "running")
    # its lease (30 s) has not expired, but its process is gone: the listing says so
    assert not listed_busy(tmp_path)

    # new input on a run that died half-way is refused: it would drop the pending work
    refused = run(tmp_path, "run")
    assert refused.rc == 4, refused.err
    assert "resume" in refused.err

    resumed = run(tmp_path, "resume")
    assert resumed.elapsed < 10  # far less than the 30 s lease the dead process held
    assert resumed.final == reference["final"]
    counts = check_side_effects(effects(tmp_path), reference, 4, holder.pid, resumed.pid)
    assert (counts[(4, "fetch_a")], counts[(4, "fetch_b")], counts[(4, "fetch_c")]) == (1, 2, 1)


def test_second_process_on_a_running_thread_gets_thread_busy(tmp_path, reference):
    go = tmp_path / "go"
    # 2 s, beaten every 2/3 s: the holder keeps it unless it stands still for seconds
    holder = Child(tmp_path, "run", LEASE="2",
                   BLOCK={"step": 1, "node": "fetch_b", "until": str(go)})
    try:
        wait_until(lambda: (1, "fetch_b") in {(s, n) for s, n, _, _ in effects(tmp_path)},
                   what="fetch_b to start")
        first = lease_expires(tmp_path)
        # past the end of the lease seen as fetch_b started: only the heartbeat keeps it now
        wait_until(lambda: time.time() > first and lease_expires(tmp_path) > first,
                   what="the lease to outlive its first period")
        for mode in ("resume", "run"):
            other = run(tmp_path, mode)
            assert other.rc == 3, (mode, other.rc, other.err)
            assert "being run by another run" in other.err
        assert head(tmp_path) == (1, "running")
        go.touch()
        holder.wait()
    finally:
        holder.kill()
    assert holder.final == reference["final"]

    after = run(tmp_path, "resume")  # the thread is free again; done, so nothing runs
    assert after.final == reference["final"]
    counts = Counter((s, n) for s, n, _, _ in effects(tmp_path))
    assert counts == reference["keys"]
    assert_linear_history(tmp_path, reference["checkpoints"])


def test_stuck_process_loses_its_lease_and_cannot_commit_after(tmp_path, reference):
    go = tmp_path / "go"
    lease = 3.0
    stuck = Child(tmp_path, "run", LEASE=str(lease),
                  BLOCK={"step": 1, "node": "fetch_b", "until": str(go)})
    early = None
    try:
        wait_until(lambda: (1, "fetch_b") in {(s, n) for s, n, _, _ in effects(tmp_path)},
                   what="fetch_b to start")
        wait_until(lambda: pending_count(tmp_path) == 2, what="the siblings to commit")
        # the early resumer starts up (imports, opens the file) before the freeze, so what
        # races the frozen lease is its resume alone, not a process start-up
        ready, resume_now = tmp_path / "early-ready", tmp_path / "early-go"
        early = Child(tmp_path, "resume", GATE={"ready": str(ready), "go": str(resume_now)})
        wait_until(ready.exists, 60, what="the early resumer to start")
        # frozen right after a beat: never halfway through one (holding the write lock)
        beat = lease_expires(tmp_path)
        wait_until(lambda: lease_expires(tmp_path) != beat, what="a heartbeat")
        os.kill(stuck.pid, signal.SIGSTOP)  # alive but frozen, heartbeat included
        frozen_at = time.monotonic()

        # its pid lives and its lease, just renewed, holds: busy
        resume_now.touch()
        early.wait()
        assert early.rc == 3, (early.err, time.monotonic() - frozen_at)

        expires = lease_expires(tmp_path)
        wait_until(lambda: time.time() > expires, lease + 5, what="the frozen lease to expire")
        taken = run(tmp_path, "resume")  # the lease expired: the thread is taken over
        assert taken.final == reference["final"]
        checkpoints = query(tmp_path, "SELECT count(*) FROM checkpoints")[0][0]

        go.touch()
        os.kill(stuck.pid, signal.SIGCONT)
        stuck.wait()
    finally:
        stuck.kill()
        if early is not None:
            early.kill()
    # woken up, the old owner finishes its node but its commit is fenced off
    assert stuck.rc == 3, (stuck.rc, stuck.out, stuck.err)
    assert "taken over" in stuck.err
    assert query(tmp_path, "SELECT count(*) FROM checkpoints")[0][0] == checkpoints
    assert_linear_history(tmp_path, reference["checkpoints"])
    assert head(tmp_path) == (STEPS, "done")
