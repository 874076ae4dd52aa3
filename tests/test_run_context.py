"""Run-scoped context (`context=`): per-call dependencies every node, router, subgraph and
compensation of the call sees, validated into the graph's `context_schema`, never stored."""

from __future__ import annotations

import asyncio
import operator
from dataclasses import dataclass
from typing import Annotated

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from checkpoints import SQLiteCheckpointer
from statemachine import (
    END,
    START,
    GraphValidationError,
    InvalidContextError,
    RunContext,
    StateGraph,
)


class Deps(BaseModel):
    user_id: str
    model: str = "small"


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []


class ApiClient:
    """Something no checkpoint could hold: an object with a secret in it."""

    def __init__(self, token: str) -> None:
        self.token = token


def graph(fail: dict[str, bool] | None = None) -> StateGraph:
    fail = fail if fail is not None else {}

    def greet(state: S, ctx: RunContext) -> dict:
        return {"log": [f"hello {ctx.context.user_id}"]}

    async def answer(state: S, ctx: RunContext) -> dict:
        await asyncio.sleep(0)
        if fail.get("answer"):
            raise ConnectionError("model down")
        return {"log": [f"answered with {ctx.context.model}"]}

    def route(state: S, ctx: RunContext) -> str:
        return "answer" if ctx.context.user_id != "blocked" else END

    g = StateGraph(S, context_schema=Deps)
    g.add_node("greet", greet)
    g.add_node("answer", answer)
    g.add_edge(START, "greet")
    g.add_conditional_edges("greet", route, ["answer", END])
    g.add_edge("answer", END)
    return g


def test_nodes_and_routers_get_the_calls_validated_context(tmp_path):
    app = graph().compile()
    assert app.invoke({}, context={"user_id": "u1"}).log == [
        "hello u1", "answered with small"]
    assert app.invoke({}, context=Deps(user_id="blocked", model="big")).log == [
        "hello blocked"]
    with pytest.raises(InvalidContextError, match=r"context_schema Deps: user_id: Field "
                                                  r"required"):
        app.invoke({}, context={"model": "big"})


def test_a_resume_uses_its_own_calls_context_and_none_is_stored(tmp_path):
    db = tmp_path / "runs.db"
    fail = {"answer": True}
    with SQLiteCheckpointer(db) as saver:
        app = graph(fail).compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            app.invoke({}, thread_id="t", context={"user_id": "u1", "model": "secret-model-7"})
        fail["answer"] = False
        final = app.resume("t", context={"user_id": "u1", "model": "fallback"})
        assert final.log == ["hello u1", "answered with fallback"]
        with pytest.raises(InvalidContextError):
            app.invoke({}, thread_id="u", context={"user": "typo"})
        assert [t.thread_id for t in app.threads()] == ["t"]  # refused before anything ran
    saver.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secret-model-7" not in stored  # the first call's context: nowhere


def test_without_a_schema_any_object_is_handed_on_to_nodes_subgraphs_and_compensations():
    seen: list[object] = []

    def use(state: S, ctx: RunContext) -> dict:
        seen.append(ctx.context)
        return {"log": ["used"]}

    inner = StateGraph(S)
    inner.add_node("inner_use", use)
    inner.add_edge(START, "inner_use")
    inner.add_edge("inner_use", END)

    def undo(state: S, ctx: RunContext) -> dict:
        seen.append(ctx.context)
        return {"log": ["undone"]}

    def boom(state: S) -> dict:
        raise RuntimeError("boom")

    g = StateGraph(S)
    g.add_node("use", use, compensate=undo)
    g.add_node("sub", inner.compile(name="inner"))
    g.add_node("boom", boom)
    g.add_edge(START, "use")
    g.add_edge("use", "sub")
    g.add_edge("sub", "boom")
    g.add_edge("boom", END)
    client = ApiClient("tok-123")
    from checkpoints import MemoryCheckpointer

    app = g.compile(checkpointer=MemoryCheckpointer(), on_failure="compensate")
    with pytest.raises(RuntimeError):
        app.invoke({}, thread_id="t", context=client)
    assert seen == [client, client, client]  # the node, the subgraph's node, the undo
    assert app.get_state("t").status == "compensated"


class TD(TypedDict):
    user_id: str


@dataclass
class DataDeps:
    tenant: str


def test_a_dataclass_schema_validates_and_a_bad_schema_is_a_compile_problem():
    g = StateGraph(S, context_schema=DataDeps)
    g.add_node("n", lambda state, ctx: {"log": [ctx.context.tenant]})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    assert g.compile().invoke({}, context={"tenant": "acme"}).log == ["acme"]
    bad = StateGraph(S, context_schema=42)  # type: ignore[arg-type]
    bad.add_node("n", lambda state: {})
    bad.add_edge(START, "n")
    bad.add_edge("n", END)
    with pytest.raises(GraphValidationError) as info:
        bad.compile()
    assert [p.code for p in info.value.problems] == ["invalid_option"]
    assert "context_schema must be a class" in str(info.value)


def test_typeddicts_plain_classes_and_a_subgraphs_own_schema():
    def graph_with(schema: type) -> StateGraph:
        g = StateGraph(S, context_schema=schema)
        g.add_node("n", lambda state, ctx: {"log": [type(ctx.context).__name__]})
        g.add_edge(START, "n")
        g.add_edge("n", END)
        return g

    assert graph_with(TD).compile().invoke({}, context={"user_id": "u"}).log == ["dict"]
    client = ApiClient("tok")
    app = graph_with(ApiClient).compile()  # pydantic cannot read it: instances only
    assert app.invoke({}, context=client).log == ["ApiClient"]
    with pytest.raises(InvalidContextError, match="must be a ApiClient"):
        app.invoke({}, context={"token": "tok"})

    class ChildDeps(BaseModel):
        user_id: str

    inner = StateGraph(S, context_schema=ChildDeps)
    inner.add_node("inner", lambda state, ctx: {"log": [f"child {ctx.context.user_id}"]})
    inner.add_edge(START, "inner")
    inner.add_edge("inner", END)
    outer = StateGraph(S, context_schema=Deps)
    outer.add_node("sub", inner.compile(name="child"))
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    assert outer.compile().invoke({}, context={"user_id": "u9"}).log == ["child u9"]
