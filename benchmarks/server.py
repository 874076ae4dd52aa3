"""`python -m benchmarks.server [--quick] [--compare langgraph] [--json PATH] [--dsn URL]
[--conversations N] [--turns T]`

A server workload: many conversations at once in ONE event loop, as an async web server runs
them. `asyncio.gather` of N conversations (default 200), each doing T turns (default 5) one
after another on its own thread id. A turn is one `ainvoke` of `START -> reply -> END`, whose
state is a list of messages with an append reducer: the input appends one ~200-character user
message (seeded pseudo-random text, different per turn) and the async `reply` node awaits
`asyncio.sleep(d)` (a fake model call; d drawn before the run from a seeded `random.Random`,
uniformly in 5-50 ms, the same for both engines at each (conversation, turn)) and appends a
~200-character reply. The node finds its (conversation, turn) from the thread id and the number
of messages in the state. One compiled app and one checkpointer serve every conversation of a
run, as in a server; before the clock starts each engine serves one warm-up turn on a thread
of its own (not counted, not checked).

Measured per engine and database:

* throughput: turns that succeeded per second of wall clock, from the first turn started to
  the last one finished (printed beside the zero-overhead bound: the turns over the longest
  conversation's summed sleeps), and the CPU time this process spent meanwhile (all threads);
* turn latency: each `ainvoke` call's wall time, p50/p95/p99/max in ms, and its overhead (the
  latency minus that turn's own sleep), p50/p99;
* nothing lost: after the run every thread's final state is read back (ours: `aget_state`;
  LangGraph's: `aget_state(config).values["messages"]`) and must hold exactly 2 x T messages in
  order (user 0, reply 0, user 1, ...); the threads that do not are counted;
* errors: an exception raised by a turn is caught, counted (the turn failed) and the first
  line of its message kept; those mentioning "database is locked" are counted apart.

Databases (each engine on a fresh file or schema of its own):

* SQLite: ours `SQLiteCheckpointer(path)` with its defaults (WAL, synchronous=NORMAL, every
  step committed before the next runs); LangGraph's `AsyncSqliteSaver` on `aiosqlite.connect`
  with `PRAGMA journal_mode=WAL` and `PRAGMA synchronous=NORMAL`, `setup()` before timing,
  invoked with `durability="sync"` (the like-for-like guarantee).
* PostgreSQL (fsync on): ours `PostgresCheckpointer(dsn, schema=..., max_connections=20)`;
  LangGraph's `AsyncPostgresSaver` on a `psycopg_pool.AsyncConnectionPool` (max_size 20, the
  same pool size, autocommit, prepare_threshold=0, dict_row, its own schema through
  search_path), `durability="sync"`.
  Without --dsn a throwaway server is started (`statemachine.testing.postgres`); without
  PostgreSQL binaries the PostgreSQL rows are skipped.

--quick: 10 conversations x 2 turns, sleeps of 1-5 ms. LangGraph is imported only with
--compare langgraph. Speed is measured, never asserted; the test suite runs --quick so this
cannot rot. Exits 1 when a turn of ours failed or a thread of ours lost or reordered a
message, else 0 (the speed targets are printed, they do not change the exit code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import operator
import random
import string
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from .about import head, lacks, load_average, print_head, progress
from .common import positive_int

OURS = "statemachine"
THEIRS = "langgraph"
SQLITE = "sqlite"
POSTGRES = "postgres"
CONVERSATIONS = 200
TURNS = 5
QUICK_CONVERSATIONS = 10
QUICK_TURNS = 2
DELAYS = (0.005, 0.050)
"""Seconds the fake model call sleeps: uniform in this range."""
QUICK_DELAYS = (0.001, 0.005)
MESSAGE_CHARS = 200
SEED = 20240518
LOCKED = "database is locked"
POOL_SIZE = 20
KEPT_MESSAGES = 20
"""Distinct error lines kept per row (each with its count)."""
PACKAGES = ("statemachine", "pydantic", "aiosqlite", "psycopg", "psycopg-pool", "langgraph",
            "langgraph-checkpoint", "langgraph-checkpoint-sqlite",
            "langgraph-checkpoint-postgres")
SETTINGS = {
    (OURS, SQLITE): "SQLiteCheckpointer(path), its defaults (WAL, synchronous=NORMAL)",
    (THEIRS, SQLITE): "AsyncSqliteSaver on aiosqlite, WAL, synchronous=NORMAL, "
                      "durability='sync'",
    (OURS, POSTGRES): f"PostgresCheckpointer(dsn, schema=..., max_connections={POOL_SIZE}): "
                      "the same pool size as LangGraph's",
    (THEIRS, POSTGRES): f"AsyncPostgresSaver on AsyncConnectionPool(max_size="
                        f"{POOL_SIZE}), durability='sync'",
}


# -- the workload --------------------------------------------------------------------------------

def _text(head: str, size: int) -> str:
    """`size` characters: `head`, then seeded pseudo-random words (the same for the same head)."""
    rng = random.Random(head)
    letters = string.ascii_lowercase
    words = []
    length = len(head)
    while length < size:
        word = "".join(rng.choices(letters, k=rng.randint(2, 9)))
        words.append(word)
        length += len(word) + 1
    return (head + " ".join(words))[:size]


@dataclass(frozen=True)
class Workload:
    """What both engines serve: per (conversation, turn) the user message, the reply and the
    sleep. Conversation `conversations` (one past the last) is the warm-up thread."""

    conversations: int
    turns: int
    delay_range: tuple[float, float]
    delays: tuple[tuple[float, ...], ...]
    users: tuple[tuple[str, ...], ...]
    replies: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, conversations: int, turns: int, delay_range: tuple[float, float],
              seed: int = SEED) -> Workload:
        rng = random.Random(seed)
        low, high = delay_range
        count = conversations + 1  # and the warm-up thread
        delays = tuple(tuple(rng.uniform(low, high) for _ in range(turns))
                       for _ in range(count))
        users = tuple(tuple(_text(f"user {c}.{t}: ", MESSAGE_CHARS) for t in range(turns))
                      for c in range(count))
        replies = tuple(tuple(_text(f"reply {c}.{t}: ", MESSAGE_CHARS) for t in range(turns))
                        for c in range(count))
        return cls(conversations, turns, delay_range, delays, users, replies)

    @staticmethod
    def thread(conversation: int) -> str:
        return f"c{conversation:05d}"

    @staticmethod
    def conversation_of(thread: str) -> int:
        return int(thread[1:])

    @property
    def warmup(self) -> int:
        return self.conversations

    async def reply(self, thread: str, messages_so_far: int) -> str:
        """The fake model call: sleep this turn's delay, return this turn's reply. The user
        message of turn t is in already, so 2t + 1 messages precede the reply."""
        conversation, turn = self.conversation_of(thread), messages_so_far // 2
        await asyncio.sleep(self.delays[conversation][turn])
        return self.replies[conversation][turn]

    @property
    def bound(self) -> float:
        """Turns per second with no overhead at all: every turn takes just its sleep, so the
        run lasts as long as the conversation whose sleeps add up to the most."""
        longest = max(sum(self.delays[c]) for c in range(self.conversations))
        return self.conversations * self.turns / longest

    def expected(self, conversation: int) -> list[str]:
        return [message for turn in range(self.turns)
                for message in (self.users[conversation][turn],
                                self.replies[conversation][turn])]


# -- driving it ----------------------------------------------------------------------------------

Invoke = Callable[[str, str], Awaitable[Any]]
"""(thread id, user message) -> one turn."""
Read = Callable[[str], Awaitable[list[str]]]
"""thread id -> the thread's messages now."""


