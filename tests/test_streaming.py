"""Stream modes and live output from nodes (`emit`): a chunk reaches the caller while its node
still runs (the node waits for the caller to have seen it, with a timeout, so a buffered
stream fails instead of hanging), from sync, async and parallel nodes, with stream and
astream, with and without a checkpointer; and the modes agree with each other and with the
history."""

from __future__ import annotations

import asyncio
import operator
import threading
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import END, START, RunContext, Send, StateGraph, StepEvent, emit

WAIT = 5.0


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []
    n: int = 0


def handshake_graph(seen: dict[str, threading.Event], parallel: bool) -> StateGraph:
    """Nodes that emit a chunk and then wait until the caller has seen it."""
    def sync_node(state: S) -> dict:
        emit("sync:1")
        if not seen["sync:1"].wait(WAIT):
            raise TimeoutError("the caller never saw sync:1 while the node ran")
        emit("sync:2")
        return {"log": ["sync"]}

    async def async_node(state: S, ctx: RunContext) -> dict:
        ctx.emit("async:1")
        for _ in range(int(WAIT * 100)):
            if seen["async:1"].is_set():
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError("the caller never saw async:1 while the node ran")
        return {"log": ["async"]}

    g = StateGraph(S)
    g.add_node("sync_node", sync_node)
    g.add_node("async_node", async_node)
    g.add_edge(START, "sync_node")
    if parallel:
        g.add_edge(START, "async_node")
        g.add_edge("sync_node", END)
    else:
        g.add_edge("sync_node", "async_node")
    g.add_edge("async_node", END)
    return g


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("store", [None, "sqlite"])
def test_emitted_chunks_reach_the_caller_while_the_node_runs(parallel, store, tmp_path):
    seen = {key: threading.Event() for key in ("sync:1", "async:1")}
    saver = SQLiteCheckpointer(tmp_path / "runs.db") if store else None
    app = handshake_graph(seen, parallel).compile(checkpointer=saver)
    got = []
    for chunk in app.stream({}, thread_id="t" if saver else None, stream_mode="custom"):
        got.append(chunk)
        if chunk in seen:
            seen[chunk].set()
    assert sorted(got) == ["async:1", "sync:1", "sync:2"]
    assert got.index("sync:1") < got.index("sync:2")
    if saver is not None:
        assert app.get_state("t").state.log in (["sync", "async"], ["async", "sync"])
        saver.close()


def test_astream_delivers_emitted_chunks_live_too():
    seen = {key: threading.Event() for key in ("sync:1", "async:1")}
    app = handshake_graph(seen, parallel=True).compile()

    async def read() -> list[Any]:
        got = []
        async for mode, payload in app.astream({}, stream_mode=["custom", "updates"]):
            got.append((mode, payload))
            if mode == "custom" and payload[1] in seen:
                seen[payload[1]].set()
        return got

    got = asyncio.run(read())
    custom = [payload for mode, payload in got if mode == "custom"]
    assert sorted(custom) == [("async_node", "async:1"), ("sync_node", "sync:1"),
                              ("sync_node", "sync:2")]  # tagged with their node
    updates = [payload for mode, payload in got if mode == "updates"]
    assert sorted(updates, key=str) == [{"async_node": {"log": ["async"]}},
                                        {"sync_node": {"log": ["sync"]}}]


def side_graph() -> StateGraph:
    """The subgraph busy_graph runs beside its loop: two steps, each emitting."""
    def step(name: str) -> Any:
        def node(state: S) -> dict:
            emit(f"{name} chunk")
            return {"log": [name]}
        return node

    g = StateGraph(S)
    g.add_node("s1", step("s1"))
    g.add_node("s2", step("s2"))
    g.add_edge(START, "s1")
    g.add_edge("s1", "s2")
    g.add_edge("s2", END)
    return g


