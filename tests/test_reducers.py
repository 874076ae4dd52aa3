"""Reducers: the stock ones as pure functions, and how the executor merges updates with them.

Properties are checked both on the functions themselves and end to end through a graph, where
each step of a loop (or each node of a parallel step) contributes one update.
"""

from __future__ import annotations

import copy
import operator
from functools import reduce
from itertools import pairwise
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine import END, START, StateGraph, reducers
from statemachine.reducers import append, keep_latest_non_none, merge_dicts, union

ints = st.integers(min_value=-1000, max_value=1000)
small_lists = st.lists(ints, max_size=8)
small_dicts = st.dictionaries(st.text(max_size=3), ints, max_size=6)
small_sets = st.sets(ints, max_size=8)


@st.composite
def splits(draw: st.DrawFn) -> tuple[list[int], list[list[int]]]:
    """A list and an arbitrary split of it into consecutive (possibly empty) chunks."""
    items = draw(st.lists(ints, max_size=12))
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=6)))
    bounds = [0, *cuts, len(items)]
    return items, [items[a:b] for a, b in pairwise(bounds)]


# -- a looping graph that feeds one chunk per step -------------------------------------------


class Chunks(BaseModel):
    chunks: list[list[int]] = []
    i: int = 0
    by_add: Annotated[list[int], operator.add] = []
    by_append: Annotated[list[int], reducers.append] = []
    last: int | None = None
    latest: Annotated[int | None, keep_latest_non_none] = None


def feed(state: Chunks) -> dict[str, Any]:
    chunk = state.chunks[state.i]
    return {"i": state.i + 1, "by_add": chunk, "by_append": chunk}


def more(state: Chunks) -> str:
    return "feed" if state.i < len(state.chunks) else END


def chunk_loop():
    g = StateGraph(Chunks)
    g.add_node(feed)
    g.add_conditional_edges(START, more, ["feed", END])
    g.add_conditional_edges("feed", more, ["feed", END])
    return g.compile()


CHUNK_LOOP = chunk_loop()


@given(splits())
def test_list_reducers_are_associative_over_any_split_of_the_updates(case):
    items, chunks = case
    final = CHUNK_LOOP.invoke({"chunks": chunks})
    assert final.i == len(chunks)
    assert final.by_add == items
    assert final.by_append == items
    # and as pure functions, folding the chunks in any grouping gives the concatenation
    assert reduce(append, chunks, []) == items
    assert reduce(operator.add, chunks, []) == items


@given(splits())
def test_chunks_written_by_parallel_nodes_merge_in_declaration_order(case):
    items, chunks = case
    g = StateGraph(Chunks)
    names = [f"n{k}" for k in range(len(chunks))]
    for name, chunk in zip(names, chunks, strict=True):
        g.add_node(name, lambda _s, chunk=chunk: {"by_add": chunk, "by_append": chunk})
        g.add_edge(START, name)
        g.add_edge(name, END)
    if not chunks:
        g.add_edge(START, END)
    events = list(g.compile().stream({}))
    if chunks:
        assert len(events) == 1  # one superstep
        assert events[0].nodes == tuple(names)
        assert events[0].state.by_add == items
        assert events[0].state.by_append == items
    else:
        assert events == []


# -- replace and keep_latest_non_none through a graph ------------------------------------------


class Writes(BaseModel):
    values: list[int | None] = []
    i: int = 0
    last: int | None = None
    latest: Annotated[int | None, keep_latest_non_none] = None


def write(state: Writes) -> dict[str, Any]:
    value = state.values[state.i]
    return {"i": state.i + 1, "last": value, "latest": value}


def write_more(state: Writes) -> str:
    return "write" if state.i < len(state.values) else END


def writes_loop():
    g = StateGraph(Writes)
    g.add_node(write)
    g.add_edge(START, "write")
    g.add_conditional_edges("write", write_more, ["write", END])
    return g.compile()


WRITES_LOOP = writes_loop()


