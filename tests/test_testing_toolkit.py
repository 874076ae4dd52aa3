"""statemachine.testing: each checker passes on correct graphs, and catches a deliberately
buggy one, reporting the shrunk counterexample (the messages name the minimal count)."""

import asyncio
import enum
import importlib.util
import operator
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, model_validator

from checkpoints import MemoryCheckpointer
from statemachine import (
    END,
    START,
    Command,
    NodeFailure,
    RetryPolicy,
    RunContext,
    Send,
    StateGraph,
    wait_for,
)
from statemachine.testing import (
    GraphStateMachine,
    PropertyCheckError,
    check_nodes,
    check_resume,
    check_runs,
    check_transitions,
    preserves,
    states,
    transition_machine,
    values_of,
)

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"toolkit_example_{name}",
                                                  ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single_failure(excinfo: pytest.ExceptionInfo[PropertyCheckError]):
    (failure,) = excinfo.value.failures
    return failure


# -- a counting loop, correct and broken in several ways ------------------------------------------

class Counter(BaseModel):
    count: int = Field(0, ge=0)
    log: Annotated[list[str], operator.add] = []


def increment(state: Counter) -> dict:
    return {"count": state.count + 1, "log": [f"at {state.count}"]}


def until_ten(state: Counter) -> str:
    return "done" if state.count >= 10 else "again"


def loop_graph(node=increment, router=until_ten, schema=Counter, **compile_options):
    graph = StateGraph(schema)
    graph.add_node("work", node)
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", router, {"again": "work", "done": END})
    return graph.compile(**compile_options)


SMALL_COUNTS = states(Counter, count=st.integers(0, 12))


def steps_by_one(before: Counter, after: Counter) -> bool:
    return after.count == before.count + 1 and len(after.log) == len(before.log) + 1


# -- states() -------------------------------------------------------------------------------------

class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-\d{2}$")
    quantity: int = Field(ge=1, le=5)
    tags: list[str] = Field(default_factory=list, max_length=2)


class Order(BaseModel):
    total: int = Field(0, ge=0, le=10_000, multiple_of=5)
    ratio: float = Field(0.5, gt=0, lt=1)
    price: Decimal = Field(Decimal("1.00"), ge=0, le=100, decimal_places=2)
    status: Literal["new", "paid", "shipped"] = "new"
    color: Color = Color.RED
    note: str | None = Field(None, min_length=2, max_length=4)
    code: str = Field("ab", pattern=r"^[a-z]+$", max_length=6)
    items: list[Item] = Field(default_factory=list, max_length=3)
    history: Annotated[list[str], operator.add] = []
    seen: Annotated[set[int], lambda a, b: a | b] = set()
    scores: dict[str, int] = {}
    pair: tuple[int, str] = (0, "")
    extra: Any = None


@given(states(Order))
def test_states_honour_types_and_field_constraints(order):
    assert isinstance(order, Order)
    assert 0 <= order.total <= 10_000 and order.total % 5 == 0
    assert 0 < order.ratio < 1
    assert 0 <= order.price <= 100 and order.price.as_tuple().exponent >= -2
    assert order.status in ("new", "paid", "shipped")
    assert isinstance(order.color, Color)
    assert order.note is None or 2 <= len(order.note) <= 4
    assert re.fullmatch(r"[a-z]+", order.code) and len(order.code) <= 6
    assert len(order.items) <= 3
    for item in order.items:
        assert re.fullmatch(r"[A-Z]{3}-\d{2}", item.sku) and 1 <= item.quantity <= 5
        assert len(item.tags) <= 2
    assert all(isinstance(entry, str) for entry in order.history)  # a reducer field, by type
    assert all(isinstance(n, int) for n in order.seen)
    assert isinstance(order.pair[0], int) and isinstance(order.pair[1], str)


