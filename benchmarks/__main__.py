"""`python -m benchmarks [--quick] [--compare langgraph] [--json results.json] [--only NAMES]`

Runs the workloads (loop, chain, fan-out, latest-state read, resume, storage growth, crash,
chat, big-append) on our engine and prints a table; with `--compare langgraph`, runs each one
on LangGraph too, alternating ours and theirs, and prints the ratios and a PASS/FAIL summary
of the targets. `--only chat,big-append` runs just those.

Speed is measured here, never asserted in tests; the test suite runs `--quick` so this
cannot rot. LangGraph is optional: it is imported only for --compare
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .about import head, load_average, print_head, progress
from .common import OURS, THEIRS, WORKLOADS, Params, Result

FULL = Params(iterations=1000, chain_length=100, fan_width=50, invocations=20,
              growth_sizes=(250, 500, 1000, 2000, 4000), reads=50, fail_at=500,
              resume_reps=5, rounds=5, long_read_iterations=4000, chat_turns=400,
              chat_sizes=(100, 200, 400, 800), theirs_chat_sizes=(100, 200, 400),
              cold_reads=10, big_append_steps=5, big_append_chars=10_000_000, big_reads=10)
QUICK = Params(iterations=20, chain_length=5, fan_width=4, invocations=2, growth_sizes=(10, 20),
               reads=3, fail_at=10, resume_reps=1, rounds=1, long_read_iterations=40,
               chat_turns=10, chat_sizes=(10, 20), theirs_chat_sizes=(10, 20), cold_reads=2,
               big_append_steps=5, big_append_chars=100_000, big_reads=2)
PACKAGES = ("statemachine", "pydantic", "pydantic-core", "aiosqlite", "langgraph",
            "langgraph-checkpoint", "langgraph-checkpoint-sqlite")
FILE_BYTES = ("file: bytes after close (ours: the file plus any WAL left; LangGraph's: WAL "
              "folded in first); WAL: the -wal file right after close")
APPENDING = ("chat", "big-append")  # printed in tables of their own, not in print_ours
MISSING_LANGGRAPH = (
    "--compare langgraph needs LangGraph and its SQLite checkpointer, which are not installed "
    "here ({error}).\nInstall them with: pip install -e '.[bench]' "
    "(or: pip install langgraph langgraph-checkpoint-sqlite)")


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "" if value is None else format(value, fmt)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def print_ours(results: list[Result]) -> None:
    print(f"{'workload':<12} {'mode':<15} {'steps':>7} {'steps/s':>10} {'db bytes':>10} "
          f"{'peak KiB':>9}  notes")
    for r in results:
        notes = ", ".join(f"{k}={v}" for k, v in (r.extra or {}).items())
        print(f"{r.workload:<12} {r.mode:<15} {r.steps:>7} {r.steps_per_second:>10,.0f} "
              f"{_num(r.db_bytes):>10} {_num(r.peak_kib):>9}  {notes}")


def print_comparison(comparisons: list[Any]) -> None:
    """The tables of the paired workloads; a table none of whose workloads ran is left out."""
    throughput = [c for c in comparisons if c.workload in ("loop", "chain", "fanout")]
    if throughput:
        _print_throughput(throughput)
    latency = [c for c in comparisons if c.workload in ("latest-read", "resume")]
    if latency:
        _print_latency(latency)
    _print_growth_and_crash(comparisons)


def _print_throughput(throughput: list[Any]) -> None:
    print("Throughput: ratios are ours/theirs (speed: higher is better for us; "
          "bytes and memory: lower is better for us)")
    head = (f"{'workload':<8} {'ours':<15} {'langgraph':<19} {'ours st/s':>10} "
            f"{'theirs st/s':>11} {'speed':>7} {'ours bytes':>11} {'theirs bytes':>12} "
            f"{'bytes':>6} {'ours KiB':>9} {'theirs KiB':>10} {'mem':>5}")
    print_head(head)
    for c in throughput:
        print(f"{c.workload:<8} {c.ours.mode:<15} {c.theirs.mode:<19} "
              f"{c.ours.steps_per_second:>10,.0f} {c.theirs.steps_per_second:>11,.0f} "
              f"{c.speed_ratio:>6.2f}x {_num(c.ours.db_bytes):>11} "
              f"{_num(c.theirs.db_bytes):>12} {_ratio(c.bytes_ratio):>6} "
              f"{_num(c.ours.peak_kib):>9} {_num(c.theirs.peak_kib):>10} "
              f"{_ratio(c.memory_ratio):>5}")
    print()


def _print_latency(latency: list[Any]) -> None:
    print("Latency (ms; ratio ours/theirs, lower is better for us)")
    head = (f"{'workload':<12} {'ours':<8} {'langgraph':<14} {'ours ms':>9} {'theirs ms':>10} "
            f"{'ratio':>7}  ours checks | theirs checks")
    print_head(head)
    for c in latency:
        def checks(r: Result) -> str:
            e = r.extra or {}
            if r.workload == "resume":
                return (f"ok={e['result_ok']} reran={e['finished_reran']} "
                        f"total={e['resume_total_ms']}ms")
            return f"ok={e['state_ok']}"

        print(f"{c.workload:<12} {c.ours.mode:<8} {c.theirs.mode:<14} "
              f"{c.ours.seconds * 1000:>9.3f} {c.theirs.seconds * 1000:>10.3f} "
              f"{c.time_ratio:>7.3f}  {checks(c.ours)} | {checks(c.theirs)}")
    print()


def _print_growth_and_crash(comparisons: list[Any]) -> None:
    growth = [c for c in comparisons if c.workload == "growth"]
    if growth:
        print("Storage growth of the loop (bytes on disk after close, WAL folded in; "
              f"LangGraph: {growth[0].theirs.mode})")
        head = (f"{'iterations':>10} {'ours bytes':>12} {'theirs bytes':>13} {'ours/theirs':>11} "
                f"{'ours st/s':>10} {'theirs st/s':>11}")
        print_head(head)
        for c in growth:
            print(f"{c.ours.extra['iterations']:>10,} {c.ours.db_bytes:>12,} "
                  f"{c.theirs.db_bytes:>13,} {c.bytes_ratio:>11.4f} "
                  f"{c.ours.steps_per_second:>10,.0f} {c.theirs.steps_per_second:>11,.0f}")
        print(f"growth exponent (log-log least squares): ours "
              f"{growth[0].ours.extra.get('growth_exponent')}, LangGraph "
              f"{growth[0].theirs.extra.get('growth_exponent')}")
        print()
    crash = [c for c in comparisons if c.workload == "crash"]
    if crash:
        print("Crash (os._exit inside the node at the failing iteration, resumed in a new "
              "process)")
        head = (f"{'engine':<13} {'mode':<13} {'finished':>8} {'recovered':>9} {'lost':>5} "
                f"{'finished re-run':>15} {'crashed runs':>12} {'result ok':>9}")
        print_head(head)
        for c in crash:
            for r in (c.ours, c.theirs):
                e = r.extra or {}
                print(f"{r.engine:<13} {r.mode:<13} {e['finished_before_crash']:>8} "
                      f"{e['recovered']:>9} {e['lost']:>5} {e['finished_reran']:>15} "
                      f"{e['crashed_iteration_runs']:>12} {e['result_ok']!s:>9}")
        print()


def print_chat(results: list[Result]) -> None:
    """The chat rows of either engine, by engine then length, and the growth fit."""
    chats = sorted((r for r in results if r.workload == "chat"),
                   key=lambda r: (r.engine != OURS, r.steps))
    if not chats:
        return
    print("Chat: START -> reply -> END, invoked once per turn on one thread; each turn adds a "
          "1,000-char user message and a 1,000-char reply")
    print(f"  {FILE_BYTES}; turns/s = steps/s (one step a turn)")
    print("  first node: invoke called -> first line of reply, median over the turns named; "
          "warm: median get_state on the app that ran the thread")
    print("  cold: each read on a newly opened checkpointer + freshly compiled app (medians "
          "of: the open, its 1st read, its 2nd read)")
    head = (f"{'engine':<13} {'mode':<12} {'turns':>6} {'file bytes':>13} {'WAL':>6} "
            f"{'B/turn':>8} {'turns/s':>8} {'first node (turns: ms)':>28} {'warm ms':>8} "
            f"{'open ms':>8} {'cold 1st':>8} {'cold 2nd':>8} {'ok':>5}")
    print_head(head)
    for r in chats:
        print(_chat_row(r))
    print(_chat_growth_line(chats))
    ratios = _chat_ratios(chats)
    if ratios:
        print(f"file bytes ours/theirs: {ratios}")
    print()


def _wal(extra: dict[str, Any]) -> str:
    return f"{extra['wal_bytes_after_close']:,}" if extra["wal_file_after_close"] else "absent"


def _chat_row(r: Result) -> str:
    e = r.extra or {}
    first = (f"{e['first_node_turns_early']}: {e['first_node_ms_early']:.3f}, "
             f"{e['first_node_turns_late']}: {e['first_node_ms_late']:.3f}")
    return (f"{r.engine:<13} {r.mode:<12} {e['turns']:>6,} {_num(r.db_bytes):>13} {_wal(e):>6} "
            f"{e['bytes_per_turn']:>8,} {e['turns_per_second']:>8,.0f} {first:>28} "
            f"{e['warm_read_ms']:>8.3f} {e['cold_open_ms']:>8.3f} "
            f"{e['cold_first_read_ms']:>8.3f} {e['cold_second_read_ms']:>8.3f} "
            f"{e['state_ok']!s:>5}")


def _chat_growth_line(chats: list[Result]) -> str:
    """Each engine's fitted exponent over its lengths, and, for an engine that stopped
    short of the longest, what its fit says the longest would take."""
    longest = max(r.steps for r in chats)
    parts = []
    for engine, label in ((OURS, "ours"), (THEIRS, "LangGraph")):
        series = [r for r in chats if r.engine == engine]
        if not series:
            continue
        exponent = (series[0].extra or {}).get("growth_exponent")
        text = f"{label} {exponent} ({series[0].steps:,} -> {series[-1].steps:,} turns"
        if exponent is not None and series[-1].steps < longest:
            estimate = series[-1].db_bytes * (longest / series[-1].steps) ** exponent
            text += (f"; {longest:,} turns not run: ~{estimate / 1e9:.1f} GB by this fit")
        parts.append(text + ")")
    return "growth exponent (log-log least squares): " + ", ".join(parts)


def _chat_ratios(chats: list[Result]) -> str:
    """Ours over theirs, at each length both ran ("" when LangGraph did not run)."""
    theirs = {r.steps: r.db_bytes for r in chats if r.engine == THEIRS}
    return ", ".join(f"{r.steps:,} turns 1/{theirs[r.steps] / r.db_bytes:.1f}"
                     for r in chats if r.engine == OURS and theirs.get(r.steps) and r.db_bytes)


def print_big_append(results: list[Result]) -> None:
    rows = sorted((r for r in results if r.workload == "big-append"),
                  key=lambda r: r.engine != OURS)
    if not rows:
        return
    e = rows[0].extra or {}
    print(f"Big append: one run of a {e['steps']}-node chain, each node appends one "
          f"{e['chunk_chars']:,}-char string to `chunks: Annotated[list[str], operator.add]`")
    print(f"  state: the appended bytes; {FILE_BYTES}; read: median get_state")
    head = (f"{'engine':<13} {'mode':<12} {'state bytes':>12} {'file bytes':>13} {'WAL':>6} "
            f"{'file/state':>10} {'wall s':>7} {'read ms':>9} {'ok':>5}")
    print_head(head)
    for r in rows:
        e = r.extra or {}
        print(f"{r.engine:<13} {r.mode:<12} {e['state_bytes']:>12,} {_num(r.db_bytes):>13} "
              f"{_wal(e):>6} {e['file_per_state']:>10.3f} {r.seconds:>7.3f} "
              f"{e['read_ms']:>9.3f} {e['state_ok']!s:>5}")
    print()


def print_targets(found: list[Any], title: str) -> None:
    print(title)
    if not found:
        print("  (none of the workloads they need ran)")
        return
    width = max(len(t.name) for t in found)
    for t in found:
        print(f"  {t.verdict:<4}  {t.name:<{width}}  {t.value}")


def _workload_names(text: str) -> tuple[str, ...]:
    """`--only`'s value: names from WORKLOADS, comma-separated."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--compare", choices=["langgraph"],
                        help="run every workload on LangGraph too and print the ratios")
    parser.add_argument("--rounds", type=int, help="alternating rounds of the throughput "
                        "workloads, of which the median is reported (default 5; 1 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="DIR", type=Path,
                        help="also draw this run's charts there (PNG; benchmarks/plot.py: the "
                        "server and PostgreSQL charts come from benchmarks/server.json and "
                        "benchmarks/postgres.json when present)")
    parser.add_argument("--only", metavar="NAMES", type=_workload_names, default=WORKLOADS,
                        help="comma-separated workloads to run (default: all of "
                        f"{','.join(WORKLOADS)})")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.rounds:
        params = replace(params, rounds=args.rounds)

    theirs = None
    if args.compare:
        try:
            from . import langgraph_workloads as theirs
        except ImportError as exc:
            print(MISSING_LANGGRAPH.format(error=exc), file=sys.stderr)
            return 2

    info, packages = head(PACKAGES)
    print(f"sizes: {asdict(params)}")
    sys.stdout.flush()

    from . import compare

    started = time.perf_counter()
    comparisons: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="statemachine-bench-") as tmp:
        if theirs is None:
            from .workloads import run_all

            results = run_all(params, Path(tmp), args.only)
        else:
            results, comparisons = compare.run_comparison(params, Path(tmp), theirs, progress,
                                                          args.only)
    elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()

    print()
    if comparisons:
        print_comparison(comparisons)
    elif any(r.workload not in APPENDING for r in results):
        print_ours([r for r in results if r.workload not in APPENDING])
        print()
    print_chat(results)
    print_big_append(results)
    found = compare.targets(results, comparisons, params)
    print_targets(found, "Targets (computed from this run; n/a needs --compare langgraph):"
                  if not comparisons else "Targets (computed from this run):")
    checked = compare.checks(results)
    print_targets(checked, "Correctness checks of our resume and crash runs:")
    print(f"\n(ran in {elapsed:.0f} s; load average at end: {info['load_average_at_end']})")

    document = {
        "machine": info, "versions": packages, "params": asdict(params),
        "compare": args.compare, "only": list(args.only), "seconds": elapsed,
        "rows": [r.as_json() for r in results],
        "comparisons": [c.as_json() for c in comparisons],
        "targets": [t.as_json() for t in found],
        "checks": [t.as_json() for t in checked],
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=2)
    if args.plot:
        return _plot(args.plot, document)
    return 0


def _plot(out: Path, document: dict[str, Any]) -> int:
    from . import plot

    try:
        written = plot.draw(out, document, *(plot.load(plot.DEFAULTS[name])
                                              for name in ("server", "postgres")))
    except ImportError as exc:
        print(f"--plot needs matplotlib ({exc}): pip install -e '.[bench]'", file=sys.stderr)
        return 2
    print("charts: " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["FULL", "OURS", "QUICK", "main"]
