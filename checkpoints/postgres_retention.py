"""Retention on PostgreSQL: reading thread families, locked against runs while they are
planned and removed, inside a transaction `PostgresCheckpointer` opens. The removals are
plain DELETEs (shared with SQLite: `sql_retention.py`): PostgreSQL's autovacuum makes the
space reusable for new rows; the files themselves shrink only with `VACUUM FULL`, which locks
the tables and is left to the database's administrator (see docs/retention.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import process_space
from .retention import Family, busy_reason, in_family, is_top_level
from .rows import process_alive
from .sql_dialect import POSTGRES
from .sql_retention import Connection, RetentionSQL

_NOW = POSTGRES.server_clock


class PostgresRetention(RetentionSQL):
    """Retention's SQL on PostgreSQL: many families at once, their rows locked."""

    def read_families(self, conn: Connection, roots: Sequence[str], *, lock: bool,
                      holder: str | None = None) -> dict[str, Family]:
        """The family of each of `roots`: its threads, their checkpoints' shape, who holds
        them. With `lock`, every member's row is locked (FOR UPDATE, in key order) until the
        transaction ends: a run cannot take one of them, nor commit to it, meanwhile. A lease
        counts while it has not expired by the server's clock, unless its holder was a process
        of this machine that is gone; the run `holder` (releasing the thread) does not
        count."""
        match, params = _members(roots)
        here = process_space()
        members = [row for row in conn.execute(
            f"SELECT key, thread_id, owner, owner_pid, owner_host, lease_expires > {_NOW} "
            f"FROM threads WHERE {match} ORDER BY key" + (" FOR UPDATE" if lock else ""),
            params).fetchall()]
        families = {root: Family(root, {}) for root in roots}

        def family_of(name: str) -> Family | None:
            top = families.get(name.split("::", 1)[0])  # the family of a top-level root
            return top if top is not None else \
                next((f for root, f in families.items() if in_family(root, name)), None)

        names: dict[int, str] = {}
        for key, name, owner, pid, host, live in members:
            family = family_of(name)
            if family is None:
                continue
            names[key] = name
            family.threads[name] = []
            if owner is not None and owner != holder and live and \
                    not (host == here and not process_alive(pid)):
                family.busy[name] = busy_reason(name, job=False)
        for (name,) in conn.execute(
                f"SELECT thread_id FROM jobs WHERE {match} AND status = 'running' AND "
                f"claimed_until > {_NOW}", params):
            family = family_of(name)
            if family is not None:
                family.busy.setdefault(name, busy_reason(name, job=True))
        for name, checkpoint in self.checkpoints_of(conn, names):
            owner_family = family_of(name)
            assert owner_family is not None  # names holds members of the families only
            owner_family.threads[name].append(checkpoint)
        for root, family in families.items():
            family.parent_head = self.parent_head(conn, root)
        return families


RETENTION = PostgresRetention(POSTGRES)


def _members(roots: Sequence[str], column: str = "thread_id") -> tuple[str, dict[str, Any]]:
    """SQL matching the threads of the families of `roots`, compared as text (never as a LIKE
    pattern): top-level roots by the part before the first '::', which is the root of every
    thread under one; a root that is itself nested, by its exact prefix."""
    if all(is_top_level(root) for root in roots):
        return f"split_part({column}, '::', 1) = ANY(%(roots)s)", {"roots": list(roots)}
    (root,) = roots  # a nested root is pruned or deleted on its own
    return (f"({column} = %(root)s OR left({column}, char_length(%(prefix)s)) = %(prefix)s)",
            {"root": root, "prefix": root + "::"})


__all__ = ["RETENTION", "PostgresRetention"]
