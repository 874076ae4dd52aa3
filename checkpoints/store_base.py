"""`BaseStore`: long-term memory shared across threads, in namespaces, with search.

    store.put(("users", "u1", "memories"), "diet", {"text": "vegetarian", "kind": "pref"})
    store.get(("users", "u1", "memories"), "diet")        # Item, or None
    store.search(("users", "u1"), filter={"kind": "pref"}, query="food?", limit=5)
    store.delete(("users", "u1", "memories"), "diet")
    store.list_namespaces(prefix=("users",), max_depth=2)
    # async twins: aput, aget, asearch, adelete, alist_namespaces, asweep

Every store checks what it is given the same way (`store_types`) and embeds the same way
(`store_vectors`); a store provides the few primitives at the bottom, as plain blocking calls
on its own connection (the async twins run them in a worker thread), so a sync node can use
the store from any thread. Inside a run, nodes get a buffered view of the store instead
(`statemachine.memory`): their writes are committed with the step, exactly once.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .store_types import (
    Condition,
    Item,
    Namespace,
    StoreError,
    StoreWrite,
    check_address,
    check_filter,
    check_item_namespace,
    check_key,
    check_namespace,
    check_page,
    check_ttl,
    encode_value,
)
from .store_vectors import IndexConfig


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final[Any] = _NotGiven()

SWEEP_SECONDS = 60.0
"""How often (at most) writes also delete expired items."""
"""An argument left out (`ttl=None` means "never expires", so it cannot mean that)."""


class BaseStore(ABC):
    """A store of JSON values by namespace and key; see the module for the calls."""

    def __init__(self, *, index: Mapping[str, Any] | IndexConfig | None = None,
                 ttl: float | None = None, refresh_on_read: bool = False) -> None:
        """`index`: embed put values for `search(query=...)` (see `store_vectors`). `ttl`:
        seconds an item lives when its put gives none (None: for ever). `refresh_on_read`:
        a read (get, search) restarts the time to live of what it returns, unless it says
        otherwise with `refresh_ttl=`. Expired items are never returned; writes sweep them
        away at most every `SWEEP_SECONDS` (and `sweep()` does it now)."""
        self.index = IndexConfig.of(index)
        self.default_ttl = check_ttl(ttl, what="the store's ttl")
        self.refresh_on_read = bool(refresh_on_read)
        self._swept_at = 0.0
        self.read_only = False
        """A read-only store puts, deletes and refreshes nothing (set by the stores that can
        open so)."""

    # -- what a put becomes ------------------------------------------------------------------------

    def write(self, namespace: Sequence[str], key: str, value: Mapping[str, Any] | None, *,
              index: bool | Sequence[str] | None = None, ttl: Any = NOT_GIVEN
              ) -> tuple[StoreWrite, dict[str, str]]:
        """A put (or, with value None, a delete) checked and encoded, and the texts of it to
        embed (field -> text; none without an index or with `index=False`)."""
        ns = check_item_namespace(namespace)
        key = check_key(ns, key)
        if value is None:
            return StoreWrite(ns, key, None), {}
        check_address(ns, key)
        text = encode_value(ns, key, value)
        lives = self.default_ttl if ttl is NOT_GIVEN else check_ttl(ttl)
        texts: dict[str, str] = {}
        if self.index is not None and index is not False:
            fields = None if index is None or index is True else _fields(ns, key, index)
            import json

            texts = self.index.texts(json.loads(text), fields)
        return StoreWrite(ns, key, text, lives), texts

    def embedded(self, writes: Sequence[tuple[StoreWrite, dict[str, str]]],
                 vectors: list[list[float]]) -> list[StoreWrite]:
        """The writes with their vectors, `vectors` being the texts' embeddings in order."""
        out, at = [], 0
        for write, texts in writes:
            if write.value is not None and self.index is not None:
                mine = dict(zip(texts, vectors[at:at + len(texts)], strict=True))
                at += len(texts)
                write = StoreWrite(write.namespace, write.key, write.value, write.ttl, mine)
            out.append(write)
        return out

    def prepare_sync(self, writes: Sequence[tuple[StoreWrite, dict[str, str]]]
                     ) -> list[StoreWrite]:
        """The writes ready to apply: their texts embedded in one call."""
        texts = [t for _, fields in writes for t in fields.values()]
        vectors = self.index.embed_sync(texts) if self.index is not None else []
        return self.embedded(writes, vectors)

    async def prepare(self, writes: Sequence[tuple[StoreWrite, dict[str, str]]]
                      ) -> list[StoreWrite]:
        if self.index is None:  # nothing to embed (a step's hot path)
            return [write for write, _ in writes]
        texts = [t for _, fields in writes for t in fields.values()]
        vectors = await self.index.embed_async(texts) if self.index is not None else []
        return self.embedded(writes, vectors)

    # -- the calls (sync) -------------------------------------------------------------------------

    def put(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
            index: bool | Sequence[str] | None = None, *, ttl: Any = NOT_GIVEN) -> None:
        """Store `value` (a JSON-able dict) under `key`, replacing what was there. `index`:
        False leaves it out of semantic search, a list of fields embeds those instead of the
        index's. `ttl`: seconds it lives (None: for ever; left out: the store's default)."""
        self.apply(self.prepare_sync([self.write(namespace, key, value, index=index,
                                                 ttl=ttl)]))

    def delete(self, namespace: Sequence[str], key: str) -> None:
        self.apply([self.write(namespace, key, None)[0]])

    def get(self, namespace: Sequence[str], key: str, *,
            refresh_ttl: bool | None = None) -> Item | None:
        ns = check_item_namespace(namespace)
        return self._get(ns, check_key(ns, key), time.time(), self._refresh(refresh_ttl))

    def search(self, namespace_prefix: Sequence[str] = (), /, *, query: str | None = None,
               filter: Mapping[str, Any] | None = None, limit: int = 10, offset: int = 0,
               refresh_ttl: bool | None = None) -> list[Item]:
        """Items under the prefix meeting `filter`, newest first; with `query` (and an index),
        the most similar first, each with its `score`."""
        prefix, conditions, limit, offset = self._search_args(namespace_prefix, filter, limit,
                                                              offset)
        now, refresh = time.time(), self._refresh(refresh_ttl)
        if query is None:
            return self._search(prefix, conditions, limit, offset, now, refresh)
        index = self._index_for(query)
        [vector] = index.embed_sync([query])
        return self._vector_search(prefix, conditions, vector, limit, offset, now, refresh)

    def list_namespaces(self, *, prefix: Sequence[str] | None = None,
                        suffix: Sequence[str] | None = None, max_depth: int | None = None,
                        limit: int = 100, offset: int = 0) -> list[Namespace]:
        """The namespaces holding items (cut to `max_depth` labels), sorted."""
        start = check_namespace(prefix or (), what="prefix")
        end = check_namespace(suffix or (), what="suffix")
        if "*" in start or "*" in end:
            raise StoreError("list_namespaces takes whole labels: a '*' wildcard is not "
                             "supported (list under the fixed part, then filter).")
        if max_depth is not None and (isinstance(max_depth, bool) or
                                      not isinstance(max_depth, int) or max_depth < 1):
            raise StoreError(f"max_depth must be a whole number from 1, got {max_depth!r}.")
        limit, offset = check_page(limit, offset)
        return select_namespaces(self._namespaces(start, time.time()), end, max_depth, limit,
                                 offset)

    def sweep(self) -> int:
        """Remove expired items now; how many. (Reads never return them anyway.)"""
        return self._sweep(time.time())

    def apply(self, writes: Sequence[StoreWrite]) -> None:
        """Apply prepared writes together (what a committed step does with its memories),
        and sweep expired items away when the last sweep is `SWEEP_SECONDS` old."""
        if writes:
            now = time.time()
            self._apply(list(writes), now)
            if now - self._swept_at >= SWEEP_SECONDS:
                self._swept_at = now
                self._sweep(now)

    # -- the async twins --------------------------------------------------------------------------

    async def aput(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
                   index: bool | Sequence[str] | None = None, *, ttl: Any = NOT_GIVEN) -> None:
        prepared = await self.prepare([self.write(namespace, key, value, index=index, ttl=ttl)])
        await self.aapply(prepared)

    async def adelete(self, namespace: Sequence[str], key: str) -> None:
        await self.aapply([self.write(namespace, key, None)[0]])

    async def aget(self, namespace: Sequence[str], key: str, *,
                   refresh_ttl: bool | None = None) -> Item | None:
        return await self._off_loop(self.get, namespace, key, refresh_ttl=refresh_ttl)

    async def asearch(self, namespace_prefix: Sequence[str] = (), /, *, query: str | None = None,
                      filter: Mapping[str, Any] | None = None, limit: int = 10,
                      offset: int = 0, refresh_ttl: bool | None = None) -> list[Item]:
        prefix, conditions, limit, offset = self._search_args(namespace_prefix, filter, limit,
                                                              offset)
        now, refresh = time.time(), self._refresh(refresh_ttl)
        if query is None:
            return await self._off_loop(self._search, prefix, conditions, limit, offset, now,
                                        refresh)
        index = self._index_for(query)
        [vector] = await index.embed_async([query])
        return await self._off_loop(self._vector_search, prefix, conditions, vector, limit,
                                    offset, now, refresh)

    async def alist_namespaces(self, *, prefix: Sequence[str] | None = None,
                               suffix: Sequence[str] | None = None,
                               max_depth: int | None = None, limit: int = 100,
                               offset: int = 0) -> list[Namespace]:
        return await self._off_loop(self.list_namespaces, prefix=prefix, suffix=suffix,
                                    max_depth=max_depth, limit=limit, offset=offset)

    async def asweep(self) -> int:
        return await self._off_loop(self.sweep)

    async def aapply(self, writes: Sequence[StoreWrite]) -> None:
        await self._off_loop(self.apply, writes)

    async def _off_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking primitive from async code: in a worker thread (a store in memory
        overrides this to call it at once)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------

    def _refresh(self, refresh_ttl: bool | None) -> bool:
        """Whether a read restarts times to live: never on a read-only store."""
        if self.read_only:
            return False
        return self.refresh_on_read if refresh_ttl is None else bool(refresh_ttl)

    def _search_args(self, prefix: Sequence[str], filter: Mapping[str, Any] | None,
                     limit: int, offset: int) -> tuple[Namespace, list[Condition], int, int]:
        ns = check_namespace(prefix, what="namespace_prefix")
        limit, offset = check_page(limit, offset)
        return ns, check_filter(filter), limit, offset

    def _index_for(self, query: object) -> IndexConfig:
        if not isinstance(query, str):
            raise StoreError(f"query must be text, got {type(query).__name__}.")
        if self.index is None:
            raise StoreError(f"search(query=...) needs a store made with an index: "
                             f"{type(self).__name__}(..., index={{'embed': fn, 'dims': n, "
                             "'fields': [...]}}).")
        return self.index

    # -- what each store provides (blocking, safe from any thread) --------------------------------

    @abstractmethod
    def _apply(self, writes: list[StoreWrite], now: float) -> None:
        """Apply the writes in one transaction, in order (a later write of a key wins)."""

    @abstractmethod
    def _get(self, namespace: Namespace, key: str, now: float, refresh: bool) -> Item | None:
        """The live item at that address (`refresh`: its expiry moved on)."""

    @abstractmethod
    def _search(self, prefix: Namespace, conditions: list[Condition], limit: int, offset: int,
                now: float, refresh: bool) -> list[Item]:
        """Live items under `prefix` meeting the conditions, newest first, one page."""

    @abstractmethod
    def _vector_search(self, prefix: Namespace, conditions: list[Condition],
                       vector: list[float], limit: int, offset: int, now: float,
                       refresh: bool) -> list[Item]:
        """Live items under `prefix` meeting the conditions, most similar first, scored."""

    @abstractmethod
    def _namespaces(self, prefix: Namespace, now: float) -> list[Namespace]:
        """The namespaces of live items under `prefix`."""

    @abstractmethod
    def _sweep(self, now: float) -> int:
        """Delete expired items; how many."""


def select_namespaces(found: Sequence[Namespace], suffix: Namespace, max_depth: int | None,
                      limit: int, offset: int) -> list[Namespace]:
    """`list_namespaces`' answer from the namespaces found under its prefix."""
    chosen = {ns[:max_depth] if max_depth is not None else ns for ns in found
              if not suffix or ns[-len(suffix):] == suffix}
    return sorted(chosen)[offset:offset + limit]


def _fields(namespace: Namespace, key: str, index: object) -> list[str]:
    if isinstance(index, str) or not isinstance(index, Sequence) or \
            not all(isinstance(f, str) and f for f in index):
        raise StoreError(f"put {key!r} in {namespace!r}: index must be False or a list of "
                         f"field paths, got {index!r}.")
    return list(index)


__all__ = ["NOT_GIVEN", "SWEEP_SECONDS", "BaseStore", "select_namespaces"]
