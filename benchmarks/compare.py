"""`--compare langgraph`: every workload on our engine and on LangGraph, alternating ours and
theirs so that drift of the machine (other load, CPU frequency, page cache) hits both alike,
then the ratios and the targets.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from . import appending
from . import workloads as ours
from .common import (
    OURS,
    THEIRS,
    WORKLOADS,
    Params,
    Result,
    add_growth_exponent,
    median_result,
)
from .crash import crash_workload

THROUGHPUT = ("loop", "chain", "fanout")
# (our mode, LangGraph's mode) measured against each other, per workload
THROUGHPUT_PAIRS = (
    ("none", "none"),
    ("memory", "memory"),
    ("sqlite", "sqlite:sync"),
    ("sqlite", "sqlite:async"),
    ("sqlite", "sqlite:sync+normal"),
    ("sqlite-ainvoke", "aiosqlite:sync"),
    ("sqlite-ainvoke", "aiosqlite:async"),
)
LOOP_ONLY_PAIRS = (("sqlite-full", "sqlite:sync"),)
"""Like for like in durability (both fsync every commit: SQLite's default, LangGraph's
setting), on the loop alone: what our power-loss option costs."""
READ_PAIRS = (("memory", "memory"), ("sqlite", "sqlite:sync"))
RESUME_PAIRS = (("memory", "memory"), ("sqlite", "sqlite:sync"), ("sqlite", "sqlite:async"))
CRASH_PAIRS = (("sqlite", "sqlite:async"), ("sqlite", "sqlite:sync"))
GROWTH_MODE = "sqlite:sync"


@dataclass
class Comparison:
    workload: str
    ours: Result
    theirs: Result

    @property
    def speed_ratio(self) -> float:
        """ours/theirs steps per second (above 1: we are faster)."""
        return self.ours.steps_per_second / self.theirs.steps_per_second

    @property
    def time_ratio(self) -> float:
        """ours/theirs seconds (below 1: we are faster); for the latency workloads."""
        return self.ours.seconds / self.theirs.seconds

    @property
    def bytes_ratio(self) -> float | None:
        """ours/theirs database bytes (below 1: we store less)."""
        if not self.ours.db_bytes or not self.theirs.db_bytes:
            return None
        return self.ours.db_bytes / self.theirs.db_bytes

    @property
    def memory_ratio(self) -> float | None:
        """ours/theirs peak traced memory (below 1: we use less)."""
        if not self.ours.peak_kib or not self.theirs.peak_kib:
            return None
        return self.ours.peak_kib / self.theirs.peak_kib

    def as_json(self) -> dict[str, Any]:
        return {"workload": self.workload, "ours_mode": self.ours.mode,
                "theirs_mode": self.theirs.mode,
                "ours_steps_per_second": self.ours.steps_per_second,
                "theirs_steps_per_second": self.theirs.steps_per_second,
                "ours_seconds": self.ours.seconds, "theirs_seconds": self.theirs.seconds,
                "speed_ratio": self.speed_ratio, "time_ratio": self.time_ratio,
                "ours_db_bytes": self.ours.db_bytes, "theirs_db_bytes": self.theirs.db_bytes,
                "bytes_ratio": self.bytes_ratio, "ours_peak_kib": self.ours.peak_kib,
                "theirs_peak_kib": self.theirs.peak_kib, "memory_ratio": self.memory_ratio,
                "ours_extra": self.ours.extra or {}, "theirs_extra": self.theirs.extra or {},
                # each round's ours/theirs speed (the runs of a round ran back to back)
                "round_speed_ratios": [t / o for o, t in zip(self.ours.runs, self.theirs.runs,
                                                             strict=False) if o]}


def run_comparison(p: Params, directory: Path, theirs: ModuleType, progress: Any = None,
                   only: Collection[str] = WORKLOADS) -> tuple[list[Result], list[Comparison]]:
    """Every workload (or those in `only`), ours then theirs, pair by pair (and round by
    round)."""
    run = _ComparisonRun(p, directory, theirs, progress)
    steps = (*((workload, run.throughput) for workload in THROUGHPUT),
             ("commit-limit", run.commit_limit), ("latest-read", run.reads),
             ("resume", run.resumes), ("growth", run.growth),
             ("crash", run.crashes), ("chat", run.chats), ("big-append", run.big_append))
    for workload, step in steps:
        if workload in only:
            step(workload)
    return run.rows, run.comparisons


class _ComparisonRun:
    """The rows and comparisons of one --compare run, filled in workload by workload."""

    def __init__(self, p: Params, directory: Path, theirs: ModuleType, progress: Any) -> None:
        self.p, self.directory, self.theirs, self.progress = p, directory, theirs, progress
        self.rows: list[Result] = []
        self.comparisons: list[Comparison] = []

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def pair(self, workload: str, ours_result: Result, theirs_result: Result) -> None:
        self.rows.extend((ours_result, theirs_result))
        self.comparisons.append(Comparison(workload, ours_result, theirs_result))

    def throughput(self, workload: str) -> None:
        p, directory = self.p, self.directory
        pairs = THROUGHPUT_PAIRS + (LOOP_ONLY_PAIRS if workload == "loop" else ())
        for our_mode, their_mode in pairs:
            self.note(f"{workload}: {our_mode} vs {their_mode}")
            mine, others = [], []
            for r in range(p.rounds):
                mine.append(ours.throughput(workload, our_mode, p, directory, trace=r == 0))
                others.append(self.theirs.throughput(workload, their_mode, p, directory,
                                                     trace=r == 0))
            self.pair(workload, median_result(mine), median_result(others))

    def commit_limit(self, workload: str) -> None:
        self.note("commit-limit: a bare SQLite commit per step (no engine)")
        self.rows.append(ours.commit_limit(self.p, self.directory))

    def reads(self, workload: str) -> None:
        for our_mode, their_mode in READ_PAIRS:
            self.note(f"latest-read: {our_mode} vs {their_mode}")
            self.pair(workload, ours.latest_read(our_mode, self.p, self.directory),
                      self.theirs.latest_read(their_mode, self.p, self.directory))
        self.note(f"latest-read: sqlite, {self.p.long_read_iterations} iterations (ours only)")
        self.rows.append(ours.long_read(self.p, self.directory))

    def resumes(self, workload: str) -> None:
        for our_mode, their_mode in RESUME_PAIRS:
            self.note(f"resume: {our_mode} vs {their_mode}")
            self.pair(workload, ours.resume(our_mode, self.p, self.directory),
                      self.theirs.resume(their_mode, self.p, self.directory))

    def growth(self, workload: str) -> None:
        our_growth, their_growth = [], []
        for n in self.p.growth_sizes:
            self.note(f"growth: {n} iterations")
            our_growth.append(ours.growth_point(n, self.directory))
            their_growth.append(self.theirs.growth_point(n, self.directory, GROWTH_MODE))
        for results in (our_growth, their_growth):
            add_growth_exponent(results)
        for mine, others in zip(our_growth, their_growth, strict=True):
            self.pair(workload, mine, others)

    def crashes(self, workload: str) -> None:
        for our_mode, their_mode in CRASH_PAIRS:
            self.note(f"crash: {our_mode} vs {their_mode}")
            self.pair(workload, crash_workload(OURS, our_mode, self.p, self.directory),
                      crash_workload(THEIRS, their_mode, self.p, self.directory))

    def chats(self, workload: str) -> None:
        """Each length ours then theirs; a length one side skips (LangGraph stops at a
        smaller size: it stores the whole conversation at every step) is a row, not a pair."""
        p = self.p
        mine: dict[int, Result] = {}
        others: dict[int, Result] = {}
        for turns in sorted(set(p.chat_sizes) | set(p.theirs_chat_sizes)):
            self.note(f"chat: {turns} turns")
            if turns in p.chat_sizes:
                mine[turns] = appending.chat(ours, turns, p, self.directory)
            if turns in p.theirs_chat_sizes:
                others[turns] = appending.chat(self.theirs, turns, p, self.directory)
        for results in (mine, others):
            add_growth_exponent(list(results.values()), size="turns")
        for turns, result in mine.items():
            if turns in others:
                self.pair(workload, result, others[turns])
            else:
                self.rows.append(result)
        self.rows.extend(r for turns, r in others.items() if turns not in mine)

    def big_append(self, workload: str) -> None:
        self.note("big-append")
        self.pair(workload, appending.big_append(ours, self.p, self.directory),
                  appending.big_append(self.theirs, self.p, self.directory))


# -- targets ------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    value: str
    passed: bool | None  # None: cannot be computed in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]

    def as_json(self) -> dict[str, Any]:
        return {"target": self.name, "value": self.value, "result": self.verdict}


def _find(comparisons: list[Comparison], workload: str, ours_mode: str,
          theirs_mode: str) -> Comparison | None:
    for c in comparisons:
        if (c.workload, c.ours.mode, c.theirs.mode) == (workload, ours_mode, theirs_mode):
            return c
    return None


def _ratio_target(name: str, c: Comparison | None, minimum: float) -> Target:
    if c is None:
        return Target(name, "not measured", None)
    return Target(name, f"{c.speed_ratio:.2f}x", c.speed_ratio >= minimum)


def targets(results: list[Result], comparisons: list[Comparison], p: Params) -> list[Target]:
    """The targets, from this run's numbers (`p`: the sizes it ran at). Ratio targets need
    --compare (else n/a)."""
    found: list[Target] = [
        _ratio_target("SQLite loop >= 8x LangGraph SqliteSaver durability=sync (steps/s)",
                      _find(comparisons, "loop", "sqlite", "sqlite:sync"), 8),
        _ratio_target("SQLite chain >= 8x LangGraph SqliteSaver durability=sync (steps/s)",
                      _find(comparisons, "chain", "sqlite", "sqlite:sync"), 8),
        _ratio_target("no checkpointer: loop >= 4x LangGraph",
                      _find(comparisons, "loop", "none", "none"), 4),
        _ratio_target("no checkpointer: chain >= 4x LangGraph",
                      _find(comparisons, "chain", "none", "none"), 4),
    ]
    fan = [c for c in comparisons if c.workload == "fanout"]
    if fan:
        worst = min(fan, key=lambda c: c.speed_ratio)
        found.append(Target("fan-out >= 3x LangGraph in every mode",
                            f"min {worst.speed_ratio:.2f}x ({worst.ours.mode} vs "
                            f"{worst.theirs.mode})", worst.speed_ratio >= 3))
    else:
        found.append(Target("fan-out >= 3x LangGraph in every mode", "not measured", None))
    found.append(_ratio_target("fan-out on memory >= 3x LangGraph (InMemorySaver)",
                               _find(comparisons, "fanout", "memory", "memory"), 3))
    loop_db = _find(comparisons, "loop", "sqlite", "sqlite:sync")
    if loop_db is not None and loop_db.bytes_ratio is not None:
        found.append(Target(f"{loop_db.ours.steps // 2:,}-iteration loop DB <= 1/10 of "
                            "LangGraph's (sqlite:sync)",
                            f"{loop_db.ours.db_bytes:,} vs {loop_db.theirs.db_bytes:,} B = "
                            f"1/{1 / loop_db.bytes_ratio:.1f}", loop_db.bytes_ratio <= 0.1))
    else:
        found.append(Target("1,000-iteration loop DB <= 1/10 of LangGraph's", "not measured",
                            None))
    growth = [r for r in results if r.workload == "growth" and r.engine == OURS]
    exponent = growth[0].extra.get("growth_exponent") if growth and growth[0].extra else None
    found.append(Target("our storage growth exponent <= 1.1",
                        "not measured" if exponent is None else f"{exponent:.3f}",
                        None if exponent is None else exponent <= 1.1))
    found += _async_targets(results, comparisons)
    found.append(_commit_limit_target(results))
    found += _read_targets(results)
    start = [r for r in results if (r.workload, r.mode, r.engine) == ("resume", "sqlite", OURS)]
    found.append(Target("resume start-up (SQLite) <= 5 ms",
                        f"{max(r.seconds for r in start) * 1000:.3f} ms" if start
                        else "not measured",
                        max(r.seconds for r in start) <= 0.005 if start else None))
    return found + _chat_targets(results, comparisons, p) + _big_append_targets(results)


ASYNC_SHARE = 0.8
ASYNC_OVER_LANGGRAPH = 10
COMMIT_SHARE = 0.5


def _ours(results: list[Result], workload: str, mode: str) -> Result | None:
    return next((r for r in results if (r.workload, r.mode, r.engine) == (workload, mode, OURS)),
                None)


def _async_targets(results: list[Result], comparisons: list[Comparison]) -> list[Target]:
    """Per loop and chain: `ainvoke` with async nodes against `invoke` with sync ones, on our
    durable SQLite in this run, and against LangGraph's AsyncSqliteSaver (durability=sync)."""
    found = []
    for workload in ("loop", "chain"):
        sync, run_async = _ours(results, workload, "sqlite"), _ours(results, workload,
                                                                     "sqlite-ainvoke")
        name = f"SQLite {workload}: ainvoke (async nodes) >= {ASYNC_SHARE}x invoke, same run"
        if sync is None or run_async is None:
            found.append(Target(name, "not measured", None))
        else:
            share = run_async.steps_per_second / sync.steps_per_second
            found.append(Target(name, f"{share:.2f}x ({run_async.steps_per_second:,.0f} vs "
                                f"{sync.steps_per_second:,.0f} steps/s)", share >= ASYNC_SHARE))
        found.append(_ratio_target(
            f"SQLite {workload}: ainvoke >= {ASYNC_OVER_LANGGRAPH}x LangGraph AsyncSqliteSaver "
            "durability=sync", _find(comparisons, workload, "sqlite-ainvoke", "aiosqlite:sync"),
            ASYNC_OVER_LANGGRAPH))
    return found


