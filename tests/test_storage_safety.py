"""Stores facing long threads, damaged rows and crafted files: pages cost what they return, a
damaged database is a clear `CheckpointError` naming store, thread and checkpoint (never a raw
error, never a hang), and pages of a history equal the slices of the whole one."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from test_storage import Items, loop

from checkpoints import SQLiteCheckpointer
from checkpoints.base import Owner
from checkpoints.sqlite import SCHEMA_VERSION
from statemachine import (
    END,
    START,
    CheckpointError,
    StateGraph,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFoundError,
    reducers,
)


def call_with_timeout(fn: Any, seconds: float = 30) -> Any:
    """`fn()` in a thread: a read that recursed forever would fail the test, not hang it."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_history_pages_are_the_slices_of_the_whole_history(store):
    saver = store.open()
    app = loop(30).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    app.update_state("t", {"n": 100})
    whole = app.history("t")
    for limit in (1, 2, 7, 31, 50):
        pages, before = [], None
        while page := app.history("t", limit=limit, before=before):
            assert len(page) <= limit
            pages += page
            before = page[-1].checkpoint_id
        assert [(s.checkpoint_id, s.state, s.ran, s.next, s.status) for s in pages] == \
               [(s.checkpoint_id, s.state, s.ran, s.next, s.status) for s in whole]


def test_a_history_page_never_reads_older_checkpoints(sqlite_store):
    """The first page of a long thread reads the page, not the thread: a damaged old row
    does not stop it (reading the whole history did)."""
    saver = sqlite_store.open()
    app = loop(200).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    oldest = sqlite_store.query("SELECT min(id) FROM checkpoints")[0][0]
    sqlite_store.change("UPDATE checkpoints SET next = 'not json', created_at = 'noon' "
                        "WHERE id = ?", oldest + 1)
    page = app.history("t", limit=3)
    assert [s.state.n for s in page] == [200, 199, 198]
    with pytest.raises(CheckpointError, match=rf"thread 't', checkpoint {oldest + 1}"):
        app.history("t")


def test_thread_pages_and_changes_since(store):
    saver = store.open()
    app = loop(1).compile(checkpointer=saver)
    for i in range(7):
        app.invoke({}, thread_id=f"t{i}")
    whole = [t.thread_id for t in app.threads()]
    assert sorted(whole) == [f"t{i}" for i in range(7)]
    pages = [[t.thread_id for t in _threads(saver, 3, offset)] for offset in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1] and [t for p in pages for t in p] == whole
    newest = app.threads()[0]
    assert _threads(saver, None, 0, since=newest.updated_at) == []
    app.invoke({}, thread_id="t2")
    assert [t.thread_id for t in _threads(saver, None, 0, since=newest.updated_at)] == ["t2"]


def _threads(saver: Any, limit: int | None, offset: int, since: float | None = None) -> list:
    from statemachine._sync import run_sync

    return run_sync(lambda: saver.threads(limit=limit, offset=offset, updated_since=since))


@given(limit=st.integers(0, 12), before=st.one_of(st.none(), st.integers(-3, 40),
                                                  st.sampled_from(["²", "x", "", "1e3", "٣"])))
def test_list_pages_any_cursor(limit, before):
    """Any limit and any cursor, even text no store wrote, is a page (maybe empty), never an
    error: the same on memory and SQLite."""
    import tempfile

    from checkpoints import MemoryCheckpointer
    from statemachine._sync import run_sync

    with tempfile.TemporaryDirectory() as tmp, \
            SQLiteCheckpointer(Path(tmp) / "runs.db") as sqlite:
        for saver in (MemoryCheckpointer(), sqlite):
            loop(10).compile(checkpointer=saver).invoke({}, thread_id="t")
            whole = run_sync(lambda s=saver: s.list("t"))
            cursor = None if before is None else str(before)
            page = run_sync(lambda s=saver, c=cursor: s.list("t", limit=limit, before=c))
            ids = [r.id for r in whole]
            expected = whole if cursor is None else \
                whole[ids.index(cursor) + 1:] if cursor in ids else \
                [r for r in whole if cursor.isascii() and cursor.isdecimal() and
                 saver is sqlite and int(r.id) < int(cursor)]
            assert [r.id for r in page] == [r.id for r in expected[:limit]]


