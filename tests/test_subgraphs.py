"""Subgraphs: a compiled graph as a node. Same schema (the child's writes pass up through the
parent's reducers exactly once) or mapped with input/output functions; with a checkpointer the
child runs as its own thread, so a resumed parent resumes it, and a wait_for inside it pauses the
parent until the parent's resume delivers the event."""

from __future__ import annotations

import asyncio
import itertools
import operator
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer
from statemachine import (
    END,
    START,
    GraphValidationError,
    RetryPolicy,
    Send,
    StateGraph,
    ThreadStateError,
    wait_for,
)


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []
    total: Annotated[int, operator.add] = 0
    last: str = ""
    topic: str = ""
    notes: Annotated[list[str], operator.add] = []


class Research(BaseModel):
    topic: str
    notes: Annotated[list[str], operator.add] = []


def step(name: str, calls: list[str] | None = None, *, fail_first: int = 0):
    """A node appending `name`, adding 1 to `total` and setting `last`; it fails its first
    `fail_first` calls with ConnectionError."""
    seen = {"n": 0}

    def node(state: S) -> dict[str, Any]:
        seen["n"] += 1
        if calls is not None:
            calls.append(name)
        if seen["n"] <= fail_first:
            raise ConnectionError(f"{name} failed")
        return {"log": [name], "total": 1, "last": name}

    node.__name__ = name
    return node


def linear(schema: type[BaseModel], *nodes: tuple[str, Any], **options: Any) -> StateGraph:
    g = StateGraph(schema)
    for name, fn in nodes:
        g.add_node(name, fn, **options.get(name, {}))
    names = [START, *(n for n, _ in nodes), END]
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


def child_app(calls: list[str] | None = None, *, fail_c2: int = 0):
    return linear(S, ("c1", step("c1", calls)),
                  ("c2", step("c2", calls, fail_first=fail_c2))).compile()


def parent_of(child, calls: list[str] | None = None, **sub_options: Any) -> StateGraph:
    return linear(S, ("before", step("before", calls)), ("sub", child),
                  ("after", step("after", calls)), sub=sub_options)


# -- same schema ----------------------------------------------------------------------------------


def test_same_schema_writes_pass_up_once_not_the_final_state():
    events = list(parent_of(child_app()).compile().stream({"log": ["in"], "total": 10}))
    assert [e.nodes for e in events] == [("before",), ("sub",), ("after",)]
    # the subgraph's update is its nodes' writes, combined through the reducers
    assert events[1].updates == {"sub": {"log": ["c1", "c2"], "total": 2, "last": "c2"}}
    final = events[-1].state
    assert final.log == ["in", "before", "c1", "c2", "after"]
    assert final.total == 14  # 10 + before + c1 + c2 + after, nothing counted twice
    assert final.last == "after"


def test_same_schema_with_a_checkpointer_runs_the_child_as_its_own_thread(store):
    app = parent_of(child_app()).compile(checkpointer=store.open())
    final = app.invoke({}, thread_id="p")
    assert final.log == ["before", "c1", "c2", "after"] and final.total == 4
    threads = {t.thread_id: t for t in app.threads()}
    [child] = [t for t in threads if t != "p"]
    assert child.startswith("p::sub:0@")
    assert threads[child].status == "done"
    child_state = app.get_state("p")  # the parent's own state is unaffected by the child's
    assert child_state.state.log == ["before", "c1", "c2", "after"]


@given(prefix=st.lists(st.sampled_from("xyz"), max_size=4), rounds=st.integers(0, 5),
       durable=st.booleans())
def test_a_looping_child_passes_each_write_up_exactly_once(prefix, rounds, durable):
    class Loop(BaseModel):
        log: Annotated[list[str], operator.add] = []
        total: Annotated[int, operator.add] = 0
        rounds: int = 0

    def tick(state: Loop) -> dict[str, Any]:
        return {"log": [f"tick {state.total}"], "total": 1}

    c = StateGraph(Loop)
    c.add_node("tick", tick)
    c.add_conditional_edges(START, lambda s: "tick" if s.total < s.rounds else END,
                            ["tick", END])
    c.add_conditional_edges("tick", lambda s: "tick" if s.total < s.rounds else END,
                            ["tick", END])
    p = StateGraph(Loop)
    p.add_node("sub", c.compile())
    p.add_edge(START, "sub")
    p.add_edge("sub", END)
    kwargs: dict[str, Any] = {}
    if durable:
        app = p.compile(checkpointer=MemoryCheckpointer())
        kwargs["thread_id"] = "t"
    else:
        app = p.compile()
    final = app.invoke({"log": prefix, "rounds": rounds}, **kwargs)
    assert final.log == [*prefix, *(f"tick {i}" for i in range(rounds))]
    assert final.total == rounds


