"""The executor: supersteps, events, sync and async nodes and routers, joins, fan-out, partial
updates, the run context, max_steps, and the sync API inside a running event loop."""

from __future__ import annotations

import asyncio
import operator
import re
import subprocess
import sys
import textwrap
import threading
import time
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from checkpoints import MemoryCheckpointer
from statemachine import END, START, RunContext, StateGraph, StepEvent, StepLimitError


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []


def work(state: State) -> dict[str, Any]:
    return {"count": state.count + 1, "log": [f"step {state.count}"]}


def route(state: State) -> str:
    return "done" if state.count >= 3 else "again"


def quickstart():
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route, {"again": "work", "done": END})
    return g.compile()


APP = quickstart()


def logger(name: str):
    """A node that appends its own name to the log."""

    def node(state: State) -> dict[str, Any]:
        return {"log": [name]}

    node.__name__ = name
    return node


def graph_of(*names: str) -> StateGraph:
    g = StateGraph(State)
    for name in names:
        g.add_node(name, logger(name))
    return g


# -- invoke and stream ----------------------------------------------------------------------------


def test_invoke_runs_the_loop_and_returns_a_state_instance():
    final = APP.invoke({"count": 0})
    assert isinstance(final, State)
    assert final == State(count=3, log=["step 0", "step 1", "step 2"])


async def test_ainvoke_returns_the_same_state_as_invoke():
    assert await APP.ainvoke({"count": 1}) == APP.invoke({"count": 1})


def test_input_may_be_a_model_instance():
    assert APP.invoke(State(count=2)).log == ["step 2"]


def test_stream_yields_one_event_per_step_with_nodes_updates_and_state():
    events = list(APP.stream({"count": 0}, thread_id="t-stream"))
    assert all(isinstance(e, StepEvent) for e in events)
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.nodes for e in events] == [("work",)] * 3
    assert [e.updates for e in events] == [
        {"work": {"count": 1, "log": ["step 0"]}},
        {"work": {"count": 2, "log": ["step 1"]}},
        {"work": {"count": 3, "log": ["step 2"]}},
    ]
    assert [e.state.count for e in events] == [1, 2, 3]
    assert events[1].state.log == ["step 0", "step 1"]  # the state after the step
    assert [e.status for e in events] == ["running", "running", "done"]
    assert {e.thread_id for e in events} == {"t-stream"}


async def test_astream_yields_the_same_events_as_stream():
    async_events = [e async for e in APP.astream({"count": 0})]
    sync_events = list(APP.stream({"count": 0}))
    assert [(e.step, e.nodes, e.updates, e.state, e.status) for e in async_events] == \
        [(e.step, e.nodes, e.updates, e.state, e.status) for e in sync_events]


def test_event_updates_are_the_validated_updates_not_the_raw_return_values():
    class Typed(BaseModel):
        n: int = 0
        names: list[str] = []

    g = StateGraph(Typed)
    g.add_node("coerce", lambda s: {"n": "5", "names": ("a", "b")})
    g.add_edge(START, "coerce")
    g.add_edge("coerce", END)
    (event,) = g.compile().stream({})
    assert event.updates == {"coerce": {"n": 5, "names": ["a", "b"]}}
    assert event.state.n == 5


def test_closing_a_stream_early_stops_the_run():
    calls: list[int] = []

    def counted(state: State) -> dict[str, Any]:
        calls.append(state.count)
        return work(state)

    g = StateGraph(State)
    g.add_node("work", counted)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route, {"again": "work", "done": END})
    app = g.compile()
    stream = app.stream({"count": 0})
    first = next(stream)
    stream.close()
    assert first.step == 0
    assert calls == [0]
    assert app.invoke({"count": 0}).count == 3  # the app still runs afterwards


class Counter(BaseModel):
    count: int = 0
    limit: int = 0
    log: Annotated[list[str], operator.add] = []


def more(state: Counter) -> Literal["work", "__end__"]:
    return "work" if state.count < state.limit else END


def counter_loop():
    g = StateGraph(Counter)
    g.add_node("work", lambda s: {"count": s.count + 1, "log": [f"step {s.count}"]})
    g.add_conditional_edges(START, more)
    g.add_conditional_edges("work", more)
    return g.compile()


COUNTER_LOOP = counter_loop()


