"""`python -m benchmarks.scale_out [--workers 1,2,4] [--threads M] [--steps S] [--concurrency C]
[--dsn URL] [--kill] [--json out.json] [--quick]`

A load test of the work queue on PostgreSQL: M threads of an S-step loop
(benchmarks/scale_out_graph.py) are submitted with `app.submit`, then N worker processes
(`python -m statemachine worker benchmarks.scale_out_graph:graph --db DSN --schema SCHEMA
--drain -q --concurrency C`) run them until the queue is empty. Wall time runs from the first
worker's start to the last one's exit (Python start-up and imports included); "active" time
runs from the first side effect to the last one (by the server's clock).

Each run, in a fresh schema, is then verified:

* every job is `done`;
* every thread's final state equals that of an uninterrupted in-process run of the same input
  (MemoryCheckpointer), and the thread has as many checkpoints as that run made;
* the `effects` table (one row per node execution, inserted by the node on its own autocommit
  connection before the step commits) has exactly one row per (thread, step): a missing row is
  a lost step, a second row a step run twice.

With --kill, one worker is SIGKILLed once a third of the steps are done and a replacement is
started at once; its jobs are taken over when their claims expire (--lease, 5 s by default
with --kill). A step that was running when the worker died may run again (at-least-once):
those are counted as "re-run in-flight" — the second execution of a killed worker's last step
on a thread, whose checkpoint was committed after the kill (so the killed worker had not
committed it) — and must be at most kills x concurrency; any other second execution is a
duplicate and fails the run.

Without --dsn a throwaway server is started from the machine's PostgreSQL binaries
(`statemachine.testing.postgres.postgres_server`, fsync on unless --no-fsync). With --dsn the
schemas it creates are dropped at the end unless --keep. Exits 1 if any run fails a check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .about import head, load_average, print_head, progress
from .common import positive_int, versions
from .scale_out_graph import DSN_VARIABLE, NODE, TABLE_VARIABLE, build

ROOT = Path(__file__).resolve().parent.parent
GRAPH = "benchmarks.scale_out_graph:graph"
KILL_AT = 1 / 3
"""With --kill: the fraction of all steps done when a worker is killed."""
KILL_LEASE = 5.0
"""With --kill and no --lease: seconds before a dead worker's jobs can be taken over."""
PACKAGES = ("statemachine", "pydantic", "psycopg", "psycopg-pool")
_SUMMARY = re.compile(r"worker done: (\d+) claimed, (\d+) done")


@dataclass(frozen=True)
class Sizes:
    workers: tuple[int, ...]
    threads: int
    steps: int
    concurrency: int


DEFAULT = Sizes(workers=(1, 2, 4), threads=200, steps=20, concurrency=4)
QUICK = Sizes(workers=(2,), threads=6, steps=3, concurrency=2)


@dataclass
class RunResult:
    workers: int
    threads: int
    steps: int
    concurrency: int
    schema: str
    lease_seconds: float | None
    wall_seconds: float = 0.0
    active_seconds: float = 0.0
    jobs_per_worker: list[int | str] = field(default_factory=list)
    """Jobs each worker finished (its own summary line); "killed" for a killed worker."""
    steps_per_worker: list[int] = field(default_factory=list)
    """Node executions per worker process (from the effects table), in start order."""
    kills: int = 0
    kill_note: str | None = None
    jobs_total: int = 0
    jobs_not_done: int = 0
    jobs_taken_over: int = 0
    """Jobs claimed more than once (a killed worker's, continued by another)."""
    state_mismatches: int = 0
    checkpoint_mismatches: int = 0
    checkpoints_per_thread: int = 0
    effects_rows: int = 0
    lost: int = 0
    duplicated: int = 0
    rerun_in_flight: int = 0
    unexpected: int = 0
    """Effects of steps that should not exist (a step number past the end, an unknown thread)."""
    worker_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.threads * self.steps

    @property
    def steps_per_second(self) -> float:
        return self.total_steps / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def active_steps_per_second(self) -> float:
        return self.total_steps / self.active_seconds if self.active_seconds else 0.0

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document.update(total_steps=self.total_steps, steps_per_second=self.steps_per_second,
                        active_steps_per_second=self.active_steps_per_second,
                        passed=self.passed, result="PASS" if self.passed else "FAIL")
        return document


# -- the database ------------------------------------------------------------------------------


