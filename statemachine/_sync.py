"""Running the async engine from synchronous code: the storage layer's runner
(`checkpoints._sync`), which the engine uses too."""

from checkpoints._sync import iterate_sync, run_sync

__all__ = ["iterate_sync", "run_sync"]
