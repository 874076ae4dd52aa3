"""The viewer pages its lists and polls only for changes: a thread's timeline and the thread
list come a page at a time (older pages on demand), a poll with `since` and the last ETag gets
304 and no body while nothing changed, and only the changed rows when something did."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests import test_viewer
from tests.test_viewer import Server, expect

browser, page = test_viewer.browser, test_viewer.page  # the fixtures: one Chromium, a page

STEPS, THREADS = 250, 150


def run(db: Path, thread: str, until: int) -> None:
    from checkpoints import SQLiteCheckpointer
    from tests.viewer_graphs import counter

    saver = SQLiteCheckpointer(db)
    try:
        counter.compile(checkpointer=saver).invoke({"until": until}, thread,
                                                   max_steps=until + 10)
    finally:
        saver.close()


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("big") / "runs.db"
    for i in range(THREADS):
        run(db, f"small-{i:03d}", 1)
    run(db, "long", STEPS)  # the most recently updated thread: STEPS + 1 checkpoints
    return db


@pytest.fixture(scope="module")
def big(big_db) -> Server:
    s = Server(big_db)
    yield s
    s.stop()


def test_a_long_timeline_comes_a_page_at_a_time_and_polls_get_304(big):
    first = big.get("/api/threads/long?limit=40")
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    body = first.json()
    assert len(body["checkpoints"]) == 40 and body["latest"] == body["checkpoints"][0][
        "checkpoint_id"]
    assert body["checkpoints"][0]["step"] == STEPS and body["thread"]["status"] == "done"
    seen = [c["checkpoint_id"] for c in body["checkpoints"]]
    before = body["before"]
    while before is not None:
        older = big.get(f"/api/threads/long?limit=40&before={before}").json()
        seen += [c["checkpoint_id"] for c in older["checkpoints"]]
        before = older["before"]
    assert len(seen) == STEPS + 1 == len(set(seen))
    assert seen == sorted(seen, key=int, reverse=True)
    steps = [c["step"] for c in big.get("/api/threads/long?limit=1000").json()["checkpoints"]]
    assert steps == list(range(STEPS, -1, -1))
    durations = [c["duration"] for c in body["checkpoints"]]
    assert all(d is not None and d >= 0 for d in durations)  # a parent across pages too

    poll = big.get(f"/api/threads/long?since={body['latest']}",
                   headers={"If-None-Match": first.headers["etag"]})
    assert poll.status_code == 304 and poll.content == b""
    changed = big.get(f"/api/threads/long?since={body['latest']}",
                      headers={"If-None-Match": '"something-older"'})
    assert changed.status_code == 200
    assert [c["checkpoint_id"] for c in changed.json()["checkpoints"]] == [body["latest"]]
    assert len(changed.content) < 2_000


def test_a_poll_gets_the_new_checkpoints_only_and_a_gap_when_too_many(big_db, tmp_path):
    db = tmp_path / "runs.db"
    shutil.copyfile(big_db, db)
    s = Server(db)
    try:
        first = s.get("/api/threads/small-000?limit=40")
        body = first.json()
        assert [c["step"] for c in body["checkpoints"]] == [1, 0] and body["before"] is None
        from checkpoints import SQLiteCheckpointer
        from tests.viewer_graphs import counter

        saver = SQLiteCheckpointer(db)
        try:  # three changes by hand: three new checkpoints
            app = counter.compile(checkpointer=saver)
            for n in (5, 6, 7):
                app.update_state("small-000", {"n": n})
        finally:
            saver.close()
        poll = s.get(f"/api/threads/small-000?limit=40&since={body['latest']}",
                     headers={"If-None-Match": first.headers["etag"]})
        assert poll.status_code == 200 and not poll.json()["gap"]
        rows = poll.json()["checkpoints"]
        assert len(rows) == 4 and rows[-1]["checkpoint_id"] == body["latest"]
        assert [r["kind"] for r in rows[:3]] == ["update"] * 3
        assert all(int(r["checkpoint_id"]) >= int(body["latest"]) for r in rows)
        small = s.get(f"/api/threads/small-000?limit=3&since={body['latest']}").json()
        assert small["gap"] is True  # more new ones than a page: the page starts over
        assert s.get(f"/api/threads/small-000?limit=4&since={body['latest']}").json()[
            "gap"] is False
    finally:
        s.stop()


def test_the_thread_list_comes_a_page_at_a_time_and_polls_send_only_changes(big_db, tmp_path):
    db = tmp_path / "runs.db"
    shutil.copyfile(big_db, db)
    with sqlite3.connect(db) as conn:  # the runs were 3 s apart, minutes ago; the newcomer now
        conn.execute("UPDATE checkpoints SET created_at = created_at - 600 + 3 * thread, "
                     "marked_at = marked_at - 600 + 3 * thread")
    s = Server(db)
    try:
        first = s.get("/api/threads?limit=60")
        body = first.json()
        assert len(body["threads"]) == 60 and body["total"] == THREADS + 1 and body["more"]
        assert body["threads"][0]["thread_id"] == "long"
        names = [t["thread_id"] for t in body["threads"]]
        offset = 60
        while True:
            page_ = s.get(f"/api/threads?limit=60&offset={offset}").json()
            names += [t["thread_id"] for t in page_["threads"]]
            offset += 60
            if not page_["more"]:
                break
        assert len(names) == len(set(names)) == THREADS + 1
        failed = s.get("/api/threads?status=failed&limit=5").json()
        assert failed["threads"] == [] and failed["total"] == 0

        unchanged = s.get(f"/api/threads?since={body['cursor']}",
                          headers={"If-None-Match": first.headers["etag"]})
        assert unchanged.status_code == 304 and unchanged.content == b""
        run(db, "newcomer", 1)
        poll = s.get(f"/api/threads?since={body['cursor']}",
                     headers={"If-None-Match": first.headers["etag"]})
        assert poll.status_code == 200
        changed = {t["thread_id"] for t in poll.json()["threads"]}
        # never the whole list: the newcomer, and what changed shortly before the cursor
        assert changed == {"newcomer", "long"}
        assert poll.json()["total"] == THREADS + 2

        for bad in ("limit=0", "limit=5000", "limit=x", "offset=-1", "since=nan",
                    "since=abc"):
            assert s.get(f"/api/threads?{bad}").status_code == 400, bad
        for bad in ("before=abc", "since=1e3", "before=%C2%B2", "limit=-3"):
            assert s.get(f"/api/threads/long?{bad}").status_code == 400, bad
    finally:
        s.stop()


def test_the_page_shows_a_page_and_loads_older_on_demand(big, page):
    page.goto(big.url + "/")
    expect(page.locator("#threads tbody tr.thread-row")).to_have_count(100)
    expect(page.locator("#thread-count")).to_have_text(f"100 of {THREADS + 1} threads")
    page.click("#older-threads")
    expect(page.locator("#threads tbody tr.thread-row")).to_have_count(THREADS + 1)
    assert page.locator("#older-threads").is_hidden()

    requests: list[str] = []
    page.on("response", lambda r: requests.append(f"{r.status} {r.url}"))
    page.goto(big.url + "/#/thread/long")
    expect(page.locator("#timeline tbody tr.checkpoint")).to_have_count(100)
    page.wait_for_timeout(2500)  # polls: 304 each, the timeline as it was
    polls = [r for r in requests if "/api/threads/long?" in r and "since=" in r]
    assert polls and all(r.startswith("304 ") for r in polls), requests
    page.click("#older-checkpoints")
    expect(page.locator("#timeline tbody tr.checkpoint")).to_have_count(200)
    page.click("#older-checkpoints")
    expect(page.locator("#timeline tbody tr.checkpoint")).to_have_count(STEPS + 1)
    assert page.locator("#older-checkpoints").is_hidden()
    last = page.locator("#timeline tbody tr.checkpoint").last
    assert last.locator("td").nth(1).inner_text() == "0"
    last.click()
    expect(page.locator("#diff")).to_contain_text("first")