def _commit_limit_target(results: list[Result]) -> Target:
    """Our durable sync loop against a bare SQLite commit per step, in this run."""
    loop, limit = _ours(results, "loop", "sqlite"), _ours(results, "commit-limit", "sqlite")
    name = f"SQLite loop >= {COMMIT_SHARE:.0%} of a bare commit per step, same run"
    if loop is None or limit is None:
        return Target(name, "not measured", None)
    share = loop.steps_per_second / limit.steps_per_second
    return Target(name, f"{share:.0%} ({loop.steps_per_second:,.0f} vs "
                  f"{limit.steps_per_second:,.0f} commits/s)", share >= COMMIT_SHARE)


def _read_targets(results: list[Result]) -> list[Target]:
    """Our SQLite latest-state read <= 1 ms, one target per loop length read."""
    reads = [r for r in results
             if (r.workload, r.mode, r.engine) == ("latest-read", "sqlite", OURS)]
    if not reads:
        return [Target("latest-state read (SQLite, loop) <= 1 ms", "not measured", None)]
    found = []
    for steps in sorted({r.extra["history_steps"] for r in reads if r.extra}):
        worst = max(r.seconds for r in reads if r.extra and r.extra["history_steps"] == steps)
        found.append(Target(f"latest-state read (SQLite, {steps // 2:,} iterations) <= 1 ms",
                            f"{worst * 1000:.3f} ms", worst <= 0.001))
    return found


