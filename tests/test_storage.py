"""The stores themselves: what is in them, what is refused, how they grow, who may write them.

The SQLite file format (headers, WAL, application id, migrations) is checked against SQLite
alone; everything a durable store must do whatever holds it runs against SQLite and PostgreSQL
(`backend`), reading the rows back with the plain `sqlite3` module or `psycopg`, as a user
inspecting a database would, and comparing bytes (SQLite) or every row (PostgreSQL) where the
store must not change. PostgreSQL's own concerns are in test_postgres.py.
"""

from __future__ import annotations

import asyncio
import json
import operator
import shutil
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Annotated

import pytest
from conftest import make_store, postgres_schema
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from checkpoints import sqlite as sqlite_module
from statemachine import (
    END,
    START,
    CheckpointError,
    StateGraph,
    ThreadBusyError,
    ThreadNotFoundError,
    reducers,
)
from statemachine.snapshots import GROWTH, MAX_REPLAY_STEPS, RECORD_COST

APPLICATION_ID = 0x53544D43  # "STMC"
SCHEMA_VERSION = sqlite_module.SCHEMA_VERSION

DURABLE = ["sqlite", "postgres"]
"""The backends whose data outlives the checkpointer (memory has nothing to reopen)."""


@pytest.fixture(params=DURABLE)
def backend(request, tmp_path):
    """An empty durable store; `backend.open()` is a checkpointer of a fresh process on it."""
    store = make_store(request.param, tmp_path, request)
    yield store
    store.close()


class Items(BaseModel):
    n: int = 0
    items: Annotated[list[str], reducers.append] = []


def loop(limit: int) -> StateGraph:
    """One node appending one short string per iteration, `limit` iterations."""

    def work(state: Items) -> dict:
        return {"n": state.n + 1, "items": [f"item-{state.n}"]}

    g = StateGraph(Items)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "again" if s.n < limit else "done",
                            {"again": "work", "done": END})
    return g


class Tally(BaseModel):
    total: Annotated[int, operator.add] = 0
    log: Annotated[list[str], reducers.append] = []


def fan_out(fail: dict[str, int], ran: list[str]) -> StateGraph:
    """a, b, c in parallel, then d; `fail[node]` times that node raises."""

    def make(name: str):
        def node(state: Tally) -> dict:
            ran.append(name)
            if fail.get(name, 0) > 0:
                fail[name] -= 1
                raise RuntimeError(f"{name} failed")
            return {"total": 1, "log": [name]}
        return node

    g = StateGraph(Tally)
    for name in "abcd":
        g.add_node(name, make(name))
    for name in "abc":
        g.add_edge(START, name)
        g.add_edge(name, "d")
    g.add_edge("d", END)
    return g


def rows(path: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def siblings(path: Path) -> set[str]:
    """Files next to the database (journal, WAL, shared memory)."""
    return {p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-")}


# -- the file format -------------------------------------------------------------------------

def test_new_file_has_a_schema_version_table_and_our_application_id(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="t")
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "threads", "checkpoints", "pending_writes"} <= tables
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_an_empty_file_becomes_a_checkpoint_database(tmp_path):
    path = tmp_path / "runs.db"
    path.touch()
    with SQLiteCheckpointer(path) as saver:
        assert loop(2).compile(checkpointer=saver).invoke({}, thread_id="t").n == 2
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_reopening_our_file_keeps_it_and_its_threads(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="t")
    with SQLiteCheckpointer(path) as saver:
        app = loop(2).compile(checkpointer=saver)
        assert app.get_state("t").state.items == ["item-0", "item-1"]
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("content", [
    b"order_id,amount\n42,9.99\n" * 40,
    bytes(range(256)) * 16,
    b"SQLite format 3\x00" + b"\xff" * 200,  # the magic, then garbage
], ids=["csv", "binary", "corrupt-sqlite"])
def test_a_file_that_is_not_a_sqlite_database_is_refused_and_left_unmodified(tmp_path, content):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"data\.bin"):
        SQLiteCheckpointer(path)
    assert path.read_bytes() == content
    assert siblings(path) == set()


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("tables", [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
    # another checkpointer's tables, with our names: still not ours
    "CREATE TABLE threads (thread_id TEXT); CREATE TABLE checkpoints (id INTEGER, data BLOB)",
], ids=["users", "lookalike"])
def test_another_applications_database_is_refused_and_left_unmodified(tmp_path, journal,
                                                                       tables):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.executescript(tables)
    first = tables.split()[2]
    conn.execute(f"INSERT INTO {first} VALUES ('1', 'x')" if first == "users"
                 else f"INSERT INTO {first} VALUES ('t')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="another application"):
        SQLiteCheckpointer(path)
    assert path.read_bytes() == before
    assert siblings(path) == set()
    assert rows(path, "PRAGMA application_id") == [(0,)]


def test_a_newer_schema_version_is_refused_and_left_unmodified(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="t")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="newer") as info:
        SQLiteCheckpointer(path)
    assert str(SCHEMA_VERSION + 1) in str(info.value)
    assert path.read_bytes() == before
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        SQLiteCheckpointer(tmp_path)


