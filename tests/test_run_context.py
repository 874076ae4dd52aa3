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


def test_no_context_is_the_schemas_defaults_or_an_error_naming_what_it_needs(tmp_path):
    class Settings(BaseModel):
        model: str = "small"

    g = StateGraph(S, context_schema=Settings)
    g.add_node("n", lambda state, ctx: {"log": [ctx.context.model]})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    assert g.compile().invoke({}).log == ["small"]  # built from its defaults
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = graph().compile(checkpointer=saver)
        with pytest.raises(InvalidContextError, match=r"this graph needs context= \(its "
                                                      r"context_schema Deps.*user_id: Field "
                                                      r"required"):
            app.invoke({}, thread_id="t")
        assert app.threads() == []  # refused before anything was stored
    plain = StateGraph(S, context_schema=ApiClient)  # pydantic cannot build one: None
    plain.add_node("n", lambda state, ctx: {"log": [repr(ctx.context)]})
    plain.add_edge(START, "n")
    plain.add_edge("n", END)
    assert plain.compile().invoke({}).log == ["None"]


def test_update_state_as_a_node_routes_on_with_the_calls_context(tmp_path):
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = graph().compile(checkpointer=saver, interrupt_before=["answer"])
        app.invoke({}, thread_id="t", context={"user_id": "u1"})
        assert app.get_state("t").next == ("answer",)
        # greet's update, as an operator gives it: its router reads the context
        after = app.update_state("t", {"log": ["manual"]}, as_node="greet",
                                 context={"user_id": "blocked"})
        assert after.next == () and after.status == "done"
        again = app.update_state("t", {"log": ["manual"]}, as_node="greet",
                                 context=Deps(user_id="u2"))
        assert again.next == ("answer",)
        with pytest.raises(InvalidContextError, match="this graph needs context="):
            app.update_state("t", {"log": ["x"]}, as_node="greet")
        # without as_node no router runs: no context needed
        assert app.update_state("t", {"log": ["note"]}).next == ("answer",)


def test_a_worker_gives_every_job_its_context(tmp_path):
    from statemachine._sync import run_sync
    from statemachine.worker import Worker

    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = graph().compile(checkpointer=saver)
        with pytest.raises(InvalidContextError, match="this graph needs context="):
            Worker(app)  # refused when it starts, not job by job
        for thread in ("a", "b"):
            app.submit({}, thread)
        worker = Worker(app, context={"user_id": "w1"}, poll_interval=0.01)
        stats = run_sync(lambda: worker.run(drain=True))
        assert stats.done == 2
        assert app.get_state("a").state.log == ["hello w1", "answered with small"]


def test_the_property_checkers_take_a_context_value_or_a_strategy():
    from hypothesis import strategies as st

    from statemachine.testing import (
        PropertyCheckError,
        check_nodes,
        check_resume,
        check_runs,
        check_transitions,
    )

    app = graph().compile()
    deps = {"user_id": "u1"}
    check_nodes(app, context=deps, max_examples=5)
    check_runs(app, context=deps, max_examples=5)
    check_transitions(app, context=deps, max_examples=5)
    durable = graph().compile(checkpointer=SQLiteCheckpointer(":memory:"))
    check_resume(durable, context=deps, max_examples=5)
    with pytest.raises(InvalidContextError):  # a value is checked at once
        check_runs(app, context={"model": "big"}, max_examples=5)

    def strict(state: S, ctx: RunContext) -> dict:
        assert ctx.context.user_id.isidentifier(), "user ids are identifiers"
        return {"log": [ctx.context.user_id]}

    g = StateGraph(S, context_schema=Deps)
    g.add_node("strict", strict)
    g.add_edge(START, "strict")
    g.add_edge("strict", END)
    with pytest.raises(PropertyCheckError) as info:
        check_runs(g.compile(), context=st.builds(Deps, user_id=st.text(max_size=5)),
                   max_examples=50)
    assert "user ids are identifiers" in str(info.value)
    assert "minimal context: Deps(user_id=" in str(info.value)  # what it failed with