def test_states_cover_every_literal_enum_and_optional_value():
    seen: set[Any] = set()

    @settings(max_examples=80, database=None)
    @given(states(Order))
    def collect(order):
        seen.update({order.status, order.color, order.note is None})

    collect()
    assert {"new", "paid", "shipped", Color.RED, Color.BLUE, True, False} <= seen


def test_states_take_overrides_as_strategies_or_plain_values():
    @settings(max_examples=30, database=None)
    @given(states(Counter, count=st.integers(3, 4), log=["fixed"]))
    def check(state):
        assert state.count in (3, 4)
        assert state.log == ["fixed"]

    check()


def test_states_reject_unknown_overrides_and_non_models():
    with pytest.raises(TypeError, match=r"unknown field 'cont' \(did you mean 'count'\?\)"):
        states(Counter, cont=st.just(1))
    with pytest.raises(TypeError, match="pydantic model class"):
        states(dict)  # type: ignore[arg-type]


class Window(BaseModel):
    low: int = Field(0, ge=0, le=100)
    high: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def ordered(self):
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


@given(states(Window))
def test_states_pass_the_models_own_validators(window):
    assert window.low <= window.high


class Tree(BaseModel):
    label: str = Field("", max_length=3)
    children: list["Tree"] = Field(default_factory=list, max_length=2)


@given(states(Tree))
def test_states_build_recursive_models(tree):
    assert isinstance(tree, Tree)
    assert all(isinstance(child, Tree) for child in tree.children)


@given(values_of(Annotated[list[int], Field(min_length=2, max_length=3)]))
def test_values_of_honours_annotated_constraints(values):
    assert 2 <= len(values) <= 3 and all(isinstance(v, int) for v in values)


# -- check_nodes ----------------------------------------------------------------------------------

def test_check_nodes_passes_on_the_quickstart_example():
    quickstart = load_example("quickstart")
    check_nodes(quickstart.app, invariant=steps_by_one)


def test_check_nodes_reports_an_unknown_key_with_the_minimal_state():
    def sloppy(state: Counter) -> dict:
        if state.count > 3:
            return {"cnt": state.count + 1}  # a typo, only on the path for larger counts
        return {"count": state.count + 1}

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(sloppy))
    failure = single_failure(excinfo)
    assert (failure.subject, failure.kind) == ("node 'work'", "unknown_field")
    assert failure.example == Counter(count=4, log=[])  # shrunk to the first failing count
    message = str(excinfo.value)
    assert "node 'work': returned unknown field 'cnt' (did you mean 'count'?)" in message
    assert "minimal state: Counter(count=4, log=[])" in message


def test_check_nodes_reports_a_router_returning_an_unknown_route():
    def route(state: Counter) -> str:
        if state.count > 100:
            return "overflow"
        return "done" if state.count >= 10 else "again"

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(router=route))
    failure = single_failure(excinfo)
    assert (failure.subject, failure.kind) == ("router 'route' after 'work'", "invalid_route")
    assert failure.example.count == 101
    assert "returned 'overflow', which is not one of its routes ('again', 'done')" in str(
        excinfo.value)


class Bounded(BaseModel):
    count: int = Field(0, ge=0, le=100)


def test_check_nodes_reports_a_value_pushed_past_a_field_constraint():
    def add_ten(state: Bounded) -> dict:
        return {"count": state.count + 10}

    graph = StateGraph(Bounded)
    graph.add_node("add_ten", add_ten)
    graph.add_edge(START, "add_ten")
    graph.add_edge("add_ten", END)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(graph.compile())
    failure = single_failure(excinfo)
    assert failure.kind == "invalid_update"
    assert failure.example == Bounded(count=91)
    assert "less than or equal to 100" in failure.message


def test_check_nodes_reports_an_invariant_broken_only_for_large_counts():
    def speed_up(state: Counter) -> dict:
        step = state.count if state.count >= 1000 else 1  # doubles once the count is large
        return {"count": state.count + step, "log": ["tick"]}

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(speed_up), invariant=steps_by_one)
    failure = single_failure(excinfo)
    assert failure.kind == "invariant"
    assert failure.example.count == 1000
    message = str(excinfo.value)
    assert "node 'work': breaks the invariant (it returned False)" in message
    assert "minimal state: Counter(count=1000, log=[])" in message
    assert "update: {'count': 2000, 'log': ['tick']}" in message


