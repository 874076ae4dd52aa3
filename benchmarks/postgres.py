"""`python -m benchmarks.postgres [--quick] [--compare langgraph] [--json PATH] [--dsn URL]
[--rounds N]`

Our `checkpoints.PostgresCheckpointer` beside LangGraph's `PostgresSaver` and
`AsyncPostgresSaver` on one real PostgreSQL server, on the SQLite benchmark's graphs (built by
benchmarks/workloads.py and benchmarks/langgraph_workloads.py, imported, not copied):

  loop    work -> check -> work ... on one thread (two steps an iteration)
  chain   a linear graph of 100 nodes, each invocation on a new thread
  fanout  50 parallel nodes then a join (two steps an invocation), each on a new thread
  chat    START -> reply -> END invoked once per turn on one thread: each turn's input appends
          a 1,000-character user message, the reply a 1,000-character answer (one step a turn)

Modes, each engine and mode on a schema of its own, created fresh for every run:

  ours   sync   PostgresCheckpointer(dsn, schema=...), `app.invoke`
         async  the same checkpointer, `await app.ainvoke`, the nodes `async def` (same bodies)
  theirs sync   PostgresSaver on psycopg.connect(dsn, autocommit=True, prepare_threshold=0,
                row_factory=dict_row, options="-c search_path=<schema>"), `.setup()` before
                the clock, `app.invoke(..., durability="sync")`: each step committed before
                the next runs, the guarantee ours gives
         async  AsyncPostgresSaver on `await psycopg.AsyncConnection.connect(...)` (same
                arguments), `await app.ainvoke(..., durability="sync")`, async nodes
  LangGraph's default durability ("async": a step's checkpoint may still be in flight while
  the next runs) is run too on loop, chain and fan-out, as an extra row no target uses.

Measured per (workload, mode): steps per second (loop, chain, fan-out: ours and theirs
alternated over --rounds rounds, the median; chat: one run each, turns per second); bytes: the
total size of the engine's tables in its schema right after the run (pg_total_relation_size:
heap, TOAST and indexes); the final state checked against the expected one (ok/failed).
After the loop and after the chat, the median of 50 latest-state reads of the thread: ours
`app.get_state(thread_id)`, theirs `app.get_state({"configurable": {"thread_id": ...}})` in
the sync mode (the target is on these); the async mode reads with `aget_state`, for the record.
Last, the server's own limit: a bare autocommit INSERT per step on one connection, the loop's
steps' worth, the median of the rounds. Its rate over LangGraph's is the highest speed ratio
an engine that commits each step before running the next can reach on this server (printed
per loop and chain comparison, with the share of the limit ours reaches; not a target).

The server keeps fsync on: a throwaway cluster from the machine's PostgreSQL binaries
(`statemachine.testing.postgres.postgres_server()`) unless --dsn names one (the schemas made
are dropped after each run either way). LangGraph is imported only with --compare. Targets
(with --compare): our steps/s >= 5x theirs (durability "sync") and our bytes <= 1/10 of
theirs, per workload and mode; and (always) our latest-state read <= 1 ms. Speed is measured
here, never asserted in tests; the test suite runs --quick so this cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from .about import head, lacks, load_average, print_head, progress
from .common import (
    OURS,
    THEIRS,
    Result,
    chat_message,
    check_loop_result,
    expected_chat,
    median_result,
    timed_median,
)

PACKAGES = ("statemachine", "pydantic", "psycopg", "psycopg-pool", "langgraph",
            "langgraph-checkpoint", "langgraph-checkpoint-postgres")
THROUGHPUT = ("loop", "chain", "fanout")
WORKLOADS = (*THROUGHPUT, "chat")
APIS = ("sync", "async")
"""Our modes: invoke with sync nodes, ainvoke with async nodes."""
THEIR_SAVERS = {"sync": "PostgresSaver", "async": "AsyncPostgresSaver"}
TARGET_DURABILITY = "sync"
EXTRA_DURABILITY = "async"  # LangGraph's default: an extra row, no target uses it
SPEED_TARGET = 5.0
BYTES_TARGET = 0.1
READ_TARGET_MS = 1.0
CHAT_THREAD = "chat"
READ_THREAD = "loop-0"  # the loop runs once, on this thread; its reads follow it
MISSING_LANGGRAPH = (
    "--compare langgraph needs LangGraph and its PostgreSQL checkpointer, which are not "
    "installed here ({error}).\nInstall them with: pip install -e '.[bench,postgres]' "
    "langgraph-checkpoint-postgres (or: pip install langgraph langgraph-checkpoint-sqlite "
    "langgraph-checkpoint-postgres 'psycopg[binary]' psycopg-pool)")
SCHEMA_BYTES = ("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'")


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run."""

    iterations: int  # loop iterations (two steps each), one thread
    chain_length: int
    chain_invocations: int  # each on a new thread
    fan_width: int
    fan_invocations: int  # each on a new thread
    chat_turns: int  # invocations on one thread
    reads: int  # latest-state reads, of which the median is reported
    rounds: int  # alternating ours/theirs rounds of loop, chain and fan-out