@pytest.mark.parametrize("checkpoint", ["²", "١٢", "+1", " 1", "-1", "9" * 30])
def test_a_checkpoint_id_no_store_wrote_is_not_found(store, checkpoint):
    app = loop(2).compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    with pytest.raises(ThreadNotFoundError, match="has no checkpoint"):
        app.get_state("t", checkpoint)


def test_a_parent_cycle_is_reported_not_looped_on(durable_store):
    """A crafted or damaged file whose parent pointers form a cycle: every read of the thread
    ends at once with the thread and checkpoint named (the recursive load looped forever)."""
    saver = durable_store.open()
    app = loop(6).compile(checkpointer=saver)
    app.invoke({}, thread_id="t")
    ids = [row[0] for row in durable_store.query("SELECT id FROM checkpoints ORDER BY id")]
    head = ids[-1]
    durable_store.change("UPDATE checkpoints SET snapshot = NULL")
    durable_store.change("UPDATE checkpoints SET parent = ? WHERE id = ?", head, ids[0])
    app = loop(6).compile(checkpointer=saver)  # as another process would: no state in memory
    for read in (lambda: app.get_state("t"), lambda: app.history("t", limit=2),
                 lambda: app.resume("t")):
        with pytest.raises(CheckpointError, match=r"thread 't', checkpoint \d+: .*cycle"):
            call_with_timeout(read)


def test_a_dangling_parent_and_a_parent_of_another_thread_are_damage(durable_store):
    saver = durable_store.open()
    app = loop(3).compile(checkpointer=saver)
    app.invoke({}, thread_id="a")
    app.invoke({}, thread_id="b")
    a_ids = [r[0] for r in durable_store.query(
        "SELECT c.id FROM checkpoints c JOIN threads t ON t.key = c.thread "
        "WHERE t.thread_id = 'a' ORDER BY c.id")]
    b_head = durable_store.query("SELECT max(id) FROM checkpoints")[0][0]
    durable_store.change("UPDATE checkpoints SET snapshot = NULL WHERE id = ?", b_head)
    durable_store.change("UPDATE checkpoints SET parent = ? WHERE id = ?", a_ids[-1], b_head)
    app = loop(3).compile(checkpointer=saver)  # as another process would: no state in memory
    with pytest.raises(CheckpointError, match=rf"thread 'b', checkpoint {b_head}: .*parent"):
        app.get_state("b")
    durable_store.change("UPDATE checkpoints SET parent = ? WHERE id = ?", 10**9, b_head)
    with pytest.raises(CheckpointError, match=rf"checkpoint {b_head}: .*missing"):
        app.get_state("b")
    assert app.get_state("a").state.n == 3


@pytest.mark.parametrize(("column", "value"), [
    ("created_at", "yesterday"), ("step", "three"), ("next", b"\x00"), ("kind", b"step")])
def test_a_row_of_the_wrong_type_is_damage_named_by_column(sqlite_store, column, value):
    app = loop(3).compile(checkpointer=sqlite_store.open())
    app.invoke({}, thread_id="t")
    head = sqlite_store.query("SELECT max(id) FROM checkpoints")[0][0]
    sqlite_store.change(f"UPDATE checkpoints SET {column} = ? WHERE id = ?", value, head)
    with pytest.raises(CheckpointError,
                       match=rf"runs\.db: thread 't', checkpoint {head}: its '{column}' column"):
        app.get_state("t")
    if column in ("created_at", "step"):
        with pytest.raises(CheckpointError, match=rf"checkpoint {head}: its '{column}'"):
            app.threads()


# -- the store failing under a run: locks, full disks, read-only media ---------------------------

LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the file's write lock for `seconds`."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small file system of its own (a full disk, read-only media): needs root, as in CI."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs: {mounted.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_lock_held_too_long_is_a_clear_error_and_the_thread_is_released(tmp_path):
    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path, busy_timeout=0.3) as saver:
        app = loop(3).compile(checkpointer=saver)
        app.invoke({}, thread_id="first")
        holder = hold_write_lock(path, 1.5)
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=rf"cannot take thread 'second' with "
                           rf"its input in '{re.escape(str(path))}': the database is locked "
                           r".*busy_timeout=0.3"):
            app.invoke({}, thread_id="second")
        assert time.monotonic() - started < 1.2
        holder.wait(10)
        assert app.invoke({}, thread_id="second").n == 3
        assert [t.busy for t in app.threads()] == [False, False]


