"""PostgreSQL's own concerns, against a real server (the session's `postgres_dsn`, each test in a
schema of its own): the schema and its migrations, connecting and reconnecting, writes that are
safe to repeat, and leases judged by the server's clock.

What every durable store must do (reopening, growth, reads, sharing, fencing, read-only) runs
against PostgreSQL in test_storage.py and the behavioural suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import random
import socket
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import psycopg
import pytest
from conftest import postgres_schema, side_by_side
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel

from checkpoints import PostgresCheckpointer
from checkpoints import postgres as pg_module
from checkpoints.base import NewCheckpoint, Owner, PendingWrite
from checkpoints.store_types import StoreWrite
from statemachine import (
    END,
    START,
    CheckpointError,
    GraphMismatchError,
    RunContext,
    StateGraph,
    ThreadBusyError,
    reducers,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dsn(postgres_dsn):
    return postgres_dsn


@pytest.fixture
def schema():
    return postgres_schema()


@pytest.fixture
def savers():
    """Open checkpointers through `savers(dsn, schema, ...)`; all are closed after the test."""
    opened: list[PostgresCheckpointer] = []

    def open_saver(dsn: str, schema: str, **options) -> PostgresCheckpointer:
        saver = PostgresCheckpointer(dsn, schema=schema, **options)
        opened.append(saver)
        return saver

    yield open_saver
    for saver in opened:
        saver.close()


def connect(dsn: str, schema: str | None = None) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    if schema is not None:
        conn.execute(f'SET search_path TO "{schema}"')
    return conn


def query(dsn: str, schema: str, sql: str, *args: object) -> list[tuple]:
    with connect(dsn, schema) as conn:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]


def tables(dsn: str, schema: str) -> set[str]:
    return {name for (name,) in query(
        dsn, schema, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        schema)}


def dump(dsn: str, schema: str) -> dict[str, list[tuple]]:
    """Every row of every table in the schema, with each table's columns."""
    with connect(dsn, schema) as conn:
        names = sorted(tables(dsn, schema))
        out: dict[str, list[tuple]] = {}
        for name in names:
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE "
                "table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (schema, name)).fetchall()
            rows = sorted((tuple(r) for r in conn.execute(f'SELECT * FROM "{name}"')), key=repr)
            out[name] = [tuple(columns), *rows]
        return out


def runs_state(dsn: str, schema: str) -> dict[str, list[tuple]]:
    """Every checkpoint, pending write and thread holder: what a write could change (leaving out
    lease expiry times, which a live holder's heartbeat keeps moving)."""
    return {"checkpoints": query(dsn, schema, "SELECT * FROM checkpoints ORDER BY id"),
            "pending_writes": query(dsn, schema, "SELECT * FROM pending_writes ORDER BY "
                                                 "checkpoint, node, idx"),
            "threads": query(dsn, schema, "SELECT key, thread_id, owner, owner_pid, owner_host "
                                          "FROM threads ORDER BY key")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chain_of(error: BaseException) -> str:
    """The messages of an exception and everything it was raised from."""
    parts = []
    exc: BaseException | None = error
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


class Items(BaseModel):
    n: int = 0
    items: Annotated[list[str], reducers.append] = []


def loop(limit: int, on_step=None) -> StateGraph:
    """One node appending one item per iteration, `limit` iterations; `on_step(n)` runs in the
    node before it returns (once per execution of the node)."""

    def work(state: Items) -> dict:
        if on_step is not None:
            on_step(state.n)
        return {"n": state.n + 1, "items": [f"item-{state.n}"]}

    g = StateGraph(Items)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "again" if s.n < limit else "done",
                            {"again": "work", "done": END})
    return g


# -- the schema ------------------------------------------------------------------------------

TABLES = {"schema_version", "threads", "checkpoints", "pending_writes", "cache", "jobs",
          "store_items", "store_vectors"}


def test_a_new_schema_gets_the_tables_and_the_current_version(dsn, schema, savers):
    assert tables(dsn, schema) == set()
    saver = savers(dsn, schema)
    assert tables(dsn, schema) == TABLES
    assert query(dsn, schema, "SELECT version FROM schema_version") == [
        (pg_module.SCHEMA_VERSION,)]
    assert loop(3).compile(checkpointer=saver).invoke({}, thread_id="t").n == 3
    saver.close()
    # a second process opening it keeps it, its version and its threads
    again = savers(dsn, schema)
    assert loop(3).compile(checkpointer=again).get_state("t").state.items == [
        "item-0", "item-1", "item-2"]
    assert query(dsn, schema, "SELECT version FROM schema_version") == [
        (pg_module.SCHEMA_VERSION,)]
    # nothing was created outside the schema it was given
    assert query(dsn, schema, "SELECT count(*) FROM information_schema.tables WHERE "
                              "table_name = 'checkpoints' AND table_schema = 'public'") == [(0,)]


def test_a_schema_name_that_is_not_an_identifier_is_refused(dsn):
    with pytest.raises(CheckpointError, match="identifier"):
        PostgresCheckpointer(dsn, schema='x"; DROP SCHEMA public; --')


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_a_newer_schema_version_is_refused_and_left_unchanged(dsn, schema, savers, read_only):
    with PostgresCheckpointer(dsn, schema=schema) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="t")
    newer = pg_module.SCHEMA_VERSION + 1
    with connect(dsn, schema) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (newer,))
    before = dump(dsn, schema)
    with pytest.raises(CheckpointError, match="newer") as info:
        savers(dsn, schema, read_only=read_only)
    assert str(newer) in str(info.value)
    assert dump(dsn, schema) == before


