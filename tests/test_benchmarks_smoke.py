"""The benchmark runs end to end at tiny sizes, so it cannot rot. Speed is not asserted: the
targets are printed PASS/FAIL by the benchmark itself, never checked here."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("loop", "chain", "fanout", "latest-read", "resume", "growth", "crash")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_quick_benchmark_prints_every_workload_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    result = _run("--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    for workload in WORKLOADS:
        assert workload in result.stdout
    assert "Targets" in result.stdout
    document = json.loads(out.read_text())
    assert document["machine"]["cores"] >= 1
    assert "statemachine" in document["versions"]
    rows = document["rows"]
    assert {(r["workload"], r["mode"]) for r in rows} >= {
        (w, m) for w in ("loop", "chain", "fanout")
        for m in ("none", "memory", "sqlite", "sqlite-ainvoke")}
    assert {r["workload"] for r in rows} == set(WORKLOADS)
    for row in rows:
        assert row["engine"] == "statemachine"
        if row["mode"].startswith("sqlite") and row["workload"] != "latest-read":
            assert row["db_bytes"] > 0
    growth = [r for r in rows if r["workload"] == "growth"]
    assert all("growth_exponent" in r["extra"] for r in growth)
    # the correctness of resume and crash is checked by the run itself, and reported
    for row in rows:
        if row["workload"] in ("resume", "crash"):
            assert row["extra"]["result_ok"] is True
            assert row["extra"]["finished_reran"] == 0
    assert {t["result"] for t in document["targets"]} <= {"PASS", "FAIL", "n/a"}
    assert document["checks"] and all(t["result"] == "PASS" for t in document["checks"])


def test_benchmark_modules_do_not_import_langgraph():
    code = ("import sys, benchmarks.__main__, benchmarks.workloads, benchmarks.compare, "
            "benchmarks.crash; assert not any(m.startswith('langgraph') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("langgraph") is not None,
                    reason="LangGraph is installed here")
def test_compare_without_langgraph_says_how_to_install_it():
    result = _run("--quick", "--compare", "langgraph")
    assert result.returncode == 2
    assert "pip install" in result.stderr and "langgraph" in result.stderr
