"""`python -m benchmarks.faults [--seconds N] [--json faults.json]`: the fault-injection soak.

Runs every fault scenario in a loop for N seconds (real processes, real files: see
docs/reliability.md) and prints the figures: faults injected per kind, runs completed, steps
lost, steps committed twice, integrity checks passed. tests/test_faults.py runs each scenario
once, short, and asserts on the same `Outcome`; its `soak` test calls `soak()` for longer.

Every scenario returns an `Outcome` whose `problems` lists, one line each, every expectation
that did not hold; a reliable store leaves it empty.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
CHILD = TESTS / "fault_child.py"
GRAPH = TESTS / "fault_graph.py"
sys.path.insert(0, str(TESTS))

from fault_graph import FETCHES, STEPS, TASKS, expected_final, ledger_rows  # noqa: E402

EXIT_BUSY, EXIT_CHECKPOINT, CLI_EXIT_BUSY = 3, 6, 5
TIMEOUT = 60.0
"""No process of a scenario may take longer: a hang is a failure, not a stuck suite."""


@dataclass
class Outcome:
    """What one scenario (or a soak of many) injected and found."""

    faults: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    """Runs that ended with the state of an uninterrupted run."""
    lost: int = 0
    """Committed steps (or tasks) missing afterwards."""
    twice: int = 0
    """Steps committed twice, or task executions beyond those a crash allows."""
    checks: int = 0
    checks_ok: int = 0
    """PRAGMA integrity_check: run / passed."""
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    """Scenario-specific facts the tests look at (messages, timings, exit codes)."""

    def add(self, other: Outcome) -> None:
        self.faults.update(other.faults)
        self.runs += other.runs
        self.lost += other.lost
        self.twice += other.twice
        self.checks += other.checks
        self.checks_ok += other.checks_ok
        self.problems += other.problems


# -- processes --------------------------------------------------------------------------------

def env(**extra: object) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**environ, **{k: str(v) for k, v in extra.items()}}


def spawn(args: list[str], **extra: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class Done:
    """A finished process: exit code, output, and its last stdout line as JSON if it is."""

    rc: int | None
    out: str
    err: str
    pid: int

    @property
    def report(self) -> dict:
        try:
            return json.loads(self.out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {}

    @property
    def hung(self) -> bool:
        return self.rc is None


def finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> Done:
    """Wait for `proc`; one still running after `timeout` is killed and reported as hung."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return Done(proc.returncode, out, err, proc.pid)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Done(None, out, err, proc.pid)


def child(*args: str, timeout: float = TIMEOUT, **extra: object) -> Done:
    return finish(spawn([str(CHILD), *args], **extra), timeout)


def cli(*args: str, timeout: float = TIMEOUT, **extra: object) -> Done:
    return finish(spawn(["-m", "statemachine", *args], **extra), timeout)


def sqlite_store(path: Path) -> str:
    return json.dumps({"kind": "sqlite", "path": str(path)})


def postgres_store(dsn: str, schema: str) -> str:
    return json.dumps({"kind": "postgres", "dsn": dsn, "schema": schema})


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None,
             timeout: float = TIMEOUT) -> bool:
    """Until `path` exists (False if `proc` ended first or time ran out)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.01)
    return True


# -- what a fresh process finds ---------------------------------------------------------------

def inspect(db: Path, outcome: Outcome) -> dict:
    """integrity_check and every thread's checkpoints, read by a process of its own once the
    writers are gone; counted in `outcome`."""
    done = child("inspect", str(db))
    outcome.checks += 1
    report = done.report
    if report.get("integrity") == ["ok"]:
        outcome.checks_ok += 1
    else:
        outcome.problems.append(f"integrity_check of {db.name}: "
                                f"{report.get('integrity') or done.err.strip()[-300:]}")
    return report.get("threads", {})


def postgres_threads(dsn: str, schema: str) -> dict:
    """The same view as `inspect` of a PostgreSQL store's schema."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        if conn.execute("SELECT to_regclass('threads')").fetchone()[0] is None:
            return {}  # no run has created the tables yet
        rows = conn.execute("SELECT key, thread_id, owner FROM threads").fetchall()
        return {thread: {"owner": owner, "checkpoints": [list(r) for r in conn.execute(
            "SELECT id, parent, step, kind, status FROM checkpoints WHERE thread = %s "
            "ORDER BY id", (key,)).fetchall()]} for key, thread, owner in rows}


