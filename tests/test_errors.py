"""Errors: the hierarchy, and that every message names what went wrong and where (node, field,
step, thread) so it can be fixed without a debugger."""

from __future__ import annotations

import asyncio
import operator
import time
import warnings
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_validator

from statemachine import (
    END,
    START,
    CheckpointError,
    GraphValidationError,
    InvalidRouteError,
    InvalidUpdateError,
    StateGraph,
    StateMachineError,
    StepLimitError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
)


class State(BaseModel):
    count: int = 0
    name: str = ""
    score: int = Field(default=0, ge=0)
    log: Annotated[list[str], operator.add] = []


def single(fn: Any, name: str = "node") -> Any:
    g = StateGraph(State)
    g.add_node(name, fn)
    g.add_edge(START, name)
    g.add_edge(name, END)
    return g.compile()


def parallel(**nodes: Any) -> Any:
    g = StateGraph(State)
    for name, fn in nodes.items():
        g.add_node(name, fn)
        g.add_edge(START, name)
        g.add_edge(name, END)
    return g.compile()


def after_first_step(name: str, fn: Any) -> Any:
    """`first` (a no-op) runs at step 0, then `name` at step 1."""
    g = StateGraph(State)
    g.add_node("first", lambda s: None)
    g.add_node(name, fn)
    g.add_edge(START, "first")
    g.add_edge("first", name)
    g.add_edge(name, END)
    return g.compile()


# -- hierarchy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GraphValidationError, InvalidUpdateError, InvalidRouteError,
                                 StepLimitError, ThreadBusyError, ThreadNotFoundError,
                                 ThreadStateError, CheckpointError])
def test_every_library_error_subclasses_StateMachineError(cls):
    assert issubclass(cls, StateMachineError)


@pytest.mark.parametrize("cls", [GraphValidationError, InvalidUpdateError, InvalidRouteError])
def test_validation_errors_are_also_ValueErrors(cls):
    assert issubclass(cls, ValueError)


def test_step_limit_is_not_a_ValueError():
    assert not issubclass(StepLimitError, ValueError)


# -- InvalidUpdateError: unknown fields -----------------------------------------------------------


def test_unknown_field_lists_known_fields_and_suggests_the_closest():
    app = after_first_step("typo", lambda s: {"cuont": 1})
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="th-unknown")
    err = info.value
    message = str(err)
    assert "node 'typo'" in message
    assert "unknown field 'cuont'" in message
    assert "did you mean 'count'?" in message
    assert "count, name, score, log" in message
    assert "step 1" in message
    assert "thread 'th-unknown'" in message
    assert (err.node, err.field, err.step, err.thread_id) == ("typo", "cuont", 1, "th-unknown")


def test_unknown_field_without_a_close_match_makes_no_suggestion():
    with pytest.raises(InvalidUpdateError) as info:
        single(lambda s: {"zzzzzz": 1}).invoke({})
    assert "did you mean" not in str(info.value)
    assert "unknown field 'zzzzzz'" in str(info.value)


def test_unknown_field_in_the_input_is_rejected_with_the_known_fields():
    with pytest.raises(InvalidUpdateError) as info:
        single(lambda s: None).invoke({"nmae": "x"}, thread_id="th-in")
    message = str(info.value)
    assert "'nmae'" in message and "did you mean 'name'?" in message
    assert "count, name, score, log" in message
    assert "'th-in'" in message
    assert info.value.field == "nmae"


# -- InvalidUpdateError: invalid values -----------------------------------------------------------


def test_invalid_value_names_node_field_step_thread_and_pydantic_reason():
    app = after_first_step("bad_value", lambda s: {"count": "not a number"})
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="th-value")
    err = info.value
    message = str(err)
    assert "node 'bad_value'" in message
    assert "field 'count'" in message
    assert "valid integer" in message  # pydantic's own reason
    assert "'not a number'" in message  # the offending input
    assert "step 1" in message and "thread 'th-value'" in message
    assert (err.node, err.field, err.step, err.thread_id) == ("bad_value", "count", 1, "th-value")
    assert err.__cause__ is not None  # the pydantic ValidationError is kept


