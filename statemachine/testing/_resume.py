"""`check_resume`: a run interrupted anywhere (a simulated crash or a failing node) and
resumed ends as if nothing had happened."""

from __future__ import annotations

import dataclasses
import inspect
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer

from ..clock import FakeClock, use_clock
from ..compiled import CompiledGraph
from ..spec import Branch, GraphSpec, NodeSpec
from ..types import RunContext, StepEvent, task_id
from ._common import (
    CHECK_THREAD,
    Abort,
    EventScript,
    Failure,
    as_compiled,
    checking_spec,
    context_source,
    describe_error,
    fail,
    graph_key,
    guarded,
    make_settings,
    needs_event_message,
    raise_report,
    run_property,
    show,
    with_answers,
)
from ._runs import CHECK_MAX_STEPS, StepRecorder
from ._strategies import states as states_of


class SimulatedCrash(BaseException):
    """The process died here. A BaseException: nothing in the executor catches it, so the
    step stays uncommitted (status running), as after a real crash."""


class SimulatedFailure(Exception):
    """A node failed here (the run is marked failed, finished siblings' writes kept)."""


@dataclass(frozen=True)
class CrashPoint:
    step: int
    node: str
    occurrence: int
    when: Literal["before", "after"]
    how: Literal["crash", "error"]

    def describe(self) -> str:
        what = ("the process died" if self.how == "crash" else
                "the node raised an exception")
        moment = ("as node {n!r} started" if self.when == "before" else
                  "right after node {n!r} returned, before the step was committed")
        nth = f" (its call #{self.occurrence + 1} of the step)" if self.occurrence else ""
        return f"at step {self.step} {what} " + moment.format(n=self.node) + nth


class _Injector:
    """Makes one chosen node call crash or fail, once."""

    def __init__(self, point: CrashPoint) -> None:
        self.point = point
        self.step: int | None = None
        self.calls: Counter[str] = Counter()
        self.fired = False
        self._lock = threading.Lock()

    def step_started(self, step: int) -> None:
        with self._lock:
            self.step, self.calls = step, Counter()

    def _enter(self, node: str) -> int | None:
        """This call's index among the calls of `node` in the chosen step (None elsewhere)."""
        with self._lock:
            if self.fired or node != self.point.node or self.step != self.point.step:
                return None
            index = self.calls[node]
            self.calls[node] += 1
            return index

    def _maybe_fire(self, index: int | None, when: str) -> None:
        point = self.point
        if index != point.occurrence or when != point.when:
            return
        with self._lock:
            if self.fired:
                return
            self.fired = True
        if point.how == "crash":
            raise SimulatedCrash(f"simulated crash {point.describe()}")
        raise SimulatedFailure(f"simulated failure {point.describe()}")

    def wrap(self, node: NodeSpec) -> Callable[..., Any]:
        inner = guarded(node.call.fn, node.call.is_async, f"node {node.name!r}")
        name = node.name

        if node.call.is_async:
            async def async_wrapper(*args: Any) -> Any:
                index = self._enter(name)
                self._maybe_fire(index, "before")
                result = await inner(*args)
                self._maybe_fire(index, "after")
                return result
            return async_wrapper

        def wrapper(*args: Any) -> Any:
            index = self._enter(name)
            self._maybe_fire(index, "before")
            result = inner(*args)
            if inspect.isawaitable(result):
                async def finish(awaitable: Any = result) -> Any:
                    value = await awaitable
                    self._maybe_fire(index, "after")
                    return value
                return finish()
            self._maybe_fire(index, "after")
            return result
        return wrapper


def _positional_ids(part: NodeSpec | Branch) -> Callable[..., Any]:
    """The node's (or router's) function, seeing a task id made of the task's place in the
    run (thread, step, node, index) instead of the checkpoint it was scheduled at.

    A task keeps its id when it runs again, which is what a resume needs; but a resumed run
    commits checkpoints of its own (continuing the failed step), so the tasks of later steps
    get other ids than in the uninterrupted run. Comparing the two runs, a node keyed on its
    task id must see the same id for the same task in both."""
    fn = part.call.fn if isinstance(part, NodeSpec) else part.router.fn

    def with_positional_id(*args: Any) -> Any:
        if len(args) > 1 and isinstance(args[1], RunContext):
            context = args[1]
            # a subgraph's thread is named after its parent's checkpoint: leave that out
            thread = re.sub(r"@[^:]*", "", str(context.thread_id))
            args = (args[0], dataclasses.replace(context, task_id=task_id(
                thread, "check_resume", context.step, context.node, context.index)),
                *args[2:])
        return fn(*args)
    return with_positional_id


def _with_positional_ids(spec: GraphSpec) -> GraphSpec:
    """`spec` with `_positional_ids` on every node and router, its subgraphs' too."""
    nodes: dict[str, NodeSpec] = {}
    for name, node in spec.nodes.items():
        if node.subgraph is not None:
            inner = node.subgraph.graph
            graph = CompiledGraph(_with_positional_ids(inner.spec),
                                  name=inner.name if inner.identity.named else None)
            node = dataclasses.replace(node, subgraph=dataclasses.replace(node.subgraph,
                                                                          graph=graph))
        else:
            node = dataclasses.replace(node, call=dataclasses.replace(
                node.call, fn=_positional_ids(node)))
        nodes[name] = node
    branches = {source: tuple(dataclasses.replace(b, router=dataclasses.replace(
        b.router, fn=_positional_ids(b))) for b in group)
        for source, group in spec.branches.items()}
    return dataclasses.replace(spec, nodes=nodes, branches=branches)