def check_history(thread: str, info: dict | None, outcome: Outcome) -> None:
    """One branch from the input to a done step 9, each step committed once, no owner left."""
    if info is None:
        outcome.lost += STEPS
        outcome.problems.append(f"thread {thread}: not in the store")
        return
    rows = info["checkpoints"]
    steps = Counter(step for _, _, step, kind, _ in rows if kind == "step")
    outcome.twice += sum(n - 1 for n in steps.values())
    outcome.lost += sum(1 for step in range(1, STEPS + 1) if step not in steps)
    if any(n > 1 for n in steps.values()) or len(steps) != STEPS:
        outcome.problems.append(f"thread {thread}: committed steps {sorted(steps.elements())}")
    for before, after in itertools.pairwise(rows):
        if after[1] != before[0]:
            outcome.problems.append(f"thread {thread}: history forks at checkpoint {after[0]}")
    if rows and (rows[-1][2], rows[-1][4]) != (STEPS, "done"):
        outcome.problems.append(f"thread {thread}: ends at {rows[-1]}, not step {STEPS} done")
    if info["owner"] is not None:
        outcome.problems.append(f"thread {thread}: still owned after every run ended")


def check_ledger(ledger: Path, thread: str, outcome: Outcome,
                 allowed: Counter[tuple[int, str]] | None = None) -> Counter[str]:
    """Every task ran, once; a task of a step in flight at a fault may run once more per fault
    (`allowed` extra runs per (step, node)). Returns executions per task id."""
    rows = [r for r in ledger_rows(ledger) if r[0] == thread]
    runs = Counter(task_id for _, task_id, _, _, _ in rows)
    keys = {task_id: (step, node) for _, task_id, step, node, _ in rows}
    if len(set(keys.values())) != len(keys):
        outcome.problems.append(f"thread {thread}: a task ran again under another task id")
    outcome.lost += TASKS - len(set(keys.values()))
    for task_id, n in runs.items():
        extra = n - 1 - (allowed or Counter())[keys[task_id]]
        if extra > 0:
            outcome.twice += extra
            outcome.problems.append(f"thread {thread}: task {keys[task_id]} ran {n} times")
    return runs


def check_final(thread: str, done: Done, outcome: Outcome, what: str = "run") -> None:
    final = done.report.get("final")
    if final is not None:
        final = {k: v for k, v in final.items() if k != "blob"}
    if done.rc == 0 and final == expected_final():
        outcome.runs += 1
    else:
        outcome.problems.append(f"thread {thread}: the {what} ended with exit {done.rc}: "
                                f"{done.report or done.err.strip()[-500:]}")


# -- 1. per-request checkpointers beside live connections ------------------------------------

def concurrent_checkpointers(workdir: Path, *, seconds: float = 4.0, processes: int = 4,
                             workers: int = 3) -> Outcome:
    """`processes` processes each run the graph on `workers` threads of one checkpointer while
    another thread of theirs opens and closes a `SQLiteCheckpointer` on the same file every
    20 ms, for `seconds`. Nothing may fail, every run must end right, the file must be whole."""
    outcome = Outcome()
    db = workdir / "shared.db"
    procs = [spawn([str(CHILD), "churn", str(db), str(seconds), str(workers), f"p{n}"])
             for n in range(processes)]
    reports = []
    for n, proc in enumerate(procs):
        done = finish(proc, seconds + TIMEOUT)
        report = done.report
        reports.append(report)
        if not report:
            outcome.problems.append(f"process {n} ended with exit {done.rc}: "
                                    f"{done.err.strip()[-500:]}")
            continue
        outcome.faults["checkpointer opened and closed beside live runs"] += report["opened"]
        outcome.runs += report["runs"] - report["wrong"]
        if report["errors"] or report["wrong"]:
            outcome.problems.append(
                f"process {n}: {report['errors']} errors, {report['wrong']} wrong final "
                f"states in {report['runs']} runs; e.g. {report['samples']}")
    threads = inspect(db, outcome)
    for thread, info in threads.items():
        check_history(thread, info, outcome)
    outcome.details = {"reports": reports, "threads": len(threads)}
    return outcome