def busy_graph() -> StateGraph:
    """A loop, a parallel step, a Send fan-out and a subgraph."""
    def start(state: S) -> dict:
        return {"n": state.n + 1, "log": [f"start {state.n}"]}

    def fan(state: S) -> list[Send]:
        return [Send("part", S(n=i)) for i in range(3)]

    def part(state: S) -> dict:
        emit(f"part {state.n}")
        return {"log": [f"part {state.n}"]}

    g = StateGraph(S)
    g.add_node("start", start)
    g.add_node("side", side_graph().compile())
    g.add_node("part", part)
    g.add_node("again", lambda state: {})
    g.add_edge(START, "start")
    g.add_edge(START, "side")
    g.add_edge("side", END)
    g.add_conditional_edges("start", fan, ["part"])
    g.add_edge("part", "again")
    g.add_conditional_edges("again", lambda s: "start" if s.n < 2 else END, ["start", END])
    return g


def test_every_mode_agrees_with_the_others_and_with_the_history(tmp_path):
    modes = ["steps", "values", "updates", "custom"]
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = busy_graph().compile(checkpointer=saver)
        items = list(app.stream({}, thread_id="t", stream_mode=modes))
        by_mode: dict[str, list[Any]] = {m: [p for mode, p in items if mode == m]
                                         for m in modes}
        steps: list[StepEvent] = by_mode["steps"]
        values = by_mode["values"]
        # values: where the run starts, then the state after each step, as the steps say
        assert values[0] == S()
        assert values[1:] == [e.state for e in steps]
        # updates: one per task, as it finished; together they are each step's updates
        per_node: dict[str, list[Any]] = {}
        for update in by_mode["updates"]:
            [(node, value)] = update.items()
            per_node.setdefault(node, []).append(value)
        from_steps: dict[str, list[Any]] = {}
        for event in steps:
            for node, value in event.updates.items():
                from_steps.setdefault(node, []).extend(
                    value if isinstance(value, list) else [value])
        assert {k: sorted(map(str, v)) for k, v in per_node.items()} == \
            {k: sorted(map(str, v)) for k, v in from_steps.items()}
        assert sorted(by_mode["custom"], key=str) == sorted(
            [("part", f"part {i}") for i in range(3)] * 2
            + [("s1", "s1 chunk"), ("s2", "s2 chunk")], key=str)  # a subgraph's live too
        # and the history holds the same states, step by step
        history = [s for s in reversed(app.history("t")) if s.kind == "step"]
        assert [s.state for s in history] == [e.state for e in steps]
        assert app.get_state("t").state == values[-1]
        # the default mode is still one StepEvent per step
        again = list(app.stream({}, thread_id="u"))
        assert [e.nodes for e in again] == [e.nodes for e in steps]


def test_a_stream_stopped_early_stops_the_run_and_errors_reach_the_caller():
    calls = []

    def slow(state: S) -> dict:
        calls.append(state.n)
        return {"n": state.n + 1}

    g = StateGraph(S)
    g.add_node("slow", slow)
    g.add_edge(START, "slow")
    g.add_conditional_edges("slow", lambda s: "slow" if s.n < 1000 else END, ["slow", END])
    app = g.compile(checkpointer=MemoryCheckpointer())
    for state in app.stream({}, thread_id="t", stream_mode="values"):
        if state.n == 3:
            break
    assert len(calls) < 50  # the run did not go on to 1000 behind the caller's back

    def broken(state: S) -> dict:
        emit("before the failure")
        raise ValueError("node broke")

    b = StateGraph(S)
    b.add_node("broken", broken)
    b.add_edge(START, "broken")
    b.add_edge("broken", END)
    got = []
    with pytest.raises(ValueError, match="node broke"):
        for chunk in b.compile().stream({}, stream_mode="custom"):
            got.append(chunk)
    assert got == ["before the failure"]
    with pytest.raises(ValueError, match="stream_mode must be one of"):
        b.compile().stream({}, stream_mode="tokens")


