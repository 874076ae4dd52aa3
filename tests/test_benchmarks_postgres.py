"""The PostgreSQL benchmark (benchmarks/postgres.py) runs end to end at tiny sizes, ours alone
(LangGraph is not needed), so it cannot rot: every workload in both modes, the final states
checked, the bytes counted, the latest-state reads measured. Speed is not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("loop", "chain", "fanout", "chat")
MODES = ("sync", "async")


def _server_args() -> list[str]:
    """--dsn for $STATEMACHINE_TEST_POSTGRES; else nothing (the benchmark starts a throwaway
    server from the machine's PostgreSQL binaries), or a skip when there are none — except
    under CI, where it must run (as tests/conftest.py's postgres_dsn fixture does)."""
    if os.environ.get("STATEMACHINE_TEST_POSTGRES"):
        return ["--dsn", os.environ["STATEMACHINE_TEST_POSTGRES"]]
    from statemachine.testing.postgres import PostgresNotFoundError, find_postgres_bin

    try:
        find_postgres_bin()
    except PostgresNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL binaries for the benchmark's server: {exc}")
    return []


def test_quick_postgres_benchmark_runs_ours_in_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "postgres.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.postgres", "--quick", "--json", str(out),
         *_server_args()], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    document = json.loads(out.read_text())
    assert document["compare"] is False and document["comparisons"] == []
    assert document["server"]["fsync"] in ("on", "off")

    rows = {(r["workload"], r["mode"]): r for r in document["rows"]}
    assert all(r["engine"] == "statemachine" for r in document["rows"])
    assert set(rows) == {(w, m) for w in WORKLOADS for m in MODES}
    for (workload, mode), row in rows.items():
        assert row["extra"]["state_ok"] is True, (workload, mode, row)
        assert row["db_bytes"] > 0, (workload, mode)
        assert row["steps"] > 0 and row["seconds"] > 0, (workload, mode)
    sizes = document["sizes"]
    assert rows[("chat", "sync")]["extra"]["messages"] == 2 * sizes["chat_turns"]

    assert document["checks"] and all(c["ok"] for c in document["checks"])
    assert document["all_states_ok"] is True

    reads = {(r["extra"]["after"], r["mode"]): r for r in document["reads"]}
    assert set(reads) == {(w, m) for w in ("loop", "chat") for m in MODES}
    for key, read in reads.items():
        assert read["engine"] == "statemachine"
        assert read["seconds"] > 0 and read["extra"]["reads"] == sizes["reads"], key
        assert read["extra"]["state_ok"] is True, key
    assert reads[("loop", "sync")]["extra"]["api"] == "get_state"

    limit = document["limit"]  # the server's own rate: a bare commit per step
    assert limit["workload"] == "commit-limit" and limit["steps"] == 2 * sizes["iterations"]
    assert limit["steps_per_second"] > 0 and len(limit["runs"]) == sizes["rounds"]
    assert "The server's own limit: a bare autocommit INSERT per step" in result.stdout

    targets = {t["target"]: t for t in document["targets"]}
    read_targets = [t for name, t in targets.items() if name.startswith("latest-state read")]
    assert len(read_targets) == 2
    assert all(t["result"] in ("PASS", "FAIL") for t in read_targets)