def _connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def server_info(dsn: str) -> dict[str, Any]:
    with _connect(dsn) as conn:
        def show(name: str) -> str:
            return conn.execute(f"SHOW {name}").fetchone()[0]

        return {"version": show("server_version"), "fsync": show("fsync"),
                "synchronous_commit": show("synchronous_commit"),
                "max_connections": int(show("max_connections"))}


def _create_effects(dsn: str, schema: str) -> str:
    from psycopg import sql

    with _connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(
            "CREATE TABLE {}.effects (id BIGSERIAL PRIMARY KEY, thread_id TEXT NOT NULL, "
            "step INTEGER NOT NULL, node TEXT NOT NULL, pid INTEGER NOT NULL, "
            "at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
        ).format(sql.Identifier(schema)))
    return f"{schema}.effects"


def _drop_schemas(dsn: str, *schemas: str) -> None:
    from psycopg import sql

    with _connect(dsn) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def _effects_done(conn: Any, effects_schema: str) -> tuple[int, int | None]:
    """(rows in the effects table, pid of the newest row)."""
    from psycopg import sql

    row = conn.execute(sql.SQL(
        "SELECT count(*), (SELECT pid FROM {0}.effects ORDER BY id DESC LIMIT 1) "
        "FROM {0}.effects").format(sql.Identifier(effects_schema))).fetchone()
    return row[0], row[1]


# -- workers -----------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    killed_at: float | None = None
    """Wall-clock time (time.time()) of the SIGKILL, if it was killed."""
    exited: float | None = None


def _start_worker(dsn: str, schema: str, effects_table: str, concurrency: int,
                  lease: float | None, logs: Path, index: int) -> _Worker:
    command = [sys.executable, "-m", "statemachine", "worker", GRAPH, "--db", dsn,
               "--schema", schema, "--drain", "-q", "--concurrency", str(concurrency)]
    if lease is not None:
        command += ["--lease", str(lease)]
    env = {**os.environ, DSN_VARIABLE: dsn, TABLE_VARIABLE: effects_table}
    log = logs / f"worker-{index}.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)
    return _Worker(process, log, time.perf_counter())


def _run_workers(result: RunResult, dsn: str, effects_schema: str, lease: float | None,
                 kill: bool, timeout: float, logs: Path) -> list[_Worker]:
    """Start the workers, kill one if asked, and wait for all of them to exit."""
    effects_table = f"{effects_schema}.effects"
    started = time.perf_counter()
    workers = [_start_worker(dsn, result.schema, effects_table, result.concurrency, lease,
                             logs, i) for i in range(result.workers)]
    kill_after = int(result.total_steps * KILL_AT) if kill else None
    deadline = started + timeout
    watch = _connect(dsn) if kill else None
    try:
        while any(w.exited is None for w in workers):
            now = time.perf_counter()
            for w in workers:
                if w.exited is None and w.process.poll() is not None:
                    w.exited = now
            if kill_after is not None and watch is not None:
                done, newest = _effects_done(watch, effects_schema)
                if done >= kill_after:
                    kill_after = None
                    victim = next((w for w in workers if w.exited is None
                                   and w.process.pid == newest), None) \
                        or next((w for w in workers if w.exited is None), None)
                    if victim is None:
                        result.kill_note = "every worker had exited before the kill point"
                    else:
                        victim.killed_at = time.time()
                        victim.process.send_signal(signal.SIGKILL)
                        victim.process.wait()  # reaped: its pid is seen as dead at once
                        victim.exited = time.perf_counter()
                        result.kills += 1
                        result.kill_note = (f"killed pid {victim.process.pid} after {done} of "
                                            f"{result.total_steps} steps")
                        workers.append(_start_worker(
                            dsn, result.schema, effects_table, result.concurrency, lease,
                            logs, len(workers)))
            if now > deadline:
                for w in workers:
                    if w.exited is None:
                        w.process.kill()
                        w.process.wait()
                        w.exited = time.perf_counter()
                result.problems.append(f"workers still running after {timeout:g} s: killed")
                break
            time.sleep(0.01 if kill_after is None else 0.05)
        if kill and result.kills == 0 and result.kill_note is None:
            result.kill_note = "the run ended before the kill point"
    finally:
        if watch is not None:
            watch.close()
    result.wall_seconds = max(w.exited or 0.0 for w in workers) - started
    return workers


# -- verification ------------------------------------------------------------------------------


def _inputs(threads: int, steps: int) -> dict[str, dict[str, Any]]:
    return {f"t{i:05d}": {"thread": f"t{i:05d}", "steps": steps} for i in range(threads)}