def test_a_full_disk_mid_run_is_a_clear_error_and_every_committed_step_resumes(tmp_path):
    with tmpfs(tmp_path / "small", "400k") as small:
        path = small / "runs.db"
        saver = SQLiteCheckpointer(path)
        app = big_steps(40).compile(checkpointer=saver)
        with pytest.raises(StorageUnavailableError,
                           match=rf"cannot commit step \d+ of thread 't' in "
                                 rf"'{re.escape(str(path))}': the disk is full"):
            app.invoke({}, thread_id="t")
        saver.close()  # closing after a full disk does not raise
        reader = SQLiteCheckpointer(path, read_only=True)
        kept = reader_state(reader)
        assert [t.busy for t in loop(1).compile(checkpointer=reader).threads()] == [False]
        reader.close()
        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
        with SQLiteCheckpointer(path) as again:
            resumed = big_steps(40).compile(checkpointer=again)
            assert resumed.resume("t").n == 40
            history = resumed.history("t")
            assert [s.state.n for s in history][-(kept + 1):] == list(range(kept, -1, -1))
            assert sorted({s.step for s in history}) == list(range(41))


def test_a_database_on_read_only_media_is_read_by_the_cli(tmp_path):
    with tmpfs(tmp_path / "media", "4m") as media:
        path = media / "runs.db"
        with SQLiteCheckpointer(path) as saver:
            loop(3).compile(checkpointer=saver).invoke({}, thread_id="t")
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        with pytest.raises(StorageUnavailableError, match="read-only"):
            SQLiteCheckpointer(path)
        with SQLiteCheckpointer(path, read_only=True) as reader:
            assert loop(3).compile(checkpointer=reader).get_state("t").state.n == 3
        for command in (["threads"], ["history", "--thread", "t"]):
            result = subprocess.run([sys.executable, "-m", "statemachine", *command,
                                     "--db", str(path)], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr
            assert "done" in result.stdout


def test_a_missing_directory_is_named(tmp_path):
    path = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(StorageUnavailableError,
                       match=rf"directory '{re.escape(str(path.parent))}' does not exist"):
        SQLiteCheckpointer(path)
    assert not path.parent.exists()


class Blob(BaseModel):
    n: int = 0
    blobs: Annotated[list[str], reducers.append] = []


def big_steps(limit: int) -> StateGraph:
    """Each step appends 20 KB: a small disk fills within a few steps."""

    def grow(state: Blob) -> dict:
        return {"n": state.n + 1, "blobs": [f"{state.n:05d}" * 4000]}

    g = StateGraph(Blob)
    g.add_node("grow", grow)
    g.add_edge(START, "grow")
    g.add_conditional_edges("grow", lambda s: "again" if s.n < limit else "done",
                            {"again": "grow", "done": END})
    return g


def reader_state(reader: SQLiteCheckpointer) -> int:
    return big_steps(40).compile(checkpointer=reader).get_state("t").state.n


SKEWED_RESUMER = """
import sys, time
real = time.time
time.time = lambda: real() + 3600  # this process's clock runs an hour ahead
sys.path.insert(0, sys.argv[2])
from checkpoints import SQLiteCheckpointer
from checkpoints.base import Owner
from statemachine import ThreadBusyError
from test_storage import loop
with SQLiteCheckpointer(sys.argv[1], lease_seconds=2.0) as saver:
    started = time.monotonic()
    try:
        loop(3).compile(checkpointer=saver).resume("t")
    except ThreadBusyError:
        print(f"busy after {time.monotonic() - started:.2f}")
    else:
        print("took over")
"""


def test_a_resumer_whose_clock_runs_ahead_does_not_take_a_live_lease(tmp_path):
    """The holder's lease looks an hour expired to the resumer; it watches the heartbeat
    instead of trusting its clock, sees it beat, and backs off: the running node runs once
    (before, it took over at once and the node ran twice). The lease is 2 s, beaten every
    2/3 s: only a heartbeat standing still for over a second could look like a dead holder."""
    path, release, calls = tmp_path / "runs.db", threading.Event(), []

    def work(state: Items) -> dict:
        calls.append(state.n)
        if state.n == 1:
            release.wait(20)
        return {"n": state.n + 1, "items": [f"item-{state.n}"]}

    g = StateGraph(Items)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "again" if s.n < 3 else "done",
                            {"again": "work", "done": END})
    with SQLiteCheckpointer(path, lease_seconds=2.0) as saver:
        app = g.compile(checkpointer=saver)
        runner = threading.Thread(target=lambda: app.invoke({}, thread_id="t"))
        runner.start()
        while calls != [0, 1]:
            time.sleep(0.01)
        tests = str(Path(__file__).resolve().parent)
        resumer = subprocess.run([sys.executable, "-c", SKEWED_RESUMER, str(path), tests],
                                 capture_output=True, text=True, timeout=60,
                                 cwd=Path(tests).parent)
        release.set()
        runner.join(20)
        assert resumer.returncode == 0, resumer.stderr
        assert resumer.stdout.startswith("busy after "), resumer.stdout  # it saw a beat
        assert calls == [0, 1, 2] and app.get_state("t").state.n == 3


