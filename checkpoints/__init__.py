"""Storage for durable runs: checkpoints, pending writes, thread leases and the work queue.

`SQLiteCheckpointer` for one machine, `PostgresCheckpointer` for many workers sharing one
database (the `postgres` extra), `MemoryCheckpointer` for tests and notebooks; all implement
the small async interface in `checkpoints.base`. `open_checkpointer(url)` picks by the URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Checkpointer,
    CheckpointRecord,
    ClaimedJob,
    HeadMark,
    JobInfo,
    Lease,
    NewCheckpoint,
    PendingWrite,
    Removed,
    ThreadInfo,
)
from .memory import MemoryCheckpointer
from .sqlite import SQLiteCheckpointer
from .store_base import BaseStore
from .store_memory import MemoryStore
from .store_sqlite import SQLiteStore
from .store_types import Item, StoreError

if TYPE_CHECKING:
    from .postgres import PostgresCheckpointer
    from .store_postgres import PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresCheckpointer":  # imported on use: psycopg is an optional extra
        from .postgres import PostgresCheckpointer

        return PostgresCheckpointer
    if name == "PostgresStore":
        from .store_postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'checkpoints' has no attribute {name!r}")


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_checkpointer(url: str, **options: Any) -> Checkpointer:
    """A checkpointer for `url`: `postgresql://...` (or `postgres://`) opens PostgreSQL, anything
    else is a SQLite file path. `options` go to the checkpointer (`lease_seconds`, ...)."""
    if is_postgres_url(url):
        from .postgres import PostgresCheckpointer

        return PostgresCheckpointer(url, **options)
    return SQLiteCheckpointer(url, **options)

__all__ = [
    "BaseStore",
    "CheckpointRecord",
    "Checkpointer",
    "ClaimedJob",
    "HeadMark",
    "Item",
    "JobInfo",
    "Lease",
    "MemoryCheckpointer",
    "MemoryStore",
    "NewCheckpoint",
    "PendingWrite",
    "PostgresCheckpointer",
    "PostgresStore",
    "Removed",
    "SQLiteCheckpointer",
    "SQLiteStore",
    "StoreError",
    "ThreadInfo",
    "is_postgres_url",
    "open_checkpointer",
]
