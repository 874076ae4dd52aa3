"""The benchmark runs end to end at tiny sizes, so it cannot rot. Speed is not asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_every_workload_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for workload in ("loop", "chain", "fanout", "latest-read", "growth"):
        assert workload in result.stdout
    rows = json.loads(out.read_text())
    assert {(r["workload"], r["mode"]) for r in rows} >= {
        (w, m) for w in ("loop", "chain", "fanout") for m in ("none", "memory", "sqlite")}
    for row in rows:
        if row["mode"] == "sqlite" and row["workload"] != "latest-read":
            assert row["db_bytes"] > 0
    growth = [r for r in rows if r["workload"] == "growth"]
    assert all("growth_exponent" in r["extra"] for r in growth)
