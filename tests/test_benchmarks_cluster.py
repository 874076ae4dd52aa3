"""The cluster benchmark (benchmarks/cluster.py) runs end to end at tiny sizes on both engines'
local clusters, so it cannot rot: every run's results are checked by the benchmark itself (a
wrong result exits non-zero), and the JSON carries a time for each configuration and an
overhead row per engine. Speed is not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cluster_benchmark_runs_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.cluster", "--quick", "--json",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Targets (computed from this run):" in result.stdout
    document = json.loads(out.read_text())
    assert document["quick"] is True and document["sizes"]["tasks"] == 8
    assert set(document["fanout"]) == {"threads", "dask-1", "dask-2", "ray-1", "ray-2"}
    assert all(seconds > 0 for seconds in document["fanout"].values())
    assert set(document["overhead"]) == {"local", "dask", "ray"}
    for engine in ("dask", "ray"):
        row = document["overhead"][engine]
        assert row["ms_per_step"] > 0 and row["engine_ms_per_task"] > 0