@pytest.mark.parametrize(("column", "value"), [
    ("next", "[not json"), ("next", '{"a": 1}'), ("extra", "{oops"), ("extra", "[1]"),
    ("writes", "nope"), ("snapshot", "{broken")])
def test_malformed_json_in_a_row_is_named_by_the_api_and_the_cli(sqlite_store, column, value):
    """A damaged JSON column is a CheckpointError naming thread and checkpoint in Python, and a
    one-line error (no traceback) from every reading command."""
    app = loop(3).compile(checkpointer=sqlite_store.open())
    app.invoke({}, thread_id="t")
    head = sqlite_store.query("SELECT max(id) FROM checkpoints")[0][0]
    target = head if column != "snapshot" else sqlite_store.query(
        "SELECT max(id) FROM checkpoints WHERE snapshot IS NOT NULL")[0][0]
    sqlite_store.change(f"UPDATE checkpoints SET {column} = ? WHERE id = ?", value, target)
    app = loop(3).compile(checkpointer=sqlite_store.open())  # no state in memory
    with pytest.raises(CheckpointError, match=rf"thread 't'.*checkpoint {target}|"
                                              rf"checkpoint {target} of thread 't'"):
        app.get_state("t")
    sqlite_store.close()
    db = str(sqlite_store.path)
    for command in (["history", "--thread", "t"], ["show", "--thread", "t"],
                    ["history", "--thread", "t", "--json"]):
        result = subprocess.run([sys.executable, "-m", "statemachine", *command, "--db", db],
                                capture_output=True, text=True, timeout=60)
        if column == "snapshot" and command[0] == "history":  # it reads no state
            assert result.returncode == 0, result.stderr
            continue
        assert result.returncode != 0, (command, result.stdout)
        assert "Traceback" not in result.stderr, result.stderr
        assert f"checkpoint {target}" in result.stderr and "'t'" in result.stderr, \
            (command, result.stderr)


def test_a_malformed_pending_write_is_named(sqlite_store):
    fail = {"on": True}

    def work(state: Items) -> dict:
        if state.n == 1 and fail["on"]:
            raise RuntimeError("down")
        return {"n": state.n + 1}

    g = StateGraph(Items)
    g.add_node("work", work)
    g.add_node("side", lambda s: {"items": ["side"]})
    g.add_edge(START, "work")
    g.add_edge(START, "side")
    g.add_edge("side", END)
    g.add_conditional_edges("work", lambda s: "again" if s.n < 3 else "done",
                            {"again": "work", "done": END})
    app = g.compile(checkpointer=sqlite_store.open())
    with pytest.raises(RuntimeError):
        app.invoke({"n": 1}, thread_id="t")
    assert sqlite_store.query("SELECT count(*) FROM pending_writes")[0][0] == 1
    sqlite_store.change("UPDATE pending_writes SET writes = '{half'")
    with pytest.raises(CheckpointError,
                       match=r"runs\.db: checkpoint \d+: the pending write of node 'side'"):
        app.get_state("t")


EXCLUSIVE_PROBE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
try:
    print(conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0])
except sqlite3.OperationalError as exc:
    print(exc)