@contextlib.contextmanager
def _no_effects() -> Iterator[None]:
    """The reference run records no side effects, whatever this process's environment says."""
    saved = {k: os.environ.pop(k) for k in (DSN_VARIABLE, TABLE_VARIABLE) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def reference(inputs: dict[str, dict[str, Any]]) -> dict[str, tuple[dict[str, Any], int]]:
    """Each thread's final state and checkpoint count in an uninterrupted in-process run."""
    from checkpoints import MemoryCheckpointer

    app = build().compile(checkpointer=MemoryCheckpointer())
    expected = {}
    with _no_effects():
        for thread, value in inputs.items():
            app.invoke(value, thread_id=thread)
            snapshot = app.get_state(thread)
            expected[thread] = (snapshot.state.model_dump(), len(app.history(thread)))
    return expected


def _verify(result: RunResult, app: Any, dsn: str, effects_schema: str,
            inputs: dict[str, dict[str, Any]], workers: list[_Worker]) -> None:
    from psycopg import sql

    problems = result.problems
    for w in workers:
        text = w.log.read_text(errors="replace")
        if w.killed_at is not None:
            result.jobs_per_worker.append("killed")
            continue
        found = _SUMMARY.search(text)
        result.jobs_per_worker.append(int(found.group(2)) if found else "?")
        if w.process.returncode != 0 or found is None:
            result.worker_failures.append(
                f"pid {w.process.pid} exited {w.process.returncode}: {text.strip()[-2000:]}")
    if result.worker_failures:
        problems.append(f"{len(result.worker_failures)} worker(s) failed")

    jobs = {j.thread_id: j for j in app.jobs()}
    result.jobs_total = len(jobs)
    result.jobs_not_done = sum(1 for t in inputs if t not in jobs or jobs[t].status != "done")
    result.jobs_taken_over = sum(1 for j in jobs.values() if j.attempts > 1)
    if result.jobs_not_done or set(jobs) != set(inputs):
        problems.append(f"{result.jobs_not_done} of {len(inputs)} jobs not done")

    expected = reference(inputs)
    result.checkpoints_per_thread = next(iter(expected.values()))[1] if expected else 0
    with _connect(dsn) as conn:
        counts = dict(conn.execute(sql.SQL(
            "SELECT t.thread_id, count(*) FROM {0}.checkpoints c JOIN {0}.threads t "
            "ON t.key = c.thread GROUP BY t.thread_id").format(
                sql.Identifier(result.schema))).fetchall())
        rows = conn.execute(sql.SQL(
            "SELECT id, thread_id, step, node, pid, extract(epoch from at) FROM {}.effects "
            "ORDER BY id").format(sql.Identifier(effects_schema))).fetchall()
        # when each step was committed (the checkpoint holding the state after it; the
        # workers' wall clock, this machine's): tells an in-flight step from a committed one
        committed = {(thread, step): at for thread, step, at in conn.execute(sql.SQL(
            "SELECT t.thread_id, c.step, c.created_at FROM {0}.checkpoints c JOIN {0}.threads t "
            "ON t.key = c.thread ORDER BY c.id").format(sql.Identifier(result.schema)))}
    for thread, (state, checkpoints) in expected.items():
        try:
            snapshot = app.get_state(thread)
        except Exception:  # e.g. a thread no worker ever started
            result.state_mismatches += 1
        else:
            if snapshot.status != "done" or snapshot.state.model_dump() != state:
                result.state_mismatches += 1
        if counts.get(thread) != checkpoints:
            result.checkpoint_mismatches += 1
    if result.state_mismatches:
        problems.append(f"{result.state_mismatches} thread(s) end in another state than an "
                        "uninterrupted run")
    if result.checkpoint_mismatches:
        problems.append(f"{result.checkpoint_mismatches} thread(s) have another number of "
                        f"checkpoints than {result.checkpoints_per_thread}")

    _count_effects(result, rows, inputs, committed,
                   {w.process.pid: w.killed_at for w in workers if w.killed_at is not None})
    pids = [w.process.pid for w in workers]
    per_pid = Counter(row[4] for row in rows)
    result.steps_per_worker = [per_pid.get(pid, 0) for pid in pids]
    if sum(per_pid.values()) != sum(result.steps_per_worker):
        problems.append("effects written by processes that are not this run's workers")
    if rows:
        times = [row[5] for row in rows]
        result.active_seconds = float(max(times) - min(times))


def _count_effects(result: RunResult, rows: list[tuple[Any, ...]],
                   inputs: dict[str, dict[str, Any]],
                   committed: dict[tuple[str, int], float], killed: dict[int, float]) -> None:
    """Lost, duplicated, re-run in-flight and unexpected effects.

    `rows` are the effects (id, thread, step, node, pid, at) in insertion order; `committed`
    is when each (thread, step) was committed; `killed` maps each killed worker's pid to when
    it was killed. A second execution is an in-flight re-run only if the first was the killed
    worker's last step on that thread and the step was committed after the kill (by the second
    run): a step committed before the kill must never run again.
    """
    result.effects_rows = len(rows)
    by_key: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    last_of: dict[tuple[int, str], int] = {}  # (pid, thread) -> the last step it ran there
    for row in rows:
        _, thread, step, node, pid, _ = row
        if thread not in inputs or node != NODE or not 1 <= step <= result.steps:
            result.unexpected += 1
            continue
        by_key[(thread, step)].append(row)
        last_of[(pid, thread)] = max(step, last_of.get((pid, thread), 0))
    for thread in inputs:
        for step in range(1, result.steps + 1):
            runs = by_key.get((thread, step), [])
            if not runs:
                result.lost += 1
            elif len(runs) > 1:
                first, second = runs[0], runs[1]
                pid = first[4]
                in_flight = (len(runs) == 2 and pid in killed and second[4] != pid
                             and last_of[(pid, thread)] == step
                             and committed.get((thread, step), 0.0) > killed[pid])
                if in_flight:
                    result.rerun_in_flight += 1
                else:
                    result.duplicated += len(runs) - 1
    problems = result.problems
    if result.lost:
        problems.append(f"{result.lost} step(s) lost (no effect)")
    if result.duplicated:
        problems.append(f"{result.duplicated} step(s) ran twice")
    if result.unexpected:
        problems.append(f"{result.unexpected} unexpected effect(s)")
    if result.rerun_in_flight > result.kills * result.concurrency:
        problems.append(f"{result.rerun_in_flight} in-flight re-runs, more than kills x "
                        f"concurrency = {result.kills * result.concurrency}")


# -- one run -----------------------------------------------------------------------------------


def run_once(dsn: str, workers: int, threads: int, steps: int, concurrency: int, *,
             kill: bool = False, lease: float | None = None, timeout: float = 900.0,
             keep: bool = False, progress: Any = None) -> RunResult:
    """Submit `threads` runs in a fresh schema, run them on `workers` processes, verify."""
    from checkpoints.postgres import PostgresCheckpointer

    schema = f"scale_out_{uuid.uuid4().hex[:12]}"
    effects_schema = f"{schema}_fx"
    if kill and lease is None:
        lease = KILL_LEASE
    result = RunResult(workers, threads, steps, concurrency, schema, lease)
    inputs = _inputs(threads, steps)
    say = progress or (lambda message: None)
    _create_effects(dsn, effects_schema)
    options = {} if lease is None else {"lease_seconds": lease}
    saver = PostgresCheckpointer(dsn, schema=schema, **options)
    try:
        app = build().compile(checkpointer=saver)
        say(f"{workers} worker(s): submitting {threads} threads x {steps} steps "
            f"(schema {schema})")
        for thread, value in inputs.items():
            app.submit(value, thread_id=thread)
        with tempfile.TemporaryDirectory(prefix="statemachine-scale-out-") as logs:
            say(f"{workers} worker(s): running" + (" (one will be killed)" if kill else ""))
            started = _run_workers(result, dsn, effects_schema, lease, kill, timeout,
                                   Path(logs))
            say(f"{workers} worker(s): verifying")
            _verify(result, app, dsn, effects_schema, inputs, started)
    finally:
        saver.close()
        if not keep:
            _drop_schemas(dsn, schema, effects_schema)
    return result


# -- output ------------------------------------------------------------------------------------


def _jobs(result: RunResult) -> str:
    return "/".join(str(j) for j in result.jobs_per_worker)


def print_table(results: list[RunResult]) -> None:
    head = (f"{'workers':>7} {'conc':>4} {'threads':>7} {'steps/thr':>9} {'total steps':>11} "
            f"{'wall s':>7} {'steps/s':>8} {'active s':>8} {'act st/s':>8} {'kills':>5} "
            f"{'lost':>4} {'dup':>3} {'rerun':>5} {'result':>6}  jobs per worker "
            "(steps per worker)")
    print_head(head)
    for r in results:
        print(f"{r.workers:>7} {r.concurrency:>4} {r.threads:>7} {r.steps:>9} "
              f"{r.total_steps:>11,} {r.wall_seconds:>7.2f} {r.steps_per_second:>8,.0f} "
              f"{r.active_seconds:>8.2f} {r.active_steps_per_second:>8,.0f} {r.kills:>5} "
              f"{r.lost:>4} {r.duplicated:>3} {r.rerun_in_flight:>5} "
              f"{'PASS' if r.passed else 'FAIL':>6}  {_jobs(r)} "
              f"({'/'.join(str(s) for s in r.steps_per_worker)})")
    print("(wall: first worker started -> last exited, start-up included; active: first side "
          "effect -> last; rerun: a killed worker's in-flight step run again)")
    for r in results:
        details = [f"checkpoints per thread {r.checkpoints_per_thread} "
                   f"(mismatches {r.checkpoint_mismatches}), final-state mismatches "
                   f"{r.state_mismatches}, jobs done {r.jobs_total - r.jobs_not_done}/"
                   f"{r.threads}, jobs taken over {r.jobs_taken_over}, effects rows "
                   f"{r.effects_rows}"]
        if r.kill_note:
            details.append(f"kill: {r.kill_note}; lease {r.lease_seconds:g} s")
        print(f"  {r.workers} worker(s): " + "; ".join(details))
        for problem in r.problems:
            print(f"    FAIL: {problem}")
        for failure in r.worker_failures:
            print(f"    worker: {failure}")



def _workers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2,4, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_out", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=_workers,
                        help="worker processes; a list runs one sweep per count "
                             f"(default {','.join(map(str, DEFAULT.workers))})")
    parser.add_argument("--threads", type=positive_int, help=f"threads (jobs) submitted "
                        f"(default {DEFAULT.threads})")
    parser.add_argument("--steps", type=positive_int, help=f"steps per thread "
                        f"(default {DEFAULT.steps})")
    parser.add_argument("--concurrency", type=positive_int, help=f"runs per worker at once "
                        f"(default {DEFAULT.concurrency})")
    parser.add_argument("--dsn", help="a PostgreSQL URL (default: start a throwaway server)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="the throwaway server runs with fsync=off (default: on)")
    parser.add_argument("--kill", action="store_true",
                        help="SIGKILL one worker a third of the way through and start another")
    parser.add_argument("--lease", type=float, help="the workers' --lease (default: theirs, "
                        f"30 s; {KILL_LEASE:g} s with --kill)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds a run may take before its workers are killed")
    parser.add_argument("--keep", action="store_true",
                        help="with --dsn: keep the schemas the runs created")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: 2 workers x 6 threads x 3 steps, concurrency 2")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULT
    sizes = Sizes(args.workers or base.workers, args.threads or base.threads,
                  args.steps or base.steps, args.concurrency or base.concurrency)

    info, _ = head(PACKAGES)
    with contextlib.ExitStack() as stack:
        if args.dsn:
            dsn, own = args.dsn, False
        else:
            from statemachine.testing.postgres import PostgresNotFoundError, postgres_server

            try:
                dsn = stack.enter_context(postgres_server(fsync=not args.no_fsync))
            except PostgresNotFoundError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            own = True
        server = server_info(dsn)
        server["throwaway"] = own
        print(f"PostgreSQL {server['version']} ({'throwaway server' if own else 'given --dsn'}"
              f"), fsync={server['fsync']}, synchronous_commit={server['synchronous_commit']}")
        print(f"sizes: workers {','.join(map(str, sizes.workers))}, threads {sizes.threads}, "
              f"steps per thread {sizes.steps}, concurrency {sizes.concurrency}"
              + (", kill one worker per run" if args.kill else ""))
        sys.stdout.flush()
        started = time.perf_counter()
        results = [run_once(dsn, n, sizes.threads, sizes.steps, sizes.concurrency,
                            kill=args.kill, lease=args.lease, timeout=args.timeout,
                            keep=args.keep or own, progress=progress)
                   for n in sizes.workers]
        elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()
    print()
    print_table(results)
    passed = all(r.passed for r in results)
    print(f"\n{'PASS' if passed else 'FAIL'}: {sum(r.passed for r in results)} of "
          f"{len(results)} run(s) verified (ran in {elapsed:.0f} s; load average at end: "
          f"{info['load_average_at_end']})")
    if args.json:
        document = {"machine": info, "versions": versions(PACKAGES), "server": server,
                    "sizes": asdict(sizes), "kill": args.kill, "seconds": elapsed, "passed": passed,
                    "result": "PASS" if passed else "FAIL",
                    "runs": [r.as_json() for r in results]}
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=2)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["DEFAULT", "QUICK", "RunResult", "main", "run_once"]
