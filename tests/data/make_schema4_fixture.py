"""Made tests/data/schema4_chat.db and .json with the engine at git cca4977 (schema 4, which
stored a snapshot at the start and end of every run):

    cd tests/data && python make_schema4_fixture.py schema4_chat.db schema4_chat.json

Kept to show that files written before storage became proportional to what changed still read
and run correctly (tests/test_retention.py)."""

import contextlib
import json
import operator
import sys
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, Send, StateGraph


class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    turns: int = 0


def reply(s: Chat) -> dict:
    if s.messages and s.messages[-1] == "fail":
        raise RuntimeError("asked to fail")
    return {"messages": [f"reply to {s.messages[-1]}"], "turns": s.turns + 1}


def fan(s: Chat) -> list[Send]:
    return [Send("part", {"messages": [f"part {i}"]}) for i in range(3)]


def part(s: Chat) -> dict:
    return {"messages": [f"done {s.messages[-1]}"]}


def graph() -> StateGraph:
    g = StateGraph(Chat)
    g.add_node("reply", reply)
    g.add_node("part", part)
    g.add_edge(START, "reply")
    g.add_conditional_edges("reply", fan, ["part"])
    g.add_edge("part", END)
    return g


def main(db: Path, expected_json: Path) -> None:
    db.unlink(missing_ok=True)
    saver = SQLiteCheckpointer(db)
    app = graph().compile(checkpointer=saver)
    for i in range(6):
        app.invoke({"messages": [f"hello {i}"]}, thread_id="chat")
    with contextlib.suppress(RuntimeError):
        app.invoke({"messages": ["fail"]}, thread_id="chat")
    app.update_state("chat", {"messages": ["fixed by hand"]}, as_node="reply")
    app.resume("chat")
    history = app.history("chat")
    app.invoke(None, thread_id="chat", checkpoint_id=history[len(history) // 2].checkpoint_id)
    app.invoke({"messages": ["other"]}, thread_id="other")
    expected = {t: {s.checkpoint_id: s.state.model_dump() for s in app.history(t)}
                for t in ("chat", "other")}
    saver.close()
    expected_json.write_text(json.dumps(expected, indent=0, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
