"""Orchestration features, run for real: retries, timeouts, caching, compensation (sagas), Send
fan-out and max_concurrency, partial-model updates, Command, wait_for events, error capture and
observability. Durable behaviour is checked with MemoryCheckpointer and with SQLiteCheckpointer
on a real file, reopened between a failure and its resume as a restarted process would.
(Subgraphs are in test_subgraphs.py.)"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer
from statemachine import (
    END,
    START,
    CachePolicy,
    Command,
    FakeClock,
    GraphValidationError,
    InvalidRouteError,
    InvalidUpdateError,
    NodeFailure,
    NodeTimeoutError,
    RetryPolicy,
    RunContext,
    Send,
    StateGraph,
    ThreadNotFoundError,
    ThreadStateError,
    use_clock,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


class S(BaseModel):
    value: int = 0
    log: Annotated[list[str], operator.add] = []
    results: Annotated[list[int], operator.add] = []
    items: list[int] = []
    errors: Annotated[list[NodeFailure], operator.add] = []


def fast(**kwargs: Any) -> RetryPolicy:
    """A retry policy whose waits are negligible."""
    kwargs.setdefault("initial_interval", 0.001)
    kwargs.setdefault("max_interval", 0.001)
    kwargs.setdefault("jitter", False)
    return RetryPolicy(**kwargs)


def flaky(failures: int, exc: type[BaseException] = ConnectionError, name: str = "fetch", *,
          bump: bool = True):
    """A node failing its first `failures` calls, then appending `name` to the log (and adding
    one to `value`, with `bump`)."""
    calls: list[int] = []

    def node(state: S) -> dict[str, Any]:
        calls.append(state.value)
        if len(calls) <= failures:
            raise exc(f"{name} call {len(calls)} failed")
        return {"log": [name], "value": state.value + 1} if bump else {"log": [name]}

    node.__name__ = name
    return node, calls


def appender(name: str, calls: list[str] | None = None):
    def node(state: S) -> dict[str, Any]:
        if calls is not None:
            calls.append(name)
        return {"log": [name]}

    node.__name__ = name
    return node


def chain(*nodes: tuple[str, Any], **options: Any) -> StateGraph:
    """START -> nodes in order -> END; `options[name]` are add_node keyword arguments."""
    g = StateGraph(S)
    for name, fn in nodes:
        g.add_node(name, fn, **options.get(name, {}))
    names = [START, *(n for n, _ in nodes), END]
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


class Recorder:
    """A listener recording every hook call as (hook, details)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_step_start(self, thread_id, step, nodes):
        self.calls.append(("step_start", (thread_id, step, tuple(nodes))))

    def on_step_end(self, event):
        self.calls.append(("step_end", (event.thread_id, event.step, event.nodes)))

    def on_node_start(self, thread_id, step, node):
        self.calls.append(("node_start", (thread_id, step, node)))

    def on_node_end(self, thread_id, step, node, update, seconds, metadata):
        self.calls.append(("node_end", (thread_id, step, node, update, dict(metadata))))

    def on_node_error(self, thread_id, step, node, error, attempts):
        self.calls.append(("node_error", (thread_id, step, node, error, attempts)))

    def on_node_retry(self, thread_id, step, node, attempt, error, delay):
        self.calls.append(("node_retry", (thread_id, step, node, attempt, error, delay)))

    def of(self, hook: str) -> list[Any]:
        return [details for name, details in self.calls if name == hook]


# =============================================================================================
# Retry
# =============================================================================================


def test_retry_runs_until_success_and_records_attempts(store):
    fetch, calls = flaky(2)
    g = chain(("fetch", fetch), ("after", appender("after")),
              fetch={"retry": fast(max_attempts=3)})
    app = g.compile(checkpointer=store.open())
    events = list(app.stream({"value": 1}, thread_id="t"))
    assert calls == [1, 1, 1]
    assert [e.attempts for e in events] == [{"fetch": 3}, {}]
    assert events[-1].state.log == ["fetch", "after"]
    reopened = g.compile(checkpointer=store.open())
    history = reopened.history("t")
    by_step = {snap.step: snap for snap in history}
    assert by_step[1].metadata["attempts"] == {"fetch": 3}  # the checkpoint of fetch's step
    assert "attempts" not in by_step[2].metadata
    assert reopened.get_state("t").status == "done"


def test_a_node_that_succeeds_first_time_records_no_attempts():
    fetch, calls = flaky(0)
    app = chain(("fetch", fetch), fetch={"retry": fast(max_attempts=3)}).compile(
        checkpointer=MemoryCheckpointer())
    [event] = list(app.stream({}, thread_id="t"))
    assert calls == [0]
    assert event.attempts == {}
    assert "attempts" not in app.get_state("t").metadata


def test_exhausted_retries_fail_the_run_which_resume_continues(store):
    fetch, calls = flaky(4)
    g = chain(("fetch", fetch), ("after", appender("after")),
              fetch={"retry": fast(max_attempts=3)})
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ConnectionError, match="fetch call 3 failed") as info:
        app.invoke({"value": 5}, thread_id="t")
    assert len(calls) == 3
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "failed 3 attempts" in notes and "'fetch'" in notes
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("fetch",)
    assert "ConnectionError" in (snap.error or "")

    reopened = g.compile(checkpointer=store.open())
    final = reopened.resume("t")
    assert len(calls) == 5  # one more failure, then success on the second attempt of this run
    assert final.log == ["fetch", "after"] and final.value == 6
    by_step = {s.step: s for s in reopened.history("t") if s.kind == "step"}
    assert by_step[1].metadata["attempts"] == {"fetch": 2}


@pytest.mark.parametrize(("raised", "retried"), [
    (ConnectionError, True),
    (ConnectionResetError, True),  # a subclass matches
    (TimeoutError, True),
    (ValueError, False),
    (OSError, False),
])
def test_retry_on_a_tuple_of_exception_classes(raised, retried):
    node, calls = flaky(1, raised)
    app = chain(("fetch", node), fetch={
        "retry": fast(max_attempts=2, retry_on=(TimeoutError, ConnectionError))}).compile()
    if retried:
        assert app.invoke({}).log == ["fetch"]
        assert len(calls) == 2
    else:
        with pytest.raises(raised):
            app.invoke({})
        assert len(calls) == 1


def test_retry_on_a_single_exception_class():
    node, calls = flaky(2, KeyError)
    app = chain(("fetch", node), fetch={"retry": fast(max_attempts=3, retry_on=KeyError)})
    assert app.compile().invoke({}).log == ["fetch"]
    assert len(calls) == 3


def test_retry_on_a_predicate_sees_the_exception():
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    messages = iter(["transient glitch", "transient again", "fatal"])
    calls = []

    def node(state: S) -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError(next(messages))

    app = chain(("n", node), n={"retry": fast(max_attempts=10, retry_on=transient)}).compile()
    with pytest.raises(RuntimeError, match="fatal"):
        app.invoke({})
    assert len(calls) == 3
    assert [str(e) for e in seen] == ["transient glitch", "transient again", "fatal"]


class MyTransientError(Exception):
    pass


@pytest.mark.parametrize(("raised", "retried"), [
    (MyTransientError, True),
    (ConnectionError, True),
    (OSError, True),
    (TimeoutError, True),
    (RuntimeError, True),
    (ValueError, False),
    (TypeError, False),
    (KeyError, False),
    (AttributeError, False),
    (ZeroDivisionError, False),
])
def test_default_retry_on_retries_transient_errors_only(raised, retried):
    node, calls = flaky(1, raised)
    app = chain(("fetch", node), fetch={"retry": fast(max_attempts=2)}).compile()
    if retried:
        app.invoke({})
        assert len(calls) == 2
    else:
        with pytest.raises(raised):
            app.invoke({})
        assert len(calls) == 1


def test_an_invalid_update_is_never_retried():
    calls = []

    def bad(state: S) -> dict[str, Any]:
        calls.append(1)
        return {"value": "not a number"}

    app = chain(("bad", bad), bad={"retry": fast(max_attempts=5, retry_on=Exception)}).compile()
    with pytest.raises(InvalidUpdateError):
        app.invoke({})
    assert calls == [1]


def test_compile_retry_is_the_default_and_a_node_policy_overrides_it():
    a, a_calls = flaky(3, name="a")
    b, b_calls = flaky(1, name="b")
    g = chain(("a", a), ("b", b), b={"retry": fast(max_attempts=1)})
    app = g.compile(retry=fast(max_attempts=4))
    with pytest.raises(ConnectionError, match="b call 1"):
        app.invoke({})
    assert len(a_calls) == 4  # the graph-wide policy let `a` fail three times
    assert len(b_calls) == 1  # its own policy allows one attempt


def test_no_policy_means_no_retry():
    node, calls = flaky(1, name="a")
    with pytest.raises(ConnectionError):
        chain(("a", node)).compile().invoke({})
    assert len(calls) == 1


def test_backoff_waits_grow_and_stop_at_max_interval():
    node, _ = flaky(4)
    rec = Recorder()
    policy = RetryPolicy(max_attempts=5, initial_interval=0.001, backoff=3.0, max_interval=0.02,
                         jitter=False)
    app = chain(("fetch", node), fetch={"retry": policy}).compile()
    app.add_listener(rec)
    app.invoke({})
    retries = rec.of("node_retry")
    assert [r[3] for r in retries] == [1, 2, 3, 4]
    assert [r[5] for r in retries] == pytest.approx([0.001, 0.003, 0.009, 0.02])
    assert all(isinstance(r[4], ConnectionError) for r in retries)


@given(failed=st.integers(1, 30), initial=st.floats(0, 5), backoff=st.floats(1, 4),
       cap=st.floats(0, 60))
