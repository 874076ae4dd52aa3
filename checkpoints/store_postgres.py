"""`PostgresStore`: long-term memory in a PostgreSQL schema, which it may share with a
`PostgresCheckpointer` (the same database and schema: a run's memory writes then commit in
the transaction of its step). Connections, retries after a dropped connection and the
schema's migrations are the checkpointer's own: the store keeps one for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .postgres import PostgresCheckpointer, same_database
from .sql_dialect import POSTGRES
from .store_base import BaseStore
from .store_sql import StoreSQL, VectorCache
from .store_types import Condition, Item, Namespace, StoreError, StoreWrite

T = TypeVar("T")
SQL = StoreSQL(POSTGRES)


class PostgresStore(BaseStore):
    """A store in a PostgreSQL schema (see `BaseStore` for the calls)."""

    def __init__(self, dsn: str, *, schema: str = "statemachine", index: Any = None,
                 ttl: float | None = None, refresh_on_read: bool = False,
                 read_only: bool = False, max_connections: int = 10,
                 reconnect_seconds: float = 30.0, connect_timeout: float = 10.0) -> None:
        super().__init__(index=index, ttl=ttl, refresh_on_read=refresh_on_read)
        self._db = PostgresCheckpointer(dsn, schema=schema, read_only=read_only,
                                        max_connections=max_connections,
                                        reconnect_seconds=reconnect_seconds,
                                        connect_timeout=connect_timeout)
        self.dsn, self.schema, self.read_only = dsn, schema, read_only
        self._vectors = VectorCache()
        self._has_tables = self._db._version >= 3

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"PostgresStore({self._db.where!r}, schema={self.schema!r}{mode})"

    def holds(self, saver: PostgresCheckpointer) -> bool:
        """Whether `saver` writes to this store's database and schema."""
        return self.schema == saver.schema and same_database(self.dsn, saver.dsn)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the primitives ------------------------------------------------------------------------

    def _apply(self, writes: list[StoreWrite], now: float) -> None:
        if self.read_only:
            raise StoreError(f"{self!r} is read-only: it cannot put or delete.")
        self._transaction(lambda conn: SQL.apply(conn, writes, now))

    def _get(self, namespace: Namespace, key: str, now: float, refresh: bool) -> Item | None:
        return self._read(refresh, lambda conn: SQL.get(conn, namespace, key, now, refresh),
                          None)

    def _search(self, prefix: Namespace, conditions: list[Condition], limit: int, offset: int,
                now: float, refresh: bool) -> list[Item]:
        return self._read(refresh, lambda conn: SQL.search(
            conn, prefix, conditions, limit, offset, now, refresh), [])

    def _vector_search(self, prefix: Namespace, conditions: list[Condition],
                       vector: list[float], limit: int, offset: int, now: float,
                       refresh: bool) -> list[Item]:
        assert self.index is not None
        dims = self.index.dims
        return self._read(refresh, lambda conn: SQL.vector_search(
            conn, prefix, conditions, vector, dims, limit, offset, now, refresh,
            self._vectors), [])

    def _namespaces(self, prefix: Namespace, now: float) -> list[Namespace]:
        return self._read(False, lambda conn: SQL.namespaces(conn, prefix, now), [])

    def _sweep(self, now: float) -> int:
        if self.read_only:
            return 0
        return self._transaction(lambda conn: SQL.sweep(conn, now))

    def _read(self, refresh: bool, work: Callable[[Any], T], empty: T) -> T:
        if not self._has_tables:
            return empty
        if refresh and self.read_only:  # refreshes nothing: a read-only store changes nothing
            return self._transaction(lambda conn: work(_NoRefresh(conn)))
        return self._transaction(work)

    def _transaction(self, work: Callable[[Any], T]) -> T:
        def run(conn: Any) -> T:
            with conn.transaction():
                return work(conn)

        return self._db._direct(run)


class _NoRefresh:
    """A read-only connection as a refreshing read sees it: the refresh changes nothing."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: Any, params: Any = ()) -> Any:
        text = sql.decode() if isinstance(sql, bytes) else str(sql)
        if text.lstrip().upper().startswith("UPDATE"):
            return self._conn.execute("SELECT 0 WHERE false")
        return self._conn.execute(sql, params)


__all__ = ["PostgresStore"]
