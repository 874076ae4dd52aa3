"""Parallel analysis: three analysts read one document in the same step, an aggregator joins.

`add_edge(START, analyst)` for each analyst fans out: all three run in step 0, in worker
threads, so their (simulated) latencies overlap. `add_edge([...], "aggregate")` is a join:
the aggregator runs once, after all of them. Their results meet in `findings`, a dict with the
`merge_dicts` reducer, so concurrent writes merge instead of clashing; `finished` (an append
reducer) shows that updates are applied in declaration order, never in completion order,
even though the analysts below finish in reverse order.
"""

import operator
import time
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, StateGraph, reducers

DOCUMENT = """\
Our new checkout is fast and the team loved the clean design. Customers report great
results, although two enterprise clients found the refund flow confusing. Legal asked us to
review the data retention wording before the launch, which is a risk for the launch date.
"""

POSITIVE = {"fast", "loved", "clean", "great", "good"}
NEGATIVE = {"confusing", "risk", "slow", "broken", "bad"}
RISK_TERMS = ("legal", "retention", "refund", "breach")
STOPWORDS = {"the", "and", "our", "a", "is", "for", "to", "of", "we", "us", "which", "before",
             "found", "asked", "two", "new", "although"}


class Finding(BaseModel):
    score: float
    summary: str


class State(BaseModel):
    document: str
    findings: Annotated[dict[str, Finding], reducers.merge_dicts] = {}
    finished: Annotated[list[str], operator.add] = []
    verdict: str = ""


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?").lower() for w in text.split()]


def sentiment(state: State) -> dict:
    time.sleep(0.03)  # the slowest analyst: finishes last
    words = _words(state.document)
    pos, neg = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
    score = (pos - neg) / max(pos + neg, 1)
    return {"findings": {"sentiment": Finding(score=score, summary=f"+{pos} / -{neg} words")},
            "finished": ["sentiment"]}


def keywords(state: State) -> dict:
    time.sleep(0.02)
    counts: dict[str, int] = {}
    for word in _words(state.document):
        if len(word) > 3 and word not in STOPWORDS:
            counts[word] = counts.get(word, 0) + 1
    top = sorted(counts, key=lambda w: (-counts[w], w))[:3]
    diversity = len(counts) / max(sum(counts.values()), 1)
    return {"findings": {"keywords": Finding(score=diversity, summary=", ".join(top))},
            "finished": ["keywords"]}


def risk(state: State) -> dict:
    time.sleep(0.01)  # the fastest analyst: finishes first
    text = state.document.lower()
    hits = [term for term in RISK_TERMS if term in text]
    return {"findings": {"risk": Finding(score=len(hits) / len(RISK_TERMS),
                                         summary=", ".join(hits) or "none")},
            "finished": ["risk"]}


def aggregate(state: State) -> dict:
    mood = state.findings["sentiment"].score
    exposure = state.findings["risk"].score
    if exposure >= 0.5:
        verdict = "hold: risks need review"
    elif mood > 0:
        verdict = "ship"
    else:
        verdict = "rework"
    return {"verdict": verdict}


ANALYSTS = ("sentiment", "keywords", "risk")

graph = StateGraph(State)
graph.add_node("sentiment", sentiment)
graph.add_node("keywords", keywords)
graph.add_node("risk", risk)
graph.add_node("aggregate", aggregate)
for analyst in ANALYSTS:
    graph.add_edge(START, analyst)  # fan-out: all three start in step 0
graph.add_edge(list(ANALYSTS), "aggregate")  # join: runs once, after all three
graph.add_edge("aggregate", END)
app = graph.compile()


def main(document: str = DOCUMENT) -> State:
    events = list(app.stream({"document": document}))
    for event in events:
        print(f"step {event.step}: {', '.join(event.nodes)}")
    final = events[-1].state
    for name, finding in final.findings.items():
        print(f"  {name:<9} score={finding.score:+.2f}  {finding.summary}")
    print(f"merge order: {final.finished}")
    print(f"verdict: {final.verdict}")
    return final


if __name__ == "__main__":
    main()