def test_delay_is_capped_and_jitter_stays_within_half_to_full(failed, initial, backoff, cap):
    exact = RetryPolicy(initial_interval=initial, backoff=backoff, max_interval=cap,
                        jitter=False).delay(failed)
    assert exact == pytest.approx(min(cap, initial * backoff ** (failed - 1)))
    jittered = RetryPolicy(initial_interval=initial, backoff=backoff, max_interval=cap,
                           jitter=True).delay(failed)
    assert exact * 0.5 - 1e-12 <= jittered <= exact + 1e-12


@given(failures=st.integers(0, 6), max_attempts=st.integers(1, 6))
def test_retry_succeeds_iff_failures_are_fewer_than_max_attempts(failures, max_attempts):
    node, calls = flaky(failures)
    app = chain(("fetch", node), fetch={
        "retry": RetryPolicy(max_attempts=max_attempts, initial_interval=0, jitter=False)
    }).compile()
    if failures < max_attempts:
        [event] = list(app.stream({}))
        assert event.state.log == ["fetch"]
        assert event.attempts == ({"fetch": failures + 1} if failures else {})
    else:
        with pytest.raises(ConnectionError):
            app.invoke({})
    assert len(calls) == min(failures + 1, max_attempts)


@pytest.mark.parametrize("kwargs", [
    {"max_attempts": 0}, {"initial_interval": -1}, {"max_interval": -0.5}, {"backoff": 0.5}])
def test_retry_policy_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_that_is_not_a_policy_is_a_compile_problem():
    g = chain(("a", appender("a")), a={"retry": 3})
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    assert info.value.codes == ["invalid_option"]
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a"))).compile(retry={"max_attempts": 3})
    assert info.value.codes == ["invalid_option"]


def test_attempts_of_a_task_that_finished_before_a_sibling_failed_survive_resume(store):
    """`a` needed 2 attempts and finished; `b` failed. Resume must not re-run `a`, and the
    step's checkpoint still records a's attempts (they were stored with its pending write)."""
    a, a_calls = flaky(1, name="a")
    b, b_calls = flaky(1, ValueError, name="b", bump=False)
    g = StateGraph(S)
    g.add_node("a", a, retry=fast(max_attempts=3))
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    assert app.get_state("t").pending_writes["a"] == {"log": ["a"], "value": 1}
    reopened = g.compile(checkpointer=store.open())
    final = reopened.resume("t")
    assert len(a_calls) == 2 and len(b_calls) == 2
    assert final.log == ["a", "b"]
    assert reopened.get_state("t").metadata["attempts"] == {"a": 2}


# =============================================================================================
# Timeout
# =============================================================================================


def test_an_async_node_past_its_timeout_is_cancelled():
    cancelled = []

    async def slow(state: S) -> dict[str, Any]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return {"log": ["slow"]}

    app = chain(("slow", slow), slow={"timeout": 0.05}).compile()
    started = time.perf_counter()
    with pytest.raises(NodeTimeoutError) as info:
        app.invoke({})
    assert time.perf_counter() - started < 2
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.node == "slow" and err.timeout == 0.05
    assert "'slow'" in str(err) and "0.05" in str(err)
    assert cancelled == [True]


async def test_an_async_node_timeout_under_ainvoke():
    async def slow(state: S) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    app = chain(("slow", slow), slow={"timeout": 0.05}).compile()
    with pytest.raises(NodeTimeoutError):
        await app.ainvoke({})


def test_a_sync_node_past_its_timeout_is_abandoned_and_its_result_never_lands(store):
    release, finished = threading.Event(), threading.Event()

    def stuck(state: S) -> dict[str, Any]:
        release.wait(5)
        finished.set()
        return {"log": ["stuck"]}

    g = chain(("stuck", stuck), stuck={"timeout": 0.1})
    app = g.compile(checkpointer=store.open())
    started = time.perf_counter()
    try:
        with pytest.raises(NodeTimeoutError, match=r"'stuck'.*0\.1"):
            app.invoke({}, thread_id="t")
        assert time.perf_counter() - started < 2  # the call did not wait for the thread
        assert not finished.is_set()
    finally:
        release.set()
    assert finished.wait(5)
    time.sleep(0.05)
    snap = app.get_state("t")
    assert snap.status == "failed" and "NodeTimeoutError" in (snap.error or "")
    assert snap.state.log == [] and snap.pending_writes == {}
    # the late result was abandoned: resuming runs the node again, and its update lands once
    assert g.compile(checkpointer=store.open()).resume("t").log == ["stuck"]


def test_a_timed_out_attempt_is_retried_when_the_policy_says_so():
    calls = []

    async def sometimes_slow(state: S) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(10)
        return {"log": ["ok"]}

    rec = Recorder()
    app = chain(("n", sometimes_slow), n={
        "timeout": 0.05, "retry": fast(max_attempts=2, retry_on=TimeoutError)}).compile()
    app.add_listener(rec)
    [event] = list(app.stream({}))
    assert event.state.log == ["ok"]
    assert event.attempts == {"n": 2}
    [retry] = rec.of("node_retry")
    assert isinstance(retry[4], NodeTimeoutError)


def test_the_default_retry_on_retries_a_timeout():
    calls = []
    release = threading.Event()

    def sometimes_slow(state: S) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)  # past any timeout; the retry must fit in one, even on a slow machine
        return {"log": ["ok"]}

    app = chain(("n", sometimes_slow), n={"timeout": 0.5, "retry": fast(max_attempts=2)})
    try:
        assert app.compile().invoke({}).log == ["ok"]
    finally:
        release.set()
    assert len(calls) == 2


def test_a_timeout_is_not_retried_when_retry_on_excludes_it():
    calls = []

    async def slow(state: S) -> dict[str, Any]:
        calls.append(1)
        await asyncio.sleep(10)

    app = chain(("n", slow), n={"timeout": 0.05,
                                "retry": fast(max_attempts=3, retry_on=ConnectionError)})
    with pytest.raises(NodeTimeoutError):
        app.compile().invoke({})
    assert calls == [1]


def test_the_timeout_applies_to_each_attempt_not_to_all_of_them():
    calls = []
    timeout, pause = 0.8, 0.3  # each attempt well within the limit, three of them past it

    async def slowish(state: S) -> dict[str, Any]:
        calls.append(1)
        await asyncio.sleep(pause)
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return {"log": ["done"]}

    app = chain(("n", slowish), n={"timeout": timeout, "retry": fast(max_attempts=3)}).compile()
    started = time.perf_counter()
    assert app.invoke({}).log == ["done"]
    assert time.perf_counter() - started > timeout  # longer in all than the limit of one attempt
    assert len(calls) == 3


def test_a_node_within_its_timeout_is_unaffected():
    async def quick(state: S) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"log": ["quick"]}

    assert chain(("q", quick), q={"timeout": 5}).compile().invoke({}).log == ["quick"]


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
def test_an_invalid_timeout_is_a_compile_problem(timeout):
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a")), a={"timeout": timeout}).compile()
    assert info.value.codes == ["invalid_option"]
    assert "timeout" in str(info.value)


# =============================================================================================
# Cache
# =============================================================================================


def cached_node(calls: list[Any]):
    def expensive(state: S) -> dict[str, Any]:
        calls.append(state.value)
        return {"results": [state.value * 10]}

    return expensive


def test_a_cache_hit_skips_the_node_and_shows_in_the_event():
    calls: list[int] = []
    app = chain(("expensive", cached_node(calls)),
                expensive={"cache": CachePolicy()}).compile()
    [first] = list(app.stream({"value": 2}))
    [second] = list(app.stream({"value": 2}))
    assert calls == [2]
    assert first.cache_hits == () and second.cache_hits == ("expensive",)
    assert second.state == first.state and second.state.results == [20]
    assert second.timings.get("expensive", 0.0) == 0.0
    app.invoke({"value": 3})
    assert calls == [2, 3]


def test_the_default_key_is_the_whole_input_state():
    calls: list[int] = []
    app = chain(("expensive", cached_node(calls)),
                expensive={"cache": CachePolicy()}).compile()
    app.invoke({"value": 2})
    app.invoke({"value": 2, "log": ["other"]})  # same value, another state: a miss
    assert calls == [2, 2]


def test_a_custom_key_decides_what_counts_as_the_same_input():
    calls: list[int] = []
    app = chain(("expensive", cached_node(calls)),
                expensive={"cache": CachePolicy(key=lambda s: s.value)}).compile()
    app.invoke({"value": 2})
    final = app.invoke({"value": 2, "log": ["other"]})
    assert calls == [2]
    assert final.results == [20] and final.log == ["other"]


def test_an_entry_expires_after_its_ttl(store):
    """The TTL runs on the runs' clock (`use_clock`), so this test cannot race a slow
    machine: the entry lives exactly 30 clock seconds."""
    calls: list[int] = []
    app = chain(("expensive", cached_node(calls)),
                expensive={"cache": CachePolicy(ttl=30)}).compile(checkpointer=store.open())
    with use_clock(FakeClock(start=1_000.0)) as clock:
        app.invoke({"value": 1}, thread_id="a")
        clock.now += 29.9
        app.invoke({"value": 1}, thread_id="b")
        assert calls == [1]
        clock.now += 0.2
        app.invoke({"value": 1}, thread_id="c")
    assert calls == [1, 1]
    assert "cache_hits" not in app.get_state("c").metadata
    assert app.get_state("b").metadata["cache_hits"] == ["expensive"]


@pytest.mark.parametrize("ttl", [0, -5])
def test_cache_policy_rejects_a_non_positive_ttl(ttl):
    with pytest.raises(ValueError):
        CachePolicy(ttl=ttl)


def test_cache_that_is_not_a_policy_is_a_compile_problem():
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a")), a={"cache": True}).compile()
    assert info.value.codes == ["invalid_option"]


