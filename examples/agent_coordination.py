"""Agent coordination: a routed orchestration and a parallel panel of agents.

1. `graph`, the routed orchestration (the SimpleOrchestrator pattern):

       analyzer --route_by_category--> specialist | general --> formatter

   The analyzer classifies the request and the router reads that classification, so the
   "if complex" decision is one named function and the path shows in `trail`.

2. `parallel_graph`, the parallel variant (the ParallelOrchestrator pattern):

       START --> summarizer + sentiment + fact_checker + translator --> aggregator

   Four agents read the same request in one step. `fact_checker` is flaky: its RetryPolicy
   runs it again until it succeeds on attempt 3. `translator`'s service is down: after its
   retries it fails, and `on_error="capture"` turns the failure into a `NodeFailure` in
   `errors` instead of failing the step, like `asyncio.gather(return_exceptions=True)`.
   The aggregator combines the results that arrived and reports the captured error.

The agents are deterministic stand-ins for LLM calls: `StandInAgent.respond` is where a model
call would go.
"""

import operator
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel

from statemachine import END, START, NodeFailure, RetryPolicy, StateGraph, reducers


class StandInAgent:
    """A deterministic agent: answers from a template, failing its first `failures` calls.

    `failures=None` means every call fails (a service that is down).
    """

    def __init__(self, name: str, template: str, *, failures: int | None = 0,
                 error: type[Exception] = ConnectionError) -> None:
        self.name = name
        self.template = template
        self.failures = failures
        self.error = error
        self.calls = 0

    def respond(self, message: str) -> str:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise self.error(f"{self.name} unavailable (call {self.calls})")
        return self.template.format(message=message, words=len(message.split()))


# -- 1. routed orchestration ------------------------------------------------------------------

COMPLEX_SIGNALS = ("integrate", "migrate", "architecture", "compliance", "outage", "legal")


class State(BaseModel):
    request: str
    category: Literal["complex", "simple"] | None = None
    topics: list[str] = []
    response: str = ""
    final: str = ""
    trail: Annotated[list[str], operator.add] = []


specialist_agent = StandInAgent("specialist", "Specialist plan for {words}-word request: "
                                              "assess, design, review.")
general_agent = StandInAgent("general", "Quick answer: {message}")


def analyzer(state: State) -> dict:
    words = state.request.lower().split()
    topics = [s for s in COMPLEX_SIGNALS if any(w.startswith(s) for w in words)]
    category = "complex" if topics else "simple"
    return {"category": category, "topics": topics, "trail": ["analyzer"]}


def route_by_category(state: State) -> str:
    return state.category


def specialist(state: State) -> dict:
    answer = specialist_agent.respond(state.request)
    return {"response": f"{answer} (topics: {', '.join(state.topics)})",
            "trail": ["specialist"]}


def general(state: State) -> dict:
    return {"response": general_agent.respond(state.request), "trail": ["general"]}


def formatter(state: State) -> dict:
    return {"final": f"[{state.category.upper()}] {state.response}", "trail": ["formatter"]}


graph = StateGraph(State)
for node in (analyzer, specialist, general, formatter):
    graph.add_node(node)
graph.add_edge(START, "analyzer")
graph.add_conditional_edges("analyzer", route_by_category,
                            {"complex": "specialist", "simple": "general"})
graph.add_edge("specialist", "formatter")
graph.add_edge("general", "formatter")
graph.add_edge("formatter", END)
app = graph.compile()


# -- 2. parallel panel with retries and captured failures -----------------------------------

class PanelState(BaseModel):
    request: str
    results: Annotated[dict[str, str], reducers.merge_dicts] = {}
    errors: Annotated[list[NodeFailure], operator.add] = []
    report: str = ""


PANEL = {
    "summarizer": StandInAgent("summarizer", "{words} words about a customer request"),
    "sentiment": StandInAgent("sentiment", "tone: urgent"),
    "fact_checker": StandInAgent("fact_checker", "claims consistent with the account",
                                 failures=2, error=TimeoutError),
    "translator": StandInAgent("translator", "translated", failures=None,
                               error=ConnectionError),
}
"""The panel's agents by node name: fact_checker fails twice, translator always."""

QUICK_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, backoff=1.0, jitter=False)


def agent_node(name: str):
    """A node that asks one panel agent about the request and files its answer by name."""

    def node(state: PanelState) -> dict:
        return {"results": {name: PANEL[name].respond(state.request)}}

    node.__name__ = name
    return node


def aggregator(state: PanelState) -> dict:
    answered = [name for name in PANEL if name in state.results]
    lines = [f"{name}: {state.results[name]}" for name in answered]
    lines += [f"{failure.node}: FAILED ({failure.error_type}: {failure.message})"
              for failure in state.errors]
    header = f"{len(answered)} of {len(PANEL)} agents answered"
    return {"report": "\n".join([header, *lines])}


parallel_graph = StateGraph(PanelState)
parallel_graph.add_node("summarizer", agent_node("summarizer"))
parallel_graph.add_node("sentiment", agent_node("sentiment"))
parallel_graph.add_node("fact_checker", agent_node("fact_checker"), retry=QUICK_RETRY)
parallel_graph.add_node("translator", agent_node("translator"),
                        retry=RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False),
                        on_error="capture")
parallel_graph.add_node("aggregator", aggregator)
for name in PANEL:
    parallel_graph.add_edge(START, name)  # fan-out: all four run in step 0
parallel_graph.add_edge(list(PANEL), "aggregator")  # join: once, after all four
parallel_graph.add_edge("aggregator", END)
parallel_app = parallel_graph.compile()


class RetryLog:
    """A listener: records every retry the run makes (`on_node_retry`)."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, int, str]] = []

    def on_node_retry(self, thread_id, step, node, attempt, error, delay) -> None:
        self.retries.append((node, attempt, f"{type(error).__name__}: {error}"))


# -- running both ---------------------------------------------------------------------------

DEMO_REQUESTS = (
    "How do I change my invoice address?",
    "We must integrate the billing system with legal hold before the audit",
)
PANEL_REQUEST = "Customer reports double charges after the outage and wants a refund today"


class Results(NamedTuple):
    routed: list[State]
    panel: PanelState


def main(requests: Sequence[str] = DEMO_REQUESTS, panel_request: str = PANEL_REQUEST
         ) -> Results:
    """Route each request, then put one request to the parallel panel."""
    print("== routed: analyzer -> specialist | general -> formatter")
    routed = []
    for request in requests:
        final = app.invoke({"request": request})
        print(f"{request!r}")
        print(f"  path:  {' -> '.join(final.trail)}")
        print(f"  final: {final.final}")
        routed.append(final)

    print("== parallel panel: four agents in one step, then the aggregator")
    for agent in PANEL.values():
        agent.calls = 0
    log = RetryLog()
    parallel_app.add_listener(log)
    try:
        events = list(parallel_app.stream({"request": panel_request}))
    finally:
        parallel_app.remove_listener(log)
    for event in events:
        # attempts are listed as the tasks finished: sort them for a stable trace
        attempts = f"  attempts={dict(sorted(event.attempts.items()))}" if event.attempts else ""
        print(f"step {event.step}: {', '.join(event.nodes)}{attempts}")
    for node, attempt, error in sorted(log.retries):
        print(f"  retried {node} after attempt {attempt}: {error}")
    panel = events[-1].state
    for failure in panel.errors:
        print(f"  captured: {failure}")
    print(panel.report)
    return Results(routed, panel)


if __name__ == "__main__":
    main()