def test_check_nodes_reports_a_node_changing_its_input_in_place():
    def appends_in_place(state: Counter) -> dict:
        state.log.append("oops")
        return {"count": state.count + 1}

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(appends_in_place))
    failure = single_failure(excinfo)
    assert failure.kind == "mutation"
    assert "changed its input in place (changed: log)" in failure.message


def test_check_nodes_reports_an_exception_unless_allowed_or_captured():
    class Flaky(Exception):
        pass

    def picky(state: Counter) -> dict:
        if state.count > 5:
            raise Flaky(f"cannot handle {state.count}")
        return increment(state)

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(picky))
    failure = single_failure(excinfo)
    assert failure.kind == "error" and failure.example.count == 6
    assert re.search(r"raised Flaky: cannot handle 6 \(at test_testing_toolkit.py:\d+ in "
                     r"picky\)", failure.message)
    check_nodes(loop_graph(picky), allowed_errors=(Flaky,))

    class WithErrors(Counter):
        errors: Annotated[list[NodeFailure], operator.add] = []

    graph = StateGraph(WithErrors)
    graph.add_node("work", picky, on_error="capture")
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    check_nodes(graph.compile(), states=states(WithErrors, errors=[]))


def test_check_nodes_reports_every_faulty_node_and_router_at_once():
    def typo(state: Counter) -> dict:
        return {"cuont": 1}

    def route(state: Counter) -> str:
        return "stop"

    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(typo, route))
    assert [f.kind for f in excinfo.value.failures] == ["unknown_field", "invalid_route"]
    assert str(excinfo.value).startswith("check_nodes found 2 problems in CounterGraph:")


def test_check_nodes_checks_commands_against_the_declared_destinations():
    def decide(state: Counter) -> Command:
        target = "review" if state.count < 5 else "publish"
        return Command(update={"count": state.count + 1}, goto=target)

    graph = StateGraph(Counter)
    graph.add_node("decide", decide, destinations=("review", END))
    graph.add_node("review", lambda state: None)
    graph.add_node("publish", lambda state: None)
    graph.add_edge(START, "decide")
    graph.add_edge(START, "publish")
    graph.add_edge("review", END)
    graph.add_edge("publish", END)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(graph.compile())
    failure = single_failure(excinfo)
    assert failure.kind == "invalid_command" and failure.example.count == 5
    assert "Command(goto='publish'), but its declared destinations are ['review', '__end__']" \
        in failure.message


class Doc(BaseModel):
    title: str = Field(max_length=20)
    words: int = Field(ge=0)


class Library(BaseModel):
    docs: list[Doc] = []
    summaries: Annotated[list[str], operator.add] = []


