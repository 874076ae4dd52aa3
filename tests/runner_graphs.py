"""Graphs whose nodes run on real Dask and Ray clusters in tests/test_runners.py: module-level
functions, so worker processes import them by name (tests/ is on their path).

Nodes that coordinate with the test do it through files in a directory the call's context
names (`Files`): a worker process shares no memory with the test.
"""

from __future__ import annotations

import asyncio
import operator
import os
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from statemachine import (
    END,
    START,
    CachePolicy,
    RetryPolicy,
    RunContext,
    Send,
    StateGraph,
    emit,
    interrupt,
)

WAIT = 60.0
"""The longest a node waits for a file the test makes (a test that fails ends sooner)."""


class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []
    items: Annotated[list[int], operator.add] = []
    errors: Annotated[list[Any], operator.add] = []


class Files:
    """A directory a node and the test both see: marks a node leaves, signals the test gives."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)

    def mark(self, name: str) -> None:
        """Leave a mark (one file per call, so two runs of a task leave two)."""
        Path(self.root, f"{name}.{os.getpid()}.{time.monotonic_ns()}").touch()

    def marks(self, name: str) -> list[str]:
        return sorted(p.name for p in Path(self.root).glob(f"{name}.*"))

    def wait_for(self, signal: str, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while not Path(self.root, signal).exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def give(self, signal: str) -> None:
        Path(self.root, signal).touch()


# -- a fan-out of Sends --------------------------------------------------------------------

def fan_out(state: S) -> list[Send]:
    return [Send("square", i) for i in range(state.n)]


def square(x: int) -> dict:
    return {"items": [x * x], "log": [f"square {x} in {os.getpid()}"]}


def square_marked(x: int, ctx: RunContext) -> dict:
    Files(ctx.context["files"]).mark(f"square-{x}")
    return square(x)


async def square_async(x: int) -> dict:
    await asyncio.sleep(0.001)
    return {"items": [x * x], "log": [f"square {x} in {os.getpid()}"]}


def fan_graph(node: Any = square, **options: Any) -> StateGraph:
    g = StateGraph(S)
    g.add_node("start", lambda state: {"log": ["start"]}, runner="local")
    g.add_node("square", node, **options)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out, ["square"])
    g.add_edge("square", END)
    return g


# -- nodes that coordinate with the test through files ---------------------------------------

def slow_once(x: int, ctx: RunContext) -> dict:
    """Marks its start; the first run of task 0 waits for the test's "go" (the test kills its
    worker meanwhile); every other run returns at once."""
    files = Files(ctx.context["files"])
    first = not files.marks(f"start-{x}")
    files.mark(f"start-{x}")
    if x == 0 and first:
        files.wait_for("go")
    files.mark(f"end-{x}")
    return {"items": [x], "log": [f"{x}"]}


def held(x: int, ctx: RunContext) -> dict:
    """Tasks 0 and 1 finish at once; the others wait for the test's "release"."""
    files = Files(ctx.context["files"])
    files.mark(f"run-{x}")
    if x >= 2:
        files.wait_for("release")
    return {"items": [x]}


def fan_held(n: int) -> list[Send]:
    return [Send("work", i) for i in range(n)]


def held_graph() -> StateGraph:
    g = StateGraph(S)
    g.add_node("work", held)
    g.add_conditional_edges(START, lambda state: fan_held(state.n), ["work"])
    g.add_edge("work", END)
    return g


def sleepy(state: S, ctx: RunContext) -> dict:
    """Runs until the test's "stop" (so a timed-out task does not hold a Dask worker long)."""
    files = Files(ctx.context["files"])
    files.mark("sleepy")
    files.wait_for("stop", 30.0)
    return {"log": ["slept"]}


def streaming(state: S, ctx: RunContext) -> dict:
    """Emits "first", waits until the test has seen it, then emits "second" and returns."""
    files = Files(ctx.context["files"])
    ctx.emit("first")
    if not files.wait_for("seen", 20.0):
        raise TimeoutError("the test never saw the first chunk while the node ran")
    emit({"chunk": "second"})
    return {"log": ["streamed"]}


async def streaming_async(state: S) -> dict:
    emit("async one")
    await asyncio.sleep(0.01)
    emit("async two")
    return {"log": ["async streamed"]}


