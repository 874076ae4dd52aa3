"""Stock reducers: how successive or concurrent updates of one field merge.

A reducer is any two-argument callable `fn(current, update) -> new`. Attach one to a field with
`Annotated[T, reducer]`. Reducers must not mutate their arguments: the executor keeps earlier
states (for history and resume) and shares values between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["append", "keep_latest_non_none", "merge_dicts", "union"]


def append(current: Sequence[T] | None, update: Sequence[T] | None) -> list[T]:
    """Concatenate: `[*current, *update]`. Accepts any sequences, returns a new list."""
    if not update:
        return list(current or ())
    if not current:
        return list(update)
    return [*current, *update]


def merge_dicts(current: Mapping[Any, T] | None, update: Mapping[Any, T] | None) -> dict[Any, T]:
    """Shallow dict merge: keys of `update` win. Returns a new dict."""
    merged = dict(current or {})
    merged.update(update or {})
    return merged


def union(current: set[T] | frozenset[T] | None, update: set[T] | frozenset[T] | None) -> set[T]:
    """Set union. Returns a new set."""
    return set(current or ()) | set(update or ())


def keep_latest_non_none(current: T | None, update: T | None) -> T | None:
    """The update, unless it is None: then the current value is kept."""
    return current if update is None else update