CHAT_MAX_BYTES = 2_000_000


def _chat_targets(results: list[Result], comparisons: list[Comparison],
                  p: Params) -> list[Target]:
    """Our chat: small at the headline length (alone and next to LangGraph's), growing
    linearly, and as quick to read and to start a turn on at its longest as early on."""
    chats = {r.extra["turns"]: r for r in results
             if r.workload == "chat" and r.engine == OURS and r.extra}
    turns = p.chat_turns
    headline = chats.get(turns)
    longest = chats[max(chats)] if chats else None
    return [_chat_size_target(turns, headline),
            _chat_ratio_target(turns, next((c for c in comparisons if c.workload == "chat"
                                            and c.ours.extra and c.ours.extra["turns"] == turns),
                                           None)),
            _chat_growth_target([chats[n] for n in sorted(chats)]),
            _chat_read_target(longest, max(p.chat_sizes)),
            _chat_first_node_target(longest, max(p.chat_sizes))]


def _chat_size_target(turns: int, r: Result | None) -> Target:
    name = f"chat at {turns:,} turns: our file <= {CHAT_MAX_BYTES:,} B"
    if r is None or r.db_bytes is None:
        return Target(name, "not measured", None)
    return Target(name, f"{r.db_bytes:,} B", r.db_bytes <= CHAT_MAX_BYTES)


