"""Map-reduce: summarize every document in parallel with `Send`, then reduce the summaries.

    START --fan_out--> summarize x N (one task per document, one step) --> reduce --> END

The router returns `[Send("summarize", doc) for doc in state.documents]`: one `summarize` task
per document, each getting its document as input instead of the state. Their updates merge
through the `summaries` reducer in the order of the Sends, which is document order, whatever
order the tasks finish in. `reduce` runs once, after all of them, and combines the summaries
into a digest.

`compile(max_concurrency=2)` lets at most two summaries run at once. `CachePolicy` on summarize
reuses a summary when the same document comes again: the second run below summarizes nothing
and `StepEvent.cache_hits` names summarize; the third changes one document, and only that one
is summarized again. The summarizer is a deterministic stand-in for an LLM call.
"""

import operator
import threading
import time
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, CachePolicy, Send, StateGraph, StepEvent


class Document(BaseModel):
    id: str
    title: str
    text: str


class Summary(BaseModel):
    id: str
    text: str
    words: int


class State(BaseModel):
    documents: list[Document]
    summaries: Annotated[list[Summary], operator.add] = []
    digest: str = ""


DOCUMENTS = (
    Document(id="q1", title="Q1 report",
             text="Revenue grew 12 percent. Costs were flat. Hiring paused in March."),
    Document(id="incident", title="Incident review",
             text="The checkout was down for 40 minutes. A config change caused it."),
    Document(id="roadmap", title="Roadmap",
             text="Ship the mobile app in June. Retire the legacy API by autumn."),
    Document(id="survey", title="Customer survey",
             text="Customers like the new search. Delivery times remain the top complaint."),
)
MAX_CONCURRENCY = 2


class Tracker:
    """Which documents were summarized (cache misses), and how many ran at once at most."""

    def __init__(self) -> None:
        self.summarized: list[str] = []
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def end(self, doc_id: str) -> None:
        with self._lock:
            self.running -= 1
            self.summarized.append(doc_id)


tracker = Tracker()


def fan_out(state: State) -> list[Send]:
    return [Send("summarize", doc) for doc in state.documents]


def summarize(doc: Document) -> dict:
    # the Send payload arrives as the type this parameter declares, with or without a
    # checkpointer (it is stored as JSON and validated back into a Document)
    tracker.start()
    try:
        time.sleep(0.002 * len(doc.text.split()))  # the model call: longer for longer texts
        first_sentence = doc.text.split(". ")[0].rstrip(".")
        summary = Summary(id=doc.id, text=f"{doc.title}: {first_sentence}.",
                          words=len(doc.text.split()))
    finally:
        tracker.end(doc.id)
    return {"summaries": [summary]}


def reduce(state: State) -> dict:
    total = sum(s.words for s in state.summaries)
    lines = [f"- {s.text}" for s in state.summaries]
    return {"digest": "\n".join([f"{len(state.summaries)} documents, {total} words", *lines])}


graph = StateGraph(State)
graph.add_node("summarize", summarize, cache=CachePolicy(ttl=3600))
graph.add_node("reduce", reduce)
graph.add_conditional_edges(START, fan_out, ["summarize"])
graph.add_edge("summarize", "reduce")  # the tasks of one step: reduce runs once after them
graph.add_edge("reduce", END)


def tasks_of(event: StepEvent) -> int:
    """How many tasks ran in a step (an update per node, a list of them for a fanned-out one)."""
    return sum(len(u) if isinstance(u, list) else 1 for u in event.updates.values())


def main(documents: Sequence[Document] = DOCUMENTS) -> State:
    """Run the map-reduce three times: fresh, all cached, one document changed."""
    global tracker
    # compiled here, so each call starts with an empty in-memory cache
    app = graph.compile(max_concurrency=MAX_CONCURRENCY)
    changed = [*documents[:-1], documents[-1].model_copy(
        update={"text": documents[-1].text + " Returns are up."})]
    runs = [("first run", list(documents)), ("same documents", list(documents)),
            ("last document edited", changed)]
    final = None
    for label, docs in runs:
        tracker = Tracker()
        print(f"== {label}")
        events = list(app.stream({"documents": docs}))
        for event in events:
            hits = f"  cache_hits={list(event.cache_hits)}" if event.cache_hits else ""
            print(f"step {event.step}: {', '.join(event.nodes)} x{tasks_of(event)}{hits}")
        summarized = [doc.id for doc in docs if doc.id in tracker.summarized]
        if summarized:
            print(f"summarized: {', '.join(summarized)}; "
                  f"at most {tracker.peak} at once (limit {MAX_CONCURRENCY})")
        else:
            print("summarized: nothing, every summary came from the cache")
        final = events[-1].state
    assert final is not None
    print(f"merge order: {[s.id for s in final.summaries]}")
    print(final.digest)
    return final


if __name__ == "__main__":
    main()
