"""The benchmark workloads on statemachine (LangGraph's twins are in langgraph_workloads.py).

Modes: "none" (no checkpointer), "memory" (MemoryCheckpointer), "sqlite" (SQLiteCheckpointer,
one commit per step, through the sync API) and "sqlite-ainvoke" (the same through `ainvoke`,
with async nodes: an async application's shape).
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, StateGraph

from .common import (
    OURS,
    WORKLOADS,
    ClosedFile,
    ExecutionLog,
    Executions,
    FirstNodeClock,
    InjectedFailure,
    Params,
    Result,
    add_growth_exponent,
    as_node,
    chat_message,
    check_loop_result,
    measure_closed,
    new_db_path,
    peak_kib,
    reply_turn,
)

MODES = ("none", "memory", "sqlite", "sqlite-ainvoke", "sqlite-full")
LOOP_ONLY_MODES = ("sqlite-full",)
"""Measured on the loop alone: what the power-loss setting costs."""
MAX_STEPS = 1_000_000


class LoopState(BaseModel):
    count: int = 0
    items: Annotated[list[str], operator.add] = []


class FanState(BaseModel):
    items: Annotated[list[int], operator.add] = []
    total: int = 0


class ChatState(BaseModel):
    messages: Annotated[list[str], operator.add] = []


class AppendState(BaseModel):
    chunks: Annotated[list[str], operator.add] = []


def loop_graph(iterations: int, executions: Executions | None = None,
               log: ExecutionLog | None = None,
               on_work: Callable[[int], None] | None = None, *,
               asynchronous: bool = False) -> StateGraph:
    """work -> check -> work ... ; exits after `iterations`; each iteration appends one item.

    `executions` counts the nodes' runs (and may inject a failure), `log` writes one line per
    work execution, `on_work(iteration)` runs after that line (the crash); without them the
    nodes do nothing else.
    """
    if executions is None and log is None:
        def work(state: LoopState) -> dict:
            return {"count": state.count + 1, "items": [f"item-{state.count}"]}

        def check(state: LoopState) -> None:
            return None
    else:
        def work(state: LoopState) -> dict:
            if log is not None:
                log.write(state.count + 1)
            if on_work is not None:
                on_work(state.count + 1)
            if executions is not None:
                executions.ran("work", state.count + 1)
            return {"count": state.count + 1, "items": [f"item-{state.count}"]}

        def check(state: LoopState) -> None:
            if executions is not None:
                executions.ran("check", state.count)
            return None

    def route(state: LoopState) -> str:
        return END if state.count >= iterations else "work"

    g = StateGraph(LoopState)
    g.add_node("work", as_node(work, asynchronous))
    g.add_node("check", as_node(check, asynchronous))
    g.add_edge(START, "work")
    g.add_edge("work", "check")
    g.add_conditional_edges("check", route, ["work", END])
    return g


def chain_graph(length: int, *, asynchronous: bool = False) -> StateGraph:
    """A linear graph of `length` nodes; each increments and appends."""
    def stage(state: LoopState) -> dict:
        return {"count": state.count + 1, "items": [f"s{state.count}"]}

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
    """START fans out to `width` parallel nodes; a join node sums their items."""
    g = StateGraph(FanState)
    names = [f"w{i}" for i in range(width)]
    for i, name in enumerate(names):
        g.add_node(name, as_node(lambda state, _i=i: {"items": [_i]}, asynchronous))
        g.add_edge(START, name)
    g.add_node("join", as_node(lambda state: {"total": sum(state.items)}, asynchronous))
    g.add_edge(names, "join")
    g.add_edge("join", END)
    return g


def chat_graph(clock: FirstNodeClock | None, *, asynchronous: bool = False) -> StateGraph:
    """START -> reply -> END: the reply appends the turn's 1,000-character answer."""
    def reply(state: ChatState) -> dict:
        if clock is not None:
            clock.node_started()
        return {"messages": [chat_message("assistant", reply_turn(len(state.messages)))]}

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