@dataclass
class Timings:
    latencies: list[list[float | None]]
    """Seconds of each ainvoke, [conversation][turn]; None for a turn that never started."""
    failed: list[list[bool]]
    errors: list[BaseException]
    wall: float


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _mentions_locked(exc: BaseException) -> bool:
    """Whether the error or any error it was raised from says the database is locked."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if LOCKED in str(current).lower():
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def drive(work: Workload, invoke: Invoke) -> Timings:
    """Every conversation at once, each one's turns one after another; the wall clock runs
    from the first turn started to the last one finished."""
    n, turns = work.conversations, work.turns
    latencies: list[list[float | None]] = [[None] * turns for _ in range(n)]
    failed = [[False] * turns for _ in range(n)]
    errors: list[BaseException] = []
    starts: list[float] = []
    ends: list[float] = []

    async def conversation(c: int) -> None:
        thread = work.thread(c)
        for t in range(turns):
            started = time.perf_counter()
            starts.append(started)
            try:
                await invoke(thread, work.users[c][t])
            except Exception as exc:  # a server answers the next request anyway
                errors.append(exc)
                failed[c][t] = True
            ended = time.perf_counter()
            ends.append(ended)
            latencies[c][t] = ended - started

    outcomes = await asyncio.gather(*(conversation(c) for c in range(n)),
                                    return_exceptions=True)
    for c, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):  # not an Exception: the rest never ran
            errors.append(outcome)
            for t in range(turns):
                if latencies[c][t] is None:
                    failed[c][t] = True
    wall = max(ends) - min(starts) if starts else 0.0
    return Timings(latencies, failed, errors, wall)


async def wrong_threads(work: Workload, read: Read) -> int:
    """Threads whose final messages are not exactly the 2 x T expected, in order."""
    wrong = 0
    for c in range(work.conversations):
        try:
            messages = await read(work.thread(c))
        except Exception:
            wrong += 1
            continue
        if list(messages) != work.expected(c):
            wrong += 1
    return wrong


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def measure(engine: str, database: str, work: Workload, invoke: Invoke,
                  read: Read) -> dict[str, Any]:
    """One warm-up turn, the timed run, then the check of every thread: one table row."""
    await invoke(work.thread(work.warmup), work.users[work.warmup][0])
    cpu = time.process_time()
    timings = await drive(work, invoke)
    cpu = time.process_time() - cpu
    wrong = await wrong_threads(work, read)
    latencies, delays, overheads = [], [], []
    for c in range(work.conversations):
        for t in range(work.turns):
            latency = timings.latencies[c][t]
            if latency is not None:
                latencies.append(latency * 1000)
                delays.append(work.delays[c][t] * 1000)
                overheads.append((latency - work.delays[c][t]) * 1000)
    failed = sum(map(sum, timings.failed))
    done = work.conversations * work.turns - failed
    lines = Counter(_first_line(exc) for exc in timings.errors)
    return {
        "engine": engine, "database": database, "settings": SETTINGS[(engine, database)],
        "conversations": work.conversations, "turns": work.turns,
        "total_turns": work.conversations * work.turns, "wall_seconds": timings.wall,
        "cpu_seconds": cpu,
        "turns_per_second": done / timings.wall if timings.wall else 0.0,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99), "max_ms": max(latencies, default=math.nan),
        "overhead_p50_ms": percentile(overheads, 50),
        "overhead_p99_ms": percentile(overheads, 99),
        "threads_wrong": wrong, "failed_turns": failed, "errors": len(timings.errors),
        "locked_errors": sum(map(_mentions_locked, timings.errors)),
        "error_lines": dict(lines.most_common(KEPT_MESSAGES)),
        "latencies_ms": latencies, "delays_ms": delays,
    }


# -- our engine ----------------------------------------------------------------------------------

def ours_graph(work: Workload) -> Any:
    from statemachine import END, START, RunContext, StateGraph

    class Chat(BaseModel):
        messages: Annotated[list[str], operator.add] = []

    async def reply(state: Chat, ctx: RunContext) -> dict[str, Any]:
        assert ctx.thread_id is not None
        return {"messages": [await work.reply(ctx.thread_id, len(state.messages))]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


async def ours(work: Workload, database: str, saver: Any) -> dict[str, Any]:
    """Our engine on `saver` (closed at the end)."""
    try:
        app = ours_graph(work).compile(checkpointer=saver)

        async def invoke(thread: str, text: str) -> Any:
            return await app.ainvoke({"messages": [text]}, thread_id=thread)

        async def read(thread: str) -> list[str]:
            return list((await app.aget_state(thread)).state.messages)

        return await measure(OURS, database, work, invoke, read)
    finally:
        await saver.aclose()


async def ours_sqlite(work: Workload, path: Path) -> dict[str, Any]:
    from checkpoints import SQLiteCheckpointer

    return await ours(work, SQLITE, SQLiteCheckpointer(path))


async def ours_postgres(work: Workload, dsn: str, schema: str) -> dict[str, Any]:
    from checkpoints import PostgresCheckpointer

    return await ours(work, POSTGRES, PostgresCheckpointer(dsn, schema=schema,
                                                           max_connections=POOL_SIZE))


# -- LangGraph -----------------------------------------------------------------------------------

def theirs_graph(work: Workload) -> Any:
    from typing import TypedDict

    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph

    class Chat(TypedDict):
        messages: Annotated[list[str], operator.add]

    async def reply(state: Chat, config: RunnableConfig) -> dict[str, Any]:
        thread = config["configurable"]["thread_id"]
        return {"messages": [await work.reply(thread, len(state["messages"]))]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


async def theirs(work: Workload, database: str, saver: Any) -> dict[str, Any]:
    app = theirs_graph(work).compile(checkpointer=saver)

    def config(thread: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread}}

    async def invoke(thread: str, text: str) -> Any:
        return await app.ainvoke({"messages": [text]}, config(thread), durability="sync")

    async def read(thread: str) -> list[str]:
        return list((await app.aget_state(config(thread))).values["messages"])

    return await measure(THEIRS, database, work, invoke, read)


async def theirs_sqlite(work: Workload, path: Path) -> dict[str, Any]:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await aiosqlite.connect(path)
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        return await theirs(work, SQLITE, saver)
    finally:
        await conn.close()


async def theirs_postgres(work: Workload, dsn: str, schema: str) -> dict[str, Any]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(dsn, max_size=POOL_SIZE, open=False, kwargs={
        "autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
        "options": f"-c search_path={schema}"})
    await pool.open(wait=True)
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        return await theirs(work, POSTGRES, saver)
    finally:
        await pool.close()


# -- PostgreSQL housekeeping -------------------------------------------------------------------

def _create_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _drop_schemas(dsn: str, schemas: Sequence[str]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


# -- the run -------------------------------------------------------------------------------------

def sizes(quick: bool, conversations: int | None = None,
          turns: int | None = None) -> tuple[int, int, tuple[float, float]]:
    """(conversations, turns, delay range): the given ones, else the defaults of the mode."""
    return (conversations or (QUICK_CONVERSATIONS if quick else CONVERSATIONS),
            turns or (QUICK_TURNS if quick else TURNS), QUICK_DELAYS if quick else DELAYS)


def _postgres_rows(work: Workload, compare: bool, dsn: str,
                   progress: Callable[[str], None]) -> list[dict[str, Any]]:
    from .scale_out import server_info

    rows = []
    tag = uuid.uuid4().hex[:10]
    ours_schema, theirs_schema = f"server_ours_{tag}", f"server_lg_{tag}"
    try:
        progress(f"ours on PostgreSQL: {work.conversations} conversations x {work.turns} turns")
        rows.append(asyncio.run(ours_postgres(work, dsn, ours_schema)))
        if compare:
            try:
                import langgraph.checkpoint.postgres.aio  # noqa: F401
            except ImportError as exc:
                progress(f"LangGraph on PostgreSQL skipped: {exc} "
                         "(pip install langgraph-checkpoint-postgres)")
            else:
                progress("LangGraph on PostgreSQL")
                _create_schema(dsn, theirs_schema)
                rows.append(asyncio.run(theirs_postgres(work, dsn, theirs_schema)))
    finally:
        _drop_schemas(dsn, (ours_schema, theirs_schema))
    server = server_info(dsn)
    for row in rows:
        row["server"] = server
    return rows


def run(quick: bool, compare: bool, dsn: str | None, conversations: int | None,
        turns: int | None, tmp: Path,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both databases (PostgreSQL when a DSN is given or binaries are found), ours, and with
    `compare` LangGraph's too (its packages must be importable). `conversations`/`turns`
    None: the defaults of the mode."""
    say = progress or (lambda message: None)
    n, t, delay_range = sizes(quick, conversations, turns)
    work = Workload.build(n, t, delay_range)
    out: dict[str, Any] = {
        "sizes": {"conversations": n, "turns": t, "delay_ms": [d * 1000 for d in delay_range],
                  "message_chars": MESSAGE_CHARS, "seed": SEED, "quick": quick,
                  "bound_turns_per_second": work.bound},
        "compare": compare, "rows": [], "postgres": None}
    rows: list[dict[str, Any]] = out["rows"]
    say(f"ours on SQLite: {n} conversations x {t} turns")
    rows.append(asyncio.run(ours_sqlite(work, tmp / "ours.db")))
    if compare:
        say("LangGraph on SQLite")
        rows.append(asyncio.run(theirs_sqlite(work, tmp / "langgraph.db")))
    with contextlib.ExitStack() as stack:
        if dsn is None:
            from statemachine.testing.postgres import PostgresNotFoundError, postgres_server

            try:
                dsn = stack.enter_context(postgres_server())
            except PostgresNotFoundError as exc:
                out["postgres"] = {"skipped": str(exc)}
                say(f"PostgreSQL rows skipped: {exc}")
                return out
            throwaway = True
        else:
            throwaway = False
        rows.extend(_postgres_rows(work, compare, dsn, say))
        server = rows[-1].get("server", {})
        out["postgres"] = {**server, "throwaway": throwaway}
    return out