# -- mapped schema --------------------------------------------------------------------------------


def research_app(calls: list[str] | None = None, *, fail_first: int = 0):
    seen = {"n": 0}

    def search(state: Research) -> dict[str, Any]:
        if calls is not None:
            calls.append(f"search {state.topic}")
        return {"notes": [f"found {state.topic}"]}

    def summarize(state: Research) -> dict[str, Any]:
        seen["n"] += 1
        if calls is not None:
            calls.append("summarize")
        if seen["n"] <= fail_first:
            raise ConnectionError("summarizer down")
        return {"notes": [f"summary of {len(state.notes)}"]}

    return linear(Research, ("search", search), ("summarize", summarize)).compile()


def test_mapped_schema_uses_input_and_output_functions(store):
    inputs: list[Any] = []

    def to_child(state: S) -> dict[str, Any]:
        inputs.append(state)
        return {"topic": state.topic}

    g = linear(S, ("research", research_app()), research={
        "input": to_child, "output": lambda r: {"notes": r.notes, "last": r.topic}})
    for app, kwargs in [(g.compile(), {}),
                        (g.compile(checkpointer=store.open()), {"thread_id": "t"})]:
        inputs.clear()
        final = app.invoke({"topic": "owls", "notes": ["old"]}, **kwargs)
        assert isinstance(inputs[0], S) and inputs[0].topic == "owls"
        assert final.notes == ["old", "found owls", "summary of 1"]
        assert final.last == "owls"


def test_a_subgraph_with_another_schema_needs_both_mapping_functions():
    research = research_app()
    with pytest.raises(GraphValidationError) as info:
        linear(S, ("research", research)).compile()
    assert info.value.codes == ["subgraph_schema"]
    assert "Research" in str(info.value)
    with pytest.raises(GraphValidationError) as info:
        linear(S, ("research", research),
               research={"input": lambda s: {"topic": s.topic}}).compile()
    assert info.value.codes == ["subgraph_schema"]


# -- durability -----------------------------------------------------------------------------------


def test_resume_continues_inside_the_subgraph(store):
    calls: list[str] = []
    child = child_app(calls, fail_c2=1)
    g = parent_of(child, calls)
    app = g.compile(checkpointer=store.open())
    with pytest.raises(ConnectionError, match="c2 failed"):
        app.invoke({}, thread_id="p")
    snap = app.get_state("p")
    assert snap.status == "failed" and snap.next == ("sub",)
    [child_thread] = [t for t in app.threads() if t.thread_id != "p"]
    assert child_thread.status == "failed"

    final = g.compile(checkpointer=store.open()).resume("p")
    assert calls == ["before", "c1", "c2", "c2", "after"]  # c1 finished, so it did not re-run
    assert final.log == ["before", "c1", "c2", "after"] and final.total == 4
    assert [t.thread_id for t in app.threads()].count(child_thread.thread_id) == 1


def test_a_mapped_subgraph_resumes_where_it_stopped(store):
    calls: list[str] = []
    g = linear(S, ("research", research_app(calls, fail_first=1)), research={
        "input": lambda s: {"topic": s.topic}, "output": lambda r: {"notes": r.notes}})
    with pytest.raises(ConnectionError):
        g.compile(checkpointer=store.open()).invoke({"topic": "bees"}, thread_id="t")
    final = g.compile(checkpointer=store.open()).resume("t")
    assert calls == ["search bees", "summarize", "summarize"]
    assert final.notes == ["found bees", "summary of 1"]


