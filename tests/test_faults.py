"""Fault injection with real processes and real files: what the stores must survive.

Each test runs one scenario of benchmarks/faults.py, short (the whole file takes well under a
minute on 2 cores), on the workload of tests/fault_graph.py (a three-round fan-out whose tasks
record each execution in a ledger keyed by task id), in processes of tests/fault_child.py and
the `statemachine` CLI. A scenario returns an `Outcome` whose `problems` says, one line each,
what did not hold; the tests assert it is empty and pin the key facts. `pytest -m soak` runs
every scenario in a loop for longer (`FAULT_SOAK_SECONDS`, default 600), as
`python -m benchmarks.faults --seconds N` does with its figures (docs/reliability.md).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import faults


def assert_clean(outcome: faults.Outcome) -> None:
    assert outcome.problems == []
    assert (outcome.lost, outcome.twice) == (0, 0)
    assert outcome.checks_ok == outcome.checks


def test_per_request_checkpointers_beside_live_runs_corrupt_nothing(tmp_path):
    """Four processes run the graph on three threads each while a fourth thread of theirs opens
    and closes a SQLiteCheckpointer on the same file every 20 ms. Opening a file's descriptor
    and closing it drops every POSIX lock the process holds on it, its SQLite connections'
    included: reading the header with a plain open() corrupted the database within seconds."""
    outcome = faults.concurrent_checkpointers(tmp_path, seconds=4.0, processes=4, workers=3)
    assert_clean(outcome)
    assert outcome.checks == 1  # PRAGMA integrity_check in a fresh process, writers gone
    assert outcome.faults["checkpointer opened and closed beside live runs"] > 200
    assert outcome.runs == outcome.details["threads"] > 0  # every run ended with its state


@settings(max_examples=2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_sigkill_at_random_moments_loses_and_repeats_no_committed_step(tmp_path_factory, seed):
    outcome = faults.kill_at_random(tmp_path_factory.mktemp("kill"), threads=1, kills=2,
                                    seed=seed)
    assert_clean(outcome)
    assert outcome.runs == 1
    assert outcome.faults["SIGKILL"] >= 1


def test_sigkill_on_postgres_loses_and_repeats_no_committed_step(tmp_path, postgres_dsn):
    from conftest import postgres_schema

    outcome = faults.kill_at_random(tmp_path, threads=1, kills=2, seed=7,
                                    postgres=(postgres_dsn, postgres_schema()))
    assert_clean(outcome)
    assert outcome.runs == 1
    assert outcome.faults["SIGKILL"] >= 1


def test_disk_full_fails_the_run_cleanly_and_it_resumes_once_there_is_room(tmp_path):
    """On a 1 MB tmpfs (we run as root; skipped where mounting is not allowed)."""
    try:
        outcome = faults.disk_full(tmp_path)
    except PermissionError as exc:
        pytest.skip(str(exc))
    assert_clean(outcome)
    assert outcome.details["rc"] == faults.EXIT_CHECKPOINT  # a CheckpointError
    assert "close_error" not in outcome.details["full"]
    head = outcome.details["after"]["checkpoints"][-1]
    assert head[4] == "failed" or outcome.details["after"]["owner"] is None
    assert outcome.runs == 1


def test_a_lock_held_past_busy_timeout_fails_the_run_and_frees_the_thread(tmp_path):
    outcome = faults.lock_held(tmp_path, busy_timeout=0.5, hold=3.0)
    assert_clean(outcome)
    assert outcome.details["rc"] == faults.EXIT_CHECKPOINT  # a CheckpointError
    assert outcome.details["failed_after"] < 2.5  # not the 3 s the lock was held
    assert outcome.runs == 1


def test_damaged_databases_give_a_clean_error_never_a_traceback_or_a_hang(tmp_path):
    """Every kind of damage in faults.DAMAGE, each on its own copy of a finished thread's
    file, read four ways (resume, CLI threads / history / show) in parallel."""
    outcome = faults.damaged_files(tmp_path)
    assert outcome.problems == []
    results = outcome.details["results"]
    assert set(results) == set(faults.DAMAGE)
    for kind, ops in results.items():
        assert set(ops) == {"resume", "threads", "history", "show"}
        if kind not in faults.ROW_COLUMNS:  # a damaged file cannot be resumed or shown
            assert ops["resume"][0] == faults.EXIT_CHECKPOINT, kind
            assert ops["show"][0] != 0, kind


def test_a_resumer_whose_clock_runs_an_hour_ahead_does_not_take_a_live_lease(tmp_path):
    """The skew is in the resumer only: tests/fault_child.py replaces its `time.time` at
    start-up (libfaketime breaks Python's sleeps)."""
    outcome = faults.clock_skew(tmp_path, skew=3600.0, lease=2.0)
    assert_clean(outcome)
    assert outcome.details["resumer"][0] == faults.EXIT_BUSY
    assert outcome.runs == 1  # the owner finished its run, every task once


def test_concurrent_resumers_of_a_failed_thread_run_it_once(tmp_path):
    outcome = faults.concurrent_resumers(tmp_path, resumers=4)
    assert_clean(outcome)
    assert outcome.details["workers"] == 1
    assert set(outcome.details["codes"]) <= {0, faults.CLI_EXIT_BUSY}
    assert faults.CLI_EXIT_BUSY in outcome.details["codes"]
    assert outcome.runs == 1


@pytest.mark.soak
def test_fault_soak(postgres_dsn):
    seconds = float(os.environ.get("FAULT_SOAK_SECONDS", "600"))
    outcome = faults.soak(seconds, postgres_dsn=postgres_dsn, mount=os.geteuid() == 0)
    print(faults.figures(outcome))
    assert_clean(outcome)
    assert outcome.runs > 0 and sum(outcome.faults.values()) > 0