def test_the_cache_lives_in_the_store_shared_by_threads_and_restarts(durable_store):
    calls: list[int] = []
    g = chain(("expensive", cached_node(calls)), ("after", appender("after")),
              expensive={"cache": CachePolicy()})
    app = g.compile(checkpointer=durable_store.open())
    app.invoke({"value": 4}, thread_id="t1")
    app.invoke({"value": 4}, thread_id="t2")
    assert calls == [4]
    rows = durable_store.query("SELECT namespace, expires_at FROM cache")
    assert len(rows) == 1 and ":expensive" in rows[0][0] and rows[0][1] is None

    restarted = g.compile(checkpointer=durable_store.open())
    events = list(restarted.stream({"value": 4}, thread_id="t3"))
    assert calls == [4]
    assert events[0].cache_hits == ("expensive",)
    assert events[-1].state.results == [40] and events[-1].state.log == ["after"]
    snaps = {s.step: s for s in restarted.history("t3")}
    assert snaps[1].metadata["cache_hits"] == ["expensive"]
    assert "cache_hits" not in restarted.history("t1")[-2].metadata


def test_the_cache_is_shared_by_apps_on_one_memory_checkpointer_but_not_without_one():
    calls: list[int] = []
    g = chain(("expensive", cached_node(calls)), expensive={"cache": CachePolicy()})
    saver = MemoryCheckpointer()
    g.compile(checkpointer=saver).invoke({"value": 1}, thread_id="a")
    g.compile(checkpointer=saver).invoke({"value": 1}, thread_id="b")
    assert calls == [1]
    g.compile().invoke({"value": 1})
    g.compile().invoke({"value": 1})  # each app without a checkpointer has its own cache
    assert calls == [1, 1, 1]


def test_graphs_whose_nodes_have_different_code_do_not_share_cache_entries(sqlite_store):
    def first(state: S) -> dict[str, Any]:
        return {"log": ["first"]}

    def second(state: S) -> dict[str, Any]:
        return {"log": ["second"]}

    saver = sqlite_store.open()
    one = chain(("step", first), step={"cache": CachePolicy()}).compile(checkpointer=saver)
    two = chain(("step", second), step={"cache": CachePolicy()}).compile(checkpointer=saver)
    assert one.name == two.name  # the default name comes from the state model
    assert one.invoke({}, thread_id="a").log == ["first"]
    assert two.invoke({}, thread_id="b").log == ["second"]
    assert one.invoke({}, thread_id="c").log == ["first"]
    assert "cache_hits" in one.get_state("c").metadata


def test_different_graphs_sharing_a_store_do_not_share_cache_entries(sqlite_store):
    def graph(text: str) -> StateGraph:
        return chain(("step", lambda s: {"log": [text]}), step={"cache": CachePolicy()})

    saver = sqlite_store.open()
    assert graph("one").compile(checkpointer=saver).invoke({}, thread_id="a").log == ["one"]
    assert graph("two").compile(checkpointer=saver).invoke({}, thread_id="b").log == ["two"]


def test_a_cache_hit_after_resume_of_a_failed_thread(store):
    """t1 fails before reaching the cached node; t2 computes it; t1, resumed after a restart,
    gets the cached update (no call) and records the hit in its checkpoint."""
    calls: list[int] = []
    prep, _ = flaky(1, ValueError, name="prep")
    g = chain(("prep", prep), ("expensive", cached_node(calls)),
              expensive={"cache": CachePolicy(key=lambda s: s.value)})
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({"value": 1}, thread_id="t1")
    app.invoke({"value": 1}, thread_id="t2")
    assert calls == [2]
    final = g.compile(checkpointer=store.open()).resume("t1")
    assert calls == [2]
    assert final.results == [20]
    assert app.get_state("t1").metadata["cache_hits"] == ["expensive"]


def test_a_cache_hit_of_a_task_pending_at_a_failure_is_recorded_after_resume(store):
    calls: list[int] = []
    broken = [False]

    def b(state: S) -> dict[str, Any]:
        if broken[0]:
            raise ValueError("b is broken")
        return {"log": ["b"]}

    g = StateGraph(S)
    g.add_node("a", cached_node(calls), cache=CachePolicy())
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    app = g.compile(checkpointer=store.open())
    app.invoke({"value": 3}, thread_id="warm")
    broken[0] = True
    with pytest.raises(ValueError):
        app.invoke({"value": 3}, thread_id="t")  # a hits, b fails: a's hit is pending
    broken[0] = False
    final = g.compile(checkpointer=store.open()).resume("t")
    assert calls == [3]
    assert final.results == [30] and final.log == ["b"]
    assert app.get_state("t").metadata["cache_hits"] == ["a"]


def test_a_cached_command_replays_its_goto():
    calls: list[int] = []

    def decide(state: S) -> Command:
        calls.append(state.value)
        return Command(update={"log": ["decide"]}, goto="even" if state.value % 2 == 0 else "odd")

    g = StateGraph(S)
    g.add_node("decide", decide, destinations=("even", "odd"), cache=CachePolicy())
    g.add_node("even", appender("even"))
    g.add_node("odd", appender("odd"))
    g.add_edge(START, "decide")
    g.add_edge("even", END)
    g.add_edge("odd", END)
    app = g.compile()
    assert app.invoke({"value": 2}).log == ["decide", "even"]
    assert app.invoke({"value": 2}).log == ["decide", "even"]
    assert app.invoke({"value": 3}).log == ["decide", "odd"]
    assert calls == [2, 3]


def test_send_tasks_are_cached_by_their_payload():
    calls: list[int] = []

    def work(payload: dict[str, int]) -> dict[str, Any]:
        calls.append(payload["x"])
        return {"results": [payload["x"] * 2]}

    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", work, cache=CachePolicy())
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"x": x}) for x in s.items],
                            ["work"])
    g.add_edge("work", END)
    app = g.compile()
    assert app.invoke({"items": [1, 2]}).results == [2, 4]
    assert app.invoke({"items": [2, 3, 1]}).results == [4, 6, 2]
    assert sorted(calls) == [1, 2, 3]


def test_a_captured_failure_is_not_cached():
    calls = []

    def sometimes(state: S) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient")
        return {"log": ["ok"]}

    app = chain(("n", sometimes), n={"cache": CachePolicy(), "on_error": "capture"}).compile()
    assert len(app.invoke({}).errors) == 1
    second = app.invoke({})
    assert len(calls) == 2
    assert second.log == ["ok"] and second.errors == []


# =============================================================================================
# Compensation (sagas)
# =============================================================================================


def saga(undo_log: list[str], *, fail_at: str = "ship", raise_once: set[str] | None = None,
         step_calls: list[str] | None = None) -> StateGraph:
    """reserve -> charge -> notify (no compensation) -> ship; `fail_at` raises ValueError."""
    raise_once = set(raise_once or ())

    def step(name: str):
        def node(state: S) -> dict[str, Any]:
            if step_calls is not None:
                step_calls.append(name)
            if name == fail_at:
                raise ValueError(f"{name} failed")
            return {"log": [name]}

        node.__name__ = name
        return node

    def undo(name: str):
        def compensate(state: S) -> dict[str, Any]:
            if name in raise_once:
                raise_once.discard(name)
                undo_log.append(f"undo {name} crashed")
                raise ConnectionError(f"undo {name} crashed")
            undo_log.append(f"undo {name}")
            return {"log": [f"undo {name}"]}

        return compensate

    return chain(("reserve", step("reserve")), ("charge", step("charge")),
                 ("notify", step("notify")), ("ship", step("ship")),
                 reserve={"compensate": undo("reserve")}, charge={"compensate": undo("charge")},
                 ship={"compensate": undo("ship")})


def test_rollback_runs_compensations_of_completed_nodes_newest_first(store):
    undone: list[str] = []
    g = saga(undone)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError, match="ship failed"):
        app.invoke({}, thread_id="t")
    final = g.compile(checkpointer=store.open()).rollback("t")
    # ship failed, so it is not undone; notify has no compensation
    assert undone == ["undo charge", "undo reserve"]
    assert final.log == ["reserve", "charge", "notify", "undo charge", "undo reserve"]
    snap = app.get_state("t")
    assert snap.status == "compensated" and snap.kind == "compensation"
    assert snap.state == final
    assert "ship failed" in (snap.error or "")


def test_rollback_again_does_nothing(store):
    undone: list[str] = []
    g = saga(undone)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    first = app.rollback("t")
    checkpoints = len(app.history("t"))
    again = g.compile(checkpointer=store.open()).rollback("t")
    assert undone == ["undo charge", "undo reserve"]
    assert again == first
    assert len(app.history("t")) == checkpoints


def test_a_rollback_that_crashes_resumes_without_repeating_committed_compensations(store):
    undone: list[str] = []
    g = saga(undone, raise_once={"reserve"})
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    with pytest.raises(ConnectionError, match="undo reserve crashed") as info:
        app.rollback("t")
    assert "rollback again" in "\n".join(getattr(info.value, "__notes__", []))
    snap = app.get_state("t")
    assert snap.status == "rollback_failed"  # not compensated yet
    assert snap.state.log[-1] == "undo charge"
    # the compensation's own error is kept, and where the rollback stopped
    assert snap.error == "ConnectionError: undo reserve crashed"
    assert snap.metadata["undo_failed"] == [0, "reserve", 0]
    assert any("ship failed" in (s.error or "") for s in app.history("t") if s.kind == "step")
    # resume and new input explain themselves instead of doing nothing
    with pytest.raises(ThreadStateError, match=r"rollback stopped at the compensation of node "
                       r"'reserve' \(step 0\): ConnectionError: undo reserve crashed.*"
                       r"app.rollback\('t'\)"):
        app.resume("t")
    with pytest.raises(ThreadStateError, match="rollback stopped"):
        app.invoke({}, thread_id="t")
    assert app.get_state("t").checkpoint_id == snap.checkpoint_id

    final = g.compile(checkpointer=store.open()).rollback("t")
    assert undone == ["undo charge", "undo reserve crashed", "undo reserve"]
    assert final.log == ["reserve", "charge", "notify", "undo charge", "undo reserve"]
    assert app.get_state("t").status == "compensated"


