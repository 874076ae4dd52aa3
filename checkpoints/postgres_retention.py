"""The SQL of retention on PostgreSQL: reading thread families (locked against runs while they
are planned and removed) and removing a plan, inside a transaction `PostgresCheckpointer`
opens. Plain DELETEs: PostgreSQL's autovacuum makes the space reusable for new rows; the
files themselves shrink only with `VACUUM FULL`, which locks the tables and is left to the
database's administrator (see docs/retention.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from .base import process_space
from .retention import FINISHED, Family, Plan, Stored, busy_reason, in_family, is_top_level
from .rows import process_alive

_NOW = "extract(epoch from clock_timestamp())"

_SHAPE = "id, parent, snapshot IS NOT NULL, status, kind, extra, coalesce(marked_at, created_at)"


def _members(roots: Sequence[str], column: str = "thread_id") -> tuple[str, dict[str, Any]]:
    """SQL matching the threads of the families of `roots`, compared as text (never as a LIKE
    pattern): top-level roots by the part before the first '::', which is the root of every
    thread under one; a root that is itself nested, by its exact prefix."""
    if all(is_top_level(root) for root in roots):
        return f"split_part({column}, '::', 1) = ANY(%(roots)s)", {"roots": list(roots)}
    (root,) = roots  # a nested root is pruned or deleted on its own
    return (f"({column} = %(root)s OR left({column}, char_length(%(prefix)s)) = %(prefix)s)",
            {"root": root, "prefix": root + "::"})


def read_families(conn: psycopg.Connection, roots: Sequence[str], *, lock: bool,
                  holder: str | None = None) -> dict[str, Family]:
    """The family of each of `roots`: its threads, their checkpoints' shape, who holds them.
    With `lock`, every member's row is locked (FOR UPDATE, in key order) until the transaction
    ends: a run cannot take one of them, nor commit to it, meanwhile. A lease counts while it
    has not expired by the server's clock, unless its holder was a process of this machine
    that is gone; the run `holder` (releasing the thread) does not count."""
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
    match, params = _members(roots)
    for (name,) in conn.execute(
            f"SELECT thread_id FROM jobs WHERE {match} AND status = 'running' AND "
            f"claimed_until > {_NOW}", params):
        family = family_of(name)
        if family is not None:
            family.busy.setdefault(name, busy_reason(name, job=True))
    for key, *row in conn.execute(
            f"SELECT thread, {_SHAPE} FROM checkpoints WHERE thread = ANY(%s)",
            (list(names),)):
        owner_family = family_of(names[key])
        assert owner_family is not None  # names holds members of the families only
        owner_family.threads[names[key]].append(stored(row))
    for root, family in families.items():
        if not is_top_level(root):
            head = conn.execute(
                f"SELECT {_SHAPE} FROM checkpoints WHERE thread = (SELECT key FROM threads "
                "WHERE thread_id = %s) ORDER BY id DESC LIMIT 1",
                (root.rsplit("::", 1)[0],)).fetchone()
            family.parent_head = None if head is None else stored(head)
    return families


def _count(conn: psycopg.Connection, sql: str, values: Sequence[Any]) -> int:
    row = conn.execute(sql, (list(values),)).fetchone()
    assert row is not None  # count(*) always answers
    return int(row[0])


def stored(row: Sequence[Any]) -> Stored:
    cid, parent, snapshot, status, kind, extra, changed = row
    return Stored(cid, parent, bool(snapshot), status, kind, extra, float(changed))


def candidate_roots(conn: psycopg.Connection, finished_before: float | None) -> list[str]:
    """The top-level threads a prune looks at (with `finished_before`, those whose latest
    checkpoint finished before it: checked again, under lock, when their family is read)."""
    rows = conn.execute(
        "SELECT t.thread_id, c.status, c.changed FROM threads t LEFT JOIN LATERAL (SELECT "
        "status, coalesce(marked_at, created_at) AS changed FROM checkpoints WHERE thread = "
        "t.key ORDER BY id DESC LIMIT 1) c ON true WHERE strpos(t.thread_id, '::') = 0 "
        "ORDER BY t.key").fetchall()
    return [name for name, status, changed in rows if finished_before is None or (
        status in FINISHED and changed is not None and changed < finished_before)]


def thread_exists(conn: psycopg.Connection, thread_id: str) -> bool:
    return conn.execute("SELECT 1 FROM threads WHERE thread_id = %s",
                        (thread_id,)).fetchone() is not None


def has_job(conn: psycopg.Connection, thread_id: str) -> bool:
    return conn.execute("SELECT 1 FROM jobs WHERE thread_id = %s",
                        (thread_id,)).fetchone() is not None


def carry_out(conn: psycopg.Connection, plan: Plan, *, dry_run: bool) -> tuple[int, int]:
    """Count the pending writes and jobs going with `plan` and, unless `dry_run`, remove
    everything it names (checkpoints before their threads: they reference them)."""
    ids, names = plan.checkpoint_ids, plan.threads
    pending = _count(conn, "SELECT count(*) FROM pending_writes WHERE checkpoint = ANY(%s)",
                     ids)
    jobs = _count(conn, "SELECT count(*) FROM jobs WHERE thread_id = ANY(%s)", names)
    if not dry_run:
        conn.execute("DELETE FROM pending_writes WHERE checkpoint = ANY(%s)", (ids,))
        conn.execute("DELETE FROM checkpoints WHERE id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM jobs WHERE thread_id = ANY(%s)", (names,))
        conn.execute("DELETE FROM threads WHERE thread_id = ANY(%s)", (names,))
    return pending, jobs


__all__ = ["candidate_roots", "carry_out", "has_job", "read_families", "stored",
           "thread_exists"]
