"""The workload of the fault-injection suite: a three-round fan-out, with its side effects kept.

prepare -> fetch_a | fetch_b -> merge, three rounds: nine steps, fifteen tasks. Each task first
records its execution in a ledger (a SQLite file of its own, `FAULT_LEDGER`) keyed by the
task id of its run context, so after kills, takeovers and resumes the ledger shows which task
ran how often and in which process. The environment steers a run (read when a node runs, so
the CLI can load this module as `tests/fault_graph.py:graph`):

    FAULT_LEDGER   ledger file (no ledger when unset)
    FAULT_PAUSE    seconds each node sleeps before it returns (a window for a kill)
    FAULT_FAIL     "STEP:NODE:MARKER": that task raises once, creating MARKER
    FAULT_BLOCK    "STEP:NODE:READY:GO": that task creates READY, then waits for GO to exist
    FAULT_BLOB     bytes of padding each task adds to the state (fills a disk)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, StateGraph, reducers
from statemachine.types import RunContext

ROUNDS = 3
FETCHES = ("fetch_a", "fetch_b")
STEPS = 3 * ROUNDS
TASKS = (2 + len(FETCHES)) * ROUNDS


class State(BaseModel):
    round: int = 0
    total: int = 0
    log: Annotated[list[str], reducers.append] = []
    blob: Annotated[list[str], reducers.append] = []


def expected_final() -> dict:
    """The final state of every uninterrupted run (what every faulted run must end with)."""
    log: list[str] = []
    total = 0
    for number in range(ROUNDS):
        log += [f"prepare{number}", *(f"{name}{number + 1}" for name in FETCHES)]
        total += len(log)
        log.append("merge")
    return {"round": ROUNDS, "total": total, "log": log}


def ledger_rows(path: str | os.PathLike[str]) -> list[tuple[str, str, int, str, int]]:
    """(thread, task id, step, node, pid) of every task execution the ledger holds."""
    if not os.path.exists(path):
        return []
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'effects'").fetchone():
            return []  # no task has run yet
        return conn.execute("SELECT thread, task_id, step, node, pid FROM effects "
                            "ORDER BY rowid").fetchall()


def _record(context: RunContext) -> None:
    path = os.environ.get("FAULT_LEDGER")
    if not path:
        return
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS effects(thread TEXT, task_id TEXT, "
                     "step INTEGER, node TEXT, pid INTEGER)")
        conn.execute("INSERT INTO effects VALUES (?, ?, ?, ?, ?)",
                     (context.thread_id, context.task_id, context.step, context.node,
                      os.getpid()))
    finally:
        conn.close()


def _steered(context: RunContext) -> None:
    """What the environment asks of this task: fail once, or block until told to go on."""
    here = f"{context.step}:{context.node}:"
    fail = os.environ.get("FAULT_FAIL", "")
    if fail.startswith(here):
        marker = fail[len(here):]
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError(f"injected failure at step {context.step} ({context.node})")
    block = os.environ.get("FAULT_BLOCK", "")
    if block.startswith(here):
        ready, go = block[len(here):].split(":")
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)


def _task(update):
    def node(state: State, context: RunContext) -> dict:
        _record(context)
        _steered(context)
        time.sleep(float(os.environ.get("FAULT_PAUSE") or 0))
        padding = int(os.environ.get("FAULT_BLOB") or 0)
        return {**update(state), **({"blob": ["x" * padding]} if padding else {})}
    return node


def build() -> StateGraph:
    g = StateGraph(State)
    g.add_node("prepare", _task(lambda s: {"round": s.round + 1, "log": [f"prepare{s.round}"]}))
    for name in FETCHES:
        g.add_node(name, _task(lambda s, n=name: {"log": [f"{n}{s.round}"]}))
    g.add_node("merge", _task(lambda s: {"total": s.total + len(s.log), "log": ["merge"]}))
    g.add_edge(START, "prepare")
    for name in FETCHES:
        g.add_edge("prepare", name)
        g.add_edge(name, "merge")
    g.add_conditional_edges("merge", lambda s: "again" if s.round < ROUNDS else "done",
                            {"again": "prepare", "done": END})
    return g


graph = build()