@given(st.lists(st.none() | ints, min_size=1, max_size=10), st.none() | ints)
def test_field_without_reducer_keeps_the_last_write_and_keep_latest_skips_nones(values, start):
    final = WRITES_LOOP.invoke({"values": values, "last": start, "latest": start})
    assert final.last == values[-1]  # replace: the last write wins, even a None
    non_none = [v for v in values if v is not None]
    assert final.latest == (non_none[-1] if non_none else start)


@given(st.lists(st.none() | ints, max_size=10), st.none() | ints)
def test_keep_latest_non_none_folds_to_the_last_non_none_value(values, start):
    non_none = [v for v in values if v is not None]
    expected = non_none[-1] if non_none else start
    assert reduce(keep_latest_non_none, values, start) == expected


def test_keep_latest_non_none_keeps_falsy_values_that_are_not_none():
    assert keep_latest_non_none(5, 0) == 0
    assert keep_latest_non_none("a", "") == ""
    assert keep_latest_non_none([1], []) == []
    assert keep_latest_non_none(5, None) == 5


# -- append -----------------------------------------------------------------------------------


@given(small_lists, small_lists)
def test_append_concatenates_without_mutating_its_arguments(a, b):
    a0, b0 = list(a), list(b)
    result = append(a, b)
    assert result == a0 + b0
    assert a == a0 and b == b0
    assert result is not a and result is not b
    assert type(result) is list


@given(small_lists, small_lists, small_lists)
def test_append_is_associative(a, b, c):
    assert append(append(a, b), c) == append(a, append(b, c))


@given(small_lists)
def test_append_treats_none_and_empty_as_identity(a):
    for empty in (None, [], ()):
        assert append(a, empty) == a
        assert append(empty, a) == a
        assert append(a, empty) is not a
        assert append(empty, a) is not a
    assert append(None, None) == []


def test_append_accepts_any_sequences_and_returns_a_list():
    assert append((1, 2), (3,)) == [1, 2, 3]
    assert append("ab", ["c"]) == ["a", "b", "c"]


# -- merge_dicts ------------------------------------------------------------------------------


@given(small_dicts, small_dicts)
def test_merge_dicts_is_a_shallow_merge_where_the_update_wins(a, b):
    a0, b0 = dict(a), dict(b)
    merged = merge_dicts(a, b)
    assert merged == {**a0, **b0}
    assert a == a0 and b == b0  # arguments untouched
    assert merged is not a and merged is not b
    for key, value in b.items():
        assert merged[key] == value
    assert set(merged) == set(a) | set(b)


@given(small_dicts, small_dicts, small_dicts)
def test_merge_dicts_is_associative(a, b, c):
    assert merge_dicts(merge_dicts(a, b), c) == merge_dicts(a, merge_dicts(b, c))


@given(small_dicts)
def test_merge_dicts_has_none_and_empty_as_identity(a):
    assert merge_dicts(a, None) == a
    assert merge_dicts(None, a) == a
    assert merge_dicts(a, {}) == a
    assert merge_dicts({}, a) == a
    assert merge_dicts(None, None) == {}


def test_merge_dicts_is_shallow():
    current = {"x": {"a": 1}, "y": 1}
    snapshot = copy.deepcopy(current)
    merged = merge_dicts(current, {"x": {"b": 2}})
    assert merged == {"x": {"b": 2}, "y": 1}  # the nested dict is replaced, not merged
    assert current == snapshot


# -- union ------------------------------------------------------------------------------------


@given(small_sets, small_sets)
def test_union_is_commutative_and_equals_set_union(a, b):
    a0, b0 = set(a), set(b)
    assert union(a, b) == union(b, a) == a0 | b0
    assert a == a0 and b == b0
    assert union(a, b) is not a


@given(small_sets, small_sets, small_sets)
def test_union_is_associative_and_idempotent(a, b, c):
    assert union(union(a, b), c) == union(a, union(b, c))
    assert union(a, a) == a
    assert union(a, None) == a == union(None, a)


def test_union_accepts_frozensets_and_returns_a_set():
    result = union(frozenset({1}), frozenset({2}))
    assert result == {1, 2}
    assert type(result) is set
    assert union(None, None) == set()


