"""How SQLite and PostgreSQL spell the SQL the two stores share.

The shared statements (`sql_statements.py`, `sql_retention.py`) are written once, in
SQLite's spelling with three conventions, and rendered for each database here (the tables,
`sql_schema.py`, take their column types from the dialect):

* `:name` is a named parameter (`%(name)s` for psycopg);
* `:name::type` is a parameter PostgreSQL needs the type of, because it may be NULL
  (`:since::float8 IS NULL`); SQLite, typed by value, drops the cast;
* `:now` is the clock: SQLite binds the `now` the store passes (this machine's time);
  PostgreSQL uses the server's clock instead, so workers whose clocks disagree agree on
  leases, and the value passed is ignored.

Everything else that differs is a field of `Dialect`, so the two side by side below say what
differs and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)(::\w+)?")


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one database spells its own way, and how the shared SQL is rendered for it."""

    name: str
    server_clock: str | None
    """The server's clock in SQL (seconds since the epoch); None: the store passes `now`."""
    retry_keys: bool
    """Writes carry a key that makes running them twice the same as running them once (a
    store that runs a statement again after a dropped connection needs them)."""
    returns: bool
    """Whether a write reports the row it wrote with RETURNING (PostgreSQL: it has no last row
    id); else the store reads the rows changed and the last row id off the cursor (SQLite:
    RETURNING makes its commit a third slower)."""
    lateral: bool
    """Whether `JOIN LATERAL` is there: one index lookup per row, where a correlated join may
    make the planner scan a whole table (PostgreSQL's recursive chain load, a thread's head)."""
    arrays: bool
    """Whether a list binds as an array (`= ANY(...)`); else it goes as JSON (`json_each`)."""
    strpos: str
    """The function giving the position of text in text: strpos(haystack, needle)."""
    lock_rows: str
    """What locks the rows a SELECT reads until the transaction ends (SQLite's transactions
    lock the whole file)."""
    unlimited: int | None
    """The LIMIT that means no limit."""
    float_type: str
    """Column types: a float; a row id; a row id the database assigns (the key)."""
    id_type: str
    id_key: str
    without_rowid: str
    """What follows a table keyed by its primary key alone."""
    bytes_type: str
    """Column type of raw bytes (stored vectors)."""
    binary_text: str
    """What makes a text column compare byte by byte (namespaces are searched by ranges)."""

    def render(self, template: str) -> str:
        """`template` (SQLite's spelling with the conventions above) in this dialect."""
        if self.server_clock is None:
            return _PARAMETER.sub(lambda m: f":{m[1]}", template)
        return _PARAMETER.sub(self._postgres_parameter, template.replace("%", "%%"))

    def _postgres_parameter(self, match: re.Match[str]) -> str:
        if match[1] == "now":
            assert self.server_clock is not None
            return self.server_clock
        return f"%({match[1]})s{match[2] or ''}"

    def in_list(self, column: str, parameter: str) -> str:
        """SQL testing that `column` is one of the values bound as `parameter` (`array`)."""
        if self.arrays:
            return f"{column} = ANY(:{parameter})"
        return f"{column} IN (SELECT value FROM json_each(:{parameter}))"

    def array(self, values: Iterable[object]) -> object:
        """`values` as a parameter for `in_list`."""
        return list(values) if self.arrays else json.dumps(list(values))

    def head(self, join: str = "JOIN") -> str:
        """A join of each thread `t` to its latest checkpoint, as `c`."""
        if self.lateral:
            return (f"{join} LATERAL (SELECT * FROM checkpoints WHERE thread = t.key "
                    "ORDER BY id DESC LIMIT 1) c ON true")
        return f"{join} checkpoints c ON c.id = (SELECT max(id) FROM checkpoints WHERE " \
               "thread = t.key)"

    def once(self, key: str) -> str:
        """What makes an INSERT that finds its `key` taken do nothing: with retry keys, the
        earlier run of the same write landed."""
        return f" ON CONFLICT ({key}) DO NOTHING" if self.retry_keys else ""

    def returning(self, columns: str) -> str:
        """What makes a write return `columns` of the row it wrote, where it reports so."""
        return f" RETURNING {columns}" if self.returns else ""

    def limit(self, limit: int | None) -> int | None:
        """`limit` as a LIMIT parameter (None: no limit)."""
        return self.unlimited if limit is None else limit


SQLITE = Dialect(
    name="SQLite", server_clock=None, retry_keys=False, returns=False, lateral=False,
    arrays=False, strpos="instr", lock_rows="", unlimited=-1, float_type="REAL",
    id_type="INTEGER", id_key="INTEGER PRIMARY KEY", without_rowid=" WITHOUT ROWID",
    bytes_type="BLOB", binary_text="")

POSTGRES = Dialect(
    name="PostgreSQL", server_clock="extract(epoch from clock_timestamp())", retry_keys=True,
    returns=True, lateral=True, arrays=True, strpos="strpos", lock_rows=" FOR UPDATE",
    unlimited=None, float_type="DOUBLE PRECISION", id_type="BIGINT",
    id_key="BIGSERIAL PRIMARY KEY", without_rowid="", bytes_type="BYTEA",
    binary_text=' COLLATE "C"')


__all__ = ["POSTGRES", "SQLITE", "Dialect"]
