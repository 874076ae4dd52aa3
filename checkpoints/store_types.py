"""What every store shares: items, the writes a store applies, and the checks on what users
give it (namespaces, keys, values, filters), so each store refuses the same things with the
same words."""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from .errors import StateMachineError

Namespace = tuple[str, ...]
"""Where an item lives: ("users", "u1", "memories"). Labels are non-empty text."""

SEPARATOR = "\x1f"
"""Between a namespace's labels as stored (a label may not hold it): ("a", "b") is "a\\x1fb",
so the items under a prefix are one range of an index."""

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")


class StoreError(StateMachineError, ValueError):
    """What was given to a store cannot be stored or asked: a bad namespace or key, a value that
    is not JSON, an unknown filter operator. The message names the namespace and key."""


@dataclass(frozen=True, slots=True)
class Item:
    """One stored value. `score` is set by a search with `query` (cosine similarity)."""

    namespace: Namespace
    key: str
    value: dict[str, Any]
    created_at: float
    """When the key was first put in its namespace (seconds since the epoch)."""
    updated_at: float
    score: float | None = None
    expires_at: float | None = field(default=None, compare=False)
    """When it expires (None: never); a read with `refresh_ttl` moves it on."""


@dataclass(slots=True)  # not frozen: made on every put, where a frozen init costs 4x
class StoreWrite:
    """A put (value given) or a delete (value None), ready to apply: checked, its value as
    JSON, its embeddings made."""

    namespace: Namespace
    key: str
    value: str | None
    """The value as JSON text; None deletes the item."""
    ttl: float | None = None
    """Seconds it lives (None: for ever)."""
    vectors: dict[str, list[float]] | None = None
    """The embeddings of its indexed fields (field path -> unit vector), when indexed."""

    @property
    def address(self) -> tuple[Namespace, str]:
        return self.namespace, self.key


def check_namespace(namespace: object, *, what: str = "namespace") -> Namespace:
    """`namespace` as a tuple of labels, or a StoreError saying what is wrong with it."""
    if type(namespace) is not tuple and (isinstance(namespace, str) or  # tuples: at once
                                         not isinstance(namespace, Sequence)):
        raise StoreError(f"{what} must be a tuple of text labels, like ('users', 'u1'), "
                         f"not {type(namespace).__name__} {namespace!r}.")
    labels = tuple(namespace)
    for label in labels:
        if not isinstance(label, str) or not label:
            raise StoreError(f"{what} {labels!r}: every label must be non-empty text, got "
                             f"{label!r}.")
        if SEPARATOR in label:
            raise StoreError(f"{what} {labels!r}: a label may not contain the control "
                             "character \\x1f.")
        _storable_text(label, lambda: f"{what} {labels!r}")
    return labels


def _storable_text(text: str, where: Callable[[], str]) -> None:
    """Text every store keeps as it is: UTF-8 (no lone surrogates) and no NUL character,
    which PostgreSQL cannot hold in text. `where()` says whose text it is (made only for an
    error: this runs on every write)."""
    if "\x00" in text:
        raise StoreError(f"{where()}: holds a NUL character (\\x00), which cannot be stored.")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise StoreError(f"{where()}: holds a lone surrogate, which is not UTF-8 "
                             "text.") from None


def check_item_namespace(namespace: object) -> Namespace:
    if type(namespace) is tuple:
        try:
            if namespace in _ITEM_NAMESPACES:  # checked before
                return namespace
        except TypeError:
            pass  # an unhashable label: the check below says what is wrong with it
    labels = check_namespace(namespace)
    if not labels:
        raise StoreError("an item's namespace needs at least one label, like ('memories',).")
    if type(namespace) is tuple:
        if len(_ITEM_NAMESPACES) >= 4096:
            _ITEM_NAMESPACES.clear()
        _ITEM_NAMESPACES[labels] = len(encode_namespace(labels).encode())
    return labels


_ITEM_NAMESPACES: dict[Namespace, int] = {}
"""Item namespaces found good (a tuple of text labels is immutable), with their size stored:
a node writing memories puts under a few namespaces again and again, so each is checked once,
not on every put."""

ADDRESS_BYTES = 2_000
"""The most a put's namespace (its labels joined) and key may take together, in UTF-8 bytes:
the same in every store, where PostgreSQL's index on them holds about 2,700 bytes a row."""


def check_address(namespace: Namespace, key: str) -> None:
    """That an item's namespace and key are not too long to store (`ADDRESS_BYTES`)."""
    stored = _ITEM_NAMESPACES.get(namespace)
    if stored is None:
        stored = len(encode_namespace(namespace).encode())
    if stored + 4 * len(key) <= ADDRESS_BYTES:  # at once: a character is 4 bytes at most
        return
    size = stored + len(key.encode())
    if size > ADDRESS_BYTES:
        shown = key if len(key) <= 40 else f"{key[:40]!s}…"
        raise StoreError(f"the key {shown!r} in namespace {_cut(namespace)} is too long: with "
                         f"its namespace it takes {size:,} bytes of UTF-8, and a store keeps "
                         f"at most {ADDRESS_BYTES:,}.")


def _cut(namespace: Namespace) -> str:
    text = repr(namespace)
    return text if len(text) <= 80 else f"{text[:80]}…"


def check_key(namespace: Namespace, key: object) -> str:
    if type(key) is str and key and key.isascii() and "\x00" not in key:  # most keys, at once
        return key
    if not isinstance(key, str) or not key:
        raise StoreError(f"the key in namespace {namespace!r} must be non-empty text, got "
                         f"{key!r}.")
    _storable_text(key, lambda: f"the key {key!r} in namespace {namespace!r}")
    return key


