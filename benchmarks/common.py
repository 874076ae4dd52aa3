"""What both sides of the benchmark share: the result record, the sizes, and the measuring
helpers (timing, peak memory, database bytes, execution logs, the growth fit, the chat's and
big-append's data).

Nothing here imports statemachine or LangGraph, so each side can be loaded on its own.
"""

from __future__ import annotations

import base64
import math
import os
import random
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
WORKLOADS = ("loop", "chain", "fanout", "commit-limit", "latest-read", "resume", "growth",
             "crash", "chat", "big-append")
"""Every workload, in the order they run; `--only` picks among these names."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def as_node(fn: Callable[[Any], Any], asynchronous: bool) -> Callable[[Any], Any]:
    """`fn` as a node: itself, or (`asynchronous`) a coroutine function doing the same, as an
    async application's nodes are (both engines run those on the event loop)."""
    if not asynchronous:
        return fn

    async def node(state: Any) -> Any:
        return fn(state)

    return node


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
    long_read_iterations: int  # a second latest-read, on a longer loop (ours)
    chat_turns: int  # the chat's headline length (invocations on one thread); in both series
    chat_sizes: tuple[int, ...]  # our chat growth series
    theirs_chat_sizes: tuple[int, ...]  # LangGraph's: it stores the whole state at every step
    cold_reads: int  # latest-state reads of the chat, each on a newly opened checkpointer
    big_append_steps: int
    big_append_chars: int  # appended by each step (ASCII: characters are bytes)
    big_reads: int  # latest-state reads of the big-append thread (each reads the whole state)


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


def add_growth_exponent(results: list[Result], size: str = "iterations") -> None:
    """Note the fitted growth exponent of these growth results (one per size, the size in
    `extra[size]`) in each."""
    if len(results) >= 2:
        slope = fit_exponent([(r.extra[size], r.db_bytes)  # type: ignore[index,misc]
                              for r in results])
        for r in results:
            r.extra["growth_exponent"] = round(slope, 3)  # type: ignore[index]


@dataclass(frozen=True)
class ClosedFile:
    """A SQLite file measured right after its writer closed it."""

    db_bytes: int
    """The file plus any write-ahead log left (folded in first when `fold_wal`)."""
    wal_bytes: int
    """The -wal file as the close left it, before any folding (0 when absent)."""
    wal_present: bool


def measure_closed(path: Path, *, fold_wal: bool) -> ClosedFile:
    """Sizes of a database its writer just closed. Our checkpointer folds the log on close,
    so ours is counted as it is (`fold_wal=False`: a log left over is counted raw, never
    hidden); LangGraph leaves that to SQLite, so its log is folded first, as for growth."""
    wal = Path(f"{path}-wal")
    present = wal.exists()
    left = wal.stat().st_size if present else 0
    total = sqlite_bytes(path) if fold_wal else path.stat().st_size + left
    return ClosedFile(total, left, present)


def filler_text(seed: str, size: int) -> str:
    """`size` ASCII characters of seeded pseudo-random base64, the same for the same seed.

    Different for every seed, so nothing can deduplicate it, and close to incompressible
    (6 bits of entropy per byte), so a store that compresses cannot make it look smaller than
    what was appended the way it could with one repeated letter.
    """
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


CHAT_MESSAGE_CHARS = 1000


def chat_message(role: str, turn: int) -> str:
    """The 1,000-character message of `role` ("user" or "assistant") at `turn` (from 1)."""
    head = f"{role} {turn}: "
    return head + filler_text(head, CHAT_MESSAGE_CHARS - len(head))


def reply_turn(messages_so_far: int) -> int:
    """The turn a reply belongs to, from the messages before it (a user message per turn is
    already in): the reply node's only arithmetic, shared by both engines."""
    return messages_so_far // 2 + 1


def expected_chat(turns: int) -> list[str]:
    """The messages after `turns` turns: user, assistant, user, assistant, ..."""
    return [chat_message(role, turn) for turn in range(1, turns + 1)
            for role in ("user", "assistant")]


def append_chunk(step: int, size: int) -> str:
    """What step `step` (from 1) of big-append appends: `size` characters, unique to it."""
    head = f"chunk {step}: "
    return head + filler_text(head, size - len(head))


class FirstNodeClock:
    """The time from calling invoke to the first line of a node, one entry per invocation:
    `called()` just before invoke, `node_started()` as the node's first line (a later node
    of the same invocation is not counted)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._called_at: float | None = None

    def called(self) -> None:
        self._called_at = time.perf_counter()

    def node_started(self) -> None:
        if self._called_at is not None:
            self.seconds.append(time.perf_counter() - self._called_at)
            self._called_at = None

    def median_ms(self, first_turn: int, last_turn: int) -> float:
        """Median over turns first..last (from 1, both included), in ms."""
        return round(statistics.median(self.seconds[first_turn - 1:last_turn]) * 1000, 3)


def turn_window(center: int, turns: int, half: int = 2) -> tuple[int, int]:
    """Turns center-half .. center+half, kept within 1..turns (a median of five, not one
    turn's noise)."""
    first = min(max(1, center - half), turns)
    return first, min(center + half, turns)


def timed_median(call: Callable[[], Any], times: int) -> tuple[float, Any]:
    """Median seconds of `times` calls of `call()`, and the last call's result."""
    seconds, result = [], None
    for _ in range(times):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


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