def test_emit_does_nothing_when_nobody_streams_custom():
    app = busy_graph().compile()
    assert app.invoke({}).n == 2
    assert [m for m, _ in app.stream({}, stream_mode=["values", "updates"])].count(
        "custom") == 0


def test_a_sync_stream_read_from_a_different_thread_each_time_loses_nothing():
    """What a web server does with a sync generator: each next() in a pool thread."""
    from concurrent.futures import ThreadPoolExecutor

    app = busy_graph().compile()
    expected = list(app.stream({}, stream_mode=["updates", "custom"]))
    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            stream = app.stream({}, stream_mode=["updates", "custom"])
            got = []
            while (item := pool.submit(next, stream, None).result()) is not None:
                got.append(item)
            assert sorted(map(str, got)) == sorted(map(str, expected))


def test_ctx_emit_works_from_threads_the_node_starts_and_updates_are_the_readers_copy():
    from concurrent.futures import ThreadPoolExecutor

    def fan(state: S, ctx: RunContext) -> dict:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: ctx.emit(f"from worker {i}"), range(2)))
        return {"log": ["fanned"]}

    g = StateGraph(S)
    g.add_node("fan", fan)
    g.add_edge(START, "fan")
    g.add_edge("fan", END)
    app = g.compile(checkpointer=MemoryCheckpointer())
    items = list(app.stream({}, thread_id="t", stream_mode=["custom", "updates"]))
    assert sorted(p for m, p in items if m == "custom") == [
        ("fan", "from worker 0"), ("fan", "from worker 1")]
    [(_, update)] = [(m, p) for m, p in items if m == "updates"]
    update["fan"]["log"].append("changed by the reader")
    assert app.get_state("t").state.log == ["fanned"]


def test_subgraphs_true_streams_the_subgraphs_steps_under_their_namespace(tmp_path):
    modes = ["steps", "values", "updates", "custom"]
    with SQLiteCheckpointer(tmp_path / "runs.db") as saver:
        app = busy_graph().compile(checkpointer=saver)
        items = list(app.stream({}, thread_id="t", stream_mode=modes, subgraphs=True))
        assert all(len(item) == 3 for item in items)
        # the parent's own items are exactly what a stream without subgraphs gives
        plain = list(app.stream({}, thread_id="u", stream_mode=modes))
        mine = [(mode, payload) for ns, mode, payload in items if ns == ()]
        from_sub = [("s1", "s1 chunk"), ("s2", "s2 chunk")]
        plain_mine = [(m, p) for m, p in plain if p not in from_sub]
        assert sorted(str(p) for m, p in mine if m != "steps") == \
            sorted(str(p) for m, p in plain_mine if m != "steps")
        assert [p.nodes for m, p in mine if m == "steps"] == \
            [p.nodes for m, p in plain if m == "steps"]
        inner = [(ns, mode, payload) for ns, mode, payload in items if ns != ()]
        [namespace] = {ns for ns, _, _ in inner}
        [element] = namespace
        node, _, task = element.partition(":")
        assert node == "side" and len(task) == 32
        # the subgraph's steps, values and updates, as its own history has them
        [sub_thread] = [t.thread_id for t in app.threads() if t.thread_id.startswith("t::side")]
        sub_history = [s for s in reversed(app.history(sub_thread)) if s.kind == "step"]
        steps = [p for _, m, p in inner if m == "steps"]
        assert [e.nodes for e in steps] == [("s1",), ("s2",)]
        assert [e.state for e in steps] == [s.state for s in sub_history]
        assert [p for _, m, p in inner if m == "values"] == [S()] + [e.state for e in steps]
        assert [p for _, m, p in inner if m == "updates"] == [
            {"s1": {"log": ["s1"]}}, {"s2": {"log": ["s2"]}}]
        assert [p for _, m, p in inner if m == "custom"] == [
            ("s1", "s1 chunk"), ("s2", "s2 chunk")]  # tagged with the subgraph's node
        # one mode: (namespace, payload); parent chunks are tagged with their node too
        custom = list(app.stream({}, thread_id="v", stream_mode="custom", subgraphs=True))
        assert sorted(custom, key=str) == sorted(
            [((), ("part", f"part {i}")) for i in range(3)] * 2
            + [(ns, ("s1", "s1 chunk")) for ns, _ in custom if ns != ()][:1]
            + [(ns, ("s2", "s2 chunk")) for ns, _ in custom if ns != ()][:1], key=str)
        assert len({ns for ns, _ in custom}) == 2


