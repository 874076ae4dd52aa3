"""Durable runs: failure and resume, interrupts, edits, forks, leases — on both checkpointers.

Every test takes the `saver` fixture, so it runs once against `MemoryCheckpointer` and once
against a `SQLiteCheckpointer` on a real file: the two must behave the same. Nodes count their
own executions, so "never re-run" and "re-run" are asserted, not assumed.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import threading
import time
from collections import Counter
from typing import Annotated, Any

import pytest
from conftest import STORES, make_checkpointer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import (
    END,
    START,
    CheckpointError,
    InvalidUpdateError,
    StateGraph,
    StepLimitError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
    reducers,
)


@pytest.fixture(params=STORES)
def saver(request, tmp_path):
    with make_checkpointer(request.param, tmp_path, request) as checkpointer:
        yield checkpointer


class Boom(Exception):
    """The failure the tests inject into nodes and routers."""


class Count(BaseModel):
    count: int = 0
    log: Annotated[list[str], reducers.append] = []


class Tally(BaseModel):
    count: Annotated[int, operator.add] = 0
    log: Annotated[list[str], reducers.append] = []


class Calls:
    """Thread-safe tally of node (and router) executions."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            self.order.append(name)

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.order)


def loop_graph(calls: Calls, limit: int = 3) -> StateGraph:
    """work runs until count reaches `limit`: one step per iteration."""

    def work(state: Count) -> dict:
        calls.add("work")
        return {"count": state.count + 1, "log": [f"work{state.count}"]}

    def route(state: Count) -> str:
        return "again" if state.count < limit else "done"

    g = StateGraph(Count)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route, {"again": "work", "done": END})
    return g


def pipeline(calls: Calls, fail: dict[str, int] | None = None,
             router_failures: list[int] | None = None) -> StateGraph:
    """work -> review -> publish. `fail[node]` makes that node raise that many times; a
    router after work raises `router_failures[0]` times."""
    fail = fail if fail is not None else {}

    def make(name: str, bump: int):
        def node(state: Count) -> dict:
            calls.add(name)
            if fail.get(name, 0) > 0:
                fail[name] -= 1
                raise Boom(f"{name} failed")
            return {"count": state.count + bump, "log": [name]}
        return node

    g = StateGraph(Count)
    g.add_node("work", make("work", 1))
    g.add_node("review", make("review", 10))
    g.add_node("publish", make("publish", 100))
    g.add_edge(START, "work")
    if router_failures is None:
        g.add_edge("work", "review")
    else:
        def route(state: Count) -> str:
            calls.add("route")
            if router_failures[0] > 0:
                router_failures[0] -= 1
                raise Boom("router failed")
            return "review"
        g.add_conditional_edges("work", route, ["review", END])
    g.add_edge("review", "publish")
    g.add_edge("publish", END)
    return g


def fan_out(calls: Calls, fail: dict[str, int] | None = None,
            delays: dict[str, float] | None = None) -> StateGraph:
    """START -> a, b, c in parallel -> d once all three ran (a join)."""
    fail = fail if fail is not None else {}
    delays = delays or {}

    def make(name: str):
        def node(state: Tally) -> dict:
            calls.add(name)
            time.sleep(delays.get(name, 0))
            if fail.get(name, 0) > 0:
                fail[name] -= 1
                raise Boom(f"{name} failed")
            return {"count": 1, "log": [f"{name}:{len(state.log)}"]}
        return node

    g = StateGraph(Tally)
    for name in "abcd":
        g.add_node(name, make(name))
    for name in "abc":
        g.add_edge(START, name)
    g.add_edge(["a", "b", "c"], "d")
    g.add_edge("d", END)
    return g


# -- completed runs, reading ---------------------------------------------------------------------

def test_completed_run_is_done_with_a_linked_history(saver):
    app = loop_graph(Calls()).compile(checkpointer=saver)
    final = app.invoke({"count": 0}, thread_id="order-42")
    assert final == Count(count=3, log=["work0", "work1", "work2"])
    snap = app.get_state("order-42")
    assert (snap.status, snap.next, snap.step, snap.error, snap.pending_writes) == \
        ("done", (), 3, None, {})
    assert snap.state == final
    history = app.history("order-42")
    assert [h.step for h in history] == [3, 2, 1, 0]  # newest first
    assert history[0].checkpoint_id == snap.checkpoint_id
    assert history[-1].kind == "input" and history[-1].parent_id is None
    assert history[-1].state == Count(count=0)
    for newer, older in itertools.pairwise(history):
        assert newer.parent_id == older.checkpoint_id
    for h in history:
        assert app.get_state("order-42", h.checkpoint_id).state == h.state
    assert [h.state.count for h in app.history("order-42", limit=2)] == [3, 2]


