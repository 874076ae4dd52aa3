"""The benchmark workloads on LangGraph, the same graphs as workloads.py: TypedDict state with
`Annotated[list, operator.add]`, the same nodes, edges and routers.

Modes (saver, `durability=` of invoke):
  none                 no checkpointer
  memory               InMemorySaver, their default durability ("async")
  sqlite:sync          SqliteSaver(sqlite3.connect(path, check_same_thread=False)), "sync":
                       every checkpoint committed before the next step (like-for-like with ours)
  sqlite:async         the same saver, their default durability ("async")
  sqlite:sync+normal   as sqlite:sync on a connection with PRAGMA synchronous=NORMAL, the
                       setting our checkpointer uses (SQLite's default, FULL, fsyncs each commit)
  aiosqlite:sync       AsyncSqliteSaver over aiosqlite, through ainvoke (async nodes), "sync"
  aiosqlite:async      the same, their default durability

This module imports LangGraph at import time; `benchmarks` imports it only for --compare.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import statistics
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, TypedDict

import aiosqlite
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

from .common import (
    THEIRS,
    ClosedFile,
    ExecutionLog,
    Executions,
    FirstNodeClock,
    InjectedFailure,
    Params,
    Result,
    as_node,
    chat_message,
    check_loop_result,
    measure_closed,
    new_db_path,
    peak_kib,
    reply_turn,
    sqlite_bytes,
)

MODES = ("none", "memory", "sqlite:sync", "sqlite:async", "sqlite:sync+normal",
         "aiosqlite:sync", "aiosqlite:async")
RECURSION_LIMIT = 1_000_000


class LoopState(TypedDict):
    count: int
    items: Annotated[list[str], operator.add]


class FanState(TypedDict):
    items: Annotated[list[int], operator.add]
    total: int


class ChatState(TypedDict):
    messages: Annotated[list[str], operator.add]


class AppendState(TypedDict):
    chunks: Annotated[list[str], operator.add]


def loop_graph(iterations: int, executions: Executions | None = None,
               log: ExecutionLog | None = None,
               on_work: Callable[[int], None] | None = None, *,
               asynchronous: bool = False) -> StateGraph:
    """work -> check -> work ... ; exits after `iterations`; each iteration appends one item."""
    if executions is None and log is None:
        def work(state: LoopState) -> dict:
            return {"count": state["count"] + 1, "items": [f"item-{state['count']}"]}

        def check(state: LoopState) -> None:
            return None
    else:
        def work(state: LoopState) -> dict:
            if log is not None:
                log.write(state["count"] + 1)
            if on_work is not None:
                on_work(state["count"] + 1)
            if executions is not None:
                executions.ran("work", state["count"] + 1)
            return {"count": state["count"] + 1, "items": [f"item-{state['count']}"]}

        def check(state: LoopState) -> None:
            if executions is not None:
                executions.ran("check", state["count"])
            return None

    def route(state: LoopState) -> str:
        return END if state["count"] >= iterations else "work"

    g = StateGraph(LoopState)
    g.add_node("work", as_node(work, asynchronous))
    g.add_node("check", as_node(check, asynchronous))
    g.add_edge(START, "work")
    g.add_edge("work", "check")
    g.add_conditional_edges("check", route, ["work", END])
    return g


def chain_graph(length: int, *, asynchronous: bool = False) -> StateGraph:
    def stage(state: LoopState) -> dict:
        return {"count": state["count"] + 1, "items": [f"s{state['count']}"]}

    g = StateGraph(LoopState)
    names = [f"n{i}" for i in range(length)]
    for name in names:
        g.add_node(name, as_node(stage, asynchronous))
    g.add_edge(START, names[0])
    for a, b in pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


def fanout_graph(width: int, *, asynchronous: bool = False) -> StateGraph:
    g = StateGraph(FanState)
    names = [f"w{i}" for i in range(width)]
    for i, name in enumerate(names):
        g.add_node(name, as_node(lambda state, _i=i: {"items": [_i]}, asynchronous))
        g.add_edge(START, name)
    g.add_node("join", as_node(lambda state: {"total": sum(state["items"])}, asynchronous))
    g.add_edge(names, "join")
    g.add_edge("join", END)
    return g


def chat_graph(clock: FirstNodeClock | None, *, asynchronous: bool = False) -> StateGraph:
    """START -> reply -> END: the reply appends the turn's 1,000-character answer."""
    def reply(state: ChatState) -> dict:
        if clock is not None:
            clock.node_started()
        return {"messages": [chat_message("assistant", reply_turn(len(state["messages"])))]}

    g = StateGraph(ChatState)
    g.add_node("reply", as_node(reply, asynchronous))
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def big_append_graph(chunks: list[str]) -> StateGraph:
    """A chain of len(chunks) nodes; node i appends chunks[i] (made before the run)."""
    g = StateGraph(AppendState)
    names = [f"append{i}" for i in range(len(chunks))]
    for name, chunk in zip(names, chunks, strict=True):
        g.add_node(name, lambda state, _chunk=chunk: {"chunks": [_chunk]})
    g.add_edge(START, names[0])
    for a, b in pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