def test_compensation_checkpoints_record_what_they_undid(store):
    undone: list[str] = []
    app = saga(undone).compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    app.rollback("t")
    undos = [s for s in reversed(app.history("t")) if s.kind == "compensation"]
    assert [s.metadata["compensates"] for s in undos] == [[1, "charge", 0], [0, "reserve", 0]]
    assert [s.status for s in undos] == ["failed", "compensated"]


def test_on_failure_compensate_rolls_back_before_the_error_propagates(store):
    undone: list[str] = []
    g = saga(undone, fail_at="notify")
    app = g.compile(checkpointer=store.open(), on_failure="compensate")
    with pytest.raises(ValueError, match="notify failed"):
        app.invoke({}, thread_id="t")
    assert undone == ["undo charge", "undo reserve"]
    snap = app.get_state("t")
    assert snap.status == "compensated"
    assert snap.state.log == ["reserve", "charge", "undo charge", "undo reserve"]
    app.rollback("t")
    assert undone == ["undo charge", "undo reserve"]


def test_on_failure_compensate_with_a_crashing_compensation_then_rollback(store):
    undone: list[str] = []
    g = saga(undone, raise_once={"charge"})
    app = g.compile(checkpointer=store.open(), on_failure="compensate")
    with pytest.raises(ConnectionError, match="undo charge crashed"):
        app.invoke({}, thread_id="t")
    assert app.get_state("t").status == "rollback_failed"
    assert app.get_state("t").error == "ConnectionError: undo charge crashed"
    g.compile(checkpointer=store.open(), on_failure="compensate").rollback("t")
    assert undone == ["undo charge crashed", "undo charge", "undo reserve"]
    assert app.get_state("t").status == "compensated"


def test_a_finished_sibling_of_the_failed_task_is_compensated(store):
    undone: list[str] = []

    def fails(state: S) -> dict[str, Any]:
        raise ValueError("b failed")

    def undo(name):
        def compensate(state: S) -> dict[str, Any]:
            undone.append(name)
            return {"log": [f"undo {name}"]}
        return compensate

    g = StateGraph(S)
    g.add_node("first", appender("first"), compensate=undo("first"))
    g.add_node("a", appender("a"), compensate=undo("a"))
    g.add_node("b", fails, compensate=undo("b"))
    g.add_edge(START, "first")
    g.add_edge("first", "a")
    g.add_edge("first", "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    app.rollback("t")
    assert undone == ["a", "first"]


@pytest.mark.parametrize("parallel", [False, True])
def test_a_compensation_sees_the_update_of_the_task_it_undoes(store, parallel):
    seen: list[int] = []

    def ship(state: S) -> None:
        raise ValueError("ship failed")

    g = StateGraph(S)
    g.add_node("charge", lambda s: {"value": 42}, compensate=lambda s: seen.append(s.value))
    g.add_node("ship", ship)
    g.add_edge(START, "charge")
    if parallel:
        g.add_edge(START, "ship")
        g.add_edge("charge", END)
    else:
        g.add_edge("charge", "ship")
    g.add_edge("ship", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    app.rollback("t")
    assert seen == [42]


def test_rollback_undoes_only_the_latest_run_of_a_thread(store):
    undone: list[str] = []

    def charge(state: S) -> dict[str, Any]:
        if state.value == 2:
            raise ValueError("second order failed")
        return {"log": [f"charge {state.value}"]}

    g = chain(("pay", lambda s: {"log": [f"pay {s.value}"]}), ("charge", charge),
              pay={"compensate": lambda s: undone.append(f"undo {s.log[-1]}")},
              charge={"compensate": lambda s: undone.append("undo charge")})
    app = g.compile(checkpointer=store.open())
    app.invoke({"value": 1}, thread_id="t")
    with pytest.raises(ValueError):
        app.invoke({"value": 2}, thread_id="t")
    app.rollback("t")
    assert undone == ["undo pay 2"]  # the first, finished run is not undone


def test_a_new_run_may_start_on_a_compensated_thread(store):
    undone: list[str] = []
    g = saga(undone, fail_at="nothing")
    app = saga(undone).compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    app.rollback("t")
    final = g.compile(checkpointer=store.open()).invoke({"value": 9}, thread_id="t")
    assert final.value == 9 and final.log[-4:] == ["reserve", "charge", "notify", "ship"]
    assert g.compile(checkpointer=store.open()).get_state("t").status == "done"


def test_rollback_of_a_finished_or_unknown_thread_is_refused(store):
    undone: list[str] = []
    app = saga(undone, fail_at="nothing").compile(checkpointer=store.open())
    app.invoke({}, thread_id="done")
    with pytest.raises(ThreadStateError, match="'done'"):
        app.rollback("done")
    with pytest.raises(ThreadNotFoundError):
        app.rollback("nope")
    assert undone == []


def test_rollback_needs_a_checkpointer():
    with pytest.raises(ThreadStateError, match="checkpointer"):
        saga([]).compile().rollback("t")


def test_a_failure_with_nothing_to_compensate_still_ends_compensated(store):
    g = chain(("a", appender("a")), ("b", flaky(5, ValueError, name="b")[0]))
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    assert app.rollback("t").log == ["a"]
    assert app.get_state("t").status == "compensated"


def test_a_compensation_gets_a_stable_run_context(store):
    contexts: list[RunContext] = []
    crashed = []

    def refund(state: S, context: RunContext) -> None:
        contexts.append(context)
        if not crashed:
            crashed.append(True)
            raise ConnectionError("payment gateway down")

    charged: list[RunContext] = []

    def charge(state: S, context: RunContext) -> dict[str, Any]:
        charged.append(context)
        return {"log": ["charge"]}

    g = chain(("pick", appender("pick")), ("charge", charge),
              ("ship", flaky(9, ValueError, name="ship")[0]), charge={"compensate": refund})
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    with pytest.raises(ConnectionError):
        app.rollback("t")
    g.compile(checkpointer=store.open()).rollback("t")
    first, second = contexts
    assert first.node == "charge" and first.thread_id == "t" and first.step == 1
    assert first.task_id == second.task_id and len(first.task_id) == 32
    # its own id is its own (an idempotency key for the refund); the id of the task it undoes
    # finds the charge in a ledger keyed by task id
    assert first.undoes_task_id == second.undoes_task_id == charged[0].task_id
    assert first.task_id != charged[0].task_id


def test_each_send_task_is_compensated_once_in_reverse_order(store):
    undone: list[int] = []

    def refund(state: S) -> None:
        undone.append(len(undone))

    def work(payload: dict[str, int]) -> dict[str, Any]:
        return {"results": [payload["x"]]}

    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", work, compensate=refund)
    g.add_node("fail", flaky(9, ValueError, name="fail")[0])
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"x": x}) for x in s.items],
                            ["work"])
    g.add_edge("work", "fail")
    g.add_edge("fail", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({"items": [1, 2, 3]}, thread_id="t")
    app.rollback("t")
    undos = [s.metadata["compensates"] for s in reversed(app.history("t"))
             if s.kind == "compensation"]
    assert undos == [[1, "work", 2], [1, "work", 1], [1, "work", 0]]
    assert len(undone) == 3


def test_a_real_crash_during_rollback(durable_store, tmp_path):
    """A process killed (os._exit) inside a compensation, after an earlier compensation was
    committed: rolling back from another process finishes the rest exactly once."""
    script = tmp_path / "saga.py"
    effects = tmp_path / "effects.txt"
    script.write_text(textwrap.dedent(f"""
        import operator, os, sys
        from typing import Annotated
        from pydantic import BaseModel
        import checkpoints
        from statemachine import END, START, StateGraph

        class S(BaseModel):
            log: Annotated[list[str], operator.add] = []

        def effect(text):
            with open({str(effects)!r}, "a") as f:
                f.write(text + "\\n")

        def step(name):
            def node(state):
                if name == "ship":
                    raise ValueError("ship failed")
                return {{"log": [name]}}
            return node

        def undo(name):
            def compensate(state):
                effect("undo " + name)
                if name == "a" and sys.argv[1] == "crash":
                    os._exit(9)
                return {{"log": ["undo " + name]}}
            return compensate

        g = StateGraph(S)
        for name in ("a", "b", "ship"):
            g.add_node(name, step(name), compensate=undo(name))
        g.add_edge(START, "a"); g.add_edge("a", "b"); g.add_edge("b", "ship")
        g.add_edge("ship", END)
        app = g.compile(checkpointer=OPEN_STORE)
        if sys.argv[1] == "crash":
            try:
                app.invoke({{}}, thread_id="order")
            except ValueError:
                pass
        print(app.rollback("order").log)
        print(app.get_state("order").status)
    """).replace("OPEN_STORE", durable_store.opener))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = durable_store.kind  # the script opens the store itself
    crashed = subprocess.run([sys.executable, str(script), "crash", db], env=env,
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 9, crashed.stderr
    assert effects.read_text().splitlines() == ["undo b", "undo a"]
    done = subprocess.run([sys.executable, str(script), "again", db], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['a', 'b', 'undo b', 'undo a']", "compensated"]
    # b's committed compensation did not run again; a's, in flight at the crash, did
    assert effects.read_text().splitlines() == ["undo b", "undo a", "undo a"]


def test_a_node_whose_router_failed_is_compensated(store):
    undone: list[str] = []

    def broken_router(state: S) -> str:
        raise RuntimeError("router bug")

    g = StateGraph(S)
    g.add_node("charge", appender("charge"), compensate=lambda s: undone.append("charge"))
    g.add_node("ship", appender("ship"))
    g.add_edge(START, "charge")
    g.add_conditional_edges("charge", broken_router, ["ship"])
    g.add_edge("ship", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(RuntimeError, match="router bug"):
        app.invoke({}, thread_id="t")
    app.rollback("t")
    assert undone == ["charge"]
    assert app.get_state("t").status == "compensated"


def test_rollback_after_a_resumed_run_failed_again_undoes_both_parts(store):
    undone: list[str] = []
    charge, _ = flaky(1, ValueError, name="charge", bump=False)
    g = chain(("reserve", appender("reserve")), ("charge", charge),
              ("ship", flaky(9, ValueError, name="ship")[0]),
              reserve={"compensate": lambda s: undone.append("reserve")},
              charge={"compensate": lambda s: undone.append("charge")})
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError, match="charge"):
        app.invoke({}, thread_id="t")
    with pytest.raises(ValueError, match="ship"):
        app.resume("t")
    g.compile(checkpointer=store.open()).rollback("t")
    assert undone == ["charge", "reserve"]


def test_a_waiting_run_can_be_rolled_back(store):
    undone: list[str] = []
    g = chain(("charge", appender("charge")),
              ("approve", lambda s: {"log": [wait_for("approval")]}),
              charge={"compensate": lambda s: undone.append("charge")})
    app = g.compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    assert app.get_state("t").status == "interrupted"
    app.rollback("t")
    assert undone == ["charge"]
    assert app.get_state("t").status == "compensated"


def test_on_failure_compensate_is_never_silently_ignored():
    # compiling without a checkpointer is allowed (the CLI binds one with --db), but a run
    # that could not be rolled back does not start: nothing runs, nothing is undone
    undone: list[str] = []
    calls: list[str] = []
    g = saga(undone, step_calls=calls)
    app = g.compile(on_failure="compensate")
    with pytest.raises(ThreadStateError, match=r"on_failure='compensate'.*checkpointer"):
        app.invoke({})
    assert calls == [] and undone == []


def test_a_compensation_that_is_not_callable_is_a_compile_problem():
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a")), a={"compensate": "refund"}).compile()
    assert info.value.codes == ["bad_signature"]


def test_on_failure_must_be_raise_or_compensate():
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a"))).compile(on_failure="retry")
    assert info.value.codes == ["invalid_option"]


# =============================================================================================
# Send fan-out and max_concurrency
# =============================================================================================


def fan_out(work, *, reduce: bool = True, **work_options: Any) -> StateGraph:
    """plan -> one `work` task per item of `state.items` (payload {"i": index, "x": item})."""
    g = StateGraph(S)
    g.add_node("plan", lambda s: {"log": ["plan"]})
    g.add_node("work", work, **work_options)
    g.add_edge(START, "plan")
    g.add_conditional_edges(
        "plan", lambda s: [Send("work", {"i": i, "x": x}) for i, x in enumerate(s.items)],
        ["work"])
    if reduce:
        g.add_node("reduce", lambda s: {"log": [f"reduce {len(s.results)}"]})
        g.add_edge("work", "reduce")
        g.add_edge("reduce", END)
    else:
        g.add_edge("work", END)
    return g


def test_each_send_task_gets_its_payload_as_input():
    seen: list[Any] = []

    def work(payload: Any) -> dict[str, Any]:
        seen.append(payload)
        return {"results": [payload["x"] * 10]}

    final = fan_out(work).compile().invoke({"items": [1, 2, 3]})
    assert sorted(seen, key=lambda p: p["i"]) == [
        {"i": 0, "x": 1}, {"i": 1, "x": 2}, {"i": 2, "x": 3}]
    assert final.results == [10, 20, 30]
    assert final.log == ["plan", "reduce 3"]  # the reducer after the fan-out runs once


class Item(BaseModel):
    x: int
    tags: tuple[str, ...] = ()


@pytest.mark.parametrize("durable", [False, True])
def test_a_payload_reaches_its_node_the_same_way_with_or_without_a_checkpointer(durable):
    typed: list[Any] = []
    untyped: list[Any] = []

    def work(item: Item) -> dict[str, Any]:
        typed.append(item)
        return {"results": [item.x]}

    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", work)
    g.add_node("raw", lambda p: untyped.append(p))
    g.add_edge(START, "plan")
    g.add_conditional_edges(
        "plan", lambda s: [Send("work", Item(x=1, tags=("a",))), Send("raw", Item(x=2))],
        ["work", "raw"])
    g.add_edge("work", END)
    g.add_edge("raw", END)
    if durable:
        final = g.compile(checkpointer=MemoryCheckpointer()).invoke({}, thread_id="t")
    else:
        final = g.compile().invoke({})
    assert final.results == [1]
    assert typed == [Item(x=1, tags=("a",))]  # validated into the declared type
    assert untyped == [{"x": 2, "tags": []}]  # its JSON form when no type is declared


def test_a_payload_that_does_not_fit_the_declared_type_fails_the_task():
    def work(item: Item) -> None:
        return None

    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", work)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"x": "not a number"})], ["work"])
    g.add_edge("work", END)
    with pytest.raises(InvalidUpdateError, match="'work'"):
        g.compile().invoke({})


@pytest.mark.parametrize("durable", [False, True])
def test_a_payload_that_cannot_be_stored_as_json_is_refused(durable):
    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", lambda p: None)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", object())], ["work"])
    g.add_edge("work", END)
    with pytest.raises(InvalidUpdateError, match=r"payload.*JSON"):
        if durable:
            g.compile(checkpointer=MemoryCheckpointer()).invoke({}, thread_id="t")
        else:
            g.compile().invoke({})


