"""Chat messages (`statemachine.messages`): add_messages against a model of an id-keyed ordered
list, ids that replay identically, and storage that grows with the change, not the list."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph
from statemachine.messages import Message, MessagesState, RemoveMessage, add_messages

ROLES = st.sampled_from(["user", "assistant", "system", "tool"])
TEXT = st.text("abc ", max_size=6)

# an operation on the list: ("append", role, text) | ("put", id, text) | ("remove", n)
operation = st.one_of(
    st.tuples(st.just("append"), ROLES, TEXT),
    st.tuples(st.just("put"), st.sampled_from(["k1", "k2", "k3"]), TEXT),
    st.tuples(st.just("replace"), st.integers(0, 30), TEXT),
    st.tuples(st.just("remove"), st.integers(0, 30)),
)


def as_entries(batch: list[tuple], current: list[Message]) -> tuple[list[Any], list[tuple]]:
    """An update for `current` from `batch`, and the model's view of each entry: which
    existing message it names (by index), if any. Entries alternate Messages and dicts."""
    entries: list[Any] = []
    live = [m.id for m in current]
    for n, op in enumerate(batch):
        kind = op[0]
        if kind == "append":
            entry: Any = {"role": op[1], "content": op[2]}
        elif kind == "put":
            entry = {"role": "user", "content": op[2], "id": op[1]}
        elif kind == "replace":
            if not live:
                continue
            entry = {"role": "assistant", "content": op[2], "id": live[op[1] % len(live)]}
        else:
            if not live:
                continue
            target = live.pop(op[1] % len(live))
            entry = RemoveMessage(id=target)
            entries.append(entry)
            continue
        entries.append(Message.model_validate(entry) if n % 2 else entry)
    return entries, []


def model_apply(model: list[tuple[str | None, str, Any]], entries: list[Any]
                ) -> list[tuple[str | None, str, Any]]:
    """The specification: an ordered list keyed by id; a known id is replaced in place, a
    removal drops its id, anything else is appended."""
    out = list(model)
    for entry in entries:
        fields = entry.model_dump() if isinstance(entry, Message) else dict(entry)
        key = fields.get("id")
        if fields.get("role") == "remove":
            out = [item for item in out if item[0] != key]
            continue
        item = (key, fields["role"], fields.get("content", ""))
        ids = [i[0] for i in out]
        if key is not None and key in ids:
            out[ids.index(key)] = item
        else:
            out.append(item)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(operation, min_size=1, max_size=4), max_size=8))
def test_add_messages_is_an_id_keyed_ordered_list(batches):
    state: list[Message] = []
    model: list[tuple[str | None, str, Any]] = []
    updates = []
    for batch in batches:
        entries, _ = as_entries(batch, state)
        before = list(state)
        state = add_messages(state, entries)
        assert state is not before and before == list(before)  # no argument changed
        # the model assigns no ids: compare what it says of ids it knows, and order/content
        model = model_apply(model, entries)
        model = [(m.id, m.role, m.content) if key is None else (key, role, content)
                 for (key, role, content), m in zip(model, state, strict=True)]
        assert [(m.role, m.content) for m in state] == [(r, c) for _, r, c in model]
        updates.append(entries)
    ids = [m.id for m in state]
    assert None not in ids and len(set(ids)) == len(ids)  # every message has its own id
    replayed: list[Message] = []
    for entries in updates:  # resume and history replay the stored updates: the same ids
        replayed = add_messages(replayed, entries)
    assert replayed == state
    # a cold read replays them all in one go (one id index for all the steps): the same
    from statemachine.state import StateSchema

    schema = StateSchema(MessagesState)
    steps = [[("node", {"messages": entries})] for entries in updates]
    assert schema.replay(MessagesState(), steps).messages == state


def test_remove_of_an_unknown_id_names_it_and_the_node():
    g = StateGraph(MessagesState)
    g.add_node("forget", lambda state: {"messages": [RemoveMessage(id="nope")]})
    g.add_edge(START, "forget")
    g.add_edge("forget", END)
    with pytest.raises(ValueError, match="RemoveMessage\\(id='nope'\\): no message") as info:
        g.compile().invoke({"messages": [{"role": "user", "content": "hi"}]})
    assert "node 'forget' into field 'messages'" in " ".join(info.value.__notes__)


def test_roles_take_langchain_names_and_reject_others():
    assert Message(role="human", content="x").role == "user"
    assert Message.model_validate({"role": "ai"}).role == "assistant"
    with pytest.raises(ValueError, match="role"):
        Message.model_validate({"role": "wizard"})


class Chat(MessagesState):
    turns: int = 0


def chat_graph() -> StateGraph:
    def reply(state: Chat) -> dict:
        text = f"re: {state.messages[-1].content}" if state.messages else "hello"
        return {"messages": [Message(role="assistant", content=text)], "turns": state.turns + 1}

    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def test_a_chat_keeps_its_ids_across_processes_and_an_edit_stores_only_the_message(tmp_path):
    db = tmp_path / "chat.db"
    big = "x" * 20_000
    with SQLiteCheckpointer(db) as saver:
        app = chat_graph().compile(checkpointer=saver)
        for turn in range(5):
            state = app.invoke({"messages": [{"role": "user", "content": f"{big} {turn}"}]},
                               thread_id="c")
        first_reply = state.messages[1]
        edited = app.update_state("c", {"messages": [Message(
            role="assistant", content="shorter", id=first_reply.id)]})
        removed = app.update_state("c", {"messages": [RemoveMessage(id=state.messages[0].id)]})
        ids = [m.id for m in removed.state.messages]
    assert edited.state.messages[1].content == "shorter"
    assert len(ids) == 9 and first_reply.id == ids[0]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        last_two = conn.execute("SELECT length(writes) FROM checkpoints ORDER BY id DESC "
                                "LIMIT 2").fetchall()
    assert all(size < 300 for (size,) in last_two)  # the message, not 100 KB of list
    with SQLiteCheckpointer(db) as saver:  # a fresh process rebuilds the same ids
        again = chat_graph().compile(checkpointer=saver).get_state("c").state
    assert [m.id for m in again.messages] == ids


def test_a_subgraph_on_the_same_messages_may_remove_and_replace_the_parents_messages():
    def trim(state: MessagesState) -> dict:
        return {"messages": [RemoveMessage(id=m.id) for m in state.messages[:-1]]
                + [Message(role="system", content="summary")]}

    inner = StateGraph(MessagesState)
    inner.add_node("trim", trim)
    inner.add_edge(START, "trim")
    inner.add_edge("trim", END)
    g = StateGraph(MessagesState)
    g.add_node("summarize", inner.compile(name="summarize"))
    g.add_edge(START, "summarize")
    g.add_edge("summarize", END)
    final = g.compile().invoke({"messages": [{"role": "user", "content": c} for c in "abc"]})
    assert [(m.role, m.content) for m in final.messages] == [("user", "c"),
                                                             ("system", "summary")]


def test_provider_dicts_keep_their_extra_keys_and_may_have_no_content():
    message = Message.model_validate({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function"}], "response_metadata": {"model": "m"}})
    assert message.content is None and message.model_dump()["response_metadata"] == {
        "model": "m"}


def test_the_testing_toolkit_generates_chat_states():
    from statemachine.testing import check_runs

    check_runs(chat_graph().compile(), max_examples=20)


@pytest.mark.parametrize("alone", [
    Message(role="assistant", content="one"),
    {"role": "assistant", "content": "one"},
], ids=["Message", "dict"])
def test_one_message_may_be_returned_alone_and_replays_the_same(alone, tmp_path):
    g = StateGraph(MessagesState)
    g.add_node("reply", lambda state: {"messages": alone})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    with SQLiteCheckpointer(tmp_path / "chat.db") as saver:
        app = g.compile(checkpointer=saver)
        state = app.invoke({"messages": [{"role": "user", "content": "hi"}]}, thread_id="c")
        assert [(m.role, m.content) for m in state.messages] == [("user", "hi"),
                                                                 ("assistant", "one")]
        gone = app.update_state("c", {"messages": RemoveMessage(id=state.messages[0].id)})
        assert [m.content for m in gone.state.messages] == ["one"]
    with SQLiteCheckpointer(tmp_path / "chat.db") as saver:  # rebuilt from the stored writes
        again = g.compile(checkpointer=saver)
        assert again.get_state("c").state == gone.state
        assert [s.state.messages for s in again.history("c")][-2] == state.messages


def test_a_new_threads_first_input_may_be_one_message_alone():
    g = StateGraph(MessagesState)
    g.add_node("reply", lambda state: {"messages": {"role": "assistant", "content": "hello"}})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    state = g.compile().invoke({"messages": {"role": "user", "content": "hi"}})
    assert [m.content for m in state.messages] == ["hi", "hello"]


def test_shorthands_langchain_dicts_and_remove_all():
    from statemachine.messages import REMOVE_ALL_MESSAGES

    merged = add_messages([], ["hi", ("assistant", "hello"), {"type": "human", "content": "x"},
                               {"type": "ai", "content": "y"}])
    assert [(m.role, m.content) for m in merged] == [
        ("user", "hi"), ("assistant", "hello"), ("user", "x"), ("assistant", "y")]
    assert not hasattr(merged[2], "type") or "type" not in (merged[2].model_extra or {})
    summary = add_messages(merged, [RemoveMessage(id=REMOVE_ALL_MESSAGES),
                                    ("system", "summary of four messages")])
    assert [(m.role, m.content) for m in summary] == [("system", "summary of four messages")]

    g = StateGraph(MessagesState)
    g.add_node("reply", lambda state: {"messages": "text alone is a user message"})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    state = g.compile().invoke({"messages": "hi"})
    assert [m.content for m in state.messages] == ["hi", "text alone is a user message"]