def _workload(workload: str, p: Params, *, asynchronous: bool = False
              ) -> tuple[StateGraph, int, int, Any, Callable[[Any], bool]]:
    if workload == "loop":
        return (loop_graph(p.iterations, asynchronous=asynchronous), 1, 2 * p.iterations,
                {"count": 0},
                lambda s: check_loop_result(s["count"], s["items"], p.iterations))
    if workload == "chain":
        n = p.chain_length
        return (chain_graph(n, asynchronous=asynchronous), p.invocations, n, {"count": 0},
                lambda s: s["count"] == n and s["items"] == [f"s{i}" for i in range(n)])
    if workload == "fanout":
        w = p.fan_width
        return (fanout_graph(w, asynchronous=asynchronous), p.invocations, 2, {"total": 0},
                lambda s: s["total"] == w * (w - 1) // 2 and sorted(s["items"]) == list(range(w)))
    raise ValueError(f"unknown workload {workload!r}")


def _config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": RECURSION_LIMIT}


def _durability(mode: str) -> dict[str, Any]:
    """`durability=` for invoke: only the ":sync" modes set it; the others keep the default."""
    return {"durability": "sync"} if ":sync" in mode else {}


class Session:
    """One checkpointer of a sync mode, open; `close()` returns the database bytes."""

    def __init__(self, mode: str, directory: Path) -> None:
        self.mode, self.path, self.conn = mode, None, None
        self.saver: Any = None
        if mode == "memory":
            self.saver = InMemorySaver()
        elif mode.startswith("sqlite:"):
            self.path = new_db_path(directory, f"lg-{mode}")
            self.conn = sqlite3.connect(self.path, check_same_thread=False)
            if mode.endswith("+normal"):
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self.saver = SqliteSaver(self.conn)
            self.saver.setup()  # creates the tables now, not inside the timed first call
        elif mode != "none":
            raise ValueError(f"unknown sync mode {mode!r} (LangGraph: {', '.join(MODES)})")

    def compile(self, graph: StateGraph) -> Any:
        return graph.compile(checkpointer=self.saver)

    def close(self) -> int | None:
        if self.conn is None:
            return None
        self.conn.close()
        return sqlite_bytes(self.path)  # type: ignore[arg-type]


class SQLiteSession:
    """SqliteSaver on `sqlite3.connect(path, check_same_thread=False)` (new or existing file)
    with `graph` compiled on it, invoked with durability="sync" (the sqlite:sync mode): their
    side of the chat and big-append workloads (appending.py)."""

    engine, mode = THEIRS, "sqlite:sync"

    def __init__(self, path: Path, graph: StateGraph) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False)
        saver = SqliteSaver(self.conn)
        saver.setup()  # the tables (and WAL mode) now, not inside the first timed call
        self.app = graph.compile(checkpointer=saver)

    def invoke(self, value: dict[str, Any], thread: str, field: str) -> Any:
        return self.app.invoke(value, _config(thread), **_durability(self.mode))[field]

    def read(self, thread: str, field: str) -> Any:
        return self.app.get_state(_config(thread)).values[field]

    def close(self) -> ClosedFile:
        self.conn.close()
        return measure_closed(self.path, fold_wal=True)


def _run_calls(graph: StateGraph, mode: str, directory: Path,
               calls: list[tuple[Any, str]]) -> tuple[float, Any, int | None]:
    """Run invocations back to back on a new checkpointer: (seconds, last result, db bytes)."""
    if mode.startswith("aiosqlite:"):
        return asyncio.run(_arun_calls(graph, mode, directory, calls))
    session = Session(mode, directory)
    app = session.compile(graph)
    durability = _durability(mode)
    start, last = time.perf_counter(), None
    for value, thread in calls:
        last = app.invoke(value, _config(thread), **durability)
    seconds = time.perf_counter() - start
    return seconds, last, session.close()


async def _arun_calls(graph: StateGraph, mode: str, directory: Path,
                      calls: list[tuple[Any, str]]) -> tuple[float, Any, int | None]:
    path = new_db_path(directory, f"lg-{mode}")
    conn = await aiosqlite.connect(path)
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    app = graph.compile(checkpointer=saver)
    durability = _durability(mode)
    start, last = time.perf_counter(), None
    for value, thread in calls:
        last = await app.ainvoke(value, _config(thread), **durability)
    seconds = time.perf_counter() - start
    await conn.close()
    return seconds, last, sqlite_bytes(path)


