"""A chat's next turn takes its thread and stores its input in one commit
(`Checkpointer.lease_and_put`), when the turn before it finished in this process and its state
is cached: the input checkpoint is made from that state first, and stored only if the thread's
head is still that turn's, unmarked, and bound to the graph. Anything else (another process's
turn, an edit, a mark) leaves nothing stored by it, and the turn runs from storage as before."""

from __future__ import annotations

import asyncio
import operator
import threading
from typing import Annotated

import pytest
from conftest import make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_linear_storage import counting_loads
from test_release_with_commit import Chat, chat

from checkpoints import MemoryCheckpointer
from checkpoints.base import HeadMark, NewCheckpoint, Owner
from statemachine import (
    END,
    START,
    InvalidUpdateError,
    StateGraph,
    ThreadBusyError,
    ThreadStateError,
)


def expected(questions: list[str]) -> list[str]:
    turns: list[str] = []
    for question in questions:
        turns += [question, f"answer {len(turns) + 1}"]
    return turns


def input_checkpoint(parent: str, step: int) -> NewCheckpoint:
    return NewCheckpoint(parent, step, "input", "running", '[["reply",0]]',
                         writes='[["__input__",0,{"turns":["q"]}]]', created_at=1.0)


def test_the_input_lands_in_the_transaction_that_takes_the_thread(request, tmp_path):
    """While the reply runs, the thread's lease and the input checkpoint are one
    transaction's on PostgreSQL (the same xmin); SQLite's statements are traced in
    test_release_with_commit."""
    postgres = make_store("postgres", tmp_path, request)
    request.addfinalizer(postgres.close)
    entered, go = threading.Event(), threading.Event()

    def reply(state: Chat) -> dict:
        if len(state.turns) > 3:  # the third turn
            entered.set()
            assert go.wait(30)
        return {"turns": [f"answer {len(state.turns)}"]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    app = g.compile(checkpointer=postgres.open())
    app.invoke({"turns": ["q0"]}, thread_id="t")
    app.invoke({"turns": ["q1"]}, thread_id="t")
    turn = threading.Thread(target=app.invoke, args=({"turns": ["q2"]},),
                            kwargs={"thread_id": "t"})
    turn.start()
    try:
        assert entered.wait(30)
        [(lease_xmin,)] = postgres.query("SELECT xmin::text FROM threads")
        [(input_xmin, kind)] = postgres.query(
            "SELECT xmin::text, kind FROM checkpoints ORDER BY id DESC LIMIT 1")
        assert kind == "input" and input_xmin == lease_xmin
    finally:
        go.set()
        turn.join()
    assert app.get_state("t").state.turns == expected(["q0", "q1", "q2"])


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.sampled_from("ab"), st.booleans()), min_size=2,
                      max_size=7))
def test_two_processes_taking_turns_on_a_thread_lose_and_repeat_nothing(durable_store, turns):
    """Two apps on one store (two processes' checkpointers), each keeping the state of the
    turns it finished, take turns in any order, sync or async: every question and answer is
    there once, in order, and each turn made exactly one input and one reply checkpoint."""
    thread = f"t{id(turns)}-{len(durable_store._opened)}"
    apps = {name: chat().compile(checkpointer=durable_store.open()) for name in "ab"}
    questions = []
    for number, (name, use_async) in enumerate(turns):
        question = f"q{number} by {name}"
        questions.append(question)
        payload = {"turns": [question]}
        result = asyncio.run(apps[name].ainvoke(payload, thread_id=thread)) if use_async \
            else apps[name].invoke(payload, thread_id=thread)
        assert result.turns == expected(questions)
    for app in apps.values():
        assert app.get_state(thread).state.turns == expected(questions)
    kinds = [h.kind for h in reversed(apps["a"].history(thread))]
    assert kinds == ["input", "step"] * len(turns)
    for saver in durable_store._opened[-2:]:
        saver.close()