def test_a_send_to_a_node_outside_the_routers_targets_is_refused():
    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("work", lambda p: None)
    g.add_node("other", lambda p: None)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", 1), Send("other", 2)], ["work"])
    g.add_edge("work", END)
    g.add_edge("plan", "other")
    g.add_edge("other", END)
    with pytest.raises(InvalidRouteError, match="'other'"):
        g.compile().invoke({})


def test_sends_and_plain_routes_mix_and_merge_in_declaration_then_send_order():
    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("a", lambda s: {"log": ["a"]})
    g.add_node("work", lambda p: {"log": [f"work {p}"]})
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", 2), "a", Send("work", 1)],
                            ["a", "work"])
    g.add_edge("a", END)
    g.add_edge("work", END)
    assert g.compile().invoke({}).log == ["a", "work 2", "work 1"]


def test_an_empty_fan_out_ends_the_run():
    calls = []
    final = fan_out(lambda p: calls.append(p)).compile().invoke({"items": []})
    assert calls == [] and final.log == ["plan"]


@given(items=st.lists(st.integers(-1000, 1000), max_size=12),
       delays=st.lists(st.sampled_from([0, 0.001, 0.002, 0.004]), min_size=12, max_size=12),
       limit=st.sampled_from([None, 1, 2, 5]), durable=st.booleans())
def test_fan_out_merges_in_send_order_whatever_finishes_first(items, delays, limit, durable):
    running = 0
    peak = 0

    async def work(payload: dict[str, int]) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(delays[payload["i"]])
        running -= 1
        return {"results": [payload["x"]]}

    if durable:  # the tasks' writes are committed as they finish, then merged in Send order
        app = fan_out(work).compile(checkpointer=MemoryCheckpointer(), max_concurrency=limit)
        final = app.invoke({"items": items}, thread_id="t")
        assert app.get_state("t").state == final
    else:
        final = fan_out(work).compile(max_concurrency=limit).invoke({"items": items})
    assert final.results == items
    if limit is not None:
        assert peak <= limit


def test_max_concurrency_bounds_running_tasks_and_invoke_overrides_compile():
    running = 0
    peaks: list[int] = []

    async def work(payload: dict[str, int]) -> dict[str, Any]:
        nonlocal running
        running += 1
        peaks[-1] = max(peaks[-1], running)
        await asyncio.sleep(0.01)
        running -= 1
        return {"results": [payload["x"]]}

    g = fan_out(work)
    items = {"items": list(range(8))}
    for app, kwargs, expected in [
        (g.compile(), {}, 8),
        (g.compile(max_concurrency=3), {}, 3),
        (g.compile(max_concurrency=3), {"max_concurrency": 1}, 1),
        (g.compile(), {"max_concurrency": 2}, 2),
    ]:
        peaks.append(0)
        assert app.invoke(items, **kwargs).results == list(range(8))
        assert peaks[-1] == expected


def test_max_concurrency_bounds_sync_tasks_too():
    lock = threading.Lock()
    running = 0
    peak = 0

    def work(payload: dict[str, int]) -> dict[str, Any]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return {"results": [payload["x"]]}

    assert fan_out(work).compile(max_concurrency=2).invoke(
        {"items": list(range(6))}).results == list(range(6))
    assert peak == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_max_concurrency_must_be_a_positive_integer(limit):
    g = fan_out(lambda p: None)
    with pytest.raises(GraphValidationError) as info:
        g.compile(max_concurrency=limit)
    assert info.value.codes == ["invalid_option"]
    if isinstance(limit, int):
        with pytest.raises(ValueError):
            g.compile().invoke({"items": [1]}, max_concurrency=limit)


def test_resume_after_a_partial_fan_out_failure_runs_only_the_failed_task(store):
    calls: list[dict[str, int]] = []
    failed_once: set[int] = set()

    async def work(payload: dict[str, int]) -> dict[str, Any]:
        calls.append(payload)
        # the failing task finishes first, the others after it
        await asyncio.sleep(0 if payload["i"] == 2 else 0.02)
        if payload["i"] == 2 and 2 not in failed_once:
            failed_once.add(2)
            raise ConnectionError("worker 2 lost its connection")
        return {"results": [payload["x"] * 10]}

    g = fan_out(work)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ConnectionError, match="worker 2"):
        app.invoke({"items": [1, 2, 3, 4]}, thread_id="t")
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("work",)  # one task left to run
    assert snap.pending_writes["work"] == [{"results": [10]}, {"results": [20]},
                                           {"results": [40]}]
    calls.clear()
    final = g.compile(checkpointer=store.open()).resume("t")
    assert calls == [{"i": 2, "x": 3}]  # only the failed task, with its stored payload
    assert final.results == [10, 20, 30, 40]
    assert final.log == ["plan", "reduce 4"]