# -- 2. kill -9 at random moments --------------------------------------------------------------

def kill_at_random(workdir: Path, *, threads: int = 2, kills: int = 2, seed: int = 0,
                   postgres: tuple[str, str] | None = None) -> Outcome:
    """Each thread's run is SIGKILLed `kills` times at random moments and resumed in a new
    process each time; then the run finishes. Checkpoints seen after a kill must all survive,
    tasks run once (a task of the step in flight may run once more per kill), and the final
    state is that of an uninterrupted run."""
    rng = random.Random(seed)
    outcome = Outcome()
    db, ledger = workdir / "killed.db", workdir / "killed-ledger.db"
    store = postgres_store(*postgres) if postgres else sqlite_store(db)

    def committed() -> dict:
        return postgres_threads(*postgres) if postgres else inspect(db, outcome)

    for number in range(threads):
        thread = f"kill-{seed}-{number}"
        seen: set[tuple] = set()
        allowed: Counter[tuple[int, str]] = Counter()
        for attempt in range(kills + 1):
            known = committed().get(thread)
            mode = "resume" if known and known["checkpoints"] else "run"
            before = _executions(ledger, thread)
            proc = spawn([str(CHILD), "run", store, thread, mode], FAULT_PAUSE=0.06,
                         FAULT_LEDGER=ledger)
            if attempt < kills:
                while _executions(ledger, thread) == before and proc.poll() is None:
                    time.sleep(0.005)  # until its first task runs: start-up is not the target
                time.sleep(rng.uniform(0.0, 0.6))  # the nine steps take about 0.6 s
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    outcome.faults["SIGKILL"] += 1
            done = finish(proc)
            if done.rc != -signal.SIGKILL:
                check_final(thread, done, outcome, "run" if mode == "run" else "resume")
                break
            info = committed().get(thread)
            rows = info["checkpoints"] if info else []
            seen |= {(row[0], row[1], row[2], row[3]) for row in rows}
            if rows and rows[-1][4] == "running":  # the step in flight may run again
                step = rows[-1][2]
                for node in _nodes_of(step):
                    allowed[(step, node)] += 1
        info = committed().get(thread)
        kept = {(row[0], row[1], row[2], row[3]) for row in (info or {}).get("checkpoints", [])}
        if seen - kept:
            outcome.lost += len(seen - kept)
            outcome.problems.append(f"thread {thread}: checkpoints lost: {sorted(seen - kept)}")
        check_history(thread, info, outcome)
        check_ledger(ledger, thread, outcome, allowed)
    return outcome


def _executions(ledger: Path, thread: str) -> int:
    return sum(1 for row in ledger_rows(ledger) if row[0] == thread)


def _nodes_of(step: int) -> tuple[str, ...]:
    """The nodes that run at `step` of the workload."""
    return (("prepare",), FETCHES, ("merge",))[step % 3]


