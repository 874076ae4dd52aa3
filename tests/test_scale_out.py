"""Many processes on one store: real subprocesses (`python -m statemachine ...`) racing for a
thread, workers SIGKILLed mid-run, a worker frozen with SIGSTOP past its lease, SIGTERM.

The graph is `tests.queue_graphs:chain` (a -> b -> c). Each node appends
`thread node step pid` to a side-effect log (fsync'd) before it sleeps and returns, so after a
crash the log shows exactly which node ran how often, and in which process: a step committed
before a worker died never runs again; only the step in flight when it died may run twice.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Store, make_store
from queue_graphs import NODES, chain

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), "COLUMNS": "200"}
for _name in ("NO_COLOR", "STATEMACHINE_PG_SCHEMA", "QUEUE_LOG", "QUEUE_SLEEP", "QUEUE_GATE",
              "QUEUE_GATE_NODE"):
    ENV.pop(_name, None)

GRAPH = "tests.queue_graphs:chain"
BUSY = 5

Key = tuple[str, str, int]
"""(thread, node, step) of one node execution."""


@pytest.fixture
def pg(tmp_path, request):
    store = make_store("postgres", tmp_path, request)
    yield store
    store.close()


class Proc:
    """`python -m statemachine ARGS` running in the background."""

    def __init__(self, *args: str, **env: object) -> None:
        environ = {**ENV, **{k: str(v) for k, v in env.items()}}
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "statemachine", *args], cwd=ROOT,
                                     env=environ, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.out = self.err = ""

    def wait(self, timeout: float = 60) -> Proc:
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{' '.join(self.args)} did not finish in {timeout} s:\n{self.err}")
        return self

    @property
    def rc(self) -> int | None:
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, and reap: a zombie would still look alive to a lease's dead-pid check."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.out, self.err = self.proc.communicate(timeout=10)


def cli(*args: str, **env: object) -> Proc:
    return Proc(*args, **env).wait()


def worker(store: Store, *options: str, **env: object) -> Proc:
    return Proc("worker", GRAPH, *store.cli_args, "--poll", "0.05", *options, **env)


def wait_until(condition, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def effects(log: Path) -> list[tuple[str, str, int, int]]:
    """The side-effect log: (thread, node, step, pid) per node execution, in order."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().split("\n")[:-1]:  # a line still being written is not one
        thread, node, step, pid = line.split()
        rows.append((thread, node, int(step), int(pid)))
    return rows


def expected_keys(threads: list[str]) -> set[Key]:
    return {(t, node, step) for t in threads for step, node in enumerate(NODES)}


def committed(app, threads: list[str]) -> set[Key]:
    """Node executions whose step is committed: a checkpoint at step s ran them at step s-1."""
    keys = set()
    for thread in threads:
        if not run_sync_list(app.checkpointer, thread):
            continue  # not started
        for snapshot in app.history(thread):
            keys.update((thread, node, snapshot.step - 1) for node in snapshot.ran)
    return keys


def assert_linear(saver, thread: str, checkpoints: int) -> None:
    """One branch: every checkpoint's parent is the one before it (no fork by a lost run)."""
    records = sorted(run_sync_list(saver, thread), key=lambda r: int(r.id))
    assert len(records) == checkpoints, [(r.id, r.parent_id, r.step) for r in records]
    assert records[0].parent_id is None
    for before, after in itertools.pairwise(records):
        assert after.parent_id == before.id
        assert after.step == before.step + 1


def run_sync_list(saver, thread: str):
    from statemachine._sync import run_sync

    return run_sync(lambda: saver.list(thread))


def pg_query(store: Store, sql: str, *args: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.schema}"')
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]


def claimed_until(store: Store, thread: str) -> float | None:
    """When the claim on `thread`'s job runs out unless renewed (the server's clock)."""
    [(until,)] = pg_query(store, "SELECT claimed_until FROM jobs WHERE thread_id = %s", thread)
    return until


def holds_committed_thread(store: Store, pid: int) -> bool:
    """Whether process `pid` holds a thread that has at least one committed step."""
    return bool(pg_query(
        store, "SELECT 1 FROM threads t WHERE t.owner_pid = %s AND EXISTS (SELECT 1 FROM "
               "checkpoints c WHERE c.thread = t.key AND c.step >= 1)", pid))