"""


def another_process_finds_it_unused(path: Path) -> bool:
    """Whether another process can take `path` out of WAL mode, which SQLite allows only when
    no other connection to the file is open anywhere (its shared lock on the file says so)."""
    probe = subprocess.run([sys.executable, "-c", EXCLUSIVE_PROBE, str(path)],
                           capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() == "delete"


def test_opening_and_closing_checkpointers_keeps_the_locks_of_open_connections(tmp_path):
    """A checkpointer made and closed beside one in use (one per request, say) must not drop
    the live connection's locks: with them gone, another process believes the file unused
    and can rewrite it under the live connection (the corruption found by the audit)."""
    control = tmp_path / "control.db"
    with SQLiteCheckpointer(control) as saver:
        loop(1).compile(checkpointer=saver).invoke({}, thread_id="t")
        assert not another_process_finds_it_unused(control)
        with open(control, "rb") as handle:  # what the checkpointer used to do
            handle.read(16)
        assert another_process_finds_it_unused(control)  # the probe sees the harm

    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        app = loop(3).compile(checkpointer=saver)
        app.invoke({}, thread_id="t")
        for options in ({}, {"read_only": True}):
            SQLiteCheckpointer(path, **options).close()
        assert not another_process_finds_it_unused(path)
        assert app.invoke({}, thread_id="u").n == 3


OPEN_AT = """
import sys, time
from checkpoints import SQLiteCheckpointer
from checkpoints.base import Owner
start = float(sys.argv[2])
while time.time() < start:
    pass
SQLiteCheckpointer(sys.argv[1]).close()
"""


def schema_3_file(path: Path) -> None:
    """A file as the previous release (schema 3) left it, with one finished thread."""
    with SQLiteCheckpointer(path) as saver:
        loop(2).compile(checkpointer=saver).invoke({}, thread_id="old")
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE threads DROP COLUMN lease_seconds")
        conn.execute("ALTER TABLE threads DROP COLUMN graph")
        conn.execute("ALTER TABLE jobs DROP COLUMN claim_seconds")
        conn.execute("DROP TABLE store_items")
        conn.execute("DROP TABLE store_vectors")
        conn.execute("UPDATE schema_version SET version = 3")


def test_processes_upgrading_one_old_file_at_once_all_succeed(tmp_path):
    """Six processes open a schema-3 file at the same moment (one checkpointer per request
    after an upgrade): one migrates it, the others see it migrated; before, the others ran the
    migration again and failed with "duplicate column"."""
    path = tmp_path / "old.db"
    schema_3_file(path)
    start = time.time() + 1.0
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(path), str(start)], cwd=root,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, errors
    with SQLiteCheckpointer(path) as saver:
        app = loop(4).compile(checkpointer=saver)
        assert app.get_state("old").state.n == 2
        assert app.invoke({}, thread_id="old").n == 4
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == \
            [(SCHEMA_VERSION,)]


def test_text_that_is_not_utf8_is_damage_not_a_passing_fault(sqlite_store):
    """Invalid UTF-8 in a stored column is damage (a plain CheckpointError that a worker does
    not retry), and an id SQLite cannot store is a clear error, not a raw UnicodeEncodeError."""
    app = loop(2).compile(checkpointer=sqlite_store.open())
    app.invoke({}, thread_id="t")
    sqlite_store.change("UPDATE checkpoints SET next = CAST(X'5b22ff225d' AS TEXT) "
                        "WHERE id = (SELECT max(id) FROM checkpoints)")
    with pytest.raises(CheckpointError, match="not valid UTF-8") as info:
        app.get_state("t")
    assert not isinstance(info.value, StorageUnavailableError)
    with pytest.raises(CheckpointError, match=r"thread 'a\\udc9b'.*not valid text"):
        app.history("a\udc9b")


CRASHED_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[2])
from checkpoints import SQLiteCheckpointer
from checkpoints.base import Owner
from test_storage import loop
saver = SQLiteCheckpointer(sys.argv[1])
loop(2).compile(checkpointer=saver).invoke({}, thread_id="in-the-log")
os._exit(0)  # no close(): the commits stay in the write-ahead log
"""


