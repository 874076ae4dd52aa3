"""The work queue and the Worker, in one process, on every store (memory, SQLite, PostgreSQL).

`app.submit(...)` queues a run and `Worker(app).run(drain=True)` runs every queued job. Nodes
count their side effects in `EFFECTS` (keyed by thread and node, counted only when the node
succeeds) and fail on purpose while `FAILS` has failures left for them, so a test can check
that a retried job resumes from the failed step: what committed before it never runs again.
Workers, claims and leases across real processes are in test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import operator
import threading
import time
import uuid
from collections import Counter
from typing import Annotated

import pytest
from conftest import make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints.base import ClaimedJob, Owner
from statemachine import (
    END,
    START,
    InvalidUpdateError,
    RunContext,
    StateGraph,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
    wait_for,
)
from statemachine._sync import run_sync
from statemachine.worker import Worker

EFFECTS: Counter[tuple[str | None, str]] = Counter()
"""(thread, node) -> times the node ran to the end (its side effect happened)."""
CALLS: Counter[tuple[str | None, str]] = Counter()
"""(thread, node) -> times the node was called, failed or not."""
FAILS: dict[tuple[str | None, str], int] = {}
"""(thread, node) -> failures still to raise; absent: never fails. -1: fails every time."""


class Order(BaseModel):
    n: Annotated[int, operator.add] = 0
    log: Annotated[list[str], operator.add] = []


def node(name: str, *, wait: bool = False, bad: bool = False):
    def run(state: Order, context: RunContext) -> dict:
        key = (context.thread_id, name)
        CALLS[key] += 1
        left = FAILS.get(key, 0)
        if left:
            FAILS[key] = left - 1 if left > 0 else left
            raise ConnectionError(f"{name} could not reach the gateway")
        if bad:
            return {"n": "not a number"}
        update: dict = {"n": 1, "log": [name]}
        if wait:
            update["log"] = [f"{name}:{wait_for('approval')['ok']}"]
        EFFECTS[key] += 1
        return update

    run.__name__ = name
    return run


def fan_graph() -> StateGraph:
    """prepare -> left | right (parallel) -> merge: three steps, four nodes."""
    g = StateGraph(Order)
    for name in ("prepare", "left", "right", "merge"):
        g.add_node(name, node(name))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "left")
    g.add_edge("prepare", "right")
    g.add_edge(["left", "right"], "merge")
    g.add_edge("merge", END)
    return g


def chain_graph(*names: str, **special: dict) -> StateGraph:
    g = StateGraph(Order)
    for name in names:
        g.add_node(name, node(name, **special.get(name, {})))
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


FAN_STEPS = [("prepare",), ("left", "right"), ("merge",)]


def fresh(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def drain(app, **options) -> Worker:
    options.setdefault("poll_interval", 0.01)
    options.setdefault("retry_delay", 0.005)
    worker = Worker(app, **options)
    run_sync(lambda: worker.run(drain=True))
    return worker


def job_of(app, thread: str):
    (job,) = [j for j in app.jobs() if j.thread_id == thread]
    return job


def wait_until(condition, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- submit and drain ---------------------------------------------------------------------------

def test_submitted_jobs_are_queued_then_a_draining_worker_runs_every_one(store):
    app = fan_graph().compile(checkpointer=store.open())
    threads = [fresh() for _ in range(5)]
    for i, thread in enumerate(threads):
        assert app.submit({"n": i}, thread_id=thread) == thread
    queued = app.jobs()
    assert [j.thread_id for j in queued] == threads  # oldest submission first
    assert {(j.status, j.attempts, j.max_attempts, j.error) for j in queued} == \
        {("queued", 0, 3, None)}
    assert all(j.finished_at is None for j in queued)
    # nothing ran yet: submitting does not run the graph
    assert not any(t in {k[0] for k in CALLS} for t in threads)
    for thread in threads:
        with pytest.raises(ThreadNotFoundError):
            app.get_state(thread)

    worker = drain(app)

    stats = worker.stats
    assert (stats.claimed, stats.done, stats.retried, stats.failed, stats.lost) == (5, 5, 0, 0, 0)
    done = app.jobs()
    assert [(j.thread_id, j.status, j.attempts) for j in done] == \
        [(t, "done", 1) for t in threads]
    assert all(j.finished_at is not None and j.claimed_by is None for j in done)
    for i, thread in enumerate(threads):
        snapshot = app.get_state(thread)
        assert snapshot.status == "done"
        assert snapshot.state.n == i + 4
        assert sorted(snapshot.state.log) == ["left", "merge", "prepare", "right"]
        for name in ("prepare", "left", "right", "merge"):
            assert EFFECTS[(thread, name)] == 1


def test_submit_checks_everything_it_can_before_queueing(store):
    app = chain_graph("a", "b").compile(checkpointer=store.open())
    thread = fresh()

    with pytest.raises(InvalidUpdateError):
        app.submit({"n": "lots"}, thread_id=thread)
    with pytest.raises(InvalidUpdateError):
        app.submit({"no_such_field": 1}, thread_id=thread)
    with pytest.raises(ThreadNotFoundError):
        app.submit(None, thread_id=thread)
    with pytest.raises(ThreadStateError):
        app.submit({"n": 1}, thread_id="")
    with pytest.raises(ValueError):
        app.submit({"n": 1}, thread_id=thread, max_attempts=0)
    assert app.jobs() == []  # nothing was queued by a refused submit

    app.submit({"n": 1}, thread_id=thread, max_attempts=2)
    with pytest.raises(ThreadBusyError, match="already has a queued or running job"):
        app.submit({"n": 5}, thread_id=thread)
    assert [(j.thread_id, j.status, j.max_attempts) for j in app.jobs()] == \
        [(thread, "queued", 2)]

    drain(app)
    assert app.get_state(thread).state == Order(n=3, log=["a", "b"])
    with pytest.raises(ThreadStateError, match="has finished"):
        app.submit(None, thread_id=thread)
    with pytest.raises(InvalidUpdateError):  # an update of a finished thread is checked too
        app.submit({"n": []}, thread_id=thread)
    assert [(j.status, j.attempts) for j in app.jobs()] == [("done", 1)]

    # new input on a finished thread: a second run, its input applied by the reducers
    app.submit({"log": ["again"]}, thread_id=thread)
    assert [(j.status, j.attempts) for j in app.jobs()] == [("queued", 0)]
    drain(app)
    assert app.get_state(thread).state == Order(n=5, log=["a", "b", "again", "a", "b"])
    assert EFFECTS[(thread, "a")] == EFFECTS[(thread, "b")] == 2
    assert [(j.status, j.attempts) for j in app.jobs()] == [("done", 1)]


def test_new_input_on_an_unfinished_thread_is_refused_at_submit(store):
    app = chain_graph("a", "b").compile(checkpointer=store.open())
    thread = fresh()
    FAILS[(thread, "b")] = -1
    app.submit({}, thread_id=thread, max_attempts=1)
    drain(app)
    assert app.get_state(thread).status == "failed"
    with pytest.raises(ThreadStateError, match="unfinished run"):
        app.submit({"n": 1}, thread_id=thread)
    assert [j.status for j in app.jobs()] == ["failed"]


# -- failures and retries ---------------------------------------------------------------------

def test_a_flaky_node_is_retried_from_the_failed_step_not_from_scratch(store):
    app = chain_graph("prepare", "charge", "ship").compile(checkpointer=store.open())
    thread = fresh()
    FAILS[(thread, "charge")] = 1
    app.submit({}, thread_id=thread)

    worker = drain(app)

    stats = worker.stats
    assert (stats.claimed, stats.done, stats.retried, stats.failed) == (2, 1, 1, 0)
    job = job_of(app, thread)
    assert (job.status, job.attempts, job.error) == ("done", 2, None)
    assert CALLS[(thread, "prepare")] == 1 and EFFECTS[(thread, "prepare")] == 1
    assert CALLS[(thread, "charge")] == 2 and EFFECTS[(thread, "charge")] == 1
    assert EFFECTS[(thread, "ship")] == 1
    snapshot = app.get_state(thread)
    assert (snapshot.status, snapshot.state) == ("done", Order(n=3, log=["prepare", "charge",
                                                                         "ship"]))
    # one linear history: the failed step was continued, not a second run started
    history = app.history(thread)
    assert history[-1].kind == "input"
    assert sum(s.kind == "input" for s in history) == 1


def test_a_retry_of_a_second_run_does_not_apply_its_input_twice(store):
    app = chain_graph("a", "b").compile(checkpointer=store.open())
    thread = fresh()
    app.submit({"n": 10}, thread_id=thread)
    drain(app)
    FAILS[(thread, "a")] = 2
    app.submit({"n": 100, "log": ["input"]}, thread_id=thread)
    drain(app)
    assert job_of(app, thread).attempts == 3
    assert app.get_state(thread).state == Order(n=114, log=["a", "b", "input", "a", "b"])


def test_a_node_that_always_fails_fails_the_job_after_max_attempts(store):
    app = chain_graph("prepare", "charge").compile(checkpointer=store.open())
    thread, other = fresh(), fresh()
    FAILS[(thread, "charge")] = -1
    app.submit({}, thread_id=thread, max_attempts=3)
    app.submit({}, thread_id=other)

    started = time.monotonic()
    worker = drain(app, retry_delay=0.05)
    elapsed = time.monotonic() - started

    stats = worker.stats
    assert (stats.claimed, stats.done, stats.retried, stats.failed) == (4, 1, 2, 1)
    assert len(stats.errors) == 1 and stats.errors[0].startswith(f"{thread}: ConnectionError")
    job = job_of(app, thread)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 3, 3)
    assert job.error == "ConnectionError: charge could not reach the gateway"
    assert job.finished_at is not None
    assert CALLS[(thread, "charge")] == 3 and CALLS[(thread, "prepare")] == 1
    assert app.get_state(thread).status == "failed"
    assert elapsed >= 0.05 + 0.1  # waited retry_delay, then twice that, between attempts
    assert (job_of(app, other).status, job_of(app, other).attempts) == ("done", 1)

    # fixed: continuing the failed thread is a new job, which finishes it
    FAILS.pop((thread, "charge"))
    app.submit(None, thread_id=thread)
    assert (job_of(app, thread).status, job_of(app, thread).attempts) == ("queued", 0)
    assert drain(app).stats.done == 1
    assert app.get_state(thread).state == Order(n=2, log=["prepare", "charge"])
    assert CALLS[(thread, "prepare")] == 1


def test_failures_a_retry_cannot_fix_are_not_retried(store):
    app = chain_graph("prepare", "broken", broken={"bad": True}).compile(
        checkpointer=store.open())
    thread = fresh()
    app.submit({}, thread_id=thread, max_attempts=3)
    worker = drain(app)
    assert (worker.stats.failed, worker.stats.retried) == (1, 0)
    job = job_of(app, thread)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error.startswith("InvalidUpdateError")


# -- waiting for an event -----------------------------------------------------------------------

def test_a_run_waiting_for_an_event_ends_interrupted_and_an_event_submit_continues_it(store):
    app = chain_graph("submit", "approve", "ship", approve={"wait": True}).compile(
        checkpointer=store.open())
    thread = fresh()
    app.submit({}, thread_id=thread)

    worker = drain(app)

    assert (worker.stats.interrupted, worker.stats.done) == (1, 0)
    assert (job_of(app, thread).status, job_of(app, thread).attempts) == ("interrupted", 1)
    snapshot = app.get_state(thread)
    assert snapshot.status == "interrupted" and snapshot.metadata["waits_for"] == ["approval"]
    with pytest.raises(ThreadStateError):  # waiting, so new input is refused
        app.submit({"n": 1}, thread_id=thread)

    app.submit(None, thread_id=thread, event={"approval": {"ok": True}})
    assert job_of(app, thread).status == "queued"
    worker = drain(app)

    assert (worker.stats.interrupted, worker.stats.done) == (0, 1)
    assert (job_of(app, thread).status, job_of(app, thread).attempts) == ("done", 1)
    snapshot = app.get_state(thread)
    assert snapshot.status == "done"
    assert snapshot.state == Order(n=3, log=["submit", "approve:True", "ship"])
    assert EFFECTS[(thread, "submit")] == 1


# -- the property: whatever fails and is retried, the result is an uninterrupted run's ----------

@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.integers(0, 50),
                               st.fixed_dictionaries({name: st.integers(0, 2) for name in
                                                      ("prepare", "left", "right", "merge")})),
                     min_size=1, max_size=5),
       concurrency=st.integers(1, 3))
def test_retried_jobs_end_as_uninterrupted_runs_with_each_side_effect_once(store, jobs,
                                                                            concurrency):
    app = fan_graph().compile(checkpointer=store.open())
    reference = fan_graph().compile()
    threads = []
    for n, fails in jobs:
        thread = fresh("p")
        threads.append(thread)
        for name, count in fails.items():
            if count:
                FAILS[(thread, name)] = count
        # failed attempts: each step fails as often as its flakiest node (a node that succeeded
        # has its write kept, so it is not run again while its sibling is retried)
        needed = 1 + sum(max(fails[name] for name in step) for step in FAN_STEPS)
        app.submit({"n": n}, thread_id=thread, max_attempts=needed)

    worker = drain(app, concurrency=concurrency)

    assert worker.stats.failed == 0 and worker.stats.lost == 0
    assert worker.stats.done == len(jobs)
    by_thread = {j.thread_id: j for j in app.jobs()}
    for thread, (n, fails) in zip(threads, jobs, strict=True):
        job = by_thread[thread]
        assert job.status == "done"
        assert job.attempts == job.max_attempts  # it took exactly the failures injected
        final = app.get_state(thread).state
        expected = reference.invoke({"n": n})
        assert final.n == expected.n
        assert sorted(final.log) == sorted(expected.log)
        assert final.log[0] == "prepare" and final.log[-1] == "merge"
        committed = Counter(final.log)
        for name, count in fails.items():
            assert EFFECTS[(thread, name)] == committed[name] == 1
            assert CALLS[(thread, name)] == 1 + count


# -- concurrency --------------------------------------------------------------------------------

def test_a_worker_runs_jobs_concurrently_up_to_its_concurrency(store):
    running, peak = 0, 0
    pause = 0.2

    async def slow(state: Order) -> dict:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(pause)
        finally:
            running -= 1
        return {"n": 1}

    g = StateGraph(Order)
    g.add_node("slow", slow)
    g.add_edge(START, "slow")
    g.add_edge("slow", END)
    app = g.compile(checkpointer=store.open())
    threads = [fresh("c") for _ in range(20)]
    for i, thread in enumerate(threads):
        app.submit({"n": i}, thread_id=thread)

    started = time.monotonic()
    worker = drain(app, concurrency=4)
    elapsed = time.monotonic() - started

    assert worker.stats.done == 20
    assert {j.status for j in app.jobs()} == {"done"}
    assert [app.get_state(t).state.n for t in threads] == list(range(1, 21))
    assert peak == 4
    assert elapsed < 20 * pause * 0.7, f"{elapsed:.2f} s: the jobs did not overlap"


# -- claims across checkpointers on one store ---------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_each_job_is_claimed_by_exactly_one_of_many_concurrent_claimers(kind, tmp_path,
                                                                         request):
    store = make_store(kind, tmp_path, request)
    try:
        first = store.open()
        threads = [f"job-{i:02d}" for i in range(50)]
        for thread in threads:
            run_sync(lambda t=thread: first.enqueue(t, input=json.dumps({"n": 1}), event=None,
                                                    base=None, max_attempts=3))
        claimers = [store.open() for _ in range(8)]
        barrier = threading.Barrier(len(claimers))
        claimed: list[list] = [[] for _ in claimers]
        errors: list[BaseException] = []

        def claim_all(index: int) -> None:
            saver, owner = claimers[index], Owner.new()
            try:
                barrier.wait(timeout=10)
                while (job := run_sync(lambda: saver.claim(owner))) is not None:
                    claimed[index].append(job)
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(claimers))]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=60)
        assert not errors, errors
        every = [job for jobs in claimed for job in jobs]
        assert sorted(job.thread_id for job in every) == threads  # each one exactly once
        assert len({job.claim_key for job in every}) == 50
        assert all(job.attempts == 1 and json.loads(job.input) == {"n": 1} for job in every)
        assert sum(bool(jobs) for jobs in claimed) >= 2  # they really competed
        assert {j.status for j in run_sync(first.jobs)} == {"running"}
        # a second round finds nothing: every claim is held
        assert run_sync(lambda: first.claim(Owner.new())) is None
        for index, jobs in enumerate(claimed):
            for job in jobs:
                assert run_sync(lambda s=claimers[index], j=job: s.finish(j, status="done"))
        assert [(j.status, j.attempts) for j in run_sync(first.jobs)] == [("done", 1)] * 50
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_job_whose_worker_vanished_is_claimed_again_once_its_claim_expires(kind, tmp_path,
                                                                             request):
    store = make_store(kind, tmp_path, request)
    try:
        lease = 1.0
        vanished = store.open(lease_seconds=lease)
        app = chain_graph("a", "b").compile(checkpointer=vanished)
        thread = fresh("v")
        app.submit({"n": 1}, thread_id=thread)
        owner = Owner.new()
        job = run_sync(lambda: vanished.claim(owner))
        assert job is not None and job.thread_id == thread
        run_sync(lambda: vanished.acquire(thread, owner))  # it was about to run the thread
        assert [(j.status, j.attempts) for j in app.jobs()] == [("running", 1)]

        def claimed_until() -> float:
            [(until,)] = store.query("SELECT claimed_until FROM jobs WHERE thread_id = ?", thread)
            return until

        # renewed while the checkpointer lives: past the end of the claim as it was taken, it
        # still holds, for half a lease more (asked at once, not after a late beat's delay)
        first = claimed_until()
        wait_until(lambda: time.time() > first and claimed_until() > time.time() + lease / 2,
                   what="the claim to be renewed past its first period")
        assert run_sync(lambda: vanished.claim(Owner.new())) is None
        vanished.close()  # the worker is gone: nothing renews its claim or its lease

        survivor = store.open(lease_seconds=lease)
        app = chain_graph("a", "b").compile(checkpointer=survivor)
        started = time.monotonic()
        worker = drain(app)
        took = time.monotonic() - started

        assert (worker.stats.claimed, worker.stats.done, worker.stats.lost) == (1, 1, 0)
        assert took < lease * 2 + 5
        job = job_of(app, thread)
        assert (job.status, job.attempts) == ("done", 2)
        assert app.get_state(thread).state == Order(n=3, log=["a", "b"])
        assert EFFECTS[(thread, "a")] == EFFECTS[(thread, "b")] == 1
        # the vanished worker's claim is void: finishing it now changes nothing
        stale = ClaimedJob(thread, "a-claim-that-was-taken-over", None, None, None, 1, 3)
        assert run_sync(lambda: store.open().finish(stale, status="failed")) is False
        assert job_of(app, thread).status == "done"
    finally:
        store.close()


def test_stop_hands_the_running_job_back_to_the_queue(store):
    entered = asyncio.Event()

    async def slow(state: Order) -> dict:
        entered.set()
        await asyncio.sleep(30)
        return {"n": 1}

    g = StateGraph(Order)
    g.add_node("first", node("first"))
    g.add_node("slow", slow)
    g.add_edge(START, "first")
    g.add_edge("first", "slow")
    g.add_edge("slow", END)
    app = g.compile(checkpointer=store.open())
    thread = fresh("s")
    app.submit({}, thread_id=thread)

    async def scenario() -> Worker:
        worker = Worker(app, poll_interval=0.01)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(entered.wait(), 10)
        with pytest.raises(ThreadBusyError):  # its job is running
            await app.asubmit(None, thread_id=thread)
        worker.stop()
        await asyncio.wait_for(task, 10)
        return worker

    worker = run_sync(scenario)
    assert (worker.stats.claimed, worker.stats.done) == (1, 0)
    job = job_of(app, thread)
    assert (job.status, job.attempts) == ("queued", 0)  # an attempt stopped does not count
    assert not next(t for t in app.threads() if t.thread_id == thread).busy

    # the next worker continues from the committed step: `first` does not run again
    entered.clear()
    g2 = StateGraph(Order)
    g2.add_node("first", node("first"))
    g2.add_node("slow", lambda state: {"n": 10})
    g2.add_edge(START, "first")
    g2.add_edge("first", "slow")
    g2.add_edge("slow", END)
    app2 = g2.compile(checkpointer=app.checkpointer)
    drain(app2)
    assert (job_of(app2, thread).status, job_of(app2, thread).attempts) == ("done", 1)
    assert app2.get_state(thread).state == Order(n=11, log=["first"])
    assert CALLS[(thread, "first")] == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_job_whose_vanished_worker_had_finished_its_run_is_only_recorded_done(kind, tmp_path,
                                                                               request):
    store = make_store(kind, tmp_path, request)
    try:
        lease = 0.5
        vanished = store.open(lease_seconds=lease)
        app = chain_graph("a", "b").compile(checkpointer=vanished)
        thread = fresh("f")
        app.submit({"n": 1}, thread_id=thread)
        job = run_sync(lambda: vanished.claim(Owner.new()))
        assert job is not None and job.thread_id == thread
        app.invoke({"n": 1}, thread_id=thread)  # it ran the job to the end, then vanished
        vanished.close()

        app = chain_graph("a", "b").compile(checkpointer=store.open(lease_seconds=lease))
        worker = drain(app)

        assert (worker.stats.claimed, worker.stats.done) == (1, 1)
        assert (job_of(app, thread).status, job_of(app, thread).attempts) == ("done", 2)
        assert app.get_state(thread).state == Order(n=3, log=["a", "b"])  # not run again
        assert CALLS[(thread, "a")] == CALLS[(thread, "b")] == 1
        assert len(app.history(thread)) == 3
    finally:
        store.close()


def test_a_worker_claims_no_more_than_max_jobs_whatever_its_concurrency(store):
    app = chain_graph("a").compile(checkpointer=store.open())
    threads = [fresh("m") for _ in range(6)]
    for thread in threads:
        app.submit({}, thread_id=thread)
    worker = Worker(app, concurrency=4, poll_interval=0.01)
    stats = run_sync(lambda: worker.run(max_jobs=2))
    assert (stats.claimed, stats.done) == (2, 2)
    assert sorted(j.status for j in app.jobs()) == ["done"] * 2 + ["queued"] * 4


def test_submit_refuses_an_event_together_with_new_input(store):
    app = chain_graph("ask", "answer", answer={"wait": True}).compile(
        checkpointer=store.open())
    thread = fresh("e")
    with pytest.raises(ThreadStateError, match="event"):
        app.submit({"n": 1}, thread_id=thread, event={"approval": {"ok": True}})
    assert app.jobs() == []
    app.submit({}, thread_id=thread)
    drain(app)
    assert app.get_state(thread).status == "interrupted"
    with pytest.raises(ThreadStateError):
        app.submit({"n": 1}, thread_id=thread, event={"approval": {"ok": True}})
    assert [j.status for j in app.jobs()] == ["interrupted"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_job_claimed_while_the_worker_stops_goes_back_to_the_queue(kind, tmp_path, request):
    """stop() can land while the store is handing a job over: that job must not stay claimed
    by a worker that will never run it."""
    store = make_store(kind, tmp_path, request)
    base = type(store.open())
    claimed, stopped = threading.Event(), threading.Event()

    class SlowAnswers(base):  # the store's answer to a claim arrives only after stop()
        async def claim(self, worker, graph=None):
            job = await super().claim(worker, graph)
            if job is not None:
                claimed.set()
                await asyncio.get_running_loop().run_in_executor(None, stopped.wait, 10)
            return job

    saver = SlowAnswers(store.dsn, schema=store.schema) if kind == "postgres" else \
        SlowAnswers(store.path)
    try:
        app = chain_graph("a").compile(checkpointer=saver)
        thread = fresh("k")
        app.submit({}, thread_id=thread)

        async def scenario() -> Worker:
            worker = Worker(app, poll_interval=0.01)
            task = asyncio.create_task(worker.run())
            await asyncio.get_running_loop().run_in_executor(None, claimed.wait, 10)
            worker.stop()
            stopped.set()
            await asyncio.wait_for(task, 10)
            return worker

        worker = run_sync(scenario)
        assert worker.stats.done == 0
        job = job_of(app, thread)
        assert (job.status, job.attempts, job.claimed_by) == ("queued", 0, None)
        assert CALLS[(thread, "a")] == 0
        assert drain(app).stats.done == 1
    finally:
        saver.close()
        store.close()


def test_a_stop_that_comes_before_run_is_kept(store):
    """The CLI installs its SIGTERM handler (worker.stop) before worker.run(): a signal in
    between must still stop the worker."""
    app = chain_graph("a").compile(checkpointer=store.open())
    thread = fresh("b")
    app.submit({}, thread_id=thread)
    worker = Worker(app, poll_interval=0.01)
    worker.stop()

    stats = run_sync(lambda: asyncio.wait_for(worker.run(), 5))

    assert stats.claimed == 0
    assert [j.status for j in app.jobs()] == ["queued"]
    # stopped and returned: the same worker can run again
    assert run_sync(lambda: asyncio.wait_for(worker.run(drain=True), 10)).done == 1
    assert [j.status for j in app.jobs()] == ["done"]


def test_workers_claim_only_the_jobs_of_their_own_graph(store):
    """Two graphs share one store: each worker runs its own graph's jobs, and a draining
    worker does not wait for the other graph's."""
    saver = store.open()
    first = chain_graph("a", "b").compile(checkpointer=saver, name="first")
    second = chain_graph("c").compile(checkpointer=saver, name="second")
    one, two = fresh(), fresh()
    first.submit({}, thread_id=one)
    second.submit({}, thread_id=two)
    assert drain(first).stats.claimed == 1
    assert first.get_state(one).state.log == ["a", "b"]
    assert [(j.thread_id, j.status) for j in second.jobs()] == [(two, "queued")]
    assert [j.thread_id for j in first.jobs()] == [one]
    drain(second)
    assert second.get_state(two).state.log == ["c"]
    assert {(j.graph, j.status) for j in run_sync(saver.jobs)} == {
        ("first", "done"), ("second", "done")}


def test_new_input_for_a_thread_whose_job_is_queued_is_refused_as_busy(store):
    app = chain_graph("a").compile(checkpointer=store.open())
    thread = fresh()
    app.submit({}, thread_id=thread)
    with pytest.raises(ThreadBusyError, match="already has a queued or running job"):
        app.submit({"n": 2}, thread_id=thread)
