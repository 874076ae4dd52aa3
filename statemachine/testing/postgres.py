"""A throwaway PostgreSQL server for tests: a fresh cluster in a temporary directory.

    with postgres_server() as dsn:
        app = graph.compile(checkpointer=PostgresCheckpointer(dsn))

It runs the PostgreSQL binaries installed on the machine (Debian/Ubuntu: `apt-get install
postgresql`; the server need not be running or configured), listens on 127.0.0.1 at a free
port, trusts local connections, and is stopped and deleted on exit. As root it runs the server
as the `postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresNotFoundError", "find_postgres_bin", "postgres_server"]


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine."""


def find_postgres_bin() -> Path:
    """The directory holding initdb and pg_ctl: $PG_BIN, then PATH, then Debian's layout."""
    candidates = [os.environ.get("PG_BIN", "")]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit()
                         else 0, reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() \
                and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresNotFoundError(
        "no PostgreSQL server binaries found (initdb, pg_ctl); install them with "
        "`apt-get install postgresql` (Debian/Ubuntu) or point PG_BIN at their directory.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(*, port: int | None = None, max_connections: int = 200,
                    fsync: bool = True) -> Iterator[str]:
    """Start a new PostgreSQL cluster on loopback; yield its DSN; stop and delete it on exit.

    `fsync=False` trades crash safety of the *server* for speed (a test server's data is thrown
    away anyway); the default keeps it on.
    """
    bin_dir = find_postgres_bin()
    run_as: list[str] = []
    user = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        user = "postgres" if _has_user("postgres") else "nobody"
        run_as = ["runuser", "-u", user, "--"]
    root = Path(tempfile.mkdtemp(prefix="statemachine-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        root.chmod(0o755)
    port = port or _free_port()
    log = root / "server.log"
    try:
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--no-instructions"],
                       check=True, capture_output=True, text=True)
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={sockets} -c max_connections={max_connections} "
                   f"-c fsync={'on' if fsync else 'off'} -c shared_buffers=64MB")
        # the server's output goes to the log: a captured pipe would stay open while it runs
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log),
                        "-o", options, "-w", "-t", "60", "start"],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "") + (log.read_text() if log.exists() else "")
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresNotFoundError(f"could not start a PostgreSQL server: {detail.strip()}") \
            from exc
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_ready(port)
        yield dsn
    finally:
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "-t", "30", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def restart_server(dsn: str) -> None:
    """Restart the server behind `dsn` (one started by `postgres_server`): every connection
    drops. For tests of reconnecting."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None  # SHOW always answers
        data = row[0]
    bin_dir = find_postgres_bin()
    run_as = ["runuser", "-u", Path(data).owner(), "--"] if os.geteuid() == 0 else []
    log = str(Path(data).parent / "server.log")
    # the server's output goes to the log: captured pipes would stay open while it runs
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", data, "-l", log, "-m", "fast",
                    "-w", "-t", "60", "restart"], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise PostgresNotFoundError(f"PostgreSQL did not accept connections on port {port}")
        time.sleep(0.05)