def encode_value(namespace: Namespace, key: str, value: object) -> str:
    """`value` (a dict: pydantic models and dataclasses inside it are fine) as JSON text."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise StoreError(f"the value of {key!r} in namespace {namespace!r} must be a dict, "
                         f"got {type(value).__name__}.")
    try:  # pydantic's JSON in one call (a step's hot path)
        raw: bytes | None = to_json(value)
    except (PydanticSerializationError, TypeError, ValueError):
        raw = None  # the conversion below says what is wrong (a lone surrogate lands here)
    if raw is not None:  # (str's `in` is several times faster than bytes')
        text = raw.decode()  # UTF-8 by construction, control characters escaped
        if "NaN" not in text and "Infinity" not in text:
            if "\\u0000" in text and _ESCAPED_NUL.search(text):  # the one to look for
                raise _nul_error(namespace, key)
            return text
    # pydantic writes NaN and infinities as bare words (not JSON): refuse those
    try:
        text = _dumps(to_jsonable_python(value))
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise StoreError(f"the value of {key!r} in namespace {namespace!r} cannot be "
                         f"stored as JSON: {_reason(exc)}") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise _nul_error(namespace, key)
    _storable_text(text, lambda: f"the value of {key!r} in namespace {namespace!r}")
    return text


_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""A NUL character in JSON text: \\u0000 after an even number of backslashes (after an odd
number it is the text "\\u0000", which may be stored)."""


def _nul_error(namespace: Namespace, key: str) -> StoreError:
    # JSON has it; PostgreSQL's jsonb (and text) do not
    return StoreError(f"the value of {key!r} in namespace {namespace!r} holds a NUL "
                      "character (\\u0000), which cannot be stored.")


_dumps = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    found = re.search(r"unknown type: <class '([^']+)'>", text)
    if found:
        return f"it holds a {found[1].rsplit('.', 1)[-1]}, which is not JSON"
    return text


def check_ttl(ttl: object, *, what: str = "ttl") -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise StoreError(f"{what} must be positive seconds or None, got {ttl!r}.")
    return float(ttl)


def encode_namespace(namespace: Namespace) -> str:
    return SEPARATOR.join(namespace)


def decode_namespace(text: str) -> Namespace:
    return tuple(text.split(SEPARATOR)) if text else ()


def prefix_range(prefix: Namespace) -> tuple[str, str] | None:
    """The stored namespaces under `prefix` (itself and deeper) are those equal to the first
    value or in [first + SEPARATOR, second): None for the empty prefix (everything)."""
    if not prefix:
        return None
    text = encode_namespace(prefix)
    return text, text + chr(ord(SEPARATOR) + 1)


def under(namespace: Namespace, prefix: Namespace) -> bool:
    return namespace[:len(prefix)] == prefix


# -- filters ---------------------------------------------------------------------------------------

Condition = tuple[str, str, Any]
"""A filter condition: (top-level field, operator, JSON-plain value)."""


def check_filter(filter: Mapping[str, Any] | None) -> list[Condition]:
    """A search filter as conditions: {"kind": "pref"} is equality, {"n": {"$gte": 3}} a
    comparison; several keys (and operators) must all hold."""
    if filter is None:
        return []
    if not isinstance(filter, Mapping):
        raise StoreError(f"filter must be a dict of field conditions, got "
                         f"{type(filter).__name__}.")
    conditions: list[Condition] = []
    for name, wanted in filter.items():
        if not isinstance(name, str) or not name:
            raise StoreError(f"filter keys are top-level field names, got {name!r}.")
        if isinstance(wanted, Mapping) and wanted and all(
                isinstance(k, str) and k.startswith("$") for k in wanted):
            for op, value in wanted.items():
                if op not in OPERATORS:
                    raise StoreError(f"filter on {name!r}: unknown operator {op!r}; use one of "
                                     f"{', '.join(OPERATORS)}.")
                conditions.append((name, op, _plain(name, value)))
        else:
            conditions.append((name, "$eq", _plain(name, wanted)))
    return conditions


def _plain(name: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(to_jsonable_python(value)))
    except (PydanticSerializationError, TypeError, ValueError):
        raise StoreError(f"filter on {name!r}: the value {value!r} is not JSON.") from None


def matches(value: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Whether a stored value meets every condition. A missing field meets only `$ne`;
    comparisons between a number and anything else, or text and anything else, are false."""
    for name, op, wanted in conditions:
        present = name in value
        have = value.get(name)
        if op == "$eq":
            ok = present and _same(have, wanted)
        elif op == "$ne":
            ok = not present or not _same(have, wanted)
        else:
            ok = present and _ordered(have, op, wanted)
        if not ok:
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _ordered(have: Any, op: str, wanted: Any) -> bool:
    numbers = (int, float)
    if isinstance(have, bool) or isinstance(wanted, bool):
        return False
    if not ((isinstance(have, numbers) and isinstance(wanted, numbers))
            or (isinstance(have, str) and isinstance(wanted, str))):
        return False
    compare: Any = _COMPARISONS[op]
    return bool(compare(have, wanted))


_COMPARISONS = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
                "$lte": operator.le}


def check_page(limit: object, offset: object) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise StoreError(f"limit must be a whole number from 0, got {limit!r}.")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise StoreError(f"offset must be a whole number from 0, got {offset!r}.")
    return limit, offset


__all__ = [
    "ADDRESS_BYTES",
    "OPERATORS",
    "SEPARATOR",
    "Condition",
    "Item",
    "Namespace",
    "StoreError",
    "StoreWrite",
    "check_address",
    "check_filter",
    "check_item_namespace",
    "check_key",
    "check_namespace",
    "check_page",
    "check_ttl",
    "decode_namespace",
    "encode_namespace",
    "encode_value",
    "matches",
    "prefix_range",
    "under",
]
