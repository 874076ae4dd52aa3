"""`LeaseHeartbeat`: renews the thread leases and job claims this process holds.

It runs in a thread of its own (not a task on an event loop), every third of the lease, so a
long synchronous node cannot starve the renewal: a lease or claim expires only when its process
is gone or stuck for the whole lease. The store says how to renew (`renew`); this class keeps
what is held and when to beat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

Held = list[tuple[str, str]]
"""(thread id, owner token) of leases, or (thread id, claim key) of job claims."""

log = logging.getLogger("statemachine.checkpoints")


class LeaseHeartbeat:
    """Keeps leases and claims alive: `renew(leases, claims)` runs on the heartbeat's thread
    each beat that has something to renew; `close()` runs on that thread when it stops."""

    def __init__(self, lease_seconds: float, name: str, renew: Callable[[Held, Held], None],
                 close: Callable[[], None] | None = None) -> None:
        self._lease = lease_seconds
        self._name = name
        self._renew, self._close = renew, close
        self._leases: dict[tuple[str, str], None] = {}
        self._claims: dict[tuple[str, str], None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, thread_id: str, token: str) -> None:
        with self._lock:
            self._leases[(thread_id, token)] = None
            self._start()

    def drop(self, thread_id: str, token: str) -> None:
        with self._lock:
            self._leases.pop((thread_id, token), None)

    def hold_claim(self, thread_id: str, key: str) -> None:
        with self._lock:
            self._claims[(thread_id, key)] = None
            self._start()

    def drop_claim(self, thread_id: str, key: str) -> None:
        with self._lock:
            self._claims.pop((thread_id, key), None)

    def stop(self) -> None:
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None and not self._wake.is_set():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._wake.wait(self._lease / 3):
                with self._lock:
                    leases, claims = list(self._leases), list(self._claims)
                if not leases and not claims:
                    continue
                try:
                    self._renew(leases, claims)
                except Exception as exc:  # busy or unreachable: the next beat tries again,
                    log.debug("lease renewal failed: %s", exc)  # well before expiry
        finally:
            if self._close is not None:
                self._close()
