"""How SQLite and PostgreSQL spell what the two SQL stores share.

Everything that differs is a field of `Dialect`, so the two side by side below say what
differs and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one database spells its own way."""

    name: str
    server_clock: str | None
    """The server's clock in SQL (seconds since the epoch); None: the store passes `now`."""
    retry_keys: bool
    """Writes carry a key that makes running them twice the same as running them once (a
    store that runs a statement again after a dropped connection needs them)."""
    float_type: str
    """Column types: a float; a row id; a row id the database assigns (the key)."""
    id_type: str
    id_key: str
    without_rowid: str
    """What follows a table keyed by its primary key alone."""


SQLITE = Dialect(
    name="SQLite", server_clock=None, retry_keys=False, float_type="REAL", id_type="INTEGER",
    id_key="INTEGER PRIMARY KEY", without_rowid=" WITHOUT ROWID")

POSTGRES = Dialect(
    name="PostgreSQL", server_clock="extract(epoch from clock_timestamp())", retry_keys=True,
    float_type="DOUBLE PRECISION", id_type="BIGINT", id_key="BIGSERIAL PRIMARY KEY",
    without_rowid="")


__all__ = ["POSTGRES", "SQLITE", "Dialect"]
