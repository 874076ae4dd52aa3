"""The server workload (benchmarks/server.py) runs end to end at tiny sizes, on our engine only
(LangGraph is not needed), so it cannot rot: every turn succeeds, every thread ends with its
messages in order, and each row carries one latency per turn. Speed is not asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONVERSATIONS, TURNS = 10, 2  # --quick


def _has_postgres() -> bool:
    from statemachine.testing.postgres import PostgresNotFoundError, find_postgres_bin

    try:
        find_postgres_bin()
    except PostgresNotFoundError:
        return False
    return True


def test_quick_server_workload_loses_nothing_and_writes_every_latency(tmp_path: Path) -> None:
    out = tmp_path / "server.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.server", "--quick", "--json",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Targets" in result.stdout and "FAIL" not in result.stdout
    document = json.loads(out.read_text())
    assert document["sizes"]["conversations"] == CONVERSATIONS
    assert document["sizes"]["turns"] == TURNS
    assert "statemachine" in document["versions"] and document["machine"]["cores"] >= 1
    rows = {(r["engine"], r["database"]): r for r in document["rows"]}
    expected = {("statemachine", "sqlite")}
    if _has_postgres():
        expected.add(("statemachine", "postgres"))
    assert set(rows) == expected
    for row in rows.values():
        assert row["conversations"] == CONVERSATIONS and row["turns"] == TURNS
        assert row["threads_wrong"] == 0
        assert row["failed_turns"] == 0 and row["errors"] == 0 and row["locked_errors"] == 0
        assert len(row["latencies_ms"]) == CONVERSATIONS * TURNS
        assert len(row["delays_ms"]) == CONVERSATIONS * TURNS
        assert all(latency > 0 for latency in row["latencies_ms"])
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["max_ms"] == max(row["latencies_ms"])
        assert row["turns_per_second"] > 0
    assert all(t["passed"] is True for t in document["targets"])