def test_nested_subgraphs_stream_under_a_namespace_per_level_and_match_the_task_id():
    seen_ids: dict[str, str] = {}

    def remember(name: str) -> Any:
        def node(state: S, ctx: RunContext) -> dict:
            seen_ids[name] = ctx.task_id
            return {"log": [name]}
        return node

    leaf = StateGraph(S)
    leaf.add_node("leaf", lambda state: {"log": ["leaf"]})
    leaf.add_edge(START, "leaf")
    leaf.add_edge("leaf", END)
    middle = StateGraph(S)
    middle.add_node("inner", leaf.compile())
    middle.add_edge(START, "inner")
    middle.add_edge("inner", END)
    top = StateGraph(S)
    top.add_node("outer", middle.compile())
    top.add_edge(START, "outer")
    top.add_edge("outer", END)

    async def read(app: Any) -> list[Any]:
        return [item async for item in app.astream({}, thread_id="t", stream_mode="updates",
                                                   subgraphs=True)]

    for saver in (None, MemoryCheckpointer()):
        got = asyncio.run(read(top.compile(checkpointer=saver)))
        assert [(len(ns), ns[0].split(":")[0] if ns else None, update)
                for ns, update in got] == [
            (2, "outer", {"leaf": {"log": ["leaf"]}}),
            (1, "outer", {"inner": {"log": ["leaf"]}}),
            (0, None, {"outer": {"log": ["leaf"]}})]
        assert got[0][0][1].startswith("inner:") and got[0][0][0] == got[1][0][0]


def test_a_reader_changing_a_streamed_state_changes_nothing_the_run_keeps():
    with MemoryCheckpointer() as saver:
        app = busy_graph().compile(checkpointer=saver)
        for state in app.stream({}, thread_id="t", stream_mode="values"):
            state.log.append("READER")
        assert "READER" not in app.get_state("t").state.log


def test_many_sync_streams_read_by_one_thread_pool_at_once_each_get_all_their_items():
    """A web server: many requests stream at once, every next() on whichever pool thread is
    free, so threads take turns driving different streams."""
    from concurrent.futures import ThreadPoolExecutor

    app = busy_graph().compile()
    expected = sorted(map(str, app.stream({}, stream_mode=["updates", "custom"])))
    pool = ThreadPoolExecutor(6)

    def consume(_: int) -> list[str]:
        stream = app.stream({}, stream_mode=["updates", "custom"])
        got = []
        while (item := pool.submit(next, stream, None).result()) is not None:
            got.append(str(item))
        return sorted(got)

    with ThreadPoolExecutor(24) as requests:
        results = list(requests.map(consume, range(60)))
    pool.shutdown()
    assert all(result == expected for result in results)


def chat_graph() -> StateGraph:
    from statemachine.messages import Message, MessagesState

    async def answer(state: MessagesState, ctx: RunContext) -> dict:
        text = ""
        for token in ("Hel", "lo", "!"):
            text += token
            ctx.emit(Message(role="assistant", content=token, id="reply-1"))
        return {"messages": [Message(role="assistant", content=text, id="reply-1")]}

    def tool(state: MessagesState) -> dict:
        emit("progress: 100%")  # not a message: "custom" only
        return {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}

    g = StateGraph(MessagesState)
    g.add_node("answer", answer)
    g.add_node("tool", tool)
    g.add_edge(START, "answer")
    g.add_edge("answer", "tool")
    g.add_edge("tool", END)
    return g


