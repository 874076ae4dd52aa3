"""The SQL of each operation the two SQL stores share, written once (see `sql_dialect` for
the spelling) and rendered for a dialect by `Statements`.

Every write is one statement, fenced on the thread's owner where a run makes it: it only
takes effect while the writing run still holds the thread (`fence`). A write that must say
what it wrote returns it (`Dialect.returning`; SQLite's cursor says it instead). With retry
keys (PostgreSQL) a write also says how to find it again (`*_landed`): a store that runs a
statement again after a dropped connection asks there whether the first run landed.
"""

from __future__ import annotations

from .sql_dialect import Dialect

COLUMNS = "c.id, t.thread_id, c.parent, c.step, c.kind, c.status, c.next, c.writes, " \
          "c.snapshot, c.extra, c.error, c.created_at"
"""A checkpoint's columns, in the order `rows.record_from_row` reads them."""

PENDING_COLUMNS = (6, 14, 8, 10)
"""Where a load's pending-write rows hold node, index, writes and meta: each in a column of
its type in the checkpoint rows (PostgreSQL types the columns of a UNION)."""

_FENCE = "SELECT key FROM threads WHERE thread_id = :thread AND owner = :owner"

_CHAIN = """
WITH RECURSIVE chain(n, id) AS (
    SELECT 0, c.id FROM checkpoints c
    WHERE c.thread = (SELECT key FROM threads WHERE thread_id = :thread)
      AND c.id = coalesce(:checkpoint, (SELECT max(id) FROM checkpoints
                  WHERE thread = (SELECT key FROM threads WHERE thread_id = :thread)))
    UNION ALL
    -- parents are strictly older (smaller ids): a damaged or crafted cycle ends the chain
    -- early, where chain_from_rows reports it, instead of recursing forever
    SELECT chain.n + 1, cur.parent FROM chain JOIN checkpoints cur ON cur.id = chain.id
    WHERE cur.snapshot IS NULL AND cur.parent IS NOT NULL AND cur.parent < cur.id
      AND cur.id IS NOT :known
)"""

_LATERAL_CHAIN = """
WITH RECURSIVE th AS (SELECT key FROM threads WHERE thread_id = :thread),
chain(n, id) AS (
    SELECT 0, c.id FROM checkpoints c, th
    WHERE c.thread = th.key
      AND c.id = coalesce(:checkpoint::bigint,
                          (SELECT max(id) FROM checkpoints WHERE thread = th.key))
    UNION ALL
    -- one primary-key lookup per link (LATERAL ... LIMIT 1): a plain join lets the planner
    -- hash-join a scan of the whole table at every level of the recursion
    -- parents are strictly older (smaller ids): a damaged or crafted cycle ends the chain
    -- early, where chain_from_rows reports it, instead of recursing forever
    SELECT chain.n + 1, cur.parent FROM chain CROSS JOIN LATERAL (
        SELECT parent FROM checkpoints WHERE id = chain.id AND snapshot IS NULL
          AND parent IS NOT NULL AND parent < id
          AND id IS DISTINCT FROM :known::bigint LIMIT 1) cur
)"""

_LOAD = f"""
SELECT 'c', chain.n, {COLUMNS.replace(
    "c.snapshot", "CASE WHEN c.id = :known::bigint THEN NULL ELSE c.snapshot END")}, NULL
FROM chain JOIN checkpoints c ON c.id = chain.id
JOIN threads t ON t.key = c.thread
UNION ALL
SELECT 'p', NULL, p.checkpoint, NULL, NULL, NULL, p.node, NULL, p.writes, NULL, p.meta, NULL,
       NULL, NULL, p.idx
FROM pending_writes p WHERE p.checkpoint IN (SELECT id FROM chain)
"""
"""A checkpoint, the checkpoints back to its nearest snapshot, and their pending writes, in one
round trip: rows tagged 'c' (checkpoint, with its distance from the head) or 'p' (a pending
write). `known` ends the chain early, and its snapshot is left out (the caller has it)."""