def test_a_retried_subgraph_node_continues_its_child_instead_of_restarting_it(store):
    calls: list[str] = []
    fast = RetryPolicy(max_attempts=2, initial_interval=0.001, jitter=False)
    app = parent_of(child_app(calls, fail_c2=1), calls, retry=fast).compile(
        checkpointer=store.open())
    events = list(app.stream({}, thread_id="p"))
    assert calls == ["before", "c1", "c2", "c2", "after"]
    assert events[1].attempts == {"sub": 2}
    assert events[-1].state.log == ["before", "c1", "c2", "after"]


def test_a_timed_out_subgraph_attempt_is_retried_and_continues_its_child(store):
    calls: list[str] = []

    async def slow_once(state: S) -> dict[str, Any]:
        calls.append("slow")
        if calls.count("slow") == 1:
            await asyncio.sleep(10)
        return {"log": ["slow"]}

    child = linear(S, ("c1", step("c1", calls)), ("slow", slow_once)).compile()
    fast = RetryPolicy(max_attempts=2, initial_interval=0.001, jitter=False)
    # each attempt commits the child's steps before its limit, even on a slow machine
    app = linear(S, ("sub", child), sub={"timeout": 1.0, "retry": fast}).compile(
        checkpointer=store.open())
    final = app.invoke({}, thread_id="p")
    assert calls == ["c1", "slow", "slow"]
    assert final.log == ["c1", "slow"]
    assert {t.status for t in app.threads()} == {"done"}


def test_a_finished_subgraph_is_not_rerun_when_a_sibling_failed(store):
    calls: list[str] = []
    g = StateGraph(S)
    g.add_node("sub", child_app(calls))
    sibling_runs: list[int] = []

    def sibling(state: S) -> dict[str, Any]:
        sibling_runs.append(1)
        calls.append("sibling")
        if len(sibling_runs) == 1:
            raise ConnectionError("sibling failed")
        return {"log": ["sibling"], "total": 1}

    g.add_node("sibling", sibling)
    g.add_edge(START, "sub")
    g.add_edge(START, "sibling")
    g.add_edge("sub", END)
    g.add_edge("sibling", END)
    with pytest.raises(ConnectionError):
        g.compile(checkpointer=store.open()).invoke({}, thread_id="p")
    final = g.compile(checkpointer=store.open()).resume("p")
    assert sorted(calls) == ["c1", "c2", "sibling", "sibling"]
    assert final.log == ["c1", "c2", "sibling"] and final.total == 3


def test_a_subgraph_in_a_loop_runs_afresh_each_time(store):
    calls: list[str] = []
    g = StateGraph(S)
    g.add_node("sub", child_app(calls))
    g.add_edge(START, "sub")
    g.add_conditional_edges("sub", lambda s: "sub" if s.total < 6 else END, ["sub", END])
    app = g.compile(checkpointer=store.open())
    final = app.invoke({}, thread_id="p")
    assert calls == ["c1", "c2"] * 3
    assert final.log == ["c1", "c2"] * 3 and final.total == 6
    children = [t.thread_id for t in app.threads() if t.thread_id != "p"]
    assert len(children) == 3 and all(c.startswith("p::sub:0@") for c in children)


def test_send_to_a_subgraph_runs_one_child_thread_per_task_in_send_order(store):
    g = StateGraph(S)
    g.add_node("plan", lambda s: None)
    g.add_node("research", research_app(), input=lambda topic: {"topic": topic},
               output=lambda r: {"notes": r.notes[:1]})
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("research", t) for t in ("a", "b", "c")],
                            ["research"])
    g.add_edge("research", END)
    app = g.compile(checkpointer=store.open())
    final = app.invoke({}, thread_id="p")
    assert final.notes == ["found a", "found b", "found c"]
    children = sorted(t.thread_id.split("@")[0] for t in app.threads() if t.thread_id != "p")
    assert children == ["p::research:0", "p::research:1", "p::research:2"]


def test_nested_subgraphs_pass_writes_up_once_through_every_level(store):
    calls: list[str] = []
    inner = child_app(calls, fail_c2=1)
    middle = linear(S, ("m", step("m", calls)), ("inner", inner)).compile()
    g = linear(S, ("middle", middle), ("after", step("after", calls)))
    with pytest.raises(ConnectionError):
        g.compile(checkpointer=store.open()).invoke({"total": 100}, thread_id="p")
    app = g.compile(checkpointer=store.open())
    final = app.resume("p")
    assert calls == ["m", "c1", "c2", "c2", "after"]
    assert final.log == ["m", "c1", "c2", "after"] and final.total == 104
    nested = [t.thread_id for t in app.threads() if t.thread_id.count("::") == 2]
    assert len(nested) == 1 and nested[0].startswith("p::middle:0@")
    assert "::inner:0@" in nested[0]


