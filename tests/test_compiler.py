"""The compiler: one test per problem code, all problems reported at once, Literal routers,
the path-map warning, and the networkx view of a compiled graph."""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import networkx as nx
import pytest
from pydantic import BaseModel, Secret, SecretBytes, SecretStr
from typing_extensions import TypedDict

from statemachine import (
    END,
    START,
    GraphValidationError,
    Problem,
    RouterWithoutPathMapWarning,
    StateGraph,
    StateMachineError,
)


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []


def work(state: State) -> dict[str, Any]:
    return {"count": state.count + 1, "log": [f"step {state.count}"]}


def noop(state: State) -> None:
    return None


def route(state: State) -> str:
    return "done" if state.count >= 3 else "again"


def route_literal(state: State) -> Literal["work", "__end__"]:
    return "__end__"


def route_literal_unknown(state: State) -> Literal["work", "wokr"]:
    return "work"


def route_fanout(state: State) -> list[Literal["a", "b"]]:
    return ["a", "b"]


def route_anywhere(state: State) -> str:
    return END


def problems_of(g: StateGraph, **kwargs: Any) -> list[Problem]:
    with pytest.raises(GraphValidationError) as info:
        g.compile(**kwargs)
    return info.value.problems


def only(problems: list[Problem], code: str) -> Problem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, problems
    return found[0]


def valid_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route, {"again": "work", "done": END})
    return g


# -- success cases --------------------------------------------------------------------------------


def test_quickstart_graph_compiles_and_lists_nodes_in_declaration_order():
    g = valid_graph()
    g.add_node("second", noop)
    g.add_edge("work", "second")
    g.add_edge("second", END)
    app = g.compile()
    assert app.nodes == ("work", "second")
    assert app.state_schema is State


def test_add_node_with_only_a_function_names_the_node_after_it():
    g = StateGraph(State)
    assert g.add_node(work) is g  # chainable
    g.add_edge(START, "work").add_edge("work", END)
    assert g.compile().nodes == ("work",)


def test_compile_does_not_call_nodes_or_routers():
    calls: list[str] = []

    def node(state: State) -> None:
        calls.append("node")

    def router(state: State) -> Literal["node", "__end__"]:
        calls.append("router")
        return END

    g = StateGraph(State)
    g.add_node(node)
    g.add_edge(START, "node")
    g.add_conditional_edges("node", router)
    g.compile()
    assert calls == []


def test_nodes_with_optional_or_variadic_extra_parameters_compile():
    def with_default(state: State, tag: str = "x") -> None: ...
    def with_varargs(*args: Any) -> None: ...
    def with_context(state: State, context: Any) -> None: ...
    def with_optional_kwonly(state: State, *, flag: bool = False) -> None: ...

    g = StateGraph(State)
    for fn in (with_default, with_varargs, with_context, with_optional_kwonly):
        g.add_node(fn)
    g.add_edge(START, "with_default")
    g.add_edge("with_default", "with_varargs")
    g.add_edge("with_varargs", "with_context")
    g.add_edge("with_context", "with_optional_kwonly")
    g.add_edge("with_optional_kwonly", END)
    assert len(g.compile().nodes) == 4


def test_conditional_edges_may_start_at_START():
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_conditional_edges(START, lambda s: "work", ["work", END])
    g.add_edge("work", END)
    digraph = g.compile().to_networkx()
    assert digraph.has_edge(START, "work") and digraph.has_edge(START, END)


def test_graph_with_no_nodes_but_START_to_END_compiles_and_returns_the_input():
    g = StateGraph(State)
    g.add_edge(START, END)
    assert g.compile().invoke({"count": 7}).count == 7


# -- Literal routers and the path-map warning -----------------------------------------------------


def test_router_literal_return_annotation_is_read_as_its_path_map():
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", route_literal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RouterWithoutPathMapWarning
        app = g.compile()
    digraph = app.to_networkx()
    assert set(digraph.successors("work")) == {"work", END}
    assert digraph.edges["work", END]["kind"] == "conditional"