# -- reducers inside the executor ----------------------------------------------------------------


class Merged(BaseModel):
    tags: Annotated[set[str], union] = set()
    meta: Annotated[dict[str, int], merge_dicts] = {}
    text: Annotated[str, operator.add] = ""
    plain: str = ""


def test_each_stock_reducer_merges_node_updates_in_a_running_graph():
    g = StateGraph(Merged)
    g.add_node("a", lambda s: {"tags": {"x"}, "meta": {"k": 1, "j": 1}, "text": "a"})
    g.add_node("b", lambda s: {"tags": {"x", "y"}, "meta": {"k": 2}, "text": "b"})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    final = g.compile().invoke({"tags": {"start"}, "meta": {"z": 0}, "text": ">"})
    assert final.tags == {"start", "x", "y"}
    assert final.meta == {"z": 0, "k": 2, "j": 1}
    assert final.text == ">ab"


def test_reducer_is_called_as_fn_current_update():
    calls: list[tuple[Any, Any]] = []

    def record(current: str, update: str) -> str:
        calls.append((current, update))
        return f"{current}<{update}"

    class Rec(BaseModel):
        s: Annotated[str, record] = "init"

    g = StateGraph(Rec)
    g.add_node("n", lambda s: {"s": "new"})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    assert g.compile().invoke({}).s == "init<new"
    assert calls == [("init", "new")]


def test_reducers_merge_parallel_writes_in_declaration_order_not_completion_order():
    import time

    g = StateGraph(Merged)
    # "slow" is declared first but finishes last; its update must still be merged first
    g.add_node("slow", lambda s: (time.sleep(0.05), {"text": "slow,", "meta": {"k": 1}})[1])
    g.add_node("fast", lambda s: {"text": "fast,", "meta": {"k": 2}})
    g.add_edge(START, "slow")
    g.add_edge(START, "fast")
    g.add_edge("slow", END)
    g.add_edge("fast", END)
    final = g.compile().invoke({})
    assert final.text == "slow,fast,"
    assert final.meta == {"k": 2}  # the later-declared node's key wins


def test_input_sets_reducer_fields_directly_without_merging_with_defaults():
    class Defaults(BaseModel):
        log: Annotated[list[str], operator.add] = ["default"]

    g = StateGraph(Defaults)
    g.add_node("n", lambda s: {"log": ["node"]})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    app = g.compile()
    assert app.invoke({"log": ["input"]}).log == ["input", "node"]
    assert app.invoke({}).log == ["default", "node"]


def test_reducer_field_not_in_an_update_is_left_alone():
    g = StateGraph(Merged)
    g.add_node("a", lambda s: {"plain": "x"})
    g.add_node("b", lambda s: None)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    final = g.compile().invoke({"text": "keep", "tags": {"t"}})
    assert final.text == "keep"
    assert final.tags == {"t"}
    assert final.plain == "x"


def test_reducer_does_not_mutate_earlier_states_seen_in_stream_events():
    g = StateGraph(Chunks)
    g.add_node("a", lambda s: {"by_append": [1]})
    g.add_node("b", lambda s: {"by_append": [2]})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    events = list(g.compile().stream({"by_append": [0]}))
    assert [e.state.by_append for e in events] == [[0, 1], [0, 1, 2]]


def test_a_failing_reducer_propagates_with_a_note_naming_node_and_field():
    def explode(current: int, update: int) -> int:
        raise ZeroDivisionError("reducer broke")

    class Boom(BaseModel):
        total: Annotated[int, explode] = 0

    g = StateGraph(Boom)
    g.add_node("adder", lambda s: {"total": 1})
    g.add_edge(START, "adder")
    g.add_edge("adder", END)
    with pytest.raises(ZeroDivisionError, match="reducer broke") as info:
        g.compile().invoke({}, thread_id="th-r")
    notes = "\n".join(info.value.__notes__)
    assert "'adder'" in notes
    assert "'total'" in notes
    assert "step 0" in notes
    assert "'th-r'" in notes