FOREIGN = {
    "users": ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
              "INSERT INTO users VALUES (1, 'ada')"],
    # another tool's tables under our names: still not ours
    "lookalike": ["CREATE TABLE threads (thread_id TEXT)",
                  "CREATE TABLE checkpoints (id INTEGER, data BYTEA)",
                  "INSERT INTO threads VALUES ('t')"],
    # the table an older Flyway keeps its migrations in
    "flyway": ["CREATE TABLE schema_version (installed_rank INTEGER PRIMARY KEY, "
               "version VARCHAR(50), description VARCHAR(200) NOT NULL, success BOOLEAN)",
               "INSERT INTO schema_version VALUES (1, '1', 'init', true)",
               "INSERT INTO schema_version VALUES (2, '2.1', 'orders', true)"],
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_a_schema_holding_someone_elses_tables_is_refused_and_left_unchanged(
        dsn, schema, savers, kind, read_only):
    with connect(dsn) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        for statement in FOREIGN[kind]:
            conn.execute(statement)
    before = dump(dsn, schema)
    with pytest.raises(CheckpointError, match=schema):
        savers(dsn, schema, read_only=read_only)
    assert dump(dsn, schema) == before


def test_a_read_only_checkpointer_creates_no_schema(dsn, schema):
    with pytest.raises(CheckpointError, match="holds no statemachine tables"):
        PostgresCheckpointer(dsn, schema=schema, read_only=True)
    assert query(dsn, schema, "SELECT count(*) FROM information_schema.schemata WHERE "
                              "schema_name = %s", schema) == [(0,)]


_OPEN_WHEN_TOLD = """
import sys
from checkpoints import PostgresCheckpointer
print("ready", flush=True)
sys.stdin.readline()
PostgresCheckpointer(sys.argv[1], schema=sys.argv[2]).close()
"""


def test_processes_opening_one_new_schema_at_once_all_succeed(dsn):
    schema = postgres_schema()
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_TOLD, dsn, schema], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        for proc in procs:  # every process has imported everything: start them together
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert query(dsn, schema, "SELECT version FROM schema_version") == [
        (pg_module.SCHEMA_VERSION,)]
    assert tables(dsn, schema) == TABLES


def test_an_old_schema_is_migrated_once_and_keeps_its_threads(dsn, schema, savers,
                                                               monkeypatch):
    with PostgresCheckpointer(dsn, schema=schema) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="old")
    old = pg_module.SCHEMA_VERSION
    # a future release: one more migration, which counts how often it runs, and which
    # readers need too
    monkeypatch.setattr(pg_module, "SCHEMA_VERSION", old + 1)
    monkeypatch.setattr(pg_module, "READABLE_FROM", old + 1)
    monkeypatch.setitem(pg_module._MIGRATIONS, old, f"""
        ALTER TABLE checkpoints ADD COLUMN note TEXT;
        CREATE TABLE IF NOT EXISTS migration_runs (ran_at TIMESTAMPTZ DEFAULT now());
        INSERT INTO migration_runs DEFAULT VALUES;
        SELECT pg_sleep(0.2);  -- long enough for the other openers to queue up behind it
        UPDATE checkpoints SET note = 'from version {old}';
    """)

    # a read-only checkpointer does not migrate, and changes nothing
    before = dump(dsn, schema)
    with pytest.raises(CheckpointError, match="needs upgrading"):
        savers(dsn, schema, read_only=True)
    assert dump(dsn, schema) == before

    # many workers of the new release start together: one migrates, the others wait for it
    with ThreadPoolExecutor(5) as pool:
        opened = list(pool.map(lambda _: savers(dsn, schema), range(5)))
    assert query(dsn, schema, "SELECT version FROM schema_version") == [(old + 1,)]
    assert query(dsn, schema, "SELECT count(*) FROM migration_runs") == [(1,)]
    assert query(dsn, schema, "SELECT DISTINCT note FROM checkpoints") == [
        (f"from version {old}",)]

    app = loop(4).compile(checkpointer=opened[0])
    assert app.get_state("old").state == Items(n=2, items=["item-0", "item-1"])
    assert [t.thread_id for t in app.threads()] == ["old"]
    final = app.invoke({"items": ["new"]}, thread_id="old")  # runs on the migrated schema
    assert final == Items(n=4, items=["item-0", "item-1", "new", "item-2", "item-3"])
    savers(dsn, schema, read_only=True)  # and now a reader opens it
    assert query(dsn, schema, "SELECT count(*) FROM migration_runs") == [(1,)]


def test_a_version_1_schema_gets_the_graph_column_and_its_threads_are_bound_by_their_next_run(
        dsn, schema, savers):
    """Schema 1 (before threads recorded their graph): a reader opens it as it is (its threads
    bound to no graph) and sees the bindings once a writer migrated it; the thread it held is
    bound by its next run, and another graph is refused."""
    with PostgresCheckpointer(dsn, schema=schema) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="old")
    with connect(dsn, schema) as conn:  # as release 1 left it
        conn.execute("ALTER TABLE threads DROP COLUMN graph")
        conn.execute("DROP TABLE store_items, store_vectors")
        conn.execute("DROP FUNCTION head_mark(bigint)")
        conn.execute("UPDATE schema_version SET version = 1")
    reader = savers(dsn, schema, read_only=True)
    assert loop(2).compile(checkpointer=reader).get_state("old").state.n == 2
    assert asyncio.run(reader.thread_graphs(["old"])) == {}
    assert query(dsn, schema, "SELECT version FROM schema_version") == [(1,)]  # untouched
    app = loop(4).compile(checkpointer=savers(dsn, schema), name="loop")
    assert query(dsn, schema, "SELECT version FROM schema_version") == [
        (pg_module.SCHEMA_VERSION,)]
    assert query(dsn, schema, "SELECT graph FROM threads") == [(None,)]
    assert app.invoke({}, thread_id="old").n == 4
    [(bound,)] = query(dsn, schema, "SELECT graph FROM threads")
    assert '"name":"loop"' in bound
    assert asyncio.run(reader.thread_graphs(["old"])) == {"old": bound}  # the reader sees it
    other = loop(4).compile(checkpointer=savers(dsn, schema, read_only=True), name="other")
    assert other.get_state("old").state.n == 4  # reading is not refused
    with pytest.raises(GraphMismatchError, match="run by graph 'loop'"):
        loop(4).compile(checkpointer=savers(dsn, schema), name="other").invoke(
            {}, thread_id="old")


