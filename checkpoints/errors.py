"""The errors storage raises, and the base class of every statemachine error.

They live here, in the storage layer, so that `checkpoints` imports nothing from the engine;
`statemachine` re-exports each one (`from statemachine import ThreadBusyError` keeps working,
and it is the same class).
"""

from __future__ import annotations


class StateMachineError(Exception):
    """Base class of every error raised by statemachine."""


class ThreadBusyError(StateMachineError):
    """Another run owns this thread right now (one writer per thread)."""


class ThreadNotFoundError(StateMachineError, KeyError):
    """No checkpoint exists for this thread (or this checkpoint id in this thread)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(StateMachineError):
    """Stored data cannot be read back: wrong file, newer schema, or data that no longer fits."""


class StorageUnavailableError(CheckpointError):
    """The store could not do what was asked right now: a full disk, a lock another process
    holds too long, a read-only or missing directory, an unreachable server. Every step
    committed before it is kept; the thread resumes from there once the cause is mended."""
