"""The cluster benchmark (benchmarks/cluster.py) runs end to end at tiny sizes on Dask's local
clusters, so it cannot rot: every run's results are checked by the benchmark itself (a wrong
result exits non-zero), and the JSON carries a time for each configuration and an overhead
row. Speed is not asserted. Ray's clusters start in seconds each (two of them here), so the
smoke run leaves Ray out; tests/test_runners.py runs the RayRunner itself on a real Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cluster_benchmark_runs_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    command = [sys.executable, "-m", "benchmarks.cluster", "--quick", "--engines", "dask",
               "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Targets (computed from this run):" in result.stdout
    document = json.loads(out.read_text())
    assert document["quick"] is True and document["sizes"]["tasks"] == 8
    assert set(document["fanout"]) == {"threads", "dask-1", "dask-2"}
    assert all(seconds > 0 for seconds in document["fanout"].values())
    assert set(document["overhead"]) == {"local", "dask"}
    row = document["overhead"]["dask"]
    assert row["ms_per_step"] > 0 and row["engine_ms_per_task"] > 0
