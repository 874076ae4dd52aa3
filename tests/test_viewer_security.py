"""The viewer against hostile data and hostile sites, in a real browser: stored text that
tries to become script, pages of other origins that frame it or post to it, Host headers of
other names (DNS rebinding), and the token a viewer listening beyond loopback asks of actions.
"""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import test_viewer
from tests.test_viewer import GRAPH, Server, expect, prepare_db

browser, page = test_viewer.browser, test_viewer.page  # the fixtures: one Chromium, a page

SCRIPT_LINK = '<x> URL="javascript:window.__xss=1;alert(1)" target=<_self>'
PAYLOADS = {
    "order-failed": SCRIPT_LINK,  # an HTML-like string: passed to DOT unquoted
    "order-backslash": 'quoted " and a trailing backslash \\',  # ended the DOT string early
    "order-script": '<script>window.__xss=2</script><img src=x onerror="window.__xss=3">'
                    ' \\N \\G &lt;b&gt;',
}
HEADERS = {"content-security-policy", "x-frame-options", "x-content-type-options",
           "referrer-policy"}


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory) -> Path:
    """The shop's threads, with stored errors a crafted database could hold."""
    from checkpoints import SQLiteCheckpointer
    from tests.viewer_graphs import shop

    db = tmp_path_factory.mktemp("hostile") / "runs.db"
    prepare_db(db)
    saver = SQLiteCheckpointer(db)
    try:
        app = shop.compile(checkpointer=saver)
        for thread in PAYLOADS:
            if thread != "order-failed":
                with pytest.raises(ConnectionError):
                    app.invoke({"fail": True}, thread)
    finally:
        saver.close()
    with sqlite3.connect(db) as conn:
        for thread, error in PAYLOADS.items():
            conn.execute("UPDATE checkpoints SET error = ? WHERE error IS NOT NULL AND thread = "
                         "(SELECT key FROM threads WHERE thread_id = ?)", (error, thread))
    return db


@pytest.fixture(scope="module")
def hostile(hostile_db) -> Iterator[Server]:
    s = Server(hostile_db, "--graph", GRAPH)
    yield s
    s.stop()


def watch(page) -> dict[str, list]:
    """Collects dialogs, CSP violations and console errors of `page`."""
    seen: dict[str, list] = {"dialogs": [], "csp": [], "console": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.add_init_script("document.addEventListener('securitypolicyviolation', "
                         "(e) => { (window.__csp = window.__csp || []).push("
                         "e.violatedDirective + ' ' + e.blockedURI); });")
    return seen


@pytest.mark.parametrize("thread", sorted(PAYLOADS))
def test_a_stored_error_is_shown_as_text_and_clicking_the_failed_node_runs_nothing(
        hostile, page, thread):
    seen = watch(page)
    page.goto(f"{hostile.url}/#/thread/{thread}")
    page.wait_for_selector("#diagram svg g#diagram-charge")
    assert "failed" in page.get_attribute("#diagram svg g#diagram-charge", "class").split()
    url = page.url
    page.click("#diagram svg g#diagram-charge")
    page.locator("#diagram svg g#diagram-charge text").first.click()
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert seen["dialogs"] == [] and page.url == url
    assert page.evaluate("window.__csp || []") == []
    assert page.inner_text("#thread-error") == PAYLOADS[thread]
    # the tooltip holds the error as text; no link anywhere in the diagram
    titles = page.eval_on_selector_all(
        "#diagram svg a", "els => els.map(a => a.getAttribute('xlink:title'))")
    assert PAYLOADS[thread] in titles
    assert page.eval_on_selector_all(
        "#diagram svg *", "els => els.filter(e => e.hasAttribute('href') || "
        "e.hasAttributeNS('http://www.w3.org/1999/xlink', 'href') || "
        "[...e.attributes].some(a => a.name.startsWith('on'))).length") == 0
    assert page.locator("#diagram script, #diagram foreignObject, #diagram img").count() == 0


def test_the_diagram_endpoint_returns_sanitised_svg(hostile):
    for thread in PAYLOADS:
        response = hostile.get(f"/api/threads/{thread}/diagram.svg")
        assert response.status_code == 200, (thread, response.text)
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert "javascript:" not in response.text.replace("javascript:window", "")  # title only
        assert "<script" not in response.text and " href=" not in response.text
        assert "xlink:href" not in response.text


def test_every_response_carries_the_security_headers(hostile):
    responses = [hostile.get(path) for path in (
        "/", "/static/app.js", "/static/style.css", "/api/info", "/api/threads",
        "/api/threads/order-failed", "/api/threads/order-failed/diagram.svg",
        "/api/threads/no-such", "/nothing-here")]
    responses.append(hostile.get("/api/info", headers={"Host": "evil.example"}))
    responses.append(hostile.post("/api/threads/order-failed/rollback",
                                  headers={"X-Statemachine-Action": "1"}))
    responses.append(hostile.get("/api/threads/order-failed?since=" + "9" * 5000))
    # another site's page may link to the viewer, not load, time or probe its answers
    probe = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
             "Sec-Fetch-Dest": "image"}
    responses.append(hostile.get("/api/threads/order-failed/diagram.svg", headers=probe))
    responses.append(hostile.get("/", headers={"Sec-Fetch-Site": "cross-site",
                                               "Sec-Fetch-Mode": "navigate"}))
    assert [r.status_code for r in responses][-7:] == [404, 404, 400, 403, 400, 403, 200]
    assert "another site" in responses[-2].json()["error"]
    for response in responses:
        assert set(response.headers) >= HEADERS, (response.url, response.headers)
        csp = response.headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'",
                          "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'"):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cross-origin-opener-policy"] == "same-origin"