def test_check_nodes_feeds_send_nodes_payloads_of_their_annotated_type():
    calls: list[Any] = []

    def fan_out(state: Library) -> list[Send]:
        return [Send("summarize", doc) for doc in state.docs]

    def summarize(doc: Doc) -> dict:
        calls.append(doc)
        if doc.words > 500:
            return {"summaries": [doc.title], "pages": doc.words // 500}  # not a field
        return {"summaries": [doc.title]}

    graph = StateGraph(Library)
    graph.add_node("summarize", summarize)
    graph.add_conditional_edges(START, fan_out, ["summarize"])
    graph.add_edge("summarize", END)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(graph.compile())
    failure = single_failure(excinfo)
    assert failure.example_label == "payload"
    assert failure.example == Doc(title="", words=501)
    assert "unknown field 'pages'" in failure.message
    assert all(isinstance(doc, Doc) for doc in calls)
    # explicit payloads override the annotation
    check_nodes(graph.compile(), payloads={"summarize": st.builds(Doc, title=st.just("t"),
                                                                  words=st.integers(0, 500))})


def test_check_nodes_handles_async_nodes_context_and_events_and_skips_subgraphs():
    async def async_step(state: Counter) -> dict:
        await asyncio.sleep(0)
        return increment(state)

    contexts: list[RunContext] = []

    def with_context(state: Counter, context: RunContext) -> dict:
        contexts.append(context)
        return {"log": [context.node]}

    def approve(state: Counter) -> dict:
        decision = wait_for("approval")
        return {"log": ["approved" if decision else "rejected"]}

    inner = loop_graph()
    graph = StateGraph(Counter)
    graph.add_node("async_step", async_step)
    graph.add_node("with_context", with_context)
    graph.add_node("approve", approve)
    graph.add_node("inner", inner)
    graph.add_edge(START, "async_step")
    graph.add_edge("async_step", "with_context")
    graph.add_edge("with_context", "approve")
    graph.add_edge("approve", "inner")
    graph.add_edge("inner", END)
    app = graph.compile(checkpointer=MemoryCheckpointer())
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(app)
    failure = single_failure(excinfo)
    assert (failure.subject, failure.kind) == ("node 'approve'", "needs_event")
    assert "events={'approval': <strategy of its values>}" in failure.message
    check_nodes(app, events={"approval": st.booleans()}, max_examples=10)
    assert contexts and all(c.node == "with_context" for c in contexts)
    with pytest.raises(TypeError, match="unknown node 'aprove'"):
        check_nodes(app, skip=["aprove"])


def test_check_nodes_reports_unstorable_values_when_the_graph_has_a_checkpointer():
    class Blob(BaseModel):
        value: Any = None

    graph = StateGraph(Blob)
    graph.add_node("store", lambda state: {"value": object()})
    graph.add_edge(START, "store")
    graph.add_edge("store", END)
    check_nodes(graph.compile())  # in memory anything goes
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(graph.compile(checkpointer=MemoryCheckpointer()))
    assert single_failure(excinfo).kind == "unstorable"


def test_check_nodes_respects_max_examples():
    calls = []

    def counted(state: Counter) -> dict:
        calls.append(state)
        return increment(state)

    check_nodes(loop_graph(counted), max_examples=5)
    assert 1 <= len(calls) <= 5


def test_preserves_ignores_states_that_do_not_satisfy_the_property():
    def halve(state: Counter) -> dict:
        return {"count": state.count // 2}

    is_even = preserves(lambda s: s.count % 2 == 0)
    assert is_even(Counter(count=3), Counter(count=1))  # odd before: nothing to preserve
    with pytest.raises(PropertyCheckError) as excinfo:
        check_nodes(loop_graph(halve), invariant=is_even)
    assert single_failure(excinfo).example.count == 2  # 2 // 2 == 1 is odd


# -- check_runs -----------------------------------------------------------------------------------

def test_check_runs_passes_when_every_run_ends_well():
    check_runs(loop_graph(), inputs=SMALL_COUNTS, invariant=steps_by_one,
               final=lambda s: s.count == max(10, s.count) and s.count <= 13)
    quickstart = load_example("quickstart")
    check_runs(quickstart.app, inputs=st.builds(dict, count=st.integers(0, 5)),
               final=lambda s: s.count >= 3)


def test_check_runs_reports_a_loop_that_never_ends_for_some_inputs():
    def until_exactly_ten(state: Counter) -> str:
        return "done" if state.count == 10 else "again"  # overshoots from 10 on

    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(router=until_exactly_ten), max_steps=40)
    failure = single_failure(excinfo)
    assert failure.kind == "non_termination"
    assert failure.example == Counter(count=10, log=[])
    message = str(excinfo.value)
    assert "the run did not end within max_steps=40 steps (still due: 'work')" in message
    assert "minimal input: Counter(count=10, log=[])" in message


def test_check_runs_reports_the_minimal_input_breaking_an_invariant():
    def speed_up(state: Counter) -> dict:
        return {"count": state.count * 2 if state.count >= 5 else state.count + 1,
                "log": ["tick"]}

    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(speed_up), invariant=steps_by_one)
    failure = single_failure(excinfo)
    assert failure.kind == "invariant"
    assert failure.example.count == 0  # every run from 0 reaches 5, then doubles
    assert "step 5 (work) breaks the invariant" in failure.message
    assert dict(failure.details)["path"] == "START -> work -> work -> work -> work -> work -> work"