def test_a_head_marked_since_the_turn_is_read_back_not_run_past(durable_store):
    """A mark after a run finished (an operator setting it failed, say) changes the head in
    place: the next turn of the process that cached it reads it back, and a failed head takes
    no new input."""
    saver = durable_store.open()
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["q0"]}, thread_id="t")
    head = app.get_state("t").checkpoint_id
    operator_owner = Owner.new()

    async def mark_failed() -> None:
        await saver.acquire("t", operator_owner)
        await saver.mark("t", operator_owner, head, status="failed", error="set by hand")
        await saver.release("t", operator_owner)

    asyncio.run(mark_failed())
    with pytest.raises(ThreadStateError, match="failed"):
        app.invoke({"turns": ["q1"]}, thread_id="t")
    assert app.history("t")[0].checkpoint_id == head  # no input stored
    assert durable_store.query("SELECT owner FROM threads") == [(None,)]


def test_lease_and_put_commits_only_on_the_head_it_was_given(durable_store):
    saver = durable_store.open()
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["q0"]}, thread_id="t")
    snapshot = app.get_state("t")
    head = HeadMark(snapshot.checkpoint_id, snapshot.created_at, None)
    graph = durable_store.query("SELECT graph FROM threads")[0][0]
    me, other = Owner.new(), Owner.new()
    assert saver.takes_with_input

    async def main() -> None:
        # another head, another graph: the thread is taken, nothing is written
        for other_head, bound in ((HeadMark("999999", head.created_at, None), graph),
                                  (head, "another graph")):
            lease, written = await saver.lease_and_put("t", me, input_checkpoint(head.id, 1),
                                                       head=other_head, graph=bound)
            assert written is None and lease.graph == graph and lease.head is not None
            assert lease.head.id == head.id
            with pytest.raises(ThreadBusyError):
                await saver.acquire("t", other)
            await saver.release("t", me)
        # held by a live run: refused, nothing written
        await saver.acquire("t", other)
        with pytest.raises(ThreadBusyError):
            await saver.lease_and_put("t", me, input_checkpoint(head.id, 1), head=head,
                                      graph=graph)
        await saver.release("t", other)
        # the head it was given: taken and written at once, and the lease holds
        lease, written = await saver.lease_and_put("t", me, input_checkpoint(head.id, 1),
                                                   head=head, graph=graph)
        assert written is not None and lease.head is not None and lease.head.id == head.id
        with pytest.raises(ThreadBusyError):
            await saver.acquire("t", other)
        await saver.release("t", me)
        return written

    written = asyncio.run(main())
    assert app.history("t")[0].checkpoint_id == written
    assert len(app.history("t")) == 3


def test_a_store_that_cannot_takes_the_thread_and_writes_nothing():
    saver = MemoryCheckpointer()
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["q0"]}, thread_id="t")
    snapshot = app.get_state("t")
    assert not saver.takes_with_input

    async def main() -> None:
        me = Owner.new()
        _, written = await saver.lease_and_put(
            "t", me, input_checkpoint(snapshot.checkpoint_id, 1),
            head=HeadMark(snapshot.checkpoint_id, snapshot.created_at, None), graph=None)
        assert written is None
        with pytest.raises(ThreadBusyError):
            await saver.acquire("t", Owner.new())
        await saver.release("t", me)

    asyncio.run(main())
    assert len(app.history("t")) == 2
    app.invoke({"turns": ["q1"]}, thread_id="t")
    assert app.get_state("t").state.turns == expected(["q0", "q1"])


def guarded(current: list[str], new: list[str]) -> list[str]:
    """A reducer refusing anything once the chat is closed, until it is reopened."""
    if new == ["reopen"]:
        return []
    if "closed" in current:
        raise ValueError("the chat is closed")
    return current + new


class Guarded(BaseModel):
    turns: Annotated[list[str], guarded] = []