def test_the_page_works_under_its_csp(hostile, page):
    """The whole page, list to thread to checkpoint, without a single CSP violation."""
    seen = watch(page)
    page.goto(hostile.url + "/")
    page.wait_for_selector('tr.thread-row[data-thread="order-done"]')
    page.click('tr.thread-row[data-thread="order-done"] a')
    page.wait_for_selector("#diagram svg g#diagram-ship")
    assert page.locator("#diagram svg g.node").count() >= 6
    assert "visited" in page.get_attribute("#diagram svg g#diagram-ship", "class").split()
    expect(page.locator("#state")).to_contain_text('"ship"')
    page.locator("#timeline tbody tr.checkpoint").nth(2).click()
    expect(page.locator("#diff li").first).to_be_visible()
    styles = page.evaluate("getComputedStyle(document.querySelector('header')).display")
    assert styles == "flex"  # the stylesheet applies
    assert page.evaluate("window.__csp || []") == []
    assert not [m for m in seen["console"] if "Content Security Policy" in m], seen["console"]


class OtherSite:
    """A page on another origin (another port, another host name): http.server in a thread."""

    def __init__(self, root: Path) -> None:
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_page_of_another_origin_cannot_frame_the_viewer(hostile, page, tmp_path):
    (tmp_path / "frame.html").write_text(
        f'<!doctype html><iframe id="v" src="{hostile.url}/" width="800" height="600">'
        "</iframe>")
    site = OtherSite(tmp_path)
    try:
        page.goto(site.url + "/frame.html")
        page.wait_for_timeout(1500)
        framed = page.frames[1]
        assert framed.url != hostile.url + "/" or framed.locator("#threads").count() == 0
        assert page.frame_locator("#v").locator("#threads tbody tr").count() == 0
    finally:
        site.stop()