@dataclass
class _Outcome:
    steps: list[StepEvent] = field(default_factory=list)
    final: Any = None
    error: BaseException | None = None


def _drive(graph: CompiledGraph, input: Any, max_steps: int, next_event: Callable[[str], Any],
           injector: _Injector | None = None, context: Any = None) -> _Outcome:
    """Run a durable graph to its end: resuming after an injected crash, delivering events."""
    outcome = _Outcome()
    recorder = StepRecorder(CHECK_THREAD, injector.step_started if injector else None)
    outcome.steps = recorder.events
    graph.add_listener(recorder)
    tid = CHECK_THREAD
    call: tuple[Any, dict[str, Any] | None] = ("invoke", None)
    for _ in range(1000):
        kind, event = call
        try:
            if kind == "invoke":
                graph.invoke(input, thread_id=tid, max_steps=max_steps, context=context)
            else:
                graph.resume(tid, event=event, max_steps=max_steps, context=context)
        except (SimulatedCrash, SimulatedFailure):
            call = ("resume", None)  # as a restarted process would
            continue
        except Abort:
            raise
        except Exception as exc:
            outcome.error = exc
            return outcome
        snapshot = graph.get_state(tid)
        waits = snapshot.metadata.get("waits_for") if snapshot.status == "interrupted" else None
        if waits:
            call = ("resume", {name: next_event(name) for name in waits})
            continue
        outcome.final = snapshot.state
        return outcome
    outcome.error = RuntimeError("the run did not end after 1000 resumes")
    return outcome


def check_resume(
    app: CompiledGraph,
    *,
    inputs: SearchStrategy[Any] | None = None,
    max_steps: int = CHECK_MAX_STEPS,
    max_examples: int | None = None,
    events: Mapping[str, SearchStrategy[Any]] | None = None,
    answers: SearchStrategy[Any] | None = None,
    storage: Literal["memory", "sqlite"] = "memory",
    context: Any = None,
    settings: Settings | None = None,
) -> None:
    """Check that a run interrupted at any point and resumed ends exactly like an uninterrupted
    run; raise `PropertyCheckError` with the minimal input and interruption point otherwise.

    For each generated input the graph runs uninterrupted, twice (runs that differ mean a node
    depends on something besides its input: a global, the clock, randomness; a resumed run
    re-runs the interrupted step, so such a node is not resume-safe). Then hypothesis picks a
    node call of the run and how it is interrupted: the process dies (a simulated crash the
    executor cannot catch, leaving the step uncommitted) or the node raises; just before the
    node's body or right after it returned (its side effects done, its result lost). The run
    is resumed and must end in the same state, step by step; the report names the first node
    whose update differs.

    Every run uses a fresh store: `storage="memory"` (a `MemoryCheckpointer`) or `"sqlite"` (a
    file in a temporary directory). Interrupts and automatic compensation are off; retry
    back-offs do not sleep; `wait_for` events get values from `events` and `interrupt`s
    answers from `answers`, the same ones in every run of an example. Every run of an
    example gets the same `context` (a value, or a strategy drawn per example), as
    `invoke(context=...)` and `resume(context=...)` give it. Subgraph nodes are never
    interrupted themselves.
    """
    app = as_compiled(app)
    events = with_answers(events, answers)
    spec = app.spec
    input_strategy = inputs if inputs is not None else states_of(spec.schema.model)
    plain = checking_spec(_with_positional_ids(spec))
    contexts = context_source(spec, context)

    def test(data: Any) -> None:
        input = data.draw(input_strategy, label="input")
        call_context = contexts(data)
        script = EventScript(events, data)
        with use_clock(FakeClock()), _Stores(storage) as stores:
            failure = _check_resume_once(app, spec, plain, input, script, stores, max_steps,
                                         data, call_context)
        if failure is not None:
            fail(failure)

    failures = run_property(test, key=f"check_resume:{graph_key(app)}:{storage}",
                            settings=make_settings(max_examples, settings))
    if failures:
        raise_report(failures, check="check_resume", graph=app.name)


class _Stores:
    """Fresh checkpointers for the runs of one example, closed (and deleted) afterwards."""

    def __init__(self, storage: str) -> None:
        if storage not in ("memory", "sqlite"):
            raise ValueError(f"storage must be 'memory' or 'sqlite', got {storage!r}")
        self.storage = storage
        self.opened: list[Any] = []
        self.directory: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> _Stores:
        if self.storage == "sqlite":
            self.directory = tempfile.TemporaryDirectory(prefix="statemachine-check-")
        return self

    def new(self) -> Any:
        if self.directory is None:
            store: Any = MemoryCheckpointer()
        else:
            store = SQLiteCheckpointer(Path(self.directory.name) / f"run{len(self.opened)}.db")
        self.opened.append(store)
        return store

    def __exit__(self, *exc: object) -> None:
        for store in self.opened:
            store.close()
        if self.directory is not None:
            self.directory.cleanup()