def test_a_cached_state_that_went_stale_never_fails_a_turn_the_stored_one_runs(durable_store):
    """Process A's turn closes the chat; an operator in process B reopens it. A's next turn
    is made from A's cached (closed) state first, which its reducer refuses: the turn runs
    from the stored state instead, as it did before the cache was used this way."""
    g = StateGraph(Guarded)
    g.add_node("reply", lambda s: {"turns": ["closed" if s.turns[-1] == "bye" else "ok"]})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    a = g.compile(checkpointer=durable_store.open())
    b = g.compile(checkpointer=durable_store.open())
    a.invoke({"turns": ["bye"]}, thread_id="t")
    b.update_state("t", {"turns": ["reopen"]})
    assert a.invoke({"turns": ["hello again"]}, thread_id="t").turns == ["hello again", "ok"]
    with pytest.raises(ValueError, match="closed"):  # and a closed chat still refuses
        a.invoke({"turns": ["bye"]}, thread_id="t")
        a.invoke({"turns": ["more"]}, thread_id="t")


def test_a_router_from_start_runs_once_a_turn_and_never_for_a_thread_it_cannot_take(
        durable_store):
    calls: list[int] = []

    def classify(state: Chat) -> str:
        calls.append(len(state.turns))
        return "reply"

    g = StateGraph(Chat)
    g.add_node("reply", lambda s: {"turns": [f"answer {len(s.turns)}"]})
    g.add_conditional_edges(START, classify, ["reply"])
    g.add_edge("reply", END)
    saver = durable_store.open()
    app = g.compile(checkpointer=saver)
    for turn in range(3):
        app.invoke({"turns": [f"q{turn}"]}, thread_id="t")
    assert calls == [1, 3, 5]
    holder = Owner.new()
    asyncio.run(saver.acquire("t", holder))
    calls.clear()
    with pytest.raises(ThreadBusyError):
        app.invoke({"turns": ["q3"]}, thread_id="t")
    with pytest.raises(ThreadBusyError):  # the busy thread is said first, as before
        app.invoke({"turns": "not a list"}, thread_id="t")
    assert calls == []
    asyncio.run(saver.release("t", holder))


def test_a_thread_bound_under_another_spelling_of_the_graph_keeps_the_one_commit_turn(
        durable_store):
    """A new deploy declaring the same nodes in another order is the same graph (the thread
    is not rebound) under another text: the next turns still take the thread with their
    input, reading nothing back."""
    def graph(order: str) -> StateGraph:
        g = StateGraph(Chat)
        for name in order:
            g.add_node(name, lambda s: {"turns": [f"answer {len(s.turns)}"]})
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        g.add_edge("b", END)
        return g

    old = graph("ab").compile(checkpointer=durable_store.open(), name="chat")
    old.invoke({"turns": ["q0"]}, thread_id="t")
    saver = durable_store.open()
    loads = counting_loads(saver)
    new = graph("ba").compile(checkpointer=saver, name="chat")
    assert old.identity.encode() != new.identity.encode()
    new.invoke({"turns": ["q1"]}, thread_id="t")  # a new process: read from storage
    assert loads == ["t"]
    for turn in range(2, 5):
        loads.clear()
        new.invoke({"turns": [f"q{turn}"]}, thread_id="t")
        assert loads == []
    assert len(new.get_state("t").state.turns) == 15


def test_a_new_threads_first_turn_reads_nothing_back(durable_store):
    """Taking a thread says it has no checkpoint yet: its first run starts without asking
    storage for a head it knows is not there."""
    saver = durable_store.open()
    loads = counting_loads(saver)
    app = chat().compile(checkpointer=saver)
    assert app.invoke({"turns": ["q0"]}, thread_id="new").turns == ["q0", "answer 1"]
    assert asyncio.run(app.ainvoke({"turns": ["q0"]}, thread_id="new 2")).turns == [
        "q0", "answer 1"]
    assert loads == []
    durable_store.change("DELETE FROM checkpoints")  # emptied by hand: still read as new
    assert app.invoke({"turns": ["again"]}, thread_id="new").turns == ["again", "answer 1"]
    assert loads == []