@given(items=st.lists(st.integers(0, 99), min_size=1, max_size=10), data=st.data())
def test_resume_reruns_exactly_the_failed_send_tasks(items, data):
    failing = data.draw(st.sets(st.integers(0, len(items) - 1)), label="failing")
    delays = data.draw(st.lists(st.sampled_from([0, 0.001, 0.003]), min_size=len(items),
                                max_size=len(items)), label="delays")
    calls: list[int] = []
    first_run = [True]

    async def work(payload: dict[str, int]) -> dict[str, Any]:
        calls.append(payload["i"])
        await asyncio.sleep(delays[payload["i"]])
        if first_run[0] and payload["i"] in failing:
            raise ConnectionError(f"task {payload['i']}")
        return {"results": [payload["x"]]}

    app = fan_out(work, reduce=False).compile(checkpointer=MemoryCheckpointer())
    if not failing:
        assert app.invoke({"items": items}, thread_id="t").results == items
        return
    with pytest.raises(ConnectionError):
        app.invoke({"items": items}, thread_id="t")
    assert sorted(calls) == list(range(len(items)))
    assert app.get_state("t").next == ("work",) * len(failing)
    first_run[0] = False
    calls.clear()
    assert app.resume("t").results == items
    assert sorted(calls) == sorted(failing)


def test_send_tasks_finished_before_a_crash_are_not_rerun(durable_store, tmp_path):
    """A process killed while one Send task is still running: the other tasks' writes were
    committed as they finished, so another process resumes only the unfinished task."""
    script = tmp_path / "fan.py"
    effects = tmp_path / "effects.txt"
    script.write_text(textwrap.dedent(f"""
        import asyncio, operator, os, sys
        from typing import Annotated
        from pydantic import BaseModel
        import checkpoints
        from statemachine import END, START, Send, StateGraph

        class S(BaseModel):
            results: Annotated[list[int], operator.add] = []

        async def work(payload):
            with open({str(effects)!r}, "a") as f:
                f.write(f"start {{payload}}\\n")
            if payload == 2 and sys.argv[1] == "crash":
                for _ in range(3000):  # until the other three have committed their writes
                    chain = await app.checkpointer.load("fan")
                    if sum(len(writes) for writes in chain.pending.values()) == 3:
                        break
                    await asyncio.sleep(0.01)
                os._exit(9)
            await asyncio.sleep(0.01 * (4 - payload))
            return {{"results": [payload * 10]}}

        g = StateGraph(S)
        g.add_node("plan", lambda s: None)
        g.add_node("work", work)
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", lambda s: [Send("work", i) for i in range(4)], ["work"])
        g.add_edge("work", END)
        app = g.compile(checkpointer=OPEN_STORE)
        if sys.argv[1] == "crash":
            app.invoke({{}}, thread_id="fan")
        else:
            print(app.resume("fan").results)
    """).replace("OPEN_STORE", durable_store.opener))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = durable_store.kind  # the script opens the store itself
    crashed = subprocess.run([sys.executable, str(script), "crash", db], env=env,
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 9, crashed.stderr
    assert sorted(effects.read_text().splitlines()) == [f"start {i}" for i in range(4)]
    resumed = subprocess.run([sys.executable, str(script), "resume", db], env=env,
                             capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "[0, 10, 20, 30]"
    assert effects.read_text().splitlines()[4:] == ["start 2"]


def test_send_task_ids_are_distinct_and_stable_across_resume(store):
    ids: dict[int, list[str]] = {}
    failed: set[int] = set()

    def work(payload: dict[str, int], context: RunContext) -> dict[str, Any]:
        ids.setdefault(payload["i"], []).append(context.task_id)
        if payload["i"] == 1 and not failed:
            failed.add(1)
            raise ConnectionError("once")
        return {"results": [payload["x"]]}

    g = fan_out(work, reduce=False)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ConnectionError):
        app.invoke({"items": [5, 6, 7]}, thread_id="t")
    g.compile(checkpointer=store.open()).resume("t")
    assert len(ids[1]) == 2 and ids[1][0] == ids[1][1]
    assert len({ids[0][0], ids[1][0], ids[2][0]}) == 3


def test_a_failing_send_task_with_retry_does_not_rerun_its_siblings():
    calls: list[int] = []

    def work(payload: dict[str, int]) -> dict[str, Any]:
        calls.append(payload["i"])
        if payload["i"] == 0 and calls.count(0) == 1:
            raise ConnectionError("once")
        return {"results": [payload["x"]]}

    [*_, last] = list(fan_out(work, reduce=False, retry=fast(max_attempts=2)).compile().stream(
        {"items": [7, 8, 9]}))
    assert sorted(calls) == [0, 0, 1, 2]
    assert last.state.results == [7, 8, 9]
    assert last.attempts == {"work": 2}


def test_a_fan_out_in_a_loop_gives_every_round_its_own_tasks(store):
    def plan(state: S) -> dict[str, Any]:
        return {"value": state.value + 1}

    def route(state: S) -> list[Any]:
        if state.value > 3:
            return [END]
        return [Send("work", state.value * 10 + i) for i in range(state.value)]

    g = StateGraph(S)
    g.add_node("plan", plan)
    g.add_node("work", lambda p: {"results": [p]})
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", route, ["work", END])
    g.add_edge("work", "plan")
    final = g.compile(checkpointer=store.open()).invoke({}, thread_id="t")
    assert final.results == [10, 20, 21, 30, 31, 32]


# =============================================================================================
# Partial models
# =============================================================================================


def test_a_node_may_return_a_model_instance_whose_set_fields_are_the_update(store):
    def set_value(state: S) -> S:
        return S(value=7)

    def append(state: S) -> S:
        return S(log=["appended"])

    def reset(state: S) -> S:
        return S(value=0)  # explicitly set to the default: still an update

    g = chain(("a", set_value), ("b", append), ("c", reset))
    events = list(g.compile(checkpointer=store.open()).stream(
        {"value": 1, "log": ["start"], "results": [5]}, thread_id="t"))
    assert [e.updates for e in events] == [
        {"a": {"value": 7}}, {"b": {"log": ["appended"]}}, {"c": {"value": 0}}]
    assert [e.state.value for e in events] == [7, 7, 0]
    final = g.compile(checkpointer=store.open()).get_state("t").state
    assert final == S(value=0, log=["start", "appended"], results=[5])


def test_parallel_partial_models_do_not_collide_on_fields_they_did_not_set():
    g = StateGraph(S)
    g.add_node("a", lambda s: S(value=1))
    g.add_node("b", lambda s: S(log=["b"]))
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    assert g.compile().invoke({}) == S(value=1, log=["b"])


def test_a_model_instance_in_a_command_update_and_a_send_task():
    def decide(state: S) -> Command:
        return Command(update=S(value=3), goto="b")

    g = StateGraph(S)
    g.add_node("a", decide, destinations=("b",))
    g.add_node("b", lambda s: S(log=[f"b saw {s.value}"]))
    g.add_edge(START, "a")
    g.add_edge("b", END)
    assert g.compile().invoke({}) == S(value=3, log=["b saw 3"])


# =============================================================================================
# Command
# =============================================================================================


def command_graph(decide, destinations=("b", "c"), **options: Any) -> StateGraph:
    g = StateGraph(S)
    g.add_node("a", decide, destinations=destinations, **options)
    g.add_node("b", appender("b"))
    g.add_node("c", appender("c"))
    g.add_edge(START, "a")
    g.add_edge("b", END)
    g.add_edge("c", END)
    return g


def test_command_updates_and_goes_to_one_node():
    app = command_graph(lambda s: Command(update={"value": 1, "log": ["a"]}, goto="c")).compile()
    events = list(app.stream({}))
    assert [e.nodes for e in events] == [("a",), ("c",)]
    assert events[0].updates == {"a": {"value": 1, "log": ["a"]}}
    assert events[-1].state == S(value=1, log=["a", "c"])


def test_command_goto_a_list_runs_them_in_one_step():
    app = command_graph(lambda s: Command(goto=["c", "b"])).compile()
    events = list(app.stream({}))
    assert [e.nodes for e in events] == [("a",), ("b", "c")]
    assert events[-1].state.log == ["b", "c"]  # declaration order, not goto order


def test_command_goto_send_and_end():
    def decide(state: S) -> Command:
        return Command(update={"log": ["a"]}, goto=[Send("b", Item(x=4)), Send("b", Item(x=5))])

    def b(item: Item) -> dict[str, Any]:
        return {"results": [item.x]}

    g = StateGraph(S)
    g.add_node("a", decide, destinations=("b",))
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge("b", END)
    assert g.compile().invoke({}).results == [4, 5]
    assert command_graph(lambda s: Command(goto=END)).compile().invoke({}).log == []


def test_a_send_to_a_node_annotated_with_the_state_model_gets_the_model():
    def b(state: S) -> dict[str, Any]:
        return {"results": [state.value]}

    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("b", b)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("b", S(value=4))], ["b"])
    g.add_edge("b", END)
    assert g.compile().invoke({}).results == [4]


def test_a_command_without_update_changes_nothing_but_the_route():
    assert command_graph(lambda s: Command(goto="b")).compile().invoke(
        {"value": 3}) == S(value=3, log=["b"])


def test_an_undeclared_goto_is_an_invalid_route(store):
    app = command_graph(lambda s: Command(goto="z")).compile(checkpointer=store.open())
    with pytest.raises(InvalidRouteError, match="'z'") as info:
        app.invoke({}, thread_id="t")
    assert info.value.node == "a" and info.value.returned == "z"
    assert set(info.value.allowed) == {"b", "c"}
    snap = app.get_state("t")
    assert snap.status == "failed" and snap.state.log == []
    with pytest.raises(InvalidRouteError):
        command_graph(lambda s: Command(goto=Send("z", 1))).compile().invoke({})