def test_close_folds_the_write_ahead_log_into_the_file(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        loop(20).compile(checkpointer=saver).invoke({}, thread_id="t")
    wal = tmp_path / "runs.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "copy" / "runs.db"
    alone.parent.mkdir()
    shutil.copyfile(path, alone)  # the main file alone holds every commit
    assert rows(alone, "SELECT count(*) FROM checkpoints") == [(21,)]


# -- JSON, readable ---------------------------------------------------------------------------

def test_everything_is_stored_as_json_readable_with_plain_sql(backend):
    with backend.open() as saver:
        app = fan_out({"b": 1}, []).compile(checkpointer=saver)
        with pytest.raises(RuntimeError):
            app.invoke({}, thread_id="failed")
        final = fan_out({}, []).compile(checkpointer=saver).invoke({}, thread_id="done")

    # no pickles, no blobs: every payload column is text (or NULL) holding JSON
    for column in ("next", "writes", "snapshot", "extra"):
        if backend.kind == "sqlite":
            kinds = {k for (k,) in backend.query(
                f"SELECT DISTINCT typeof({column}) FROM checkpoints")}
            assert kinds <= {"text", "null"}, column
        else:
            assert backend.query("SELECT data_type FROM information_schema.columns WHERE "
                                 "table_schema = ? AND table_name = 'checkpoints' AND "
                                 "column_name = ?", backend.schema, column) == [("text",)]
        for (text,) in backend.query(
                f"SELECT {column} FROM checkpoints WHERE {column} IS NOT NULL"):
            json.loads(text)

    done = backend.query("SELECT c.id, c.snapshot, c.writes, c.next, c.status FROM "
                          "checkpoints c JOIN threads t ON t.key = c.thread WHERE "
                          "t.thread_id = 'done' ORDER BY c.id")
    assert (json.loads(done[-1][3]), done[-1][4]) == ([], "done")
    # the state is the newest snapshot plus the writes after it (a step's own and its
    # parent's pending ones), merged as the fields say (both append): plain SQL and JSON
    last = max(i for i, row in enumerate(done) if row[1] is not None)
    state = json.loads(done[last][1])
    for (parent, *_), (_, _, writes, _, _) in pairwise(done[last:]):
        updates = [json.loads(w) for (w,) in backend.query(
            "SELECT writes FROM pending_writes WHERE checkpoint = ?", parent)]
        updates += [update for _, _, update in json.loads(writes or "[]")]
        for update in updates:
            state["log"] += update.get("log", [])
            state["total"] += update.get("total", 0)
    assert sorted(state["log"]) == ["a", "b", "c", "d"] and state["total"] == 4
    assert final.model_dump(mode="json") == {"total": 4, "log": ["a", "b", "c", "d"]}

    writes = backend.query("SELECT c.writes FROM checkpoints c JOIN threads t ON "
                            "t.key = c.thread WHERE t.thread_id = 'done' AND c.step = 2")
    assert json.loads(writes[0][0]) == [["d", 0, {"total": 1, "log": ["d"]}]]

    failed = backend.query("SELECT c.next, c.status, c.error, p.node, p.writes FROM "
                            "checkpoints c JOIN threads t ON t.key = c.thread JOIN "
                            "pending_writes p ON p.checkpoint = c.id WHERE "
                            "t.thread_id = 'failed' ORDER BY p.node")
    assert [(json.loads(n), s, node, json.loads(w)) for n, s, _, node, w in failed] == [
        (["a", "b", "c"], "failed", "a", {"total": 1, "log": ["a"]}),
        (["a", "b", "c"], "failed", "c", {"total": 1, "log": ["c"]}),
    ]
    assert "b failed" in failed[0][2]


class Order(BaseModel):
    class Line(BaseModel):
        sku: str
        qty: int

    id: uuid.UUID
    placed: datetime
    amount: Decimal
    tags: Annotated[set[str], reducers.union] = set()
    lines: Annotated[list[Line], reducers.append] = []
    refs: Annotated[list[uuid.UUID], reducers.append] = []


def test_rich_field_types_come_back_as_themselves_from_a_reopened_store(backend):
    first_ref, second_ref = uuid.uuid4(), uuid.uuid4()

    def add_line(state: Order) -> dict:
        n = len(state.lines)
        return {"lines": [Order.Line(sku=f"sku-{n}", qty=n + 1)], "tags": {f"t{n}"},
                "refs": [first_ref if n == 0 else second_ref]}

    g = StateGraph(Order)
    g.add_node("add_line", add_line)
    g.add_edge(START, "add_line")
    g.add_conditional_edges("add_line", lambda s: "again" if len(s.lines) < 3 else "done",
                            {"again": "add_line", "done": END})
    start = Order(id=uuid.uuid4(), placed=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                  amount=Decimal("19.99"))
    with backend.open() as saver:
        final = g.compile(checkpointer=saver).invoke(start, thread_id="order")

    with backend.open() as saver:
        app = g.compile(checkpointer=saver)
        states = [h.state for h in app.history("order")] + [app.get_state("order").state]
    assert states[0] == final
    for state in states:
        assert isinstance(state.id, uuid.UUID) and state.id == start.id
        assert state.placed == start.placed and state.placed.tzinfo is not None
        assert isinstance(state.amount, Decimal) and state.amount == Decimal("19.99")
        assert isinstance(state.tags, set)
        assert all(isinstance(line, Order.Line) for line in state.lines)
        assert all(isinstance(ref, uuid.UUID) for ref in state.refs)
    assert final.refs == [first_ref, second_ref, second_ref]
    assert final.tags == {"t0", "t1", "t2"}


# -- growth and reads -------------------------------------------------------------------------

LOOP = 1000


@pytest.fixture
def long_thread(backend):
    """A 1,000-iteration loop that appends one short string per iteration."""
    with backend.open() as saver:
        final = loop(LOOP).compile(checkpointer=saver).invoke({}, thread_id="long")
    return backend, final


def test_storage_grows_with_the_writes_not_with_the_state(long_thread):
    store, final = long_thread
    state_json = len(final.model_dump_json())
    assert final.n == LOOP
    # re-serialising the state every step would take ~ LOOP * state_json / 2 (about 5 MB here)
    if store.kind == "sqlite":
        size = sum(p.stat().st_size for p in store.path.parent.iterdir()
                   if p.name.startswith("runs.db"))
        assert size < 400 * LOOP + 4 * state_json, (size, state_json)
    else:
        # the rows themselves, as PostgreSQL stores them
        (size,) = store.query("SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM "
                               "checkpoints c) + (SELECT coalesce(sum(pg_column_size(p.*)), 0) "
                               "FROM pending_writes p)")[0]
        assert size < 400 * LOOP + 4 * state_json, (size, state_json)
        # on disk: heap, indexes and the fixed pages of every table, still linear in the writes
        (disk,) = store.query("SELECT sum(pg_total_relation_size((quote_ident(table_schema) "
                               "|| '.' || quote_ident(table_name))::regclass)) FROM "
                               "information_schema.tables WHERE table_schema = ?",
                        store.schema)[0]
        assert disk < 800 * LOOP + 4 * state_json, (disk, state_json)
    # full snapshots are spaced out as the state grows: their total is linear in it
    (snapshots,) = store.query("SELECT coalesce(sum(length(snapshot)), 0) FROM checkpoints")[0]
    assert snapshots < 8 * state_json, (snapshots, state_json)


async def test_reading_a_state_replays_a_bounded_chain(long_thread):
    store, final = long_thread
    async with store.open() as saver:
        app = loop(LOOP).compile(checkpointer=saver)
        records = await saver.list("long")
        assert len(records) == LOOP + 1
        for record in records:
            chain = await saver.load("long", record.id)
            assert chain.head.id == record.id
            # the snapshot rule: a checkpoint goes without a snapshot only while replaying it
            # costs less than GROWTH times the snapshot it replays from
            cost = app._executor.replayer.rebuild_counting(chain)[1]
            assert cost.steps_since < MAX_REPLAY_STEPS, record.step
            assert cost.bytes_since + RECORD_COST * cost.steps_since < \
                GROWTH * cost.snapshot_bytes, record.step
            assert cost.bytes_since <= len(final.model_dump_json()), record.step


def test_get_state_does_not_read_the_whole_history(long_thread):
    store, final = long_thread
    # damage the first half of the history beyond repair
    store.change("UPDATE checkpoints SET writes = '[garbage', snapshot = "
                  "CASE WHEN snapshot IS NULL THEN NULL ELSE '{garbage' END "
                  "WHERE step < ?", LOOP // 2)
    with store.open() as saver:
        app = loop(LOOP).compile(checkpointer=saver)
        assert app.get_state("long").state == final
        ids = {step: cid for cid, step in store.query("SELECT id, step FROM checkpoints")}
        late = app.get_state("long", str(ids[LOOP - 50]))
        assert late.state.n == LOOP - 50 and len(late.state.items) == LOOP - 50
        with pytest.raises(CheckpointError):  # the damage is real where it is read
            app.get_state("long", str(ids[10]))


# -- threads ---------------------------------------------------------------------------------

class Word(BaseModel):
    text: str = ""


def shout_graph() -> StateGraph:
    async def shout(state: Word) -> dict:
        await asyncio.sleep(0.01)
        return {"text": state.text.upper() + "!"}

    g = StateGraph(Word)
    g.add_node("shout", shout)
    g.add_edge(START, "shout")
    g.add_edge("shout", END)
    return g


async def test_many_threads_and_graphs_share_one_store(backend):
    names = [f"order {i} 'ü'; DROP TABLE checkpoints; --" for i in range(8)]
    async with backend.open() as one, backend.open() as two:
        counter = loop(5).compile(checkpointer=one)
        words = shout_graph().compile(checkpointer=two)
        results = await asyncio.gather(
            *(counter.ainvoke({}, thread_id=f"count/{name}") for name in names),
            *(words.ainvoke({"text": name}, thread_id=f"word/{name}") for name in names))
        assert all(r.n == 5 for r in results[:8])
        assert [r.text for r in results[8:]] == [n.upper() + "!" for n in names]

        for name in names:
            history = await counter.ahistory(f"count/{name}")
            assert [h.thread_id for h in history] == [f"count/{name}"] * 6
            assert [h.state.n for h in history] == [5, 4, 3, 2, 1, 0]
            other = (await words.aget_state(f"word/{name}")).checkpoint_id
            with pytest.raises(ThreadNotFoundError):
                await counter.aget_state(f"count/{name}", other)
        listed_one = {t.thread_id for t in await one.threads()}
        listed_two = {t.thread_id for t in await two.threads()}
        assert listed_one == listed_two == {f"{kind}/{name}" for kind in ("count", "word")
                                            for name in names}
    assert backend.query("SELECT count(*) FROM threads") == [(16,)]


def test_sync_runs_from_many_os_threads_share_one_checkpointer(backend):
    results: dict[int, Items] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = app.invoke({}, thread_id=f"worker-{i}")
        except BaseException as exc:
            errors.append(exc)

    with backend.open() as saver:
        app = loop(60).compile(checkpointer=saver)
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert errors == []
        assert {i: r.n for i, r in results.items()} == {i: 60 for i in range(6)}
        for i in range(6):
            assert [h.state.n for h in app.history(f"worker-{i}")] == list(range(60, -1, -1))
        assert sorted(t.thread_id for t in app.threads()) == [f"worker-{i}" for i in range(6)]


async def test_threads_lists_status_and_who_is_busy_across_checkpointers(backend):
    release = threading.Event()

    def wait(state: Word) -> dict:
        assert release.wait(10)
        return {"text": "released"}

    g = StateGraph(Word)
    g.add_node("wait", wait)
    g.add_edge(START, "wait")
    g.add_edge("wait", END)
    async with backend.open() as one, backend.open() as two:
        shout_graph().compile(checkpointer=one).invoke({"text": "a"}, thread_id="finished")
        holder = g.compile(checkpointer=one)
        running = asyncio.create_task(holder.ainvoke({}, thread_id="running"))
        intruder = g.compile(checkpointer=two)
        for _ in range(500):
            infos = {t.thread_id: t for t in await two.threads()}
            if "running" in infos:
                break
            await asyncio.sleep(0.01)
        assert [t.thread_id for t in await two.threads()] == ["running", "finished"]
        assert infos["running"].busy and infos["running"].status == "running"
        assert not infos["finished"].busy and infos["finished"].status == "done"
        # one writer per thread, also between two checkpointers of one process
        with pytest.raises(ThreadBusyError):
            await intruder.aresume("running")
        release.set()
        assert (await running).text == "released"
        assert not any(t.busy for t in await two.threads())
        assert (await intruder.aresume("running")).text == "released"


async def test_a_run_that_lost_its_lease_cannot_commit(backend):
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(state: Tally) -> dict:
        entered.set()
        await release.wait()
        return {"total": 1, "log": ["slow"]}

    async def quick(state: Tally) -> dict:
        return {"total": 1, "log": ["quick"]}

    g = StateGraph(Tally)
    g.add_node("quick", quick)
    g.add_node("slow", slow)
    for name in ("quick", "slow"):
        g.add_edge(START, name)
        g.add_edge(name, END)
    async with backend.open() as saver:
        app = g.compile(checkpointer=saver)
        run = asyncio.create_task(app.ainvoke({}, thread_id="t"))
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.1)
        before = backend.query("SELECT count(*) FROM checkpoints")
        # another run took the thread over (as after an expired lease)
        await asyncio.to_thread(
            backend.change, "UPDATE threads SET owner = 'someone-else', owner_pid = 1, "
                            "lease_expires = 9e18 WHERE thread_id = 't'")
        release.set()
        with pytest.raises(ThreadBusyError, match="taken over"):
            await run
        assert backend.query("SELECT count(*) FROM checkpoints") == before
        assert backend.query("SELECT status FROM checkpoints") == [("running",)]
        # the quick node's update landed while the run held the thread; the slow one's did not
        assert backend.query("SELECT node FROM pending_writes") == [("quick",)]
        assert backend.query("SELECT owner FROM threads") == [("someone-else",)]


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_tasks_finishing_together_commit_together_each_with_its_memory(backend, api):
    """Several finished tasks' updates go in one transaction, each task's memories with it;
    fenced out, none of them lands (nor any memory)."""
    from checkpoints.base import NewCheckpoint, Owner, PendingWrite
    from checkpoints.store_types import StoreWrite

    async with backend.open() as opened:
        saver = opened.in_caller_thread() if api == "sync" else opened
        owner = Owner.new()
        await saver.acquire("t", owner)
        head = await saver.put("t", owner, NewCheckpoint(None, 0, "input", "running", "[]",
                                                         snapshot='{"n": 0}'))
        store = saver.open_store()
        assert saver.commits_memory_of(store)
        writes = [(PendingWrite(head, f"n{i}", i, f'{{"n": {i}}}'),
                   [StoreWrite(("mem",), f"k{i}", f'{{"i": {i}}}')] if i % 2 else [])
                  for i in range(5)]
        await saver.put_pendings("t", owner, writes)
        assert sorted(backend.query("SELECT node, idx, writes FROM pending_writes")) == [
            (f"n{i}", i, f'{{"n": {i}}}') for i in range(5)]
        assert [(i.key, i.value) for i in sorted(store.search(("mem",)), key=lambda i: i.key)
                ] == [("k1", {"i": 1}), ("k3", {"i": 3})]

        await asyncio.to_thread(backend.change, "UPDATE threads SET owner = 'someone-else' "
                                                "WHERE thread_id = 't'")
        late = [(PendingWrite(head, f"late{i}", 10 + i, "{}"),
                 [StoreWrite(("mem",), f"late{i}", "{}")]) for i in range(3)]
        with pytest.raises(ThreadBusyError, match="taken over"):
            await saver.put_pendings("t", owner, late)
        assert backend.query("SELECT count(*) FROM pending_writes") == [(5,)]
        assert sorted(i.key for i in store.search(("mem",))) == ["k1", "k3"]
        store.close()


def test_a_failed_run_resumes_from_a_reopened_store(backend):
    ran: list[str] = []
    with backend.open() as saver, pytest.raises(RuntimeError):
        fan_out({"c": 1}, ran).compile(checkpointer=saver).invoke({}, thread_id="t")
    with backend.open() as saver:
        app = fan_out({}, ran).compile(checkpointer=saver)
        assert app.get_state("t").next == ("c",)
        final = app.resume("t")
        with pytest.raises(ThreadNotFoundError):
            app.get_state("t", "not-a-checkpoint-id")
    assert final == Tally(total=4, log=["a", "b", "c", "d"])
    assert sorted(ran) == ["a", "b", "c", "c", "d"]


SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE threads (key INTEGER PRIMARY KEY, thread_id TEXT NOT NULL UNIQUE, owner TEXT,
    owner_pid INTEGER, owner_host TEXT, lease_expires REAL, created_at REAL NOT NULL);
CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, thread INTEGER NOT NULL REFERENCES
    threads(key), parent INTEGER, step INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT NOT
    NULL, next TEXT NOT NULL, writes TEXT, snapshot TEXT, extra TEXT, error TEXT,
    created_at REAL NOT NULL);