class SQLiteSession:
    """A SQLiteCheckpointer on `path` (new or existing) with `graph` compiled on it, driven
    through the sync API: our side of the chat and big-append workloads (appending.py)."""

    engine, mode = OURS, "sqlite"

    def __init__(self, path: Path, graph: StateGraph) -> None:
        self.path = path
        self.saver = SQLiteCheckpointer(path)
        self.app = graph.compile(checkpointer=self.saver)

    def invoke(self, value: dict[str, Any], thread: str, field: str) -> Any:
        return getattr(self.app.invoke(value, thread_id=thread, max_steps=MAX_STEPS), field)

    def read(self, thread: str, field: str) -> Any:
        return getattr(self.app.get_state(thread).state, field)

    def close(self) -> ClosedFile:
        self.saver.close()
        return measure_closed(self.path, fold_wal=False)


def _checkpointer(mode: str, directory: Path) -> tuple[Any, Path | None]:
    if mode == "none":
        return None, None
    if mode == "memory":
        return MemoryCheckpointer(), None
    if mode in ("sqlite", "sqlite-ainvoke", "sqlite-full"):
        path = new_db_path(directory, "ours")
        return SQLiteCheckpointer(path, synchronous="full" if mode == "sqlite-full"
                                  else "normal"), path
    raise ValueError(f"unknown mode {mode!r} (ours: {', '.join(MODES)})")


def _close(saver: Any, path: Path | None) -> int | None:
    """Close the checkpointer (ours folds the WAL into the file) and measure the file."""
    if saver is not None:
        saver.close()
    return None if path is None else path.stat().st_size


def _invoker(app: Any, mode: str) -> Callable[[list[tuple[Any, str]]], tuple[float, Any]]:
    """A function running invocations (input, thread) back to back: (seconds, last result)."""
    if mode.endswith("ainvoke"):
        async def batch(calls: list[tuple[Any, str]]) -> tuple[float, Any]:
            start, last = time.perf_counter(), None
            for value, thread in calls:
                last = await app.ainvoke(value, thread_id=thread, max_steps=MAX_STEPS)
            return time.perf_counter() - start, last

        return lambda calls: asyncio.run(batch(calls))

    def run(calls: list[tuple[Any, str]]) -> tuple[float, Any]:
        start, last = time.perf_counter(), None
        for value, thread in calls:
            last = app.invoke(value, thread_id=thread, max_steps=MAX_STEPS)
        return time.perf_counter() - start, last

    return run


