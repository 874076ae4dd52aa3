"""The scale-out load test (benchmarks/scale_out.py) runs end to end at tiny sizes against the
test PostgreSQL server, so it cannot rot; and its verification does catch lost and repeated
steps. Speed is not asserted."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.scale_out import RunResult, _count_effects

ROOT = Path(__file__).resolve().parent.parent
VERIFICATION = ("jobs_not_done", "state_mismatches", "checkpoint_mismatches", "lost",
                "duplicated", "rerun_in_flight", "unexpected", "kills", "passed", "result")


def _run(dsn: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.scale_out", "--quick", "--dsn", dsn,
                           "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_quick_scale_out_passes_and_writes_the_verification(postgres_dsn, tmp_path):
    out = tmp_path / "scale_out.json"
    result = _run(postgres_dsn, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "FAIL" not in result.stdout
    document = json.loads(out.read_text())
    assert document["passed"] is True and document["result"] == "PASS"
    assert document["sizes"] == {"workers": [2], "threads": 6, "steps": 3, "concurrency": 2}
    assert document["server"]["fsync"] in ("on", "off")
    [run] = document["runs"]
    for name in VERIFICATION:
        assert name in run
    assert run["workers"] == 2 and run["total_steps"] == 18 and run["effects_rows"] == 18
    assert run["lost"] == run["duplicated"] == run["rerun_in_flight"] == 0
    assert run["jobs_not_done"] == run["state_mismatches"] == run["checkpoint_mismatches"] == 0
    assert run["checkpoints_per_thread"] == 4  # the input's, then one per step
    assert sum(run["steps_per_worker"]) == 18
    assert sum(run["jobs_per_worker"]) == 6
    assert run["wall_seconds"] > 0


def test_quick_scale_out_with_a_killed_worker_passes(postgres_dsn, tmp_path):
    out = tmp_path / "scale_out.json"
    # 3 s, beaten every second: a live worker's job is taken only if its heartbeat stood still
    # for two seconds (PostgreSQL hands an expired claim over at once)
    result = _run(postgres_dsn, out, "--kill", "--lease", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = json.loads(out.read_text())["runs"]
    assert run["passed"] is True
    assert run["lost"] == run["duplicated"] == 0
    assert run["kills"] <= 1  # at this size the run may end before the kill point
    assert run["rerun_in_flight"] <= run["kills"] * run["concurrency"]
    assert len(run["jobs_per_worker"]) == 2 + run["kills"]


def _effects(*rows: tuple[str, int, int]) -> list[tuple]:
    """Effect rows (id, thread, step, node, pid, at) from (thread, step, pid)."""
    return [(i, thread, step, "step", pid, float(i)) for i, (thread, step, pid) in
            enumerate(rows)]


def _count(rows, committed=None, killed=None) -> RunResult:
    result = RunResult(workers=2, threads=2, steps=2, concurrency=1, schema="s",
                       lease_seconds=None, kills=len(killed or {}))
    _count_effects(result, rows, {"a": {}, "b": {}}, committed or {}, killed or {})
    return result


def test_the_verification_counts_lost_and_repeated_steps():
    clean = _count(_effects(("a", 1, 10), ("b", 1, 11), ("a", 2, 10), ("b", 2, 11)))
    assert clean.passed and clean.lost == clean.duplicated == 0

    lost = _count(_effects(("a", 1, 10), ("a", 2, 10), ("b", 1, 11)))
    assert lost.lost == 1 and not lost.passed

    twice = _count(_effects(("a", 1, 10), ("a", 2, 10), ("b", 1, 11), ("b", 1, 11),
                            ("b", 2, 11)))
    assert twice.duplicated == 1 and not twice.passed

    extra = _count(_effects(("a", 1, 10), ("a", 2, 10), ("a", 3, 10), ("b", 1, 11),
                            ("b", 2, 11)))
    assert extra.unexpected == 1 and not extra.passed


def test_only_a_killed_workers_uncommitted_last_step_may_run_again():
    rows = _effects(("a", 1, 10), ("b", 1, 10), ("a", 2, 10), ("a", 2, 11), ("b", 2, 11))
    killed_at = 100.0
    in_flight = _count(rows, committed={("a", 2): killed_at + 1}, killed={10: killed_at})
    assert in_flight.rerun_in_flight == 1 and in_flight.duplicated == 0 and in_flight.passed
    # the same re-run of a step the killed worker had committed before it died is a duplicate
    committed_before = _count(rows, committed={("a", 2): killed_at - 1}, killed={10: killed_at})
    assert committed_before.duplicated == 1 and committed_before.rerun_in_flight == 0
    assert not committed_before.passed
    # and one that no worker was killed for is a duplicate too
    assert _count(rows, committed={("a", 2): killed_at + 1}).duplicated == 1