def test_router_list_of_literal_annotation_is_read_as_fanout_targets():
    g = StateGraph(State)
    g.add_node("split", noop)
    g.add_node("a", noop)
    g.add_node("b", noop)
    g.add_edge(START, "split")
    g.add_conditional_edges("split", route_fanout)
    g.add_edge("a", END)
    g.add_edge("b", END)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        digraph = g.compile().to_networkx()
    assert set(digraph.successors("split")) == {"a", "b"}


def test_router_without_path_map_or_literal_warns_and_may_reach_every_node_and_END():
    g = StateGraph(State)
    g.add_node("a", noop)
    g.add_node("b", noop)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", route_anywhere)
    g.add_edge("b", END)
    with pytest.warns(RouterWithoutPathMapWarning, match="route_anywhere"):
        app = g.compile()
    assert set(app.to_networkx().successors("a")) == {"a", "b", END}


def test_router_warning_points_at_the_users_compile_call():
    g = StateGraph(State)
    g.add_node("a", noop)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", route_anywhere)
    with pytest.warns(RouterWithoutPathMapWarning) as caught:
        g.compile()
    assert caught[0].filename == __file__


def test_router_with_a_path_map_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        valid_graph().compile()


# -- one test per problem code --------------------------------------------------------------------


def test_schema_not_model_when_state_is_not_a_pydantic_model():
    @dataclass
    class NotAModel:
        count: int = 0

    g = StateGraph(NotAModel)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_edge("work", END)
    problem = only(problems_of(g), "schema_not_model")
    assert "pydantic model" in problem.message
    assert "NotAModel" in problem.message
    assert problem.hint and "BaseModel" in problem.hint


def test_schema_not_model_for_a_model_instance_or_dict():
    for schema in (dict, State()):
        g = StateGraph(schema)  # type: ignore[arg-type]
        g.add_edge(START, END)
        assert [p.code for p in problems_of(g)] == ["schema_not_model"]


def test_invalid_reducer_that_does_not_take_two_arguments():
    def one_arg(current: list[str]) -> list[str]:
        return current

    class Bad(BaseModel):
        items: Annotated[list[str], one_arg] = []

    g = StateGraph(Bad)
    g.add_edge(START, END)
    problem = only(problems_of(g), "invalid_reducer")
    assert "one_arg" in problem.message
    assert "'items'" in problem.message
    assert "two arguments" in problem.message


def test_invalid_reducer_when_a_field_declares_two_reducers():
    class Bad(BaseModel):
        items: Annotated[list[str], operator.add, operator.concat] = []

    g = StateGraph(Bad)
    g.add_edge(START, END)
    problem = only(problems_of(g), "invalid_reducer")
    assert "'items'" in problem.message
    assert "2 reducers" in problem.message


def test_reserved_name_for_START_END_empty_and_non_text_names():
    g = StateGraph(State)
    g.add_node(START, noop)
    g.add_node(END, noop)
    g.add_node("", noop)
    g.add_node(42, noop)  # type: ignore[arg-type]
    g.add_node("ok", noop)
    g.add_edge(START, "ok")
    g.add_edge("ok", END)
    problems = problems_of(g)
    reserved = [p for p in problems if p.code == "reserved_name"]
    assert len(reserved) == 4
    assert "reserved" in reserved[0].message and repr(START) in reserved[0].message
    assert "reserved" in reserved[1].message and repr(END) in reserved[1].message
    assert "''" in reserved[2].message
    assert "42" in reserved[3].message
    assert {p.code for p in problems} == {"reserved_name"}


def test_duplicate_node_names_the_duplicate():
    g = valid_graph()
    g.add_node("work", noop)
    problem = only(problems_of(g), "duplicate_node")
    assert problem.nodes == ("work",)
    assert "more than once" in problem.message
    assert g.nodes["work"] is work  # the first declaration wins


