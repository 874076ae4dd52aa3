"""Routing: an analyzer classifies each request, a router sends it to the right handler.

The workflow pattern from orchestration frameworks (analyze -> specialist or general agent ->
format), written as a graph: the "if complex" decision lives in one router, so the path a
request took is visible in the state and in the step trace, not buried in an if/else.
The agents are plain deterministic functions standing in for LLM calls.
"""

import operator
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel

from statemachine import END, START, StateGraph

COMPLEX_SIGNALS = ("migrate", "architecture", "integrate", "compliance", "outage", "legal")
"""Words that make the analyzer call a request complex, as a classifier model would."""


class State(BaseModel):
    request: str
    category: Literal["complex", "simple"] | None = None
    signals: list[str] = []
    response: str = ""
    final: str = ""
    trail: Annotated[list[str], operator.add] = []
    """Every node appends its name: the path this request took."""


def analyzer(state: State) -> dict:
    words = state.request.lower().split()
    signals = [s for s in COMPLEX_SIGNALS if any(w.startswith(s) for w in words)]
    category = "complex" if signals or len(words) > 25 else "simple"
    return {"category": category, "signals": signals, "trail": ["analyzer"]}


def specialist(state: State) -> dict:
    topics = ", ".join(state.signals) or "a long request"
    plan = f"Escalated to a specialist (topics: {topics}). Plan: assess, design, review."
    return {"response": plan, "trail": ["specialist"]}


def general(state: State) -> dict:
    return {"response": f"Answered directly: {state.request.rstrip('?.!')}.",
            "trail": ["general"]}


def formatter(state: State) -> dict:
    return {"final": f"[{state.category.upper()}] {state.response}", "trail": ["formatter"]}


def route_by_category(state: State) -> str:
    return state.category


graph = StateGraph(State)
graph.add_node("analyzer", analyzer)
graph.add_node("specialist", specialist)
graph.add_node("general", general)
graph.add_node("formatter", formatter)
graph.add_edge(START, "analyzer")
graph.add_conditional_edges("analyzer", route_by_category,
                            {"complex": "specialist", "simple": "general"})
graph.add_edge("specialist", "formatter")
graph.add_edge("general", "formatter")
graph.add_edge("formatter", END)
app = graph.compile()

DEMO_REQUESTS = (
    "How do I reset my password?",
    "We need to migrate our billing architecture to the new region without an outage",
)


def main(requests: Sequence[str] = DEMO_REQUESTS) -> list[State]:
    """Run each request through the workflow; returns the final state of each."""
    finals = []
    for request in requests:
        print(f"request: {request!r}")
        events = list(app.stream({"request": request}))
        for event in events:
            print(f"  step {event.step}: {' + '.join(event.nodes)}")
        final = events[-1].state
        print(f"  path:  {' -> '.join(final.trail)}")
        print(f"  final: {final.final}")
        finals.append(final)
    return finals


if __name__ == "__main__":
    main()
