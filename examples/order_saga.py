"""Order saga: reserve -> charge -> ship, undone in reverse when shipping fails.

Each step with a side effect declares how to undo it: `add_node("charge", charge,
compensate=refund)`. The carrier rejects the parcel, so `ship` fails after stock was reserved
and the card charged. The failed run stays in the SQLite file; `app.rollback(thread_id)` (or
`statemachine rollback examples.order_saga:graph --db orders.db --thread order-7`), here
from a freshly opened file as an operator's script would, runs the compensations of the
completed nodes newest first (refund, then release), each committed as its own checkpoint,
and leaves the thread "compensated". Rolling back again does nothing: no compensation runs
twice.

The warehouse and the payment gateway are in-memory stand-ins, so you can see what each step
and each compensation did to them. Run it with a path to keep the database:
`python examples/order_saga.py orders.db`.
"""

import operator
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, RunContext, StateGraph

THREAD = "order-7"
ORDER = {"order_id": "7", "sku": "desk-lamp", "quantity": 2, "amount": 59.80,
         "address": "1 Nowhere Lane, Atlantis"}


class State(BaseModel):
    order_id: str
    sku: str
    quantity: int
    amount: float
    address: str
    reservation: str | None = None
    payment: str | None = None
    tracking: str | None = None
    log: Annotated[list[str], operator.add] = []


class CarrierError(Exception):
    """The carrier refused the parcel."""


class Warehouse:
    def __init__(self) -> None:
        self.stock = {"desk-lamp": 5}
        self.reservations: dict[str, tuple[str, int]] = {}

    def reserve(self, order_id: str, sku: str, quantity: int) -> str:
        reservation = f"res-{order_id}"
        if reservation not in self.reservations:  # reserving twice holds the stock once
            self.stock[sku] -= quantity
            self.reservations[reservation] = (sku, quantity)
        return reservation

    def release(self, reservation: str) -> None:
        if reservation in self.reservations:
            sku, quantity = self.reservations.pop(reservation)
            self.stock[sku] += quantity


class PaymentGateway:
    def __init__(self) -> None:
        self.charges: dict[str, float] = {}
        self.refunds: dict[str, float] = {}

    def charge(self, key: str, amount: float) -> str:
        self.charges.setdefault(key, amount)  # the idempotency key: charged once
        return f"pay-{key[:8]}"

    def refund(self, payment: str, amount: float) -> None:
        self.refunds.setdefault(payment, amount)  # refunding twice refunds once


warehouse = Warehouse()
gateway = PaymentGateway()
calls: list[str] = []
"""Every node and compensation that ran, in order."""


def reserve(state: State) -> dict:
    calls.append("reserve")
    reservation = warehouse.reserve(state.order_id, state.sku, state.quantity)
    return {"reservation": reservation, "log": [f"reserved {state.quantity} x {state.sku}"]}


def release(state: State) -> dict:
    calls.append("release")
    warehouse.release(state.reservation)
    return {"reservation": None, "log": [f"released {state.reservation}"]}


def charge(state: State, context: RunContext) -> dict:
    calls.append("charge")
    payment = gateway.charge(context.task_id, state.amount)
    return {"payment": payment, "log": [f"charged {state.amount:.2f} as {payment}"]}


def refund(state: State) -> dict:
    calls.append("refund")
    gateway.refund(state.payment, state.amount)
    return {"log": [f"refunded {state.amount:.2f} of {state.payment}"]}


def ship(state: State) -> dict:
    calls.append("ship")
    raise CarrierError(f"carrier does not deliver to {state.address!r}")


graph = StateGraph(State)
graph.add_node("reserve", reserve, compensate=release)
graph.add_node("charge", charge, compensate=refund)
graph.add_node("ship", ship)  # the last step: nothing after it to undo
graph.add_edge(START, "reserve")
graph.add_edge("reserve", "charge")
graph.add_edge("charge", "ship")
graph.add_edge("ship", END)
# No module-level `app`: it is compiled per run below, with a checkpointer on the chosen file.


def main(path: str | Path | None = None) -> State:
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return run(Path(tmp) / "orders.db")
    return run(Path(path))


def run(path: Path) -> State:
    global warehouse, gateway
    warehouse, gateway = Warehouse(), PaymentGateway()
    calls.clear()
    print(f"checkpoints: {path}")

    print("== run: reserve -> charge -> ship")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        try:
            app.invoke(ORDER, thread_id=THREAD)
        except CarrierError as exc:
            print(f"invoke raised CarrierError: {exc}")
        print(f"ran: {', '.join(calls)}")
        failed = app.get_state(THREAD)
        print(f"snapshot: status={failed.status} step={failed.step} next={list(failed.next)}")
        print(f"          error={failed.error!r}")
        print(f"          reservation={failed.state.reservation} payment={failed.state.payment}")
        print(f"side effects: stock={warehouse.stock} charges={list(gateway.charges.values())}")

    calls.clear()
    print("== rollback: reopen the file, as an operator's script would")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        final = app.rollback(THREAD)
        print(f"ran: {', '.join(calls)}")
        snapshot = app.get_state(THREAD)
        print(f"status: {snapshot.status}")
        print(f"side effects: stock={warehouse.stock} refunds={list(gateway.refunds.values())}")
        print("history (oldest first):")
        for snap in reversed(app.history(THREAD)):
            undid = snap.metadata.get("compensates")
            note = f"  undid {undid[1]} (step {undid[0]})" if undid else ""
            print(f"  step {snap.step} {snap.kind:<12} {snap.status:<11}{note}".rstrip())

        calls.clear()
        print("== rollback again")
        checkpoints = len(app.history(THREAD))
        again = app.rollback(THREAD)
        print(f"ran: {', '.join(calls) or 'nothing'}; status: {app.get_state(THREAD).status}; "
              f"checkpoints: {checkpoints} -> {len(app.history(THREAD))}; "
              f"state unchanged: {again == final}")
    print(f"log: {final.log}")
    return final


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