# -- 3. disk full -------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(directory: Path, size: str = "1m") -> Iterator[Callable[[str], None]]:
    """A tmpfs of `size` at `directory`; yields a function that resizes it. Raises
    PermissionError where mounting is not allowed (not root, or no CAP_SYS_ADMIN)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise PermissionError(f"cannot mount a tmpfs: {mounted.stderr.strip()}")

    def resize(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(directory)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def disk_full(workdir: Path) -> Outcome:
    """A run on a 1 MB tmpfs whose state grows 80 KB a task: the disk fills mid-run. The run
    must raise CheckpointError naming the file and a full disk, mark its step failed (or at
    least release the thread), close cleanly, keep every committed step, and resume once
    there is room."""
    outcome = Outcome()
    disk = workdir / "disk"
    db, ledger, thread = disk / "full.db", workdir / "full-ledger.db", "disk-full"
    with small_disk(disk) as resize:
        done = child("run", sqlite_store(db), thread, "run", FAULT_BLOB=80_000,
                     FAULT_LEDGER=ledger)
        outcome.faults["disk full"] += 1
        message = done.report.get("message", "")
        outcome.details.update(full=done.report, rc=done.rc)
        if done.rc != EXIT_CHECKPOINT or str(db) not in message or \
                "disk" not in message.lower() or "full" not in message.lower():
            outcome.problems.append(f"disk full: exit {done.rc}, expected CheckpointError "
                                    f"naming {db} and a full disk: "
                                    f"{done.report or done.err.strip()[-500:]}")
        if "close_error" in done.report:
            outcome.problems.append(f"disk full: close() raised {done.report['close_error']}")
        info = inspect(db, outcome).get(thread)
        outcome.details["after"] = info
        rows = info["checkpoints"] if info else []
        if not rows:
            outcome.problems.append("disk full: the disk filled before the first commit; "
                                    "the scenario needs a larger disk")
        head_failed = bool(rows) and rows[-1][4] == "failed"
        if info is not None and not head_failed and info["owner"] is not None:
            outcome.problems.append(f"disk full: the thread is left running: head {rows[-1]}, "
                                    f"owner {info['owner']}")
        resize("64m")
        resumed = child("run", sqlite_store(db), thread, "resume", FAULT_BLOB=80_000,
                        FAULT_LEDGER=ledger)
        check_final(thread, resumed, outcome, "resume after freeing space")
        after = inspect(db, outcome).get(thread)
        kept = {tuple(row[:4]) for row in (after or {}).get("checkpoints", [])}
        lost = {tuple(row[:4]) for row in rows} - kept
        outcome.lost += len(lost)
        if lost:
            outcome.problems.append(f"disk full: committed checkpoints lost: {sorted(lost)}")
        check_history(thread, after, outcome)
        step = rows[-1][2] if rows else 0
        check_ledger(ledger, thread, outcome, Counter({(step, n): 1 for n in _nodes_of(step)}))
    return outcome


# -- 4. a lock held by another process ---------------------------------------------------------

def lock_held(workdir: Path, *, busy_timeout: float = 0.5, hold: float = 3.0) -> Outcome:
    """Another process holds the write lock (BEGIN EXCLUSIVE) for `hold` seconds while a run
    on `SQLiteCheckpointer(busy_timeout=...)` commits a step: the run must fail within about
    the busy timeout with CheckpointError naming the file and "locked", leave no owner once
    the lock is gone, and resume."""
    outcome = Outcome()
    limit = 3 * busy_timeout + 1.0  # the commit, the failed mark and the release may each wait
    db, ledger, thread = workdir / "locked.db", workdir / "locked-ledger.db", "locked"
    ready, go, locked, released = (workdir / name for name in
                                   ("lock-ready", "lock-go", "lock-taken", "lock-released"))
    run = spawn([str(CHILD), "run", sqlite_store(db), thread, "run",
                 "--busy-timeout", str(busy_timeout), "--close-after", str(released)],
                FAULT_BLOCK=f"2:merge:{ready}:{go}", FAULT_LEDGER=ledger)
    if not wait_for(ready, run):
        outcome.problems.append(f"locked: the run never reached its merge: "
                                f"{finish(run).err.strip()[-500:]}")
        return outcome
    holder = spawn([str(CHILD), "hold-lock", str(db), str(hold), str(locked)])
    wait_for(locked, holder)
    go.touch()
    let_go = time.time()
    outcome.faults["write lock held past busy_timeout"] += 1
    finish(holder)
    released.touch()  # the run closes its checkpointer only once the lock is gone
    done = finish(run)
    message = done.report.get("message", "")
    failed_after = done.report.get("at", let_go) - let_go
    outcome.details.update(report=done.report, rc=done.rc, failed_after=failed_after)
    if done.rc != EXIT_CHECKPOINT or str(db) not in message or "locked" not in message.lower():
        outcome.problems.append(f"locked: exit {done.rc}, expected CheckpointError naming {db} "
                                f"and 'locked': {done.report or done.err.strip()[-500:]}")
    elif failed_after > limit:
        outcome.problems.append(f"locked: the run failed {failed_after:.1f} s after its commit "
                                f"met the lock (busy_timeout {busy_timeout} s)")
    info = inspect(db, outcome).get(thread)
    if info is None or info["owner"] is not None:
        outcome.problems.append(f"locked: the thread is still owned after the lock went: {info}")
    resumed = child("run", sqlite_store(db), thread, "resume", FAULT_LEDGER=ledger)
    check_final(thread, resumed, outcome, "resume after the lock went")
    check_history(thread, inspect(db, outcome).get(thread), outcome)
    check_ledger(ledger, thread, outcome, Counter({(2, "merge"): 1}))
    return outcome


# -- 5. damaged files and rows -----------------------------------------------------------------

DAMAGE: dict[str, tuple[str, ...]] = {
    "garbage over every page but the first": ("garble",),
    "file truncated to two pages": ("truncate", "8192"),
    "parent pointers form a cycle": (
        "sql", "UPDATE checkpoints SET snapshot = NULL, parent = CASE WHEN parent IS NULL "
        "THEN (SELECT max(id) FROM checkpoints) ELSE parent END"),
    "malformed JSON in next": ("sql", "UPDATE checkpoints SET next = '[{\"node\": ' "
                               "WHERE id = (SELECT max(id) FROM checkpoints)"),
    "malformed JSON in extra": ("sql", "UPDATE checkpoints SET extra = '{oops' "
                                "WHERE id = (SELECT max(id) FROM checkpoints)"),
    "malformed JSON in writes": ("sql", "UPDATE checkpoints SET writes = '[[\"merge\", 0, {' "
                                 "WHERE writes IS NOT NULL"),
    "created_at not a number": ("sql", "UPDATE checkpoints SET created_at = 'yesterday'"),
}
ROW_COLUMNS = {"malformed JSON in next": "next", "malformed JSON in extra": "extra",
               "malformed JSON in writes": "writes", "created_at not a number": "created_at"}
ROWS_HIT = {"next": "id = (SELECT max(id) FROM checkpoints)",
            "extra": "id = (SELECT max(id) FROM checkpoints)",
            "writes": "writes IS NOT NULL", "created_at": "1"}
"""Which checkpoints each row damage hits: an error about one must name one of them."""
READ_TIMEOUT = 10.0


def damaged_files(workdir: Path, kinds: list[str] | None = None) -> Outcome:
    """A finished thread's database, damaged one way per copy (in a process of its own, with
    no connection open): resuming it and the CLI's threads / history / show must each end
    within the timeout with a clean error (CheckpointError naming the file; for a bad row the
    thread, checkpoint and column), never a traceback."""
    outcome = Outcome()
    pristine, thread = workdir / "pristine.db", "damaged"
    made = child("run", sqlite_store(pristine), thread, "run")
    if made.rc != 0:
        outcome.problems.append(f"damage: the reference run failed: {made.err.strip()[-500:]}")
        return outcome
    size = pristine.stat().st_size
    with contextlib.closing(sqlite3.connect(pristine)) as conn:
        hit = {column: {str(i) for (i,) in conn.execute(
            f"SELECT id FROM checkpoints WHERE {where}")} for column, where in ROWS_HIT.items()}
    jobs = []
    for number, kind in enumerate(kinds or DAMAGE):
        db = workdir / f"damaged-{number}.db"
        db.write_bytes(pristine.read_bytes())
        how, *args = DAMAGE[kind]
        if how == "garble":
            args = ["4096", str(size - 4096), str(number)]
        hurt = child("damage", str(db), how, *args)
        if hurt.rc != 0:
            outcome.problems.append(f"damage {kind}: could not damage: {hurt.err[-300:]}")
            continue
        outcome.faults["damaged file or row"] += 1
        jobs += [(kind, db, op) for op in ("resume", "threads", "history", "show")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: (*job, _read_damaged(job[1], job[2], thread)),
                                jobs))
    seen: dict[str, dict[str, Done]] = {}
    for kind, db, op, done in results:
        seen.setdefault(kind, {})[op] = done
        _judge_damaged(kind, db, op, done, outcome, hit.get(ROW_COLUMNS.get(kind, ""), set()))
    for kind, ops in seen.items():
        column = ROW_COLUMNS.get(kind)
        if column and all(done.rc == 0 for done in ops.values()):
            outcome.problems.append(f"damage {kind}: no reader noticed the bad {column}")
    outcome.details["results"] = {kind: {op: (d.rc, d.report.get("message") or d.err.strip())
                                         for op, d in ops.items()} for kind, ops in seen.items()}
    return outcome


def _read_damaged(db: Path, op: str, thread: str) -> Done:
    if op == "resume":
        return child("run", sqlite_store(db), thread, "resume", timeout=READ_TIMEOUT)
    extra = ["--thread", thread] if op != "threads" else []
    return cli(op, "--db", str(db), *extra, timeout=READ_TIMEOUT)


def _judge_damaged(kind: str, db: Path, op: str, done: Done, outcome: Outcome,
                   ids: set[str]) -> None:
    """One reader of one damaged copy: it ended, without a traceback, and either read what it
    could or said what is wrong and where."""
    where = f"damage {kind}: {op}"
    text = done.report.get("message", "") if op == "resume" else done.err
    column = ROW_COLUMNS.get(kind)
    if done.hung:
        outcome.problems.append(f"{where} hung (killed after {READ_TIMEOUT:.0f} s)")
    elif "Traceback" in done.out + done.err:
        last = done.err.strip().splitlines()[-1]  # the exception the traceback ends with
        outcome.problems.append(f"{where} printed a traceback ending in {last[:300]}")
    elif done.rc == 0:
        if op == "resume" and column is None:
            outcome.problems.append(f"{where} succeeded on a damaged file")
        elif op == "resume":
            check_final("damaged", done, outcome, "resume of a thread with an unread bad row")
    elif op == "resume" and done.rc != EXIT_CHECKPOINT:
        outcome.problems.append(f"{where}: exit {done.rc}, not CheckpointError: {text[-400:]}")
    elif column is None and str(db) not in text:
        outcome.problems.append(f"{where}: the error does not name {db}: {text.strip()}")
    elif column is not None and not ("damaged" in text and column in text and
                                     any(re.search(rf"\b{i}\b", text) for i in ids)):
        outcome.problems.append(f"{where}: the error does not name the thread, a checkpoint "
                                f"of {sorted(ids, key=int)} and the column {column!r}: "
                                f"{text.strip()}")
    elif op != "resume" and len(text.strip().splitlines()) > 2:
        outcome.problems.append(f"{where}: not a short message: {text.strip()[-400:]}")


# -- 6. clock skew -----------------------------------------------------------------------------

def clock_skew(workdir: Path, *, skew: float = 3600.0, lease: float = 2.0) -> Outcome:
    """A resumer whose wall clock runs `skew` seconds ahead tries a thread a live run holds
    (its heartbeat renewing a `lease`-second lease): it must get ThreadBusyError, and every
    task run once."""
    outcome = Outcome()
    db, ledger, thread = workdir / "skew.db", workdir / "skew-ledger.db", "skewed"
    ready, go = workdir / "skew-ready", workdir / "skew-go"
    owner = spawn([str(CHILD), "run", sqlite_store(db), thread, "run", "--lease", str(lease)],
                  FAULT_BLOCK=f"1:fetch_b:{ready}:{go}", FAULT_LEDGER=ledger)
    if not wait_for(ready, owner):
        outcome.problems.append(f"skew: the owner never reached fetch_b: "
                                f"{finish(owner).err.strip()[-500:]}")
        return outcome
    time.sleep(lease)  # the owner's heartbeat has renewed its lease at least once
    resumer = child("run", sqlite_store(db), thread, "resume", "--lease", str(lease),
                    FAULT_SKEW=skew, FAULT_LEDGER=ledger)
    outcome.faults["clock skew +1 h"] += 1
    go.touch()
    held = finish(owner)
    outcome.details.update(resumer=(resumer.rc, resumer.report), owner=(held.rc, held.report))
    if resumer.rc != EXIT_BUSY:
        outcome.problems.append(f"skew: the skewed resumer exited {resumer.rc}, not "
                                f"ThreadBusyError, while the owner lived: {resumer.report}")
    check_final(thread, held, outcome, "owner's run")
    check_history(thread, inspect(db, outcome).get(thread), outcome)
    check_ledger(ledger, thread, outcome)
    return outcome


# -- 7. concurrent resumers --------------------------------------------------------------------

def concurrent_resumers(workdir: Path, *, resumers: int = 4, pause: float = 0.15) -> Outcome:
    """A thread failed at step 4; `resumers` CLI processes resume it at once. One runs it,
    the others exit 5 (busy) or find it done; every task runs once (the failed one twice)."""
    outcome = Outcome()
    db, ledger, thread = workdir / "resumers.db", workdir / "resumers-ledger.db", "contended"
    failed = child("run", sqlite_store(db), thread, "run",
                   FAULT_FAIL=f"4:fetch_a:{workdir / 'failed-once'}", FAULT_LEDGER=ledger)
    if failed.rc != 1 or "injected failure" not in failed.err:
        outcome.problems.append(f"resumers: the run did not fail as injected: {failed.err[-400:]}")
        return outcome
    procs = [spawn(["-m", "statemachine", "resume", f"{GRAPH}:graph", "--db", str(db),
                    "--thread", thread, "--quiet"], FAULT_PAUSE=pause, FAULT_LEDGER=ledger)
             for _ in range(resumers)]
    outcome.faults["concurrent resumers"] += resumers
    results = [finish(proc) for proc in procs]
    codes = [done.rc for done in results]
    workers = {pid for thread_id, _, step, _, pid in ledger_rows(ledger)
               if thread_id == thread and pid != failed.pid}
    outcome.details.update(codes=codes, workers=len(workers))
    if len(workers) != 1:
        outcome.problems.append(f"resumers: {len(workers)} processes ran tasks, not one")
    for done in results:
        if done.rc not in (0, CLI_EXIT_BUSY):
            outcome.problems.append(f"resumers: a resumer exited {done.rc}: {done.err[-400:]}")
        elif done.rc == 0:
            state = {k: v for k, v in json.loads(done.out).items() if k != "blob"}
            if state != expected_final():
                outcome.problems.append(f"resumers: a resumer printed {state}")
    outcome.runs += sum(1 for done in results if done.rc == 0 and done.pid in workers)
    check_history(thread, inspect(db, outcome).get(thread), outcome)
    check_ledger(ledger, thread, outcome, Counter({(4, "fetch_a"): 1}))
    return outcome


# -- the soak ---------------------------------------------------------------------------------

def scenarios(postgres_dsn: str | None = None, *, mount: bool = True
              ) -> list[tuple[str, Callable[[Path, int], Outcome]]]:
    """(name, run(workdir, round)) of every scenario, with soak-sized parameters."""
    chosen: list[tuple[str, Callable[[Path, int], Outcome]]] = [
        ("concurrent checkpointers",
         lambda d, n: concurrent_checkpointers(d, seconds=10.0)),
        ("kill -9 (SQLite)", lambda d, n: kill_at_random(d, threads=3, kills=3, seed=n)),
        ("lock held", lambda d, n: lock_held(d)),
        ("damaged files", lambda d, n: damaged_files(d)),
        ("clock skew", lambda d, n: clock_skew(d)),
        ("concurrent resumers", lambda d, n: concurrent_resumers(d)),
    ]
    if postgres_dsn:
        chosen.insert(2, ("kill -9 (PostgreSQL)", lambda d, n: kill_at_random(
            d, threads=2, kills=3, seed=n, postgres=(postgres_dsn, f"faults_{os.getpid()}_{n}"))))
    if mount:
        chosen.insert(2, ("disk full", lambda d, n: disk_full(d)))
    return chosen


def soak(seconds: float, *, postgres_dsn: str | None = None, mount: bool = True,
         report: Callable[[str], None] = print) -> Outcome:
    """Every scenario in turn, round after round, until `seconds` have passed."""
    total = Outcome()
    total.details = {"rounds": 0, "seconds": 0.0, "scenarios": Counter()}
    start = time.monotonic()
    number = 0
    while time.monotonic() - start < seconds:
        for name, scenario in scenarios(postgres_dsn, mount=mount):
            with tempfile.TemporaryDirectory(prefix="faults-") as workdir:
                outcome = scenario(Path(workdir), number)
            total.add(outcome)
            total.details["scenarios"][name] += 1
            state = "ok" if not outcome.problems else f"{len(outcome.problems)} problems"
            report(f"round {number} {name}: {state}")
            for problem in outcome.problems[:3]:
                report(f"    {problem[:300]}")
            if time.monotonic() - start >= seconds:
                break
        number += 1
    total.details["rounds"] = number
    total.details["seconds"] = round(time.monotonic() - start, 1)
    return total


def figures(outcome: Outcome) -> str:
    """The soak's figures as a Markdown table."""
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| faults injected: {kind} | {n:,} |" for kind, n in sorted(outcome.faults.items())]
    lines += [f"| runs completed with the right final state | {outcome.runs:,} |",
              f"| steps lost | {outcome.lost} |",
              f"| steps committed twice | {outcome.twice} |",
              f"| integrity checks passed | {outcome.checks_ok} / {outcome.checks} |",
              f"| expectations that did not hold | {len(outcome.problems)} |"]
    return "\n".join(lines)


