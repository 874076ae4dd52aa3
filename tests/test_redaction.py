"""Database addresses are shown without their passwords: the helper on arbitrary passwords, and
every command line message that names a PostgreSQL --db, run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoints.redaction import dsn_passwords, redact_dsn
from tests.test_cli import ENV, NOT_FOUND, ROOT, RUN_FAILED, cli, resume_command

passwords = st.text(st.characters(codec="ascii", min_codepoint=32, max_codepoint=126),
                    min_size=1, max_size=40) | st.text(min_size=1, max_size=20)
"""Any printable characters (and any text at all): '@', ':', '/', '?', '#', quotes, spaces."""
users = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
hosts = st.sampled_from(["db.example.com", "127.0.0.1", "[::1]", "pg-1.internal"])
ports = st.integers(1, 65535).map(str)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@given(user=users, password=passwords, host=hosts, port=ports, db=names)
def test_a_url_loses_its_password_and_keeps_everything_else(user, password, host, port, db):
    tail = f"{host}:{port}/{db}?sslmode=require"
    for written in (password, quote(password, safe="")):  # unencoded, and percent-encoded
        redacted = redact_dsn(f"postgresql://{user}:{written}@{tail}")
        assert redacted == f"postgresql://{user}:***@{tail}"
        assume(written not in redacted)
        assert written not in redacted


@given(password=passwords, host=hosts, port=ports, db=names)
def test_a_query_parameter_password_is_redacted(password, host, port, db):
    encoded = quote(password, safe="")
    url = (f"postgresql://{host}:{port}/{db}?sslpassword={encoded}&password={encoded}"
           "&sslmode=require")
    assert redact_dsn(url) == (f"postgresql://{host}:{port}/{db}?sslpassword=***&password=***"
                               "&sslmode=require")


@given(user=users, password=passwords, host=hosts, port=ports, db=names)
def test_a_key_value_dsn_loses_its_password_quoted_or_not(user, password, host, port, db):
    assume("\x00" not in password)
    dsn = make_conninfo(host=host, port=port, dbname=db, user=user, password=password)
    assert conninfo_to_dict(dsn)["password"] == password  # libpq reads it so
    redacted = redact_dsn(dsn)
    assert redacted == make_conninfo(host=host, port=port, dbname=db, user=user) + \
        " password=***"
    spaced = redact_dsn(dsn.replace("password=", "password = "))
    assert spaced.endswith("password = ***")


def test_file_paths_and_urls_without_a_password_are_unchanged():
    for db in ("runs.db", "/tmp/a@b:c/runs.db", "postgresql://app@db/prod",
               "postgresql://db:5432/prod?sslmode=require", "host=db dbname=prod"):
        assert redact_dsn(db) == db


# -- the command line ----------------------------------------------------------------------------

PASSWORD = "Pw-7f3c9a@host:and/more"
"""Unencoded '@', ':' and '/': the old redaction showed what follows the first '@'."""


def fragments() -> list[str]:
    return [PASSWORD, quote(PASSWORD, safe=""), "7f3c9a", "and/more", "host:and"]


def assert_hidden(*texts: str) -> None:
    for text in texts:
        for fragment in fragments():
            assert fragment not in text, (fragment, text)


@pytest.fixture
def urls(postgres_dsn):
    """(a URL that connects, its password percent-encoded; one whose raw '@' breaks it)."""
    address = postgres_dsn.split("@", 1)[1]
    good = f"postgresql://postgres:{quote(PASSWORD, safe='')}@{address}"
    bad = f"postgresql://postgres:{PASSWORD}@{address}"
    return good, bad


def test_no_command_shows_a_postgres_password(urls, tmp_path):
    good, bad = urls
    schema = f"redact{os.getpid()}"
    db = ["--db", good, "--schema", schema]
    ran = cli("run", "tests.cli_graphs:flaky", *db, "--thread", "t1", "--input",
              f'{{"flag": "{tmp_path / "absent"}"}}')
    assert ran.returncode == RUN_FAILED, ran.stderr
    resume = resume_command(ran.stderr)
    assert "postgresql://postgres:***@" in " ".join(resume)
    assert "PGPASSWORD" in ran.stderr
    results = [ran] + [cli(*args) for args in (
        ("threads", *db), ("history", *db, "--thread", "t1"), ("history", *db, "--thread", "t9"),
        ("jobs", *db), ("threads", "--db", bad), ("jobs", *db, "--json"),
        ("show", *db, "--thread", "nope"), ("worker", "tests.cli_graphs:flaky", *db, "--drain"))]
    for result in results:
        assert_hidden(result.stdout, result.stderr)
    threads, history, missing = results[1:4]
    assert f"threads in postgresql://postgres:***@{good.split('@', 1)[1]}" in threads.stdout
    assert "thread t1 in postgresql://postgres:***@" in history.stdout
    assert missing.returncode == NOT_FOUND and "no thread 't9' in 'postgresql://postgres:***@" \
        in missing.stderr
    assert "no jobs in postgresql://postgres:***@" in results[4].stderr
    assert results[5].returncode != 0 and "cannot connect" in results[5].stderr
    banner = ui_banner(*db)
    assert "statemachine ui:" in banner and "postgresql://postgres:***@" in banner, banner
    assert_hidden(banner)


def ui_banner(*db: str) -> str:
    """What `statemachine ui` prints on stderr as it starts (then it is stopped)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "statemachine", "ui", *db, "--port", "0"], cwd=ROOT,
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        banner = ""
        while "statemachine ui:" not in banner and time.monotonic() < deadline:
            line = process.stderr.readline() if process.stderr else ""
            if not line and process.poll() is not None:
                break
            banner += line
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    return banner


@pytest.mark.parametrize(("dsn", "shown", "password"), [
    ("postgresql://bob:s3cret@db/app?application_name=me@laptop",
     "postgresql://bob:***@db/app?application_name=me@laptop", "s3cret"),
    ("postgresql://bob:pa?ss@word@db/app", "postgresql://bob:***@db/app", "pa?ss@word"),
])
def test_an_at_sign_in_the_query_or_a_question_mark_in_the_password(dsn, shown, password):
    """Credentials end at the last '@' before the query string, so a query value with an '@'
    keeps the host and database (both were lost) and the password is still found."""
    assert redact_dsn(dsn) == shown
    assert password in dsn_passwords(dsn)