@given(st.integers(min_value=0, max_value=25), st.integers(min_value=0, max_value=25))
def test_router_loop_runs_exactly_as_many_steps_as_the_generated_count(start, limit):
    events = list(COUNTER_LOOP.stream({"count": start, "limit": limit}))
    runs = max(limit - start, 0)
    assert [e.step for e in events] == list(range(runs))
    final = events[-1].state if events else None
    if runs:
        assert final is not None
        assert final.count == limit
        assert final.log == [f"step {i}" for i in range(start, limit)]
    else:
        assert COUNTER_LOOP.invoke({"count": start, "limit": limit}).count == start


# -- nodes: return values, sync and async, context ------------------------------------------------


class Aliased(BaseModel):
    user_name: str = Field("", alias="userName")
    visits: int = 0


def test_input_sets_an_aliased_field_given_by_its_field_name():
    g = StateGraph(Aliased)
    g.add_node("visit", lambda s: {"visits": s.visits + 1})
    g.add_edge(START, "visit")
    g.add_edge("visit", END)
    final = g.compile().invoke({"user_name": "ada"})
    assert final.visits == 1
    assert final.user_name == "ada"


def test_node_returning_none_changes_nothing():
    g = StateGraph(State)
    g.add_node("idle", lambda s: None)
    g.add_edge(START, "idle")
    g.add_edge("idle", END)
    (event,) = g.compile().stream({"count": 4, "log": ["x"]})
    assert event.updates == {"idle": {}}
    assert event.state == State(count=4, log=["x"])


def test_partial_model_return_updates_only_the_fields_it_sets():
    g = StateGraph(State)
    g.add_node("only_log", lambda s: State(log=["added"]))
    g.add_node("only_count", lambda s: State(count=s.count * 10))
    g.add_node("nothing_set", lambda s: State())
    g.add_edge(START, "only_log")
    g.add_edge("only_log", "only_count")
    g.add_edge("only_count", "nothing_set")
    g.add_edge("nothing_set", END)
    events = list(g.compile().stream({"count": 7, "log": ["input"]}))
    assert [e.updates for e in events] == [
        {"only_log": {"log": ["added"]}},
        {"only_count": {"count": 70}},
        {"nothing_set": {}},
    ]
    # count was not reset to its default, log was not re-merged
    assert events[0].state == State(count=7, log=["input", "added"])
    assert events[-1].state == State(count=70, log=["input", "added"])


async def test_async_nodes_and_async_routers_run_under_invoke_and_ainvoke():
    async def awork(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        return work(state)

    async def aroute(state: State) -> str:
        await asyncio.sleep(0)
        return route(state)

    g = StateGraph(State)
    g.add_node("work", awork)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", aroute, {"again": "work", "done": END})
    app = g.compile()
    expected = State(count=3, log=["step 0", "step 1", "step 2"])
    assert await app.ainvoke({}) == expected
    assert app.invoke({}) == expected  # sync API inside this test's running loop


def test_sync_and_async_nodes_mix_in_one_parallel_step():
    async def async_node(state: State) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"log": ["async"]}

    g = StateGraph(State)
    g.add_node("async_node", async_node)
    g.add_node("sync_node", lambda s: {"log": ["sync"], "count": 1})
    for name in ("async_node", "sync_node"):
        g.add_edge(START, name)
        g.add_edge(name, END)
    (event,) = g.compile().stream({})
    assert event.nodes == ("async_node", "sync_node")
    assert event.state == State(count=1, log=["async", "sync"])


def test_callable_objects_can_be_nodes_and_routers():
    class Add:
        def __init__(self, n: int) -> None:
            self.n = n

        def __call__(self, state: State) -> dict[str, Any]:
            return {"count": state.count + self.n}

    class AsyncRoute:
        async def __call__(self, state: State) -> str:
            return "end"

    g = StateGraph(State)
    g.add_node("add", Add(5))
    g.add_edge(START, "add")
    g.add_conditional_edges("add", AsyncRoute(), {"end": END})
    assert g.compile().invoke({"count": 1}).count == 6


def test_a_second_required_parameter_receives_the_run_context():
    seen: list[RunContext] = []

    def node(state: State, context: RunContext) -> dict[str, Any]:
        seen.append(context)
        return {"count": state.count + 1}

    g = StateGraph(State)
    g.add_node("ctx", node)
    g.add_edge(START, "ctx")
    g.add_conditional_edges("ctx", lambda s: END if s.count >= 2 else "ctx", ["ctx", END])
    app = g.compile()
    app.invoke({}, thread_id="th-ctx")
    assert [(c.thread_id, c.step, c.node) for c in seen] == [("th-ctx", 0, "ctx"),
                                                              ("th-ctx", 1, "ctx")]
    for context in seen:
        assert isinstance(context, RunContext)
        assert re.fullmatch(r"[0-9a-f]{32}", context.task_id)
    assert seen[0].task_id != seen[1].task_id  # one task per step
    seen.clear()
    app.invoke({})
    assert seen[0].thread_id is None


