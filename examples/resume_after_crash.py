"""Resume after a failure: a checkout whose payment step fails, resumed from SQLite.

    validate -> reserve_stock + charge (in parallel) -> ship (join)

The payment gateway is down on the first run, so `charge` raises while `reserve_stock`, its
sibling in the same step, succeeds. The checkpointer keeps what finished: the failed snapshot
says where the run stopped, and holds reserve_stock's update as a pending write. The second
run opens the file afresh, as a restarted process would, and `resume` runs only `charge`
and what follows: validate and reserve_stock do not run again.

`charge` takes the run context and uses `context.task_id` as its idempotency key: the key is
the same on every attempt of that task, so a payment that did go through before a crash
would not be taken twice.

Run it with a path to keep the database: `python examples/resume_after_crash.py runs.db`.
From the command line, `PAYMENT_GATEWAY_DOWN=1` makes the gateway unreachable in that process
(it is up otherwise), so `statemachine run` fails and a later `statemachine resume` finishes.
"""

import operator
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, RunContext, StateGraph

THREAD = "order-1001"
ORDER = {"order_id": "1001", "items": ["keyboard", "mouse"], "total": 129.90}


class State(BaseModel):
    order_id: str
    items: list[str]
    total: float
    reservation: str | None = None
    receipt: str | None = None
    tracking: str | None = None
    log: Annotated[list[str], operator.add] = []


class PaymentGateway:
    """A stand-in payment provider: unreachable while `online` is False (at start, when the
    PAYMENT_GATEWAY_DOWN environment variable is set)."""

    def __init__(self) -> None:
        self.online = not os.environ.get("PAYMENT_GATEWAY_DOWN")
        self.charges: dict[str, float] = {}

    def charge(self, idempotency_key: str, amount: float) -> str:
        if not self.online:
            raise ConnectionError("payment gateway unreachable")
        self.charges.setdefault(idempotency_key, amount)  # a retried key is not charged twice
        return f"rcpt-{idempotency_key[:8]}"


gateway = PaymentGateway()
calls: list[str] = []
"""Every node execution in order, failed attempts included."""
charge_keys: list[str] = []
"""The idempotency key of every charge attempt."""


def validate(state: State) -> dict:
    calls.append("validate")
    if not state.items or state.total <= 0:
        raise ValueError(f"order {state.order_id} is empty")
    return {"log": [f"validated order {state.order_id}"]}


def reserve_stock(state: State) -> dict:
    calls.append("reserve_stock")
    return {"reservation": f"res-{state.order_id}",
            "log": [f"reserved {', '.join(state.items)}"]}


def charge(state: State, context: RunContext) -> dict:
    calls.append("charge")
    charge_keys.append(context.task_id)
    receipt = gateway.charge(context.task_id, state.total)
    return {"receipt": receipt, "log": [f"charged {state.total:.2f}"]}


def ship(state: State) -> dict:
    calls.append("ship")
    return {"tracking": f"trk-{state.order_id}",
            "log": [f"shipped with {state.reservation} / {state.receipt}"]}


graph = StateGraph(State)
for node in (validate, reserve_stock, charge, ship):
    graph.add_node(node)
graph.add_edge(START, "validate")
graph.add_edge("validate", "reserve_stock")
graph.add_edge("validate", "charge")
graph.add_edge(["reserve_stock", "charge"], "ship")
graph.add_edge("ship", END)
# No module-level `app`: it is compiled per run below, with a checkpointer on the chosen file.


def main(path: str | Path | None = None) -> State:
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return run(Path(tmp) / "runs.db")
    return run(Path(path))


def run(path: Path) -> State:
    gateway.online = False
    calls.clear()
    charge_keys.clear()
    print(f"checkpoints: {path}")

    print("== run 1: the payment gateway is down")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        try:
            app.invoke(ORDER, thread_id=THREAD)
        except ConnectionError as exc:
            print(f"invoke raised ConnectionError: {exc}")
        print(f"nodes that ran: {', '.join(calls)}")
        failed = app.get_state(THREAD)
        print(f"snapshot: status={failed.status} step={failed.step} next={list(failed.next)}")
        print(f"          error={failed.error!r}")
        print(f"          pending writes from: {sorted(failed.pending_writes)}")

    gateway.online = True
    calls.clear()
    print("== run 2: gateway back; reopen the file as a restarted process would, and resume")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        final = app.resume(THREAD)
        print(f"nodes that ran: {', '.join(calls)}")
        done = app.get_state(THREAD)
        print(f"snapshot: status={done.status} step={done.step} next={list(done.next)}")
        print("history (oldest first):")
        for snap in reversed(app.history(THREAD)):
            print(f"  step {snap.step} {snap.kind:<6} {snap.status:<7} next={list(snap.next)}")

    print(f"same idempotency key on both charge attempts: {len(set(charge_keys)) == 1}")
    print(f"log: {final.log}")
    return final


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
