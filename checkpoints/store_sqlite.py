"""`SQLiteStore`: long-term memory in a SQLite file, which it may share with a
`SQLiteCheckpointer` (the same file: a run's memory writes then commit in the transaction of
its step). The file is checked, created or migrated as the checkpointer does it."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .sql_dialect import SQLITE
from .sqlite_errors import bad_value_error, storage_error
from .sqlite_file import STORE_FROM, connect_direct, open_read_only, prepare_file
from .store_base import BaseStore
from .store_sql import StoreSQL, VectorCache
from .store_types import Condition, Item, Namespace, StoreError, StoreWrite

T = TypeVar("T")
SQL = StoreSQL(SQLITE)


class SQLiteStore(BaseStore):
    """A store in a SQLite file (see `BaseStore` for the calls)."""

    def __init__(self, path: str | os.PathLike[str], *, index: Any = None,
                 ttl: float | None = None, refresh_on_read: bool = False,
                 busy_timeout: float = 10.0, read_only: bool = False) -> None:
        """`read_only=True` reads an existing file and changes nothing (for viewers); a
        read refreshes no time to live then."""
        super().__init__(index=index, ttl=ttl, refresh_on_read=refresh_on_read)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._lock = threading.Lock()
        self._vectors = VectorCache()
        if read_only:
            self._conn, _, version = open_read_only(self.path, busy_timeout)
            self._has_tables = version >= STORE_FROM
            return
        prepare_file(self.path, busy_timeout)
        try:
            self._conn = connect_direct(self.path, busy_timeout)
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc, "open the store", busy_timeout=busy_timeout) \
                from exc
        self._has_tables = True

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the primitives ------------------------------------------------------------------------

    def _apply(self, writes: list[StoreWrite], now: float) -> None:
        if self.read_only:
            raise StoreError(f"{self!r} is read-only: it cannot put or delete.")
        self._write("write to the store", lambda conn: SQL.apply(conn, writes, now))

    def _get(self, namespace: Namespace, key: str, now: float, refresh: bool) -> Item | None:
        return self._read("read the store", refresh,
                          lambda conn: SQL.get(conn, namespace, key, now, refresh), None)

    def _search(self, prefix: Namespace, conditions: list[Condition], limit: int, offset: int,
                now: float, refresh: bool) -> list[Item]:
        return self._read("search the store", refresh, lambda conn: SQL.search(
            conn, prefix, conditions, limit, offset, now, refresh), [])

    def _vector_search(self, prefix: Namespace, conditions: list[Condition],
                       vector: list[float], limit: int, offset: int, now: float,
                       refresh: bool) -> list[Item]:
        assert self.index is not None
        dims = self.index.dims
        return self._read("search the store", refresh, lambda conn: SQL.vector_search(
            conn, prefix, conditions, vector, dims, limit, offset, now, refresh,
            self._vectors), [])

    def _namespaces(self, prefix: Namespace, now: float) -> list[Namespace]:
        return self._read("list the store's namespaces", False,
                          lambda conn: SQL.namespaces(conn, prefix, now), [])

    def _sweep(self, now: float) -> int:
        if self.read_only:
            return 0
        return self._write("sweep the store", lambda conn: SQL.sweep(conn, now))

    # -- transactions --------------------------------------------------------------------------

    def _read(self, doing: str, refresh: bool, work: Callable[[Any], T], empty: T) -> T:
        """`work` in one transaction: a write one when it refreshes times to live."""
        if not self._has_tables:  # an older file, opened read-only: nothing stored yet
            return empty
        if refresh and not self.read_only:
            return self._write(doing, work)
        with self._failures(doing), self._lock:
            return work(_NoRefresh(self._conn) if refresh else self._conn)

    def _write(self, doing: str, work: Callable[[Any], T]) -> T:
        with self._failures(doing), self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc, doing, busy_timeout=self.busy_timeout) from exc
        except UnicodeEncodeError as exc:
            raise bad_value_error(self.path, exc, doing) from None


class _NoRefresh:
    """A read-only connection as a refreshing read sees it: the refresh changes nothing (a
    read-only store refreshes no time to live)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.lstrip().upper().startswith("UPDATE"):
            return self._conn.execute("SELECT 0 WHERE 0")
        return self._conn.execute(sql, params)


__all__ = ["SQLiteStore"]
