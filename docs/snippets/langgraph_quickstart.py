"""The quick start (examples/quickstart.py) written for LangGraph, for the "Coming from
LangGraph" page: the same graph, state and output, so the two can be read side by side.
Needs langgraph (in the dev and bench extras). Run by tests/test_docs.py."""

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    count: int
    log: Annotated[list[str], operator.add]  # reducer: updates are appended


def work(state: State) -> dict:
    return {"count": state["count"] + 1, "log": [f"step {state['count']}"]}


def route(state: State) -> str:
    return "done" if state["count"] >= 3 else "again"


g = StateGraph(State)
g.add_node("work", work)
g.add_edge(START, "work")
g.add_conditional_edges("work", route, {"again": "work", "done": END})
app = g.compile()

for update in app.stream({"count": 0, "log": []}, stream_mode="updates"):
    print(update)
print(app.invoke({"count": 0, "log": []}))
