"""Long-term memory inside a run: `ctx.store`, the compiled store as one task sees it.

A task's puts and deletes are kept in a buffer, not sent to the store: when the task
finishes, they are embedded (one batch) and committed with it, in the transaction of its
pending write or of its step's checkpoint (`Committer`), so a node that fails, is retried,
pauses or is re-run after a crash leaves no half-done or doubled memory. Its own reads see
its buffered writes over what is stored. Outside a run, a store's writes apply at once.

Without a checkpointer the writes of a step apply when the step's updates are merged; a
`MemoryStore` beside a checkpointer gets them right after each commit (both live in this
process, so nothing can come between them that a crash would not lose anyway). Any other
store must live in the checkpointer's database (`Checkpointer.commits_memory_of`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from checkpoints.base import Checkpointer
from checkpoints.memory import MemoryCheckpointer
from checkpoints.store_base import NOT_GIVEN, BaseStore, select_namespaces
from checkpoints.store_memory import MemoryStore
from checkpoints.store_types import (
    Item,
    Namespace,
    StoreWrite,
    check_filter,
    check_item_namespace,
    check_key,
    check_namespace,
    check_page,
    matches,
    under,
)
from checkpoints.store_vectors import VectorTable

from .errors import GraphValidationError, Problem

Buffered = tuple[StoreWrite, dict[str, str]]
"""A buffered write and the texts of it to embed."""


def check_store(store: object, checkpointer: Checkpointer | None) -> BaseStore | None:
    """The compiled store, checked: a store whose writes cannot commit with the steps of
    this checkpointer is refused (it would keep a crashed step's memories, or lose them)."""
    if store is None:
        return None
    if not isinstance(store, BaseStore):
        raise GraphValidationError([Problem(
            "invalid_option", f"store must be a checkpoints store (MemoryStore, SQLiteStore, "
            f"PostgresStore), got {type(store).__name__}.")])
    if store.read_only:
        raise GraphValidationError([Problem(
            "invalid_option", f"store {store!r} is read-only: nodes could not write to it. "
            "Compile with a store opened for writing.")])
    if checkpointer is not None and not isinstance(checkpointer, MemoryCheckpointer) and \
            not isinstance(store, MemoryStore) and not checkpointer.commits_memory_of(store):
        raise GraphValidationError([Problem(
            "invalid_option", f"store {store!r} is not in the database of checkpointer "
            f"{checkpointer!r}, so a step's memories could not commit with the step: give "
            "both the same file (SQLiteStore and SQLiteCheckpointer) or the same PostgreSQL "
            "database and schema.")])
    return store


def store_beside(saver: Checkpointer, like: BaseStore | None = None) -> BaseStore | None:
    """A store in `saver`'s database, configured as `like` (its index, ttl): what a graph
    gets when it is put on another checkpointer (the command line's --db). A `MemoryStore`
    stays itself; None for a checkpointer in memory, or when `saver` is read-only and no
    store was asked for."""
    if isinstance(like, MemoryStore):
        return like
    read_only = bool(getattr(saver, "read_only", False))
    if like is None and read_only:
        return None
    options: dict[str, Any] = {"read_only": read_only}
    if like is not None:
        options.update(index=like.index, ttl=like.default_ttl,
                       refresh_on_read=like.refresh_on_read)
    store: BaseStore | None = saver.open_store(**options)
    return store


def check_subgraph_stores(spec: Any, checkpointer: Checkpointer | None,
                          store: BaseStore | None) -> None:
    """A subgraph's own store runs with this graph's checkpointer (when this graph has no
    store of its own): it must pass the same check."""
    for node in spec.nodes.values():
        if node.subgraph is None:
            continue
        child = node.subgraph.graph
        if store is None and child.store is not None:
            check_store(child.store, checkpointer)
        check_subgraph_stores(child.spec, checkpointer, store or child.store)


class TaskStore:
    """`ctx.store`: reads see the store and this task's own writes; writes wait for the
    task to finish and commit with it (see the module). Sync calls block; async nodes
    should await the `a` twins."""

    def __init__(self, store: BaseStore, buffer: list[Buffered]) -> None:
        self.store = store
        self._buffer = buffer

    def __repr__(self) -> str:
        return f"<{self.store!r} as a task sees it: {len(self._buffer)} buffered writes>"

    # -- writes --------------------------------------------------------------------------------

    def put(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
            index: bool | Sequence[str] | None = None, *, ttl: Any = NOT_GIVEN) -> None:
        """Put `value` when the task commits (checked now: a value that is not JSON fails the
        node here, naming the namespace and key)."""
        self._buffer.append(self.store.write(namespace, key, value, index=index, ttl=ttl))

    def delete(self, namespace: Sequence[str], key: str) -> None:
        self._buffer.append(self.store.write(namespace, key, None))

    async def aput(self, namespace: Sequence[str], key: str, value: Mapping[str, Any],
                   index: bool | Sequence[str] | None = None, *, ttl: Any = NOT_GIVEN) -> None:
        self.put(namespace, key, value, index, ttl=ttl)

    async def adelete(self, namespace: Sequence[str], key: str) -> None:
        self.delete(namespace, key)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, namespace: Sequence[str], key: str, *,
            refresh_ttl: bool | None = None) -> Item | None:
        ns = check_item_namespace(namespace)
        mine = self._latest().get((ns, check_key(ns, key)))
        if mine is not None:
            return self._own(mine, self.store.get(ns, key))
        return self.store.get(ns, key, refresh_ttl=refresh_ttl)

    async def aget(self, namespace: Sequence[str], key: str, *,
                   refresh_ttl: bool | None = None) -> Item | None:
        ns = check_item_namespace(namespace)
        mine = self._latest().get((ns, check_key(ns, key)))
        if mine is not None:
            return self._own(mine, await self.store.aget(ns, key))
        return await self.store.aget(ns, key, refresh_ttl=refresh_ttl)

    def search(self, namespace_prefix: Sequence[str] = (), /, *, query: str | None = None,
               filter: Mapping[str, Any] | None = None, limit: int = 10, offset: int = 0,
               refresh_ttl: bool | None = None) -> list[Item]:
        if not self._buffer:
            return self.store.search(namespace_prefix, query=query, filter=filter,
                                     limit=limit, offset=offset, refresh_ttl=refresh_ttl)
        limit, offset = check_page(limit, offset)
        stored = self.store.search(namespace_prefix, query=query, filter=filter,
                                   limit=limit + offset + len(self._buffer),
                                   refresh_ttl=refresh_ttl)
        vectors = self._query_vectors(query, namespace_prefix, filter, sync=True)
        return self._merged(stored, namespace_prefix, filter, vectors)[offset:offset + limit]

    async def asearch(self, namespace_prefix: Sequence[str] = (), /, *,
                      query: str | None = None, filter: Mapping[str, Any] | None = None,
                      limit: int = 10, offset: int = 0,
                      refresh_ttl: bool | None = None) -> list[Item]:
        if not self._buffer:
            return await self.store.asearch(namespace_prefix, query=query, filter=filter,
                                            limit=limit, offset=offset,
                                            refresh_ttl=refresh_ttl)
        limit, offset = check_page(limit, offset)
        stored = await self.store.asearch(namespace_prefix, query=query, filter=filter,
                                          limit=limit + offset + len(self._buffer),
                                          refresh_ttl=refresh_ttl)
        vectors = await self._aquery_vectors(query, namespace_prefix, filter)
        return self._merged(stored, namespace_prefix, filter, vectors)[offset:offset + limit]

    def list_namespaces(self, *, prefix: Sequence[str] | None = None,
                        suffix: Sequence[str] | None = None, max_depth: int | None = None,
                        limit: int = 100, offset: int = 0) -> list[Namespace]:
        """The store's namespaces and those this task put items in (a namespace this task
        emptied with deletes is still listed until it commits)."""
        stored = self.store.list_namespaces(prefix=prefix, max_depth=None, limit=10**9)
        return self._namespaces(stored, prefix, suffix, max_depth, limit, offset)

    def _namespaces(self, stored: list[Namespace], prefix: Sequence[str] | None,
                    suffix: Sequence[str] | None, max_depth: int | None, limit: int,
                    offset: int) -> list[Namespace]:
        start = check_namespace(prefix or (), what="prefix")
        mine = [w.namespace for w in self._latest().values()
                if w.value is not None and under(w.namespace, start)]
        return select_namespaces([*stored, *mine], check_namespace(suffix or (), what="suffix"),
                                 max_depth, *check_page(limit, offset))

    async def alist_namespaces(self, *, prefix: Sequence[str] | None = None,
                               suffix: Sequence[str] | None = None,
                               max_depth: int | None = None, limit: int = 100,
                               offset: int = 0) -> list[Namespace]:
        stored = await self.store.alist_namespaces(prefix=prefix, max_depth=None, limit=10**9)
        return self._namespaces(stored, prefix, suffix, max_depth, limit, offset)

    # -- the overlay ---------------------------------------------------------------------------

    def _latest(self) -> dict[tuple[Namespace, str], StoreWrite]:
        return {w.address: w for w, _ in self._buffer}

    def _own(self, write: StoreWrite, stored: Item | None) -> Item | None:
        if write.value is None:
            return None
        now = time.time()
        return Item(write.namespace, write.key, json.loads(write.value),
                    stored.created_at if stored is not None else now, now, None,
                    None if write.ttl is None else now + write.ttl)

    def _query_vectors(self, query: str | None, prefix: Sequence[str],
                       filter: Mapping[str, Any] | None, *, sync: bool
                       ) -> dict[tuple[Namespace, str], float] | None:
        if query is None or self.store.index is None:
            return None
        texts, owners = self._buffered_texts(prefix, filter)
        vectors = self.store.index.embed_sync([query, *texts])
        return _scores(vectors, owners)

    async def _aquery_vectors(self, query: str | None, prefix: Sequence[str],
                              filter: Mapping[str, Any] | None
                              ) -> dict[tuple[Namespace, str], float] | None:
        if query is None or self.store.index is None:
            return None
        texts, owners = self._buffered_texts(prefix, filter)
        vectors = await self.store.index.embed_async([query, *texts])
        return _scores(vectors, owners)

    def _buffered_texts(self, prefix: Sequence[str], filter: Mapping[str, Any] | None
                        ) -> tuple[list[str], list[tuple[Namespace, str]]]:
        texts: list[str] = []
        owners: list[tuple[Namespace, str]] = []
        for write, fields in self._candidates(prefix, filter):
            for text in fields.values():
                texts.append(text)
                owners.append(write.address)
        return texts, owners

    def _candidates(self, prefix: Sequence[str], filter: Mapping[str, Any] | None
                    ) -> list[Buffered]:
        start = check_namespace(prefix, what="namespace_prefix")
        conditions = check_filter(filter)
        latest = self._latest()
        return [(w, f) for w, f in self._buffer
                if latest[w.address] is w and w.value is not None and under(w.namespace, start)
                and matches(json.loads(w.value), conditions)]

    def _merged(self, stored: list[Item], prefix: Sequence[str],
                filter: Mapping[str, Any] | None,
                scores: dict[tuple[Namespace, str], float] | None) -> list[Item]:
        touched = set(self._latest())
        mine = [self._own(w, None) for w, _ in self._candidates(prefix, filter)]
        own = [Item(i.namespace, i.key, i.value, i.created_at, i.updated_at,
                    None if scores is None else scores.get((i.namespace, i.key)), i.expires_at)
               for i in mine if i is not None]
        kept = [i for i in stored if (i.namespace, i.key) not in touched]
        if scores is None:
            return own[::-1] + kept  # newest first: this task's writes are the newest
        return sorted(own + kept, key=lambda i: -(i.score if i.score is not None else -2.0))


def _scores(vectors: list[list[float]], owners: list[tuple[Namespace, str]]
            ) -> dict[tuple[Namespace, str], float]:
    """Each buffered item's best similarity to the query (`vectors[0]`), as the stores rank."""
    query, rows = vectors[0], vectors[1:]
    return VectorTable(owners, rows, len(query)).best(query)


__all__ = ["Buffered", "TaskStore", "check_store", "store_beside"]