def _chat_ratio_target(turns: int, c: Comparison | None) -> Target:
    name = f"chat at {turns:,} turns: our file >= 100x smaller than LangGraph's (sqlite:sync)"
    if c is None or c.bytes_ratio is None:
        return Target(name, "not measured", None)
    return Target(name, f"{c.ours.db_bytes:,} vs {c.theirs.db_bytes:,} B = "
                  f"1/{1 / c.bytes_ratio:.1f}", c.bytes_ratio <= 0.01)


def _chat_growth_target(series: list[Result]) -> Target:
    """The log-log fit over our chat lengths (1.0: the file grows as the conversation does)."""
    name = "our chat storage growth exponent <= 1.1"
    exponent = series[0].extra.get("growth_exponent") if series and series[0].extra else None
    if exponent is None:
        return Target(name, "not measured", None)
    first, last = series[0].extra["turns"], series[-1].extra["turns"]  # type: ignore[index]
    return Target(f"{name} ({first:,} -> {last:,} turns)", f"{exponent:.3f}", exponent <= 1.1)


def _chat_read_target(r: Result | None, turns: int) -> Target:
    name = f"chat at {turns:,} turns: latest-state read (SQLite, warm) <= 1 ms"
    if r is None or r.extra is None:
        return Target(name, "not measured", None)
    e = r.extra
    name = f"chat at {e['turns']:,} turns: latest-state read (SQLite, warm) <= 1 ms"
    return Target(name, f"{e['warm_read_ms']:.3f} ms (cold: open {e['cold_open_ms']:.3f} ms, "
                  f"first read {e['cold_first_read_ms']:.3f} ms)",
                  e["warm_read_ms"] <= 1)