def test_parameters_with_defaults_are_never_filled():
    got: dict[str, Any] = {}

    def tagged(state: State, tag: str = "default-tag") -> None:
        got["tag"] = tag

    def with_ctx(state: State, ctx: RunContext, extra: int = 7) -> None:
        got["ctx"], got["extra"] = ctx, extra

    async def async_tagged(state: State, *, flag: bool = False) -> None:
        got["flag"] = flag

    g = StateGraph(State)
    for fn in (tagged, with_ctx, async_tagged):
        g.add_node(fn)
    g.add_edge(START, "tagged")
    g.add_edge("tagged", "with_ctx")
    g.add_edge("with_ctx", "async_tagged")
    g.add_edge("async_tagged", END)
    g.compile().invoke({})
    assert got["tag"] == "default-tag"
    assert isinstance(got["ctx"], RunContext) and got["ctx"].node == "with_ctx"
    assert got["extra"] == 7
    assert got["flag"] is False


def test_router_with_context_shares_the_task_id_of_its_source_node():
    node_ids: list[str] = []
    router_contexts: list[RunContext] = []

    def node(state: State, ctx: RunContext) -> None:
        node_ids.append(ctx.task_id)

    def router(state: State, ctx: RunContext) -> str:
        router_contexts.append(ctx)
        return END

    g = StateGraph(State)
    g.add_node("src", node)
    g.add_edge(START, "src")
    g.add_conditional_edges("src", router, ["src", END])
    g.compile().invoke({}, thread_id="th")
    (rctx,) = router_contexts
    assert (rctx.node, rctx.step, rctx.thread_id) == ("src", 0, "th")
    assert rctx.task_id == node_ids[0]


def test_parallel_tasks_of_one_step_get_distinct_task_ids():
    ids: dict[str, str] = {}

    def make(name: str):
        def node(state: State, ctx: RunContext) -> None:
            ids[ctx.node] = ctx.task_id
        return node

    g = StateGraph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, make(name))
        g.add_edge(START, name)
        g.add_edge(name, END)
    g.compile().invoke({}, thread_id="th")
    assert set(ids) == {"a", "b", "c"}
    assert len(set(ids.values())) == 3


def test_task_id_is_the_same_when_a_failed_task_is_resumed():
    ids: list[str] = []
    attempts = {"n": 0}

    def flaky(state: State, ctx: RunContext) -> dict[str, Any]:
        ids.append(ctx.task_id)
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("transient")
        return {"count": 1}

    g = StateGraph(State)
    g.add_node("first", lambda s: {"log": ["first"]})
    g.add_node("flaky", flaky)
    g.add_edge(START, "first")
    g.add_edge("first", "flaky")
    g.add_edge("flaky", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    with pytest.raises(ConnectionError):
        app.invoke({}, thread_id="order-1")
    final = app.resume("order-1")
    assert final == State(count=1, log=["first"])
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert re.fullmatch(r"[0-9a-f]{32}", ids[0])


def test_separate_runs_never_share_a_task_id():
    ids: list[str] = []

    def node(state: State, ctx: RunContext) -> None:
        ids.append(ctx.task_id)

    g = StateGraph(State)
    g.add_node("charge", node)
    g.add_edge(START, "charge")
    g.add_edge("charge", END)
    app = g.compile()
    for _ in range(50):
        app.invoke({}, thread_id="same-thread")
    assert len(set(ids)) == 50  # 50 different runs: 50 different idempotency keys


# -- where sync nodes run -------------------------------------------------------------------------


def test_invoke_calls_a_lone_sync_node_in_the_calling_thread():
    threads: list[int] = []
    g = StateGraph(State)
    g.add_node("here", lambda s: threads.append(threading.get_ident()))
    g.add_edge(START, "here")
    g.add_edge("here", END)
    g.compile().invoke({})
    assert threads == [threading.get_ident()]


async def test_ainvoke_runs_sync_nodes_in_worker_threads_not_on_the_event_loop():
    threads: list[int] = []
    g = StateGraph(State)
    g.add_node("elsewhere", lambda s: threads.append(threading.get_ident()))
    g.add_edge(START, "elsewhere")
    g.add_edge("elsewhere", END)
    await g.compile().ainvoke({})
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


# -- supersteps, fan-out and order ----------------------------------------------------------------


def test_parallel_nodes_see_the_state_from_before_the_step():
    class Pair(BaseModel):
        count: int = 0
        seen_by_a: int = -1
        seen_by_b: int = -1

    g = StateGraph(Pair)
    g.add_node("a", lambda s: {"count": s.count + 1, "seen_by_a": s.count})
    g.add_node("b", lambda s: {"seen_by_b": s.count})
    for name in ("a", "b"):
        g.add_edge(START, name)
        g.add_edge(name, END)
    final = g.compile().invoke({"count": 10})
    assert final == Pair(count=11, seen_by_a=10, seen_by_b=10)


async def test_async_nodes_of_one_step_run_concurrently():
    barrier = asyncio.Barrier(3)

    async def meet(state: State) -> None:
        await asyncio.wait_for(barrier.wait(), timeout=5)  # sequential runs would time out

    g = StateGraph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, meet)
        g.add_edge(START, name)
        g.add_edge(name, END)
    (event,) = [e async for e in g.compile().astream({})]
    assert event.nodes == ("a", "b", "c")


