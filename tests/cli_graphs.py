"""Small graphs for the command-line and diagram tests (imported as `tests.cli_graphs:<name>`).

- `passing`: prepare -> left + right (parallel) -> finish (a join); `left` prints to stdout.
- `compiled`: `passing`, already compiled (a CompiledGraph target).
- `counter`: one node looping `count` up to `target`; its state carries a large `payload`, so
  the intermediate checkpoints store only their writes, no snapshot.
- `flaky`: prepare -> reserve + charge (parallel) -> ship. `charge` raises ConnectionError until
  the file named by the state's `flag` exists, so a run fails and a later process resumes it.
- `approval`: submit -> approve, which waits for the "approval" event.
- `reviewed`: `passing` compiled with interrupt_before=["finish"].
- `saga`: book (compensated by cancel) -> charge, which fails like flaky's.
- `trip`: hotel -> flight -> pay, hotel and flight compensated. `pay` fails while the state
  is `poisoned`; cancelling the flight fails while the file named by `airline_down` exists.
- `slow`: one async node that waits until the file named by `flag` exists (up to 30 s).
- `unmapped`: valid, but its router has no path map (a compile warning).
- `invalid`: a StateGraph with several problems (compile() refuses it).
- `research`: a subgraph node (`research` runs `inner`, its own two-node graph).
- `chat`: one `reply` node appending to `messages` (every turn an append: rare snapshots).
- `personal`: a graph with a `context_schema` (`Account`: a user and an API key): `greet` uses
  the user, asks for approval (`interrupt`), and a router sends blocked users to END; `send`
  fails while the file named by the state's `flag` exists.
- `not_a_graph`, `make_graph`: things that are not graphs.
"""

from __future__ import annotations

import asyncio
import operator
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, RunContext, StateGraph, interrupt, wait_for


class State(BaseModel):
    count: int = 0
    log: Annotated[list[str], operator.add] = []


def prepare(state: State) -> dict:
    return {"log": ["prepare"]}


def left(state: State) -> dict:
    print("left says hello on stdout")  # the CLI must keep stdout for the JSON state
    return {"log": ["left"]}


def right(state: State) -> dict:
    return {"count": state.count + 1, "log": ["right"]}


def finish(state: State) -> dict:
    return {"log": ["finish"]}


passing = StateGraph(State)
for _node in (prepare, left, right, finish):
    passing.add_node(_node)
passing.add_edge(START, "prepare")
passing.add_edge("prepare", "left")
passing.add_edge("prepare", "right")
passing.add_edge(["left", "right"], "finish")
passing.add_edge("finish", END)
compiled = passing.compile(name="passing")
reviewed = passing.compile(interrupt_before=["finish"], name="reviewed")


class CounterState(BaseModel):
    count: int = 0
    target: int = 3
    payload: str = "x" * 2000
    log: Annotated[list[str], operator.add] = []


def work(state: CounterState) -> dict:
    return {"count": state.count + 1, "log": [f"step {state.count}"]}


def again(state: CounterState) -> str:
    return "done" if state.count >= state.target else "again"


counter = StateGraph(CounterState)
counter.add_node("work", work)
counter.add_edge(START, "work")
counter.add_conditional_edges("work", again, {"again": "work", "done": END})


class OrderState(BaseModel):
    flag: str
    log: Annotated[list[str], operator.add] = []
    receipt: str = ""


def reserve(state: OrderState) -> dict:
    return {"log": ["reserve"]}


def charge(state: OrderState) -> dict:
    if not Path(state.flag).exists():
        raise ConnectionError("payment gateway unreachable")
    return {"log": ["charge"], "receipt": "rcpt-1"}


def ship(state: OrderState) -> dict:
    return {"log": ["ship"]}


flaky = StateGraph(OrderState)
flaky.add_node("prepare", lambda state: {"log": ["prepare"]})
flaky.add_node(reserve)
flaky.add_node(charge)
flaky.add_node(ship)
flaky.add_edge(START, "prepare")
flaky.add_edge("prepare", "reserve")
flaky.add_edge("prepare", "charge")
flaky.add_edge(["reserve", "charge"], "ship")
flaky.add_edge("ship", END)


def shipping(*, audit: bool) -> StateGraph:
    """Two versions of one deployed graph (compiled under one name): the second audits."""
    g = StateGraph(OrderState)
    g.add_node(charge)
    g.add_node(ship)
    g.add_edge(START, "charge")
    g.add_edge("charge", "ship")
    if audit:
        g.add_node("audit", lambda state: {"log": ["audit"]})
        g.add_edge("ship", "audit")
        g.add_edge("audit", END)
    else:
        g.add_edge("ship", END)
    return g


shipping_v1 = shipping(audit=False).compile(name="shipping")
shipping_v2 = shipping(audit=True).compile(name="shipping")


def book(state: OrderState) -> dict:
    return {"log": ["book"]}


def cancel(state: OrderState) -> dict:
    return {"log": ["cancel"]}


