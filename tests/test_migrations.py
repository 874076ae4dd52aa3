"""Schema evolution: a thread stored by one version of the state model, read and resumed by
the next. A stored field the model no longer has is never dropped in silence: it is an error
naming the thread, checkpoint and field, until a migration (`Rename`, `Drop`) says what became
of it. Real SQLite files; the states are large next to their writes, so reading them back
replays stored writes as well as snapshots."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import (
    END,
    START,
    CheckpointError,
    Drop,
    GraphValidationError,
    Rename,
    StateGraph,
)

BALLAST = "x" * 5000


class V1(BaseModel):
    count: int = 0
    price: float = 0.0
    legacy: str = ""
    log: Annotated[list[str], operator.add] = []
    ballast: str = BALLAST


class V2(BaseModel):
    total: int = 0
    price_cents: int = 0
    log: Annotated[list[str], operator.add] = []
    ballast: str = BALLAST


class Gate:
    open = False


def v1_graph() -> StateGraph:
    def add(state: V1) -> dict:
        return {"count": state.count + 1, "price": state.price + 1.25, "legacy": "old",
                "log": [f"add {state.count}"]}

    def pay(state: V1) -> dict:
        if not Gate.open:
            raise ConnectionError("gateway down")
        return {"log": ["paid"]}

    g = StateGraph(V1)
    g.add_node("add", add)
    g.add_node("again", add)
    g.add_node("pay", pay)
    g.add_edge(START, "add")
    g.add_edge("add", "again")
    g.add_edge("again", "pay")
    g.add_edge("pay", END)
    return g


def v2_graph(migrations=()) -> StateGraph:
    def add(state: V2) -> dict:
        return {"total": state.total + 1, "price_cents": state.price_cents + 125,
                "log": [f"add {state.total}"]}

    def pay(state: V2) -> dict:
        return {"log": [f"paid {state.price_cents} cents for {state.total}"]}

    g = StateGraph(V2, migrations=migrations)
    g.add_node("add", add)
    g.add_node("again", add)
    g.add_node("pay", pay)
    g.add_edge(START, "add")
    g.add_edge("add", "again")
    g.add_edge("again", "pay")
    g.add_edge("pay", END)
    return g


MIGRATIONS = [Rename("count", "total"),
              Rename("price", "price_cents", convert=lambda dollars: round(dollars * 100)),
              Drop("legacy")]


def failed_v1_thread(path: Path) -> None:
    Gate.open = False
    app = v1_graph().compile(checkpointer=SQLiteCheckpointer(path))
    with pytest.raises(ConnectionError):
        app.invoke({}, thread_id="t")
    assert app.get_state("t").state.count == 2


def test_a_renamed_field_is_an_error_naming_thread_checkpoint_and_field(tmp_path):
    path = tmp_path / "runs.db"
    failed_v1_thread(path)
    app = v2_graph().compile(checkpointer=SQLiteCheckpointer(path))
    for read in (lambda: app.get_state("t"), lambda: app.resume("t"),
                 lambda: app.history("t")):
        with pytest.raises(CheckpointError) as info:
            read()
        message = str(info.value)
        assert "thread 't'" in message and "'count'" in message
        assert "migrations=[Rename('count', 'new_name')]" in message
    # and nothing was written: the v1 thread reads as it was
    assert v1_graph().compile(checkpointer=SQLiteCheckpointer(path)).get_state(
        "t").state.count == 2


def test_migrations_carry_a_stored_thread_into_the_new_model_and_it_resumes(tmp_path):
    path = tmp_path / "runs.db"
    failed_v1_thread(path)
    app = v2_graph(MIGRATIONS).compile(checkpointer=SQLiteCheckpointer(path))
    paused = app.get_state("t")
    assert (paused.state.total, paused.state.price_cents) == (2, 250)
    assert [s.state.total for s in app.history("t")] == [2, 1, 0]
    final = app.resume("t")
    assert final.total == 2 and final.log == ["add 0", "add 1", "paid 250 cents for 2"]
    # what v2 wrote is read back as it is: the conversion applies to old data only
    fresh = v2_graph(MIGRATIONS).compile(checkpointer=SQLiteCheckpointer(path))
    assert fresh.get_state("t").state == final
    again = fresh.invoke({}, thread_id="t")  # a new run on the migrated thread
    assert (again.total, again.price_cents) == (4, 500)


@settings(max_examples=15)
@given(turns=st.integers(1, 6), price=st.floats(0, 1000, allow_nan=False))
def test_a_migrated_state_is_the_state_v1_stored_with_the_migrations_applied(
        tmp_path_factory, turns, price):
    path = tmp_path_factory.mktemp("m") / "runs.db"

    def bump(state: V1) -> dict:
        return {"count": state.count + 1, "legacy": "l", "log": [str(state.count)]}

    g = StateGraph(V1)
    g.add_node("bump", bump)
    g.add_edge(START, "bump")
    g.add_edge("bump", END)
    v1 = g.compile(checkpointer=SQLiteCheckpointer(path))
    for _ in range(turns):
        v1.invoke({"price": price}, thread_id="t")
    stored = v1.get_state("t").state

    h = StateGraph(V2, migrations=MIGRATIONS)
    h.add_node("bump", lambda state: {"total": state.total + 1})
    h.add_edge(START, "bump")
    h.add_edge("bump", END)
    v2 = h.compile(checkpointer=SQLiteCheckpointer(path))
    assert v2.get_state("t").state == V2(total=stored.count, price_cents=round(price * 100),
                                          log=stored.log)


def test_migrations_that_cannot_be_right_are_compile_problems():
    cases = [([Rename("count", "nope")], "renames to 'nope', which is not a field of V2"),
             ([Rename("total", "total")], "V2 still has a field 'total'"),
             ([Drop("legacy"), Drop("legacy")], "more than one migration"),
             (["count"], "not a Rename or a Drop")]
    for migrations, message in cases:
        with pytest.raises(GraphValidationError) as info:
            v2_graph(migrations).compile()
        assert [p.code for p in info.value.problems] == ["invalid_migration"] * len(
            info.value.problems)
        assert message in str(info.value)


@pytest.mark.parametrize("extra", ["allow", "forbid"])
def test_models_that_allow_or_forbid_extra_fields_are_migrated_too(tmp_path, extra):
    from pydantic import ConfigDict

    class Old(BaseModel):
        count: int = 0
        ballast: str = BALLAST

    class New(BaseModel):
        model_config = ConfigDict(extra=extra)
        total: int = 0
        ballast: str = BALLAST

    def turn(old: bool):
        g = StateGraph(Old if old else New, migrations=() if old else [Rename("count", "total")])
        field = "count" if old else "total"
        g.add_node("bump", lambda state: {field: getattr(state, field) + 1})
        g.add_edge(START, "bump")
        g.add_edge("bump", END)
        return g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "runs.db"))

    turn(True).invoke({"count": 4}, thread_id="t")
    new = turn(False)
    read = new.get_state("t").state
    assert read.total == 5 and not (read.model_extra or {})
    assert [s.state.total for s in new.history("t")] == [5, 4]
    assert new.invoke({}, thread_id="t").total == 6
