"""The first durable run: a thread, committed step by step to SQLite, read back and continued.

    START -> work --again--> work
                  --done---> END        (every third count)

With a checkpointer, `invoke(..., thread_id=...)` commits every step before the next one
starts; `get_state` and `history` read the thread back, from this process or any other, and
new input on a finished thread continues it.
"""

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


graph = StateGraph(State)
graph.add_node("work", work)
graph.add_edge(START, "work")
graph.add_conditional_edges("work", route, {"again": "work", "done": END})


def main(path: Path) -> State:
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        app.invoke({"count": 0}, thread_id="first")      # three steps, each committed
        snapshot = app.get_state("first")
        print(snapshot.status, snapshot.step, snapshot.state.count)
        print(len(app.history("first")), "checkpoints")  # the input's, then one per step
        final = app.invoke({"count": 3}, thread_id="first")  # new input continues it
        print(final.log)
    return final


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp) / "runs.db")
