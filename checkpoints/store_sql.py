"""The store's SQL, for SQLite and PostgreSQL alike, run on a DB-API connection in a
transaction the caller holds: a `SQLiteStore` or `PostgresStore` on its own connection, or a
checkpointer applying a step's memory writes in the transaction that commits the step.

A filter condition the database can decide exactly is pushed down (a top-level field of a
JSON type the condition names: text or a number); when one it cannot decide (booleans,
null, objects, integers beyond 64 bits) is there too, the rows read are checked in Python
and the page is taken there.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from typing import Any

from .sql_dialect import Dialect
from .store_types import (
    Condition,
    Item,
    Namespace,
    StoreWrite,
    decode_namespace,
    encode_namespace,
    matches,
    prefix_range,
)
from .store_vectors import VectorTable, to_bytes

_COLUMNS = "namespace, key, value, created_at, updated_at, ttl, expires_at"
_SQL_OPS = {"$eq": "=", "$ne": "<>", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


class StoreSQL:
    """The store's statements in one dialect, and what is done with their rows."""

    def __init__(self, dialect: Dialect) -> None:
        d = self.dialect = dialect
        r = d.render
        # each write is tagged with a random number (`VectorCache`: no counter to contend for)
        self._upsert = r(
            f"INSERT INTO store_items({_COLUMNS}, seq) VALUES (:ns, :key, :value, :at, :at, "
            ":ttl, :expires, :seq) ON CONFLICT (namespace, key) DO UPDATE SET "
            "value = excluded.value, created_at = CASE WHEN store_items.expires_at IS NOT NULL "
            "AND store_items.expires_at <= excluded.updated_at THEN excluded.created_at "
            "ELSE store_items.created_at END, updated_at = excluded.updated_at, "
            "ttl = excluded.ttl, expires_at = excluded.expires_at, seq = excluded.seq")
        self._delete = r("DELETE FROM store_items WHERE namespace = :ns AND key = :key")
        self._delete_vectors = r("DELETE FROM store_vectors WHERE namespace = :ns AND "
                                 "key = :key")
        self._insert_vector = r("INSERT INTO store_vectors(namespace, key, field, vector) "
                                "VALUES (:ns, :key, :field, :vector)")
        self._get = r(f"SELECT {_COLUMNS} FROM store_items WHERE namespace = :ns AND "
                      "key = :key AND (expires_at IS NULL OR expires_at > :at)")
        self._touch = r("UPDATE store_items SET expires_at = :at + ttl WHERE namespace = :ns "
                        "AND key = :key AND ttl IS NOT NULL")
        self._sweep = r("DELETE FROM store_items WHERE expires_at IS NOT NULL AND "
                        "expires_at <= :at")
        self._orphans = r("DELETE FROM store_vectors WHERE NOT EXISTS (SELECT 1 FROM "
                          "store_items i WHERE i.namespace = store_vectors.namespace AND "
                          "i.key = store_vectors.key)")

    # -- writes --------------------------------------------------------------------------------

    def apply(self, conn: Any, writes: Sequence[StoreWrite], at: float) -> None:
        """The writes, in order, on `conn` (in the caller's transaction)."""
        execute = conn.execute
        # a connection whose triggers remove an item's vectors when it changes or goes
        # (sqlite_file.VECTORS_FOLLOW_ITEMS) spares a write without vectors the DELETE
        follow = getattr(conn, "vectors_follow_items", False)
        for write in writes:
            address: dict[str, Any] = {"ns": encode_namespace(write.namespace),
                                       "key": write.key}
            if not follow or write.vectors:  # a new item's may replace orphans
                execute(self._delete_vectors, address)
            if write.value is None:
                execute(self._delete, address)
                continue
            ttl = write.ttl
            address.update(value=write.value, at=at, ttl=ttl,
                           expires=None if ttl is None else at + ttl,
                           seq=random.getrandbits(31))
            execute(self._upsert, address)
            if write.vectors:
                for field, vector in write.vectors.items():
                    execute(self._insert_vector, {"ns": address["ns"], "key": write.key,
                                                  "field": field, "vector": to_bytes(vector)})

    def sweep(self, conn: Any, at: float) -> int:
        removed = int(conn.execute(self._sweep, {"at": at}).rowcount or 0)
        if removed:
            conn.execute(self._orphans, {})
        return removed

    # -- reads ---------------------------------------------------------------------------------

    def get(self, conn: Any, namespace: Namespace, key: str, at: float,
            refresh: bool) -> Item | None:
        address = {"ns": encode_namespace(namespace), "key": key}
        row = conn.execute(self._get, {**address, "at": at}).fetchone()
        if row is None:
            return None
        item = _item(row)
        if refresh and item.expires_at is not None:
            return self._touched(conn, [item], at)[0]
        return item

    def search(self, conn: Any, prefix: Namespace, conditions: list[Condition], limit: int,
               offset: int, at: float, refresh: bool) -> list[Item]:
        """Live items under `prefix` meeting the conditions, newest first, one page."""
        where, params, exact = self._where(prefix, conditions, at)
        sql = f"SELECT {_COLUMNS} FROM store_items WHERE {where} " \
              "ORDER BY updated_at DESC, namespace, key"
        if exact:
            sql += " LIMIT :limit OFFSET :offset"
            params.update(limit=limit, offset=offset)
        rows = conn.execute(self.dialect.render(sql), params).fetchall()
        items = [_item(row) for row in rows]
        if not exact:
            items = [i for i in items if matches(i.value, conditions)][offset:offset + limit]
        return self._touched(conn, items, at) if refresh else items

    def vector_search(self, conn: Any, prefix: Namespace, conditions: list[Condition],
                      vector: list[float], dims: int, limit: int, offset: int, at: float,
                      refresh: bool, cache: VectorCache) -> list[Item]:
        """Live items under `prefix` meeting the conditions, most similar first, scored
        (items without a vector after them, newest first).

        The vectors under the prefix are ranked first, from `cache` while the items there
        are unchanged (`VectorCache`); the best are then read one by one, for their value,
        their expiry and the filter, until the page is full."""
        table = self._vectors(conn, prefix, dims, cache)
        allowed = None
        if conditions:  # the items meeting the filter, read once (their values checked)
            where, params, _ = self._where(prefix, conditions, at)
            rows = conn.execute(self.dialect.render(
                f"SELECT {_COLUMNS} FROM store_items WHERE {where}"), params).fetchall()
            allowed = {(i.namespace, i.key) for i in map(_item, rows)
                       if matches(i.value, conditions)}
        best = table.best(vector, keep=None if allowed is None else allowed.__contains__)
        ranked = sorted(best, key=lambda a: -best[a])
        page: list[Item] = []
        wanted = offset + limit
        for address in ranked:
            if len(page) >= wanted:
                break
            row = conn.execute(self._get, {"ns": encode_namespace(address[0]),
                                           "key": address[1], "at": at}).fetchone()
            if row is None:
                continue
            item = _item(row)
            if matches(item.value, conditions):
                page.append(Item(*_fields(item), score=best[address],
                                 expires_at=item.expires_at))
        if len(page) < wanted:  # then the items without a vector (not indexed)
            for item in self.search(conn, prefix, conditions, wanted + len(best), 0, at,
                                    False):
                if (item.namespace, item.key) not in best and len(page) < wanted:
                    page.append(item)
        page = page[offset:offset + limit]
        return self._touched(conn, page, at) if refresh else page

    def _vectors(self, conn: Any, prefix: Namespace, dims: int,
                 cache: VectorCache) -> VectorTable:
        ranged, params = self._prefix(prefix)
        seen = tuple(conn.execute(self.dialect.render(
            f"SELECT count(*), sum(seq) FROM store_items WHERE {ranged}"),
            params).fetchone())
        kept = cache.get(prefix)
        if kept is not None and kept[0] == seen:
            return kept[1]
        ranged, params = self._prefix(prefix, "v.")
        rows = conn.execute(self.dialect.render(
            f"SELECT v.namespace, v.key, v.vector FROM store_vectors v WHERE {ranged}"),
            params).fetchall()
        table = VectorTable([(decode_namespace(ns), key) for ns, key, _ in rows],
                            [bytes(v) for _, _, v in rows], dims)
        cache.put(prefix, seen, table)
        return table

    def namespaces(self, conn: Any, prefix: Namespace, at: float) -> list[Namespace]:
        ranged, params = self._prefix(prefix)
        rows = conn.execute(self.dialect.render(
            f"SELECT DISTINCT namespace FROM store_items WHERE {ranged} AND "
            "(expires_at IS NULL OR expires_at > :at)"), {**params, "at": at}).fetchall()
        return [decode_namespace(row[0]) for row in rows]

    # -- helpers -------------------------------------------------------------------------------

    def _touched(self, conn: Any, items: list[Item], at: float) -> list[Item]:
        """The items with their time to live restarted (those that have one)."""
        out = []
        for item in items:
            if item.expires_at is not None:
                address = {"ns": encode_namespace(item.namespace), "key": item.key, "at": at}
                conn.execute(self._touch, address)
                row = conn.execute(self._get, address).fetchone()
                if row is None:  # deleted meanwhile
                    continue
                item = Item(*_fields(item), score=item.score, expires_at=_item(row).expires_at)
            out.append(item)
        return out

    def _prefix(self, prefix: Namespace, alias: str = "") -> tuple[str, dict[str, Any]]:
        bounds = prefix_range(prefix)
        if bounds is None:
            return "1 = 1", {}
        low, high = bounds
        column = f"{alias}namespace"
        return (f"({column} = :prefix OR ({column} >= :low AND {column} < :high))",
                {"prefix": low, "low": low + "\x1f", "high": high})

    def _where(self, prefix: Namespace, conditions: list[Condition], at: float
               ) -> tuple[str, dict[str, Any], bool]:
        """The WHERE of a search, its parameters, and whether it decides every condition."""
        ranged, params = self._prefix(prefix)
        clauses = [ranged, "(expires_at IS NULL OR expires_at > :at)"]
        params["at"] = at
        exact = True
        for n, (name, op, wanted) in enumerate(conditions):
            clause = self._condition(name, op, wanted, n, params)
            if clause is None:
                exact = False
            else:
                clauses.append(clause)
        return " AND ".join(clauses), params, exact

    def _condition(self, name: str, op: str, wanted: Any, n: int,
                   params: dict[str, Any]) -> str | None:
        """SQL deciding one condition exactly, or None (it is then checked in Python)."""
        if '"' in name or "\\" in name or "\x00" in name:
            return None
        if wanted is None or isinstance(wanted, bool):
            return self._constant_condition(name, op, wanted, n, params)
        if not isinstance(wanted, str | int | float) or \
                (isinstance(wanted, int) and not -2**63 <= wanted < 2**63):
            return None
        text = isinstance(wanted, str)
        params[f"f{n}"] = name
        params[f"v{n}"] = wanted
        if self.dialect.arrays:  # PostgreSQL: jsonb
            field = f"(value::jsonb -> :f{n}::text)"
            typed = f"jsonb_typeof({field}) = '{'string' if text else 'number'}'"
            got = f"(value::jsonb ->> :f{n}::text)" + (' COLLATE "C"' if text else "::numeric")
            compare = f"{got} {_SQL_OPS[op] if op != '$ne' else '='} :v{n}" + \
                ("" if text else "::numeric")
        else:  # SQLite: json1
            params[f"f{n}"] = f'$."{name}"'
            kinds = "('text')" if text else "('integer', 'real')"
            typed = f"json_type(value, :f{n}) IN {kinds}"
            compare = f"json_extract(value, :f{n}) {_SQL_OPS[op] if op != '$ne' else '='} :v{n}"
        decided = f"({typed} AND {compare})"
        return f"NOT coalesce({decided}, false)" if op == "$ne" else decided


    def _constant_condition(self, name: str, op: str, wanted: bool | None, n: int,
                            params: dict[str, Any]) -> str:
        """A condition on true, false or null: equal when the field holds that very JSON
        value; an ordering of them is never true (as `matches` says)."""
        if op not in ("$eq", "$ne"):
            return "1 = 0"
        kind = "null" if wanted is None else ("true" if wanted else "false")
        if self.dialect.arrays:
            params[f"f{n}"] = name
            decided = f"((value::jsonb -> :f{n}::text) = '{kind}'::jsonb)"
        else:
            params[f"f{n}"] = f'$."{name}"'
            decided = f"(json_type(value, :f{n}) = '{kind}')"
        return f"NOT coalesce({decided}, false)" if op == "$ne" else decided


class VectorCache:
    """The vectors last read under a few prefixes, with what the items there looked like
    then: their count and the sum of their writes' random tags. A put or delete under the
    prefix changes that (a put leaves the sum as it was once in 2**31)."""

    def __init__(self, size: int = 8) -> None:
        self._kept: dict[Namespace, tuple[tuple[Any, ...], VectorTable]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, prefix: Namespace) -> tuple[tuple[Any, ...], VectorTable] | None:
        with self._lock:
            return self._kept.get(prefix)

    def put(self, prefix: Namespace, seen: tuple[Any, ...], table: VectorTable) -> None:
        with self._lock:
            self._kept.pop(prefix, None)
            self._kept[prefix] = (seen, table)
            while len(self._kept) > self._size:
                del self._kept[next(iter(self._kept))]


def _item(row: Sequence[Any]) -> Item:
    namespace, key, value, created, updated, _ttl, expires = row
    return Item(decode_namespace(namespace), key,
                value if isinstance(value, dict) else json.loads(value), created, updated,
                None, expires)


def _fields(item: Item) -> tuple[Namespace, str, dict[str, Any], float, float]:
    return item.namespace, item.key, item.value, item.created_at, item.updated_at


__all__ = ["StoreSQL", "VectorCache"]
