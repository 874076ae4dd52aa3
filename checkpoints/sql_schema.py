"""The tables of the SQL stores, written once and spelled for each dialect.

Both stores hold the same tables with the same columns in the same order; what differs is
the column types, and a few columns only one of them needs: PostgreSQL's retry keys
(`checkpoints.commit_key`, `jobs.submit_key`: a write run again after a dropped connection
finds that it landed) and SQLite's lease periods (`threads.lease_seconds`,
`jobs.claim_seconds`: a lapse is watched on this machine's clock for the holder's period,
since the holder's clock is never compared with ours). `threads.graph` is what a run bound
the thread to (the graph's name and structure, JSON the engine reads). Migrations stay with
each store: a file or schema of an older version is upgraded by the statements its own store kept.
"""

from __future__ import annotations

from .sql_dialect import Dialect


def tables(d: Dialect) -> str:
    """The statements creating a new store's tables (`;`-separated), at the latest version."""
    local_clock = d.server_clock is None
    created = "" if local_clock else f" DEFAULT {d.server_clock}"
    return f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE threads (
    key {d.id_key},
    thread_id TEXT NOT NULL UNIQUE,
    owner TEXT,
    owner_pid INTEGER,
    owner_host TEXT,
    lease_expires {d.float_type},
    created_at {d.float_type} NOT NULL{created}{_column("lease_seconds REAL", local_clock)},
    graph TEXT
);
CREATE TABLE checkpoints (
    id {d.id_key},
    thread {d.id_type} NOT NULL REFERENCES threads(key),
    parent {d.id_type},
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    next TEXT NOT NULL,
    writes TEXT,
    snapshot TEXT,
    extra TEXT,
    error TEXT,
    created_at {d.float_type} NOT NULL,
    marked_at {d.float_type}{_column("commit_key TEXT NOT NULL UNIQUE", d.retry_keys)}
);
CREATE INDEX checkpoints_by_thread ON checkpoints(thread, id);
CREATE TABLE pending_writes (
    checkpoint {d.id_type} NOT NULL,
    node TEXT NOT NULL,
    idx INTEGER NOT NULL,
    writes TEXT NOT NULL,
    meta TEXT,
    PRIMARY KEY (checkpoint, node, idx)
){d.without_rowid};
{cache_table(d)}{jobs_table(d)}{store_tables(d)}""" + (
        "ALTER TABLE jobs ADD COLUMN claim_seconds REAL;\n" if local_clock else "")


def cache_table(d: Dialect) -> str:
    """Cached node results (`CachePolicy`), by namespace and key."""
    return f"""
CREATE TABLE cache (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at {d.float_type},
    PRIMARY KEY (namespace, key)
){d.without_rowid};
"""


def jobs_table(d: Dialect) -> str:
    """The work queue: one job per thread (without SQLite's claim_seconds, which came later)."""
    submit_key = "\n    submit_key TEXT," if d.retry_keys else ""
    return f"""
CREATE TABLE jobs (
    thread_id TEXT PRIMARY KEY,
    input TEXT,
    event TEXT,
    base TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    available_at {d.float_type} NOT NULL,
    claimed_by TEXT,
    claim_key TEXT,
    claimed_until {d.float_type},
    error TEXT,
    submitted_at {d.float_type} NOT NULL,
    finished_at {d.float_type},{submit_key}
    graph TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_ready ON jobs(graph, available_at) WHERE status IN ('queued', 'running');
"""


def store_tables(d: Dialect) -> str:
    """Long-term memory (`BaseStore`): items by namespace (labels joined by \\x1f, so a
    namespace prefix is one index range) and key, values as JSON, each write tagged with a
    random number (`seq`: a cached view of a prefix sees any change by the items' count and
    the sum of their tags), and the embeddings of indexed items' fields."""
    text = f"TEXT{d.binary_text}"
    return f"""
CREATE TABLE store_items (
    namespace {text} NOT NULL,
    key {text} NOT NULL,
    value TEXT NOT NULL,
    created_at {d.float_type} NOT NULL,
    updated_at {d.float_type} NOT NULL,
    ttl {d.float_type},
    expires_at {d.float_type},
    seq {d.id_type} NOT NULL,
    PRIMARY KEY (namespace, key)
){d.without_rowid};
CREATE INDEX store_items_expiring ON store_items(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE store_vectors (
    namespace {text} NOT NULL,
    key {text} NOT NULL,
    field TEXT NOT NULL,
    vector {d.bytes_type} NOT NULL,
    PRIMARY KEY (namespace, key, field)
){d.without_rowid};
"""


def _column(definition: str, present: bool) -> str:
    return f",\n    {definition}" if present else ""


__all__ = ["cache_table", "jobs_table", "store_tables", "tables"]