def test_thread_id_is_required_with_a_checkpointer(saver):
    app = loop_graph(Calls()).compile(checkpointer=saver)
    with pytest.raises(ThreadStateError, match="thread_id"):
        app.invoke({"count": 0})


def test_unknown_thread_or_checkpoint_is_not_found(saver):
    app = loop_graph(Calls()).compile(checkpointer=saver)
    with pytest.raises(ThreadNotFoundError):
        app.get_state("nobody")
    with pytest.raises(ThreadNotFoundError):
        app.resume("nobody")
    with pytest.raises(ThreadNotFoundError):
        app.history("nobody")
    app.invoke({"count": 0}, thread_id="one")
    app.invoke({"count": 0}, thread_id="two")
    with pytest.raises(ThreadNotFoundError):
        app.get_state("one", "999999")
    # a checkpoint of another thread is not a checkpoint of this one
    with pytest.raises(ThreadNotFoundError):
        app.get_state("one", app.get_state("two").checkpoint_id)
    with pytest.raises(ThreadNotFoundError):
        app.invoke(None, thread_id="one", checkpoint_id=app.get_state("two").checkpoint_id)


def test_resume_of_a_done_thread_runs_nothing(saver):
    calls = Calls()
    app = loop_graph(calls).compile(checkpointer=saver)
    final = app.invoke({"count": 0}, thread_id="t")
    head = app.get_state("t").checkpoint_id
    assert app.resume("t") == final
    assert calls.counts["work"] == 3
    assert app.get_state("t").checkpoint_id == head


def test_new_input_on_a_done_thread_starts_a_new_run_from_its_last_state(saver):
    calls = Calls()
    app = loop_graph(calls).compile(checkpointer=saver)
    app.invoke({"count": 0}, thread_id="t")
    done_id = app.get_state("t").checkpoint_id
    final = app.invoke({"count": 1, "log": ["again"]}, thread_id="t")
    # the input is an update: count replaced, log appended through its reducer
    assert final == Count(count=3, log=["work0", "work1", "work2", "again", "work1", "work2"])
    assert calls.counts["work"] == 5
    restart = [h for h in app.history("t") if h.kind == "input" and h.parent_id == done_id]
    assert len(restart) == 1
    assert app.get_state("t").status == "done"


def test_new_input_on_a_failed_thread_is_refused_with_the_way_out(saver):
    app = pipeline(Calls(), fail={"review": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="t")
    head = app.get_state("t")
    with pytest.raises(ThreadStateError) as info:
        app.invoke({"count": 5}, thread_id="t")
    message = str(info.value)
    assert "resume" in message and "checkpoint_id" in message
    after = app.get_state("t")
    assert (after.checkpoint_id, after.status, after.state) == \
        (head.checkpoint_id, "failed", head.state)


def test_the_fork_the_refusal_suggests_starts_a_new_branch(saver):
    calls = Calls()
    fail = {"review": 1}
    app = pipeline(calls, fail=fail).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="t")
    failed = app.get_state("t")
    start = app.history("t")[-1]
    final = app.invoke({"count": 1000}, thread_id="t", checkpoint_id=start.checkpoint_id)
    assert final == Count(count=1111, log=["work", "review", "publish"])
    assert app.get_state("t").status == "done"
    kept = app.get_state("t", failed.checkpoint_id)
    assert (kept.status, kept.next, kept.state) == ("failed", ("review",), failed.state)


def test_new_input_on_an_interrupted_thread_is_refused(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_before=["review"])
    app.invoke({"count": 0}, thread_id="t")
    with pytest.raises(ThreadStateError, match="resume"):
        app.invoke({"count": 5}, thread_id="t")
    assert app.get_state("t").status == "interrupted"
    assert app.resume("t").count == 111
    assert calls.counts == {"work": 1, "review": 1, "publish": 1}


# -- failures and resume ---------------------------------------------------------------------------

