"""The async API's PostgreSQL statements on the event loop itself, not in a thread.

`PostgresCheckpointer` runs the sync API's statements on pooled connections in the calling
thread. The async API used to hand each statement to a pool thread. A server turn makes five
or so, and each hop cost more than the round trip: with many conversations at once, the loop
and twenty threads fought for the GIL, and a turn took three times the CPU it needed. So a
run's simple statements (one statement, or a write and the read that finds it landed) use
psycopg's async connections, a few per event loop (`LoopConnections`), on that loop.
Transactions (several statements around Python code: retention, memory) stay in threads.

Connections belong to the loop that made them. A checkpointer used from several loops (one
`asyncio.run` after another, say) keeps a set for each; a set whose loop has closed is
closed without it (`discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
from psycopg.pq import TransactionStatus


class LoopConnections:
    """Up to `size` async connections of one event loop, reused from one statement to the
    next; `connect()` opens and configures a new one."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection]],
                 size: int) -> None:
        self._connect = connect
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection for one statement. One the statement may have left in doubt (it
        failed on the connection, or was cancelled mid-way) is closed, never reused."""
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await _close(conn)  # the connection broke, or its state is unknown
                raise
            except psycopg.Error:
                await self._give_back(conn)  # the statement failed; the connection may be fine
                raise
            except BaseException:
                await _close(conn)  # cancelled mid-statement: in doubt
                raise
            await self._give_back(conn)

    async def _give_back(self, conn: psycopg.AsyncConnection) -> None:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            self._idle.append(conn)
        else:
            await _close(conn)

    async def aclose(self) -> None:
        """Close the idle connections (on their own loop)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)

    def discard(self) -> None:
        """Close the idle connections from outside their loop (closed, or another thread's):
        their sockets are shut at once, with nothing awaited."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.pgconn.finish()


async def _close(conn: psycopg.AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


__all__ = ["LoopConnections"]
