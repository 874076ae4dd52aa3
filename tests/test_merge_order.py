"""A step's writes merge in one order everywhere: the order the step lists its tasks (the
router sorted them by declaration order, then task index). The live run, replay from storage,
update_state and the readers that work without the graph all follow it, so a state read back
is the state the run made — even by a graph whose nodes are declared in another order (a new
version of the code), which would merge a new run differently but must not rewrite history.
"""

from __future__ import annotations

import asyncio
import json
import operator
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph
from statemachine.records import stored_writes

NAMES = ("a", "b", "c")


class Log(BaseModel):
    log: Annotated[list[str], operator.add] = []
    ballast: str = "x" * 20_000
    """Large next to the writes, so checkpoints store writes, not snapshots, and reading
    them back replays (see statemachine/snapshots.py)."""


class Flaky:
    """Fails the named node's first call (None: nothing fails)."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def node(self, name: str):
        def run(state: Log) -> dict[str, list[str]]:
            if name == self.name:
                self.name = None
                raise RuntimeError(f"{name} fails once")
            return {"log": [name]}
        return run


def fan_out(order: tuple[str, ...], flaky: Flaky) -> StateGraph:
    """START -> a, b, c in one step, declared in `order`; then `tail`."""
    graph = StateGraph(Log)
    for name in order:
        graph.add_node(name, flaky.node(name))
        graph.add_edge(START, name)
    graph.add_node("tail", lambda state: {"log": ["tail"]})
    graph.add_edge(list(order), "tail")
    graph.add_edge("tail", END)
    return graph


@settings(max_examples=20)
@given(ran=st.permutations(NAMES), reads=st.permutations(NAMES),
       fails=st.sampled_from([None, *NAMES]))
def test_a_thread_reads_back_as_it_ran_whatever_order_the_reading_graph_declares(
        tmp_path_factory, ran, reads, fails):
    path = tmp_path_factory.mktemp("merge") / "runs.db"
    app = fan_out(tuple(ran), Flaky(fails)).compile(checkpointer=SQLiteCheckpointer(path))
    if fails is None:
        final = app.invoke({}, thread_id="t")
    else:  # the failed step keeps its finished tasks' writes pending; resume merges them
        with pytest.raises(RuntimeError, match="fails once"):
            app.invoke({}, thread_id="t")
        final = app.resume("t")
    assert final.log == [*ran, "tail"]
    history = [s.state.log for s in app.history("t")]

    reader = fan_out(tuple(reads), Flaky(None)).compile(checkpointer=SQLiteCheckpointer(path))
    assert reader.get_state("t").state.log == [*ran, "tail"]
    assert [s.state.log for s in reader.history("t")] == history

    # without the graph (what the CLI and the viewer show): the same order
    saver = SQLiteCheckpointer(path)
    records = saver.in_caller_thread()

    async def step_writes() -> list[list[str]]:
        rows = await records.list("t")
        by_id = {r.id: r for r in rows}
        pending = await records.list_pending([r.id for r in rows])
        return [[w[0] for w in stored_writes(r, by_id.get(r.parent_id or ""), pending)]
                for r in reversed(rows) if r.kind == "step"]

    assert sum(r.snapshot is not None for r in asyncio.run(records.list("t"))) == 1
    steps = asyncio.run(step_writes())
    assert [*ran] in steps and ["tail"] in steps
    assert json.dumps(steps)  # plain data, as the readers print it