def test_sync_nodes_of_one_step_run_concurrently_in_threads():
    barrier = threading.Barrier(2, timeout=5)  # sequential runs would break the barrier

    def meet(state: State) -> None:
        barrier.wait()

    g = StateGraph(State)
    for name in ("a", "b"):
        g.add_node(name, meet)
        g.add_edge(START, name)
        g.add_edge(name, END)
    (event,) = g.compile().stream({})
    assert event.nodes == ("a", "b")


@given(
    st.permutations(["n0", "n1", "n2", "n3", "n4"]),
    st.lists(st.floats(min_value=0, max_value=0.004), min_size=5, max_size=5),
    st.booleans(),
)
def test_fanout_merges_in_declaration_order_whatever_the_completion_order(order, delays,
                                                                          use_async):
    def make(name: str, delay: float):
        if use_async:
            async def node(state: State) -> dict[str, Any]:
                await asyncio.sleep(delay)
                return {"log": [name]}
        else:
            def node(state: State) -> dict[str, Any]:
                time.sleep(delay)
                return {"log": [name]}
        return node

    g = StateGraph(State)
    g.add_node("fan", lambda s: None)
    for name, delay in zip(order, delays, strict=True):
        g.add_node(name, make(name, delay))
        g.add_edge(name, END)
    g.add_edge(START, "fan")
    # the router lists the targets in an order of its own
    g.add_conditional_edges("fan", lambda s: sorted(order, reverse=True), order)
    events = asyncio.run(_collect(g.compile().astream({})))
    assert [e.nodes for e in events] == [("fan",), tuple(order)]
    assert events[-1].state.log == list(order)
    assert list(events[-1].updates) == list(order)


async def _collect(stream) -> list[StepEvent]:
    return [event async for event in stream]


def test_router_sees_the_state_after_the_whole_step():
    seen: list[list[str]] = []

    def router(state: State) -> str:
        seen.append(list(state.log))
        return END

    g = graph_of("a", "b")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_conditional_edges("a", router, [END])
    g.add_edge("b", END)
    g.compile().invoke({})
    assert seen == [["a", "b"]]


@pytest.mark.parametrize(
    ("router", "path_map"),
    [
        (lambda s: ["left", "right"], {"left": "b", "right": "c"}),
        (lambda s: ["c", "b"], ["b", "c"]),
        (lambda s: ("b", "c", END), None),
    ],
    ids=["dict_keys", "list_targets", "tuple_without_path_map"],
)
def test_router_returning_a_list_fans_out_into_one_parallel_step(router, path_map, recwarn):
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_conditional_edges("a", router, path_map)
    g.add_edge("b", END)
    g.add_edge("c", END)
    events = list(g.compile().stream({}))
    assert [e.nodes for e in events] == [("a",), ("b", "c")]
    assert events[-1].state.log == ["a", "b", "c"]


def test_literal_list_router_fans_out():
    def router(state: State) -> list[Literal["b", "c"]]:
        return ["c", "b"]

    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_conditional_edges("a", router)
    g.add_edge("b", END)
    g.add_edge("c", END)
    assert [e.nodes for e in g.compile().stream({})] == [("a",), ("b", "c")]