# -- events ---------------------------------------------------------------------------------------


def test_wait_for_inside_a_subgraph_pauses_the_parent_until_its_resume_delivers(store):
    calls: list[str] = []

    def ask(state: S) -> dict[str, Any]:
        calls.append("ask")
        answer = wait_for("approval")
        return {"log": [f"approved by {answer}"]}

    child = linear(S, ("c1", step("c1", calls)), ("ask", ask)).compile()
    g = parent_of(child, calls)
    app = g.compile(checkpointer=store.open())
    paused = app.invoke({}, thread_id="p")
    assert paused.log == ["before"]
    snap = app.get_state("p")
    assert snap.status == "interrupted" and snap.next == ("sub",)
    assert snap.metadata["waits_for"] == ["approval"]

    final = g.compile(checkpointer=store.open()).resume("p", event={"approval": "ann"})
    assert final.log == ["before", "c1", "approved by ann", "after"]
    assert calls == ["before", "c1", "ask", "ask", "after"]
    assert app.get_state("p").status == "done"


def two_waits_in_a_child() -> StateGraph:
    def ask(name: str):
        def node(state: S) -> dict[str, Any]:
            return {"log": [f"{name}={wait_for(name)}"]}
        return node

    child = linear(S, ("first", ask("first")), ("second", ask("second"))).compile()
    return linear(S, ("sub", child))


def test_two_waits_inside_a_subgraph_pause_the_parent_one_at_a_time(store):
    g = two_waits_in_a_child()
    app = g.compile(checkpointer=store.open())
    app.invoke({}, thread_id="p")
    assert app.get_state("p").metadata["waits_for"] == ["first"]
    g.compile(checkpointer=store.open()).resume("p", event={"first": 1})
    assert app.get_state("p").metadata["waits_for"] == ["second"]
    with pytest.raises(ThreadStateError, match="'second'"):
        app.resume("p", event={"first": 1})
    final = g.compile(checkpointer=store.open()).resume("p", event={"second": 2})
    assert final.log[0] == "first=1" and len(final.log) == 2
    assert app.get_state("p").status == "done"


def one_node_waiting_twice_in_a_child() -> StateGraph:
    def both(state: S) -> dict[str, Any]:
        first = wait_for("first")
        second = wait_for("second")
        return {"log": [f"first={first}", f"second={second}"]}

    return linear(S, ("sub", linear(S, ("both", both)).compile()))


@pytest.mark.parametrize("make", [two_waits_in_a_child, one_node_waiting_twice_in_a_child])
def test_the_second_wait_inside_a_subgraph_gets_its_own_event(store, make):
    app = make().compile(checkpointer=store.open())
    app.invoke({}, thread_id="p")
    app.resume("p", event={"first": 1})
    assert app.resume("p", event={"second": 2}).log == ["first=1", "second=2"]


def test_an_interrupt_inside_a_subgraph_is_refused(store):
    child = linear(S, ("c1", step("c1")), ("c2", step("c2"))).compile(interrupt_before=["c2"])
    app = linear(S, ("sub", child)).compile(checkpointer=store.open())
    with pytest.raises(ThreadStateError, match="wait_for"):
        app.invoke({}, thread_id="p")


def test_listeners_of_the_parent_see_the_childs_nodes():
    starts: list[str] = []

    class Listener:
        def on_node_start(self, thread_id, step, node):
            starts.append(node)

    app = parent_of(child_app()).compile(checkpointer=MemoryCheckpointer())
    app.add_listener(Listener())
    app.invoke({}, thread_id="p")
    assert starts == ["before", "sub", "c1", "c2", "after"]


def test_a_child_failure_without_a_checkpointer_propagates_with_its_node():
    with pytest.raises(ConnectionError, match="c2 failed") as info:
        parent_of(child_app(fail_c2=1)).compile().invoke({})
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "'c2'" in notes and "'sub'" in notes
