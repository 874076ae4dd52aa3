"""Approval: a run pauses in `wait_for("approval")` and another process resumes it.

    submit -> approval (waits for the "approval" event) --decide--> pay | notify_rejection

`approval` calls `wait_for("approval")`: the run stops there, durably. `invoke` returns, the
thread's status is "interrupted" and `snapshot.metadata["waits_for"]` says which event it
waits for. Nothing runs meanwhile; the process could even exit.

Then a second process, the approver (here `python examples/approval.py --approve DB THREAD`,
launched by main()), opens the same SQLite file and calls
`app.resume(thread, event={"approval": {...}})`. The approval node runs again from its start,
`wait_for` now returns the delivered value, and the run goes on to `pay` (or
`notify_rejection`) in that process. main() finally reads the finished thread from the file.

On resume everything in a node before its `wait_for` runs again, so `approval` does nothing
before waiting; the request is prepared in `submit`, which never runs twice.

    python examples/approval.py [DB]                    the whole story (temp file by default)
    python examples/approval.py --approve DB THREAD     deliver an approval to a waiting run
    python examples/approval.py --reject DB THREAD      deliver a rejection
"""

import operator
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph, wait_for

ROOT = Path(__file__).resolve().parent.parent
THREAD = "expense-42"
EXPENSE = {"expense_id": "42", "employee": "Ada", "amount": 1250.0,
           "purpose": "conference travel"}


class Decision(BaseModel):
    approved: bool
    by: str
    pid: int
    note: str = ""


class State(BaseModel):
    expense_id: str
    employee: str
    amount: float
    purpose: str
    request: str = ""
    decision: Decision | None = None
    outcome: str = ""
    log: Annotated[list[str], operator.add] = []


def submit(state: State) -> dict:
    request = f"{state.employee} asks {state.amount:.2f} for {state.purpose}"
    return {"request": request, "log": [f"submitted in pid {os.getpid()}"]}


def approval(state: State) -> dict:
    answer: Any = wait_for("approval")  # pauses here until an "approval" event is delivered
    decision = Decision.model_validate(answer)
    verdict = "approved" if decision.approved else "rejected"
    return {"decision": decision, "log": [f"{verdict} by {decision.by} (pid {decision.pid})"]}


def decide(state: State) -> str:
    return "approved" if state.decision.approved else "rejected"


def pay(state: State) -> dict:
    return {"outcome": f"paid {state.amount:.2f} to {state.employee}",
            "log": [f"paid in pid {os.getpid()}"]}


def notify_rejection(state: State) -> dict:
    return {"outcome": f"told {state.employee}: rejected ({state.decision.note})",
            "log": [f"notified in pid {os.getpid()}"]}


graph = StateGraph(State)
for node in (submit, approval, pay, notify_rejection):
    graph.add_node(node)
graph.add_edge(START, "submit")
graph.add_edge("submit", "approval")
graph.add_conditional_edges("approval", decide,
                            {"approved": "pay", "rejected": "notify_rejection"})
graph.add_edge("pay", END)
graph.add_edge("notify_rejection", END)
# No module-level `app`: each process compiles it with a checkpointer on the shared file.


def deliver(path: Path, thread_id: str, approved: bool) -> State:
    """The approver's side: resume the waiting run with the decision (the second process)."""
    decision = Decision(approved=approved, by="manager Grace", pid=os.getpid(),
                        note="" if approved else "over the travel budget")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        waiting = app.get_state(thread_id)
        print(f"approver pid {os.getpid()}: thread {thread_id} is {waiting.status}, "
              f"waits for {waiting.metadata.get('waits_for')}")
        final = app.resume(thread_id, event={"approval": decision.model_dump()})
        print(f"approver pid {os.getpid()}: resumed; outcome: {final.outcome}")
    return final


def main(path: str | Path | None = None, *, approve: bool = True) -> State:
    if path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return run(Path(tmp) / "approvals.db", approve)
    return run(Path(path), approve)


def run(path: Path, approve: bool) -> State:
    print(f"checkpoints: {path}")
    print(f"== pid {os.getpid()}: start the run")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        paused = app.invoke(EXPENSE, thread_id=THREAD)
        snapshot = app.get_state(THREAD)
        print(f"invoke returned; request: {paused.request}")
        print(f"snapshot: status={snapshot.status} next={list(snapshot.next)} "
              f"waits_for={snapshot.metadata.get('waits_for')}")

    flag = "--approve" if approve else "--reject"
    print(f"== launch the approver: examples/approval.py {flag} {path.name} {THREAD}")
    env = dict(os.environ)  # the same environment, with the package root importable
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    approver = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), flag, str(path), THREAD],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    for line in approver.stdout.splitlines():
        print(f"  | {line}")
    if approver.returncode != 0:
        raise RuntimeError(f"the approver failed ({approver.returncode}):\n{approver.stderr}")

    print(f"== pid {os.getpid()}: read the finished run from the file")
    with SQLiteCheckpointer(path) as saver:
        app = graph.compile(checkpointer=saver)
        done = app.get_state(THREAD)
        final = done.state
        decided_elsewhere = final.decision.pid != os.getpid()
        print(f"snapshot: status={done.status} next={list(done.next)}")
        print(f"decided by another process: {decided_elsewhere}")
        print(f"outcome: {final.outcome}")
        print(f"log: {final.log}")
    return final


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] in ("--approve", "--reject"):
        deliver(Path(args[1]), args[2], approved=args[0] == "--approve")
    elif len(args) <= 1 and not (args and args[0].startswith("-")):
        main(args[0] if args else None)
    else:
        sys.exit(__doc__)