_GIVE_UP = ("UPDATE threads SET owner = NULL, owner_pid = NULL, owner_host = NULL, "
            "lease_expires = NULL WHERE ")
"""A release, with the rows it applies to still to say."""


class Statements:
    """The shared statements, rendered for `dialect`."""

    def __init__(self, dialect: Dialect) -> None:
        d = self.dialect = dialect
        keys = d.retry_keys
        self.fence = d.render(_FENCE)
        self.release = d.render(_GIVE_UP + "thread_id = :thread AND owner = :owner")

        # -- writes of a run, fenced ----------------------------------------------------------
        # PostgreSQL stamps checkpoints with the server's clock, whatever the run's says
        put = (
            "INSERT INTO checkpoints(thread, parent, step, kind, status, next, writes, "
            f"snapshot, extra, error, created_at{', commit_key' if keys else ''}) SELECT key, "
            ":parent, :step, :kind, :status, :next, :writes, :snapshot, :extra, :error, "
            f"{':now' if d.server_clock else ':created_at'}{', :key' if keys else ''} "
            "FROM threads WHERE thread_id = :thread AND owner = :owner"
            f"{d.once('commit_key')}")
        self.put = d.render(put + d.returning("id"))
        self.put_landed = d.render(  # this thread's only: a key is never another's commit
            "SELECT id FROM checkpoints WHERE commit_key = :key AND thread = "
            "(SELECT key FROM threads WHERE thread_id = :thread)")
        # the same, giving the thread up in the same statement where DML may sit in a WITH
        # (one round trip; elsewhere put and release commit in one transaction): released
        # only if the checkpoint was written, by the owner the INSERT's fence found
        self.put_releasing = d.render(
            f"WITH written AS ({put} RETURNING id, thread), released AS ({_GIVE_UP}"
            "key IN (SELECT thread FROM written) AND owner = :owner) SELECT id FROM written"
        ) if d.returns else None
        put_pending = (
            "INSERT INTO pending_writes(checkpoint, node, idx, writes, meta) SELECT "
            f":checkpoint, :node, :idx, :writes, :meta WHERE EXISTS ({_FENCE})"
            f"{d.once('checkpoint, node, idx')}")
        self.put_pending = d.render(put_pending + d.returning("1"))
        self.put_pendings = d.render(put_pending)  # run for many rows: counted, not returned
        self.mark = d.render(
            "UPDATE checkpoints SET status = :status, error = :error, snapshot = "
            "coalesce(snapshot, :snapshot), extra = coalesce(:extra, extra), marked_at = :now "
            f"WHERE id = :id AND thread = ({_FENCE})")
        self.bind_graph = d.render(
            "UPDATE threads SET graph = :graph WHERE thread_id = :thread AND owner = :owner")
        self.add_snapshot = d.render(
            "UPDATE checkpoints SET snapshot = coalesce(snapshot, :snapshot) WHERE id = :id "
            f"AND thread = ({_FENCE})")

        # -- reads -----------------------------------------------------------------------------
        self.load = d.render((_LATERAL_CHAIN if d.lateral else _CHAIN) + _LOAD)
        self.list = d.render(
            f"SELECT {COLUMNS} FROM checkpoints c JOIN threads t ON t.key = c.thread "
            "WHERE t.thread_id = :thread AND (:below::bigint IS NULL OR c.id < :below::bigint) "
            "ORDER BY c.id DESC LIMIT :limit")
        self.list_pending = d.render(
            "SELECT checkpoint, node, idx, writes, meta FROM pending_writes WHERE "
            f"{d.in_list('checkpoint', 'ids')} ORDER BY checkpoint, node, idx")
        self.thread_graph = d.render(
            "SELECT thread_id, graph FROM threads WHERE thread_id = :thread AND graph IS NOT NULL")
        self.thread_graphs = d.render(
            "SELECT thread_id, graph FROM threads WHERE graph IS NOT NULL AND "
            f"{d.in_list('thread_id', 'threads')}")
        self.threads = d.render(
            "SELECT t.thread_id, c.status, c.step, c.id, coalesce(c.marked_at, c.created_at), "
            "c.error, t.owner IS NOT NULL AND t.lease_expires > :now, t.owner_pid, "
            f"t.owner_host FROM threads t {d.head()} WHERE (:since::float8 IS NULL OR "
            "coalesce(c.marked_at, c.created_at) > :since::float8) "
            "ORDER BY coalesce(c.marked_at, c.created_at) DESC, c.id DESC "
            "LIMIT :limit OFFSET :offset")

        # -- the cache -------------------------------------------------------------------------
        self.cache_get = d.render(
            "SELECT value FROM cache WHERE namespace = :namespace AND key = :key AND "
            "(expires_at IS NULL OR expires_at > coalesce(:at, :now))")
        self.cache_put = d.render(
            "INSERT INTO cache(namespace, key, value, expires_at) VALUES (:namespace, :key, "
            ":value, coalesce(:at, :now) + :ttl) ON CONFLICT (namespace, key) DO UPDATE SET "
            "value = excluded.value, expires_at = excluded.expires_at")

        # -- the work queue (claims differ: they are leases) -----------------------------------
        self.enqueue = d.render(
            "INSERT INTO jobs(thread_id, input, event, base, status, attempts, max_attempts, "
            f"available_at, submitted_at, graph{', submit_key' if keys else ''}) VALUES "
            "(:thread, :input, :event, :base, 'queued', 0, :max_attempts, :now, :now, :graph"
            f"{', :key' if keys else ''}) ON CONFLICT (thread_id) DO UPDATE SET "
            "input = excluded.input, event = excluded.event, base = excluded.base, "
            "graph = excluded.graph, status = 'queued', attempts = 0, "
            "max_attempts = excluded.max_attempts, available_at = excluded.available_at, "
            "claimed_by = NULL, claim_key = NULL, claimed_until = NULL, error = NULL, "
            "submitted_at = excluded.submitted_at, finished_at = NULL"
            f"{', submit_key = excluded.submit_key' if keys else ''} "
            f"WHERE jobs.status NOT IN ('queued', 'running'){d.returning('1')}")
        self.enqueue_landed = d.render(
            "SELECT 1 FROM jobs WHERE thread_id = :thread AND submit_key = :key")
        # only from running, so a requeue run twice changes nothing more; the job keeps its
        # claim key until claimed again, which recognises the second run
        self.requeue = d.render(
            "UPDATE jobs SET status = 'queued', available_at = :now + :retry_in, "
            "error = :error, claimed_by = NULL, claimed_until = NULL, "
            "attempts = attempts - :uncounted WHERE thread_id = :thread AND claim_key = :key "
            f"AND status = 'running'{d.returning('1')}")
        self.requeue_landed = d.render(
            "SELECT 1 FROM jobs WHERE thread_id = :thread AND claim_key = :key AND "
            "status = 'queued'")
        self.finish = d.render(
            "UPDATE jobs SET status = :status, error = :error, finished_at = :now, "
            "claimed_by = NULL, claimed_until = NULL WHERE thread_id = :thread AND "
            "claim_key = :key")
        self.jobs = d.render(
            "SELECT thread_id, status, attempts, max_attempts, available_at, error, "
            "submitted_at, finished_at, claimed_by, graph FROM jobs WHERE "
            "(:graph::text IS NULL OR graph = :graph::text) AND "
            "(:thread::text IS NULL OR thread_id = :thread::text) AND "
            "(NOT :open OR status IN ('queued', 'running')) ORDER BY submitted_at, thread_id")


__all__ = ["COLUMNS", "PENDING_COLUMNS", "Statements"]
