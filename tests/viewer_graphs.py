"""A graph for the viewer tests (imported as `tests.viewer_graphs:shop`).

prepare -> reserve + charge (parallel) -> ship. The state decides how a run ends: `fail`
makes `charge` raise (a failed thread), `hold` makes `ship` wait for the "approval" event (an
interrupted thread), `gate` names a file `prepare` waits for (a thread that is running while
the test watches it).

`counter` loops `tick` until `n` reaches `until`: one thread with many checkpoints.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, StateGraph, wait_for


class ShopState(BaseModel):
    fail: bool = False
    hold: bool = False
    gate: str = ""
    ticks: int = 0
    log: Annotated[list[str], operator.add] = []
    total: int = 0


def prepare(state: ShopState) -> dict:
    if state.gate:
        deadline = time.monotonic() + 30
        while not Path(state.gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{state.gate} never appeared")
            time.sleep(0.05)
    return {"log": ["prepare"]}


def reserve(state: ShopState) -> dict:
    return {"log": ["reserve"]}


def charge(state: ShopState) -> dict:
    if state.fail:
        raise ConnectionError("payment gateway unreachable")
    return {"log": ["charge"], "total": 42}


def ship(state: ShopState) -> dict:
    if state.hold:
        wait_for("approval")
    return {"log": ["ship"]}


shop = StateGraph(ShopState)
for _node in (prepare, reserve, charge, ship):
    shop.add_node(_node)
shop.add_edge(START, "prepare")
shop.add_edge("prepare", "reserve")
shop.add_edge("prepare", "charge")
shop.add_edge(["reserve", "charge"], "ship")
shop.add_edge("ship", END)


class CounterState(BaseModel):
    n: int = 0
    until: int = 1


def tick(state: CounterState) -> dict:
    return {"n": state.n + 1}


counter = StateGraph(CounterState)
counter.add_node(tick)
counter.add_edge(START, "tick")
counter.add_conditional_edges("tick", lambda s: "tick" if s.n < s.until else END, ["tick", END])
