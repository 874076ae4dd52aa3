"""`MemoryStore`: a store in this process's memory, for tests, notebooks and graphs without a
database. Values are kept as JSON text, so no caller shares an object with it."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from .store_base import BaseStore
from .store_types import Condition, Item, Namespace, StoreWrite, matches, under
from .store_vectors import VectorTable


@dataclass(slots=True)
class _Row:
    value: str
    created_at: float
    updated_at: float
    ttl: float | None
    expires_at: float | None
    vectors: dict[str, list[float]] | None

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class MemoryStore(BaseStore):
    """A store in memory (see `BaseStore`): gone with the process."""

    def __init__(self, *, index: Any = None, ttl: float | None = None,
                 refresh_on_read: bool = False) -> None:
        super().__init__(index=index, ttl=ttl, refresh_on_read=refresh_on_read)
        self._rows: dict[tuple[Namespace, str], _Row] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._rows)} items)"

    async def _off_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)  # nothing here blocks: no thread hop

    def _apply(self, writes: list[StoreWrite], now: float) -> None:
        with self._lock:
            for write in writes:
                if write.value is None:
                    self._rows.pop(write.address, None)
                    continue
                old = self._rows.get(write.address)
                created = old.created_at if old is not None and old.live(now) else now
                self._rows[write.address] = _Row(
                    write.value, created, now, write.ttl,
                    None if write.ttl is None else now + write.ttl, write.vectors)

    def _get(self, namespace: Namespace, key: str, now: float, refresh: bool) -> Item | None:
        with self._lock:
            row = self._rows.get((namespace, key))
            if row is None or not row.live(now):
                return None
            self._touch(row, now, refresh)
            return _item(namespace, key, row)

    def _live(self, prefix: Namespace, conditions: list[Condition], now: float
              ) -> list[tuple[tuple[Namespace, str], _Row, dict[str, Any]]]:
        found = []
        for address, row in self._rows.items():
            if not row.live(now) or not under(address[0], prefix):
                continue
            value = json.loads(row.value)
            if matches(value, conditions):
                found.append((address, row, value))
        return found

    def _search(self, prefix: Namespace, conditions: list[Condition], limit: int, offset: int,
                now: float, refresh: bool) -> list[Item]:
        with self._lock:
            found = self._live(prefix, conditions, now)
            found.sort(key=lambda f: (f[1].updated_at, f[0]), reverse=True)
            page = found[offset:offset + limit]
            for _, row, _ in page:
                self._touch(row, now, refresh)
            return [_item(ns, key, row) for (ns, key), row, _ in page]

    def _vector_search(self, prefix: Namespace, conditions: list[Condition],
                       vector: list[float], limit: int, offset: int, now: float,
                       refresh: bool) -> list[Item]:
        assert self.index is not None
        with self._lock:
            found = {address: row for address, row, _ in self._live(prefix, conditions, now)}
            owners, rows = [], []
            for address, row in found.items():
                for field_vector in (row.vectors or {}).values():
                    owners.append(address)
                    rows.append(field_vector)
            best = VectorTable(owners, rows, self.index.dims).best(vector)
            ranked = sorted(found, key=lambda a: (-best.get(a, float("-inf")),
                                                  -found[a].updated_at, a))
            page = ranked[offset:offset + limit]
            out = []
            for address in page:
                row = found[address]
                self._touch(row, now, refresh)
                out.append(_item(*address, row, best.get(address)))
            return out

    def _namespaces(self, prefix: Namespace, now: float) -> list[Namespace]:
        with self._lock:
            return list({ns for (ns, _), row in self._rows.items()
                         if row.live(now) and under(ns, prefix)})

    def _sweep(self, now: float) -> int:
        with self._lock:
            dead = [a for a, row in self._rows.items() if not row.live(now)]
            for address in dead:
                del self._rows[address]
            return len(dead)

    @staticmethod
    def _touch(row: _Row, now: float, refresh: bool) -> None:
        if refresh and row.ttl is not None:
            row.expires_at = now + row.ttl


def _item(namespace: Namespace, key: str, row: _Row, score: float | None = None) -> Item:
    return Item(namespace, key, json.loads(row.value), row.created_at, row.updated_at, score,
                row.expires_at)


__all__ = ["MemoryStore"]