def spying(saver, names: tuple[str, ...]) -> list[str]:
    """The names of `saver`'s methods among `names` called from now on, in order (each call
    runs the real method)."""
    calls: list[str] = []
    for name in names:
        method = getattr(saver, name)

        async def spy(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return await _method(*args, **kwargs)

        setattr(saver, name, spy)
    return calls


STORE_CALLS = ("acquire", "lease", "lease_and_put", "put", "bind_graph", "load")


def test_a_new_threads_first_turn_takes_binds_and_stores_its_input_in_one_call(durable_store):
    """A thread this process knows nothing of is tried as a new one: the take creates it,
    bound to the graph, with its input as its first checkpoint; then the reply commits with
    the release. Two commits, where there were four (take, input, binding, reply)."""
    saver = durable_store.open()
    calls = spying(saver, STORE_CALLS)
    app = chat().compile(checkpointer=saver)
    assert app.invoke({"turns": ["q0"]}, thread_id="t").turns == ["q0", "answer 1"]
    assert asyncio.run(app.ainvoke({"turns": ["q0"]}, thread_id="u")).turns == [
        "q0", "answer 1"]
    assert calls == ["lease_and_put", "put"] * 2
    assert durable_store.query("SELECT thread_id, graph FROM threads ORDER BY thread_id") == [
        ("t", app.identity.encode()), ("u", app.identity.encode())]
    assert [h.kind for h in app.history("t")] == ["step", "input"]
    assert app.get_state("t").state.turns == ["q0", "answer 1"]
    calls.clear()  # the next turn is the cached one's
    assert app.invoke({"turns": ["q1"]}, thread_id="t").turns[-2:] == ["q1", "answer 3"]
    assert calls == ["lease_and_put", "put"]


def test_a_new_threads_take_and_input_are_one_sqlite_transaction(tmp_path):
    from checkpoints import SQLiteCheckpointer

    saver = SQLiteCheckpointer(tmp_path / "runs.db")
    app = chat().compile(checkpointer=saver)
    statements: list[str] = []
    saver._direct.set_trace_callback(statements.append)
    app.invoke({"turns": ["hello"]}, thread_id="t")
    saver._direct.set_trace_callback(None)
    saver.close()
    writes = [s.split()[0] for s in statements if s.split()[0] in (
        "INSERT", "UPDATE", "BEGIN", "COMMIT", "DELETE")]
    assert writes == ["BEGIN", "INSERT", "INSERT", "COMMIT",
                      "BEGIN", "INSERT", "UPDATE", "COMMIT"], statements
    assert not [s for s in statements if "SET graph" in s], statements


def test_a_new_threads_lease_and_input_are_one_postgres_transaction(request, tmp_path):
    postgres = make_store("postgres", tmp_path, request)
    request.addfinalizer(postgres.close)
    entered, go = threading.Event(), threading.Event()

    def reply(state: Chat) -> dict:
        entered.set()
        assert go.wait(30)
        return {"turns": [f"answer {len(state.turns)}"]}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    app = g.compile(checkpointer=postgres.open())
    turn = threading.Thread(target=app.invoke, args=({"turns": ["q0"]},),
                            kwargs={"thread_id": "t"})
    turn.start()
    try:
        assert entered.wait(30)
        [(lease_xmin, graph)] = postgres.query("SELECT xmin::text, graph FROM threads")
        [(input_xmin, kind)] = postgres.query("SELECT xmin::text, kind FROM checkpoints")
        assert kind == "input" and input_xmin == lease_xmin
        assert graph == app.identity.encode()
    finally:
        go.set()
        turn.join()
    assert app.get_state("t").state.turns == ["q0", "answer 1"]


class Profile(BaseModel):
    user: str
    turns: Annotated[list[str], operator.add] = []


def profile_chat() -> StateGraph:
    g = StateGraph(Profile)
    g.add_node("reply", lambda s: {"turns": [f"answer {len(s.turns)} to {s.user}"]})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def test_a_stored_thread_this_process_never_ran_is_continued_not_started_again(durable_store):
    """Another process's thread, new to this one: an input that is a whole state (and one
    that is not) is taken as the next turn's, from the stored state; the try as a new thread
    stores nothing."""
    first = profile_chat().compile(checkpointer=durable_store.open())
    first.invoke({"user": "ann", "turns": ["q0"]}, thread_id="t")
    saver = durable_store.open()
    calls = spying(saver, STORE_CALLS)
    second = profile_chat().compile(checkpointer=saver)
    # a whole state: tried as a new thread, which the thread is not
    assert second.invoke({"user": "ann", "turns": ["q1"]}, thread_id="t").turns == [
        "q0", "answer 1 to ann", "q1", "answer 3 to ann"]
    assert calls == ["lease_and_put", "load", "put", "put"]
    third = profile_chat().compile(checkpointer=durable_store.open())
    # not a whole state (no user): taken and read as before
    assert third.invoke({"turns": ["q2"]}, thread_id="t").turns[-2:] == [
        "q2", "answer 5 to ann"]
    assert [h.kind for h in third.history("t")] == ["step", "input"] * 3
    with pytest.raises(InvalidUpdateError, match="user"):  # a new thread still needs one
        third.invoke({"turns": ["q0"]}, thread_id="new")
    assert durable_store.query("SELECT count(*) FROM checkpoints c JOIN threads t ON "
                               "t.key = c.thread WHERE t.thread_id = ?", "new") == [(0,)]


def test_an_emptied_thread_bound_to_another_graph_is_bound_by_the_next_graph_to_run_it(
        durable_store):
    other = profile_chat().compile(checkpointer=durable_store.open(), name="other")
    other.invoke({"user": "ann", "turns": ["q0"]}, thread_id="t")
    durable_store.change("DELETE FROM checkpoints")  # emptied by hand: anyone's
    app = chat().compile(checkpointer=durable_store.open(), name="chat")
    assert app.invoke({"turns": ["q0"]}, thread_id="t").turns == ["q0", "answer 1"]
    assert durable_store.query("SELECT graph FROM threads") == [(app.identity.encode(),)]
    assert [h.kind for h in app.history("t")] == ["step", "input"]


def test_a_thread_tried_as_new_that_is_not_costs_no_lookup_of_a_retry(durable_store):
    """Another process's thread, tried as new here: the take finds a head it did not ask for.
    Sent once, that head is another run's, so nothing is looked up by commit key (the lookup
    is for a statement sent again after a dropped connection; test_postgres loses one)."""
    first = chat().compile(checkpointer=durable_store.open())
    first.invoke({"turns": ["q0"]}, thread_id="t")
    saver = durable_store.open()
    statements: list[str] = []
    fetchall = saver._fetchall

    async def traced(doing, query, params, **kwargs):
        statements.append(query)
        return await fetchall(doing, query, params, **kwargs)

    saver._fetchall = traced
    second = chat().compile(checkpointer=saver)
    assert second.invoke({"turns": ["q1"]}, thread_id="t").turns == [
        "q0", "answer 1", "q1", "answer 3"]
    assert saver._sql.put_landed not in statements


def test_a_store_binding_threads_its_own_way_is_asked_to_bind_a_new_thread(durable_store):
    """A subclass's own `bind_graph` (an audit, an access check) keeps being called for every
    new thread: the store then takes the old path, binding after the input."""
    from checkpoints import PostgresCheckpointer, SQLiteCheckpointer

    base = PostgresCheckpointer if durable_store.kind == "postgres" else SQLiteCheckpointer
    bound: list[str] = []

    class Audited(base):
        async def bind_graph(self, thread_id, owner, graph):
            bound.append(thread_id)
            await super().bind_graph(thread_id, owner, graph)

    saver = Audited(durable_store.dsn, schema=durable_store.schema) \
        if durable_store.kind == "postgres" else Audited(durable_store.path)
    durable_store._opened.append(saver)
    assert not saver.takes_with_input
    app = chat().compile(checkpointer=saver)
    app.invoke({"turns": ["q0"]}, thread_id="t")
    app.invoke({"turns": ["q1"]}, thread_id="t")
    assert bound == ["t"]
    assert durable_store.query("SELECT graph FROM threads") == [(app.identity.encode(),)]