def test_node_not_callable():
    g = StateGraph(State)
    g.add_node("work", 5)  # type: ignore[arg-type]
    g.add_node("missing")  # no function at all
    g.add_edge(START, "work")
    g.add_edge("work", "missing")
    g.add_edge("missing", END)
    problems = problems_of(g)
    assert [p.code for p in problems] == ["node_not_callable", "node_not_callable"]
    assert problems[0].nodes == ("work",) and "5" in problems[0].message
    assert problems[1].nodes == ("missing",) and "None" in problems[1].message


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda: None, "no positional parameter"),
        (lambda state, ctx, extra: None, "requires 3 positional parameters"),
        (lambda state, *, key: None, "keyword-only"),
    ],
    ids=["no_params", "three_required", "required_kwonly"],
)
def test_bad_signature_for_a_node_that_cannot_take_the_state(fn, why):
    g = StateGraph(State)
    g.add_node("node", fn)
    g.add_edge(START, "node")
    g.add_edge("node", END)
    problem = only(problems_of(g), "bad_signature")
    assert problem.nodes == ("node",)
    assert why in problem.message
    assert "'node'" in problem.message


def test_bad_signature_for_a_router_that_is_not_callable_or_takes_no_state():
    g = StateGraph(State)
    g.add_node("a", noop)
    g.add_node("b", noop)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_conditional_edges("a", "not a function", ["a", END])  # type: ignore[arg-type]
    g.add_conditional_edges("b", lambda: END, ["b", END])
    g.add_edge("a", END)
    g.add_edge("b", END)
    problems = [p for p in problems_of(g) if p.code == "bad_signature"]
    assert [p.nodes for p in problems] == [("a",), ("b",)]
    assert "not callable" in problems[0].message
    assert "router" in problems[1].message and "no positional parameter" in problems[1].message


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda g: g.add_edge("work", START), "'__start__'"),
        (lambda g: g.add_edge(END, "work"), "'__end__'"),
        (lambda g: g.add_edge([START, "work"], "work"), "'__start__'"),
        (lambda g: g.add_edge([], "work"), "joins no sources"),
        (lambda g: g.add_conditional_edges("work", route, {"x": START}), "'__start__'"),
    ],
    ids=["into_start", "out_of_end", "start_in_join", "empty_join", "path_map_to_start"],
)
def test_invalid_edge(build, fragment):
    g = valid_graph()
    build(g)
    problem = only(problems_of(g), "invalid_edge")
    assert fragment in problem.message


def test_unknown_node_suggests_the_closest_name():
    g = valid_graph()
    g.add_edge("wrok", END)
    problem = only(problems_of(g), "unknown_node")
    assert problem.nodes == ("wrok",)
    assert "did you mean 'work'?" in problem.message
    assert problem.hint == "use 'work'."


def test_unknown_node_without_a_close_name_lists_the_known_nodes():
    g = valid_graph()
    g.add_edge("work", "zzzzzz")
    problem = only(problems_of(g), "unknown_node")
    assert "did you mean" not in problem.message
    assert problem.hint and "add_node('zzzzzz'" in problem.hint and "work" in problem.hint


@pytest.mark.parametrize(
    "build",
    [
        lambda g: g.add_conditional_edges("work", route, {"again": "wokr", "done": END}),
        lambda g: g.add_conditional_edges("work", route, ["wokr", END]),
        lambda g: g.add_conditional_edges("work", route_literal_unknown),
        lambda g: g.add_edge(["work", "wokr"], END),
        lambda g: g.add_conditional_edges("wokr", route, ["work"]),
    ],
    ids=["dict_path_map", "list_path_map", "literal", "join_source", "branch_source"],
)
def test_unknown_node_in_path_maps_literals_joins_and_branch_sources(build):
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_edge("work", END)
    build(g)
    problem = only(problems_of(g), "unknown_node")
    assert problem.nodes in {("wokr",), ("wokr",)}
    assert "did you mean 'work'?" in problem.message


def test_unknown_node_in_interrupts():
    problem = only(problems_of(valid_graph(), interrupt_before=["wokr"]), "unknown_node")
    assert "interrupt_before" in problem.message
    assert "did you mean 'work'?" in problem.message


@pytest.mark.parametrize("path_map", ["work", 5, object()], ids=["str", "int", "object"])
def test_invalid_path_map_that_is_not_a_dict_or_list(path_map):
    g = valid_graph()
    g.add_conditional_edges("work", route, path_map)
    problem = only(problems_of(g), "invalid_path_map")
    assert problem.nodes == ("work",)
    assert type(path_map).__name__ in problem.message


