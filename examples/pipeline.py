"""Pipeline: load -> clean -> enrich -> summarize, over a small sales dataset in the state.

Each stage is a plain function that reads the previous stage's output from the state and
returns its own; `stages` (a list with an append reducer) records the order they ran in, and
`dropped` collects the rows cleaning rejected, with the reason, instead of losing them silently.
"""

import operator
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, StateGraph

RAW_CSV = """\
region_code,customer,amount
n, Acme Corp ,1200
S,globex,850.50
n,Acme Corp,1200
E,Initech,
W,umbrella,-40
s, Hooli ,2300
E,Stark Industries,4100
x,Wayne Enterprises,990
"""

REGIONS = {"N": "North", "S": "South", "E": "East", "W": "West"}
LARGE_DEAL = 2000.0


class Sale(BaseModel):
    region_code: str
    customer: str
    amount: float
    region: str | None = None
    large: bool = False


class State(BaseModel):
    source: str
    raw_rows: list[dict[str, str]] = []
    sales: list[Sale] = []
    dropped: Annotated[list[str], operator.add] = []
    summary: dict[str, float] = {}
    report: str = ""
    stages: Annotated[list[str], operator.add] = []


def load(state: State) -> dict:
    header, *lines = state.source.strip().splitlines()
    keys = header.split(",")
    rows = [dict(zip(keys, line.split(","), strict=True)) for line in lines]
    return {"raw_rows": rows, "stages": ["load"]}


def clean(state: State) -> dict:
    sales: list[Sale] = []
    dropped: list[str] = []
    seen: set[tuple[str, str, float]] = set()
    for row in state.raw_rows:
        customer = " ".join(row["customer"].split()).title()
        if not row["amount"].strip():
            dropped.append(f"{customer}: missing amount")
            continue
        amount = float(row["amount"])
        if amount <= 0:
            dropped.append(f"{customer}: non-positive amount {amount:g}")
            continue
        key = (row["region_code"].upper(), customer, amount)
        if key in seen:
            dropped.append(f"{customer}: duplicate row")
            continue
        seen.add(key)
        sales.append(Sale(region_code=key[0], customer=customer, amount=amount))
    return {"sales": sales, "dropped": dropped, "stages": ["clean"]}


def enrich(state: State) -> dict:
    enriched = [sale.model_copy(update={"region": REGIONS.get(sale.region_code, "Unknown"),
                                        "large": sale.amount >= LARGE_DEAL})
                for sale in state.sales]
    return {"sales": enriched, "stages": ["enrich"]}


def summarize(state: State) -> dict:
    totals: dict[str, float] = {}
    for sale in state.sales:
        totals[sale.region] = totals.get(sale.region, 0.0) + sale.amount
    large = [s.customer for s in state.sales if s.large]
    report = (f"{len(state.sales)} sales, total {sum(totals.values()):.2f}; "
              f"large deals: {', '.join(large) or 'none'}")
    return {"summary": dict(sorted(totals.items())), "report": report, "stages": ["summarize"]}


graph = StateGraph(State)
for stage in (load, clean, enrich, summarize):
    graph.add_node(stage)  # named after the function
graph.add_edge(START, "load")
graph.add_edge("load", "clean")
graph.add_edge("clean", "enrich")
graph.add_edge("enrich", "summarize")
graph.add_edge("summarize", END)
app = graph.compile()


def main(source: str = RAW_CSV) -> State:
    events = list(app.stream({"source": source}))
    for event in events:
        state = event.state
        (stage,) = event.nodes  # a linear pipeline runs exactly one stage per step
        print(f"step {event.step}: {stage:<9} raw={len(state.raw_rows)} "
              f"sales={len(state.sales)} dropped={len(state.dropped)}")
    final = events[-1].state
    print("dropped:")
    for reason in final.dropped:
        print(f"  - {reason}")
    print("totals by region:")
    for region, total in final.summary.items():
        print(f"  {region:<8} {total:>9.2f}")
    print(f"report: {final.report}")
    return final


if __name__ == "__main__":
    main()
