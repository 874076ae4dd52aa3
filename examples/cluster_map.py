"""Run a step's tasks on a cluster: score documents on a local Dask cluster, durably.

    START --fan_out--> score x N (one Send per document, run on the cluster) --> report --> END

The step loop, routing and every commit stay in this process (the driver); the `score` tasks
run in the cluster's worker processes, and each one's update is committed as a pending
write as it arrives. `report` is light: it stays in the driver (`runner="local"`).

Needs the dask extra: pip install 'statemachine[dask]'. Against a real cluster, pass its
address instead: DaskRunner("tcp://scheduler:8786"). Ray works the same way with RayRunner().
"""

import operator
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, Send, StateGraph

DOCUMENTS = (
    "the checkout is fast and the team loved it",
    "two clients found the refund flow confusing",
    "legal flagged a risk in the retention wording",
    "great results, clean design, fast support",
)
POSITIVE = {"fast", "loved", "great", "clean"}
NEGATIVE = {"confusing", "risk", "slow"}


class State(BaseModel):
    documents: list[str] = []
    scores: Annotated[list[tuple[int, int]], operator.add] = []
    workers: Annotated[list[int], operator.add] = []
    report: str = ""


def fan_out(state: State) -> list[Send]:
    return [Send("score", (i, text)) for i, text in enumerate(state.documents)]


def score(item: tuple[int, str]) -> dict:
    """The heavy part (a model, in real life), run on a worker."""
    index, text = item
    words = text.split()
    value = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return {"scores": [(index, value)], "workers": [os.getpid()]}


def report(state: State) -> dict:
    ranked = sorted(state.scores, key=lambda pair: (-pair[1], pair[0]))
    return {"report": ", ".join(f"doc {i}: {value:+d}" for i, value in ranked)}


graph = StateGraph(State)
graph.add_node("score", score)
graph.add_node("report", report, runner="local")
graph.add_conditional_edges(START, fan_out, ["score"])
graph.add_edge("score", "report")
graph.add_edge("report", END)


def main() -> State:
    from distributed import Client, LocalCluster

    from statemachine.runners import DaskRunner

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, worker_dashboard_address=None) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
        saver = SQLiteCheckpointer(Path(tmp) / "runs.db")
        app = graph.compile(checkpointer=saver, runner=DaskRunner(client))
        final = app.invoke({"documents": list(DOCUMENTS)}, thread_id="scoring")
        saver.close()
    elsewhere = sorted(set(final.workers) - {os.getpid()})
    print(f"scored {len(final.scores)} documents in {len(elsewhere)} worker processes")
    print(final.report)
    return final


if __name__ == "__main__":  # the cluster's worker processes import this file: start it once
    sys.exit(0 if main().report else 1)
