"""Storage for durable runs: checkpoints, pending writes and thread leases.

`SQLiteCheckpointer` for real use, `MemoryCheckpointer` for tests and notebooks; both implement
the small async interface in `checkpoints.base`.
"""

from .base import Checkpointer, CheckpointRecord, NewCheckpoint, PendingWrite, ThreadInfo
from .memory import MemoryCheckpointer
from .sqlite import SQLiteCheckpointer

__all__ = [
    "CheckpointRecord",
    "Checkpointer",
    "MemoryCheckpointer",
    "NewCheckpoint",
    "PendingWrite",
    "SQLiteCheckpointer",
    "ThreadInfo",
]
