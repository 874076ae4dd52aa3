"""SQLite reads and small writes done on the event loop's own thread, when SQLite can do them
at once.

A commit of a step takes ~20 µs here; handing it to a thread and back (aiosqlite, or
`asyncio.to_thread`) costs several times that, which is why async runs went at a third of
the speed of sync ones. So the async API first tries a read or a small write
(`sql_store.small`) on a connection of its own that never waits. If another thread is using
that connection, or the file's write lock is held by someone else (SQLITE_BUSY, reported at
once: its busy timeout is 0), it is not done here and the caller takes the usual path, in a
thread with the full busy timeout. A statement or transaction that failed with SQLITE_BUSY was
rolled back whole, so running it again there is safe.

Two things would block the loop for milliseconds and are kept off it:
- folding the write-ahead log into the file (a checkpoint, with an fsync): this connection's
  automatic checkpoints are off, and every `FOLD_EVERY` commits a checkpoint runs on a
  thread of its own;
- `synchronous=FULL`'s fsync on every commit: a checkpointer made with it writes in threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

T = TypeVar("T")


class Missed:
    """The write was not done on the loop (see the module): do it the usual way."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSED"


MISSED: Final = Missed()

FOLD_EVERY = 500
"""Commits between checkpoints: about 1,000 log pages for a step's commit, SQLite's own cadence
(its automatic checkpoint, which the sync API's connection runs). A page written again and
again between two is copied into the file once."""

FOLD_WAIT = 0.05
"""Seconds a checkpoint waits for writers and readers before settling for what it can fold."""


class LoopWriter:
    """A connection for writes done on the event loop's thread (see the module)."""

    def __init__(self, path: Path, connect: Callable[[float], sqlite3.Connection]) -> None:
        """`connect(busy_timeout)` opens a connection to `path` as the checkpointer's own are
        opened (same pragmas)."""
        self._path = path
        self._connect = connect
        self._conn = connect(0.0)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._lock = threading.Lock()
        self._closed = False
        self._commits = 0
        self._folder: concurrent.futures.ThreadPoolExecutor | None = None
        self._folding: concurrent.futures.Future[None] | None = None

    def run(self, work: Callable[[sqlite3.Connection], T], *,
            write: bool = True) -> T | Missed:
        """`work(conn)` now, in this thread, or MISSED if it cannot be done without waiting.
        `work` must be one statement or one transaction (so SQLITE_BUSY leaves nothing);
        `write`: it commits (and so counts towards the next fold of the log)."""
        if not self._lock.acquire(blocking=False):
            return MISSED  # another thread's loop is using it
        try:
            if self._closed:
                return MISSED  # the caller's own path says it is closed
            try:
                result = work(self._conn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                return MISSED
            if write:
                self._commits += 1
                if self._commits % FOLD_EVERY == 0:
                    self._fold()
            return result
        finally:
            self._lock.release()

    async def arun(self, work: Callable[[sqlite3.Connection], T], *,
                   write: bool = True) -> T | Missed:
        """`run`; if it missed while our own checkpoint held the file, again once that is
        done (a few milliseconds), rather than in a thread whose busy handler sleeps in steps
        of up to 100 ms."""
        done = self.run(work, write=write)
        folding = self._folding
        if isinstance(done, Missed) and folding is not None and not folding.done():
            await asyncio.wait([asyncio.wrap_future(folding)])
            done = self.run(work, write=write)
        return done

    def close(self) -> None:
        """Wait for a checkpoint under way, then close the connection; nothing runs on it
        afterwards, and no checkpoint starts."""
        with self._lock:
            self._closed = True
            folder, self._folder = self._folder, None
        if folder is not None:
            folder.shutdown(wait=True)
        with self._lock:
            self._conn.close()

    def _fold(self) -> None:
        """Start a checkpoint on the folder's thread, unless one is still going (called under
        the lock, so one at a time)."""
        if self._folding is not None and not self._folding.done():
            return
        if self._folder is None:
            self._folder = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"statemachine-wal:{self._path.name}")
        self._folding = self._folder.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        # RESTART, not PASSIVE: a passive checkpoint racing the loop's commits never catches
        # up with them, so the log would never start over and would grow without end. This
        # one holds new writers off while it runs (the loop's then go to a thread), for at
        # most FOLD_WAIT when a reader is in the way. One that cannot finish (a reader, a
        # full disk) leaves the rest to the next: every commit is already durable in the log.
        with contextlib.suppress(sqlite3.Error):
            conn = self._connect(FOLD_WAIT)
            try:
                conn.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                conn.close()


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY (another connection holds the lock) or SQLITE_LOCKED, any extended code."""
    # some errors carry no code (Python 3.11's "Could not decode to UTF-8"): not busy
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


__all__ = ["MISSED", "LoopWriter", "Missed"]