def check_at_least_once(rows, before_kill, committed_before: set[Key], threads: list[str],
                        killed: set[int]) -> None:
    """Every node of every thread ran; a step committed before the kill ran exactly once; the
    only executions that ran twice are ones a killed worker had in flight (logged, not
    committed), at most one per killed worker (each ran one job at a time)."""
    counts = Counter((t, node, step) for t, node, step, _ in rows)
    assert set(counts) == expected_keys(threads)
    for key in committed_before:
        assert counts[key] == 1, key
    in_flight = {(t, node, step) for t, node, step, pid in before_kill
                 if pid in killed} - committed_before
    twice = {key for key, count in counts.items() if count > 1}
    assert all(counts[key] == 2 for key in twice), counts
    assert twice <= in_flight, (twice, in_flight)
    assert len(in_flight) <= len(killed)
    for key in twice:  # first by the killed worker, then again by a survivor
        pids = [pid for t, node, step, pid in rows if (t, node, step) == key]
        assert pids[0] in killed and pids[1] not in killed


# -- one thread, two processes ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_racing_on_one_thread_one_wins_and_history_stays_linear(kind, tmp_path,
                                                                               request):
    store = make_store(kind, tmp_path, request)
    try:
        saver = store.open()  # the store exists before the race: both find it
        log, gate = tmp_path / "effects.log", tmp_path / "gate"
        args = ("run", GRAPH, *store.cli_args, "--thread", "race", "--input", '{"n": 1}')
        env = {"QUEUE_LOG": log, "QUEUE_GATE": gate, "QUEUE_SLEEP": 0.05}
        racers = [Proc(*args, **env) for _ in range(2)]
        try:
            # the winner holds the thread, waiting at the gate in node a; the loser gives up
            wait_until(lambda: any(r.rc is not None for r in racers), 30, "the loser")
            (loser,) = [r for r in racers if r.rc is not None]
            (winner,) = [r for r in racers if r is not loser]
            loser.wait()
            assert winner.rc is None
            gate.touch()
            winner.wait()
        finally:
            for r in racers:
                r.kill()
        assert loser.rc == BUSY, loser.err
        assert "thread 'race' is being run by another run right now" in loser.err
        assert loser.out == ""
        assert winner.rc == 0, winner.err
        assert json.loads(winner.out) == {"n": 4, "log": ["a", "b", "c"]}
        assert [(t, n, s, pid) for t, n, s, pid in effects(log)] == \
            [("race", node, step, winner.pid) for step, node in enumerate(NODES)]
        assert_linear(saver, "race", 4)
    finally:
        store.close()


# -- workers killed mid-run -------------------------------------------------------------------

def submit_jobs(store: Store, count: int):
    saver = store.open(lease_seconds=1)
    app = chain.compile(checkpointer=saver)
    threads = [f"job-{i}" for i in range(count)]
    for i, thread in enumerate(threads):
        app.submit({"n": i * 10}, thread_id=thread)
    return app, threads


def assert_all_done(app, threads: list[str], retried: set[str]) -> None:
    jobs = {j.thread_id: j for j in app.jobs()}
    assert sorted(jobs) == sorted(threads)
    for i, thread in enumerate(threads):
        job = jobs[thread]
        assert job.status == "done", (thread, job)
        assert job.attempts == (2 if thread in retried else 1), (thread, job)
        snapshot = app.get_state(thread)
        assert snapshot.status == "done"
        assert snapshot.state.model_dump() == {"n": i * 10 + 3, "log": list(NODES)}
        assert_linear(app.checkpointer, thread, 4)


def test_a_worker_killed_mid_run_is_taken_over_and_no_committed_step_runs_again(pg, tmp_path):
    app, threads = submit_jobs(pg, 4)
    log = tmp_path / "effects.log"
    first = worker(pg, "--lease", "1", QUEUE_LOG=log, QUEUE_SLEEP=0.3)
    try:
        wait_until(lambda: any(t.step >= 1 for t in app.threads()), 30, "a committed step")
    finally:
        first.kill()
    before_kill = effects(log)
    committed_before = committed(app, threads)
    assert committed_before
    running = {j.thread_id for j in app.jobs() if j.status == "running"}
    assert len(running) == 1  # the killed worker's job, its claim not yet expired

    second = worker(pg, "--lease", "1", "--drain", QUEUE_LOG=log, QUEUE_SLEEP=0.1).wait()

    assert second.rc == 0, second.err
    assert "worker done:" in second.err and ", 0 failed" in second.err
    assert_all_done(app, threads, retried=running)
    check_at_least_once(effects(log), before_kill, committed_before, threads, {first.pid})