def test_destinations_naming_an_unknown_node_is_a_compile_problem():
    with pytest.raises(GraphValidationError) as info:
        command_graph(lambda s: None, destinations=("b", "c", "zz")).compile()
    assert info.value.codes == ["unknown_node"]


def test_destinations_count_as_edges_for_validation():
    g = StateGraph(S)
    g.add_node("a", lambda s: Command(goto="b"), destinations=("b",))
    g.add_node("b", appender("b"))
    g.add_edge(START, "a")
    g.add_edge("b", END)
    app = g.compile()  # `a` has no edge of its own, yet it is no dead end; `b` is reachable
    assert app.to_networkx().edges["a", "b"]["kind"] == "command"
    assert app.invoke({}).log == ["b"]


def test_a_command_goto_of_a_finished_task_survives_a_sibling_failure(store):
    calls: list[str] = []
    sibling, _ = flaky(1, ValueError, name="sibling")

    def decide(state: S) -> Command:
        calls.append("decide")
        return Command(update={"log": ["decide"]}, goto="c")

    g = StateGraph(S)
    g.add_node("decide", decide, destinations=("b", "c"))
    g.add_node("sibling", sibling)
    g.add_node("b", appender("b"))
    g.add_node("c", appender("c"))
    g.add_edge(START, "decide")
    g.add_edge(START, "sibling")
    g.add_edge("sibling", END)
    g.add_edge("b", END)
    g.add_edge("c", END)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    final = g.compile(checkpointer=store.open()).resume("t")
    assert calls == ["decide"]
    assert final.log == ["decide", "sibling", "c"]


# =============================================================================================
# wait_for
# =============================================================================================


def approval_graph(calls: list[str]) -> StateGraph:
    def approve(state: S) -> dict[str, Any]:
        calls.append("approve")
        decision = wait_for("approval")
        calls.append(f"got {decision}")
        return {"log": [f"approved {decision['ok']}"]}

    return chain(("prepare", appender("prepare")), ("approve", approve),
                 ("ship", appender("ship")))


def test_wait_for_pauses_durably_and_resume_delivers_the_event(store):
    calls: list[str] = []
    g = approval_graph(calls)
    app = g.compile(checkpointer=store.open())
    paused = app.invoke({}, thread_id="order")
    assert paused.log == ["prepare"]
    snap = app.get_state("order")
    assert snap.status == "interrupted"
    assert snap.next == ("approve",)
    assert snap.metadata["waits_for"] == ["approval"]

    restarted = g.compile(checkpointer=store.open())
    final = restarted.resume("order", event={"approval": {"ok": True, "by": "ann"}})
    assert calls == ["approve", "approve", "got {'ok': True, 'by': 'ann'}"]
    assert final.log == ["prepare", "approved True", "ship"]
    assert restarted.get_state("order").status == "done"


def test_several_waits_get_earlier_answers_in_order(store):
    calls: list[Any] = []

    def interview(state: S) -> dict[str, Any]:
        calls.append("start")
        name = wait_for("name")
        calls.append(("name", name))
        age = wait_for("age")
        calls.append(("age", age))
        return {"log": [f"{name} {age}"]}

    g = chain(("interview", interview))
    app = g.compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    assert app.get_state("t").metadata["waits_for"] == ["name"]
    g.compile(checkpointer=store.open()).resume("t", event={"name": "Ann"})
    assert app.get_state("t").metadata["waits_for"] == ["age"]
    final = g.compile(checkpointer=store.open()).resume("t", event={"age": 41})
    assert final.log == ["Ann 41"]
    assert calls == ["start", "start", ("name", "Ann"), "start", ("name", "Ann"), ("age", 41)]


def test_resume_must_deliver_the_awaited_event(store):
    calls: list[str] = []
    app = approval_graph(calls).compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    with pytest.raises(ThreadStateError, match="'approval'"):
        app.resume("t")
    with pytest.raises(ThreadStateError, match="'approval'"):
        app.resume("t", event={"approvla": 1})
    assert app.get_state("t").status == "interrupted"
    assert app.resume("t", event={"approval": {"ok": False}}).log[-2] == "approved False"
    assert calls == ["approve", "approve", "got {'ok': False}"]  # refused resumes ran nothing


def test_an_event_to_a_thread_that_is_not_waiting_is_refused(store):
    app = chain(("a", flaky(1, ValueError, name="a")[0])).compile(checkpointer=store.open())
    with pytest.raises(ValueError):
        app.invoke({}, thread_id="t")
    with pytest.raises(ThreadStateError, match="not waiting"):
        app.resume("t", event={"approval": True})
    assert app.resume("t").log == ["a"]


def test_wait_for_needs_a_checkpointer_and_a_running_node():
    with pytest.raises(ThreadStateError, match="checkpointer"):
        approval_graph([]).compile().invoke({})
    with pytest.raises(RuntimeError, match="inside a running node"):
        wait_for("approval")


def test_a_node_cannot_swallow_the_pause(store):
    swallowed = []

    def careless(state: S) -> dict[str, Any]:
        try:
            value = wait_for("go")
        except Exception:
            swallowed.append(True)
            value = "swallowed"
        return {"log": [str(value)]}

    app = chain(("c", careless)).compile(checkpointer=store.open())
    assert app.invoke({}, thread_id="t").log == []
    assert app.get_state("t").status == "interrupted"
    assert app.resume("t", event={"go": "went"}).log == ["went"]
    assert swallowed == []


def test_a_waiting_task_does_not_rerun_its_finished_siblings(store):
    calls: list[str] = []

    def ask(state: S) -> dict[str, Any]:
        calls.append("ask")
        return {"log": [f"answer {wait_for('answer')}"]}

    g = StateGraph(S)
    g.add_node("ask", ask)
    g.add_node("other", appender("other", calls))
    g.add_edge(START, "ask")
    g.add_edge(START, "other")
    g.add_edge("ask", END)
    g.add_edge("other", END)
    app = g.compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    snap = app.get_state("t")
    assert snap.pending_writes == {"other": {"log": ["other"]}}
    assert snap.next == ("ask",)
    final = g.compile(checkpointer=store.open()).resume("t", event={"answer": 42})
    assert sorted(calls) == ["ask", "ask", "other"]
    assert final.log == ["answer 42", "other"]


def test_a_delivered_event_is_kept_when_the_node_fails_after_it(store):
    runs: list[Any] = []

    def approve(state: S) -> dict[str, Any]:
        decision = wait_for("approval")
        runs.append(decision)
        if len(runs) == 1:
            raise ConnectionError("failed after the wait")
        return {"log": [f"approved {decision}"]}

    g = chain(("approve", approve))
    app = g.compile(checkpointer=store.open())
    app.invoke({}, thread_id="t")
    with pytest.raises(ConnectionError):
        app.resume("t", event={"approval": "yes"})
    assert app.get_state("t").status == "failed"
    final = g.compile(checkpointer=store.open()).resume("t")  # no event needed again
    assert runs == ["yes", "yes"]
    assert final.log == ["approved yes"]


def test_an_event_value_comes_back_as_json(store):
    app = chain(("w", lambda s: {"log": [repr(wait_for("e"))]})).compile(
        checkpointer=store.open())
    app.invoke({}, thread_id="t")
    assert app.resume("t", event={"e": {"n": 1, "tags": ("a", "b")}}).log == [
        "{'n': 1, 'tags': ['a', 'b']}"]


def test_every_waiting_send_task_receives_the_event(store):
    def work(payload: dict[str, int]) -> dict[str, Any]:
        factor = wait_for("factor")
        return {"results": [payload["x"] * factor]}

    g = fan_out(work, reduce=False)
    app = g.compile(checkpointer=store.open())
    app.invoke({"items": [1, 2, 3]}, thread_id="t")
    assert app.get_state("t").metadata["waits_for"] == ["factor"] * 3
    assert app.resume("t", event={"factor": 10}).results == [10, 20, 30]