def _postgres() -> contextlib.AbstractContextManager[str | None]:
    if os.environ.get("STATEMACHINE_TEST_POSTGRES"):
        return contextlib.nullcontext(os.environ["STATEMACHINE_TEST_POSTGRES"])
    try:
        from statemachine.testing.postgres import find_postgres_bin, postgres_server

        find_postgres_bin()
    except Exception:
        return contextlib.nullcontext(None)
    return postgres_server(fsync=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="how long to soak (default 300; every scenario runs at least once)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    mount = os.geteuid() == 0
    with (contextlib.nullcontext(None) if args.no_postgres else _postgres()) as dsn:
        outcome = soak(args.seconds, postgres_dsn=dsn, mount=mount,
                       report=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"fault soak: {outcome.details['rounds']} rounds in {outcome.details['seconds']} s, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
          + ("" if dsn else "; no PostgreSQL")
          + ("" if mount else "; disk full skipped (not root)"))
    print(figures(outcome))
    for problem in outcome.problems:
        print(f"- {problem}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
            "seconds": outcome.details["seconds"], "rounds": outcome.details["rounds"],
            "faults": dict(outcome.faults), "runs": outcome.runs, "lost": outcome.lost,
            "twice": outcome.twice, "checks": [outcome.checks_ok, outcome.checks],
            "problems": outcome.problems}, indent=2) + "\n")
    return 0 if not outcome.problems and outcome.lost == 0 and outcome.twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
