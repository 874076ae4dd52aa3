"""The first diagram: a graph drawn as Mermaid text, as Graphviz DOT with a thread's run path,
and as SVG.

    START -> check --ok--> ship -> END
                   --hold-> review -> ship

`visualize.to_mermaid(app)` needs nothing installed; `visualize.to_dot(app, thread_id=...)`
marks what that thread did (nodes visited and how often, edges taken, a failed node in red,
the next nodes, the status); `visualize.render(app, path)` writes SVG, PNG or PDF with
Graphviz's `dot`. The same graph always gives the same text, so diagrams can be committed.
"""

import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

import visualize
from checkpoints import MemoryCheckpointer
from statemachine import END, START, StateGraph


class Order(BaseModel):
    total: int = 0
    reviewed: bool = False
    shipped: bool = False


def check(state: Order) -> dict:
    return {}


def needs_review(state: Order) -> str:
    return "hold" if state.total > 100 else "ok"


def review(state: Order) -> dict:
    return {"reviewed": True}


def ship(state: Order) -> dict:
    return {"shipped": True}


graph = StateGraph(Order)
graph.add_node("check", check)
graph.add_node("review", review)
graph.add_node("ship", ship)
graph.add_edge(START, "check")
graph.add_conditional_edges("check", needs_review, {"ok": "ship", "hold": "review"})
graph.add_edge("review", "ship")
graph.add_edge("ship", END)


def main(directory: Path) -> list[Path]:
    app = graph.compile(checkpointer=MemoryCheckpointer())
    app.invoke({"total": 250}, thread_id="order-42")
    mermaid = visualize.to_mermaid(app)                       # Mermaid text: paste it in
    print(next(line for line in mermaid.splitlines() if line.startswith("flowchart")))
    dot = visualize.to_dot(app, thread_id="order-42")         # with the thread's run path
    print("run path marked:", "review" in dot and "order-42" in dot)
    written = [directory / "flow.svg", directory / "order-42.dot"]
    visualize.render(app, written[0])                         # SVG (needs Graphviz's dot)
    written[1].write_text(dot)
    for path in written:
        print(f"wrote {path.name}")
    return written


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(0 if all(p.exists() for p in main(Path(tmp))) else 1)
