"""Made tests/data/schema4_chat.db and .json with the engine at git cca4977 (schema 4, which
stored a snapshot at the start and end of every run): python tests/data/make_schema4_fixture.py
tests/data/schema4_chat.db tests/data/schema4_chat.json. Kept to show that files written
before storage became proportional to what changed still read and run correctly."""
import json, operator, os, sys
from typing import Annotated
from pydantic import BaseModel
from checkpoints import SQLiteCheckpointer
from statemachine import StateGraph, START, END, Send

class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    turns: int = 0

def reply(s: Chat):
    if s.messages and s.messages[-1] == "fail":
        raise RuntimeError("asked to fail")
    return {"messages": [f"reply to {s.messages[-1]}"], "turns": s.turns + 1}

def fan(s: Chat):
    return [Send("part", {"messages": [f"part {i}"]}) for i in range(3)]

def part(s: Chat):
    return {"messages": [f"done {s.messages[-1]}"]}

g = StateGraph(Chat)
g.add_node("reply", reply); g.add_node("part", part)
g.add_edge(START, "reply")
g.add_conditional_edges("reply", fan, ["part"])
g.add_edge("part", END)
path = sys.argv[1]
if os.path.exists(path): os.remove(path)
saver = SQLiteCheckpointer(path); app = g.compile(checkpointer=saver)
for i in range(6):
    app.invoke({"messages": [f"hello {i}"]}, thread_id="chat")
try:
    app.invoke({"messages": ["fail"]}, thread_id="chat")
except RuntimeError:
    pass
app.update_state("chat", {"messages": ["fixed by hand"]}, as_node="reply")
app.resume("chat")
hist = app.history("chat")
fork_from = hist[len(hist) // 2].checkpoint_id
app.invoke(None, thread_id="chat", checkpoint_id=fork_from)
app.invoke({"messages": ["other"]}, thread_id="other")
expected = {}
for t in ("chat", "other"):
    expected[t] = {s.checkpoint_id: s.state.model_dump() for s in app.history(t)}
saver.close()
json.dump(expected, open(sys.argv[2], "w"), indent=0, sort_keys=True)
print("ok", os.path.getsize(path), sum(len(v) for v in expected.values()))