def test_read_only_media_with_an_unreplayed_log_is_refused_not_misread(tmp_path):
    """Commits left in a -wal file by a writer that crashed cannot be read without a -shm
    file; on read-only media that cannot be made, so the reader says so instead of showing the
    file without them."""
    tests = str(Path(__file__).resolve().parent)
    with tmpfs(tmp_path / "media", "4m") as media:
        path = media / "runs.db"
        subprocess.run([sys.executable, "-c", CRASHED_WRITER, str(path), tests], check=True,
                       cwd=Path(tests).parent, timeout=60)
        assert (media / "runs.db-wal").stat().st_size > 0
        (media / "runs.db-shm").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        with pytest.raises(CheckpointError, match=r"runs\.db-wal\) holds commits"):
            SQLiteCheckpointer(path, read_only=True)


def test_a_reader_that_cannot_write_the_directory_still_sees_new_runs(tmp_path):
    """A reader that may not write the database's directory (here a read-only bind mount of
    it, as a container would have) reads it — immutable while nobody has the file open — and
    still sees what a writer commits afterwards through its own, writable path."""
    folder, view = tmp_path / "shared", tmp_path / "view"
    folder.mkdir()
    view.mkdir()
    path = folder / "runs.db"
    with SQLiteCheckpointer(path) as saver:
        loop(1).compile(checkpointer=saver).invoke({}, thread_id="first")
    bound = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True,
                           text=True)
    if bound.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot bind-mount: {bound.stderr}")
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        with SQLiteCheckpointer(view / "runs.db", read_only=True) as reader:
            app = loop(1).compile(checkpointer=reader)
            assert [t.thread_id for t in app.threads()] == ["first"]
            with SQLiteCheckpointer(path) as saver:
                loop(1).compile(checkpointer=saver).invoke({}, thread_id="second")
                assert sorted(t.thread_id for t in app.threads()) == ["first", "second"]
                loop(1).compile(checkpointer=saver).invoke({}, thread_id="third")
            assert sorted(t.thread_id for t in app.threads()) == ["first", "second", "third"]
    finally:
        subprocess.run(["umount", "-l", str(view)], check=True)


@pytest.mark.parametrize("skew", [-3600.0, 0.0, 3600.0])
def test_a_dead_holder_elsewhere_is_taken_over_after_one_still_lease_whatever_its_clock(
        sqlite_store, skew):
    """A holder on another machine died; its last lease, by its clock, ends an hour ago, now,
    or an hour from now. The newcomer watches its heartbeat for one lease period (1 s) and takes
    the thread: neither clock's reading decides (an hour-ahead holder blocked it for an hour)."""
    app = loop(3).compile(checkpointer=sqlite_store.open(lease_seconds=1.0))
    app.invoke({"n": 1}, thread_id="t")
    sqlite_store.change("UPDATE threads SET owner = 'gone', owner_pid = 1, owner_host = "
                        "'elsewhere', lease_expires = ?, lease_seconds = 1.0",
                        time.time() + skew + 1.0)
    started = time.monotonic()
    if skew == 0.0:  # looks live by both clocks: busy at once, as any live lease
        with pytest.raises(ThreadBusyError):
            app.update_state("t", {"n": 0})
        assert time.monotonic() - started < 0.5
        return
    assert app.update_state("t", {"n": 0}).state.n == 0
    assert 0.9 <= time.monotonic() - started < 5
    assert sqlite_store.query("SELECT owner FROM threads") == [(None,)]


@pytest.mark.parametrize(("column", "value"), [("error", b"\x00blob"), ("status", b"done")])
def test_a_thread_list_row_of_the_wrong_type_is_named(sqlite_store, column, value):
    """The list's own columns are checked too: a blob there was a 500 in the viewer."""
    app = loop(2).compile(checkpointer=sqlite_store.open())
    app.invoke({}, thread_id="t")
    sqlite_store.change(f"UPDATE checkpoints SET {column} = ? "
                        "WHERE id = (SELECT max(id) FROM checkpoints)", value)
    with pytest.raises(CheckpointError, match=rf"thread 't', checkpoint \d+: its '{column}'"):
        app.threads()


def test_a_time_no_clock_gives_shows_as_unknown_in_the_rows():
    from statemachine.store_reader import format_time

    assert format_time(1e20) == "?" and format_time(float("nan")) == "?"
    assert format_time(0.0).startswith("19")


