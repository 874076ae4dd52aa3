"""The crash workload: the loop runs in a child process that exits abruptly (os._exit, from
inside the work node) at iteration `fail_at`; a second process reads what survived on disk and
resumes. Every work execution appends a line to a side-effect file (write, flush, fsync), so
the parent counts how many finished iterations ran again.

Child: `python -m benchmarks.crash ENGINE MODE DB LOG ITERATIONS CRASH_AT PHASE` prints one
JSON line (phase "resume") or exits with CRASH_EXIT_CODE (phase "crash").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import OURS, THEIRS, ExecutionLog, Params, Result, new_db_path, sqlite_bytes

CRASH_EXIT_CODE = 17
ROOT = Path(__file__).resolve().parent.parent


def _child(engine: str, mode: str, db: Path, log: Path, iterations: int, crash_at: int,
           phase: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "benchmarks.crash", engine, mode, str(db), str(log),
               str(iterations), str(crash_at), phase]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def crash_workload(engine: str, mode: str, p: Params, directory: Path) -> Result:
    """Crash a run at iteration `p.fail_at` in one process, resume it in another."""
    db = new_db_path(directory, f"crash-{engine}-{mode}")
    log = db.with_suffix(".log")
    start = time.perf_counter()
    crashed = _child(engine, mode, db, log, p.iterations, p.fail_at, "crash")
    if crashed.returncode != CRASH_EXIT_CODE:
        raise RuntimeError(f"crash child ({engine} {mode}) exited with {crashed.returncode}, "
                           f"not {CRASH_EXIT_CODE}:\n{crashed.stdout}{crashed.stderr}")
    resumed = _child(engine, mode, db, log, p.iterations, p.fail_at, "resume")
    seconds = time.perf_counter() - start
    if resumed.returncode != 0:
        raise RuntimeError(f"resume child ({engine} {mode}) failed:\n{resumed.stderr}")
    report: dict[str, Any] = json.loads(resumed.stdout.strip().splitlines()[-1])
    counts = ExecutionLog(log).counts()
    finished = p.fail_at - 1  # iterations completed before the one that crashed
    reran = sum(1 for i in range(1, p.fail_at) if counts[i] > 1)
    every_iteration_ran = all(counts[i] >= 1 for i in range(1, p.iterations + 1))
    extra = {"finished_before_crash": finished, "recovered": report["recovered"],
             "lost": finished - report["recovered"], "finished_reran": reran,
             "crashed_iteration_runs": counts[p.fail_at],
             "result_ok": bool(report["result_ok"]) and every_iteration_ran,
             "resume_ms": round(report["resume_seconds"] * 1000, 1)}
    return Result("crash", mode, 2 * p.iterations, seconds, sqlite_bytes(db), engine=engine,
                  extra=extra)


def main(argv: list[str]) -> int:
    engine, mode, db, log, iterations, crash_at, phase = argv
    if engine == OURS:
        from .workloads import crash_child
    elif engine == THEIRS:
        from .langgraph_workloads import crash_child  # type: ignore[no-redef]
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    report = crash_child(phase, mode, Path(db), Path(log), int(iterations), int(crash_at),
                         CRASH_EXIT_CODE)
    print(json.dumps(report))
    return 0 if phase == "resume" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