# -- targets and output --------------------------------------------------------------------------

def _row(result: dict[str, Any], engine: str, database: str) -> dict[str, Any] | None:
    return next((r for r in result["rows"]
                 if r["engine"] == engine and r["database"] == database), None)


def targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Per database ours ran on: the speed targets against LangGraph (when it ran too; None
    when it did not), nothing lost, no "database is locked"."""
    found: list[tuple[str, bool | None, str]] = []
    for database, label in ((SQLITE, "SQLite"), (POSTGRES, "PostgreSQL")):
        mine = _row(result, OURS, database)
        if mine is None:
            continue
        other = _row(result, THEIRS, database)
        if result.get("compare"):
            if other is None:
                found.append((f"{label}: throughput >= 5x LangGraph's", None, "LangGraph not run"))
                found.append((f"{label}: p99 turn latency <= 1/3 of LangGraph's", None,
                              "LangGraph not run"))
            else:
                speed, theirs_speed = mine["turns_per_second"], other["turns_per_second"]
                ratio = speed / theirs_speed if theirs_speed else math.inf
                found.append((f"{label}: throughput >= 5x LangGraph's", ratio >= 5,
                              f"{ratio:.2f}x ({speed:,.0f} vs {theirs_speed:,.0f} turns/s)"))
                p99, theirs_p99 = mine["p99_ms"], other["p99_ms"]
                share = p99 / theirs_p99 if theirs_p99 else math.inf
                found.append((f"{label}: p99 turn latency <= 1/3 of LangGraph's",
                              share <= 1 / 3,
                              f"{share:.3f}x ({p99:,.1f} vs {theirs_p99:,.1f} ms)"))
        wrong, failed = mine["threads_wrong"], mine["failed_turns"]
        found.append((f"{label}: nothing lost (ours)", wrong == 0 and failed == 0,
                      f"{wrong} threads wrong, {failed} failed turns"))
        found.append((f"{label}: no 'database is locked' error (ours)",
                      mine["locked_errors"] == 0, f"{mine['locked_errors']} locked errors"))
    return found


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'engine':<13} {'database':<9} {'convs':>5} {'turns':>6} {'turns/s':>8} "
            f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8} {'ovh p50':>7} "
            f"{'ovh p99':>7} {'wrong':>5} {'failed':>6} {'locked':>6}")
    print_head(head)
    for r in rows:
        print(f"{r['engine']:<13} {r['database']:<9} {r['conversations']:>5} "
              f"{r['total_turns']:>6,} {r['turns_per_second']:>8,.1f} {r['p50_ms']:>7.1f} "
              f"{r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>8.1f} "
              f"{r['overhead_p50_ms']:>7.1f} {r['overhead_p99_ms']:>7.1f} "
              f"{r['threads_wrong']:>5} {r['failed_turns']:>6} {r['locked_errors']:>6}")
    print("(turns = conversations x turns each; turns/s: turns that succeeded over the wall "
          "clock, first turn started -> last finished; latency: each ainvoke's wall time; "
          "ovh: latency minus the turn's own sleep; wrong: threads whose final messages are "
          "not the expected 2 x turns in order)")
    for r in rows:
        print(f"  {r['engine']} on {r['database']}: {r['settings']}; wall "
              f"{r['wall_seconds']:.2f} s, CPU of this process {r['cpu_seconds']:.2f} s "
              f"({r['cpu_seconds'] * 1000 / r['total_turns']:.2f} ms a turn)")
        for line, count in r["error_lines"].items():
            print(f"    error x{count}: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes: {QUICK_CONVERSATIONS} conversations x {QUICK_TURNS} "
                        f"turns, sleeps of {QUICK_DELAYS[0] * 1000:g}-"
                        f"{QUICK_DELAYS[1] * 1000:g} ms")
    parser.add_argument("--compare", choices=["langgraph"],
                        help="run LangGraph on the same workload too and print the targets")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the results (per-turn latencies included) as JSON")
    parser.add_argument("--dsn", help="a PostgreSQL URL (default: start a throwaway server)")
    parser.add_argument("--conversations", type=positive_int,
                        help=f"conversations at once (default {CONVERSATIONS})")
    parser.add_argument("--turns", type=positive_int,
                        help=f"turns per conversation (default {TURNS})")
    args = parser.parse_args(argv)
    compare = args.compare == "langgraph"
    if compare:
        from .__main__ import MISSING_LANGGRAPH

        if lacks(("aiosqlite", "langgraph.graph", "langgraph.checkpoint.sqlite.aio"),
                 MISSING_LANGGRAPH):
            return 2

    info, packages = head(PACKAGES)
    n, t, delay_range = sizes(args.quick, args.conversations, args.turns)
    print(f"sizes: {n} conversations at once x {t} turns each in one event loop; sleeps "
          f"{delay_range[0] * 1000:g}-{delay_range[1] * 1000:g} ms (seed {SEED}); messages "
          f"of {MESSAGE_CHARS} characters")
    sys.stdout.flush()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="statemachine-server-") as tmp:
        result = run(args.quick, compare, args.dsn, n, t, Path(tmp), progress)
    elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()

    print(f"zero-overhead bound (each turn only its sleep): "
          f"{result['sizes']['bound_turns_per_second']:,.0f} turns/s")
    postgres = result["postgres"] or {}
    if "skipped" in postgres:
        print(f"PostgreSQL rows skipped: {postgres['skipped']}")
    else:
        print(f"PostgreSQL {postgres['version']} ("
              f"{'throwaway server' if postgres['throwaway'] else 'given --dsn'}), "
              f"fsync={postgres['fsync']}, synchronous_commit={postgres['synchronous_commit']}")
    print()
    print_table(result["rows"])
    print()
    found = targets(result)
    print("Targets (computed from this run" + ("" if compare else
                                               "; the LangGraph ones need --compare langgraph")
          + "):")
    width = max((len(name) for name, _, _ in found), default=0)
    for name, passed, value in found:
        verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
        print(f"  {verdict:<4}  {name:<{width}}  {value}")
    print(f"\n(ran in {elapsed:.0f} s; load average at end: {info['load_average_at_end']})")
    if args.json:
        document = {"machine": info, "versions": packages, **result, "seconds": elapsed,
                    "targets": [{"target": name, "passed": passed,
                                 "result": "n/a" if passed is None else
                                 "PASS" if passed else "FAIL", "value": value}
                                for name, passed, value in found]}
        args.json.write_text(json.dumps(document, indent=2))
    lost = any(r["threads_wrong"] or r["failed_turns"]
               for r in result["rows"] if r["engine"] == OURS)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Workload", "main", "run", "targets"]