def test_host_names_other_than_the_viewers_are_refused(hostile_db):
    ok = ["127.0.0.1", "localhost", "[::1]", "LOCALHOST", socket.gethostname(),
          socket.getfqdn(), "192.0.2.7", "viewer.example"]
    bad = ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "", "viewer.example.x"]
    for host in ("127.0.0.1", "0.0.0.0"):  # every interface kept no allow-list before
        s = Server(hostile_db, "--host", host, "--allow-host", "viewer.example")
        try:
            for name in ok:
                response = s.get("/api/info", headers={"Host": f"{name}:{s.port}"})
                assert response.status_code == 200, (host, name, response.text)
            for name in bad:
                response = s.get("/api/info", headers={"Host": f"{name}:{s.port}"})
                assert response.status_code == 400, (host, name)
                assert "--allow-host" in response.json()["error"]
        finally:
            s.stop()


def _printed_url(server: Server) -> str:
    """The URL `statemachine ui` printed at start."""
    lines = []
    while "statemachine ui:" not in (lines or [""])[-1]:
        lines.append(server.process.stderr.readline())
        assert lines[-1], f"no URL printed: {lines}"
    return lines[-1]


def _token(server: Server) -> str:
    line = _printed_url(server)
    match = re.search(r"\?token=([\w-]+)", line)
    assert match, line
    return match[1]


def test_beyond_loopback_actions_need_the_printed_token(hostile_db, tmp_path, page):
    db = tmp_path / "actions.db"
    shutil.copyfile(hostile_db, db)
    s = Server(db, "--graph", GRAPH, "--allow-actions", "--host", "0.0.0.0")
    try:
        token = _token(s)
        action = {"X-Statemachine-Action": "1"}
        for headers in ({}, {"X-Statemachine-Token": "wrong"},
                        {"X-Statemachine-Token": token[:-1]}):
            refused = s.post("/api/threads/order-held/rollback", headers={**action, **headers})
            assert refused.status_code == 403 and "token" in refused.json()["error"]
            assert token not in refused.text

        page.goto(f"{s.url}/#/thread/order-backslash")  # no token: refused with a reason
        page.wait_for_selector("#actions:not([hidden]) #rollback")
        page.click("#rollback")
        expect(page.locator("#action-result")).to_contain_text("token")
        page.goto(f"{s.url}/?token={token}#/thread/order-failed")
        page.wait_for_selector("#actions:not([hidden]) #rollback")
        assert "token" not in page.url  # taken out of the address bar (and history)
        page.click("#rollback")
        expect(page.locator("#thread-status")).to_have_text("compensated")
    finally:
        s.stop()


def test_loopback_with_actions_prints_no_token_and_refuses_other_origins(hostile_db, tmp_path):
    db = tmp_path / "actions.db"
    shutil.copyfile(hostile_db, db)
    s = Server(db, "--graph", GRAPH, "--allow-actions")
    try:
        assert "token" not in _printed_url(s)
        action = {"X-Statemachine-Action": "1"}
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": f"http://localhost:{s.port + 1}"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            refused = s.post("/api/threads/order-failed/rollback", headers={**action, **headers})
            assert refused.status_code == 403, headers
            assert "another" in refused.json()["error"]
        assert s.get("/api/threads/order-failed").json()["thread"]["status"] == "failed"
        done = s.post("/api/threads/order-failed/rollback",
                      headers={**action, "Origin": s.url, "Sec-Fetch-Site": "same-origin"})
        assert done.status_code == 200, done.text
    finally:
        s.stop()



def test_a_form_on_another_site_cannot_post_an_action(hostile_db, tmp_path, page):
    db = tmp_path / "actions.db"
    shutil.copyfile(hostile_db, db)
    s = Server(db, "--graph", GRAPH, "--allow-actions")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "form.html").write_text(
        f'<!doctype html><form id="f" method="post" '
        f'action="{s.url}/api/threads/order-failed/rollback">'
        '<input name="X-Statemachine-Action" value="1"></form>')
    site = OtherSite(tmp_path / "site")
    try:
        page.goto(site.url + "/form.html")
        with page.expect_navigation():
            page.eval_on_selector("#f", "f => f.submit()")
        assert "another site" in page.inner_text("body")  # Chromium said cross-site: 403
        assert s.get("/api/threads/order-failed").json()["thread"]["status"] == "failed"
    finally:
        site.stop()
        s.stop()