def test_field_constraints_are_enforced_on_updates():
    with pytest.raises(InvalidUpdateError) as info:
        single(lambda s: {"score": -1}, "scorer").invoke({})
    assert info.value.field == "score"
    assert "greater than or equal to 0" in str(info.value)


def test_reducer_field_updates_are_validated_before_merging():
    with pytest.raises(InvalidUpdateError) as info:
        single(lambda s: {"log": [1, 2]}, "logger").invoke({})
    assert info.value.field == "log"
    assert "node 'logger'" in str(info.value)


def test_invalid_input_value_is_rejected_with_the_pydantic_reason():
    with pytest.raises(InvalidUpdateError) as info:
        single(lambda s: None).invoke({"score": -5})
    assert info.value.field == "score"
    assert "greater than or equal to 0" in str(info.value)


def test_input_that_is_not_a_dict_or_model_is_rejected():
    with pytest.raises(InvalidUpdateError, match="must be a dict or a State, not list"):
        single(lambda s: None).invoke([("count", 1)])


class Validated(BaseModel):
    amount: int = 0

    @field_validator("amount")
    @classmethod
    def not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("amount must not be negative")
        return value


def test_field_validators_of_the_state_model_apply_to_node_updates():
    g = StateGraph(Validated)
    g.add_node("refund", lambda s: {"amount": -10})
    g.add_edge(START, "refund")
    g.add_edge("refund", END)
    app = g.compile()
    with pytest.raises(InvalidUpdateError, match="must not be negative"):
        app.invoke({"amount": 5})


# -- InvalidUpdateError: wrong return types -------------------------------------------------------


@pytest.mark.parametrize(("value", "type_name"), [([1, 2], "list"), ("count", "str"), (3, "int")])
def test_non_dict_return_names_the_node_and_the_returned_type(value, type_name):
    app = after_first_step("weird", lambda s, value=value: value)
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="th-type")
    message = str(info.value)
    assert f"node 'weird' returned {type_name}" in message
    assert repr(value) in message
    assert "expected a dict of state fields, an instance of State or None" in message
    assert "step 1" in message and "'th-type'" in message
    assert info.value.node == "weird"


def test_returning_an_instance_of_another_model_is_rejected():
    class Other(BaseModel):
        count: int = 0

    with pytest.raises(InvalidUpdateError, match="returned Other"):
        single(lambda s: Other(count=1)).invoke({})


# -- InvalidUpdateError: write conflicts ----------------------------------------------------------


def test_two_nodes_writing_one_field_without_reducer_in_a_step_is_a_conflict():
    app = parallel(alpha=lambda s: {"name": "a"}, beta=lambda s: {"name": "b"})
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({}, thread_id="th-conflict")
    err = info.value
    message = str(err)
    assert "'alpha'" in message and "'beta'" in message
    assert "field 'name'" in message
    assert "no reducer" in message
    assert "step 0" in message and "'th-conflict'" in message
    assert (err.field, err.node, err.step) == ("name", "beta", 0)


def test_conflict_is_reported_even_when_both_nodes_write_the_same_value():
    app = parallel(alpha=lambda s: {"count": 1}, beta=lambda s: {"count": 1})
    with pytest.raises(InvalidUpdateError, match="both wrote field 'count'"):
        app.invoke({})


def test_parallel_writes_to_different_fields_or_a_reducer_field_do_not_conflict():
    app = parallel(alpha=lambda s: {"name": "a", "log": ["a"]},
                   beta=lambda s: {"count": 2, "log": ["b"]})
    assert app.invoke({}) == State(name="a", count=2, log=["a", "b"])


def test_the_same_field_written_in_successive_steps_is_not_a_conflict():
    g = StateGraph(State)
    g.add_node("a", lambda s: {"name": "a"})
    g.add_node("b", lambda s: {"name": "b"})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    assert g.compile().invoke({}).name == "b"


# -- InvalidRouteError ----------------------------------------------------------------------------


def route_graph(router: Any, path_map: Any) -> Any:
    g = StateGraph(State)
    g.add_node("first", lambda s: None)
    g.add_node("decide", lambda s: None)
    g.add_node("yes", lambda s: None)
    g.add_node("no", lambda s: None)
    g.add_edge(START, "first")
    g.add_edge("first", "decide")
    g.add_conditional_edges("decide", router, path_map)
    g.add_edge("yes", END)
    g.add_edge("no", END)
    return g.compile()