CREATE INDEX checkpoints_by_thread ON checkpoints(thread, id);
CREATE TABLE pending_writes (checkpoint INTEGER NOT NULL, node TEXT NOT NULL,
    idx INTEGER NOT NULL, writes TEXT NOT NULL, PRIMARY KEY (checkpoint, node, idx))
    WITHOUT ROWID;
INSERT INTO schema_version(version) VALUES (1);
"""


def test_a_version_1_file_is_migrated_and_keeps_its_threads(tmp_path):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # a file as the first release wrote it, with one run
        db.executescript(SCHEMA_V1)
        db.execute("PRAGMA application_id = 1398033731")
        db.execute("INSERT INTO threads(thread_id, created_at) VALUES ('old', 1.0)")
        db.execute("INSERT INTO checkpoints(thread, parent, step, kind, status, next, snapshot, "
                   "created_at) VALUES (1, NULL, 1, 'input', 'done', '[]', "
                   "'{\"n\": 7, \"items\": [\"old\"]}', 1.0)")
    saver = SQLiteCheckpointer(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [
                (SCHEMA_VERSION,)]
            columns = {row[1] for row in db.execute("PRAGMA table_info(checkpoints)")}
            assert "marked_at" in columns
        app = loop(9).compile(checkpointer=saver)
        assert app.get_state("old").state == Items(n=7, items=["old"])
        assert [t.thread_id for t in app.threads()] == ["old"]
        final = app.invoke({"items": ["new"]}, thread_id="old")  # runs on the migrated file
        assert final == Items(n=9, items=["old", "new", "item-7", "item-8"])
    finally:
        saver.close()


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    for attempt in range(3):
        db = tmp_path / f"race-{attempt}.db"
        code = ("from checkpoints import SQLiteCheckpointer; "
                f"SQLiteCheckpointer({str(db)!r}).close()")
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        assert rows(db, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_read_only_checkpointer_reads_everything_and_changes_nothing(backend, tmp_path):
    with backend.open() as saver:
        loop(3).compile(checkpointer=saver).invoke({}, thread_id="t")

    def contents() -> object:
        return backend.path.read_bytes() if backend.kind == "sqlite" else backend.dump()

    before = contents()
    with backend.open(read_only=True) as reader:
        app = loop(5).compile(checkpointer=reader)
        assert app.get_state("t").state == Items(n=3, items=["item-0", "item-1", "item-2"])
        assert len(app.history("t")) == 4 and [t.thread_id for t in app.threads()] == ["t"]
        with pytest.raises(CheckpointError, match="read-only"):
            app.invoke({}, thread_id="t")
        with pytest.raises(CheckpointError, match="read-only"):
            app.update_state("t", {"n": 9})
    assert contents() == before
    if backend.kind == "sqlite":
        with pytest.raises(CheckpointError, match="no database file"):
            SQLiteCheckpointer(tmp_path / "missing.db", read_only=True)
        assert not (tmp_path / "missing.db").exists()
    else:
        from checkpoints import PostgresCheckpointer

        missing = postgres_schema()
        with pytest.raises(CheckpointError, match="holds no statemachine tables"):
            PostgresCheckpointer(backend.dsn, schema=missing, read_only=True)
        assert backend.query("SELECT count(*) FROM information_schema.schemata WHERE "
                              "schema_name = ?", missing) == [(0,)]


async def test_a_dead_holder_is_taken_over_at_once_only_from_its_own_process_space(backend):
    """A lease whose process is gone is free at once when that process ran where its pid can
    be checked (this host, boot and pid namespace); a holder elsewhere — another container
    with the same host name — is waited for until its lease expires."""
    import subprocess
    import sys

    from checkpoints.base import Owner, process_space

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    saver = backend.open()
    here = Owner("dead-here", gone.pid, process_space())
    elsewhere = Owner("dead-elsewhere", gone.pid, process_space().split("#")[0] + "#other.1")
    await saver.acquire("local", here)
    await saver.acquire("remote", elsewhere)

    await saver.acquire("local", Owner.new())  # its pid is gone, and it was ours to check
    with pytest.raises(ThreadBusyError):
        await saver.acquire("remote", Owner.new())  # not ours to check: wait for the lease