def _workload(workload: str, p: Params, *, asynchronous: bool = False
              ) -> tuple[StateGraph, int, int, Any, Callable[[Any], bool]]:
    """(graph, invocations, steps per invocation, input, check of the final state)."""
    if workload == "loop":
        return (loop_graph(p.iterations, asynchronous=asynchronous), 1, 2 * p.iterations,
                {"count": 0},
                lambda s: check_loop_result(s.count, s.items, p.iterations))
    if workload == "chain":
        n = p.chain_length
        return (chain_graph(n, asynchronous=asynchronous), p.invocations, n, {"count": 0},
                lambda s: s.count == n and s.items == [f"s{i}" for i in range(n)])
    if workload == "fanout":
        w = p.fan_width
        return (fanout_graph(w, asynchronous=asynchronous), p.invocations, 2, {"total": 0},
                lambda s: s.total == w * (w - 1) // 2 and sorted(s.items) == list(range(w)))
    raise ValueError(f"unknown workload {workload!r}")


def throughput(workload: str, mode: str, p: Params, directory: Path, *,
               trace: bool = True) -> Result:
    """Time the workload's invocations (each on a new thread); then, on a fresh checkpointer,
    one more invocation under tracemalloc for the peak memory."""
    graph, runs, steps_per_run, value, check = _workload(
        workload, p, asynchronous=mode.endswith("ainvoke"))
    saver, path = _checkpointer(mode, directory)
    app = graph.compile(checkpointer=saver)
    seconds, last = _invoker(app, mode)([(value, f"{workload}-{i}") for i in range(runs)])
    db_bytes = _close(saver, path)
    if not check(last):
        raise AssertionError(f"{workload}/{mode}: wrong final state {last!r}")
    peak = None
    if trace:
        saver, path = _checkpointer(mode, directory)
        run = _invoker(graph.compile(checkpointer=saver), mode)
        peak = peak_kib(lambda: run([(value, f"{workload}-traced")]))
        _close(saver, path)
    return Result(workload, mode, runs * steps_per_run, seconds, db_bytes, peak, engine=OURS)


def commit_limit(p: Params, directory: Path) -> Result:
    """SQLite's own limit for a durable loop: one bare commit per step, as our checkpointer
    commits (WAL, synchronous=NORMAL, autocommit), with nothing else: one INSERT of a row the
    size of the loop's checkpoint (~150 bytes) into an indexed table, as many as the loop has
    steps, on a fresh file. The loop's steps/s over this is the share of the limit it reaches."""
    path = new_db_path(directory, "commit-limit")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE steps (id INTEGER PRIMARY KEY, thread INTEGER NOT NULL, "
                     "step INTEGER NOT NULL, payload TEXT NOT NULL)")
        conn.execute("CREATE INDEX steps_by_thread ON steps(thread, id)")
        steps = 2 * p.iterations
        payload = '{"count": 1, "items": ["item-0"]}' + " " * 110
        runs = []
        for _ in range(max(p.rounds, 1)):
            started = time.perf_counter()
            for step in range(steps):
                conn.execute("INSERT INTO steps(thread, step, payload) VALUES (1, ?, ?)",
                             (step, payload))
            runs.append(time.perf_counter() - started)
    finally:
        conn.close()
    return Result("commit-limit", "sqlite", steps, statistics.median(runs), engine=OURS,
                  runs=runs, extra={"what": "a bare autocommit INSERT per step, WAL, "
                                            "synchronous=NORMAL; median of the rounds"})


def latest_read(mode: str, p: Params, directory: Path) -> Result:
    """Median time of get_state on a finished `iterations`-long thread."""
    saver, path = _checkpointer(mode, directory)
    app = loop_graph(p.iterations).compile(checkpointer=saver)
    app.invoke({"count": 0}, thread_id="read", max_steps=MAX_STEPS)
    times = []
    for _ in range(p.reads):
        start = time.perf_counter()
        snapshot = app.get_state("read")
        times.append(time.perf_counter() - start)
    ok = check_loop_result(snapshot.state.count, snapshot.state.items, p.iterations)
    _close(saver, path)
    median = statistics.median(times)
    return Result("latest-read", mode, 1, median, engine=OURS,
                  extra={"median_ms": round(median * 1000, 3), "history_steps": 2 * p.iterations,
                         "state_ok": ok})


def long_read(p: Params, directory: Path) -> Result:
    """latest_read on SQLite over a `long_read_iterations`-long loop: whether the read stays
    flat as the thread's history grows. Ours only: the target it serves is about our engine."""
    return latest_read("sqlite", replace(p, iterations=p.long_read_iterations), directory)


def resume(mode: str, p: Params, directory: Path) -> Result:
    """The loop fails at iteration `fail_at`; resume it. Reports the start-up (resume() called
    -> first node running; median of the repetitions) and checks the result and that no
    finished node ran again."""
    saver, path = _checkpointer(mode, directory)
    startups, totals, ok, reran = [], [], True, 0
    for rep in range(p.resume_reps):
        executions = Executions(fail_at=p.fail_at)
        app = loop_graph(p.iterations, executions).compile(checkpointer=saver)
        thread = f"resume-{rep}"
        try:
            app.invoke({"count": 0}, thread_id=thread, max_steps=MAX_STEPS)
            raise AssertionError("the injected failure did not happen")
        except InjectedFailure:
            pass
        executions.arm()
        final = app.resume(thread, max_steps=MAX_STEPS)
        totals.append(time.perf_counter() - executions.armed_at)  # type: ignore[operator]
        startups.append(executions.startup_seconds)
        ok = ok and check_loop_result(final.count, final.items, p.iterations) \
            and executions.counts[("work", p.fail_at)] == 2
        reran += executions.reran(unfinished=p.fail_at)
    db_bytes = _close(saver, path)
    startup = statistics.median(startups)
    return Result("resume", mode, 1, startup, db_bytes, engine=OURS, extra={
        "startup_ms": round(startup * 1000, 3),
        "resume_total_ms": round(statistics.median(totals) * 1000, 1),
        "result_ok": ok, "finished_reran": reran, "reps": p.resume_reps})


def growth_point(iterations: int, directory: Path) -> Result:
    """Database bytes of one `iterations`-long loop thread (the file alone: WAL folded in)."""
    saver, path = _checkpointer("sqlite", directory)
    app = loop_graph(iterations).compile(checkpointer=saver)
    start = time.perf_counter()
    final = app.invoke({"count": 0}, thread_id="growth", max_steps=MAX_STEPS)
    seconds = time.perf_counter() - start
    state_json = len(final.model_dump_json())
    return Result("growth", "sqlite", 2 * iterations, seconds, _close(saver, path), engine=OURS,
                  extra={"iterations": iterations, "state_json_bytes": state_json})


# -- the crash workload's child process (see crash.py) -----------------------------------------

def crash_child(phase: str, mode: str, db: Path, log: Path, iterations: int,
                crash_at: int, exit_code: int) -> dict[str, Any]:
    """Phase "crash": run the loop, exiting the process abruptly inside the work node at
    iteration `crash_at`. Phase "resume": report what is on disk, then resume to the end."""
    if mode != "sqlite":
        raise ValueError(f"the crash workload needs a durable mode, not {mode!r}")
    execution_log = ExecutionLog(log)

    def crash(iteration: int) -> None:
        if phase == "crash" and iteration == crash_at:
            import os
            os._exit(exit_code)

    saver = SQLiteCheckpointer(db)
    app = loop_graph(iterations, log=execution_log, on_work=crash).compile(checkpointer=saver)
    if phase == "crash":
        app.invoke({"count": 0}, thread_id="crash", max_steps=MAX_STEPS)
        return {"crashed": False}
    recovered = app.get_state("crash").state.count
    start = time.perf_counter()
    final = app.resume("crash", max_steps=MAX_STEPS)
    seconds = time.perf_counter() - start
    saver.close()
    return {"recovered": recovered, "resume_seconds": seconds,
            "result_ok": check_loop_result(final.count, final.items, iterations)}


def run_all(p: Params, directory: Path, only: Collection[str] = WORKLOADS) -> list[Result]:
    """Every workload (or those in `only`) on our engine alone (`python -m benchmarks` without
    --compare)."""
    from . import appending, workloads
    from .crash import crash_workload

    results: list[Result] = []
    for mode in MODES:
        for workload in ("loop", "chain", "fanout"):
            if workload in only and (workload == "loop" or mode not in LOOP_ONLY_MODES):
                results.append(throughput(workload, mode, p, directory))
    if "commit-limit" in only:
        results.append(commit_limit(p, directory))
    for mode in ("memory", "sqlite"):
        if "latest-read" in only:
            results.append(latest_read(mode, p, directory))
        if "resume" in only:
            results.append(resume(mode, p, directory))
    if "latest-read" in only:
        results.append(long_read(p, directory))
    if "growth" in only:
        growth = [growth_point(n, directory) for n in p.growth_sizes]
        add_growth_exponent(growth)
        results += growth
    if "crash" in only:
        results.append(crash_workload(OURS, "sqlite", p, directory))
    if "chat" in only:
        results += appending.chat_series(workloads, p.chat_sizes, p, directory)
    if "big-append" in only:
        results.append(appending.big_append(workloads, p, directory))
    return results
