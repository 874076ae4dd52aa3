"""What a failed SQLite call means to the person running the graph.

SQLite reports a full disk, a lock held by another process, a read-only directory or a damaged
file as `sqlite3.OperationalError` and its kin, with a terse message and no path. Each becomes a
`CheckpointError` naming the file, what was being done, the reason in plain words and what to do.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import TracebackType

from .errors import CheckpointError, StorageUnavailableError


class failures:
    """SQLite's failures while `doing` something on `path`, as the errors a user can act
    on. A class, not a generator: every commit passes through it."""

    __slots__ = ("busy_timeout", "doing", "path")

    def __init__(self, path: Path, doing: str, busy_timeout: float) -> None:
        self.path = path
        self.doing = doing
        self.busy_timeout = busy_timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, sqlite3.Error):
            raise storage_error(self.path, exc, self.doing,
                                busy_timeout=self.busy_timeout) from exc
        if isinstance(exc, UnicodeEncodeError):
            raise bad_value_error(self.path, exc, self.doing) from None


def storage_error(path: Path, exc: sqlite3.Error, doing: str, *,
                  busy_timeout: float) -> CheckpointError:
    """The error for `exc`, raised while `doing` (e.g. "commit step 3 of thread 't'") on the
    database at `path`: `StorageUnavailableError` for what passes (a full disk, a lock, a
    read-only directory), plain `CheckpointError` for a damaged file."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    reason, hint, passes = _explain(path, name, str(exc), busy_timeout)
    kind = StorageUnavailableError if passes else CheckpointError
    return kind(f"cannot {doing} in {str(path)!r}: {reason} ({exc}). {hint}".rstrip())


def bad_value_error(path: Path, exc: UnicodeError, doing: str) -> CheckpointError:
    """A value given to a query that SQLite cannot store as text (a lone surrogate, say)."""
    return CheckpointError(f"cannot {doing} in {str(path)!r}: a value given is not valid text "
                           f"({exc}); pass ids and values as ordinary text.")


def _explain(path: Path, name: str, message: str, busy_timeout: float
             ) -> tuple[str, str, bool]:
    """The reason in plain words, what to do, and whether it passes once the cause is mended
    (a full disk, a lock) rather than being damage or a defect."""
    folder = path.parent
    if name.startswith("SQLITE_FULL") or "disk is full" in message:
        return ("the disk is full",
                f"Free space on the disk holding {str(folder)!r}; every committed step is kept, "
                "and the thread resumes from its last one.", True)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in message:
        return (f"the database is locked by another connection, for longer than "
                f"busy_timeout={busy_timeout:g} s",
                "Find the process holding a long transaction on the file (e.g. `fuser "
                f"{str(path)!r}`) or give SQLiteCheckpointer(..., busy_timeout=...) more time.",
                True)
    if name.startswith("SQLITE_READONLY") or "readonly" in message or (
            name.startswith("SQLITE_CANTOPEN") and folder.is_dir()
            and not os.access(folder, os.W_OK)):
        return ("the file or its directory is read-only",
                f"Make {str(folder)!r} and the file writable for this user, or open it with "
                "read_only=True to only read.", True)
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in message:
        if not folder.is_dir():
            return (f"the directory {str(folder)!r} does not exist",
                    "Create the directory or give another path.", True)
        return ("the file cannot be opened or created there (permissions?)",
                f"Check that this user may read and write {str(folder)!r}.", True)
    if name == "SQLITE_NOTADB":
        return ("it is not a SQLite database; it was not modified",
                "Give a new file name or an existing checkpoint database.", False)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in message:
        return ("the database file is damaged",
                "Restore it from a backup; `sqlite3 FILE 'PRAGMA integrity_check'` shows what "
                "is broken.", False)
    if "decode to UTF-8" in message:
        return ("a stored text is not valid UTF-8: the database is damaged or was edited by hand",
                "Restore it from a backup, or fork the thread from an earlier checkpoint.", False)
    if name.startswith("SQLITE_IOERR"):
        return ("the operating system reported an I/O error",
                "Check the disk and the file system holding the file.", True)
    return ("SQLite refused the operation",
            "The file may hold tables of another version or be damaged.", False)


__all__ = ["bad_value_error", "storage_error"]