def test_router_returning_an_empty_list_or_only_END_ends_that_branch():
    for result in ([], [END], END):
        g = graph_of("a", "b")
        g.add_edge(START, "a")
        g.add_conditional_edges("a", lambda s, result=result: result, ["b", END])
        g.add_edge("b", END)
        assert g.compile().invoke({}).log == ["a"]


def test_conditional_edges_from_START_choose_the_first_nodes():
    g = graph_of("a", "b")
    g.add_conditional_edges(START, lambda s: "b" if s.count else "a", ["a", "b"])
    g.add_edge("a", END)
    g.add_edge("b", END)
    app = g.compile()
    assert app.invoke({"count": 0}).log == ["a"]
    assert app.invoke({"count": 1}).log == ["b"]


def test_router_at_START_may_fan_out():
    g = graph_of("a", "b")
    g.add_conditional_edges(START, lambda s: ["b", "a"], ["a", "b"])
    g.add_edge("a", END)
    g.add_edge("b", END)
    events = list(g.compile().stream({}))
    assert [e.nodes for e in events] == [("a", "b")]
    assert events[0].state.log == ["a", "b"]


def test_dict_path_map_keys_may_be_any_hashable_value():
    g = graph_of("a", "b")
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: s.count > 0, {True: "b", False: END})
    g.add_edge("b", END)
    app = g.compile()
    assert app.invoke({"count": 0}).log == ["a"]
    assert app.invoke({"count": 1}).log == ["a", "b"]


def test_node_targeted_by_several_nodes_of_a_step_runs_once():
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", "c")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    events = list(g.compile().stream({}))
    assert [e.nodes for e in events] == [("a", "b"), ("c",)]
    assert events[-1].state.log == ["a", "b", "c"]


def test_fixed_and_conditional_edges_of_one_node_both_apply():
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_conditional_edges("a", lambda s: "c", ["c", END])
    g.add_edge("b", END)
    g.add_edge("c", END)
    assert [e.nodes for e in g.compile().stream({})] == [("a",), ("b", "c")]


# -- joins ----------------------------------------------------------------------------------------


def test_join_runs_once_after_both_sources_in_the_same_step():
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge(["a", "b"], "c")
    g.add_edge("c", END)
    events = list(g.compile().stream({}))
    assert [e.nodes for e in events] == [("a", "b"), ("c",)]
    assert events[-1].state.log == ["a", "b", "c"]


def test_join_waits_for_both_sources_across_steps():
    g = graph_of("a", "a2", "a3", "b", "c")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", "a2")
    g.add_edge("a2", "a3")
    g.add_edge(["a3", "b"], "c")
    g.add_edge("c", END)
    events = list(g.compile().stream({}))
    assert [e.nodes for e in events] == [("a", "b"), ("a2",), ("a3",), ("c",)]
    assert events[-1].state.log.count("c") == 1


def test_join_does_not_fire_when_a_source_never_runs():
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: END, ["b", END])
    g.add_edge("b", END)
    g.add_edge(["a", "b"], "c")
    g.add_edge("c", END)
    assert g.compile().invoke({}).log == ["a"]


def test_join_fires_once_per_round_of_a_loop():
    g = graph_of("fork", "a", "b", "c")
    g.add_edge(START, "fork")
    g.add_edge("fork", "a")
    g.add_edge("fork", "b")
    g.add_edge(["a", "b"], "c")
    g.add_conditional_edges(
        "c", lambda s: "fork" if s.log.count("c") < 3 else END, ["fork", END])
    final = g.compile().invoke({})
    assert final.log == ["fork", "a", "b", "c"] * 3


def test_join_target_may_be_END():
    g = graph_of("a", "b")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge(["a", "b"], END)
    assert g.compile().invoke({}).log == ["a", "b"]


# -- max_steps ------------------------------------------------------------------------------------


def test_max_steps_equal_to_the_steps_needed_is_enough():
    assert APP.invoke({}, max_steps=3).count == 3


def test_max_steps_stops_the_run_and_names_the_next_nodes():
    with pytest.raises(StepLimitError) as info:
        APP.invoke({}, thread_id="loop-thread", max_steps=2)
    err = info.value
    assert err.next_nodes == ("work",)
    assert err.max_steps == 2
    assert "max_steps=2" in str(err)
    assert "'work'" in str(err)
    assert "step 2" in str(err)
    assert "'loop-thread'" in str(err)