def test_no_entry_when_nothing_leaves_START():
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge("work", END)
    problem = only(problems_of(g), "no_entry")
    assert "START" in problem.message
    assert problem.hint == "add add_edge(START, 'work')."


def test_unreachable_node():
    g = valid_graph()
    g.add_node("island", noop)
    g.add_edge("island", END)
    problem = only(problems_of(g), "unreachable_node")
    assert problem.nodes == ("island",)
    assert "'island'" in problem.message


def test_dead_end_node_without_outgoing_edge():
    g = valid_graph()
    g.add_node("stuck", noop)
    g.add_edge("work", "stuck")
    problem = only(problems_of(g), "dead_end")
    assert problem.nodes == ("stuck",)
    assert problem.hint == "add add_edge('stuck', END) if the run should stop after it."


def test_no_path_to_end_for_a_loop_without_exit_includes_nodes_leading_into_it():
    g = StateGraph(State)
    for name in ("entry", "a", "b"):
        g.add_node(name, noop)
    g.add_edge(START, "entry")
    g.add_edge("entry", "a")
    g.add_edge("a", "b")
    g.add_edge("b", "a")
    problem = only(problems_of(g), "no_path_to_end")
    assert problem.nodes == ("entry", "a", "b")
    assert "a loop with no way out" in problem.message


def test_no_path_to_end_for_a_self_loop():
    g = StateGraph(State)
    g.add_node("spin", noop)
    g.add_edge(START, "spin")
    g.add_edge("spin", "spin")
    problem = only(problems_of(g), "no_path_to_end")
    assert problem.nodes == ("spin",)
    assert "loop" in problem.message


def test_secret_field_refuses_pydantic_secrets_anywhere_in_the_state():
    @dataclass
    class Key:
        material: SecretBytes

    class Login(BaseModel):
        user: str = ""
        password: SecretStr = SecretStr("")

    class Vault(TypedDict):
        pin: Secret[int]

    class Leaky(BaseModel):
        count: int = 0
        api_key: SecretStr | None = None
        tokens: Annotated[list[SecretStr], operator.add] = []
        logins: dict[str, tuple[int, Login]] = {}
        key: Optional[Key] = None  # noqa: UP045 - typing.Optional, as older code spells it
        vaults: list[Vault] = []
        pinned: Annotated[SecretBytes | None, "doc"] = None
        plain: dict[str, Any] = {}

    g = StateGraph(Leaky)
    g.add_node("work", noop)
    g.add_edge(START, "work")
    g.add_edge("work", END)
    found = [p for p in problems_of(g) if p.code == "secret_field"]
    # data first: the field path, then the type
    assert [p.message.split(":")[0] for p in found] == [
        "field 'api_key' of Leaky is SecretStr",
        "field 'tokens[*]' of Leaky is SecretStr",
        "field 'logins[*][*].password' of Leaky is SecretStr",
        "field 'key.material' of Leaky is SecretBytes",
        "field 'vaults[*].pin' of Leaky is Secret[int]",
        "field 'pinned' of Leaky is SecretBytes"]
    for problem in found:
        assert "'**********'" in problem.message
        assert "plain text in SQLite/PostgreSQL" in (problem.hint or "")
        assert "environment or a secret manager" in (problem.hint or "")


class Job(BaseModel):
    url: str
    token: SecretStr


def fetch(job: Job) -> None:
    return None


def test_secret_field_refuses_a_send_payload_type_holding_a_secret():
    g = StateGraph(State)
    g.add_node("work", noop)
    g.add_node("fetch", fetch)
    g.add_edge(START, "work")
    g.add_edge("work", "fetch")
    g.add_edge("fetch", END)
    problem = only(problems_of(g), "secret_field")
    assert problem.nodes == ("fetch",)
    assert problem.message.startswith(
        "the Send payload of node 'fetch' (its parameter's type, at 'payload.token') is "
        "SecretStr:")