def throughput(workload: str, mode: str, p: Params, directory: Path, *,
               trace: bool = True) -> Result:
    graph, runs, steps_per_run, value, check = _workload(
        workload, p, asynchronous=mode.startswith("aiosqlite"))
    seconds, last, db_bytes = _run_calls(graph, mode, directory,
                                         [(value, f"{workload}-{i}") for i in range(runs)])
    if not check(last):
        raise AssertionError(f"LangGraph {workload}/{mode}: wrong final state {last!r}")
    peak = None
    if trace:
        peak = peak_kib(lambda: _run_calls(graph, mode, directory,
                                           [(value, f"{workload}-traced")]))
    return Result(workload, mode, runs * steps_per_run, seconds, db_bytes, peak, engine=THEIRS)


def latest_read(mode: str, p: Params, directory: Path) -> Result:
    session = Session(mode, directory)
    app = session.compile(loop_graph(p.iterations))
    config = _config("read")
    app.invoke({"count": 0}, config, **_durability(mode))
    times = []
    for _ in range(p.reads):
        start = time.perf_counter()
        snapshot = app.get_state(config)
        times.append(time.perf_counter() - start)
    ok = check_loop_result(snapshot.values["count"], snapshot.values["items"], p.iterations)
    session.close()
    median = statistics.median(times)
    return Result("latest-read", mode, 1, median, engine=THEIRS,
                  extra={"median_ms": round(median * 1000, 3), "history_steps": 2 * p.iterations,
                         "state_ok": ok})


def resume(mode: str, p: Params, directory: Path) -> Result:
    session = Session(mode, directory)
    durability = _durability(mode)
    startups, totals, ok, reran = [], [], True, 0
    for rep in range(p.resume_reps):
        executions = Executions(fail_at=p.fail_at)
        app = session.compile(loop_graph(p.iterations, executions))
        config = _config(f"resume-{rep}")
        try:
            app.invoke({"count": 0}, config, **durability)
            raise AssertionError("the injected failure did not happen")
        except InjectedFailure:
            pass
        executions.arm()
        final = app.invoke(None, config, **durability)
        totals.append(time.perf_counter() - executions.armed_at)  # type: ignore[operator]
        startups.append(executions.startup_seconds)
        ok = ok and check_loop_result(final["count"], final["items"], p.iterations) \
            and executions.counts[("work", p.fail_at)] == 2
        reran += executions.reran(unfinished=p.fail_at)
    db_bytes = session.close()
    startup = statistics.median(startups)
    return Result("resume", mode, 1, startup, db_bytes, engine=THEIRS, extra={
        "startup_ms": round(startup * 1000, 3),
        "resume_total_ms": round(statistics.median(totals) * 1000, 1),
        "result_ok": ok, "finished_reran": reran, "reps": p.resume_reps})


def growth_point(iterations: int, directory: Path, mode: str = "sqlite:sync") -> Result:
    session = Session(mode, directory)
    app = session.compile(loop_graph(iterations))
    start = time.perf_counter()
    app.invoke({"count": 0}, _config("growth"), **_durability(mode))
    seconds = time.perf_counter() - start
    return Result("growth", mode, 2 * iterations, seconds, session.close(), engine=THEIRS,
                  extra={"iterations": iterations})


def crash_child(phase: str, mode: str, db: Path, log: Path, iterations: int,
                crash_at: int, exit_code: int) -> dict[str, Any]:
    """See workloads.crash_child; the thread is resumed with invoke(None, config)."""
    if not mode.startswith("sqlite:"):
        raise ValueError(f"the crash workload runs on SqliteSaver modes, not {mode!r}")
    execution_log = ExecutionLog(log)

    def crash(iteration: int) -> None:
        if phase == "crash" and iteration == crash_at:
            import os
            os._exit(exit_code)

    conn = sqlite3.connect(db, check_same_thread=False)
    if mode.endswith("+normal"):
        conn.execute("PRAGMA synchronous=NORMAL")
    app = loop_graph(iterations, log=execution_log, on_work=crash).compile(
        checkpointer=SqliteSaver(conn))
    config = _config("crash")
    if phase == "crash":
        app.invoke({"count": 0}, config, **_durability(mode))
        return {"crashed": False}
    snapshot = app.get_state(config)
    recovered = snapshot.values.get("count", 0) if snapshot.values else 0
    start = time.perf_counter()
    final = app.invoke(None, config, **_durability(mode))
    seconds = time.perf_counter() - start
    conn.close()
    return {"recovered": recovered, "resume_seconds": seconds,
            "result_ok": check_loop_result(final["count"], final["items"], iterations)}