def test_invalid_route_with_dict_path_map_shows_returned_value_and_allowed_keys():
    app = route_graph(lambda s: "maybe", {"ok": "yes", "ko": "no"})
    with pytest.raises(InvalidRouteError) as info:
        app.invoke({}, thread_id="th-route")
    err = info.value
    message = str(err)
    assert "returned 'maybe'" in message
    assert "('ok', 'ko')" in message
    assert "after node 'decide'" in message
    assert "step 1" in message and "'th-route'" in message
    assert (err.node, err.returned, err.allowed, err.step, err.thread_id) == \
        ("decide", "maybe", ("ok", "ko"), 1, "th-route")


def test_invalid_route_suggests_the_closest_allowed_route():
    app = route_graph(lambda s: "yess", ["yes", "no"])
    with pytest.raises(InvalidRouteError, match=r"returned 'yess' \(did you mean 'yes'\?\)"):
        app.invoke({})


def literal_router(state: State) -> Literal["yes", "no"]:
    return "nope"  # type: ignore[return-value]


def test_invalid_route_with_literal_annotation_lists_the_literal_values():
    with pytest.raises(InvalidRouteError) as info:
        route_graph(literal_router, None).invoke({})
    assert info.value.allowed == ("no", "yes")
    assert "'literal_router'" in str(info.value)


def test_invalid_route_without_path_map_allows_any_node_or_END():
    with pytest.warns(UserWarning):
        app = route_graph(lambda s: "nowhere", None)
    with pytest.raises(InvalidRouteError) as info:
        app.invoke({})
    assert set(info.value.allowed) == {"first", "decide", "yes", "no", END}
    assert "'nowhere'" in str(info.value)


def test_invalid_route_inside_a_fanout_list_is_reported():
    app = route_graph(lambda s: ["yes", "perhaps"], ["yes", "no"])
    with pytest.raises(InvalidRouteError) as info:
        app.invoke({})
    assert info.value.returned == "perhaps"


def test_router_returning_an_unhashable_value_with_dict_path_map_is_an_invalid_route():
    app = route_graph(lambda s: [["yes"]], {"yes": "yes", "no": "no"})
    with pytest.raises(InvalidRouteError) as info:
        app.invoke({})
    assert info.value.returned == ["yes"]


def test_route_to_a_node_that_is_not_in_the_list_path_map_is_invalid():
    app = route_graph(lambda s: "first", ["yes", "no"])  # a real node, but not declared here
    with pytest.raises(InvalidRouteError):
        app.invoke({})


def test_async_router_errors_are_reported_the_same_way():
    async def aroute(state: State) -> str:
        await asyncio.sleep(0)
        return "maybe"

    with pytest.raises(InvalidRouteError, match="returned 'maybe'"):
        route_graph(aroute, {"ok": "yes", "ko": "no"}).invoke({})


# -- a node's own exceptions ----------------------------------------------------------------------


class PaymentDeclined(Exception):
    pass


def decline(state: State) -> None:
    raise PaymentDeclined("card declined")


async def adecline(state: State) -> None:
    await asyncio.sleep(0)
    raise PaymentDeclined("card declined")


@pytest.mark.parametrize("fn", [decline, adecline], ids=["sync", "async"])
def test_node_exception_keeps_its_type_with_a_note_naming_node_step_and_thread(fn):
    app = after_first_step("charge", fn)
    with pytest.raises(PaymentDeclined, match="card declined") as info:
        app.invoke({}, thread_id="order-7")
    notes = info.value.__notes__
    assert len(notes) == 1
    assert "node 'charge'" in notes[0]
    assert "step 1" in notes[0]
    assert "thread 'order-7'" in notes[0]


@pytest.mark.parametrize("fn", [decline, adecline], ids=["sync", "async"])
async def test_node_exception_keeps_its_type_under_ainvoke_and_astream(fn):
    app = after_first_step("charge", fn)
    with pytest.raises(PaymentDeclined) as info:
        await app.ainvoke({}, thread_id="order-8")
    assert "node 'charge'" in info.value.__notes__[0]
    events = []
    with pytest.raises(PaymentDeclined):
        async for event in app.astream({}):
            events.append(event)
    assert [e.nodes for e in events] == [("first",)]  # the step before the failure was yielded