def test_the_command_line_takes_a_context_and_never_shows_it(tmp_path):
    import json
    import shlex

    from tests.test_cli import OK, RUN_FAILED, USAGE, cli, run_words

    db, graph = str(tmp_path / "runs.db"), "tests.cli_graphs:personal"
    secret = "sk-live-0123456789"
    account = json.dumps({"user": "ann", "api_key": secret})
    missing = cli("run", graph, "--db", db, "--thread", "t")
    assert missing.returncode == USAGE
    assert "this graph needs context= (its context_schema Account" in missing.stderr
    assert "user: Field required" in missing.stderr
    # given as text: the printed resume command leaves a place for it, never the value
    paused = cli("run", graph, "--db", db, "--thread", "t", "--context", account)
    assert paused.returncode == OK, paused.stderr
    assert "send a letter to ann?" in paused.stderr
    assert "--context '...'" in paused.stderr and "give the same --context again" in paused.stderr
    assert secret not in paused.stdout + paused.stderr
    # a file: repeated by name; the run goes on with it
    file = tmp_path / "account.json"
    file.write_text(account)
    flag = tmp_path / "closed"
    flag.touch()
    cli("update", graph, "--db", db, "--thread", "t", "--values", json.dumps({"flag": str(flag)}))
    failed = cli("resume", graph, "--db", db, "--thread", "t", "--answer", '"yes"',
                 "--context", f"@{file}")
    assert failed.returncode == RUN_FAILED and "post office closed" in failed.stderr
    [line] = [x for x in failed.stderr.splitlines() if "resume with: " in x]
    words = shlex.split(line.split("resume with: ", 1)[1])
    assert words[words.index("--context") + 1] == f"@{file}"
    flag.unlink()
    done = run_words(words)
    assert done.returncode == OK, done.stderr
    assert json.loads(done.stdout)["log"] == ["dear ann", "sent with key ending 89"]
    assert secret not in failed.stderr + done.stderr + done.stdout
    # a mistake in it is described without echoing it
    typo = cli("run", graph, "--db", db, "--thread", "u", "--context",
               '{"user": "ann", "api_key": ' + secret + "}")
    assert typo.returncode == USAGE and "--context is not valid JSON" in typo.stderr
    assert secret not in typo.stderr
    wrong = cli("run", graph, "--db", db, "--thread", "u", "--context", '{"user": "ann"}')
    assert wrong.returncode == USAGE and "api_key: Field required" in wrong.stderr
    # update --as-node routes with it: a blocked user's letter is not sent
    cli("run", graph, "--db", db, "--thread", "v", "--context", account)
    routed = cli("update", graph, "--db", db, "--thread", "v", "--values", '{"log": ["ok"]}',
                 "--as-node", "greet", "--context",
                 json.dumps({"user": "blocked", "api_key": secret}), "--json")
    assert routed.returncode == OK, routed.stderr
    assert json.loads(routed.stdout)["next"] == [] and secret not in routed.stdout


def test_a_worker_started_from_the_command_line_runs_jobs_with_its_context(tmp_path):
    import json

    from tests.test_cli import OK, USAGE, cli

    db, graph = str(tmp_path / "runs.db"), "tests.cli_graphs:personal"
    queued = cli("submit", graph, "--db", db, "--thread", "job", "--input", "{}")
    assert queued.returncode == OK, queued.stderr
    refused = cli("worker", graph, "--db", db, "--drain", "-q")
    assert refused.returncode == USAGE and "this graph needs context=" in refused.stderr
    file = tmp_path / "account.json"
    file.write_text(json.dumps({"user": "bob", "api_key": "k-42"}))
    worked = cli("worker", graph, "--db", db, "--drain", "-q", "--context", f"@{file}")
    assert worked.returncode == OK, worked.stderr
    assert "1 interrupted" in worked.stderr  # greet asks; the job's run paused there
    rows = json.loads(cli("history", "--db", db, "--thread", "job", "--json").stdout)
    assert rows[0]["status"] == "interrupted" and rows[0]["waits_for"] == ["an answer"]


def test_a_cached_node_that_reads_the_context_does_not_answer_one_user_with_anothers():
    from statemachine import CachePolicy

    calls: list[str] = []

    def personal(state: S, ctx: RunContext) -> dict:
        calls.append(ctx.context.user_id)
        return {"log": [f"for {ctx.context.user_id}"]}

    def plain(state: S) -> dict:
        calls.append("plain")
        return {"log": ["same for all"]}

    g = StateGraph(S, context_schema=Deps)
    g.add_node("personal", personal, cache=CachePolicy())
    g.add_node("plain", plain, cache=CachePolicy())
    g.add_edge(START, "personal")
    g.add_edge(START, "plain")  # both on the input state
    g.add_edge("personal", END)
    g.add_edge("plain", END)
    app = g.compile()
    for user in ("ann", "bob", "ann"):
        assert app.invoke({}, context={"user_id": user}).log == [f"for {user}", "same for all"]
    assert sorted(calls) == ["ann", "bob", "plain"]  # ann's second run, plain's: cached

    client_calls: list[str] = []

    def with_client(state: S, ctx: RunContext) -> dict:
        client_calls.append(ctx.context.token)
        return {"log": ["called"]}

    h = StateGraph(S)  # no schema: an API client cannot be written as JSON, so it is no key
    h.add_node("with_client", with_client, cache=CachePolicy())
    h.add_edge(START, "with_client")
    h.add_edge("with_client", END)
    other = h.compile()
    other.invoke({}, context=ApiClient("t1"))
    other.invoke({}, context=ApiClient("t2"))
    assert client_calls == ["t1"]


def test_a_context_holding_a_client_still_keys_the_cache_by_its_user_and_is_not_shown():
    from statemachine import CachePolicy

    @dataclass
    class WithClient:
        user_id: str
        client: object = None

    def balance(state: S, ctx: RunContext) -> dict:
        return {"log": [f"balance of {ctx.context.user_id}"]}

    g = StateGraph(S)
    g.add_node("balance", balance, cache=CachePolicy())
    g.add_edge(START, "balance")
    g.add_edge("balance", END)
    app = g.compile()
    assert app.invoke({}, context=WithClient("carol", ApiClient("k1"))).log == [
        "balance of carol"]
    assert app.invoke({}, context=WithClient("dave", ApiClient("k2"))).log == [
        "balance of dave"]
    shown = repr(RunContext(None, 0, "n", "id", context=WithClient("x", "SECRET-KEY")))
    assert "SECRET-KEY" not in shown
