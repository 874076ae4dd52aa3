"""`PostgresStore`: long-term memory in a PostgreSQL schema, which it may share with a
`PostgresCheckpointer` (the same database and schema: a run's memory writes then commit in
the transaction of its step). Connections, retries after a dropped connection and the
schema's migrations are the checkpointer's own: the store keeps one for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .postgres import PostgresCheckpointer, same_database
from .sql_dialect import POSTGRES
from .store_sql import StoreSQL, VectorCache
from .store_sql_base import SQLBackedStore

T = TypeVar("T")
SQL = StoreSQL(POSTGRES)


class PostgresStore(SQLBackedStore):
    """A store in a PostgreSQL schema (see `BaseStore` for the calls)."""

    def __init__(self, dsn: str, *, schema: str = "statemachine", index: Any = None,
                 ttl: float | None = None, refresh_on_read: bool = False,
                 read_only: bool = False, max_connections: int = 10,
                 reconnect_seconds: float = 30.0, connect_timeout: float = 10.0) -> None:
        super().__init__(index=index, ttl=ttl, refresh_on_read=refresh_on_read)
        self._sql = SQL
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


    def _read(self, doing: str, refresh: bool, work: Callable[[Any], T], empty: T) -> T:
        if not self._has_tables:
            return empty
        return self._write(doing, work)

    def _write(self, doing: str, work: Callable[[Any], T]) -> T:
        def run(conn: Any) -> T:
            with conn.transaction():
                return work(conn)

        return self._db._direct(run)


__all__ = ["PostgresStore"]
