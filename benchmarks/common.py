"""What both sides of the benchmark share: the result record, the sizes, and the measuring
helpers (timing, peak memory, database bytes, execution logs, the growth fit).

Nothing here imports statemachine or LangGraph, so each side can be loaded on its own.
"""

from __future__ import annotations

import math
import os
import sqlite3
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

OURS = "statemachine"
THEIRS = "langgraph"


@dataclass(frozen=True)
class Params:
    """The sizes of one benchmark run (FULL or QUICK in __main__)."""

    iterations: int  # loop length (each iteration is two steps: work, check)
    chain_length: int
    fan_width: int
    invocations: int  # chain and fan-out invocations, each on a new thread
    growth_sizes: tuple[int, ...]
    reads: int  # latest-state reads, of which the median is reported
    fail_at: int  # the iteration (1-based) that fails or crashes in resume and crash
    resume_reps: int  # fail-then-resume repetitions, of which the median start-up is reported
    rounds: int  # alternating ours/theirs rounds of the throughput workloads


@dataclass
class Result:
    workload: str
    mode: str
    steps: int
    seconds: float
    db_bytes: int | None = None
    peak_kib: float | None = None
    extra: dict[str, Any] | None = None
    engine: str = OURS
    runs: list[float] = field(default_factory=list)
    """Seconds of each round (the median is `seconds`)."""

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else float("inf")

    def as_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "workload": self.workload, "mode": self.mode,
                "steps": self.steps, "seconds": self.seconds,
                "steps_per_second": self.steps_per_second, "db_bytes": self.db_bytes,
                "peak_kib": self.peak_kib, "extra": self.extra or {}, "runs": self.runs}


def median_result(results: list[Result]) -> Result:
    """One result for several rounds of the same measurement: the median time, with the
    bytes, memory and notes of the first round (they do not depend on timing)."""
    first = results[0]
    runs = [r.seconds for r in results]
    return Result(first.workload, first.mode, first.steps, statistics.median(runs),
                  first.db_bytes, first.peak_kib, first.extra, first.engine, runs)


def peak_kib(call: Callable[[], Any]) -> float:
    """Peak Python memory allocated while `call()` runs, in KiB (tracemalloc: every thread).

    Tracing slows Python several times over, so callers never time a traced call.
    """
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


def sqlite_bytes(path: Path) -> int:
    """Bytes of a closed SQLite database on disk, its write-ahead log folded in first.

    Our checkpointer folds the log itself on close; for other writers this opens the file,
    checkpoints the log (TRUNCATE) and counts whatever is left: the file, plus any log.
    """
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    total = 0
    for suffix in ("", "-wal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            total += part.stat().st_size
    return total


def new_db_path(directory: Path, label: str) -> Path:
    return directory / f"{label.replace(':', '-').replace('+', '-')}-{time.perf_counter_ns()}.db"


def fit_exponent(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of log(bytes) over log(size): 1.0 is linear growth, 2.0 quadratic."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(b) for _, b in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mean_x) ** 2 for x in xs)


def add_growth_exponent(results: list[Result]) -> None:
    """Note the fitted growth exponent of these growth results (one per size) in each."""
    if len(results) >= 2:
        slope = fit_exponent([(r.extra["iterations"], r.db_bytes)  # type: ignore[index,misc]
                              for r in results])
        for r in results:
            r.extra["growth_exponent"] = round(slope, 3)  # type: ignore[index]


class InjectedFailure(RuntimeError):
    """Raised by the loop's work node once, at the failing iteration of the resume workload."""


class Executions:
    """Counts the executions of the loop's nodes, per iteration, and notes when the first one
    after `arm()` began (the resume start-up)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self.fail_at = fail_at
        self.armed_at: float | None = None
        self.first_after_arm: float | None = None

    def ran(self, node: str, iteration: int) -> None:
        if self.armed_at is not None and self.first_after_arm is None:
            self.first_after_arm = time.perf_counter()
        self.counts[(node, iteration)] += 1
        if node == "work" and iteration == self.fail_at:
            self.fail_at = None
            raise InjectedFailure(f"failure injected at iteration {iteration}")

    def arm(self) -> None:
        self.armed_at, self.first_after_arm = time.perf_counter(), None

    @property
    def startup_seconds(self) -> float:
        assert self.armed_at is not None and self.first_after_arm is not None
        return self.first_after_arm - self.armed_at

    def reran(self, unfinished: int) -> int:
        """How many executions repeated a node that had already finished (the failing
        iteration's work node, `unfinished`, is expected to run twice)."""
        return sum(count - 1 for (node, iteration), count in self.counts.items()
                   if count > 1 and not (node == "work" and iteration == unfinished))


class ExecutionLog:
    """An append-only side-effect file: one line per execution, written, flushed and fsynced
    before the node goes on, so it survives the process exiting abruptly right after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, iteration: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, f"{iteration}\n".encode())
        os.fsync(self._fd)

    def counts(self) -> Counter[int]:
        if not self.path.exists():
            return Counter()
        return Counter(int(line) for line in self.path.read_text().split())


def check_loop_result(count: int, items: list[str], iterations: int) -> bool:
    return count == iterations and items == [f"item-{i}" for i in range(iterations)]


def versions(packages: Sequence[str]) -> dict[str, str]:
    """The installed version of each package ("not installed" when absent)."""
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