def test_a_waiting_node_can_be_resumed_from_another_process(durable_store, tmp_path):
    script = tmp_path / "flow.py"
    script.write_text(textwrap.dedent("""
        import operator, sys
        from typing import Annotated
        from pydantic import BaseModel
        import checkpoints
        from statemachine import END, START, StateGraph, wait_for

        class S(BaseModel):
            log: Annotated[list[str], operator.add] = []

        def approve(state):
            decision = wait_for("approval")
            return {"log": ["approved by " + decision["by"]]}

        g = StateGraph(S)
        g.add_node("prepare", lambda s: {"log": ["prepare"]})
        g.add_node("approve", approve)
        g.add_edge(START, "prepare"); g.add_edge("prepare", "approve")
        g.add_edge("approve", END)
        app = g.compile(checkpointer=OPEN_STORE)
        if sys.argv[1] == "start":
            state = app.invoke({}, thread_id="order-7")
        else:
            state = app.resume("order-7", event={"approval": {"by": sys.argv[3]}})
        print(app.get_state("order-7").status, state.log)
    """).replace("OPEN_STORE", durable_store.opener))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = durable_store.kind  # the script opens the store itself
    started = subprocess.run([sys.executable, str(script), "start", db], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "interrupted ['prepare']"
    resumed = subprocess.run([sys.executable, str(script), "resume", db, "bob"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "done ['prepare', 'approved by bob']"


# =============================================================================================
# on_error="capture"
# =============================================================================================


def test_a_captured_failure_becomes_a_node_failure_and_the_run_goes_on():
    def boom(state: S) -> dict[str, Any]:
        raise ValueError("bad input")

    app = chain(("first", appender("first")), ("boom", boom), ("after", appender("after")),
                boom={"on_error": "capture"}).compile()
    final = app.invoke({})
    assert final.log == ["first", "after"]
    assert final.errors == [NodeFailure(node="boom", error_type="ValueError",
                                        message="bad input", step=1)]
    assert "boom" in str(final.errors[0]) and "bad input" in str(final.errors[0])


def test_captured_failures_of_parallel_tasks_are_kept_in_order_and_persisted(store):
    def fail(name):
        def node(state: S) -> dict[str, Any]:
            raise ConnectionError(f"{name} down")
        return node

    g = StateGraph(S)
    for name in ("x", "y", "z"):
        g.add_node(name, fail(name) if name != "y" else appender("y"), on_error="capture")
    g.add_node("collect", lambda s: {"log": [f"{len(s.errors)} failed"]})
    for name in ("x", "y", "z"):
        g.add_edge(START, name)
    g.add_edge(["x", "y", "z"], "collect")
    g.add_edge("collect", END)
    g.compile(checkpointer=store.open()).invoke({}, thread_id="t")
    state = g.compile(checkpointer=store.open()).get_state("t").state
    assert state.log == ["y", "2 failed"]
    assert [(e.node, e.message, e.thread_id) for e in state.errors] == [
        ("x", "x down", "t"), ("z", "z down", "t")]
    assert all(isinstance(e, NodeFailure) for e in state.errors)


def test_a_failure_is_captured_only_after_retries_are_exhausted():
    node, calls = flaky(5)
    final = chain(("fetch", node), fetch={"on_error": "capture",
                                          "retry": fast(max_attempts=3)}).compile().invoke({})
    assert len(calls) == 3
    assert [e.error_type for e in final.errors] == ["ConnectionError"]
    assert final.errors[0].message == "fetch call 3 failed"
    node, calls = flaky(2)
    final = chain(("fetch", node), fetch={"on_error": "capture",
                                          "retry": fast(max_attempts=3)}).compile().invoke({})
    assert final.errors == [] and final.log == ["fetch"]


def test_captured_send_failures_keep_send_order():
    def work(payload: dict[str, int]) -> dict[str, Any]:
        if payload["x"] < 0:
            raise ValueError(f"negative {payload['x']}")
        return {"results": [payload["x"]]}

    final = fan_out(work, on_error="capture").compile().invoke({"items": [1, -2, 3, -4]})
    assert final.results == [1, 3]
    assert [e.message for e in final.errors] == ["negative -2", "negative -4"]
    assert final.log == ["plan", "reduce 2"]


def test_a_captured_timeout_names_its_type():
    async def slow(state: S) -> None:
        await asyncio.sleep(10)

    final = chain(("slow", slow), slow={"timeout": 0.05, "on_error": "capture"}).compile(
    ).invoke({})
    assert [e.error_type for e in final.errors] == ["NodeTimeoutError"]


class Problems(BaseModel):
    log: Annotated[list[str], operator.add] = []
    problems: Annotated[list[NodeFailure], operator.add] = []
    errors: list[NodeFailure] = []  # no reducer
    note: str = ""


def test_error_field_chooses_the_field():
    g = StateGraph(Problems)
    g.add_node("a", lambda s: 1 / 0, on_error="capture", error_field="problems")
    g.add_edge(START, "a")
    g.add_edge("a", END)
    final = g.compile().invoke({})
    assert [e.error_type for e in final.problems] == ["ZeroDivisionError"]
    assert final.errors == []


@pytest.mark.parametrize("field", ["missing", "errors", "note"])
def test_an_error_field_that_is_missing_or_has_no_reducer_is_a_compile_problem(field):
    g = StateGraph(Problems)
    g.add_node("a", lambda s: None, on_error="capture", error_field=field)
    g.add_edge(START, "a")
    g.add_edge("a", END)
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    assert info.value.codes == ["invalid_error_field"]
    assert repr(field) in str(info.value)


def test_on_error_must_be_raise_or_capture():
    with pytest.raises(GraphValidationError) as info:
        chain(("a", appender("a")), a={"on_error": "ignore"}).compile()
    assert info.value.codes == ["invalid_option"]


# =============================================================================================
# Observability
# =============================================================================================


def test_listener_hooks_follow_the_run(store):
    rec = Recorder()
    g = chain(("a", appender("a")), ("b", appender("b")))
    app = g.compile(checkpointer=store.open())
    app.add_listener(rec)
    app.invoke({}, thread_id="t")
    assert [name for name, _ in rec.calls] == [
        "step_start", "node_start", "node_end", "step_end",
        "step_start", "node_start", "node_end", "step_end"]
    assert rec.of("step_start") == [("t", 0, ("a",)), ("t", 1, ("b",))]
    assert rec.of("node_end")[1][:4] == ("t", 1, "b", {"log": ["b"]})
    assert rec.of("step_end") == [("t", 0, ("a",)), ("t", 1, ("b",))]


def test_retry_and_error_hooks_report_attempts():
    rec = Recorder()
    node, _ = flaky(5)
    app = chain(("fetch", node), fetch={"retry": fast(max_attempts=3)}).compile()
    app.add_listener(rec)
    with pytest.raises(ConnectionError):
        app.invoke({})
    assert [(r[2], r[3], str(r[4])) for r in rec.of("node_retry")] == [
        ("fetch", 1, "fetch call 1 failed"), ("fetch", 2, "fetch call 2 failed")]
    [error] = rec.of("node_error")
    assert error[2] == "fetch" and error[4] == 3 and str(error[3]) == "fetch call 3 failed"
    assert rec.of("node_end") == [] and rec.of("step_end") == []


def test_node_end_metadata_tells_attempts_and_cache_hits():
    rec = Recorder()
    node, _ = flaky(1)
    g = chain(("fetch", node), ("cached", cached_node([])),
              fetch={"retry": fast(max_attempts=2)}, cached={"cache": CachePolicy()})
    app = g.compile()
    app.add_listener(rec)
    app.invoke({})  # fetch fails once; cached misses
    app.invoke({})  # fetch runs once; cached hits
    metas = [(n, meta) for (_, _, n, _, meta) in rec.of("node_end")]
    assert metas == [("fetch", {"attempts": 2}), ("cached", {}),
                     ("fetch", {}), ("cached", {"cache_hit": True})]


async def test_async_listeners_are_awaited():
    calls: list[str] = []

    class AsyncListener:
        async def on_node_start(self, thread_id, step, node):
            await asyncio.sleep(0)
            calls.append(f"start {node}")

        async def on_step_end(self, event):
            calls.append(f"end {event.step}")

    app = chain(("a", appender("a"))).compile()
    app.add_listener(AsyncListener())
    await app.ainvoke({})
    app.invoke({})  # and from the sync API
    assert calls == ["start a", "end 0", "start a", "end 0"]


def test_a_raising_listener_is_logged_and_the_run_goes_on(caplog):
    class Broken:
        def on_node_start(self, thread_id, step, node):
            raise RuntimeError("listener bug")

        async def on_step_end(self, event):
            raise RuntimeError("async listener bug")

    rec = Recorder()
    app = chain(("a", appender("a"))).compile()
    app.add_listener(Broken())
    app.add_listener(rec)
    with caplog.at_level(logging.ERROR, logger="statemachine"):
        assert app.invoke({}).log == ["a"]
    failures = [r for r in caplog.records if r.name == "statemachine" and "listener" in
                r.getMessage()]
    assert len(failures) == 2
    assert {r.exc_info[1].args[0] for r in failures} == {"listener bug", "async listener bug"}
    assert [n for n, _ in rec.calls] == ["step_start", "node_start", "node_end", "step_end"]


def test_remove_listener_stops_the_calls():
    rec = Recorder()
    app = chain(("a", appender("a"))).compile()
    app.add_listener(rec)
    app.invoke({})
    app.remove_listener(rec)
    app.invoke({})
    assert len(rec.of("step_end")) == 1


def test_hooks_fire_for_each_send_task():
    rec = Recorder()
    app = fan_out(lambda p: {"results": [p["x"]]}, reduce=False).compile()
    app.add_listener(rec)
    app.invoke({"items": [1, 2, 3]})
    assert [n for (_, step, n) in rec.of("node_start") if step == 1] == ["work"] * 3
    assert sorted(u["results"][0] for (_, step, n, u, _) in rec.of("node_end")
                  if step == 1) == [1, 2, 3]


def test_step_timings_measure_each_node():
    async def slow(state: S) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"log": ["slow"]}

    g = StateGraph(S)
    g.add_node("slow", slow)
    g.add_node("quick", appender("quick"))
    g.add_edge(START, "slow")
    g.add_edge(START, "quick")
    g.add_edge("slow", END)
    g.add_edge("quick", END)
    [event] = list(g.compile().stream({}))
    assert set(event.timings) == {"slow", "quick"}
    assert event.timings["slow"] >= 0.04
    assert event.timings["quick"] < event.timings["slow"]


def test_the_statemachine_logger_reports_starts_ends_retries_and_failures(caplog):
    node, _ = flaky(1)
    bad, _ = flaky(9, ValueError, name="bad")
    app = chain(("fetch", node), ("bad", bad), fetch={"retry": fast(max_attempts=2)}).compile(
        checkpointer=MemoryCheckpointer())
    with caplog.at_level(logging.DEBUG, logger="statemachine"), pytest.raises(ValueError):
        app.invoke({}, thread_id="log-thread")
    records = [r for r in caplog.records if r.name == "statemachine"]
    by_level = {level: [r for r in records if r.levelno == level]
                for level in (logging.DEBUG, logging.INFO, logging.WARNING)}
    assert any("'fetch'" in r.getMessage() and "started" in r.getMessage()
               for r in by_level[logging.DEBUG])
    assert any("'fetch'" in r.getMessage() and "finished" in r.getMessage()
               for r in by_level[logging.DEBUG])
    [retry] = by_level[logging.WARNING]
    assert "'fetch'" in retry.getMessage() and "retrying" in retry.getMessage()
    [failure] = by_level[logging.INFO]
    assert "'bad'" in failure.getMessage() and "ValueError" in failure.getMessage()
    assert {(r.thread_id, r.node) for r in records} == {
        ("log-thread", "fetch"), ("log-thread", "bad")}
