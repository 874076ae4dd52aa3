"""Upgrading stored states when the state model changes: `StateGraph(State, migrations=[...])`.

A run stores its state as JSON: snapshots of the whole state and the writes of each step. When
a later version of the code renames or removes a field, what is stored still has the old
field. Reading it with the new model would silently drop that field, so instead a stored field
the model no longer has is an error naming the thread, checkpoint and field, unless a
migration says what became of it:

- `Rename("count", "total")`: the stored `count` is read as `total`;
- `Rename("price", "price_cents", convert=lambda dollars: round(dollars * 100))`: read as
  `price_cents`, converted (only data stored under the old name is converted, so data the new
  version writes is never converted twice);
- `Drop("legacy_flag")`: the stored field is no longer wanted; it is ignored.

Migrations apply, in order, to every stored snapshot and every stored write when it is read;
nothing is rewritten in the store. A value of a kept field that no longer validates is an
error naming the field too: make the new type accept the old values (a wider type, a
`mode="before"` validator) or rename the field with a `convert`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Rename:
    """Stored `old` is read as `new`, through `convert` when given."""

    old: str
    new: str
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """Stored `field` is ignored: the model no longer has it, on purpose."""

    field: str


Migration = Rename | Drop


class UnknownStoredFields(ValueError):
    """Stored data has fields the state model does not have and no migration covers."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        super().__init__(", ".join(map(repr, self.fields)))


def old_names(migrations: Sequence[Migration]) -> frozenset[str]:
    """The stored field names the migrations take care of."""
    return frozenset(m.old if isinstance(m, Rename) else m.field for m in migrations)


def migrate(data: dict[str, Any], migrations: Sequence[Migration]) -> dict[str, Any]:
    """`data` (a stored state or update, as a dict) with the migrations applied, in order."""
    data = dict(data)
    for migration in migrations:
        if isinstance(migration, Rename):
            if migration.old in data:
                value = data.pop(migration.old)
                if migration.convert is not None:
                    value = migration.convert(value)
                data.setdefault(migration.new, value)
        else:
            data.pop(migration.field, None)
    return data
