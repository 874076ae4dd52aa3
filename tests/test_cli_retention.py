"""`statemachine prune` and `statemachine delete`, run as a user runs them (`cli` from
test_cli.py: `python -m statemachine ...` in a subprocess), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest
from test_cli import NOT_FOUND, OK, USAGE, cli
from test_retention import chat_graph, revisions

BUSY = 5


def conversation(store, *threads: str) -> None:
    """Threads of three chat turns each (every turn runs a subgraph of its own)."""
    with store.open() as saver:
        app = chat_graph().compile(checkpointer=saver)
        for thread in threads:
            for i in range(3):
                app.invoke({"messages": [f"hello {i}"]}, thread_id=thread)


def counts(store) -> dict[str, int]:
    rows = store.query("SELECT t.thread_id, count(c.id) FROM threads t LEFT JOIN checkpoints "
                       "c ON c.thread = t.key GROUP BY t.thread_id")
    return dict(rows)


def test_prune_dry_run_shows_what_the_prune_then_removes(durable_store):
    evil = "evil\x1b]0;owned\x07\u202e"
    conversation(durable_store, "order-1", evil)
    before = counts(durable_store)
    contents = durable_store.path.read_bytes() if durable_store.kind == "sqlite" else None
    args = ["prune", *durable_store.cli_args, "--keep-last", "2"]

    dry, dry_json = cli(*args, "--dry-run"), cli(*args, "--dry-run", "--json")
    assert (dry.returncode, dry_json.returncode) == (OK, OK), dry.stderr + dry_json.stderr
    assert counts(durable_store) == before
    if contents is not None:  # a dry run opens the file read-only: not a byte changes
        assert durable_store.path.read_bytes() == contents
    assert "(dry run: nothing was removed)" in dry.stdout
    assert re.search(r"^would remove: 4 threads, \d+ checkpoints", dry.stdout, re.M), dry.stdout

    done = cli(*args, "--json")
    assert done.returncode == OK, done.stderr
    report, planned = json.loads(done.stdout), json.loads(dry_json.stdout)
    assert (planned["dry_run"], report["dry_run"]) == (True, False)
    for key in ("threads", "checkpoints", "kept", "pending_writes", "jobs", "skipped"):
        assert report[key] == planned[key], key
    after = counts(durable_store)
    assert set(report["threads"]) == set(before) - set(after)
    assert report["checkpoints"] == {t: before[t] - after.get(t, 0) for t in before
                                     if before[t] != after.get(t, 0)}
    assert {t: after[t] for t in report["kept"]} == report["kept"]
    assert report["kept"]["order-1"] >= 2 and report["kept"][evil] >= 2
    if durable_store.kind == "sqlite":  # small rows: the pages they freed may be shared
        assert 0 < report["bytes_after"] <= report["bytes_before"]
    else:
        assert report["bytes_before"] is None

    text = dry.stdout + dry_json.stdout + done.stdout
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil\\x1b]0;owned\\x07\\u202e" in dry.stdout
    table = [line for line in dry.stdout.splitlines() if line.strip().startswith("order-1 ")]
    assert len(table) == 1
    assert table[0].split()[1:] == [str(planned["checkpoints"]["order-1"]),
                                    str(planned["kept"]["order-1"])]
    assert re.search(r"order-1::research:0@\d+ .* thread deleted", dry.stdout), dry.stdout


def test_prune_prints_the_file_shrinking_and_the_threads_it_skipped(sqlite_store):
    with sqlite_store.open() as saver:
        app = revisions(10, 20_000).compile(checkpointer=saver)
        for thread in ("a", "b", "busy"):
            app.invoke({}, thread_id=thread)
    sqlite_store.change("UPDATE threads SET owner = 'x', owner_pid = 1, owner_host = "
                        "'elsewhere', lease_expires = ? WHERE thread_id = 'busy'",
                        time.time() + 3600)
    result = cli("prune", "--db", str(sqlite_store.path), "--keep-last", "1")
    assert result.returncode == OK, result.stderr
    assert "skipped 1 thread: a live run holds it or a worker is running its job" \
        in result.stdout and result.stdout.rstrip().count("busy") == 1
    sizes = re.search(r"^file: [\d.]+ [KM]B -> [\d.]+ [KM]B \(([\d,]+) -> ([\d,]+) bytes\)$",
                      result.stdout, re.M)
    assert sizes, result.stdout
    before, after = (int(n.replace(",", "")) for n in sizes.groups())
    assert after < before * 0.6  # two threads of three trimmed to their last revision
    assert counts(sqlite_store)["busy"] == 11


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_finished_before_takes_iso_dates_and_reads_a_naive_one_as_utc(durable_store):
    conversation(durable_store, "noon", "two")
    for thread, finished in (("noon", "2026-01-01T12:00:00"), ("two", "2026-01-01T14:00:00")):
        durable_store.change(
            "UPDATE checkpoints SET created_at = ?, marked_at = NULL WHERE id = (SELECT "
            "max(c.id) FROM checkpoints c JOIN threads t ON t.key = c.thread WHERE "
            "t.thread_id = ?)", utc(finished), thread)
    base = ["prune", *durable_store.cli_args, "--json", "--finished-before"]
    # 13:00 at UTC+02:00 is 11:00 UTC: before either; 13:00 without a zone is UTC
    for date, gone in (("2026-01-01T13:00+02:00", []), ("2026-01-01T13:00", ["noon"]),
                       ("2026-01-02", ["two"])):
        result = cli(*base, date)
        assert result.returncode == OK, result.stderr
        removed = json.loads(result.stdout)["threads"]
        assert [t for t in removed if "::" not in t] == gone, date
        assert all(t.split("::")[0] in gone for t in removed)
    assert counts(durable_store) == {}


def test_prune_refuses_bad_dates_and_a_prune_of_everything(sqlite_store):
    conversation(sqlite_store, "t")
    db = str(sqlite_store.path)
    bad_date = cli("prune", "--db", db, "--finished-before", "last tuesday\x1b[2J")
    assert bad_date.returncode == USAGE
    assert "is not an ISO 8601 date or date and time" in bad_date.stderr
    assert "\x1b" not in bad_date.stderr and "last tuesday\\x1b[2J" in bad_date.stderr
    nothing = cli("prune", "--db", db)
    assert nothing.returncode == USAGE and "say what to remove" in nothing.stderr
    assert "statemachine delete" in nothing.stderr
    zero = cli("prune", "--db", db, "--keep-last", "0")
    assert zero.returncode == USAGE and "--keep-last" in zero.stderr
    unknown = cli("prune", "--db", db, "--keep-last", "1", "--thread", "tt")
    assert unknown.returncode == NOT_FOUND and "no thread 'tt'" in unknown.stderr
    assert "did you mean 't'?" in unknown.stderr
    missing = cli("prune", "--db", db + ".missing", "--keep-last", "1")
    assert missing.returncode == NOT_FOUND and not (sqlite_store.path.parent / (
        sqlite_store.path.name + ".missing")).exists()
    assert "without a time zone is UTC" in " ".join(cli("prune", "--help").stdout.split())
    assert counts(sqlite_store)["t"] > 3


def test_delete_prints_what_it_removed_and_refuses_a_busy_or_unknown_thread(durable_store):
    conversation(durable_store, "order-1", "order-2")
    before = counts(durable_store)
    args = ["delete", *durable_store.cli_args]

    dry = cli(*args, "--thread", "order-1", "--dry-run")
    assert dry.returncode == OK, dry.stderr
    assert "delete thread order-1 in" in dry.stdout and "dry run" in dry.stdout
    assert counts(durable_store) == before
    done = cli(*args, "--thread", "order-1")
    assert done.returncode == OK, done.stderr
    assert re.search(r"^removed: 4 threads, \d+ checkpoints", done.stdout, re.M), done.stdout
    assert done.stdout.count("thread deleted") == 4
    assert sorted(counts(durable_store)) == sorted(t for t in before if "order-2" in t)

    unknown = cli(*args, "--thread", "order-1")
    assert unknown.returncode == NOT_FOUND, unknown.stderr
    assert "no thread 'order-1'" in unknown.stderr and "order-2" in unknown.stderr

    durable_store.change("UPDATE threads SET owner = 'x', owner_pid = 1, owner_host = "
                         "'elsewhere', lease_expires = ? WHERE thread_id = 'order-2'",
                         time.time() + 3600)
    busy = cli(*args, "--thread", "order-2", "--json")
    assert busy.returncode == BUSY, busy.stderr
    assert "cannot delete thread 'order-2': a live run holds thread 'order-2'" in busy.stderr
    assert busy.stdout == "" and counts(durable_store) == \
        {t: n for t, n in before.items() if "order-2" in t}
    durable_store.change("UPDATE threads SET lease_expires = ? WHERE thread_id = 'order-2'",
                         time.time() - 60)  # its holder stopped renewing: lapsed
    lapsed = cli(*args, "--thread", "order-2", "--json")
    assert lapsed.returncode == OK, lapsed.stderr
    assert json.loads(lapsed.stdout)["threads"][0] == "order-2"
    assert counts(durable_store) == {}


def test_delete_needs_a_database_and_a_thread(tmp_path):
    assert cli("delete", "--thread", "t").returncode == USAGE
    no_thread = cli("delete", "--db", str(tmp_path / "runs.db"))
    assert no_thread.returncode == USAGE and "--thread" in no_thread.stderr
    missing = cli("delete", "--db", str(tmp_path / "runs.db"), "--thread", "t")
    assert missing.returncode == NOT_FOUND and not (tmp_path / "runs.db").exists()


@pytest.mark.parametrize("command", ["prune", "delete"])
def test_help_lists_the_retention_commands(command):
    top = cli("--help")
    assert re.search(rf"^\s+{command}\s", top.stdout, re.M), top.stdout
    assert cli(command, "--help").returncode == OK


def test_prune_with_the_graph_keeps_no_more_than_asked(durable_store):
    """Without the graph, a kept checkpoint keeps the older ones its state is rebuilt from
    (and the command says so); with --graph, those states are stored first, and exactly the
    newest N remain, each reading as before."""
    from cli_graphs import chat

    with durable_store.open() as saver:
        app = chat.compile(checkpointer=saver)
        for thread in ("a", "b"):
            for turn in range(30):
                app.invoke({"messages": [f"turn {turn}"]}, thread_id=thread)
        before = {t: {s.checkpoint_id: s.state for s in app.history(t)} for t in ("a", "b")}
    blind = cli("prune", *durable_store.cli_args, "--keep-last", "3", "--thread", "a")
    assert blind.returncode == OK, blind.stderr
    assert counts(durable_store)["a"] > 3
    assert "--graph GRAPH" in blind.stderr

    told = cli("prune", *durable_store.cli_args, "--keep-last", "3", "--graph",
               "tests.cli_graphs:chat")
    assert told.returncode == OK, told.stderr
    assert counts(durable_store) == {"a": 3, "b": 3}
    assert "--graph GRAPH" not in told.stderr
    with durable_store.open() as saver:
        app = chat.compile(checkpointer=saver)
        for thread in ("a", "b"):
            kept = {s.checkpoint_id: s.state for s in app.history(thread)}
            assert kept == {c: before[thread][c] for c in kept}