def test_resume_reruns_only_the_failed_node(saver):
    calls = Calls()
    app = pipeline(calls, fail={"review": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom, match="review failed"):
        app.invoke({"count": 0}, thread_id="t")
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("review",)
    assert snap.step == 1
    assert "Boom" in snap.error and "review failed" in snap.error
    assert snap.state == Count(count=1, log=["work"])
    final = app.resume("t")
    assert final == Count(count=111, log=["work", "review", "publish"])
    assert calls.order == ["work", "review", "review", "publish"]
    assert app.get_state("t").status == "done"


async def test_async_resume_continues_a_failed_run(saver):
    calls = Calls()
    app = pipeline(calls, fail={"publish": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        await app.ainvoke({"count": 0}, thread_id="t")
    assert (await app.aget_state("t")).next == ("publish",)
    final = await app.aresume("t")
    assert final.count == 111
    assert calls.counts == {"work": 1, "review": 1, "publish": 2}
    assert (await app.ahistory("t"))[0].status == "done"


def test_resume_is_the_same_as_invoke_none(saver):
    calls = Calls()
    app = pipeline(calls, fail={"review": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="t")
    assert app.invoke(None, thread_id="t").count == 111
    assert calls.counts == {"work": 1, "review": 2, "publish": 1}


def test_failed_parallel_step_keeps_finished_siblings_as_pending_writes(saver):
    calls = Calls()
    app = fan_out(calls, fail={"b": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom, match="b failed"):
        app.invoke({"count": 0}, thread_id="t")
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("b",)  # only what is still to run
    assert snap.pending_writes == {"a": {"count": 1, "log": ["a:0"]},
                                   "c": {"count": 1, "log": ["c:0"]}}
    assert snap.state == Tally()  # pending writes are not part of the state yet
    final = app.resume("t")
    assert calls.counts == {"a": 1, "b": 2, "c": 1, "d": 1}

    reference = fan_out(Calls()).compile(checkpointer=saver).invoke({"count": 0},
                                                                    thread_id="reference")
    assert final == reference
    assert final.log == ["a:0", "b:0", "c:0", "d:3"]


async def test_siblings_still_running_when_one_fails_run_to_completion(saver):
    finished: list[str] = []

    async def fails(state: Count) -> dict:
        raise Boom("fails at once")

    async def slow_async(state: Count) -> dict:
        await asyncio.sleep(0.3)
        finished.append("slow_async")
        return {"log": ["slow_async"]}

    def slow_sync(state: Count) -> dict:
        time.sleep(0.3)
        finished.append("slow_sync")
        return {"log": ["slow_sync"]}

    g = StateGraph(Count)
    g.add_node("fails", fails)
    g.add_node("slow_async", slow_async)
    g.add_node("slow_sync", slow_sync)
    for name in ("fails", "slow_async", "slow_sync"):
        g.add_edge(START, name)
        g.add_edge(name, END)
    app = g.compile(checkpointer=saver)
    with pytest.raises(Boom):
        await app.ainvoke({}, thread_id="t")
    assert sorted(finished) == ["slow_async", "slow_sync"]
    snap = await app.aget_state("t")
    assert snap.next == ("fails",)
    assert snap.pending_writes == {"slow_async": {"log": ["slow_async"]},
                                   "slow_sync": {"log": ["slow_sync"]}}


@pytest.mark.parametrize("delays", [{"a": 0.15, "b": 0.05}, {"b": 0.15, "c": 0.05},
                                    {"c": 0.15, "a": 0.05}])
def test_parallel_writes_merge_in_declaration_order_not_completion_order(saver, delays):
    app = fan_out(Calls(), delays=delays).compile(checkpointer=saver)
    final = app.invoke({"count": 0}, thread_id="t")
    assert final.log == ["a:0", "b:0", "c:0", "d:3"]
    assert [h.state.log for h in app.history("t")][1] == ["a:0", "b:0", "c:0"]


def test_router_that_raises_leaves_its_node_update_pending(saver):
    calls = Calls()
    app = pipeline(calls, router_failures=[1]).compile(checkpointer=saver)
    with pytest.raises(Boom, match="router failed"):
        app.invoke({"count": 0}, thread_id="t")
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.pending_writes == {"work": {"count": 1, "log": ["work"]}}
    assert snap.state == Count()  # the step was not committed
    assert "work" not in snap.next
    final = app.resume("t")
    assert final == Count(count=111, log=["work", "review", "publish"])
    # the node ran once; the router was evaluated again
    assert calls.order == ["work", "route", "route", "review", "publish"]


async def test_cancelled_run_releases_its_thread_and_runs_the_task_in_flight_again(saver):
    calls = Calls()

    async def step(state: Count) -> dict:
        calls.add(f"step{state.count}")
        if state.count == 1 and calls.counts["step1"] == 1:
            await asyncio.sleep(10)
        return {"count": state.count + 1}

    g = StateGraph(Count)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "again" if s.count < 3 else "done",
                            {"again": "step", "done": END})
    app = g.compile(checkpointer=saver)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(app.ainvoke({"count": 0}, thread_id="t"), 0.5)
    snap = await app.aget_state("t")
    assert (snap.step, snap.next, snap.state.count) == (1, ("step",), 1)
    assert not any(t.busy for t in await app.athreads())
    assert (await app.aresume("t")).count == 3
    assert calls.order == ["step0", "step1", "step1", "step2"]


def test_task_id_is_the_same_when_a_failed_task_runs_again(saver):
    seen: list[tuple[str, int, str]] = []
    attempts = {"n": 0}

    def flaky(state: Count, context) -> dict:
        seen.append((context.node, context.step, context.task_id))
        attempts["n"] += 1
        if attempts["n"] == 2:
            raise Boom("second task fails once")
        return {"count": state.count + 1}

    g = StateGraph(Count)
    g.add_node("flaky", flaky)
    g.add_edge(START, "flaky")
    g.add_conditional_edges("flaky", lambda s: "again" if s.count < 2 else "done",
                            {"again": "flaky", "done": END})
    app = g.compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({}, thread_id="t")
    app.resume("t")
    assert [(node, step) for node, step, _ in seen] == [("flaky", 0), ("flaky", 1),
                                                        ("flaky", 1)]
    assert seen[1][2] == seen[2][2]  # the retry of the same task: same idempotency key
    assert seen[0][2] != seen[1][2]  # another step: another task


def test_task_id_is_the_same_when_a_task_runs_again_after_update_state(saver):
    seen: list[str] = []

    def charge(state: Count, context) -> dict:
        seen.append(context.task_id)  # the side effect happened, then the node fails
        if state.count == 0:
            raise Boom("card declined")
        return {"log": ["charged"]}

    g = StateGraph(Count)
    g.add_node("charge", charge)
    g.add_edge(START, "charge")
    g.add_edge("charge", END)
    app = g.compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({}, thread_id="t")
    app.update_state("t", {"count": 1})
    app.resume("t")
    assert len(seen) == 2
    assert seen[0] == seen[1]


def test_max_steps_counts_the_steps_of_one_call(saver):
    calls = Calls()
    app = loop_graph(calls, limit=5).compile(checkpointer=saver)
    with pytest.raises(StepLimitError):
        app.invoke({"count": 0}, thread_id="t", max_steps=3)
    snap = app.get_state("t")
    assert (snap.status, snap.next, snap.state.count) == ("failed", ("work",), 3)
    # two more steps finish the loop: a limit of 2 for this call is enough
    assert app.resume("t", max_steps=2).count == 5
    assert calls.counts["work"] == 5


def test_unserializable_value_fails_its_step_naming_node_and_field(saver):
    class Blob(BaseModel):
        count: int = 0
        payload: Any = None

    def make_blob(state: Blob) -> dict:
        return {"count": 1, "payload": object()}

    g = StateGraph(Blob)
    g.add_node("make_blob", make_blob)
    g.add_edge(START, "make_blob")
    g.add_edge("make_blob", END)
    app = g.compile(checkpointer=saver)
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="t")
    assert (info.value.node, info.value.field) == ("make_blob", "payload")
    assert "make_blob" in str(info.value) and "payload" in str(info.value)
    history = app.history("t")
    assert [h.kind for h in history] == ["input"]  # nothing of the step was committed
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("make_blob",)
    assert snap.state == Blob()
    assert snap.pending_writes == {}


def test_unserializable_value_in_a_parallel_step_keeps_the_sibling(saver):
    class Blob(BaseModel):
        log: Annotated[list[str], reducers.append] = []
        payload: Any = None

    def good(state: Blob) -> dict:
        time.sleep(0.05)
        return {"log": ["good"]}

    def bad(state: Blob) -> dict:
        return {"payload": {1, 2, object()}}

    g = StateGraph(Blob)
    g.add_node("good", good)
    g.add_node("bad", bad)
    for name in ("good", "bad"):
        g.add_edge(START, name)
        g.add_edge(name, END)
    app = g.compile(checkpointer=saver)
    with pytest.raises(InvalidUpdateError, match="payload"):
        app.invoke({}, thread_id="t")
    snap = app.get_state("t")
    assert snap.status == "failed"
    assert snap.next == ("bad",)
    assert snap.pending_writes == {"good": {"log": ["good"]}}


def test_stored_checkpoint_that_no_longer_fits_the_schema_is_a_checkpoint_error(saver):
    class Before(BaseModel):
        ref: str = ""

    class After(BaseModel):
        ref: int = 0

    def keep(state):
        return None

    def graph(schema):
        g = StateGraph(schema)
        g.add_node("keep", keep)
        g.add_edge(START, "keep")
        g.add_edge("keep", END)
        return g.compile(checkpointer=saver)

    graph(Before).invoke({"ref": "ORD-42"}, thread_id="old-thread")
    head = graph(Before).get_state("old-thread").checkpoint_id
    changed = graph(After)
    for read in (lambda: changed.get_state("old-thread"), lambda: changed.resume("old-thread"),
                 lambda: changed.history("old-thread")):
        with pytest.raises(CheckpointError) as info:
            read()
        message = str(info.value)
        assert "old-thread" in message and "ref" in message
    with pytest.raises(CheckpointError, match=f"checkpoint {head} "):
        changed.get_state("old-thread")


# -- interrupts ------------------------------------------------------------------------------

def test_resume_after_interrupt_before_runs_the_paused_node_without_pausing_again(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_before=["review"])
    paused = app.invoke({"count": 0}, thread_id="t")
    assert paused == Count(count=1, log=["work"])
    snap = app.get_state("t")
    assert (snap.status, snap.next) == ("interrupted", ("review",))
    assert calls.order == ["work"]
    assert app.resume("t") == Count(count=111, log=["work", "review", "publish"])
    assert calls.order == ["work", "review", "publish"]
    assert app.get_state("t").status == "done"


def test_node_failing_after_an_interrupt_before_resumes_without_pausing(saver):
    calls = Calls()
    app = pipeline(calls, fail={"review": 1}).compile(checkpointer=saver,
                                                      interrupt_before=["review"])
    app.invoke({"count": 0}, thread_id="t")
    with pytest.raises(Boom):
        app.resume("t")
    assert app.get_state("t").status == "failed"
    assert app.resume("t").count == 111
    assert app.get_state("t").status == "done"
    assert calls.counts == {"work": 1, "review": 2, "publish": 1}


def test_interrupt_after_pauses_once_the_node_committed(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_after=["review"])
    assert app.invoke({"count": 0}, thread_id="t").count == 11
    snap = app.get_state("t")
    assert (snap.status, snap.next) == ("interrupted", ("publish",))
    assert app.resume("t").count == 111
    assert calls.counts == {"work": 1, "review": 1, "publish": 1}


def test_interrupt_star_pauses_before_every_node(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_before="*")
    app.invoke({"count": 0}, thread_id="t")
    nexts = [app.get_state("t").next]
    while app.get_state("t").status == "interrupted":
        app.resume("t")
        nexts.append(app.get_state("t").next)
    assert nexts == [("work",), ("review",), ("publish",), ()]
    assert calls.order == ["work", "review", "publish"]


# -- update_state and forks ------------------------------------------------------------------

def test_update_state_on_an_interrupted_thread_keeps_it_interrupted(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_before=["review"])
    app.invoke({"count": 0}, thread_id="t")
    paused = app.get_state("t")
    snap = app.update_state("t", {"count": 40, "log": ["edited"]})
    assert snap.status == "interrupted"
    assert snap.next == ("review",)
    assert snap.parent_id == paused.checkpoint_id
    assert snap.state == Count(count=40, log=["work", "edited"])
    assert app.get_state("t") == snap
    final = app.resume("t")
    assert final == Count(count=150, log=["work", "edited", "review", "publish"])
    assert calls.order == ["work", "review", "publish"]


def test_update_state_as_the_paused_node_skips_it(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver, interrupt_before=["review"])
    app.invoke({"count": 0}, thread_id="t")
    snap = app.update_state("t", {"log": ["approved by hand"]}, as_node="review")
    assert snap.next == ("publish",)
    assert snap.status == "interrupted"
    final = app.resume("t")
    assert final == Count(count=101, log=["work", "approved by hand", "publish"])
    assert "review" not in calls.order


def test_update_state_as_node_follows_that_nodes_edges(saver):
    calls = Calls()
    app = pipeline(calls).compile(checkpointer=saver)
    app.invoke({"count": 0}, thread_id="t")
    snap = app.update_state("t", {"count": 7}, as_node="work")
    assert snap.next == ("review",)
    assert app.resume("t").count == 117
    with pytest.raises(ThreadStateError, match="no such node"):
        app.update_state("t", {"count": 1}, as_node="reveiw")


def test_update_state_fixes_a_failed_thread_then_resume(saver):
    calls = Calls()

    def charge(state: Count) -> dict:
        calls.add("charge")
        if state.count < 0:
            raise Boom("negative amount")
        return {"log": [f"charged {state.count}"]}

    g = StateGraph(Count)
    g.add_node("charge", charge)
    g.add_edge(START, "charge")
    g.add_edge("charge", END)
    app = g.compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": -5}, thread_id="t")
    snap = app.update_state("t", {"count": 5})
    assert (snap.status, snap.next, snap.state.count) == ("failed", ("charge",), 5)
    assert app.resume("t") == Count(count=5, log=["charged 5"])
    assert calls.counts["charge"] == 2


def test_update_state_on_a_failed_parallel_step_keeps_the_siblings_writes(saver):
    calls = Calls()
    app = fan_out(calls, fail={"b": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="t")
    snap = app.update_state("t", {"count": 100})
    assert snap.next == ("b",)
    assert set(snap.pending_writes) == {"a", "c"}
    final = app.resume("t")
    assert calls.counts == {"a": 1, "b": 2, "c": 1, "d": 1}
    # b saw the edited state; the pending a and c applied on top of the edit
    assert final.count == 104
    assert final.log == ["a:0", "b:0", "c:0", "d:3"]


def test_update_state_as_the_failed_node_keeps_the_siblings_writes(saver):
    calls = Calls()
    app = fan_out(calls, fail={"b": 5}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="t")
    app.update_state("t", {"log": ["b by hand"]}, as_node="b")
    final = app.resume("t")
    assert calls.counts == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert final.log[:3] == ["a:0", "b by hand", "c:0"]
    assert final.log[3].startswith("d:")


def test_update_state_with_checkpoint_id_forks_from_that_checkpoint(saver):
    app = loop_graph(Calls(), limit=4).compile(checkpointer=saver)
    app.invoke({"count": 0}, thread_id="t")
    old = next(h for h in app.history("t") if h.step == 2)
    snap = app.update_state("t", {"log": ["fork"]}, checkpoint_id=old.checkpoint_id)
    assert snap.parent_id == old.checkpoint_id
    assert snap.state == Count(count=2, log=["work0", "work1", "fork"])
    assert snap.next == ("work",)
    assert app.get_state("t").checkpoint_id == snap.checkpoint_id
    final = app.resume("t")
    assert final == Count(count=4, log=["work0", "work1", "fork", "work2", "work3"])


def test_invoke_with_checkpoint_id_forks_and_history_keeps_both_branches(saver):
    calls = Calls()
    app = loop_graph(calls, limit=4).compile(checkpointer=saver)
    first = app.invoke({"count": 0}, thread_id="t")
    old_head = app.get_state("t")
    fork_point = next(h for h in app.history("t") if h.step == 2)
    again = app.invoke(None, thread_id="t", checkpoint_id=fork_point.checkpoint_id)
    assert again == first
    assert calls.counts["work"] == 6  # 4 + the two steps after the fork point
    history = app.history("t")
    ids = {h.checkpoint_id for h in history}
    assert old_head.checkpoint_id in ids  # the old branch is kept
    assert app.get_state("t").checkpoint_id != old_head.checkpoint_id
    assert app.get_state("t", old_head.checkpoint_id).state == first
    forks = [h for h in history if h.kind == "fork"]
    assert [h.parent_id for h in forks] == [fork_point.checkpoint_id]
    assert len([h for h in history if h.parent_id == fork_point.checkpoint_id]) == 2
    for h in history:
        assert app.get_state("t", h.checkpoint_id).state == h.state


# -- one writer per thread -----------------------------------------------------------------------

async def test_second_run_on_a_running_thread_is_busy(saver):
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(state: Count, context) -> dict:
        if context.thread_id == "t":
            started.set()
            await release.wait()
        return {"count": state.count + 1}

    g = StateGraph(Count)
    g.add_node("slow", slow)
    g.add_edge(START, "slow")
    g.add_edge("slow", END)
    app = g.compile(checkpointer=saver)
    first = asyncio.create_task(app.ainvoke({"count": 0}, thread_id="t"))
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(ThreadBusyError):
        await app.ainvoke({"count": 5}, thread_id="t")
    with pytest.raises(ThreadBusyError):
        await app.aresume("t")
    with pytest.raises(ThreadBusyError):
        await app.aupdate_state("t", {"count": 9})
    with pytest.raises(ThreadBusyError):
        await app.ainvoke(None, thread_id="t",
                          checkpoint_id=(await app.aget_state("t")).checkpoint_id)
    assert [t.busy for t in await app.athreads()] == [True]
    # other threads are not blocked
    assert (await app.ainvoke({"count": 10}, thread_id="other")).count == 11
    release.set()
    assert (await first).count == 1
    assert [h.state.count for h in await app.ahistory("t")] == [1, 0]
    assert [t.busy for t in await app.athreads()] == [False, False]
    assert (await app.ainvoke({"count": 5}, thread_id="t")).count == 6


@pytest.mark.parametrize("kind", STORES)
async def test_live_run_keeps_its_thread_longer_than_lease_seconds(kind, tmp_path, request):
    # beaten every 2/3 s: PostgreSQL (which takes an expired lease at once) would hand it over
    # only if the heartbeat stood still for more than a second
    lease = 2.0
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(state: Count) -> dict:
        started.set()
        await release.wait()  # running until the test is done, however slow the machine
        return {"count": state.count + 1}

    g = StateGraph(Count)
    g.add_node("slow", slow)
    g.add_edge(START, "slow")
    g.add_edge("slow", END)
    with make_checkpointer(kind, tmp_path, request, lease_seconds=lease) as checkpointer:
        app = g.compile(checkpointer=checkpointer)
        first = asyncio.create_task(app.ainvoke({"count": 0}, thread_id="t"))
        try:
            await asyncio.wait_for(started.wait(), 10)  # the lease was taken before this
            await asyncio.sleep(lease * 1.25)  # past the lease: only renewal keeps it
            with pytest.raises(ThreadBusyError):
                await app.aresume("t")
            release.set()
            assert (await first).count == 1
        finally:  # on failure too: no task left behind with an unretrieved exception
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        assert app.get_state("t").status == "done"


def test_checkpointers_are_context_managers_with_close(tmp_path):
    memory = MemoryCheckpointer()
    with memory as entered:
        assert entered is memory
    memory.close()
    sqlite = SQLiteCheckpointer(tmp_path / "cm.db")
    with sqlite as entered:
        assert entered is sqlite
        app = loop_graph(Calls()).compile(checkpointer=sqlite)
        app.invoke({"count": 0}, thread_id="t")
    with pytest.raises(CheckpointError, match="closed"):
        app.get_state("t")
    sqlite.close()  # closing twice is harmless
    with SQLiteCheckpointer(tmp_path / "cm.db") as reopened:
        assert loop_graph(Calls()).compile(checkpointer=reopened).get_state("t").state.count == 3


def test_threads_lists_every_thread_with_its_status(saver):
    app = pipeline(Calls(), fail={"publish": 1}).compile(checkpointer=saver)
    with pytest.raises(Boom):
        app.invoke({"count": 0}, thread_id="failed-one")
    app.invoke({"count": 0}, thread_id="done-one")
    paused = pipeline(Calls()).compile(checkpointer=saver, interrupt_after=["work"])
    paused.invoke({"count": 0}, thread_id="paused-one")
    infos = app.threads()
    assert [t.thread_id for t in infos] == ["paused-one", "done-one", "failed-one"]
    by_id = {t.thread_id: t for t in infos}
    assert by_id["failed-one"].status == "failed" and "publish failed" in by_id["failed-one"].error
    assert by_id["done-one"].status == "done" and by_id["done-one"].step == 3
    assert by_id["paused-one"].status == "interrupted"
    assert by_id["done-one"].checkpoint_id == app.get_state("done-one").checkpoint_id
    assert not any(t.busy for t in infos)


async def test_threads_lists_the_most_recently_updated_first(saver):
    release = asyncio.Event()

    async def node(state: Count, context) -> dict:
        if context.thread_id == "fails-last":
            await release.wait()
            raise Boom("late failure")
        return {"count": 1}

    g = StateGraph(Count)
    g.add_node("node", node)
    g.add_edge(START, "node")
    g.add_edge("node", END)
    app = g.compile(checkpointer=saver)
    late = asyncio.create_task(app.ainvoke({}, thread_id="fails-last"))
    await asyncio.sleep(0.05)
    await app.ainvoke({}, thread_id="done-first")
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(Boom):
        await late
    infos = await app.athreads()
    assert [t.thread_id for t in infos] == ["fails-last", "done-first"]
    assert infos[0].updated_at >= infos[1].updated_at


def test_stream_events_match_the_committed_checkpoints(saver):
    app = loop_graph(Calls()).compile(checkpointer=saver)
    events = list(app.stream({"count": 0}, thread_id="t"))
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.status for e in events] == ["running", "running", "done"]
    for event in events:
        snap = app.get_state("t", event.checkpoint_id)
        assert snap.state == event.state
        assert snap.step == event.step + 1


# -- the equivalence property ------------------------------------------------------------------

class Flow(BaseModel):
    log: Annotated[list[str], reducers.append] = []
    total: Annotated[int, operator.add] = 0
    rounds: int = 0


class Injected(Exception):
    """A failure injected once at a chosen (thread, step, node)."""


INJECT: set[tuple[str, int, str]] = set()
"""Failure points still to fire: (thread, step, node or 'route:<node>')."""
RAN: list[tuple[str, int, str]] = []
"""Every successful node execution: (thread, step, node)."""
_ids = itertools.count()


def flow_graph(widths: list[int], rounds: int, join: bool) -> tuple[StateGraph, list[str]]:
    """Layers of parallel nodes, every node feeding every node of the next layer; the first
    node of the last layer loops back to the start `rounds` times; optionally a join after the
    first two nodes of the first layer."""
    layers = [[f"n{i}{j}" for j in range(w)] for i, w in enumerate(widths)]

    def make(name: str):
        def node(state: Flow, context) -> dict:
            if (context.thread_id, context.step, name) in INJECT:
                INJECT.discard((context.thread_id, context.step, name))
                raise Injected(name)
            RAN.append((context.thread_id, context.step, name))
            update: dict[str, Any] = {"log": [f"{name}@{len(state.log)}/{state.total}"],
                                      "total": state.total % 5 + 1}
            if name == layers[-1][0]:
                update["rounds"] = state.rounds + 1
            return update
        return node

    def route(state: Flow, context) -> str:
        key = (context.thread_id, context.step, f"route:{layers[-1][0]}")
        if key in INJECT:
            INJECT.discard(key)
            raise Injected("router")
        return "again" if state.rounds <= rounds else "done"

    g = StateGraph(Flow)
    names = [n for layer in layers for n in layer]
    for name in names:
        g.add_node(name, make(name))
    for name in layers[0]:
        g.add_edge(START, name)
    for here, there in itertools.pairwise(layers):
        for a in here:
            for b in there:
                g.add_edge(a, b)
    tail = layers[-1][0]
    g.add_conditional_edges(tail, route, {"again": layers[0][0], "done": END})
    for name in layers[-1][1:]:
        g.add_edge(name, END)
    if join and len(layers[0]) >= 2:
        g.add_node("joined", make("joined"))
        names.append("joined")
        g.add_edge(layers[0][:2], "joined")
        g.add_edge("joined", END)
    return g, names


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       rounds=st.integers(0, 2), join=st.booleans(), data=st.data())
def test_failure_at_any_step_then_resume_equals_an_uninterrupted_run(saver, widths, rounds,
                                                                       join, data):
    g, names = flow_graph(widths, rounds, join)
    n = next(_ids)
    ref_thread, thread = f"reference-{n}", f"run-{n}"
    reference = g.compile(checkpointer=saver).invoke({}, thread_id=ref_thread)
    ref_runs = [(step, node) for t, step, node in RAN if t == ref_thread]

    points = data.draw(st.lists(st.sampled_from(ref_runs), min_size=1, max_size=2,
                                unique=True), label="fail at")
    router_steps = sorted({step for step, node in ref_runs if node == f"n{len(widths) - 1}0"})
    router_fail = data.draw(st.none() | st.sampled_from(router_steps), label="router fails at")
    pause = data.draw(st.sets(st.sampled_from(names), max_size=2), label="interrupt_before")
    INJECT.clear()
    INJECT.update((thread, step, node) for step, node in points)
    if router_fail is not None:
        INJECT.add((thread, router_fail, f"route:n{len(widths) - 1}0"))
    expected_failures = len(INJECT)

    app = g.compile(checkpointer=saver, interrupt_before=sorted(pause))
    failures, calls = 0, 0
    run = lambda: app.invoke({}, thread_id=thread)  # noqa: E731
    while True:
        calls += 1
        assert calls < 40, "the run does not converge"
        try:
            final = run()
        except Injected:
            failures += 1
            assert app.get_state(thread).status == "failed"
        else:
            if app.get_state(thread).status == "done":
                break
            assert app.get_state(thread).status == "interrupted"
        run = lambda: app.resume(thread)  # noqa: E731

    assert final == reference
    assert app.get_state(thread).state == reference
    assert not INJECT  # every injected failure fired (siblings of one step fail together)
    assert 1 <= failures <= expected_failures
    # every node execution that committed ran once: the same executions as the reference
    assert Counter((s, n) for t, s, n in RAN if t == thread) == Counter(ref_runs)
    for h in app.history(thread):
        assert app.get_state(thread, h.checkpoint_id).state == h.state