def test_two_workers_share_the_queue_and_take_over_from_a_third_killed_one(pg, tmp_path):
    app, threads = submit_jobs(pg, 10)
    log = tmp_path / "effects.log"
    # Only the doomed worker's claim must expire, so only its lease is short; it runs alone,
    # and the survivors (default leases) start once it is dead: a heartbeat late on a loaded
    # machine cannot hand a live worker's job to another.
    doomed = worker(pg, "--lease", "1", QUEUE_LOG=log, QUEUE_SLEEP=0.3)
    survivors: list[Proc] = []
    try:
        wait_until(lambda: holds_committed_thread(pg, doomed.pid), 30,
                   "the doomed worker to commit a step")
        doomed.kill()
        before_kill = effects(log)
        committed_before = committed(app, threads)
        held = {j.thread_id for j in app.jobs() if j.status == "running"}
        survivors = [worker(pg, "--drain", QUEUE_LOG=log, QUEUE_SLEEP=0.15) for _ in range(2)]
        for survivor in survivors:
            survivor.wait()
    finally:
        for p in (doomed, *survivors):
            p.kill()

    for survivor in survivors:
        assert survivor.rc == 0, survivor.err
    claimed = [int(s.err.split("worker done: ")[1].split(" claimed")[0]) for s in survivors]
    assert all(claimed), claimed  # both worked
    doomed_threads = {t for t, _, _, pid in before_kill if pid == doomed.pid}
    unfinished = {t for t in doomed_threads
                  if (t, NODES[-1], len(NODES) - 1) not in committed_before}
    assert len(unfinished) == 1 and unfinished <= held
    assert_all_done(app, threads, retried=unfinished)
    check_at_least_once(effects(log), before_kill, committed_before, threads, {doomed.pid})
    pids = {pid for _, _, _, pid in effects(log)}
    assert pids == {doomed.pid, *(s.pid for s in survivors)}


# -- a frozen worker comes back after another took its job over -------------------------------

def test_a_frozen_worker_past_its_lease_is_fenced_out_after_another_finished_its_job(pg,
                                                                                   tmp_path):
    app, (thread,) = submit_jobs(pg, 1)
    log, gate = tmp_path / "effects.log", tmp_path / "gate"
    # it waits in node b (at the gate) until the test lets it go, however slow the machine;
    # its lease is short, to expire once it is frozen (no other worker runs before that)
    stale = worker(pg, "--lease", "1", "--max-jobs", "1", QUEUE_LOG=log, QUEUE_GATE=gate,
                   QUEUE_GATE_NODE="b", QUEUE_SLEEP=0.05)
    try:
        wait_until(lambda: (thread, "b", 1, stale.pid) in effects(log), 30,
                   "the first worker to be inside node b")
        # frozen right after a beat: never halfway through one (holding its rows' locks)
        beat = claimed_until(pg, thread)
        wait_until(lambda: claimed_until(pg, thread) != beat, 10, "a heartbeat")
        stale.signal(signal.SIGSTOP)  # frozen in node b: its heartbeat stops with it
        frozen_at = time.time()
        assert [s.ran for s in app.history(thread)] == [("a",), ()]
        wait_until(lambda: not next(t for t in app.threads() if t.thread_id == thread).busy,
                   10, "the frozen worker's lease to expire")

        taker = worker(pg, "--drain", QUEUE_LOG=log, QUEUE_SLEEP=0.05).wait()
        assert taker.rc == 0, taker.err
        assert "worker done: 1 claimed, 1 done" in taker.err
        after_takeover = run_sync_list(app.checkpointer, thread)
        assert (app.jobs()[0].status, app.jobs()[0].attempts) == ("done", 2)

        gate.touch()
        stale.signal(signal.SIGCONT)  # its node b returns, and its commit is refused
        stale.wait(30)
    finally:
        stale.signal(signal.SIGCONT)
        stale.kill()

    assert stale.rc == 0, stale.err
    assert "was taken over by another run" in stale.err
    assert "1 claimed, 0 done, 0 interrupted, 0 retried, 0 failed, 1 lost to other workers" \
        in stale.err
    # nothing of the frozen worker's landed: the history is the taker's, unchanged since
    assert run_sync_list(app.checkpointer, thread) == after_takeover
    assert_linear(app.checkpointer, thread, 4)
    assert all(r.created_at > frozen_at for r in after_takeover if r.step >= 2)
    snapshot = app.get_state(thread)
    assert (snapshot.status, snapshot.state.model_dump()) == ("done", {"n": 3, "log": ["a", "b",
                                                                                     "c"]})
    assert app.jobs()[0].status == "done"  # the stale worker's give-back did not requeue it
    rows = effects(log)
    assert [(t, n, s) for t, n, s, pid in rows if pid == stale.pid] == \
        [(thread, "a", 0), (thread, "b", 1)]
    assert [(t, n, s) for t, n, s, pid in rows if pid == taker.pid] == \
        [(thread, "b", 1), (thread, "c", 2)]


# -- the command line on PostgreSQL -----------------------------------------------------------