def _chat_first_node_target(r: Result | None, turns: int) -> Target:
    if r is None or r.extra is None:
        return Target(f"chat: first node of turn {turns:,} within 2x of turn 10",
                      "not measured", None)
    e = r.extra
    ratio = e["first_node_ms_late"] / e["first_node_ms_early"]
    return Target(f"chat: first node of turn {e['turns']:,} within 2x of turn 10",
                  f"turns {e['first_node_turns_late']}: {e['first_node_ms_late']:.3f} ms vs "
                  f"turns {e['first_node_turns_early']}: {e['first_node_ms_early']:.3f} ms "
                  f"= {ratio:.2f}x", ratio <= 2)


def _big_append_targets(results: list[Result]) -> list[Target]:
    """Our big-append: the file about the size of what was appended, and no log left."""
    big = next((r for r in results if r.workload == "big-append" and r.engine == OURS), None)
    size_name = "big-append: our file <= 1.5x the state"
    wal_name = "big-append: our WAL truncated after close (0 bytes or absent)"
    if big is None or big.extra is None or big.db_bytes is None:
        return [Target(size_name, "not measured", None), Target(wal_name, "not measured", None)]
    e = big.extra
    wal = "absent" if not e["wal_file_after_close"] else f"{e['wal_bytes_after_close']:,} B"
    ratio = big.db_bytes / e["state_bytes"]
    return [Target(size_name, f"{big.db_bytes:,} / {e['state_bytes']:,} B = {ratio:.2f}x",
                   ratio <= 1.5),
            Target(wal_name, wal, e["wal_bytes_after_close"] == 0)]


def checks(results: list[Result]) -> list[Target]:
    """Correctness of our resume and crash runs (reported, like the targets)."""
    found = []
    for r in results:
        if r.engine != OURS or r.workload not in ("resume", "crash") or not r.extra:
            continue
        e = r.extra
        ok = bool(e["result_ok"]) and e["finished_reran"] == 0
        detail = f"result ok={e['result_ok']}, finished nodes run again={e['finished_reran']}"
        if r.workload == "crash":
            ok = ok and e["lost"] == 0
            detail += f", recovered {e['recovered']}/{e['finished_before_crash']} iterations"
        found.append(Target(f"{r.workload} ({r.mode}): correct result, nothing finished re-run",
                            detail, ok))
    unique: dict[str, Target] = {}
    for t in found:  # ours runs once per pairing: keep the worst of each
        if t.name not in unique or not t.passed:
            unique[t.name] = t
    return list(unique.values())