SKEWED_CLAIMER = """
import sys, time
real = time.time
time.time = lambda: real() + 3600  # this worker's clock runs an hour ahead
from checkpoints import SQLiteCheckpointer
from checkpoints.base import Owner
from checkpoints.base import Owner
with SQLiteCheckpointer(sys.argv[1], lease_seconds=2.0) as saver:
    from statemachine._sync import run_sync
    until = time.monotonic() + 5.0  # two and a half of the holder's claim periods
    while time.monotonic() < until:
        if run_sync(lambda: saver.claim(Owner.new())) is not None:
            print("stole it")
            break
        time.sleep(0.05)
    else:
        print("left it")
"""


def test_a_worker_whose_clock_runs_ahead_leaves_a_live_claim_alone(tmp_path):
    """Claims are judged like leases: a worker an hour ahead watches a running job's claim,
    sees it renewed, and leaves it (it took every running job before). The claim lasts 2 s,
    beaten every 2/3 s: only a heartbeat standing still for over a second could look dead."""
    from statemachine._sync import run_sync

    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path, lease_seconds=2.0) as saver:
        loop(2).compile(checkpointer=saver).submit({}, thread_id="t")
        job = run_sync(lambda: saver.claim(Owner.new()))
        assert job is not None
        other = subprocess.run([sys.executable, "-c", SKEWED_CLAIMER, str(path)],
                               capture_output=True, text=True, timeout=60,
                               cwd=Path(__file__).resolve().parent.parent)
        assert other.stdout.strip() == "left it", other.stderr
        assert run_sync(lambda: saver.finish(job, status="done")) is True


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_a_stalled_claim_is_taken_after_one_still_period_whatever_its_clock(tmp_path, skew):
    from statemachine._sync import run_sync

    path = tmp_path / "runs.db"
    with SQLiteCheckpointer(path, lease_seconds=1.0) as saver:
        loop(2).compile(checkpointer=saver).submit({}, thread_id="t")
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE jobs SET status = 'running', claim_key = 'gone', "
                         "claimed_until = ?, claim_seconds = 1.0", (time.time() + skew,))
        started, job = time.monotonic(), None
        while job is None and time.monotonic() - started < 10:
            job = run_sync(lambda: saver.claim(Owner.new()))
            time.sleep(0.05)
        assert job is not None and job.thread_id == "t" and job.attempts == 1
        assert 0.9 <= time.monotonic() - started < 5


def test_a_damaged_ancestor_read_only_for_its_writes_is_named_by_the_cli(sqlite_store):
    """Rows replayed on the way to a checkpoint are parsed once, by whoever reads their
    writes; damage there is still a one-line error naming the checkpoint, never a traceback."""
    app = loop(12).compile(checkpointer=sqlite_store.open())
    app.invoke({}, thread_id="t")
    sqlite_store.close()
    ids = [row[0] for row in sqlite_store.query(
        "SELECT id FROM checkpoints WHERE snapshot IS NULL ORDER BY id")]
    # two checkpoints in a row without a snapshot: the second is rebuilt through the first
    damaged_id, later = next((a, b) for a, b in pairwise(ids) if b == a + 1)
    sqlite_store.change("UPDATE checkpoints SET writes = '[oops]', next = '[oops]' "
                        "WHERE id = ?", damaged_id)
    for command in (["show", "--thread", "t", "--checkpoint", str(later)],
                    ["history", "--thread", "t", "--json"]):
        result = subprocess.run([sys.executable, "-m", "statemachine", *command, "--db",
                                 str(sqlite_store.path)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "'t'" in result.stderr and "checkpoint" in result.stderr, result.stderr
    fresh = loop(12).compile(checkpointer=sqlite_store.open())
    with pytest.raises(CheckpointError, match=rf"checkpoint {damaged_id}"):
        fresh.get_state("t", str(later))


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("version", [None, "four"])
def test_a_file_without_a_schema_version_is_damage_not_a_type_error(tmp_path, read_only,
                                                                     version):
    """Its version row gone (or not a number): opening it named a TypeError before."""
    path = tmp_path / "runs.db"
    SQLiteCheckpointer(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM schema_version" if version is None else
                     "UPDATE schema_version SET version = ?", () if version is None else
                     (version,))
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"runs\.db.*schema_version.*damaged"):
        SQLiteCheckpointer(path, read_only=read_only)
    assert path.read_bytes() == before
