"""The SQL of retention both SQL stores share: what a deletion, a prune batch and a trimming
release do on one connection, inside one transaction the store opens.

What differs is how a store reads a thread family (`RetentionSQL.read_families`): SQLite's
transaction locks the whole file, and judges leases by this machine's clock; PostgreSQL locks
the family's rows, and judges leases by the server's clock. The plans themselves are
`retention.py`'s, shared with the memory store.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .base import Removed
from .errors import ThreadNotFoundError
from .retention import (
    FINISHED,
    Family,
    Plan,
    Stored,
    is_top_level,
    not_found_message,
    plan_delete_thread,
    plan_prune,
    plan_trim,
    removed_from,
)
from .sql_dialect import Dialect
from .sql_statements import Statements


class Connection(Protocol):
    """A DB-API connection as retention uses it (sqlite3's, psycopg's)."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...

    def cursor(self) -> Any: ...


_SHAPE = "id, parent, snapshot IS NOT NULL, status, kind, extra, coalesce(marked_at, created_at)"
"""A checkpoint's place in the tree, as `stored` reads it."""


class RetentionSQL(ABC):
    """Retention's reads and removals in `dialect`, on a connection in a transaction."""

    def __init__(self, dialect: Dialect) -> None:
        d = self.dialect = dialect
        statements = Statements(d)
        self._fence = statements.fence + d.lock_rows
        self._release = statements.release
        self._thread_exists = d.render("SELECT 1 FROM threads WHERE thread_id = :thread")
        self._has_job = d.render("SELECT 1 FROM jobs WHERE thread_id = :thread")
        self._candidate_roots = d.render(
            "SELECT t.thread_id, c.status, coalesce(c.marked_at, c.created_at) FROM threads t "
            f"{d.head('LEFT JOIN')} WHERE {d.strpos}(t.thread_id, '::') = 0 ORDER BY t.key")
        self._checkpoints_of = d.render(
            f"SELECT thread, {_SHAPE} FROM checkpoints WHERE {d.in_list('thread', 'keys')}")
        self._head_of = d.render(
            f"SELECT {_SHAPE} FROM checkpoints WHERE thread = (SELECT key FROM threads "
            "WHERE thread_id = :thread) ORDER BY id DESC LIMIT 1")
        self._count_pending = d.render(
            f"SELECT count(*) FROM pending_writes WHERE {d.in_list('checkpoint', 'ids')}")
        self._count_jobs = d.render(
            f"SELECT count(*) FROM jobs WHERE {d.in_list('thread_id', 'names')}")
        # checkpoints before their threads: they reference them
        self._removals = [d.render(sql) for sql in (
            f"DELETE FROM pending_writes WHERE {d.in_list('checkpoint', 'ids')}",
            f"DELETE FROM checkpoints WHERE {d.in_list('id', 'ids')}",
            f"DELETE FROM jobs WHERE {d.in_list('thread_id', 'names')}",
            f"DELETE FROM threads WHERE {d.in_list('thread_id', 'names')}")]

    @abstractmethod
    def read_families(self, conn: Connection, roots: Sequence[str], *, lock: bool,
                      holder: str | None = None) -> dict[str, Family]:
        """The family of each of `roots`: its threads, their checkpoints' shape, who holds
        them; the run `holder` (releasing the thread) does not count. With `lock`, nothing
        may take or change a member until the transaction ends."""

    # -- the work of one transaction -------------------------------------------------------------

    def delete(self, conn: Connection, thread_id: str, *, dry_run: bool,
               committed: list[Removed]) -> Removed:
        """Remove the family of `thread_id` whole (see `Checkpointer.delete_thread`).
        `committed` holds what an earlier run of this very work removed: a store that runs
        it again (its connection dropped before the answer came) answers with it."""
        family = self.read_families(conn, [thread_id], lock=not dry_run)[thread_id]
        try:
            plan = plan_delete_thread(thread_id, family,
                                      has_job=self.has_job(conn, thread_id))
        except ThreadNotFoundError:
            if committed:  # a retry: the first attempt committed, its answer was lost
                return committed[0]
            raise
        pending, jobs = self.carry_out(conn, plan, dry_run=dry_run)
        committed[:] = [removed_from(plan, pending_writes=pending, jobs=jobs)]
        return committed[0]

    def prune_roots(self, conn: Connection, thread_id: str | None,
                    finished_before: float | None) -> list[str]:
        """The roots a prune looks at: `thread_id`, else the candidates."""
        if thread_id is None:
            return self.candidate_roots(conn, finished_before)
        if not self.thread_exists(conn, thread_id):
            raise ThreadNotFoundError(not_found_message(thread_id))
        return [thread_id]

    def prune(self, conn: Connection, roots: list[str], *, keep_last: int | None,
              finished_before: float | None, dry_run: bool
              ) -> tuple[Plan, list[str], int, int]:
        """Prune the families of `roots`: (plan, roots skipped as busy, pending writes, jobs)."""
        families = self.read_families(conn, roots, lock=not dry_run)
        plan, skipped = plan_prune((families[root] for root in roots), keep_last=keep_last,
                                   finished_before=finished_before)
        return plan, skipped, *self.carry_out(conn, plan, dry_run=dry_run)

    def trim_and_release(self, conn: Connection, thread_id: str, token: str, keep_last: int,
                         log: logging.Logger) -> None:
        """Trim the thread to `keep_last` and release it, if `token` still holds it. A trim
        that cannot be planned (damaged rows) is logged and left out: a retention setting
        must never keep a run from giving its thread up. Run again after it committed, it
        finds the thread released and does nothing."""
        owner = {"thread": thread_id, "owner": token}
        if conn.execute(self._fence, owner).fetchone() is None:
            return
        family = self.read_families(conn, [thread_id], lock=True, holder=token)[thread_id]
        plan = None
        if not family.busy:
            try:
                plan = plan_trim(family, keep_last)
            except (ValueError, TypeError, KeyError) as exc:  # damaged rows
                log.warning("thread %r: not trimmed to keep_last=%d on release: %s",
                            thread_id, keep_last, exc)
        if plan is not None:
            self.carry_out(conn, plan, dry_run=False)
        conn.execute(self._release, owner)

    # -- reads and removals ----------------------------------------------------------------------

    def thread_exists(self, conn: Connection, thread_id: str) -> bool:
        return conn.execute(self._thread_exists, {"thread": thread_id}).fetchone() is not None

    def has_job(self, conn: Connection, thread_id: str) -> bool:
        return conn.execute(self._has_job, {"thread": thread_id}).fetchone() is not None

    def candidate_roots(self, conn: Connection, finished_before: float | None) -> list[str]:
        """The top-level threads a prune looks at (with `finished_before`, those whose latest
        checkpoint finished before it: checked again, in the prune's transaction, when their
        family is read)."""
        rows = conn.execute(self._candidate_roots, {}).fetchall()
        return [name for name, status, changed in rows if isinstance(name, str) and (
            finished_before is None or (status in FINISHED and
                                        number(changed, default=float("inf")) < finished_before))]

    def checkpoints_of(self, conn: Connection, names: dict[int, str]
                       ) -> Iterator[tuple[str, Stored]]:
        """(thread id, checkpoint) of every checkpoint of the threads keyed in `names`."""
        for key, *row in conn.execute(self._checkpoints_of,
                                      {"keys": self.dialect.array(names)}):
            yield names[key], stored(row)

    def parent_head(self, conn: Connection, root: str) -> Stored | None:
        """For a root that is itself a subgraph thread, its parent thread's latest checkpoint
        (which may still run it); None for a top-level root, or a parent without one."""
        if is_top_level(root):
            return None
        row = conn.execute(self._head_of, {"thread": root.rsplit("::", 1)[0]}).fetchone()
        return None if row is None else stored(row)

    def carry_out(self, conn: Connection, plan: Plan, *, dry_run: bool) -> tuple[int, int]:
        """Count the pending writes and jobs going with `plan` and, unless `dry_run`, remove
        everything it names: (pending writes, jobs)."""
        params = {"ids": self.dialect.array(plan.checkpoint_ids),
                  "names": self.dialect.array(plan.threads)}
        pending = int(conn.execute(self._count_pending, params).fetchone()[0])
        jobs = int(conn.execute(self._count_jobs, params).fetchone()[0])
        if not dry_run:
            for removal in self._removals:
                conn.execute(removal, params)
        return pending, jobs


def stored(row: Sequence[Any]) -> Stored:
    """A checkpoint's shape from (id, parent, has snapshot, status, kind, extra, changed at).
    A damaged value reads as what removes least: no parent link, a status that is not
    finished, an extra that cannot be read."""
    cid, parent, snapshot, status, kind, extra, changed = row
    return Stored(cid, parent if isinstance(parent, int) else None, bool(snapshot),
                  status if isinstance(status, str) else "?",
                  kind if isinstance(kind, str) else "?",
                  extra if isinstance(extra, str) or extra is None else "?",
                  number(changed, default=float("inf")))


def number(value: object, default: float = float("-inf")) -> float:
    """A stored time as a float; `default` for anything else (a damaged value)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else default


__all__ = ["Connection", "RetentionSQL", "number", "stored"]