def test_check_runs_reports_a_bad_final_state_and_errors_inside_runs():
    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(), inputs=SMALL_COUNTS, final=lambda s: s.count == 10)
    failure = single_failure(excinfo)
    assert failure.kind == "final" and failure.example.count == 10  # ends at 11

    def fragile(state: Counter) -> dict:
        if state.count == 7:
            raise ZeroDivisionError("seven")
        return increment(state)

    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(fragile), inputs=SMALL_COUNTS)
    failure = single_failure(excinfo)
    assert failure.kind == "error" and failure.example.count == 0
    assert "the run raised ZeroDivisionError: seven" in failure.message


def test_check_runs_reports_invalid_routes_and_in_place_changes():
    def route(state: Counter) -> str:
        return "again" if state.count < 3 else "finish"

    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(router=route), inputs=SMALL_COUNTS)
    failure = single_failure(excinfo)
    assert failure.kind == "invalid_route" and failure.example.count == 0
    assert "returned 'finish'" in failure.message

    def sneaky(state: Counter) -> dict:
        if state.count == 2:
            state.log.append("sneaky")
        return increment(state)

    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(loop_graph(sneaky), inputs=SMALL_COUNTS)
    failure = single_failure(excinfo)
    assert failure.kind == "mutation" and failure.example.count == 0
    assert "(at step 2)" in failure.message


def test_check_runs_delivers_events_ignores_interrupts_and_never_sleeps():
    attempts: dict[int, int] = {}

    def flaky_fetch(state: Counter) -> dict:
        attempts[state.count] = attempts.get(state.count, 0) + 1
        if attempts[state.count] % 2:
            raise ConnectionError("try again")
        return {"log": ["fetched"]}

    def approve(state: Counter) -> dict:
        return {"count": state.count + (1 if wait_for("approval") else 0)}

    graph = StateGraph(Counter)
    graph.add_node("fetch", flaky_fetch,
                   retry=RetryPolicy(max_attempts=3, initial_interval=60, jitter=False))
    graph.add_node("approve", approve)
    graph.add_edge(START, "fetch")
    graph.add_edge("fetch", "approve")
    graph.add_edge("approve", END)
    app = graph.compile(checkpointer=MemoryCheckpointer(), interrupt_before=["approve"])
    check_runs(app, inputs=SMALL_COUNTS, events={"approval": st.booleans()},
               final=lambda s: s.log[-1:] == ["fetched"], max_examples=10)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_runs(app, inputs=SMALL_COUNTS, max_examples=5)
    assert single_failure(excinfo).kind == "needs_event"


# -- transition_machine ---------------------------------------------------------------------------

QUICKSTART = load_example("quickstart")
TestQuickstartTransitions = transition_machine(
    QUICKSTART.app, invariant=steps_by_one,
    states=states(QUICKSTART.State, count=st.integers(0, 5))).TestCase


class LoopTransitions(GraphStateMachine):
    app = loop_graph()
    initial_states = SMALL_COUNTS

    def check_step(self, before, after):
        return None if after.count == before.count + 1 else "the count must grow by one"


TestLoopTransitions = LoopTransitions.TestCase