def flaky(state: S, ctx: RunContext) -> dict:
    """Fails its first two runs, then succeeds."""
    files = Files(ctx.context["files"])
    files.mark("flaky")
    if len(files.marks("flaky")) < 3:
        raise ConnectionError("the model API timed out")
    return {"log": ["flaky ok"]}


def counted(state: S, ctx: RunContext) -> dict:
    Files(ctx.context["files"]).mark("counted")
    return {"items": [state.n * 10]}


def asks(state: S) -> dict:
    answer = interrupt({"question": "approve?", "n": state.n})
    return {"log": [f"answer {answer}"]}


def remembers(state: S, ctx: RunContext) -> dict:
    ctx.store.put(("notes", "user-1"), f"n{state.n}", {"text": f"saw {state.n}"})
    return {"log": ["remembered"]}


def reads_store(state: S, ctx: RunContext) -> dict:
    ctx.store.get(("notes",), "x")
    return {}


class Odd(Exception):
    """An exception whose pickle does not load (two required arguments, one in args)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"odd {a}/{b}")


def raises_value_error(state: S) -> dict:
    raise ValueError(f"bad input {state.n}")


def raises_odd(state: S) -> dict:
    raise Odd(state.n, 2)


def raises_worker_only(state: S) -> dict:
    from workeronly import WorkerOnlyError  # importable on the workers only

    raise WorkerOnlyError(f"only workers know this type ({state.n})")


def returns_worker_only(state: S) -> Any:
    from workeronly import WorkerOnlyValue

    return {"errors": [WorkerOnlyValue(state.n)]}


def exits(state: S) -> dict:
    import sys

    sys.exit(3)


class ApiError(Exception):
    """Like many client libraries' errors: a keyword-only argument, so its pickle does not load."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def rate_limited_once(state: S, ctx: RunContext) -> dict:
    files = Files(ctx.context["files"])
    files.mark("api")
    if len(files.marks("api")) == 1:
        raise ApiError("rate limited", status=429)
    return {"log": ["api ok"]}


def single(node: Any, **options: Any) -> StateGraph:
    g = StateGraph(S)
    g.add_node("node", node, **options)
    g.add_edge(START, "node")
    g.add_edge("node", END)
    return g


QUICK_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, backoff=1.0, jitter=False,
                          retry_on=ConnectionError)
CACHE = CachePolicy(ttl=None)


# -- random graphs (the hypothesis property) -------------------------------------------------

def tagged(name: str, state: S) -> dict:
    """A node of a random graph: what it saw and wrote depends on the state alone."""
    return {"log": [f"{name}@{len(state.log)}"], "items": [len(state.items) + len(name)]}


def tagged_send(name: str, payload: int) -> dict:
    return {"log": [f"{name}<{payload}>"], "items": [payload]}


def send_to(target: str, width: int, state: S) -> list[Send]:
    return [Send(target, len(state.log) + i) for i in range(width)]


def random_graph(layers: list[list[str]], sends: dict[int, int]) -> StateGraph:
    """Layers of parallel nodes, each layer joined to the next; after layer i (when
    sends[i] is set) a Send fan-out of that width to a mapper before the next layer."""
    g = StateGraph(S)
    previous: list[str] = [START]
    for i, layer in enumerate(layers):
        for name in layer:
            g.add_node(name, partial(tagged, name))
        for name in layer:
            g.add_edge(previous if len(previous) > 1 else previous[0], name)
        previous = list(layer)
        if i in sends:
            mapper = f"map{i}"
            g.add_node(mapper, partial(tagged_send, mapper))
            hub = f"hub{i}"
            g.add_node(hub, partial(tagged, hub))
            g.add_edge(previous if len(previous) > 1 else previous[0], hub)
            g.add_conditional_edges(hub, partial(send_to, mapper, sends[i]), [mapper])
            previous = [mapper]
    g.add_edge(previous if len(previous) > 1 else previous[0], END)
    return g


def streams_then_dies_once(state: S, ctx: RunContext) -> dict:
    """Emits three chunks; its first run then kills its own worker process (the engine runs
    it again elsewhere), the second returns."""
    files = Files(ctx.context["files"])
    first = not files.marks("streamer")
    files.mark("streamer")
    run = "first" if first else "second"
    for i in range(3):
        ctx.emit(f"{run}-{i}")
    if first:
        os._exit(1)
    return {"log": ["streamed twice"]}
