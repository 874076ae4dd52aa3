"""Shared test setup: hypothesis profiles bounded for CI (see README, "Running the tests")."""

import contextlib
import itertools
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, StateGraph

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("soak", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


STORES = ["memory", "sqlite", "postgres"]
"""Every backend the behavioural suites run against."""

_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres_dsn():
    """A real PostgreSQL server for the session: $STATEMACHINE_TEST_POSTGRES if set, else a
    throwaway cluster started on loopback from the machine's PostgreSQL binaries (`.ci/run`
    installs the Debian package). Without binaries the PostgreSQL tests skip — except under
    CI, where they must run."""
    if os.environ.get("STATEMACHINE_TEST_POSTGRES"):
        yield os.environ["STATEMACHINE_TEST_POSTGRES"]
        return
    from statemachine.testing.postgres import PostgresNotFoundError, postgres_server

    try:
        server = postgres_server(fsync=False)
        dsn = server.__enter__()
    except PostgresNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield dsn
    finally:
        server.__exit__(None, None, None)


def postgres_schema() -> str:
    """A schema of its own for each test, so tests sharing the server never see each other."""
    return f"t{os.getpid()}_{next(_schemas)}"


def make_checkpointer(kind: str, tmp_path: Path, request, **options):
    """A new checkpointer of `kind` on a new, empty store."""
    if kind == "memory":
        return MemoryCheckpointer(**options)
    if kind == "sqlite":
        return SQLiteCheckpointer(tmp_path / "runs.db", **options)
    from checkpoints import PostgresCheckpointer

    dsn = request.getfixturevalue("postgres_dsn")
    return PostgresCheckpointer(dsn, schema=postgres_schema(), **options)


class Store:
    """Checkpointers over one store: `open()` after a failure plays a restarted process (a new
    checkpointer on the same file or database schema; the same object for memory, which has
    nothing that outlives it)."""

    def __init__(self, kind: str, path: Path, dsn: str | None = None) -> None:
        self.kind, self.path, self.dsn = kind, path, dsn
        self.schema = postgres_schema() if kind == "postgres" else None
        self._memory = MemoryCheckpointer() if kind == "memory" else None
        self._opened: list = []

    @property
    def cli_args(self) -> list[str]:
        """The CLI's options naming this store."""
        if self.kind == "postgres":
            return ["--db", str(self.dsn), "--schema", str(self.schema)]
        return ["--db", str(self.path)]

    @property
    def opener(self) -> str:
        """Python source of an expression that opens this store, for scripts run as real
        processes (they `import checkpoints`)."""
        if self.kind == "postgres":
            return f"checkpoints.PostgresCheckpointer({self.dsn!r}, schema={self.schema!r})"
        return f"checkpoints.SQLiteCheckpointer({str(self.path)!r})"

    def _postgres(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(f'SET search_path TO "{self.schema}"')
        return conn

    def query(self, sql: str, *args: object) -> list[tuple]:
        """Rows of a query on the store's own tables (`?` placeholders, for either backend),
        read from outside statemachine."""
        if self.kind == "postgres":
            with self._postgres() as conn:
                return [tuple(row) for row in
                        conn.execute(sql.replace("?", "%s"), args).fetchall()]
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return conn.execute(sql, args).fetchall()

    def change(self, sql: str, *args: object) -> None:
        """Run one statement on the store from outside statemachine, as another program would."""
        if self.kind == "postgres":
            with self._postgres() as conn:
                conn.execute(sql.replace("?", "%s"), args)
            return
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn, conn:
            conn.execute(sql, args)

    def dump(self) -> dict[str, list[tuple]]:
        """Every row of every table in a PostgreSQL store's schema."""
        with self._postgres() as conn:
            tables = [name for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "ORDER BY table_name", (self.schema,))]
            return {name: sorted((tuple(row) for row in conn.execute(f'SELECT * FROM "{name}"')),
                                 key=repr) for name in tables}

    def open(self, **options):
        if self._memory is not None:
            return self._memory
        if self.kind == "postgres":
            from checkpoints import PostgresCheckpointer

            saver = PostgresCheckpointer(self.dsn, schema=self.schema, **options)
        else:
            saver = SQLiteCheckpointer(self.path, **options)
        self._opened.append(saver)
        return saver

    def close(self) -> None:
        for saver in self._opened:
            saver.close()


def make_store(kind: str, tmp_path: Path, request) -> Store:
    dsn = request.getfixturevalue("postgres_dsn") if kind == "postgres" else None
    return Store(kind, tmp_path / "runs.db", dsn)


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable_store(request, tmp_path):
    """A store that outlives the process: for tests that kill or restart real processes."""
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store("sqlite", tmp_path / "runs.db")
    yield s
    s.close()


def side_by_side(schema: type, nodes: dict) -> StateGraph:
    """A graph running `nodes` (name -> function) in one step: each from START to END."""
    g = StateGraph(schema)
    for name, node in nodes.items():
        g.add_node(name, node)
        g.add_edge(START, name)
        g.add_edge(name, END)
    return g