# -- connecting ------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["url", "keywords"])
def test_a_server_that_is_not_there_is_reported_quickly_without_the_password(style):
    port = free_port()  # nothing listens here
    dsn = (f"postgresql://app:secret@127.0.0.1:{port}/workflows" if style == "url"
           else f"host=127.0.0.1 port={port} dbname=workflows user=app password=secret")
    started = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        PostgresCheckpointer(dsn, connect_timeout=1)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "127.0.0.1" in message and str(port) in message, message
    assert "secret" not in chain_of(info.value), chain_of(info.value)
    assert "secret" not in repr(info.value)


# -- reconnecting ----------------------------------------------------------------------------

def tagged(dsn: str) -> tuple[str, str]:
    """The DSN with an application_name of its own, so this test's connections can be found."""
    name = f"sm-test-{uuid.uuid4().hex[:12]}"
    return make_conninfo(dsn, application_name=name), name


def drop_connections(dsn: str, application_name: str) -> int:
    """Terminate every connection of the tagged checkpointer from a connection of our own, as a
    failover or a network blip would (only the tagged ones, so a shared server's other users
    are left alone)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
            "pg_backend_pid() AND datname = current_database() AND application_name = %s",
            (application_name,)).fetchall()
    return sum(1 for (done,) in rows if done)


def assert_history_is_one_clean_chain(app, thread_id: str, steps: int) -> None:
    history = app.history(thread_id)
    ids = [h.checkpoint_id for h in history]
    assert len(ids) == len(set(ids)) == steps + 1, [(h.step, h.kind) for h in history]
    assert [h.state.n for h in history] == list(range(steps, -1, -1))
    # each checkpoint's parent is the one before it: no branch from a duplicated commit
    assert [h.parent_id for h in history[:-1]] == ids[1:]


STEPS = 8


def counting_loop(runs: dict[int, int], when: dict[int, Callable[[], object]]) -> StateGraph:
    """`loop(STEPS)` counting how often each step's node ran; `when[n]()` runs in step n."""
    def on_step(n: int) -> None:
        runs[n] = runs.get(n, 0) + 1
        if n in when:
            when[n]()

    return loop(STEPS, on_step)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_run_survives_the_server_dropping_every_connection(dsn, schema, savers, mode):
    tagged_dsn, name = tagged(dsn)
    saver = savers(tagged_dsn, schema, min_connections=2)
    dropped: list[int] = []
    runs: dict[int, int] = {}
    when = {n: (lambda: dropped.append(drop_connections(dsn, name))) for n in (2, 5)}
    app = counting_loop(runs, when).compile(checkpointer=saver)
    final = (app.invoke({}, thread_id="t") if mode == "invoke"
             else asyncio.run(app.ainvoke({}, thread_id="t")))
    assert all(dropped), dropped  # the connections were really there, and really dropped
    assert final == Items(n=STEPS, items=[f"item-{i}" for i in range(STEPS)])
    assert runs == dict.fromkeys(range(STEPS), 1)  # every step ran exactly once
    assert_history_is_one_clean_chain(app, "t", STEPS)
    assert query(dsn, schema, "SELECT count(*) FROM checkpoints") == [(STEPS + 1,)]
    assert not any(t.busy for t in app.threads())


def test_a_run_survives_connections_dropping_at_random_moments(dsn, schema, savers):
    """Connections killed every ~0.2 s while a run commits step after step: some die idle in
    the pool, some in the middle of a statement, some while connecting."""
    tagged_dsn, name = tagged(dsn)
    saver = savers(tagged_dsn, schema, max_connections=4)
    steps = 40
    stop = threading.Event()
    kills: list[int] = []

    def storm() -> None:
        while not stop.wait(0.2):
            kills.append(drop_connections(dsn, name))

    runs: dict[int, int] = {}

    def on_step(n: int) -> None:
        runs[n] = runs.get(n, 0) + 1
        time.sleep(0.02)

    app = loop(steps, on_step).compile(checkpointer=saver)
    killer = threading.Thread(target=storm)
    killer.start()
    try:
        final = app.invoke({}, thread_id="t")
    finally:
        stop.set()
        killer.join()
    assert sum(kills) >= 2, kills
    assert final.n == steps and final.items == [f"item-{i}" for i in range(steps)]
    assert runs == dict.fromkeys(range(steps), 1)
    assert_history_is_one_clean_chain(app, "t", steps)


TAGS = (b"INSERT 0 1\x00", b"UPDATE 1\x00")
"""Completions of writes that changed a row: acquire, put, put_pending, mark, release."""


