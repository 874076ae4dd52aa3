"""`--compare langgraph`: every workload on our engine and on LangGraph, alternating ours and
theirs so that drift of the machine (other load, CPU frequency, page cache) hits both alike,
then the ratios and the targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from . import workloads as ours
from .common import OURS, THEIRS, Params, Result, add_growth_exponent, median_result
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


def run_comparison(p: Params, directory: Path, theirs: ModuleType,
                   progress: Any = None) -> tuple[list[Result], list[Comparison]]:
    """Every workload, ours then theirs, pair by pair (and round by round)."""
    rows: list[Result] = []
    comparisons: list[Comparison] = []

    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    def pair(workload: str, ours_result: Result, theirs_result: Result) -> None:
        rows.extend((ours_result, theirs_result))
        comparisons.append(Comparison(workload, ours_result, theirs_result))

    for workload in THROUGHPUT:
        for our_mode, their_mode in THROUGHPUT_PAIRS:
            note(f"{workload}: {our_mode} vs {their_mode}")
            mine, others = [], []
            for r in range(p.rounds):
                mine.append(ours.throughput(workload, our_mode, p, directory, trace=r == 0))
                others.append(theirs.throughput(workload, their_mode, p, directory,
                                                trace=r == 0))
            pair(workload, median_result(mine), median_result(others))
    for our_mode, their_mode in READ_PAIRS:
        note(f"latest-read: {our_mode} vs {their_mode}")
        pair("latest-read", ours.latest_read(our_mode, p, directory),
             theirs.latest_read(their_mode, p, directory))
    for our_mode, their_mode in RESUME_PAIRS:
        note(f"resume: {our_mode} vs {their_mode}")
        pair("resume", ours.resume(our_mode, p, directory),
             theirs.resume(their_mode, p, directory))
    our_growth, their_growth = [], []
    for n in p.growth_sizes:
        note(f"growth: {n} iterations")
        our_growth.append(ours.growth_point(n, directory))
        their_growth.append(theirs.growth_point(n, directory, GROWTH_MODE))
    for results in (our_growth, their_growth):
        add_growth_exponent(results)
    for mine, others in zip(our_growth, their_growth, strict=True):
        pair("growth", mine, others)
    for our_mode, their_mode in CRASH_PAIRS:
        note(f"crash: {our_mode} vs {their_mode}")
        pair("crash", crash_workload(OURS, our_mode, p, directory),
             crash_workload(THEIRS, their_mode, p, directory))
    return rows, comparisons


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


def targets(results: list[Result], comparisons: list[Comparison]) -> list[Target]:
    """The targets, from this run's numbers. Ratio targets need --compare (else n/a)."""
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
    read = [r for r in results if (r.workload, r.mode, r.engine) == ("latest-read", "sqlite",
                                                                      OURS)]
    size = f"{read[0].extra['history_steps'] // 2:,} iterations" if read else "loop"
    found.append(Target(f"latest-state read (SQLite, {size}) <= 1 ms",
                        f"{max(r.seconds for r in read) * 1000:.3f} ms" if read
                        else "not measured",
                        max(r.seconds for r in read) <= 0.001 if read else None))
    start = [r for r in results if (r.workload, r.mode, r.engine) == ("resume", "sqlite", OURS)]
    found.append(Target("resume start-up (SQLite) <= 5 ms",
                        f"{max(r.seconds for r in start) * 1000:.3f} ms" if start
                        else "not measured",
                        max(r.seconds for r in start) <= 0.005 if start else None))
    return found


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