def test_submit_jobs_worker_and_the_reading_commands_on_postgres(pg):
    db = pg.cli_args
    first = [Proc("submit", GRAPH, *db, "--thread", "c1", "--input", '{"n": 1}'),
             Proc("submit", GRAPH, *db, "--thread", "c2", "--input", '{"n": 5}',
                  "--max-attempts", "5")]
    for p in first:
        p.wait()
        assert p.rc == 0, p.err
    assert [p.out for p in first] == ["c1\n", "c2\n"]

    busy, unknown, bad, both, queued = [p.wait() for p in [
        Proc("submit", GRAPH, *db, "--thread", "c1", "--input", '{"n": 2}'),
        Proc("submit", GRAPH, *db, "--thread", "nope"),
        Proc("submit", GRAPH, *db, "--thread", "bad", "--input", '{"n": "many"}'),
        Proc("submit", GRAPH, *db, "--thread", "c3", "--input", "{}", "--event", '{"x": 1}'),
        Proc("jobs", *db, "--json")]]
    assert busy.rc == BUSY and "already has a queued or running job" in busy.err
    assert unknown.rc == 4 and "does not exist yet" in unknown.err
    assert bad.rc == 2, bad.err
    assert both.rc == 2 and "cannot come with new input" in both.err
    assert queued.rc == 0, queued.err
    assert sorted((j["thread_id"], j["status"], j["attempts"], j["max_attempts"])
                  for j in json.loads(queued.out)) == [("c1", "queued", 0, 3),
                                                       ("c2", "queued", 0, 5)]

    ran = worker(pg, "--drain", QUEUE_SLEEP=0.01).wait()
    assert ran.rc == 0, ran.err
    assert "worker done: 2 claimed, 2 done, 0 interrupted, 0 retried, 0 failed" in ran.err
    assert "c1 done" in ran.err  # the log of each job (not --quiet)

    jobs, threads, history, show, again = [p.wait() for p in [
        Proc("jobs", *db, "--json"), Proc("threads", *db, "--json"),
        Proc("history", *db, "--thread", "c1", "--json"), Proc("show", *db, "--thread", "c2"),
        Proc("submit", GRAPH, *db, "--thread", "c1")]]
    for p in (jobs, threads, history, show):
        assert p.rc == 0, p.err
    assert sorted((j["thread_id"], j["status"], j["attempts"], j["error"])
                  for j in json.loads(jobs.out)) == [("c1", "done", 1, None),
                                                     ("c2", "done", 1, None)]
    assert all(j["finished"] for j in json.loads(jobs.out))
    assert sorted((t["thread_id"], t["status"], t["busy"]) for t in json.loads(threads.out)) \
        == [("c1", "done", False), ("c2", "done", False)]
    assert [row["step"] for row in json.loads(history.out)] == [3, 2, 1, 0]
    assert json.loads(show.out) == {"n": 8, "log": ["a", "b", "c"]}
    assert again.rc == 2 and "has finished" in again.err

    # the human-readable queue, and a schema that holds nothing
    table = cli("jobs", *db)
    assert table.rc == 0 and "c1" in table.out and "done" in table.out and "1/3" in table.out
    empty = cli("jobs", "--db", str(pg.dsn), "--schema", "no_such_schema")
    assert empty.rc != 0 and "holds no statemachine tables" in empty.err


def test_sigterm_hands_the_running_job_back_and_the_next_worker_finishes_it(pg, tmp_path):
    app, (thread,) = submit_jobs(pg, 1)
    log, gate = tmp_path / "effects.log", tmp_path / "gate"
    # it waits in node b (at a gate never opened) until the SIGTERM, however slow the machine
    first = worker(pg, QUEUE_LOG=log, QUEUE_GATE=gate, QUEUE_GATE_NODE="b", QUEUE_SLEEP=0.05)
    try:
        wait_until(lambda: (thread, "b", 1, first.pid) in effects(log), 30,
                   "the worker to be inside node b")
        first.signal(signal.SIGTERM)
        first.wait(20)
    finally:
        first.kill()
    assert first.rc == 0, first.err
    assert "worker done: 1 claimed, 0 done, 0 interrupted, 0 retried, 0 failed" in first.err
    job = app.jobs()[0]
    assert (job.status, job.attempts, job.claimed_by) == ("queued", 0, None)
    assert not app.threads()[0].busy  # the lease was released, not left to expire
    assert app.get_state(thread).step == 1  # what a committed is kept

    second = worker(pg, "--drain", "-q", QUEUE_LOG=log, QUEUE_SLEEP=0.01).wait()
    assert second.rc == 0, second.err
    assert "worker done: 1 claimed, 1 done" in second.err
    assert (app.jobs()[0].status, app.jobs()[0].attempts) == ("done", 1)
    assert app.get_state(thread).state.model_dump() == {"n": 3, "log": ["a", "b", "c"]}
    assert [(n, s, pid) for _, n, s, pid in effects(log)] == [
        ("a", 0, first.pid), ("b", 1, first.pid), ("b", 1, second.pid), ("c", 2, second.pid)]
