"""Quick start (the README's): one node that loops until a counter reaches 3."""

import operator
import sys
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

import visualize
from statemachine import END, START, StateGraph


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []  # reducer: updates are appended


def work(state: State) -> dict:
    return {"count": state.count + 1, "log": [f"step {state.count}"]}


def route(state: State) -> str:
    return "done" if state.count >= 3 else "again"


graph = StateGraph(State)
graph.add_node("work", work)
graph.add_edge(START, "work")
graph.add_conditional_edges("work", route, {"again": "work", "done": END})
app = graph.compile()


def main(diagram: Path | None = None) -> State:
    for event in app.stream({"count": 0}):  # one event per step, as it is committed
        print(f"step {event.step}: ran {', '.join(event.nodes)} -> {event.updates}")
    final = app.invoke({"count": 0})  # the same run, returning only the final state
    print(f"final: {final!r}")
    try:  # the diagram, next to this file unless told otherwise (needs Graphviz's `dot`)
        print(f"diagram: {visualize.render(app, diagram or Path(__file__).with_suffix('.svg'))}")
    except visualize.GraphvizNotFoundError as exc:
        print(f"diagram: not drawn: {exc}", file=sys.stderr)
    return final


if __name__ == "__main__":
    main()