def test_node_exception_note_without_a_thread_names_node_and_step():
    with pytest.raises(PaymentDeclined) as info:
        single(decline, "charge").invoke({})
    assert info.value.__notes__ == ["raised by node 'charge' at step 0"]


async def test_node_exception_propagates_through_the_sync_api_inside_a_running_loop():
    with pytest.raises(PaymentDeclined) as info:
        single(decline, "charge").invoke({}, thread_id="in-loop")
    assert "thread 'in-loop'" in info.value.__notes__[0]


def exhausted(state: State) -> None:
    next(iter([]))  # a node bug: StopIteration escapes


async def test_sync_node_raising_StopIteration_in_a_worker_thread_fails_instead_of_hanging():
    # StopIteration cannot cross a coroutine (PEP 479) nor be set on a future: it surfaces as
    # the RuntimeError Python makes of it, caused by the original and naming the node
    app = parallel(exhausted=exhausted, fine=lambda s: None)  # parallel: worker threads
    with pytest.raises(RuntimeError) as info:
        await asyncio.wait_for(app.ainvoke({}), timeout=5)
    assert isinstance(info.value.__cause__, StopIteration)
    assert "node 'exhausted'" in info.value.__notes__[-1]


def test_node_raising_StopIteration_inline_fails_the_same_way_as_in_a_thread():
    with pytest.raises(RuntimeError) as info:
        single(exhausted, "exhausted").invoke({})
    assert isinstance(info.value.__cause__, StopIteration)
    assert "node 'exhausted'" in info.value.__notes__[-1]


def test_router_exception_keeps_its_type_with_a_note_naming_router_node_and_step():
    def broken_router(state: State) -> str:
        raise KeyError("missing")

    app = route_graph(broken_router, ["yes", "no"])
    with pytest.raises(KeyError) as info:
        app.invoke({}, thread_id="th-router")
    (note,) = info.value.__notes__
    assert "router 'broken_router'" in note
    assert "node 'decide'" in note
    assert "step 1" in note and "'th-router'" in note


def test_first_failing_node_in_declaration_order_wins_whatever_the_timing():
    def slow_fail(state: State) -> None:
        time.sleep(0.05)
        raise PaymentDeclined("slow, declared first")

    def fast_fail(state: State) -> None:
        raise ValueError("fast, declared second")

    app = parallel(slow=slow_fail, fast=fast_fail)
    with pytest.raises(PaymentDeclined, match="declared first") as info:
        app.invoke({})
    assert "node 'slow'" in info.value.__notes__[0]


def test_a_failing_node_does_not_apply_the_updates_of_its_step():
    def ok(state: State) -> dict[str, Any]:
        return {"log": ["ok"]}

    app = parallel(ok=ok, bad=decline)
    events = []
    with pytest.raises(PaymentDeclined):
        events.extend(app.stream({}))
    assert events == []


# -- other run errors -----------------------------------------------------------------------------


def test_step_limit_error_names_the_next_nodes_the_step_and_the_thread():
    g = StateGraph(State)
    g.add_node("spin", lambda s: {"count": s.count + 1})
    g.add_edge(START, "spin")
    g.add_conditional_edges("spin", lambda s: "spin", ["spin", END])
    with pytest.raises(StepLimitError) as info:
        g.compile().invoke({}, thread_id="th-limit", max_steps=5)
    message = str(info.value)
    assert "max_steps=5" in message
    assert "'spin'" in message
    assert "at step 5" in message
    assert "'th-limit'" in message
    assert info.value.next_nodes == ("spin",)


def test_invoke_with_none_input_and_no_checkpointer_is_a_thread_state_error():
    with pytest.raises(ThreadStateError, match="no checkpointer"):
        single(lambda s: None).invoke(None)


def test_graph_validation_error_is_raised_by_compile_with_all_problems():
    g = StateGraph(State)
    g.add_node("a", lambda s: None)
    g.add_node("b", lambda s: None)
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    assert info.value.codes == ["no_entry"]
    g.add_edge(START, "a")
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    assert info.value.codes == ["unreachable_node", "dead_end", "dead_end"]
    assert [p.nodes for p in info.value.problems] == [("b",), ("a",), ("b",)]


