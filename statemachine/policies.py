"""Per-node policies: how to retry a failing node, and when to reuse a cached result."""

from __future__ import annotations

import builtins
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .errors import StateMachineError

_NOT_TRANSIENT = (StateMachineError, TypeError, ValueError, AttributeError, LookupError,
                  NameError, ArithmeticError, AssertionError, NotImplementedError, ImportError,
                  SyntaxError)


_NOT_TRANSIENT_NAMES = frozenset(
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, _NOT_TRANSIENT))
"""The built-in exception types among those, by name (a remote exception's type, when only
its name came back)."""


def default_retry_on(exc: BaseException) -> bool:
    """Retry what looks transient; never programming errors or invalid updates.

    `TimeoutError`, `ConnectionError` and other `OSError`s, and any exception of your own, are
    retried; `TypeError`, `ValueError`, `KeyError` and the like would fail the same way again.
    `NodeTimeoutError` is a `TimeoutError`, so a timed-out node is retried. A node's
    exception that came back from a cluster only by name (`RemoteTaskError`) is judged by
    that name.
    """
    from .errors import NodeTimeoutError, RemoteTaskError

    if isinstance(exc, RemoteTaskError):  # came back from a cluster as its type's name only
        return exc.error_type not in _NOT_TRANSIENT_NAMES
    return isinstance(exc, NodeTimeoutError) or not isinstance(exc, _NOT_TRANSIENT)


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failing node: `max_attempts` runs in all, waiting `initial_interval * backoff**n`
    (at most `max_interval`, randomised to 50-100% with `jitter`) between them.

    `retry_on` is an exception class, a tuple of them, or a predicate on the exception.
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff: float = 2.0
    max_interval: float = 30.0
    jitter: bool = True
    retry_on: RetryOn = default_retry_on

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}")
        if min(self.initial_interval, self.max_interval) < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy intervals must be >= 0 and backoff >= 1")

    def should_retry(self, exc: BaseException) -> bool:
        retry_on = self.retry_on
        if isinstance(retry_on, (type, tuple)):
            return isinstance(exc, retry_on)
        return bool(retry_on(exc))

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the `failed_attempts`-th failure."""
        delay = min(self.max_interval,
                    self.initial_interval * self.backoff ** (failed_attempts - 1))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay


@dataclass(frozen=True)
class CachePolicy:
    """Reuse a node's update when it runs again on the same input.

    `key(state)` names the input (default: a stable hash of the whole input state and, for
    a node that takes a `RunContext`, of the call's context as JSON, a part that cannot be
    JSON (an API client) counting by its type: a cached answer for one user is not
    another's; a `key` function must cover what the node reads of the context itself);
    `ttl` is how many seconds an entry lives (None: forever). The cache lives in the
    checkpointer's store (a table in the SQLite file) or, without one, in memory.
    """

    key: Callable[[Any], Hashable] | None = None
    ttl: float | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None and self.ttl <= 0:
            raise ValueError(f"CachePolicy.ttl must be positive seconds or None, got {self.ttl}")