def test_secret_fields_are_reported_with_every_other_problem():
    class Leaky(BaseModel):
        password: SecretStr = SecretStr("")

    g = StateGraph(Leaky)
    g.add_node("work", noop)
    g.add_node("island", noop)
    g.add_edge(START, "work")
    assert set(GraphValidationError(problems_of(g)).codes) == {
        "secret_field", "dead_end", "unreachable_node"}


# -- all problems at once -------------------------------------------------------------------------


def test_compile_reports_every_problem_of_a_broken_graph_at_once():
    def one_arg(current: int) -> int:
        return current

    class Broken(BaseModel):
        n: Annotated[int, one_arg] = 0

    g = StateGraph(Broken)
    g.add_node("a", noop)
    g.add_node("a", noop)  # duplicate_node
    g.add_node("b", 123)  # type: ignore[arg-type]  # node_not_callable
    g.add_node(END, noop)  # reserved_name
    g.add_node("c", lambda: None)  # bad_signature
    g.add_node("island", noop)  # unreachable_node (and dead_end)
    g.add_edge(START, "a")
    g.add_edge("a", "bb")  # unknown_node
    g.add_edge("a", START)  # invalid_edge
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_conditional_edges("c", route, 3.5)  # type: ignore[arg-type]  # invalid_path_map
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    err = info.value
    expected = {"invalid_reducer", "duplicate_node", "node_not_callable", "reserved_name",
                "bad_signature", "unknown_node", "invalid_edge", "invalid_path_map",
                "unreachable_node", "dead_end"}
    assert expected <= set(err.codes)
    assert err.codes == [p.code for p in err.problems]
    text = str(err)
    assert text.startswith(f"the graph has {len(err.problems)} problems:")
    for problem in err.problems:
        assert str(problem) in text
    assert isinstance(err, ValueError) and isinstance(err, StateMachineError)


def test_problem_str_has_code_message_and_hint():
    problem = Problem("dead_end", "node 'x' has no outgoing edge.", ("x",), "add one.")
    assert str(problem) == "[dead_end] node 'x' has no outgoing edge. Hint: add one."
    assert str(Problem("no_entry", "nothing.")) == "[no_entry] nothing."


def test_single_problem_message_is_singular():
    g = StateGraph(State)
    g.add_node("work", work)
    g.add_edge("work", END)
    with pytest.raises(GraphValidationError, match=r"^the graph has 1 problem:"):
        g.compile()


# -- networkx view --------------------------------------------------------------------------------


def test_to_networkx_includes_start_end_nodes_and_edge_kinds():
    g = StateGraph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, noop)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge(["a", "b"], "c")
    g.add_conditional_edges("c", route, {"again": "a", "done": END})
    digraph = g.compile().to_networkx()
    assert isinstance(digraph, nx.DiGraph)
    assert set(digraph.nodes) == {START, END, "a", "b", "c"}
    assert digraph.nodes[START]["kind"] == "start"
    assert digraph.nodes[END]["kind"] == "end"
    assert digraph.nodes["a"]["kind"] == "node"
    assert digraph.edges[START, "a"]["kind"] == "fixed"
    assert digraph.edges["a", "c"]["kind"] == "join"
    assert digraph.edges["b", "c"]["kind"] == "join"
    assert digraph.edges["c", "a"]["kind"] == "conditional"
    assert digraph.edges["c", "a"]["labels"] == ("again",)
    assert digraph.edges["c", END]["labels"] == ("done",)
    assert nx.has_path(digraph, START, END)


def test_to_networkx_returns_a_copy_that_does_not_change_the_app():
    app = valid_graph().compile()
    digraph = app.to_networkx()
    digraph.remove_node("work")
    digraph.add_edge("x", "y")
    again = app.to_networkx()
    assert "work" in again and "x" not in again
    assert app.invoke({}).count == 3


def test_list_given_as_an_edge_target_is_reported_not_crashed_on():
    g = valid_graph()
    g.add_edge("work", ["work", END])  # type: ignore[arg-type]  # a common mistake
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    assert {"invalid_edge", "unknown_node"} & set(info.value.codes)