def test_transition_machine_shrinks_a_failing_path_to_the_shortest_one():
    def wraps_at_three(state: Counter) -> dict:  # breaks the invariant on its 4th visit
        return {"count": 0 if len(state.log) >= 3 else state.count + 1, "log": ["x"]}

    def never_loops(state: Counter) -> str:
        return "done"

    app = loop_graph(wraps_at_three, never_loops)
    check_transitions(app, states=states(Counter, log=[]), invariant=steps_by_one)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_transitions(app, states=states(Counter, log=[]), invariant=steps_by_one,
                          routes="any", max_examples=100)
    failure = single_failure(excinfo)
    assert failure.kind == "invariant"
    assert failure.example == Counter(count=0, log=[])
    details = dict(failure.details)
    assert details["path"] == "START -> work -> work -> work -> work"
    assert details["routes chosen"].count("'again'") == 3
    assert "step 3 (work) breaks the invariant" in failure.message


def test_transition_machine_follows_routers_and_reports_unknown_routes():
    def route(state: Counter) -> str:
        return "again" if state.count < 4 else "halt"

    with pytest.raises(PropertyCheckError) as excinfo:
        check_transitions(loop_graph(router=route), states=SMALL_COUNTS)
    failure = single_failure(excinfo)
    assert failure.kind == "invalid_route"
    assert failure.example.count == 3  # the shortest path: one step, from 3 to 4
    assert dict(failure.details)["path"] == "START"
    assert "returned 'halt'" in failure.message


# -- check_resume ---------------------------------------------------------------------------------

class Shop(BaseModel):
    items: list[str] = Field(default_factory=list, max_length=4)
    packed: Annotated[list[str], operator.add] = []
    checked: bool = False
    total: int = 0


def pipeline_graph(**compile_options):
    def fan_out(state: Shop) -> list[Send]:
        return [Send("pack", item) for item in state.items] or ["check"]

    def pack(item: str) -> dict:
        return {"packed": [item.upper()]}

    def check(state: Shop) -> dict:
        return {"checked": True}

    def count(state: Shop) -> dict:
        return {"total": len(state.packed)}

    graph = StateGraph(Shop)
    for name, fn in (("pack", pack), ("check", check), ("count", count)):
        graph.add_node(name, fn)
    graph.add_conditional_edges(START, fan_out, ["pack", "check"])
    graph.add_edge(START, "check")
    graph.add_edge(["check"], "count")
    graph.add_edge("pack", "count")
    graph.add_edge("count", END)
    return graph.compile(**compile_options)


def test_check_resume_passes_on_resume_safe_graphs():
    check_resume(loop_graph(), inputs=SMALL_COUNTS)
    check_resume(pipeline_graph(), inputs=states(Shop, packed=[], total=st.just(0)))
    example = load_example("resume_after_crash")
    example.gateway.online = True  # charge keys its side effect on context.task_id
    check_resume(example.graph.compile(), inputs=st.just(example.ORDER), max_examples=10)


def test_check_resume_also_runs_on_sqlite():
    check_resume(loop_graph(), inputs=SMALL_COUNTS, storage="sqlite", max_examples=5)


VISITS = 0


def test_check_resume_reports_a_node_that_is_not_resume_safe():
    def open_session(state: Counter) -> dict:
        global VISITS
        VISITS = 0  # a per-run counter kept outside the state
        return {"log": ["session"]}

    def visit(state: Counter) -> dict:
        global VISITS
        VISITS += 1
        return {"count": state.count + VISITS}

    graph = StateGraph(Counter)
    graph.add_node("open_session", open_session)
    graph.add_node("visit", visit)
    graph.add_edge(START, "open_session")
    graph.add_edge("open_session", "visit")
    graph.add_edge("visit", END)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_resume(graph.compile())
    failure = single_failure(excinfo)
    assert (failure.subject, failure.kind) == ("node 'visit'", "not_resume_safe")
    assert failure.example == Counter(count=0, log=[])
    assert "right after node 'visit' returned, before the step was committed" in \
        failure.message
    assert "it returned {'visit': {'count': 2}} after the resume, but {'visit': {'count': 1}} " \
        "in the uninterrupted run" in failure.message


TOTAL_VISITS = 0