DEFAULT = Sizes(iterations=1000, chain_length=100, chain_invocations=20, fan_width=50,
                fan_invocations=20, chat_turns=200, reads=50, rounds=3)
QUICK = Sizes(iterations=10, chain_length=5, chain_invocations=2, fan_width=4,
              fan_invocations=2, chat_turns=5, reads=3, rounds=1)


# -- the server --------------------------------------------------------------------------------

def _admin(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def _new_schema(engine: str, mode: str) -> str:
    label = "ours" if engine == OURS else "lg"
    return f"bench_{label}_{mode.replace(':', '_').replace('+', '_')}_{uuid.uuid4().hex[:10]}"


def _create_schema(dsn: str, schema: str) -> None:
    from psycopg import sql

    with _admin(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _schema_bytes(dsn: str, schema: str) -> int:
    """The total size of the tables (heap, TOAST, indexes) in `schema`."""
    with _admin(dsn) as conn:
        row = conn.execute(SCHEMA_BYTES, (schema,)).fetchone()
    return int(row[0] or 0) if row else 0


def _drop_schema(dsn: str, schema: str) -> None:
    from psycopg import sql

    with _admin(dsn) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- the graphs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """One workload: its invocations (input, thread), steps in all, and the final-state check
    (on the state as a dict)."""

    name: str
    calls: list[tuple[dict[str, Any], str]]
    steps: int
    check: Callable[[dict[str, Any]], bool]
    read_thread: str | None  # the thread read after the run (None: no reads)


def workload(name: str, s: Sizes) -> Workload:
    if name == "loop":
        n = s.iterations
        return Workload(name, [({"count": 0}, READ_THREAD)], 2 * n,
                        lambda st: check_loop_result(st["count"], st["items"], n), READ_THREAD)
    if name == "chain":
        n = s.chain_length
        return Workload(name, [({"count": 0}, f"chain-{i}") for i in range(s.chain_invocations)],
                        n * s.chain_invocations,
                        lambda st: st["count"] == n and st["items"] == [f"s{i}" for i in range(n)],
                        None)
    if name == "fanout":
        w = s.fan_width
        return Workload(name, [({"total": 0}, f"fanout-{i}") for i in range(s.fan_invocations)],
                        2 * s.fan_invocations,
                        lambda st: st["total"] == w * (w - 1) // 2
                        and sorted(st["items"]) == list(range(w)), None)
    if name == "chat":
        expected = expected_chat(s.chat_turns)
        calls = [({"messages": [chat_message("user", turn)]}, CHAT_THREAD)
                 for turn in range(1, s.chat_turns + 1)]
        return Workload(name, calls, s.chat_turns, lambda st: st["messages"] == expected,
                        CHAT_THREAD)
    raise ValueError(f"unknown workload {name!r} (one of {', '.join(WORKLOADS)})")


def graph(engine: str, side: ModuleType, name: str, s: Sizes, asynchronous: bool) -> Any:
    """The SQLite benchmark's graph `name` for `engine`, from its `side` module (workloads or
    langgraph_workloads); `asynchronous`: its nodes as coroutine functions, same bodies."""
    if name == "loop":
        return side.loop_graph(s.iterations, asynchronous=asynchronous)
    if name == "chain":
        return side.chain_graph(s.chain_length, asynchronous=asynchronous)
    if name == "fanout":
        return side.fanout_graph(s.fan_width, asynchronous=asynchronous)
    if name == "chat":
        return side.chat_graph(None, asynchronous=asynchronous)
    raise ValueError(f"unknown workload {name!r}")


# -- one run of one engine ---------------------------------------------------------------------

@dataclass
class Outcome:
    """One run on a fresh schema: timed invocations, then the reads, then the bytes."""

    seconds: float
    final: dict[str, Any]
    db_bytes: int
    read_seconds: float | None = None  # the median
    read_state: dict[str, Any] | None = None


async def _atimed_median(call: Callable[[], Awaitable[Any]], times: int) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(times):
        start = time.perf_counter()
        result = await call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def run_ours(dsn: str, api: str, app_graph: Any, w: Workload, reads: int) -> Outcome:
    """Our PostgresCheckpointer on a fresh schema: the invocations through `api`, then `reads`
    latest-state reads of w.read_thread (get_state or, async, aget_state)."""
    from checkpoints import PostgresCheckpointer

    from .workloads import MAX_STEPS

    schema = _new_schema(OURS, api)
    try:
        saver = PostgresCheckpointer(dsn, schema=schema)
        try:
            app = app_graph.compile(checkpointer=saver)
            read_seconds, read_state = None, None
            if api == "sync":
                start, last = time.perf_counter(), None
                for value, thread in w.calls:
                    last = app.invoke(value, thread_id=thread, max_steps=MAX_STEPS)
                seconds = time.perf_counter() - start
                if reads and w.read_thread is not None:
                    thread = w.read_thread
                    read_seconds, snapshot = timed_median(lambda: app.get_state(thread), reads)
                    read_state = snapshot.state.model_dump()
            else:
                async def go() -> tuple[float, Any, float | None, Any]:
                    start, last = time.perf_counter(), None
                    for value, thread in w.calls:
                        last = await app.ainvoke(value, thread_id=thread, max_steps=MAX_STEPS)
                    seconds = time.perf_counter() - start
                    if reads and w.read_thread is not None:
                        thread = w.read_thread
                        median, snapshot = await _atimed_median(lambda: app.aget_state(thread),
                                                                reads)
                        return seconds, last, median, snapshot.state.model_dump()
                    return seconds, last, None, None

                seconds, last, read_seconds, read_state = asyncio.run(go())
        finally:
            saver.close()
        db_bytes = _schema_bytes(dsn, schema)
    finally:
        _drop_schema(dsn, schema)
    return Outcome(seconds, last.model_dump(), db_bytes, read_seconds, read_state)


def _their_connect_kwargs(schema: str) -> dict[str, Any]:
    from psycopg.rows import dict_row

    # what LangGraph's docs require of a connection handed to PostgresSaver
    return {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
            "options": f"-c search_path={schema}"}


def _their_config(thread: str) -> dict[str, Any]:
    from .langgraph_workloads import RECURSION_LIMIT

    return {"configurable": {"thread_id": thread}, "recursion_limit": RECURSION_LIMIT}


def run_theirs(dsn: str, api: str, durability: str, app_graph: Any, w: Workload,
               reads: int) -> Outcome:
    """LangGraph's PostgresSaver (sync) or AsyncPostgresSaver (async) on one connection to a
    fresh schema, set up before the clock; invoke/ainvoke with `durability`; then `reads`
    latest-state reads (get_state or, async, aget_state)."""
    import psycopg

    schema = _new_schema(THEIRS, f"{api}_{durability}")
    _create_schema(dsn, schema)
    try:
        if api == "sync":
            from langgraph.checkpoint.postgres import PostgresSaver

            with psycopg.connect(dsn, **_their_connect_kwargs(schema)) as conn:
                saver = PostgresSaver(conn)
                saver.setup()
                app = app_graph.compile(checkpointer=saver)
                start, last = time.perf_counter(), None
                for value, thread in w.calls:
                    last = app.invoke(value, _their_config(thread), durability=durability)
                seconds = time.perf_counter() - start
                read_seconds, read_state = None, None
                if reads and w.read_thread is not None:
                    config = _their_config(w.read_thread)
                    read_seconds, snapshot = timed_median(lambda: app.get_state(config), reads)
                    read_state = dict(snapshot.values)
        else:
            seconds, last, read_seconds, read_state = asyncio.run(
                _run_theirs_async(dsn, schema, durability, app_graph, w, reads))
        db_bytes = _schema_bytes(dsn, schema)
    finally:
        _drop_schema(dsn, schema)
    return Outcome(seconds, dict(last), db_bytes, read_seconds, read_state)


async def _run_theirs_async(dsn: str, schema: str, durability: str, app_graph: Any,
                            w: Workload, reads: int) -> tuple[float, Any, float | None, Any]:
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    conn = await psycopg.AsyncConnection.connect(dsn, **_their_connect_kwargs(schema))
    try:
        saver = AsyncPostgresSaver(conn)
        await saver.setup()
        app = app_graph.compile(checkpointer=saver)
        start, last = time.perf_counter(), None
        for value, thread in w.calls:
            last = await app.ainvoke(value, _their_config(thread), durability=durability)
        seconds = time.perf_counter() - start
        if reads and w.read_thread is not None:
            config = _their_config(w.read_thread)
            median, snapshot = await _atimed_median(lambda: app.aget_state(config), reads)
            return seconds, last, median, dict(snapshot.values)
        return seconds, last, None, None
    finally:
        await conn.close()


# -- the server's own limit --------------------------------------------------------------------

LIMIT_PAYLOAD = '[["work",0,{"count":1,"items":["item-0"]}]]' + " " * 100
"""A row the size of the loop's step checkpoint (~150 bytes)."""


def commit_limit(dsn: str, steps: int, rounds: int) -> Result:
    """The server's own limit for a durable loop: one bare autocommit INSERT per step on one
    connection (prepared after its first runs, as ours are), into an indexed table of its own,
    nothing else; the median of `rounds`. No engine that commits each step before the next
    runs can do more steps a second on this server, so this rate over LangGraph's is the
    highest speed ratio any such engine can reach here (`limits`)."""
    import psycopg

    schema = f"bench_limit_{uuid.uuid4().hex[:10]}"
    _create_schema(dsn, schema)
    runs = []
    try:
        with psycopg.connect(dsn, autocommit=True,
                             options=f"-c search_path={schema}") as conn:
            conn.execute("CREATE TABLE steps (id bigserial PRIMARY KEY, thread bigint NOT NULL, "
                         "step integer NOT NULL, payload text NOT NULL)")
            conn.execute("CREATE INDEX steps_by_thread ON steps(thread, id)")
            insert = "INSERT INTO steps(thread, step, payload) VALUES (1, %s, %s)"
            for _ in range(max(rounds, 1)):
                started = time.perf_counter()
                for step in range(steps):
                    conn.execute(insert, (step, LIMIT_PAYLOAD))
                runs.append(time.perf_counter() - started)
    finally:
        _drop_schema(dsn, schema)
    return Result("commit-limit", "sync", steps, statistics.median(runs), engine=OURS,
                  runs=runs, extra={"what": "a bare autocommit INSERT per step on one "
                                            "connection; median of the rounds"})


def limits(result: dict[str, Any]) -> list[dict[str, Any]]:
    """For each throughput comparison: the bare commit rate over theirs (the ceiling of the
    speed ratio for an engine committing every step) and our share of that rate. Chat and
    fan-out commit less than once per step on our side, so only loop and chain are shown."""
    limit = result.get("limit")
    if not limit:
        return []
    rate = limit["steps_per_second"]
    return [{"workload": c["workload"], "mode": c["mode"], "theirs_mode": c["theirs_mode"],
             "ceiling_ratio": rate / c["theirs_steps_per_second"],
             "ours_share": c["ours_steps_per_second"] / rate}
            for c in result["comparisons"]
            if c["target"] and c["workload"] in ("loop", "chain")]


# -- results -----------------------------------------------------------------------------------

def their_mode(api: str, durability: str) -> str:
    return f"{THEIR_SAVERS[api]}:{durability}"


def _result(engine: str, mode: str, w: Workload, s: Sizes, o: Outcome) -> Result:
    extra: dict[str, Any] = {"state_ok": w.check(o.final)}
    if w.name == "chat":
        extra.update(turns=s.chat_turns, messages=len(o.final["messages"]),
                     turns_per_second=round(s.chat_turns / o.seconds, 1),
                     bytes_per_turn=round(o.db_bytes / s.chat_turns))
    return Result(w.name, mode, w.steps, o.seconds, o.db_bytes, engine=engine, extra=extra)


def _read_result(engine: str, mode: str, api: str, w: Workload, s: Sizes,
                 o: Outcome) -> Result | None:
    if o.read_seconds is None or o.read_state is None:
        return None
    history = {"history_steps": w.steps} if w.name == "loop" else {"turns": s.chat_turns}
    return Result("latest-read", mode, 1, o.read_seconds, engine=engine, extra={
        "after": w.name, "api": "get_state" if api == "sync" else "aget_state",
        "median_ms": round(o.read_seconds * 1000, 3), "reads": s.reads,
        "state_ok": w.check(o.read_state), **history})


def _merge(results: list[Result]) -> Result:
    """The median round, its state check the conjunction of every round's."""
    merged = median_result(results)
    merged.extra = {**(merged.extra or {}),
                    "state_ok": all((r.extra or {}).get("state_ok") for r in results)}
    return merged


def _comparison(ours: Result, theirs: Result) -> dict[str, Any]:
    speed = ours.steps_per_second / theirs.steps_per_second
    bytes_ratio = ours.db_bytes / theirs.db_bytes if ours.db_bytes and theirs.db_bytes else None
    found = {"workload": ours.workload, "mode": ours.mode, "theirs_mode": theirs.mode,
             "ours_steps_per_second": ours.steps_per_second,
             "theirs_steps_per_second": theirs.steps_per_second, "speed_ratio": speed,
             "ours_db_bytes": ours.db_bytes, "theirs_db_bytes": theirs.db_bytes,
             "bytes_ratio": bytes_ratio,
             "ours_state_ok": (ours.extra or {}).get("state_ok"),
             "theirs_state_ok": (theirs.extra or {}).get("state_ok"),
             "round_speed_ratios": [t / o for o, t in zip(ours.runs, theirs.runs, strict=False)
                                    if o]}
    if ours.workload == "chat":
        found.update(ours_turns_per_second=(ours.extra or {}).get("turns_per_second"),
                     theirs_turns_per_second=(theirs.extra or {}).get("turns_per_second"))
    return found


# -- the run -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _server(dsn: str | None) -> Iterator[tuple[str, bool]]:
    """(dsn, whether it is a throwaway server started here)."""
    if dsn:
        yield dsn, False
        return
    from statemachine.testing.postgres import postgres_server

    with postgres_server() as started:  # fsync on: the server's default
        yield started, True


def run(quick: bool, compare: bool, dsn: str | None, rounds: int | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every workload and mode, ours (and theirs with `compare`), on the server at `dsn` (a
    throwaway one when None). Returns the rows, the pairs, the reads and the sizes."""
    from dataclasses import replace

    from . import workloads as ours_side

    theirs_side: ModuleType | None = None
    if compare:
        from . import langgraph_workloads as theirs_side
    s = QUICK if quick else DEFAULT
    if rounds:
        s = replace(s, rounds=rounds)
    say = progress or (lambda message: None)
    rows: list[Result] = []
    reads: list[Result] = []
    comparisons: list[dict[str, Any]] = []
    from .scale_out import server_info

    with _server(dsn) as (url, throwaway):
        server = {**server_info(url), "throwaway": throwaway}
        started = time.perf_counter()
        for name in WORKLOADS:
            w = workload(name, s)
            for api in APIS:
                asynchronous = api == "async"
                our_graph = graph(OURS, ours_side, name, s, asynchronous)
                their_graph = None if theirs_side is None else \
                    graph(THEIRS, theirs_side, name, s, asynchronous)
                durabilities = (TARGET_DURABILITY,) if name == "chat" \
                    else (TARGET_DURABILITY, EXTRA_DURABILITY)
                n_rounds = 1 if name == "chat" else s.rounds
                mine: list[Result] = []
                others: dict[str, list[Result]] = {d: [] for d in durabilities}
                for r in range(n_rounds):
                    say(f"{name} ({api}): round {r + 1}/{n_rounds}, ours")
                    o = run_ours(url, api, our_graph, w, s.reads if r == 0 else 0)
                    mine.append(_result(OURS, api, w, s, o))
                    read = _read_result(OURS, api, api, w, s, o)
                    if read is not None:
                        reads.append(read)
                    if their_graph is None:
                        continue
                    for durability in durabilities:
                        mode = their_mode(api, durability)
                        say(f"{name} ({api}): round {r + 1}/{n_rounds}, LangGraph {mode}")
                        wants_reads = r == 0 and durability == TARGET_DURABILITY
                        o = run_theirs(url, api, durability, their_graph, w,
                                       s.reads if wants_reads else 0)
                        others[durability].append(_result(THEIRS, mode, w, s, o))
                        read = _read_result(THEIRS, mode, api, w, s, o)
                        if read is not None:
                            reads.append(read)
                ours_row = _merge(mine)
                rows.append(ours_row)
                for durability, results in others.items():
                    if results:
                        theirs_row = _merge(results)
                        rows.append(theirs_row)
                        comparisons.append({**_comparison(ours_row, theirs_row),
                                            "durability": durability,
                                            "target": durability == TARGET_DURABILITY})
        say("the server's own limit: a bare commit per step")
        limit = commit_limit(url, 2 * s.iterations, s.rounds)
        elapsed = time.perf_counter() - started
    checks = [{"workload": r.workload, "mode": r.mode, "engine": r.engine,
               "after": (r.extra or {}).get("after"),
               "ok": bool((r.extra or {}).get("state_ok"))} for r in (*rows, *reads)]
    return {"sizes": asdict(s), "compare": compare, "server": server, "seconds": elapsed,
            "rows": [r.as_json() for r in rows], "reads": [r.as_json() for r in reads],
            "limit": limit.as_json(), "comparisons": comparisons, "checks": checks,
            "all_states_ok": all(c["ok"] for c in checks)}


# -- targets -----------------------------------------------------------------------------------

Target = tuple[str, bool | None, str]


def targets(result: dict[str, Any]) -> list[Target]:
    """(name, passed, value) of each target this run can compute: the ratios need --compare;
    our latest-state reads (sync API) are always there."""
    found: list[Target] = []
    for c in result["comparisons"]:
        if not c["target"]:
            continue
        where = f"{c['workload']} ({c['mode']})"
        saver = c["theirs_mode"].split(":")[0]
        ratio = c["speed_ratio"]
        found.append((f"{where}: our steps/s >= {SPEED_TARGET:g}x {saver} durability=sync",
                      ratio >= SPEED_TARGET,
                      f"{ratio:.2f}x ({c['ours_steps_per_second']:,.0f} vs "
                      f"{c['theirs_steps_per_second']:,.0f})"))
        b = c["bytes_ratio"]
        found.append((f"{where}: our bytes <= 1/{1 / BYTES_TARGET:g} of {saver}'s",
                      None if b is None else b <= BYTES_TARGET,
                      "not measured" if b is None else
                      f"{c['ours_db_bytes']:,} vs {c['theirs_db_bytes']:,} B = 1/{1 / b:.1f}"))
    for r in result["reads"]:
        e = r["extra"]
        if r["engine"] == OURS and e["api"] == "get_state":
            ms = r["seconds"] * 1000
            found.append((f"latest-state read after the {e['after']} (ours, get_state) "
                          f"<= {READ_TARGET_MS:g} ms", ms <= READ_TARGET_MS, f"{ms:.3f} ms"))
    return found


# -- output ------------------------------------------------------------------------------------

def _ok(value: Any) -> str:
    return "ok" if value else "FAILED"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None else format(value, spec) + suffix


def _throughput_line(r: dict[str, Any], c: dict[str, Any] | None) -> str:
    """One table line: our row `r` beside LangGraph's comparison `c` (None: ours alone)."""
    e = r["extra"]
    if c is None:
        c = {}
    turns = ""
    if r["workload"] == "chat":
        turns = f"{e['turns_per_second']:,.1f}" + \
            (f" | {c['theirs_turns_per_second']:,.1f}" if c else "")
    label = c["theirs_mode"] + ("" if c["target"] else " (extra)") if c else ""
    state = _ok(e["state_ok"]) + (f" | {_ok(c['theirs_state_ok'])}" if c else "")
    return (f"{r['workload']:<8} {r['mode']:<5} {label:<32} {r['steps_per_second']:>10,.0f} "
            f"{_fmt(c.get('theirs_steps_per_second'), ',.0f'):>11} "
            f"{_fmt(c.get('speed_ratio'), '.2f', 'x'):>7} {r['db_bytes']:>12,} "
            f"{_fmt(c.get('theirs_db_bytes'), ','):>13} {_fmt(c.get('bytes_ratio'), '.3f'):>7}"
            f"  {turns:<19}  {state}")


def print_report(result: dict[str, Any]) -> None:
    s = result["sizes"]
    print(f"sizes: loop {s['iterations']:,} iterations ({2 * s['iterations']:,} steps, one "
          f"thread); chain {s['chain_length']} nodes x {s['chain_invocations']} threads; "
          f"fanout {s['fan_width']} wide x {s['fan_invocations']} threads; chat "
          f"{s['chat_turns']} turns; {s['reads']} reads; rounds {s['rounds']} (chat: 1)")
    print()
    print("Throughput and bytes (ratios ours/theirs: speed, higher is better for us; bytes, "
          "lower is better); bytes: the engine's tables in its schema after the run")
    head = (f"{'workload':<8} {'mode':<5} {'langgraph':<32} {'ours st/s':>10} "
            f"{'theirs st/s':>11} {'speed':>7} {'ours bytes':>12} {'theirs bytes':>13} "
            f"{'bytes':>7}  {'turns/s ours|theirs':<19}  state ours|theirs")
    print_head(head)
    for r in result["rows"]:
        if r["engine"] == OURS:
            pairs = [c for c in result["comparisons"]
                     if (c["workload"], c["mode"]) == (r["workload"], r["mode"])]
            for c in pairs or [None]:
                print(_throughput_line(r, c))
    if result["compare"]:
        print("(extra: LangGraph's default durability, async, a step's checkpoint may still be "
              "in flight while the next runs; no target uses it)")
    print()
    print("Latest-state reads (median ms): sync mode get_state, async mode aget_state")
    head = f"{'after':<8} {'mode':<5} {'api':<10} {'ours ms':>9} {'theirs ms':>10}  state"
    print_head(head)
    reads = result["reads"]
    for r in reads:
        if r["engine"] != OURS:
            continue
        e = r["extra"]
        theirs = next((t for t in reads if t["engine"] != OURS
                       and t["extra"]["after"] == e["after"]
                       and t["extra"]["api"] == e["api"]), None)
        print(f"{e['after']:<8} {r['mode']:<5} {e['api']:<10} {e['median_ms']:>9.3f} "
              f"{'' if theirs is None else format(theirs['extra']['median_ms'], '.3f'):>10}  "
              f"{_ok(e['state_ok'])}"
              + ("" if theirs is None else f" | {_ok(theirs['extra']['state_ok'])}"))
    limit = result.get("limit")
    if limit:
        print()
        print(f"The server's own limit: a bare autocommit INSERT per step, one connection: "
              f"{limit['steps_per_second']:,.0f} commits/s")
        for row in limits(result):
            print(f"  {row['workload']:<6} {row['mode']:<5} vs {row['theirs_mode']:<26} "
                  f"ceiling {row['ceiling_ratio']:.2f}x (a commit per step, nothing else); "
                  f"ours reaches {row['ours_share']:.0%} of the limit")
    print()
    failed = [c for c in result["checks"] if not c["ok"]]
    print(f"state checks: {len(result['checks']) - len(failed)} of {len(result['checks'])} ok"
          + "".join(f"\n  FAILED: {c['engine']} {c['workload']} ({c['mode']})"
                    + (f" after the {c['after']}" if c["after"] else "") for c in failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--compare", choices=["langgraph"],
                        help="also run LangGraph's PostgresSaver and AsyncPostgresSaver")
    parser.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    parser.add_argument("--dsn", help="a PostgreSQL URL (default: start a throwaway server, "
                        "fsync on)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of loop, chain and "
                        f"fan-out (default {DEFAULT.rounds}; --quick {QUICK.rounds})")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    compare = args.compare == "langgraph"
    if compare and lacks(("langgraph.checkpoint.postgres", "langgraph.checkpoint.postgres.aio",
                          "benchmarks.langgraph_workloads"), MISSING_LANGGRAPH):
        return 2

    info, packages = head(PACKAGES)
    from statemachine.testing.postgres import PostgresNotFoundError

    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            from statemachine.testing.postgres import postgres_server

            try:
                dsn = stack.enter_context(postgres_server())
            except PostgresNotFoundError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        from .scale_out import server_info

        server = server_info(dsn)
        print(f"PostgreSQL {server['version']} "
              f"({'given --dsn' if args.dsn else 'throwaway server'}), "
              f"fsync={server['fsync']}, synchronous_commit={server['synchronous_commit']}")
        sys.stdout.flush()
        result = run(args.quick, compare, dsn, args.rounds, progress)
    result["server"]["throwaway"] = not args.dsn
    info["load_average_at_end"] = load_average()
    print_report(result)
    found = targets(result)
    print(f"\nTargets (computed from this run{'' if compare else '; ours alone'}"
          f"{'; --quick: sizes too small for them to mean much' if args.quick else ''}):")
    for name, passed, value in found:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[passed]
        print(f"  {verdict:<4}  {name:<70} {value}")
    print(f"\nran in {result['seconds']:.0f} s; load average at end: "
          f"{info['load_average_at_end']}")
    if args.json:
        document = {"machine": info, "versions": packages, **result,
                    "targets": [{"target": n, "passed": p, "value": v,
                                 "result": {True: "PASS", False: "FAIL", None: "n/a"}[p]}
                                for n, p, v in found]}
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=2)
    return 0 if result["all_states_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["DEFAULT", "QUICK", "Sizes", "commit_limit", "limits", "main", "run", "targets"]
