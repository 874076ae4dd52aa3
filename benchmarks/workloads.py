"""The benchmark workloads, built on statemachine (see benchmarks/__main__.py)."""

from __future__ import annotations

import operator
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, StateGraph

MODES = ("none", "memory", "sqlite")


class LoopState(BaseModel):
    count: int = 0
    items: Annotated[list[str], operator.add] = []


class FanState(BaseModel):
    items: Annotated[list[int], operator.add] = []
    total: int = 0


@dataclass
class Result:
    workload: str
    mode: str
    steps: int
    seconds: float
    db_bytes: int | None = None
    peak_kib: float | None = None
    extra: dict[str, Any] | None = None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else float("inf")


def loop_graph(iterations: int) -> StateGraph:
    """work -> check -> work ... ; exits after `iterations`; each iteration appends one item."""
    def work(state: LoopState) -> dict:
        return {"count": state.count + 1, "items": [f"item-{state.count}"]}

    def check(state: LoopState) -> None:
        return None

    def route(state: LoopState) -> str:
        return END if state.count >= iterations else "work"

    g = StateGraph(LoopState)
    g.add_node("work", work)
    g.add_node("check", check)
    g.add_edge(START, "work")
    g.add_edge("work", "check")
    g.add_conditional_edges("check", route, ["work", END])
    return g


def chain_graph(length: int) -> StateGraph:
    """A linear graph of `length` nodes; each increments and appends."""
    def stage(state: LoopState) -> dict:
        return {"count": state.count + 1, "items": [f"s{state.count}"]}

    g = StateGraph(LoopState)
    names = [f"n{i}" for i in range(length)]
    for name in names:
        g.add_node(name, stage)
    g.add_edge(START, names[0])
    for a, b in pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


def fanout_graph(width: int) -> StateGraph:
    """START fans out to `width` parallel nodes; a join node sums their items."""
    g = StateGraph(FanState)
    names = [f"w{i}" for i in range(width)]
    for i, name in enumerate(names):
        g.add_node(name, lambda state, _i=i: {"items": [_i]})
        g.add_edge(START, name)
    g.add_node("join", lambda state: {"total": sum(state.items)})
    g.add_edge(names, "join")
    g.add_edge("join", END)
    return g


def _checkpointer(mode: str, directory: Path) -> tuple[Any, Path | None]:
    if mode == "none":
        return None, None
    if mode == "memory":
        return MemoryCheckpointer(), None
    path = directory / f"bench-{time.perf_counter_ns()}.db"
    return SQLiteCheckpointer(path), path


def _db_bytes(saver: Any, path: Path | None) -> int | None:
    if path is None:
        return None
    saver.close()  # folds the WAL into the file
    return os.path.getsize(path)


def timed(workload: str, mode: str, graph: StateGraph, runs: int, steps_per_run: int,
          make_input: Callable[[int], dict], directory: Path) -> Result:
    """Time `runs` invocations, then repeat one under tracemalloc for the peak memory (tracing
    slows Python several times over, so it never overlaps the timing)."""
    saver, path = _checkpointer(mode, directory)
    app = graph.compile(checkpointer=saver)
    start = time.perf_counter()
    for i in range(runs):
        app.invoke(make_input(i), thread_id=f"{workload}-{i}", max_steps=1_000_000)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    app.invoke(make_input(runs), thread_id=f"{workload}-traced", max_steps=1_000_000)
    peak = tracemalloc.get_traced_memory()[1] / 1024
    tracemalloc.stop()
    return Result(workload, mode, runs * steps_per_run, seconds, _db_bytes(saver, path), peak)


def run_all(*, iterations: int, chain_length: int, fan_width: int, invocations: int,
            growth_sizes: tuple[int, ...], reads: int) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for mode in MODES:
            results.append(timed("loop", mode, loop_graph(iterations), 1, 2 * iterations,
                                 lambda i: {"count": 0}, directory))
            results.append(timed("chain", mode, chain_graph(chain_length), invocations,
                                 chain_length, lambda i: {"count": 0}, directory))
            results.append(timed("fanout", mode, fanout_graph(fan_width), invocations, 2,
                                 lambda i: {}, directory))
        results.append(latest_read(iterations, reads, directory))
        results += growth(growth_sizes, directory)
    return results


def latest_read(iterations: int, reads: int, directory: Path) -> Result:
    """Median time of get_state on a finished `iterations`-long thread."""
    path = directory / "read.db"
    with SQLiteCheckpointer(path) as saver:
        app = loop_graph(iterations).compile(checkpointer=saver)
        app.invoke({"count": 0}, thread_id="read")
        times = []
        for _ in range(reads):
            start = time.perf_counter()
            app.get_state("read")
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return Result("latest-read", "sqlite", 1, median,
                  extra={"median_ms": round(median * 1000, 3), "history_steps": 2 * iterations})


def growth(sizes: tuple[int, ...], directory: Path) -> list[Result]:
    """Database bytes of the loop at several lengths, and the fitted growth exponent."""
    results = []
    for n in sizes:
        saver, path = _checkpointer("sqlite", directory)
        app = loop_graph(n).compile(checkpointer=saver)
        start = time.perf_counter()
        final = app.invoke({"count": 0}, thread_id="growth", max_steps=1_000_000)
        seconds = time.perf_counter() - start
        state_json = len(final.model_dump_json())
        results.append(Result("growth", "sqlite", 2 * n, seconds, _db_bytes(saver, path),
                              extra={"iterations": n, "state_json_bytes": state_json}))
    if len(results) >= 2:
        import math
        xs = [math.log(r.extra["iterations"]) for r in results]  # type: ignore[index]
        ys = [math.log(r.db_bytes) for r in results]  # type: ignore[arg-type]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / \
            sum((x - mean_x) ** 2 for x in xs)
        for r in results:
            r.extra["growth_exponent"] = round(slope, 3)  # type: ignore[index]
    return results
