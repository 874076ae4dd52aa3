"""Shared test setup: hypothesis profiles bounded for CI (see README, "Running the tests")."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("soak", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class Store:
    """Checkpointers over one store: `open()` after a failure plays a restarted process (a new
    SQLiteCheckpointer on the same file; the same object for memory, which has no file)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._memory = MemoryCheckpointer() if kind == "memory" else None
        self._opened: list[SQLiteCheckpointer] = []

    def open(self):
        if self._memory is not None:
            return self._memory
        saver = SQLiteCheckpointer(self.path)
        self._opened.append(saver)
        return saver

    def close(self) -> None:
        for saver in self._opened:
            saver.close()


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = Store(request.param, tmp_path / "runs.db")
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store("sqlite", tmp_path / "runs.db")
    yield s
    s.close()
