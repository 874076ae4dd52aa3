"""The clock retries wait on, replaceable so tests never sleep.

    with use_clock(FakeClock()) as clock:
        app.invoke(...)             # retry back-offs return at once
    clock.sleeps                    # [0.5, 1.0, ...]: what the run would have waited
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar


class Clock(Protocol):
    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock whose sleeps return at once, advancing its time and recording the delay."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


SYSTEM_CLOCK = SystemClock()
current_clock: ContextVar[Clock | None] = ContextVar("statemachine_clock", default=None)


def get_clock() -> Clock:
    """The clock of the current context: the one `use_clock` set, else real time."""
    return current_clock.get() or SYSTEM_CLOCK


ClockT = TypeVar("ClockT", bound=Clock)


@contextmanager
def use_clock(clock: ClockT) -> Iterator[ClockT]:
    """Runs started inside the block (in this thread or task) wait on `clock`."""
    token = current_clock.set(clock)
    try:
        yield clock
    finally:
        current_clock.reset(token)