def test_messages_mode_streams_token_chunks_and_the_messages_updates_add_once():
    from statemachine.messages import MessagesState

    app = chat_graph().compile(checkpointer=MemoryCheckpointer())
    got = list(app.stream({"messages": "hi"}, thread_id="t", stream_mode="messages"))
    assert [(m.content, m.id, meta["node"], meta["step"]) for m, meta in got] == [
        ("Hel", "reply-1", "answer", 0), ("lo", "reply-1", "answer", 0),
        ("!", "reply-1", "answer", 0),  # the whole reply is not sent again: it was streamed
        ("42", None, "tool", 1)]        # a message not streamed comes whole, as returned
    assert {meta["thread_id"] for _, meta in got} == {"t"}
    assert len(got[0][1]["task_id"]) == 32
    # a subgraph's nodes stream their messages; the subgraph node does not repeat them
    parent = StateGraph(MessagesState)
    parent.add_node("chat", chat_graph().compile(name="chat"))
    parent.add_edge(START, "chat")
    parent.add_edge("chat", END)
    inner = [m.content for m, _ in parent.compile().stream({"messages": "hi"},
                                                           stream_mode="messages")]
    assert inner == ["Hel", "lo", "!", "42"]
    # with custom: a message emitted goes to "messages", anything else to "custom"
    both = list(chat_graph().compile().stream({"messages": "hi"},
                                              stream_mode=["messages", "custom"]))
    assert [p for mode, p in both if mode == "custom"] == [("tool", "progress: 100%")]
    # custom alone: emitted messages are chunks like any other
    custom = list(chat_graph().compile().stream({"messages": "hi"}, stream_mode="custom"))
    assert [getattr(c, "content", c) for c in custom] == ["Hel", "lo", "!", "progress: 100%"]


@pytest.mark.parametrize("store", [None, "sqlite"])
def test_a_sync_nodes_message_chunks_reach_the_caller_while_it_runs(store, tmp_path):
    from statemachine.messages import Message, MessagesState

    seen = threading.Event()

    def answer(state: MessagesState) -> dict:
        emit(Message(role="assistant", content="first token", id="r"))
        if not seen.wait(WAIT):
            raise TimeoutError("the caller never saw the first token while the node ran")
        return {"messages": [Message(role="assistant", content="first token and more", id="r")]}

    g = StateGraph(MessagesState)
    g.add_node("answer", answer)
    g.add_edge(START, "answer")
    g.add_edge("answer", END)
    saver = SQLiteCheckpointer(tmp_path / "runs.db") if store else None
    app = g.compile(checkpointer=saver)
    got = []
    for message, _ in app.stream({"messages": "hi"}, thread_id="t" if saver else None,
                                 stream_mode="messages"):
        got.append(message.content)
        seen.set()
    assert got == ["first token"]
    if saver is not None:
        assert app.get_state("t").state.messages[-1].content == "first token and more"
        saver.close()


def test_a_pause_before_a_node_shows_in_the_updates_stream():
    g = StateGraph(S)
    g.add_node("draft", lambda state: {"log": ["draft"]})
    g.add_node("send", lambda state: {"log": ["send"]})
    g.add_edge(START, "draft")
    g.add_edge("draft", "send")
    g.add_edge("send", END)
    app = g.compile(checkpointer=MemoryCheckpointer(), interrupt_before=["send"])
    assert list(app.stream({}, thread_id="t", stream_mode="updates")) == [
        {"draft": {"log": ["draft"]}}, {"__interrupt__": ()}]
    assert list(app.stream(None, thread_id="t", stream_mode="updates")) == [
        {"send": {"log": ["send"]}}]
