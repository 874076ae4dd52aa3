"""The first durable run (docs/get-started/durable-run.md): a thread, committed step by step
to SQLite, read back and continued. Run by tests/test_docs.py."""

import operator
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []


def work(state: State) -> dict:
    return {"count": state.count + 1, "log": [f"step {state.count}"]}


def route(state: State) -> str:
    return "done" if state.count % 3 == 0 else "again"


g = StateGraph(State)
g.add_node("work", work)
g.add_edge(START, "work")
g.add_conditional_edges("work", route, {"again": "work", "done": END})

with tempfile.TemporaryDirectory() as tmp:
    saver = SQLiteCheckpointer(Path(tmp) / "runs.db")
    app = g.compile(checkpointer=saver)
    app.invoke({"count": 0}, thread_id="first")      # three steps, each committed
    snapshot = app.get_state("first")
    print(snapshot.status, snapshot.step, snapshot.state.count)   # done 3 3
    print(len(app.history("first")), "checkpoints")               # 4 checkpoints
    app.invoke({"count": 3}, thread_id="first")      # new input continues the thread
    print(app.get_state("first").state.log)
    saver.close()