def _check_resume_once(app: CompiledGraph, spec: GraphSpec, plain: GraphSpec, input: Any,
                       script: EventScript, stores: _Stores, max_steps: int,
                       data: Any, context: Any = None) -> Failure | None:
    def found(kind: str, subject: str, message: str, *details: tuple[str, Any],
              error: BaseException | None = None) -> Failure:
        return Failure("check_resume", subject, kind, message, example=input,
                       example_label="input", details=details, error=error)

    def graph(run_spec: GraphSpec) -> CompiledGraph:
        return CompiledGraph(run_spec, checkpointer=stores.new(), name=app.name)

    try:
        reference = _drive(graph(plain), input, max_steps, script.cursor(), context=context)
    except KeyError as exc:
        return found("needs_event", "the run", needs_event_message("a node", exc.args[0]))
    if reference.error is not None:
        return found("run_failed", "the run", "the uninterrupted run fails, so there is no "
                     f"final state to compare with: {describe_error(reference.error)} "
                     "(check_runs shows why; pass inputs= for the runs that should succeed)",
                     error=reference.error)
    again = _drive(graph(plain), input, max_steps, script.cursor(), context=context)
    difference = _first_difference(reference, again)
    if difference is not None:
        step, nodes, first, second = difference
        return found(
            "nondeterministic", _who(nodes),
            f"is not resume-safe: two uninterrupted runs of the same input differ at step "
            f"{step}. A resumed run re-runs the interrupted step, so every node must return the "
            "same update for the same input; this one depends on something else (a global, "
            "the clock, randomness). Keep such values in the state, key side effects on "
            "context.task_id.", ("first run", first), ("second run", second))
    plan = [(event.step, node, index)
            for event in reference.steps
            for node, update in event.updates.items()
            if node not in event.cache_hits and spec.nodes[node].subgraph is None
            for index in range(len(update) if isinstance(update, list) else 1)]
    if not plan:
        return None
    step, node, occurrence = data.draw(st.sampled_from(plan), label="interrupted node call")
    when = data.draw(st.sampled_from(["before", "after"]), label="when")
    hows = ["crash"] if spec.nodes[node].on_error == "capture" else ["crash", "error"]
    how = data.draw(st.sampled_from(hows), label="how")
    point = CrashPoint(step, node, occurrence, when, how)
    injector = _Injector(point)
    crashed_spec = checking_spec(plain, wrap_node=injector.wrap)
    try:
        resumed = _drive(graph(crashed_spec), input, max_steps, script.cursor(), injector,
                         context=context)
    except Abort as abort:
        return found(abort.failure.kind, abort.failure.subject, abort.failure.message)
    where = point.describe()
    if resumed.error is not None:
        return found("resume_failed", "the run", f"{where}; resuming it then failed: "
                     f"{describe_error(resumed.error)}", ("uninterrupted final state",
                                                          reference.final),
                     error=resumed.error)
    difference = _first_difference(reference, resumed)
    if difference is None and resumed.final == reference.final:
        return None
    details: list[tuple[str, Any]] = []
    subject, reason = "the run", ""
    if difference is not None:
        step_, nodes, first, second = difference
        subject = _who(nodes)
        reason = (f": at step {step_} it returned {show(second)} after the resume, but "
                  f"{show(first)} in the uninterrupted run")
    details += [("uninterrupted final state", reference.final),
                ("resumed final state", resumed.final)]
    return found("not_resume_safe", subject,
                 f"is not resume-safe: {where}, and the resumed run ends in another state"
                 f"{reason}. A resumed step runs its unfinished nodes again: make them "
                 "idempotent (keep counters in the state, key side effects on "
                 "context.task_id).", *details)


def _who(nodes: list[str]) -> str:
    if not nodes:
        return "the run"
    if len(nodes) == 1:
        return f"node {nodes[0]!r}"
    return "nodes " + ", ".join(map(repr, nodes))


def _first_difference(a: _Outcome, b: _Outcome) -> tuple[int, list[str], Any, Any] | None:
    """The first step whose updates differ: (step, nodes, updates in a, updates in b)."""
    by_step = {event.step: event for event in b.steps}
    for event in a.steps:
        other = by_step.get(event.step)
        if other is None:
            return event.step, list(event.updates), event.updates, None
        if event.updates != other.updates:
            nodes = [n for n in dict.fromkeys([*event.updates, *other.updates])
                     if event.updates.get(n) != other.updates.get(n)]
            first = {n: event.updates.get(n) for n in nodes}
            second = {n: other.updates.get(n) for n in nodes}
            return event.step, nodes, first, second
    if len(b.steps) > len(a.steps):
        extra = b.steps[len(a.steps)]
        return extra.step, list(extra.updates), None, extra.updates
    if a.final != b.final:
        return -1, [], a.final, b.final
    return None
