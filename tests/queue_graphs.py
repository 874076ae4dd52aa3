"""Graphs for the work-queue tests that run workers in subprocesses (`tests.queue_graphs:<name>`).

- `chain`: a -> b -> c, one async node per step. Each node first appends a line
  `thread node step pid` to the file named by $QUEUE_LOG (flushed and fsync'd, so a SIGKILL
  right after it loses nothing), then sleeps $QUEUE_SLEEP seconds (default 0.1), then adds 1 to
  `n` and its name to `log`. With $QUEUE_GATE set, node `a` (or the node named by
  $QUEUE_GATE_NODE) waits (after logging) until that file exists: a run holding the thread can
  be kept there for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import operator
import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, RunContext, StateGraph

NODES = ("a", "b", "c")


class Job(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []


def side_effect(context: RunContext) -> None:
    path = os.environ.get("QUEUE_LOG")
    if not path:
        return
    with open(path, "a") as f:
        f.write(f"{context.thread_id} {context.node} {context.step} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


def _node(name: str):
    async def node(state: Job, context: RunContext) -> dict:
        side_effect(context)
        gate = os.environ.get("QUEUE_GATE")
        if gate and name == os.environ.get("QUEUE_GATE_NODE", "a"):
            for _ in range(1200):
                if Path(gate).exists():
                    break
                await asyncio.sleep(0.025)
        await asyncio.sleep(float(os.environ.get("QUEUE_SLEEP") or 0.1))
        return {"n": state.n + 1, "log": [name]}

    node.__name__ = name
    return node


chain = StateGraph(Job)
for _name in NODES:
    chain.add_node(_name, _node(_name))
chain.add_edge(START, "a")
chain.add_edge("a", "b")
chain.add_edge("b", "c")
chain.add_edge("c", END)