saga = StateGraph(OrderState)
saga.add_node(book, compensate=cancel)
saga.add_node(charge)
saga.add_edge(START, "book")
saga.add_edge("book", "charge")
saga.add_edge("charge", END)


class TripState(BaseModel):
    log: Annotated[list[str], operator.add] = []
    poisoned: bool = False
    airline_down: str = ""


def pay(state: TripState) -> dict:
    if state.poisoned:
        raise ValueError("card declined: the order was poisoned")
    return {"log": ["pay"]}


def cancel_flight(state: TripState) -> dict:
    if state.airline_down and Path(state.airline_down).exists():
        raise ConnectionError("airline API down")
    return {"log": ["cancel flight"]}


trip = StateGraph(TripState)
trip.add_node("hotel", lambda state: {"log": ["hotel"]},
              compensate=lambda state: {"log": ["cancel hotel"]})
trip.add_node("flight", lambda state: {"log": ["flight"]}, compensate=cancel_flight)
trip.add_node(pay)
trip.add_edge(START, "hotel")
trip.add_edge("hotel", "flight")
trip.add_edge("flight", "pay")
trip.add_edge("pay", END)


async def wait_for_flag(state: OrderState) -> dict:
    for _ in range(600):
        if Path(state.flag).exists():
            return {"log": ["flag found"]}
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{state.flag} never appeared")


slow = StateGraph(OrderState)
slow.add_node(wait_for_flag)
slow.add_edge(START, "wait_for_flag")
slow.add_edge("wait_for_flag", END)


def pick(state: State):  # no path map, no Literal annotation: the compiler warns
    return END


unmapped = StateGraph(State)
unmapped.add_node(prepare)
unmapped.add_edge(START, "prepare")
unmapped.add_conditional_edges("prepare", pick)


class ApprovalState(BaseModel):
    request: str = ""
    approved: bool | None = None
    log: Annotated[list[str], operator.add] = []


def submit(state: ApprovalState) -> dict:
    return {"log": [f"submitted {state.request}"]}


def approve(state: ApprovalState) -> dict:
    decision = wait_for("approval")
    return {"approved": bool(decision["ok"]), "log": ["decided"]}


approval = StateGraph(ApprovalState)
approval.add_node(submit)
approval.add_node(approve)
approval.add_edge(START, "submit")
approval.add_edge("submit", "approve")
approval.add_edge("approve", END)


invalid = StateGraph(State)
invalid.add_node("a", prepare)
invalid.add_node("orphan", finish)  # nothing leads to it
invalid.add_edge(START, "a")
invalid.add_edge("a", "missing")  # no such node


def search(state: State) -> dict:
    return {"log": ["search"]}


def summarize(state: State) -> dict:
    return {"log": ["summarize"]}


_inner = StateGraph(State)
_inner.add_node(search)
_inner.add_node(summarize)
_inner.add_edge(START, "search")
_inner.add_edge("search", "summarize")
_inner.add_edge("summarize", END)
inner = _inner.compile(name="inner")

research = StateGraph(State)
research.add_node("plan", prepare)
research.add_node("research", inner)
research.add_node("write", finish)
research.add_edge(START, "plan")
research.add_edge("plan", "research")
research.add_edge("research", "write")
research.add_edge("write", END)



class ChatState(BaseModel):
    messages: Annotated[list[str], operator.add] = []


chat = StateGraph(ChatState)
chat.add_node("reply", lambda state: {"messages": [f"reply {len(state.messages)}"]})
chat.add_edge(START, "reply")
chat.add_edge("reply", END)

not_a_graph = 42


def make_graph() -> StateGraph:
    return passing


class ReviewState(BaseModel):
    draft: str = "v1"
    approved: bool | None = None


def review(state: ReviewState) -> dict:
    verdict = interrupt({"question": "approve?", "draft": state.draft})
    return {"approved": {"yes": True, "no": False}[verdict]}  # anything else: a KeyError


asking = StateGraph(ReviewState)
asking.add_node(review)
asking.add_edge(START, "review")
asking.add_edge("review", END)


class Account(BaseModel):
    user: str
    api_key: str


class LetterState(BaseModel):
    flag: str = ""
    log: Annotated[list[str], operator.add] = []


def greet(state: LetterState, ctx: RunContext) -> dict:
    if interrupt(f"send a letter to {ctx.context.user}?") != "yes":
        return {"log": ["not approved"]}
    return {"log": [f"dear {ctx.context.user}"]}


def send(state: LetterState, ctx: RunContext) -> dict:
    if state.flag and Path(state.flag).exists():
        raise ConnectionError("post office closed")
    return {"log": [f"sent with key ending {ctx.context.api_key[-2:]}"]}


def addressee(state: LetterState, ctx: RunContext) -> str:
    return END if ctx.context.user == "blocked" else "send"


personal = StateGraph(LetterState, context_schema=Account)
personal.add_node(greet)
personal.add_node(send)
personal.add_edge(START, "greet")
personal.add_conditional_edges("greet", addressee, ["send", END])
personal.add_edge("send", END)
