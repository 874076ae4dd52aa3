"""The benchmark runs end to end at tiny sizes, so it cannot rot. Speed is not asserted: the
targets are printed PASS/FAIL by the benchmark itself, never checked here."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("loop", "chain", "fanout", "commit-limit", "latest-read", "resume", "growth",
             "crash", "chat", "big-append")


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
    assert ("loop", "sqlite-full") in {(r["workload"], r["mode"]) for r in rows}
    assert ("chain", "sqlite-full") not in {(r["workload"], r["mode"]) for r in rows}
    assert {r["workload"] for r in rows} == set(WORKLOADS)
    limit = next(r for r in rows if r["workload"] == "commit-limit")
    assert limit["steps"] == 2 * document["params"]["iterations"] and limit["seconds"] > 0
    names = {t["target"] for t in document["targets"]}
    assert "SQLite loop: ainvoke (async nodes) >= 0.8x invoke, same run" in names
    assert "SQLite loop >= 50% of a bare commit per step, same run" in names
    for row in rows:
        assert row["engine"] == "statemachine"
        if row["mode"].startswith("sqlite") and row["workload"] not in ("latest-read",
                                                                        "commit-limit"):
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


def test_quick_chat_and_big_append_alone_on_our_engine(tmp_path):
    out = tmp_path / "results.json"
    result = _run("--quick", "--only", "chat,big-append", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "Chat:" in result.stdout and "Big append:" in result.stdout
    document = json.loads(out.read_text())
    params, rows = document["params"], document["rows"]
    assert {r["workload"] for r in rows} == {"chat", "big-append"}
    chats = [r for r in rows if r["workload"] == "chat"]
    assert [r["extra"]["turns"] for r in chats] == params["chat_sizes"]
    for row in chats:
        turns, extra = row["extra"]["turns"], row["extra"]
        assert row["steps"] == turns
        assert extra["messages"] == 2 * turns and extra["state_ok"] is True
        assert extra["state_chars"] == 2 * turns * 1000
        assert row["db_bytes"] > 0 and extra["wal_bytes_after_close"] >= 0
        assert "growth_exponent" in extra
    big = next(r for r in rows if r["workload"] == "big-append")
    assert big["extra"]["state_ok"] is True and big["steps"] == params["big_append_steps"]
    assert big["extra"]["state_bytes"] == params["big_append_steps"] * params["big_append_chars"]
    assert big["db_bytes"] > 0
    names = {t["target"] for t in document["targets"]}
    assert any(name.startswith("chat at") for name in names)
    assert any(name.startswith("big-append") for name in names)


PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_draws_the_growth_charts_of_the_run(tmp_path):
    charts = tmp_path / "charts"
    result = _run("--quick", "--only", "growth,chat", "--plot", str(charts))
    assert result.returncode == 0, result.stderr
    assert (charts / "growth.png").read_bytes().startswith(PNG)
    # the server chart comes from the committed server benchmark's document
    assert (charts / "server_latency.png").exists() == (ROOT / "benchmarks/server.json").exists()


def test_plot_draws_ratios_and_the_server_latencies_from_documents(tmp_path):
    from benchmarks import plot

    results = {"comparisons": [
        {"workload": "loop", "ours_mode": "sqlite", "theirs_mode": "sqlite:sync",
         "speed_ratio": 15.2},
        {"workload": "fanout", "ours_mode": "memory", "theirs_mode": "memory",
         "speed_ratio": 0.8}], "rows": []}
    server = {"rows": [
        {"engine": "statemachine", "database": "sqlite", "latencies_ms": [6.0, 9.5, 51.0]},
        {"engine": "langgraph", "database": "sqlite", "latencies_ms": [30.0, 80.0, 400.0]}]}
    written = plot.draw(tmp_path, results, server)
    assert sorted(p.name for p in written) == ["ratios.png", "server_latency.png"]
    assert all(p.read_bytes().startswith(PNG) for p in written)
    assert plot.draw(tmp_path / "none", {"rows": [], "comparisons": []}) == []


def test_only_refuses_an_unknown_workload():
    result = _run("--quick", "--only", "chat,nonsense")
    assert result.returncode == 2
    assert "nonsense" in result.stderr


def test_benchmark_modules_do_not_import_langgraph():
    code = ("import sys, benchmarks.__main__, benchmarks.workloads, benchmarks.compare, "
            "benchmarks.crash, benchmarks.appending, benchmarks.store, benchmarks.plot; "
            "assert not any(m.startswith('langgraph') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("langgraph") is not None,
                    reason="LangGraph is installed here")
def test_compare_without_langgraph_says_how_to_install_it():
    result = _run("--quick", "--compare", "langgraph")
    assert result.returncode == 2
    assert "pip install" in result.stderr and "langgraph" in result.stderr


def test_the_store_benchmark_runs_in_quick_mode(tmp_path):
    """benchmarks/store.py end to end at tiny sizes (LangGraph is not needed for it)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "store.json"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "benchmarks.store", "--quick", "--json",
                           str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["sizes"]["items"] == 200 and result["put_get_ours"] > 0
    assert {t["target"].split(" ")[0] for t in result["targets"]} == {"a", "filtered",
                                                                       "semantic"}