def test_stream_yields_the_steps_before_the_step_limit():
    events: list[StepEvent] = []
    with pytest.raises(StepLimitError):
        events.extend(APP.stream({}, max_steps=2))
    assert [e.step for e in events] == [0, 1]


def test_step_limit_lists_every_node_that_was_still_due():
    g = graph_of("a", "b", "c")
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: ["c", "b"], ["b", "c"])
    g.add_edge("b", END)
    g.add_edge("c", END)
    with pytest.raises(StepLimitError) as info:
        g.compile().invoke({}, max_steps=1)
    assert info.value.next_nodes == ("b", "c")
    assert "'b', 'c'" in str(info.value)


def test_default_max_steps_is_ten_thousand():
    g = StateGraph(State)
    g.add_node("spin", lambda s: None)
    g.add_edge(START, "spin")
    g.add_conditional_edges("spin", lambda s: "spin", ["spin", END])
    with pytest.raises(StepLimitError) as info:
        g.compile().invoke({})
    assert info.value.max_steps == 10_000
    assert "max_steps=10000" in str(info.value)


def test_max_steps_below_one_is_rejected():
    with pytest.raises(ValueError, match="max_steps"):
        APP.invoke({}, max_steps=0)


# -- the sync API inside a running event loop -----------------------------------------------------


async def test_sync_invoke_and_stream_work_inside_a_running_event_loop():
    assert APP.invoke({"count": 0}).count == 3
    assert [e.step for e in APP.stream({"count": 0})] == [0, 1, 2]
    with pytest.raises(StepLimitError):
        APP.invoke({}, max_steps=1)


def test_a_node_may_invoke_a_subgraph_with_the_sync_api():
    sub = _incrementer()
    g = StateGraph(State)
    g.add_node("outer", lambda s: {"count": sub.invoke({"count": s.count}).count})
    g.add_edge(START, "outer")
    g.add_edge("outer", END)
    assert g.compile().invoke({"count": 1}).count == 2


def _incrementer():
    g = StateGraph(State)
    g.add_node("inc", lambda s: {"count": s.count + 1})
    g.add_edge(START, "inc")
    g.add_edge("inc", END)
    return g.compile()


SUBGRAPH_IN_LOOP = textwrap.dedent("""
    import asyncio
    from pydantic import BaseModel
    from statemachine import END, START, StateGraph

    class S(BaseModel):
        count: int = 0

    inner = StateGraph(S)
    inner.add_node("inc", lambda s: {"count": s.count + 1})
    inner.add_edge(START, "inc")
    inner.add_edge("inc", END)
    sub = inner.compile()

    outer = StateGraph(S)
    outer.add_node("outer", lambda s: {"count": sub.invoke({"count": s.count}).count})
    outer.add_edge(START, "outer")
    outer.add_edge("outer", END)
    app = outer.compile()

    async def main():
        print(app.invoke({"count": 1}).count)

    asyncio.run(main())
""")


def test_subgraph_invoke_inside_a_node_works_when_called_from_a_running_loop():
    # run in a child process: the deadlock would otherwise wedge the shared portal loop
    try:
        done = subprocess.run([sys.executable, "-c", SUBGRAPH_IN_LOOP], capture_output=True,
                              text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("app.invoke inside a node deadlocked when the outer invoke ran in a loop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_sync_calls_see_the_callers_context_variables_every_time():
    # the per-thread event loop is created once and reused: each call must still run in the
    # caller's current context, or use_clock() (and any context variable) would be ignored
    from statemachine import FakeClock, RetryPolicy, use_clock

    plain = StateGraph(State)
    plain.add_node("work", lambda s: None)
    plain.add_edge(START, "work")
    plain.add_edge("work", END)
    plain.compile().invoke({})  # this thread's loop now exists, made outside any clock

    failures = {"left": 0}

    def flaky(state: State) -> dict:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("again")
        return {"count": state.count + 1}

    g = StateGraph(State)
    g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=2, initial_interval=30,
                                                 jitter=False))
    g.add_edge(START, "flaky")
    g.add_edge("flaky", END)
    app = g.compile()
    for _ in range(2):
        failures["left"] = 1
        with use_clock(FakeClock()) as clock:
            started = time.perf_counter()
            assert app.invoke({}).count == 1
        assert clock.sleeps == [30.0]
        assert time.perf_counter() - started < 5
