"""Semantic search for the stores: the index configuration, embedding what is put (the user's
function, sync or async, called once per batch), and ranking by cosine similarity.

    index={"embed": my_embed, "dims": 384, "fields": ["text"]}

`embed` takes a list of texts and returns one vector per text; a LangChain-style object with
`embed_documents`/`aembed_documents` (and `embed_query`) works too. Nothing is downloaded.
`fields` are the value's fields whose text is embedded (dotted paths reach inside; "$" is the
whole value as JSON); an item matches a query by its best field. Vectors are stored as unit
float32 rows, so a search is one matrix product (numpy, the `search` extra).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .store_types import StoreError

if TYPE_CHECKING:
    import numpy


def numpy_module() -> Any:
    try:
        import numpy
    except ImportError:
        raise StoreError("semantic search needs numpy: pip install 'statemachine[search]' "
                         "(or numpy).") from None
    return numpy


@dataclass(frozen=True)
class IndexConfig:
    """How a store embeds what is put, for `search(query=...)`."""

    embed: Any
    dims: int
    fields: tuple[str, ...] = ("$",)

    @classmethod
    def of(cls, index: Mapping[str, Any] | IndexConfig | None) -> IndexConfig | None:
        if index is None or isinstance(index, IndexConfig):
            return index
        if not isinstance(index, Mapping):
            raise StoreError("index must be a dict: {'embed': function, 'dims': 384, "
                             "'fields': ['text']}.")
        unknown = set(index) - {"embed", "dims", "fields"}
        if unknown:
            raise StoreError(f"index: unknown option(s) {', '.join(sorted(unknown))}; it takes "
                             "embed, dims and fields.")
        embed, dims = index.get("embed"), index.get("dims")
        if not (callable(embed) or hasattr(embed, "embed_documents")
                or hasattr(embed, "aembed_documents")):
            raise StoreError("index['embed'] must be a function from a list of texts to a list "
                             "of vectors (sync or async), or an object with embed_documents.")
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise StoreError(f"index['dims'] must be a positive whole number, got {dims!r}.")
        fields = index.get("fields", ["$"])
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields or \
                not all(isinstance(f, str) and f for f in fields):
            raise StoreError("index['fields'] must be a list of field paths, like ['text'].")
        numpy_module()  # now, not at the first put
        return cls(embed, dims, tuple(fields))

    def texts(self, value: Mapping[str, Any], fields: Sequence[str] | None = None
              ) -> dict[str, str]:
        """The text of each indexed field the value has (field path -> text)."""
        out: dict[str, str] = {}
        for path in fields or self.fields:
            if path == "$":
                out[path] = json.dumps(value, ensure_ascii=False, sort_keys=True)
                continue
            found: Any = value
            for part in path.split("."):
                if not isinstance(found, Mapping) or part not in found:
                    found = None
                    break
                found = found[part]
            if found is None:
                continue
            out[path] = found if isinstance(found, str) else json.dumps(found, sort_keys=True)
        return out

    # -- embedding ----------------------------------------------------------------------------

    def embed_sync(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        fn = self._documents_fn(asynchronous=False)
        result = fn(texts)
        if inspect.isawaitable(result):
            from ._sync import run_sync

            awaitable = result
            result = run_sync(lambda: _awaited(awaitable))
        return self._checked(texts, result)

    async def embed_async(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        fn = self._documents_fn(asynchronous=True)
        if _is_async(fn):
            result = await fn(texts)
        else:  # a sync embedding may be slow (a model, a network call): not on the loop
            result = await asyncio.to_thread(fn, texts)
            if inspect.isawaitable(result):
                result = await result
        return self._checked(texts, result)

    def _documents_fn(self, *, asynchronous: bool) -> Callable[[list[str]], Any]:
        embed = self.embed
        if asynchronous and hasattr(embed, "aembed_documents"):
            return embed.aembed_documents
        if hasattr(embed, "embed_documents"):
            return embed.embed_documents
        if hasattr(embed, "aembed_documents"):
            return embed.aembed_documents
        return embed

    def _checked(self, texts: list[str], vectors: Any) -> list[list[float]]:
        try:
            rows = [list(map(float, v)) for v in vectors]
        except (TypeError, ValueError):
            raise StoreError("the index's embed function must return a list of vectors (lists "
                             "of numbers).") from None
        if len(rows) != len(texts):
            raise StoreError(f"the index's embed function returned {len(rows)} vectors for "
                             f"{len(texts)} texts.")
        for row in rows:
            if len(row) != self.dims:
                raise StoreError(f"the index's embed function returned a vector of "
                                 f"{len(row)} numbers; the index has dims={self.dims}.")
            if not all(math.isfinite(x) for x in row):
                raise StoreError("the index's embed function returned a vector holding NaN "
                                 "or infinity.")
        return [unit(row) for row in rows]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004


def unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row] if norm > 0 else row


def to_bytes(vector: Sequence[float]) -> bytes:
    np = numpy_module()
    return bytes(np.asarray(vector, dtype="<f4").tobytes())


def from_bytes(data: bytes) -> list[float]:
    np = numpy_module()
    return [float(x) for x in np.frombuffer(data, dtype="<f4")]


class VectorTable:
    """The indexed vectors of some items as one matrix: rows (unit vectors) and the item each
    row belongs to, ranked against a query by one matrix product."""

    def __init__(self, owners: list[Any], rows: Sequence[bytes] | Sequence[Sequence[float]],
                 dims: int) -> None:
        np = numpy_module()
        self.owners = owners  # one per row: the item's address
        if rows and isinstance(rows[0], bytes | bytearray | memoryview):
            data = b"".join(bytes(r) for r in rows)  # type: ignore[arg-type]
            self.matrix: numpy.ndarray = np.frombuffer(data, dtype="<f4").reshape(-1, dims)
        else:
            self.matrix = np.asarray(rows, dtype="<f4").reshape(-1, dims)

    def best(self, query: Sequence[float], keep: Callable[[Any], bool] | None = None
             ) -> dict[Any, float]:
        """Each item's best cosine similarity to `query` (items `keep` refuses left out)."""
        if not self.owners:
            return {}
        np = numpy_module()
        scores = self.matrix @ np.asarray(query, dtype="<f4")
        best: dict[Any, float] = {}
        for owner, score in zip(self.owners, scores.tolist(), strict=True):
            if keep is not None and not keep(owner):
                continue
            if owner not in best or score > best[owner]:
                best[owner] = score
        return best


__all__ = ["IndexConfig", "VectorTable", "from_bytes", "numpy_module", "to_bytes", "unit"]
