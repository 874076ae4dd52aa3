"""The graphs of the cluster benchmark (benchmarks/cluster.py), importable by Dask and Ray
workers: a fan-out of `Send` tasks that each spin the CPU in pure Python for a set number of
rounds, and a chain of steps of one no-op task each."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, Send, StateGraph


class FanState(BaseModel):
    tasks: int = 0
    rounds: int = 0
    results: Annotated[list[int], operator.add] = []


class ChainState(BaseModel):
    steps: int = 0
    done: int = 0


def spin(rounds: int) -> int:
    """Pure-Python work that holds the GIL: `rounds` multiply-adds in a loop."""
    total = 0
    for i in range(rounds):
        total = (total + i * i) % 1_000_003
    return total


def work(payload: tuple[int, int]) -> dict:
    index, rounds = payload
    return {"results": [spin(rounds) + index]}


def fan_out(state: FanState) -> list[Send]:
    return [Send("work", (i, state.rounds)) for i in range(state.tasks)]


def fan_graph(node: Callable[[tuple[int, int]], dict] = work) -> StateGraph:
    """START -> `tasks` Sends to `work` (by default each `rounds` of spin) -> END."""
    g = StateGraph(FanState)
    g.add_node("work", node)
    g.add_conditional_edges(START, fan_out, ["work"])
    g.add_edge("work", END)
    return g


def noop(state: ChainState) -> dict:
    return {"done": state.done + 1}


def more(state: ChainState) -> str:
    return "noop" if state.done < state.steps else END


def chain_graph() -> StateGraph:
    """START -> noop, again while fewer than `steps` ran -> END: one task a step."""
    g = StateGraph(ChainState)
    g.add_node("noop", noop)
    g.add_edge(START, "noop")
    g.add_conditional_edges("noop", more, ["noop", END])
    return g


def noop_task(payload: tuple[int, int]) -> dict:
    return {"results": [payload[0]]}