def relay(listener: socket.socket, target: tuple[str, int],
          connected: Callable[[socket.socket, socket.socket], None]) -> None:
    """Accept connections on `listener` until it closes, open one to `target` for each, and
    hand both to `connected` (which relays between them)."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        connected(client, socket.create_connection(target))


class LossyProxy:
    """A TCP proxy in front of the server that can lose acknowledgements: armed (`lose()`), it
    cuts the connection when a reply carrying one of `TAGS` comes back — a write's completion,
    which the server sends only once the statement has committed — so the client never hears
    of its committed write."""

    def __init__(self, host: str, port: int, tags: tuple[bytes, ...] = TAGS) -> None:
        self.target = (host, port)
        self.tags = tags
        self.on_lose: Callable[[], None] | None = None
        """Called when a reply is lost (the server committed; the client has not heard)."""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = 0
        self.lost: list[bytes] = []
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, count: int = 1) -> None:
        with self.lock:
            self.armed += count

    def _accept(self) -> None:
        relay(self.listener, self.target, self._connected)

    def _connected(self, client: socket.socket, server: socket.socket) -> None:
        with self.lock:
            self.sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies:
                    with self.lock:
                        lose = self.armed > 0 and any(tag in data for tag in self.tags)
                        if lose:
                            self.armed -= 1
                            self.lost.append(data)
                    if lose:  # the server committed; the client will never know
                        if self.on_lose is not None:
                            self.on_lose()
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def proxy(dsn):
    info = conninfo_to_dict(dsn)
    if str(info.get("host", "")).startswith("/"):
        pytest.skip("the proxy speaks TCP; this server is reached over a Unix socket")
    lossy = LossyProxy(info.get("host") or "127.0.0.1", int(info.get("port") or 5432))
    yield lossy, make_conninfo(dsn, host="127.0.0.1", hostaddr="127.0.0.1", port=lossy.port)
    lossy.close()


def fan_graph(runs: dict[str, int], proxy: LossyProxy) -> StateGraph:
    """a, b, c in parallel (their updates committed as pending writes), then d; every node
    loses the acknowledgement of the next write that changes a row."""

    class Tally(BaseModel):
        log: Annotated[list[str], reducers.append] = []

    def make(name: str):
        def node(state: Tally) -> dict:
            runs[name] = runs.get(name, 0) + 1
            proxy.lose()
            return {"log": [name]}
        return node

    g = StateGraph(Tally)
    for name in "abcd":
        g.add_node(name, make(name))
    for name in "abc":
        g.add_edge(START, name)
        g.add_edge(name, "d")
    g.add_edge("d", END)
    return g


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_commit_whose_acknowledgement_was_lost_is_not_made_twice(dsn, schema, savers, proxy,
                                                                    mode):
    lossy, proxied = proxy
    saver = savers(proxied, schema)
    runs: dict = {}
    # every step loses the acknowledgement of the next write that changes a row (the step's
    # commit), and the run's first write (taking the new thread with its input: one
    # statement, a SELECT over a WITH) loses its own
    lossy.tags = (*TAGS, b"SELECT 1\x00")
    app = counting_loop(runs, dict.fromkeys(range(STEPS), lossy.lose)).compile(
        checkpointer=saver)
    lossy.lose()
    final = (app.invoke({}, thread_id="t") if mode == "invoke"
             else asyncio.run(app.ainvoke({}, thread_id="t")))
    assert len(lossy.lost) >= STEPS, len(lossy.lost)  # every step lost a commit's reply
    assert b"SELECT 1" in lossy.lost[0]  # the take with the input
    assert final == Items(n=STEPS, items=[f"item-{i}" for i in range(STEPS)])
    assert runs == dict.fromkeys(range(STEPS), 1)
    assert_history_is_one_clean_chain(app, "t", STEPS)
    assert query(dsn, schema, "SELECT count(*), count(DISTINCT step) FROM checkpoints") == [
        (STEPS + 1, STEPS + 1)]
    assert query(dsn, schema, "SELECT owner FROM threads") == [(None,)]

    # parallel nodes: their updates are committed one by one as pending writes
    runs.clear()
    lost = len(lossy.lost)
    fan = fan_graph(runs, lossy).compile(checkpointer=saver)
    result = fan.invoke({}, thread_id="fan")
    assert len(lossy.lost) >= lost + 4
    assert sorted(result.log[:3]) == ["a", "b", "c"] and result.log[3:] == ["d"]
    assert runs == dict.fromkeys("abcd", 1)
    history = fan.history("fan")
    assert [h.step for h in history] == [2, 1, 0]
    assert len({h.checkpoint_id for h in history}) == len(history)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_turn_whose_lease_and_input_lost_their_acknowledgement_stores_the_input_once(
        dsn, schema, savers, mode):
    """A chat's next turn takes the thread and stores its input in one statement (a SELECT
    over a WITH: its reply says SELECT 1). Its reply lost after the commit, the statement runs
    again on a new connection, finds the input it stored by its commit key, and goes on."""
    info = conninfo_to_dict(dsn)
    if str(info.get("host", "")).startswith("/"):
        pytest.skip("the proxy speaks TCP; this server is reached over a Unix socket")
    lossy = LossyProxy(info.get("host") or "127.0.0.1", int(info.get("port") or 5432),
                       tags=(b"SELECT 1\x00",))
    try:
        saver = savers(make_conninfo(dsn, host="127.0.0.1", hostaddr="127.0.0.1",
                                     port=lossy.port), schema)

        class Chat(BaseModel):
            turns: Annotated[list[str], operator.add] = []

        runs: list[int] = []

        def reply(state: Chat) -> dict:
            runs.append(len(state.turns))
            return {"turns": [f"answer {len(state.turns)}"]}

        app = side_by_side(Chat, {"reply": reply}).compile(checkpointer=saver)

        def turn(text: str) -> Chat:
            if mode == "invoke":
                return app.invoke({"turns": [text]}, thread_id="t")
            return asyncio.run(app.ainvoke({"turns": [text]}, thread_id="t"))

        turn("q0")
        lossy.lose()
        final = turn("q1")
        assert len(lossy.lost) == 1 and b"SELECT 1" in lossy.lost[0]
    finally:
        lossy.close()
    assert final.turns == ["q0", "answer 1", "q1", "answer 3"]
    assert runs == [1, 3]
    assert [h.kind for h in app.history("t")] == ["step", "input", "step", "input"]
    assert query(dsn, schema, "SELECT count(*) FROM checkpoints") == [(4,)]
    assert query(dsn, schema, "SELECT owner FROM threads") == [(None,)]


class CuttingProxy:
    """A TCP proxy that, armed, cuts the client's side of the connection just after sending a
    statement containing `mark`, and keeps the server's side open: the statement goes on
    running on the server, and its reply is lost."""

    def __init__(self, host: str, port: int, mark: bytes) -> None:
        self.target, self.mark = (host, port), mark
        self.armed = False
        self.cut: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        relay(self.listener, self.target, self._connected)

    def _connected(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                server.sendall(data)
                if self.armed and self.mark in data:
                    self.armed = False
                    time.sleep(0.3)  # the statement is running (waiting) on the server
                    self.cut.append(server)
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    return

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if server not in self.cut:
                    client.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_turn_retried_while_its_first_try_still_waits_finds_the_input_it_stored(
        dsn, schema, savers, mode):
    """The statement taking the thread with the turn's input waits for the thread's row (held
    by someone else a moment); its connection drops meanwhile, so it is sent again and waits
    behind the first try, which commits once the row is free. The retry's own snapshot,
    taken before it waited, cannot see that commit: the input is found by its commit key in
    a statement of its own, and the turn goes on."""
    info = conninfo_to_dict(dsn)
    if str(info.get("host", "")).startswith("/"):
        pytest.skip("the proxy speaks TCP; this server is reached over a Unix socket")
    proxy = CuttingProxy(info.get("host") or "127.0.0.1", int(info.get("port") or 5432),
                         b"WITH taken AS")
    try:
        saver = savers(make_conninfo(dsn, host="127.0.0.1", hostaddr="127.0.0.1",
                                     port=proxy.port), schema)

        class Chat(BaseModel):
            turns: Annotated[list[str], operator.add] = []

        app = side_by_side(Chat, {"reply": lambda s: {"turns": [f"answer {len(s.turns)}"]}}
                           ).compile(checkpointer=saver)
        app.invoke({"turns": ["q0"]}, thread_id="t")
        holder = connect(dsn, schema)
        holder.autocommit = False
        holder.execute("SELECT 1 FROM threads WHERE thread_id = 't' FOR UPDATE")
        proxy.armed = True
        outcome: dict = {}

        def turn() -> None:
            try:
                outcome["turns"] = (
                    app.invoke({"turns": ["q1"]}, thread_id="t") if mode == "invoke" else
                    asyncio.run(app.ainvoke({"turns": ["q1"]}, thread_id="t"))).turns
            except Exception as exc:
                outcome["error"] = exc

        runner = threading.Thread(target=turn)
        runner.start()
        waiting = 0
        for _ in range(200):  # the cut statement and its retry both wait for the row
            [(waiting,)] = query(
                dsn, schema, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                "'Lock' AND query LIKE %s", "WITH taken AS%")
            if waiting >= 2:
                break
            time.sleep(0.05)
        holder.commit()
        holder.close()
        runner.join(60)
    finally:
        proxy.close()
    assert waiting == 2
    assert outcome == {"turns": ["q0", "answer 1", "q1", "answer 3"]}
    assert [h.kind for h in app.history("t")] == ["step", "input", "step", "input"]
    assert app.invoke({"turns": ["q2"]}, thread_id="t").turns[-2:] == ["q2", "answer 5"]


@pytest.mark.skipif(bool(os.environ.get("STATEMACHINE_TEST_POSTGRES")),
                    reason="restarts the server: only the tests' own throwaway server")
@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_run_survives_a_server_restart(dsn, schema, savers, mode):
    from statemachine.testing.postgres import restart_server

    saver = savers(dsn, schema, reconnect_seconds=60)
    [(started,)] = query(dsn, schema, "SELECT pg_postmaster_start_time()")
    runs: dict[int, int] = {}
    app = counting_loop(runs, {3: lambda: restart_server(dsn)}).compile(checkpointer=saver)
    try:
        final = (app.invoke({}, thread_id="t") if mode == "invoke"
                 else asyncio.run(app.ainvoke({}, thread_id="t")))
    finally:
        _wait_for_server(dsn)  # whatever happened, leave the server up for the other tests
    assert final == Items(n=STEPS, items=[f"item-{i}" for i in range(STEPS)])
    assert query(dsn, schema, "SELECT pg_postmaster_start_time()") > [(started,)]  # it did
    assert runs == dict.fromkeys(range(STEPS), 1)
    assert_history_is_one_clean_chain(app, "t", STEPS)
    # a checkpointer opened after the restart sees the same history
    reader = loop(STEPS).compile(checkpointer=savers(dsn, schema))
    assert reader.get_state("t").state == final


def _wait_for_server(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_server_gone_longer_than_reconnect_seconds_fails_the_write_clearly():
    from statemachine.testing.postgres import postgres_server

    with postgres_server(fsync=False) as own:
        info = conninfo_to_dict(own)
        dsn = make_conninfo(own, password="secret")  # trusted: ignored by the server
        saver = PostgresCheckpointer(dsn, schema="gone", reconnect_seconds=1,
                                     connect_timeout=1)
        owner = Owner.new()
        asyncio.run(saver.acquire("t", owner))
        first = asyncio.run(saver.put("t", owner, NewCheckpoint(None, 0, "input", "done", "[]")))
    try:  # the server is stopped and deleted
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="lost the connection") as raised:
            asyncio.run(saver.put("t", owner, NewCheckpoint(first, 1, "step", "done", "[]")))
        assert time.monotonic() - started < 10
        message = str(raised.value)
        assert info["host"] in message and info["port"] in message, message
        assert "within 1 s" in message, message
        assert "secret" not in message
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="lost the connection"):
            loop(2).compile(checkpointer=saver).get_state("t")
        assert time.monotonic() - started < 10
    finally:
        started = time.monotonic()
        saver.close()
        assert time.monotonic() - started < 10


# -- writes are safe to repeat ---------------------------------------------------------------

@pytest.fixture
def twice(monkeypatch):
    """Make a checkpointer run each of its operations twice in a row, as `_direct` does when
    a connection drops after the server committed but before the acknowledgement arrived."""

    def install(saver: PostgresCheckpointer) -> list[tuple]:
        results: list[tuple] = []
        real = saver._call

        async def call(operation):
            first = await real(operation)
            second = await real(operation)
            results.append((first, second))
            return second

        monkeypatch.setattr(saver, "_call", call)
        return results

    return install


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_group_whose_commit_reply_was_lost_writes_its_memories_once(dsn, schema, savers,
                                                                       api):
    """Tasks finishing together commit in one transaction (`put_pendings`). Its COMMIT lands,
    the reply is lost, the transaction runs again on a new connection: it finds its rows and
    adds nothing, its memories included (another run's write made in between stays)."""
    info = conninfo_to_dict(dsn)
    if str(info.get("host", "")).startswith("/"):
        pytest.skip("the proxy speaks TCP; this server is reached over a Unix socket")
    lossy = LossyProxy(info.get("host") or "127.0.0.1", int(info.get("port") or 5432),
                       tags=(b"COMMIT\x00",))
    proxied = make_conninfo(dsn, host="127.0.0.1", hostaddr="127.0.0.1", port=lossy.port)
    base = savers(proxied, schema)
    saver = base.in_caller_thread() if api == "sync" else base
    store = base.open_store()
    with connect(dsn, schema) as conn:  # every write of an item, as the server saw it
        conn.execute("CREATE TABLE applied(key text, value text)")
        conn.execute("CREATE FUNCTION log_apply() RETURNS trigger AS $$ BEGIN INSERT INTO "
                     "applied VALUES (NEW.key, NEW.value::text); RETURN NEW; END $$ "
                     "LANGUAGE plpgsql")
        conn.execute("CREATE TRIGGER log_apply AFTER INSERT OR UPDATE ON store_items FOR EACH "
                     "ROW EXECUTE FUNCTION log_apply()")

    def another_run_writes() -> None:
        with connect(dsn, schema) as conn:
            conn.execute("UPDATE store_items SET value = '{\"by\": \"other\"}' "
                         "WHERE key = 'k0'")

    async def main() -> None:
        owner = Owner.new()
        await saver.acquire("t", owner)
        head = await saver.put("t", owner, NewCheckpoint(None, 0, "input", "running", "[]",
                                                         snapshot='{"n": 0}'))
        lossy.on_lose = another_run_writes
        lossy.lose()
        await saver.put_pendings("t", owner, [
            (PendingWrite(head, f"n{i}", i, f'{{"n": {i}}}'),
             [StoreWrite(("mem",), f"k{i}", f'{{"by": "task {i}"}}')]) for i in range(3)])

    try:
        asyncio.run(main())
    finally:
        lossy.close()
    assert len(lossy.lost) == 1
    assert query(dsn, schema, "SELECT count(*) FROM pending_writes") == [(3,)]
    assert sorted(query(dsn, schema, "SELECT key, value FROM applied")) == [
        ("k0", '{"by": "other"}'), ("k0", '{"by": "task 0"}'), ("k1", '{"by": "task 1"}'),
        ("k2", '{"by": "task 2"}')]
    assert store.get(("mem",), "k0").value == {"by": "other"}
    store.close()


async def test_a_repeated_write_lands_once(dsn, schema, savers, twice):
    saver = savers(dsn, schema)
    results = twice(saver)
    owner = Owner.new()
    await saver.acquire("t", owner)
    first = await saver.put("t", owner, NewCheckpoint(None, 0, "input", "done", "[]",
                                                      snapshot='{"n": 0}'))
    second = await saver.put("t", owner, NewCheckpoint(first, 1, "step", "running", '["a"]'))
    await saver.put_pending("t", owner, PendingWrite(second, "a", 0, '{"n": 1}'))
    await saver.mark("t", owner, second, status="failed", error="boom")
    # each repeat saw what the first run did: the same checkpoint id, the write there, ...
    assert all(a == b for a, b in results), results
    await saver.release("t", owner)

    assert query(dsn, schema, "SELECT id, parent, step, status, error FROM checkpoints "
                              "ORDER BY id") == [(int(first), None, 0, "done", None),
                                                 (int(second), int(first), 1, "failed", "boom")]
    assert query(dsn, schema, "SELECT checkpoint, node, idx FROM pending_writes") == [
        (int(second), "a", 0)]
    assert query(dsn, schema, "SELECT thread_id, owner FROM threads") == [("t", None)]
    chain = await saver.load("t")
    assert [r.id for r in chain.records] == [first, second]
    assert [w.node for w in chain.pending[second]] == ["a"]


async def test_a_repeated_claim_and_finish_land_once(dsn, schema, savers, twice):
    saver = savers(dsn, schema)
    await saver.enqueue("t", input='{"n": 1}', event=None, base=None, max_attempts=3)
    results = twice(saver)
    worker = Owner.new()
    job = await saver.claim(worker)
    assert job is not None and job.attempts == 1
    assert await saver.claim(worker) is None
    assert await saver.finish(job, status="done")
    assert all(a == b for a, b in results), results
    [info] = await saver.jobs()
    assert (info.status, info.attempts) == ("done", 1)


# -- leases ----------------------------------------------------------------------------------

async def test_an_expired_lease_is_judged_by_the_server_clock_and_fences_its_holder(
        dsn, schema, savers):
    lease = 1.0
    a_saver = savers(dsn, schema, lease_seconds=lease)
    b_saver = savers(dsn, schema, lease_seconds=lease)
    a = Owner.new()
    b = Owner(os.urandom(12).hex(), os.getpid(), "another-machine")  # no dead-process shortcut
    await a_saver.acquire("t", a)
    first = await a_saver.put("t", a, NewCheckpoint(None, 0, "input", "done", "[]",
                                                    snapshot='{"n": 0}'))
    step = await a_saver.put("t", a, NewCheckpoint(first, 1, "step", "running", '["x"]'))

    def lease_left() -> float:
        [(seconds,)] = query(dsn, schema, "SELECT lease_expires - extract(epoch from "
                                          "clock_timestamp()) FROM threads")
        return seconds

    async def wait_until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    # the lease runs on the server's clock
    left = lease_left()
    assert 0 < left <= lease
    taken_until = time.time() + left

    # while A's heartbeat renews it, the lease outlives lease_seconds: past the end of the
    # lease as taken it still holds, for half a lease more (B asks at once, not after a late
    # beat's delay: the server hands an expired lease over on the spot)
    await wait_until(lambda: time.time() > taken_until and lease_left() > lease / 2,
                     "the lease to be renewed past its first period")
    with pytest.raises(ThreadBusyError):
        await b_saver.acquire("t", b)
    [info] = await b_saver.threads()
    assert info.busy

    a_saver._heartbeat.stop()  # A's process hangs: nothing renews its lease any more
    await wait_until(lambda: lease_left() < 0, "the lease to run out")
    [info] = await b_saver.threads()
    assert not info.busy
    await b_saver.acquire("t", b)
    assert query(dsn, schema, "SELECT owner, owner_host FROM threads") == [
        (b.token, "another-machine")]
    before = runs_state(dsn, schema)

    with pytest.raises(ThreadBusyError, match="taken over"):
        await a_saver.put("t", a, NewCheckpoint(step, 2, "step", "done", "[]"))
    with pytest.raises(ThreadBusyError, match="taken over"):
        await a_saver.put_pending("t", a, PendingWrite(step, "x", 0, '{"n": 1}'))
    with pytest.raises(ThreadBusyError, match="taken over"):
        await a_saver.mark("t", a, step, status="failed", error="late")
    await a_saver.release("t", a)  # a no-op: A holds nothing
    with pytest.raises(ThreadBusyError):
        await a_saver.acquire("t", a)  # B's lease is live
    assert runs_state(dsn, schema) == before

    # B carries on where A left off
    third = await b_saver.put("t", b, NewCheckpoint(step, 2, "step", "done", "[]"))
    assert [r.id for r in await b_saver.list("t")] == [third, step, first]


# Known gaps, kept here so they are not forgotten: two work-queue writes are not yet safe to
# repeat after a lost acknowledgement. Remove the marks once they are.

async def test_a_repeated_enqueue_lands_once(dsn, schema, savers, twice):
    saver = savers(dsn, schema)
    twice(saver)
    await saver.enqueue("t", input='{"n": 1}', event=None, base=None, max_attempts=3)
    assert [job.status for job in await saver.jobs()] == ["queued"]


async def test_a_repeated_requeue_lands_once(dsn, schema, savers, twice):
    saver = savers(dsn, schema)
    await saver.enqueue("t", input='{"n": 1}', event=None, base=None, max_attempts=3)
    job = await saver.claim(Owner.new())
    twice(saver)
    assert await saver.finish(job, status="queued", retry_in=0, count_attempt=False)
    [info] = await saver.jobs()
    assert (info.status, info.attempts) == ("queued", 0)


def connections_of(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchone()[0]


def test_async_runs_use_their_own_loops_connections_and_a_closed_loops_are_closed(
        dsn, schema, savers):
    """The async API's statements run on connections of the running event loop (no thread
    hop). A checkpointer used by one asyncio.run after another serves each loop; the
    connections of a loop that has closed are closed when the next loop starts."""
    tagged_dsn, name = tagged(dsn)
    saver = savers(tagged_dsn, schema, min_connections=1, max_connections=3)
    app = loop(3).compile(checkpointer=saver)
    deadline = time.monotonic() + 10  # the sync API's pool opens its minimum in the background
    while connections_of(dsn, name) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    pooled = connections_of(dsn, name)
    assert pooled == 1  # min_connections, before any async run

    async def turns(thread: str) -> tuple[Items, int]:
        finals = await asyncio.gather(*(app.ainvoke({}, thread_id=f"{thread}{i}")
                                        for i in range(6)))
        return finals[0], connections_of(dsn, name)

    first, during_first = asyncio.run(turns("a"))
    second, during_second = asyncio.run(turns("b"))
    assert first == second == Items(n=3, items=["item-0", "item-1", "item-2"])
    assert pooled < during_first <= pooled + 3  # at most max_connections of the loop's own
    assert during_second <= pooled + 3  # the first loop's were closed, not kept beside
    saver.close()
    deadline = time.monotonic() + 5  # a backend leaves the list a moment after its client
    while connections_of(dsn, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections_of(dsn, name) == 0


# -- the head read with the lease -----------------------------------------------------------

class ChatLog(BaseModel):
    messages: Annotated[list[str], operator.add] = []


def chat() -> StateGraph:
    g = StateGraph(ChatLog)
    g.add_node("reply", lambda s: {"messages": [f"reply{len(s.messages)}"]})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def test_a_head_committed_while_our_lease_waits_is_read_not_dropped(dsn, schema, savers):
    """A transaction that gives the thread up and moves its head on together (an edit, here
    made by hand) is in flight when our turn takes the thread: the lease waits for its row,
    and must then see the new head (read after the wait, not from the statement's snapshot)
    rather than start from this process's cached state and drop the edit."""
    saver = savers(dsn, schema)
    app = chat().compile(checkpointer=saver)
    app.invoke({"messages": ["u0"]}, thread_id="t")  # this process caches its head
    with connect(dsn, schema) as conn:
        conn.autocommit = False
        conn.execute("UPDATE threads SET owner = NULL WHERE thread_id = 't'")  # its row held
        conn.execute(
            "INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, extra, "
            "created_at, commit_key) SELECT thread, id, step, 'update', 'done', '[]', "
            """'[["__update__",0,{"messages":["edited"]}]]', '{"origin": "' || id || '"}', """
            "created_at + 1, 'edit' FROM checkpoints ORDER BY id DESC LIMIT 1")
        turn = ThreadPoolExecutor(1).submit(app.invoke, {"messages": ["u1"]}, thread_id="t")
        deadline = time.monotonic() + 10
        while query(dsn, schema, "SELECT count(*) FROM pg_stat_activity WHERE "
                    "wait_event_type = 'Lock'") != [(1,)]:  # our lease waits for the row
            assert time.monotonic() < deadline and not turn.done()
            time.sleep(0.01)
        conn.commit()
    final = turn.result(timeout=10)
    assert final.messages == ["u0", "reply1", "edited", "u1", "reply4"]
    cold = chat().compile(checkpointer=savers(dsn, schema))  # a reader without the cache
    assert cold.get_state("t").state.messages == final.messages


def test_a_write_the_server_refuses_fails_its_task_alone_and_at_once(dsn, schema, savers):
    """b, c and a node whose name is past PostgreSQL's index limit (its pending write's key)
    finish together, each writing a memory. The server's refusal is said as it is, at once
    (not retried as a lost connection), and b's and c's updates are stored with their
    memories: one bad write sinks none of its neighbours."""
    barrier = threading.Barrier(3)
    gate = threading.Event()
    rng = random.Random(1)  # text that does not compress below the limit
    long_name = "".join(rng.choice(string.ascii_letters) for _ in range(20_000))

    class Log(BaseModel):
        log: Annotated[list[str], operator.add] = []

    def quick(name: str):
        def node(state: Log, ctx: RunContext) -> dict:
            ctx.store.put(("done",), name[:10], {"by": name[:10]})
            barrier.wait(5)
            threading.Timer(0.3, gate.set).start()
            return {"log": [name[:10]]}
        return node

    def slow(state: Log) -> dict:
        gate.wait(5)
        return {"log": ["slow"]}

    saver = savers(dsn, schema, reconnect_seconds=30)
    store = saver.open_store()
    app = side_by_side(Log, {**{n: quick(n) for n in ("b", "c", long_name)},
                             "slow": slow}).compile(checkpointer=saver, store=store)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"refused it: index row .* \(SQLSTATE 54000\)"):
        app.invoke({}, thread_id="t")
    assert time.monotonic() - started < 10  # not retried for reconnect_seconds
    assert sorted(i.key for i in store.search(("done",))) == ["b", "c"]
    assert sorted(row[0] for row in query(dsn, schema, "SELECT node FROM pending_writes")) == [
        "b", "c", "slow"]
    head = app.history("t")[0]  # marked failed for people to see, with the refusal
    assert head.status == "failed" and "SQLSTATE 54000" in (head.error or "")
    store.close()


async def test_a_group_with_a_write_stored_before_adds_only_the_others_and_their_memories(
        dsn, schema, savers):
    """A group of writes of which one is stored already (its own commit landed earlier): the
    others land with their memories, the stored one's memory is not applied again."""
    saver = savers(dsn, schema)
    store = saver.open_store()
    owner = Owner.new()
    await saver.acquire("t", owner)
    head = await saver.put("t", owner, NewCheckpoint(None, 0, "input", "running", "[]",
                                                     snapshot='{"n": 0}'))
    writes = [(PendingWrite(head, f"n{i}", i, f'{{"n": {i}}}'),
               [StoreWrite(("mem",), f"k{i}", f'{{"by": "task {i}"}}')]) for i in range(3)]
    await saver.put_pending("t", owner, writes[0][0], memory=writes[0][1])
    store.put(("mem",), "k0", {"by": "another run"})  # after n0 landed
    await saver.put_pendings("t", owner, writes)
    assert sorted(query(dsn, schema, "SELECT node FROM pending_writes")) == [
        ("n0",), ("n1",), ("n2",)]
    assert {i.key: i.value for i in store.search(("mem",))} == {
        "k0": {"by": "another run"}, "k1": {"by": "task 1"}, "k2": {"by": "task 2"}}
    await saver.release("t", owner)
    store.close()


def _operational_errors() -> list[type]:
    import inspect

    return sorted((c for _, c in inspect.getmembers(psycopg.errors, inspect.isclass)
                   if issubclass(c, psycopg.OperationalError)), key=lambda c: c.__name__)


@pytest.mark.parametrize("error", _operational_errors(), ids=lambda c: c.__name__)
def test_what_is_retried_is_a_lost_connection_or_a_lost_race_never_a_refusal(error):
    """psycopg raises OperationalError both for a dropped connection and for what the server
    refuses; only the first kind, and a transaction that lost a race, is run again."""
    state = getattr(error, "sqlstate", None)
    expected = state is None or state.startswith("08") or state in (
        "57P01", "57P02", "57P03", "57P05", "40001", "40P01", "55P03")
    assert pg_module.worth_retrying(error("x")) is expected, state
    if state in ("54000", "54001", "57014", "53100"):  # a limit, a cancel, a full disk
        assert not pg_module.worth_retrying(error("x"))


def test_a_group_chosen_as_a_deadlocks_victim_is_run_again_and_stored(dsn, schema, savers):
    """Another connection holds one item a group writes and then asks for another the group
    holds: PostgreSQL aborts one of the two. The group, run again, lands whole."""
    saver = savers(dsn, schema)
    store = saver.open_store()
    store.put(("mem",), "a", {"v": 0})
    store.put(("mem",), "b", {"v": 0})
    sync = saver.in_caller_thread()
    owner = Owner.new()
    other = connect(dsn, schema)
    other.autocommit = False
    seen: list[str] = []

    def later() -> None:
        time.sleep(0.3)  # the group waits on b by now
        try:
            other.execute("UPDATE store_items SET value = '{\"v\": 9}' WHERE key = 'a'")
            other.commit()
            seen.append("committed")
        except psycopg.Error as exc:
            seen.append(type(exc).__name__)
            other.rollback()

    async def main() -> None:
        await sync.acquire("t", owner)
        head = await sync.put("t", owner, NewCheckpoint(None, 0, "input", "running", "[]",
                                                        snapshot="{}"))
        other.execute("UPDATE store_items SET value = '{\"v\": 9}' WHERE key = 'b'")
        waiter = threading.Thread(target=later)
        waiter.start()
        await sync.put_pendings("t", owner, [
            (PendingWrite(head, "n0", 0, "{}"), [StoreWrite(("mem",), "a", '{"v": 1}')]),
            (PendingWrite(head, "n1", 1, "{}"), [StoreWrite(("mem",), "b", '{"v": 1}')])])
        waiter.join(10)

    try:
        asyncio.run(main())
    finally:
        other.close()
    assert sorted(query(dsn, schema, "SELECT node FROM pending_writes")) == [("n0",), ("n1",)]
    assert seen in (["committed"], ["DeadlockDetected"])
    values = {i.key: i.value for i in store.search(("mem",))}
    if seen == ["committed"]:  # the group was the victim: run again after the other's commit
        assert values == {"a": {"v": 1}, "b": {"v": 1}}
    store.close()