def test_check_resume_reports_a_node_reading_back_a_global_counter():
    def visit(state: Counter) -> dict:
        global TOTAL_VISITS
        TOTAL_VISITS += 1
        return {"count": TOTAL_VISITS}

    graph = StateGraph(Counter)
    graph.add_node("visit", visit)
    graph.add_edge(START, "visit")
    graph.add_edge("visit", END)
    with pytest.raises(PropertyCheckError) as excinfo:
        check_resume(graph.compile())
    failure = single_failure(excinfo)
    assert (failure.subject, failure.kind) == ("node 'visit'", "nondeterministic")
    assert failure.example == Counter(count=0, log=[])
    assert "two uninterrupted runs of the same input differ at step 0" in failure.message


def test_check_resume_reports_runs_that_fail_without_any_crash():
    with pytest.raises(PropertyCheckError) as excinfo:
        check_resume(loop_graph(router=lambda s: "again"), inputs=SMALL_COUNTS, max_steps=20)
    failure = single_failure(excinfo)
    assert failure.kind == "run_failed" and "StepLimitError" in failure.message


# -- packaging ------------------------------------------------------------------------------------

def test_without_hypothesis_the_library_works_and_the_toolkit_says_what_to_install():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import statemachine, checkpoints\n"
            "try:\n    import statemachine.testing\n"
            "except ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'statemachine[testing]'" in result.stdout


# -- the example a user would copy ----------------------------------------------------------------

def test_the_property_testing_example_passes_under_pytest():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.conftest",  # the bounded hypothesis profile of this suite
         "examples/test_pipeline_properties.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b\d+ passed\b", result.stdout)


def test_check_resume_passes_when_a_subgraph_node_keys_its_state_on_its_task_id():
    """A resumed run commits checkpoints the uninterrupted one does not, which renames a
    later subgraph's thread: the check compares the runs by each task's place, subgraph
    tasks included, so a node that records its task id is still resume-safe."""
    from statemachine import RunContext
    from statemachine.testing import check_resume

    class Refs(BaseModel):
        n: int = 0
        refs: Annotated[list[str], operator.add] = []

    def pay(state: Refs, context: RunContext) -> dict:
        return {"refs": [context.task_id]}

    inner = StateGraph(Refs)
    inner.add_node("pay", pay)
    inner.add_edge(START, "pay")
    inner.add_edge("pay", END)
    g = StateGraph(Refs)
    g.add_node("pre", lambda state: {"n": state.n + 1})
    g.add_node("checkout", inner.compile(name="inner"))
    g.add_edge(START, "pre")
    g.add_edge("pre", "checkout")
    g.add_edge("checkout", END)
    check_resume(g.compile(name="shop"), inputs=st.builds(Refs, n=st.just(0)), max_examples=30)


def test_the_checkers_answer_interrupts_from_a_strategy():
    from typing import Annotated as Ann

    from statemachine import interrupt
    from statemachine.testing import check_nodes, check_resume, check_runs, check_transitions

    class Review(BaseModel):
        approved: Ann[list[bool], operator.add] = []

    def review(state: Review) -> dict:
        verdict = interrupt("approve?")
        assert verdict in ("yes", "no"), "answers are yes or no"
        return {"approved": [verdict == "yes"]}

    g = StateGraph(Review)
    g.add_node("review", review)
    g.add_edge(START, "review")
    g.add_edge("review", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    answers = st.sampled_from(["yes", "no"])
    check_nodes(app, answers=answers, max_examples=5)
    check_runs(app, answers=answers, max_examples=5)
    check_resume(app, answers=answers, max_examples=5)
    check_transitions(app, answers=answers, max_examples=5)
    with pytest.raises(PropertyCheckError, match=r"asks with interrupt\(\), and no answers "
                                                 r"were given: pass answers="):
        check_runs(app, max_examples=5)
    with pytest.raises(PropertyCheckError, match="answers are yes or no"):
        check_runs(app, answers=st.text(max_size=3), max_examples=50)
