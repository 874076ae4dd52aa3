"""The web viewer (`statemachine ui`), run as a user runs it: a server subprocess on a free
loopback port, driven by headless Chromium through Playwright, and its JSON API through httpx.

The database holds three threads of tests/viewer_graphs.py:shop: one done, one failed (charge
raises), one interrupted (ship waits for an event). Browsing must not change the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
GRAPH = "tests.viewer_graphs:shop"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m statemachine ui ...` in a subprocess, on a free loopback port."""

    def __init__(self, db: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "statemachine", "ui", "--db", str(db), "--port",
             str(self.port), *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stderr.read()}")
            try:
                httpx.get(self.url + "/api/info", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def prepare_db(db: Path) -> None:
    from checkpoints import SQLiteCheckpointer
    from tests.viewer_graphs import shop

    saver = SQLiteCheckpointer(db)
    try:
        app = shop.compile(checkpointer=saver)
        app.invoke({}, "order-done")
        with pytest.raises(ConnectionError):
            app.invoke({"fail": True}, "order-failed")
        app.invoke({"hold": True}, "order-held")
        assert {t.thread_id: t.status for t in app.threads()} == {
            "order-done": "done", "order-failed": "failed", "order-held": "interrupted"}
    finally:
        saver.close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("viewer") / "runs.db"
    prepare_db(db)
    return db, sha256(db)


@pytest.fixture(scope="module")
def server(prepared) -> Iterator[Server]:
    s = Server(prepared[0], "--graph", GRAPH)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(10_000)
    yield p
    context.close()


def listed(page) -> dict[str, str]:
    rows = page.locator("#threads tbody tr.thread-row")
    return {rows.nth(i).get_attribute("data-thread"): rows.nth(i).get_attribute("data-status")
            for i in range(rows.count())}


def test_thread_list_shows_threads_and_filters_by_status(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector("#threads tbody tr.thread-row")
    assert listed(page) == {"order-done": "done", "order-failed": "failed",
                            "order-held": "interrupted"}
    failed_row = page.locator('tr.thread-row[data-thread="order-failed"]')
    assert "payment gateway unreachable" in failed_row.locator(".error-cell").inner_text()
    assert failed_row.locator("td").nth(2).inner_text() == "1"  # steps
    assert "read-only" in page.locator("#mode").inner_text()

    page.select_option("#status-filter", "failed")
    expect(page.locator("#threads tbody tr.thread-row")).to_have_count(1)
    assert listed(page) == {"order-failed": "failed"}
    page.select_option("#status-filter", "interrupted")
    page.wait_for_selector('tr.thread-row[data-thread="order-held"]')
    assert listed(page) == {"order-held": "interrupted"}
    page.select_option("#status-filter", "compensated")
    page.wait_for_selector("#no-threads:not([hidden])")
    assert listed(page) == {}
    page.select_option("#status-filter", "")
    expect(page.locator("#threads tbody tr.thread-row")).to_have_count(3)


def test_failed_thread_shows_failed_node_timeline_and_diff(server, page, tmp_path):
    page.goto(server.url + "/")
    page.click('tr.thread-row[data-thread="order-failed"] a')
    page.wait_for_selector("#diagram svg g#diagram-charge")
    assert "failed" in page.get_attribute("#diagram svg g#diagram-charge", "class").split()
    assert "visited" in page.get_attribute("#diagram svg g#diagram-prepare", "class").split()
    assert "failed" not in page.get_attribute("#diagram svg g#diagram-ship", "class").split()
    assert page.inner_text("#thread-status") == "failed"
    assert page.locator("#actions").is_hidden()  # read-only: no Resume or Rollback buttons
    assert page.locator("#resume").is_hidden() and page.locator("#rollback").is_hidden()
    assert "payment gateway unreachable" in page.inner_text("#thread-error")

    rows = page.locator("#timeline tbody tr.checkpoint")
    assert rows.count() == 2  # the input checkpoint, then the failed step
    assert rows.nth(0).get_attribute("data-status") == "failed"
    assert "prepare" in rows.nth(0).locator(".nodes").inner_text()
    # the failed row says which node failed, not only which ran before it
    assert rows.nth(0).locator(".status").inner_text() == "failed in charge"
    assert "selected" in rows.nth(0).get_attribute("class")

    page.wait_for_selector("#diff li.diff-added")
    assert page.locator("#diff li.diff-added").first.get_attribute("data-path") == "log[0]"
    state = json.loads(page.inner_text("#state"))
    assert state["fail"] is True and state["log"] == ["prepare"]
    assert "reserve" in page.inner_text("#writes") or "prepare" in page.inner_text("#writes")

    rows.nth(1).click()  # the input checkpoint: its own state, nothing before it
    expect(page.locator("#diff")).to_contain_text("first")
    assert json.loads(page.inner_text("#state"))["log"] == []

    shot = tmp_path / "failed-thread.png"
    rows.nth(0).click()
    page.wait_for_selector("#diff li.diff-added")
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_api_is_json_rejects_traversal_bad_ids_and_writes(server, prepared):
    info = server.get("/api/info")
    assert info.headers["content-type"].startswith("application/json")
    assert info.json()["read_only"] is True and info.json()["allow_actions"] is False
    assert [t["thread_id"] for t in server.get("/api/threads?status=done").json()[
        "threads"]] == ["order-done"]
    detail = server.get("/api/threads/order-done").json()
    assert [c["step"] for c in detail["checkpoints"]] == [3, 2, 1, 0]
    assert detail["checkpoints"][0]["status"] == "done"
    assert all(c["duration"] is None or c["duration"] >= 0 for c in detail["checkpoints"])

    for path in ("/api/threads/..%2F..%2Fetc%2Fpasswd", "/static/../cli.py",
                 "/static/..%2F..%2Fcli.py", "/static/%2e%2e/cli.py",
                 "/api/threads/%2e%2e", "/api/threads/.hidden", "/api/threads/a%00b",
                 "/api/threads/" + "x" * 600, "/api/threads/no-such-thread",
                 "/api/threads/order-done/checkpoints/abc",
                 "/api/threads/order-done/checkpoints/999999",
                 "/api/threads?status=nonsense"):
        response = httpx.get(server.url + path, timeout=10) if "%" not in path else \
            httpx.Client().send(httpx.Request("GET", server.url + path))
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert "root:" not in response.text and "import" not in response.text
        if path.startswith("/api/"):
            assert "error" in response.json(), path

    for action in ("resume", "rollback"):
        refused = server.post(f"/api/threads/order-failed/{action}",
                              headers={"X-Statemachine-Action": "1"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    # another site's page reaching the loopback server through DNS rebinding
    assert server.get("/api/threads", headers={"Host": "evil.example"}).status_code == 400
    assert sha256(prepared[0]) == prepared[1]


def test_without_graph_reads_only_the_store_and_says_how_to_get_a_diagram(prepared, page):
    s = Server(prepared[0])
    try:
        assert s.get("/api/info").json()["graph"] is None
        assert s.get("/api/threads/order-failed/diagram.svg").status_code == 409
        page.goto(s.url + "/#/thread/order-held")
        page.wait_for_selector("#diagram-note")
        assert "pass --graph" in page.inner_text("#diagram-note")
        assert page.inner_text("#thread-status") == "interrupted"
        assert "waits for approval" in page.locator("#timeline tbody tr").first.inner_text()
        expect(page.locator("#state")).to_have_text(re.compile(r"\S"))
        # a paused thread stores no snapshot of its own (a chat pausing every turn would copy
        # its state every turn): without the reducers, the viewer shows the nearest stored
        # state and the writes since, as stored
        shown = json.loads(page.inner_text("#state"))
        assert shown["exact"] is False
        log = shown["snapshot"]["state"]["log"] + [
            item for step in shown["writes_since"] for _, _, update in step["writes"]
            for item in update.get("log", [])]
        assert log == ["prepare", "reserve", "charge"]
        # its parent stores only writes: without the reducers there is no exact diff, so the
        # writes of the step are shown instead
        expect(page.locator("#diff")).to_contain_text("exact")
        assert 'charge: {"log":["charge"],"total":42}' in page.inner_text("#writes")
        assert "--graph" in page.inner_text("#state-note")
        page.locator("#timeline tbody tr.checkpoint").nth(1).click()  # that parent
        page.wait_for_selector("#state-note:not([hidden])")
        assert "--graph" in page.inner_text("#state-note")
        unmerged = json.loads(page.inner_text("#state"))
        assert unmerged["exact"] is False and unmerged["snapshot"]["state"]["log"] == []
    finally:
        s.stop()
    assert sha256(prepared[0]) == prepared[1]


def test_running_thread_updates_without_reload(tmp_path, page):
    db, gate = tmp_path / "live.db", tmp_path / "gate"
    run = subprocess.Popen(
        [sys.executable, "-m", "statemachine", "run", GRAPH, "--db", str(db), "--thread",
         "live", "--input", json.dumps({"gate": str(gate)})], cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = None
    try:
        deadline = time.monotonic() + 20
        while not _has_thread(db, "live"):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        s = Server(db, "--graph", GRAPH)
        page.goto(s.url + "/#/thread/live")
        page.wait_for_selector("#timeline tbody tr.checkpoint")
        assert page.inner_text("#thread-status").startswith("running")
        assert page.locator("#timeline tbody tr.checkpoint").count() == 1
        page.evaluate("window.__notReloaded = true")
        gate.touch()
        expect(page.locator("#thread-status")).to_have_text("done", timeout=15_000)
        assert page.evaluate("window.__notReloaded") is True
        assert page.locator("#timeline tbody tr.checkpoint").count() == 4
        expect(page.locator("#state")).to_contain_text('"ship"')
        expect(page.locator("#diagram svg g#diagram-ship")).to_have_class(
            re.compile(r"\bvisited\b"))
        assert run.wait(timeout=10) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if s is not None:
            s.stop()


def _has_thread(db: Path, thread: str) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT 1 FROM threads WHERE thread_id = ?",
                                (thread,)).fetchone() is not None
    except sqlite3.Error:
        return False


def test_actions_need_allow_actions_and_then_resume_and_roll_back(prepared, tmp_path, page):
    db = tmp_path / "actions.db"
    shutil.copyfile(prepared[0], db)
    s = Server(db, "--graph", GRAPH, "--allow-actions")
    try:
        assert s.post("/api/threads/order-failed/rollback").status_code == 403  # no header
        page.goto(s.url + "/#/thread/order-failed")
        page.wait_for_selector("#actions:not([hidden]) #rollback")
        assert "actions allowed" in page.inner_text("#mode")
        page.click("#rollback")
        expect(page.locator("#thread-status")).to_have_text("compensated")
        assert "rollback: compensated" in page.inner_text("#action-result")

        page.goto(s.url + "/#/thread/order-held")
        page.wait_for_selector("#actions:not([hidden]) #resume")
        page.click("#resume")  # it waits for an event the button cannot give: refused, 409
        expect(page.locator("#action-result")).to_contain_text("failed")
        assert "approval" in page.inner_text("#action-result")
    finally:
        s.stop()
    threads = {t["thread_id"]: t["status"] for t in _threads_json(db)}
    assert threads == {"order-done": "done", "order-failed": "compensated",
                       "order-held": "interrupted"}


def test_actions_fork_and_edit_a_thread_from_the_page(prepared, tmp_path, page):
    db = tmp_path / "actions.db"
    shutil.copyfile(prepared[0], db)
    s = Server(db, "--graph", GRAPH, "--allow-actions")
    try:
        headers = {"X-Statemachine-Action": "1"}
        for body, status in (([1], 400), ({"values": [1]}, 400), ({"values": {}, "checkpoint":
                             "../x"}, 400), ({}, 400)):
            name = "fork" if "values" not in body and body != [1] else "update"
            refused = s.post(f"/api/threads/order-failed/{name}", json=body, headers=headers)
            assert refused.status_code == status, (body, refused.text)
        page.goto(s.url + "/#/thread/order-failed")
        page.wait_for_selector("#actions:not([hidden]) #fork")
        rows = page.locator("#timeline tbody tr.checkpoint")
        expect(rows).to_have_count(2)
        rows.last.click()  # the input checkpoint: fork the whole run again from there
        page.click("#fork")
        expect(page.locator("#action-result")).to_contain_text("fork: interrupted")
        expect(page.locator("#thread-status")).to_have_text("interrupted")

        page.click("#edit summary")
        page.fill("#edit-values", "{oops")
        page.click("#apply-edit")
        expect(page.locator("#action-result")).to_contain_text("not JSON")
        page.fill("#edit-values", '{"fail": false}')
        page.click("#apply-edit")
        expect(page.locator("#action-result")).to_contain_text("update: interrupted")
        page.click("#resume")
        expect(page.locator("#thread-status")).to_have_text("done")

        page.goto(s.url + "/#/thread/order-done")
        page.wait_for_selector("#actions:not([hidden]) #delete")
        page.once("dialog", lambda dialog: dialog.dismiss())  # asked first: nothing happens
        page.click("#delete")
        assert s.get("/api/threads/order-done").status_code == 200
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete")
        page.wait_for_selector("#list-view:not([hidden])")
        expect(page.locator("#threads")).to_contain_text("order-held")
        expect(page.locator("#threads")).not_to_contain_text("order-done")
        assert s.get("/api/threads/order-done").status_code == 404
    finally:
        s.stop()
    threads = {t["thread_id"]: t["status"] for t in _threads_json(db)}
    assert threads["order-failed"] == "done" and "order-done" not in threads


def _threads_json(db: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "statemachine", "threads", "--db", str(db),
                             "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ui_command_refuses_bad_usage(tmp_path):
    def ui(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "statemachine", "ui", *args], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=60)

    missing = ui("--db", str(tmp_path / "missing.db"))
    assert missing.returncode == 4 and "no database file" in missing.stderr
    assert not (tmp_path / "missing.db").exists()
    db = tmp_path / "runs.db"
    prepare_db(db)
    no_graph = ui("--db", str(db), "--allow-actions")
    assert no_graph.returncode == 2 and "--allow-actions needs --graph" in no_graph.stderr


# -- PostgreSQL ----------------------------------------------------------------------------------

def test_the_viewer_reads_a_postgres_store_read_only_and_acts_with_allow_actions(
        postgres_dsn, page):
    """The same viewer over PostgreSQL: read-only connections by default (nothing changes),
    resume and rollback with --allow-actions."""
    from conftest import Store

    from tests.viewer_graphs import shop

    store = Store("postgres", Path(), postgres_dsn)
    schema = store.schema
    saver = store.open()
    try:
        app = shop.compile(checkpointer=saver)
        app.invoke({}, "order-done")
        with pytest.raises(ConnectionError):
            app.invoke({"fail": True}, "order-failed")
    finally:
        store.close()

    before = store.dump()
    s = Server(postgres_dsn, "--schema", schema, "--graph", GRAPH)  # type: ignore[arg-type]
    try:
        info = s.get("/api/info").json()
        assert info["read_only"] is True and "127.0.0.1" in info["db"]
        assert {t["thread_id"]: t["status"] for t in s.get("/api/threads").json()[
            "threads"]} == {
            "order-done": "done", "order-failed": "failed"}
        detail = s.get("/api/threads/order-done").json()
        assert [c["step"] for c in detail["checkpoints"]] == [3, 2, 1, 0]
        assert s.post("/api/threads/order-failed/rollback",
                      headers={"X-Statemachine-Action": "1"}).status_code == 403
        page.goto(s.url + "/")
        page.wait_for_selector("#threads tbody tr.thread-row")
        assert listed(page) == {"order-done": "done", "order-failed": "failed"}
    finally:
        s.stop()
    assert store.dump() == before

    s = Server(postgres_dsn, "--schema", schema, "--graph", GRAPH,  # type: ignore[arg-type]
               "--allow-actions")
    try:
        done = s.post("/api/threads/order-failed/rollback",
                      headers={"X-Statemachine-Action": "1"})
        assert done.status_code == 200, done.text
        assert s.get("/api/threads/order-failed").json()["thread"]["status"] == "compensated"
    finally:
        s.stop()


def test_a_malformed_thread_link_shows_the_list(server, page):
    """`#/thread/%` names no thread: the page stayed blank (decodeURIComponent threw); now
    the bad address is dropped and the list shows."""
    page.goto(server.url + "/#/thread/%")
    page.wait_for_selector("#threads tbody tr.thread-row")
    assert set(listed(page)) == {"order-done", "order-failed", "order-held"}
    assert page.evaluate("location.hash") == ""


def test_each_thread_is_shown_with_the_graph_that_ran_it_or_says_which_that_was(
        prepared, tmp_path, page):
    """Given one graph, a thread another graph ran gets no diagram, no rebuilt state and no
    actions from it: the page names the graph that ran it; given both, each thread is drawn
    with its own."""
    from checkpoints import SQLiteCheckpointer
    from tests.viewer_graphs import counter

    db = tmp_path / "two.db"
    shutil.copyfile(prepared[0], db)
    with SQLiteCheckpointer(db) as saver:
        counter.compile(checkpointer=saver).invoke({"until": 3}, "count-1")
    one = Server(db, "--graph", GRAPH, "--allow-actions")
    try:
        page.goto(one.url + "/#/thread/count-1")
        page.wait_for_selector("#diagram-note")
        note = page.inner_text("#diagram-note")
        assert "thread 'count-1' was run by graph 'CounterStateGraph' (structure " in note
        assert GRAPH in note and "--graph" in note
        refused = one.post("/api/threads/count-1/resume",
                           headers={"X-Statemachine-Action": "1"})
        assert refused.status_code == 409
        assert "run by graph 'CounterStateGraph'" in refused.json()["error"]
        assert "schema" not in refused.json()["error"]
        assert one.get("/api/threads/count-1/diagram.svg").status_code == 409
        assert one.get("/api/threads/order-done/diagram.svg").status_code == 200
    finally:
        one.stop()
    both = Server(db, "--graph", GRAPH, "--graph", "tests.viewer_graphs:counter")
    try:
        for thread, node in (("count-1", "tick"), ("order-done", "ship")):
            answer = both.get(f"/api/threads/{thread}")
            assert answer.json()["graph_note"] is None
            svg = both.get(f"/api/threads/{thread}/diagram.svg")
            assert svg.status_code == 200 and node in svg.text
        page.goto(both.url + "/#/thread/count-1")
        page.wait_for_selector("#diagram svg")
        assert "tick" in page.inner_text("#diagram")
        assert json.loads(page.inner_text("#state"))["n"] == 3  # rebuilt exactly
    finally:
        both.stop()


def test_the_memory_page_browses_the_store_read_only_and_shows_values_inert(tmp_path, page):
    from checkpoints import SQLiteStore

    db = tmp_path / "runs.db"
    prepare_db(db)
    with SQLiteStore(db) as store:
        store.put(("users", "u1", "memories"), "diet", {"text": "vegetarian"})
        store.put(("users", "u2"), "evil", {"text": "<img src=x onerror=alert(1)>"})
    before = sha256(db)
    s = Server(db)
    try:
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(s.url + "/#/memory")
        page.locator("#memory-namespaces a.namespace", has_text="users").click()
        page.locator("#memory-namespaces a.namespace", has_text="users / u2").wait_for()
        keys = page.locator("#memory-items tbody tr")
        assert sorted(keys.nth(i).get_attribute("data-key") for i in range(keys.count())) == [
            "diet", "evil"]
        value = page.locator("#memory-items tr[data-key=evil] pre.value").inner_text()
        assert "<img src=x onerror=alert(1)>" in value  # shown as text, never markup
        assert page.locator("#memory-items img").count() == 0 and dialogs == []
        page.locator("#memory-namespaces a.namespace", has_text="users / u1").click()
        page.locator("#memory-path", has_text="u1").wait_for()
        page.locator("#memory-items tr[data-key=diet]").wait_for()
        assert page.locator("#memory-items tbody tr").count() == 1
        bad = s.get("/api/memory", params={"namespace": "users"})
        assert bad.status_code == 400 and "JSON list" in bad.json()["error"]
    finally:
        s.stop()
    assert sha256(db) == before  # the page changed nothing