class _Routed(BaseModel):
    n: int = 0


_ROUTES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["yes", "no", "y", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) |
    st.dictionaries(st.sampled_from(["yes", "y"]), inner, max_size=2),
    max_leaves=6)


@pytest.mark.parametrize("path_map", [["yes", "no"], {"y": "yes", "n": "no"}, None],
                         ids=["list", "dict", "none"])
@settings(max_examples=60, deadline=None)
@given(returned=_ROUTES)
def test_whatever_a_router_returns_routes_or_is_an_invalid_route(path_map, returned):
    """A router's answer of any shape (a nested list, a dict, a tuple holding a list) either
    routes or is an InvalidRouteError naming the router and its routes; a list path map with a
    list inside the answer was a bare TypeError."""
    g = StateGraph(_Routed)
    g.add_node("a", lambda s: {"n": 1})
    g.add_node("yes", lambda s: {"n": 2})
    g.add_node("no", lambda s: {"n": 3})
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: returned, path_map)
    g.add_edge("yes", END)
    g.add_edge("no", END)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = g.compile()
    try:
        assert app.invoke({}).n in (1, 2, 3)
    except InvalidRouteError as exc:
        assert "after node 'a'" in str(exc) and "not one of its routes" in str(exc)


def test_every_error_the_library_raises_is_exported_from_the_package():
    """User code catches errors by importing them from `statemachine`: each subclass of
    StateMachineError the library defines is there (CheckpointerRequiredError was not)."""
    import statemachine
    from statemachine import errors

    defined = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.StateMachineError)}
    assert "CheckpointerRequiredError" in defined
    missing = {name for name in defined if getattr(statemachine, name, None) is None}
    assert missing == set()
    assert defined <= set(statemachine.__all__)


# -- errors that name what the user gave (issue 16) --------------------------------------------


@pytest.mark.parametrize("thread_id", [123, 4.5, ("a",), b"t"])
def test_a_thread_id_that_is_not_text_says_so(thread_id):
    from checkpoints import MemoryCheckpointer

    g = StateGraph(State)
    g.add_node("node", lambda s: {"count": 1})
    g.add_edge(START, "node")
    g.add_edge("node", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    with pytest.raises(ThreadStateError, match="thread_id must be text") as info:
        app.invoke({}, thread_id=thread_id)
    assert f"got {type(thread_id).__name__} {thread_id!r}: pass " \
           f"thread_id={str(thread_id)!r}" in str(info.value)
    assert g.compile().invoke({}, thread_id=thread_id).count == 1  # only a label without one


def test_update_state_errors_name_update_state_not_a_pseudo_node():
    from checkpoints import MemoryCheckpointer

    app = StateGraph(State)
    app.add_node("node", lambda s: {"count": 1})
    app.add_edge(START, "node")
    app.add_edge("node", END)
    app = app.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="t")
    for values, message in [({"cuont": 1}, "the update_state() values have unknown field "
                             "'cuont' (did you mean 'count'?)"),
                            ({"score": -1}, "the update_state() values have an invalid value "
                             "for field 'score'"),
                            ([1], "update_state() was given list")]:
        with pytest.raises(InvalidUpdateError) as info:
            app.update_state("t", values)
        assert message in str(info.value) and "__update__" not in str(info.value)
    with pytest.raises(InvalidUpdateError) as info:
        app.invoke({"cuont": 1}, thread_id="t")
    assert "the input has unknown field 'cuont'" in str(info.value)
    assert "__input__" not in str(info.value)


def test_a_failing_send_task_says_which_payload_it_had():
    from statemachine import Send

    def work(item: dict) -> dict:
        if item["n"] == 2:
            raise ValueError("bad item")
        return {"count": item["n"]}

    g = StateGraph(State)
    g.add_node("fan", lambda s: None)
    g.add_node("work", work)
    g.add_edge(START, "fan")
    g.add_conditional_edges("fan", lambda s: [Send("work", {"n": n}) for n in range(3)],
                            ["work"])
    g.add_edge("work", END)
    with pytest.raises(ValueError, match="bad item") as info:
        g.compile().invoke({})
    notes = "\n".join(info.value.__notes__)
    assert "raised by node 'work' at step 1, in the task a Send gave {'n': 2}" in notes
