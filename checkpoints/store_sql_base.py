"""`SQLBackedStore`: the store's primitives for a SQL database, written once: each one is its
statements (`store_sql.StoreSQL`) run by the store's own read or write transaction, which is
all `SQLiteStore` and `PostgresStore` provide."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Self, TypeVar

from .store_base import BaseStore
from .store_sql import StoreSQL, VectorCache
from .store_types import Condition, Item, Namespace, StoreError, StoreWrite

T = TypeVar("T")


class SQLBackedStore(BaseStore):
    """A store in a SQL database (see `BaseStore` for the calls)."""

    _sql: StoreSQL
    _vectors: VectorCache
    """The vectors of the prefixes searched last (`VectorCache`)."""

    def _apply(self, writes: list[StoreWrite], now: float) -> None:
        if self.read_only:
            raise StoreError(f"{self!r} is read-only: it cannot put or delete.")
        self._write("write to the store", lambda conn: self._sql.apply(conn, writes, now))

    def _get(self, namespace: Namespace, key: str, now: float, refresh: bool) -> Item | None:
        return self._read("read the store", refresh,
                          lambda conn: self._sql.get(conn, namespace, key, now, refresh), None)

    def _search(self, prefix: Namespace, conditions: list[Condition], limit: int, offset: int,
                now: float, refresh: bool) -> list[Item]:
        return self._read("search the store", refresh, lambda conn: self._sql.search(
            conn, prefix, conditions, limit, offset, now, refresh), [])

    def _vector_search(self, prefix: Namespace, conditions: list[Condition],
                       vector: list[float], limit: int, offset: int, now: float,
                       refresh: bool) -> list[Item]:
        assert self.index is not None
        dims = self.index.dims
        return self._read("search the store", refresh, lambda conn: self._sql.vector_search(
            conn, prefix, conditions, vector, dims, limit, offset, now, refresh,
            self._vectors), [])

    def _namespaces(self, prefix: Namespace, now: float) -> list[Namespace]:
        return self._read("list the store's namespaces", False,
                          lambda conn: self._sql.namespaces(conn, prefix, now), [])

    def _sweep(self, now: float) -> int:
        if self.read_only:
            return 0
        return self._write("sweep the store", lambda conn: self._sql.sweep(conn, now))

    @abstractmethod
    def close(self) -> None:
        """Close the store's connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _read(self, doing: str, refresh: bool, work: Callable[[Any], T], empty: T) -> T:
        """`work(conn)` in one transaction (a writing one when it refreshes times to live);
        `empty` when the database has no store tables yet (an older one opened read-only)."""

    @abstractmethod
    def _write(self, doing: str, work: Callable[[Any], T]) -> T:
        """`work(conn)` in one writing transaction."""


__all__ = ["SQLBackedStore"]
