"""`SQLiteStore`: long-term memory in a SQLite file, which it may share with a
`SQLiteCheckpointer` (the same file: a run's memory writes then commit in the transaction of
its step). The file is checked, created or migrated as the checkpointer does it."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from .sql_dialect import SQLITE
from .sqlite_errors import failures, storage_error
from .sqlite_file import STORE_FROM, connect_direct, open_read_only, prepare_file, transaction
from .store_sql import StoreSQL, VectorCache
from .store_sql_base import SQLBackedStore

T = TypeVar("T")
SQL = StoreSQL(SQLITE)


class SQLiteStore(SQLBackedStore):
    """A store in a SQLite file (see `BaseStore` for the calls)."""

    def __init__(self, path: str | os.PathLike[str], *, index: Any = None,
                 ttl: float | None = None, refresh_on_read: bool = False,
                 busy_timeout: float = 10.0, read_only: bool = False) -> None:
        """`read_only=True` reads an existing file and changes nothing (for viewers); a
        read refreshes no time to live then."""
        super().__init__(index=index, ttl=ttl, refresh_on_read=refresh_on_read)
        self._sql = SQL
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


    # -- transactions --------------------------------------------------------------------------

    def _read(self, doing: str, refresh: bool, work: Callable[[Any], T], empty: T) -> T:
        """`work` in one transaction: a write one when it refreshes times to live."""
        if not self._has_tables:  # an older file, opened read-only: nothing stored yet
            return empty
        if refresh:
            return self._write(doing, work)
        with self._failures(doing), self._lock:
            return work(self._conn)

    def _write(self, doing: str, work: Callable[[Any], T]) -> T:
        with self._failures(doing), self._lock, transaction(self._conn) as conn:
            return work(conn)

    def _failures(self, doing: str) -> AbstractContextManager[None]:
        return failures(self.path, doing, self.busy_timeout)


__all__ = ["SQLiteStore"]
