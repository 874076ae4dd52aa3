"""What the checkers share: failures and their report, running a property under hypothesis,
calling user functions, spotting mutated inputs, and graphs rebuilt for checking."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import sysconfig
import textwrap
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import hypothesis
from hypothesis import Phase, given
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure
from hypothesis.strategies import SearchStrategy

import checkpoints

from .._sync import run_sync
from ..compiled import CompiledGraph
from ..graph import StateGraph
from ..mutation import Fingerprint, mutation_message
from ..routing import RefusedRoute, resolve_route, route_items
from ..spec import Branch, GraphSpec, NodeSpec
from ..types import RunContext
from ..waiting import INTERRUPT_EVENT

Invariant = Callable[[Any, Any], Any]
"""`invariant(before, after)`: False (or an AssertionError) means the transition is wrong."""

CHECK_THREAD = "statemachine-check"
"""The thread id of the runs the checkers make (each in a store of its own)."""

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOT_USER_CODE = tuple(os.path.abspath(p) + os.sep for p in {
    _PACKAGE_DIR, os.path.dirname(os.path.abspath(checkpoints.__file__)),
    os.path.dirname(os.path.abspath(hypothesis.__file__)), sysconfig.get_paths()["stdlib"]})


# -- failures -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """One problem a checker found, with the minimal example hypothesis shrank it to.

    `kind` is stable and machine-readable: unknown_field, invalid_update, unstorable,
    invalid_command, mutation, invariant, error, invalid_route, needs_event,
    non_termination, final, invalid_input, run_failed, nondeterministic, not_resume_safe,
    resume_failed.
    """

    check: str
    subject: str
    """What failed: "node 'work'", "router 'route' after 'work'", "the run"."""
    kind: str
    message: str
    example: Any = None
    """The minimal (shrunk) state, payload or input it failed on."""
    example_label: str = "state"
    details: tuple[tuple[str, Any], ...] = ()
    error: BaseException | None = None
    flaky: bool = False
    """The failure did not happen again when hypothesis replayed the example."""

    def __str__(self) -> str:
        lines = [f"{self.subject}: {self.message}"]
        if self.flaky:
            lines.append("    (flaky: it did not fail again on replay, so the outcome depends "
                         "on something besides the example: a global, the clock, randomness)")
        for label, value in ((f"minimal {self.example_label}", self.example), *self.details):
            text = value if isinstance(value, str) else show(value)
            lines.append(textwrap.indent(f"{label}: {text}", "    "))
        return "\n".join(lines)


class PropertyCheckError(AssertionError):
    """A checker found problems; `.failures` lists them (each with its minimal example)."""

    def __init__(self, failures: list[Failure], *, check: str, graph: str) -> None:
        self.failures = list(failures)
        count = len(self.failures)
        lines = [f"{check} found {count} problem{'s' if count != 1 else ''} in {graph}:"]
        for failure in self.failures:
            first, *rest = str(failure).splitlines()
            lines += [f"  - {first}", *(f"  {line}" for line in rest)]
        super().__init__("\n".join(lines))


def raise_report(failures: list[Failure], *, check: str, graph: str) -> None:
    """Raise the failures as one `PropertyCheckError`, chained to a lone failure's exception
    (so its traceback shows where the node raised)."""
    cause = failures[0].error if len(failures) == 1 else None
    raise PropertyCheckError(failures, check=check, graph=graph) from cause


class _Found(Exception):
    """Raised inside a property: hypothesis shrinks it, the checker reports its failure."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(str(failure))


class Abort(BaseException):
    """A failure detected inside a run (a wrapped node saw its input mutated, ...).

    A BaseException, so the executor neither retries it, captures it, nor marks the run
    failed: it leaves the run at once and the checker turns it into a report.
    """

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(failure.message)


_FOUND_KINDS: dict[str, type[_Found]] = {}


_drawn_context: ContextVar[tuple[tuple[str, Any], ...]] = ContextVar(
    "statemachine_check_context", default=())
"""The context drawn for the current example, as a failure's detail (none when given)."""


def fail(failure: Failure) -> None:
    """Raise `failure` for hypothesis to shrink. One raise site and one exception class per
    kind, so hypothesis tells kinds apart (reporting each) but not examples of one kind."""
    drawn = _drawn_context.get()
    if drawn:
        failure = dataclasses.replace(failure, details=(*drawn, *failure.details))
    cls = _FOUND_KINDS.get(failure.kind)
    if cls is None:
        cls = _FOUND_KINDS[failure.kind] = type(f"Found_{failure.kind}", (_Found,), {})
    raise cls(failure)


def make_settings(max_examples: int | None, base: Settings | None, **changes: Any) -> Settings:
    """The loaded profile (or `base`), with `max_examples` when given.

    Nothing else changes, except that the explain phase is skipped: it only adds notes to
    hypothesis' own report, which the checkers replace with theirs, and it costs seconds."""
    parent = base if base is not None else Settings.default
    assert parent is not None  # hypothesis always has a default profile
    if max_examples is not None:
        changes["max_examples"] = max_examples
    changes.setdefault("phases", tuple(p for p in parent.phases if p is not Phase.explain))
    return Settings(parent, **changes)


def run_property(test: Callable[[Any], None], *, key: str, settings: Settings) -> list[Failure]:
    """Run `test(data)` under hypothesis; the failures it found, each shrunk."""

    @settings
    @given(st.data())
    def property_(data: Any) -> None:
        token = _drawn_context.set(())
        try:
            test(data)
        finally:
            _drawn_context.reset(token)

    # a database key of its own, or every checker would replay every other one's examples
    inner = property_.hypothesis.inner_test  # type: ignore[attr-defined]
    inner._hypothesis_internal_add_digest = hashlib.sha256(key.encode()).digest()
    try:
        property_()
    except _Found as exc:
        return [exc.failure]
    except BaseExceptionGroup as group:
        found, rest = group.split(_Found)
        if rest is not None or found is None:
            raise
        flaky = isinstance(group, FlakyFailure)
        return [dataclasses.replace(e.failure, flaky=flaky) for e in _leaves(found)]
    return []


def _leaves(group: BaseExceptionGroup) -> Iterator[Any]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# -- showing values -------------------------------------------------------------------------------

def show(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(exc: BaseException) -> str:
    """`KeyError: 'x' (at pipeline.py:62 in clean)`: the error and the user frame raising it."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_NOT_USER_CODE)]
    if frames:
        last = frames[-1]
        text += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text


def path_text(steps: list[tuple[str, ...]], *, ended: bool) -> str:
    """START -> a -> [b, c] -> END, eliding the middle of long paths."""
    names = [n[0] if len(n) == 1 else "[" + ", ".join(n) + "]" for n in steps]
    if len(names) > 12:
        names = [*names[:5], f"... {len(names) - 10} more steps ...", *names[-5:]]
    return " -> ".join(["START", *names, *(["END"] if ended else [])])


# -- inputs, mutation and user calls --------------------------------------------------------------

def call_user(fn: Callable[..., Any], args: tuple[Any, ...], is_async: bool) -> Any:
    """Call a node or router like the executor does: sync, or async to completion."""
    if is_async:
        return run_sync(lambda: fn(*args))
    result = fn(*args)
    if inspect.isawaitable(result):
        awaitable = result
        result = run_sync(lambda: _await(awaitable))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_context(node: str, step: int = 0, context: Any = None) -> RunContext:
    task_id = hashlib.sha256(f"{CHECK_THREAD}\x1f{node}\x1f{step}".encode()).hexdigest()[:32]
    return RunContext(thread_id=None, step=step, node=node, task_id=task_id, context=context)


def context_source(spec: GraphSpec, context: Any) -> Callable[[Any], Any]:
    """The checked calls' run-scoped context (`context=`): a value, checked against the
    graph's `context_schema` now, or a strategy drawn once per example (as `data` allows)."""
    if isinstance(context, SearchStrategy):
        strategy = context

        def draw(data: Any) -> Any:
            value = data.draw(strategy, label="context")
            _drawn_context.set((("minimal context", value),))  # a failure shows it
            return _validated_context(spec, value)
        return draw
    fixed = _validated_context(spec, context)
    return lambda data: fixed


def _validated_context(spec: GraphSpec, value: Any) -> Any:
    return value if spec.context is None else spec.context.validate(value)


def route_problem(spec: GraphSpec, branch: Branch, item: Any) -> str | None:
    """Why `item`, one route a router returned, would be refused (the executor's own rule)."""
    target = resolve_route(spec, branch, item)
    return target.reason if isinstance(target, RefusedRoute) else None


router_items = route_items
"""The routes a router returned (the executor's own rule)."""


def router_label(branch: Branch) -> str:
    return f"router {branch.router.name!r} after {branch.source!r}"


# -- events (wait_for) ----------------------------------------------------------------------------

class EventScript:
    """Values for `wait_for` events, drawn from the user's strategies once per example, so every
    run of one example (reference, crashed, resumed) receives the same ones in the same order."""

    def __init__(self, strategies: Mapping[str, SearchStrategy[Any]] | None, data: Any) -> None:
        self.strategies = dict(strategies or {})
        self.data = data
        self.values: dict[str, list[Any]] = {}

    def cursor(self) -> Callable[[str], Any]:
        positions: dict[str, int] = {}

        def next_value(event: str) -> Any:
            asks = event.startswith(INTERRUPT_EVENT)
            strategy = self.strategies.get(INTERRUPT_EVENT if asks else event)
            if strategy is None:
                raise KeyError(event)
            drawn = self.values.setdefault(event, [])
            position = positions.get(event, 0)
            if position == len(drawn):
                drawn.append(self.data.draw(strategy, label="answer" if asks else
                                            f"event {event!r}"))
            positions[event] = position + 1
            return drawn[position]
        return next_value


def needs_event_message(who: str, event: str) -> str:
    if event.startswith(INTERRUPT_EVENT):
        return (f"{who} asks with interrupt(), and no answers were given: pass "
                "answers=<strategy of its answers>.")
    return (f"{who} waits for event {event!r}, and no values were given for it: pass "
            f"events={{{event!r}: <strategy of its values>}}.")


def with_answers(events: Mapping[str, SearchStrategy[Any]] | None,
                 answers: SearchStrategy[Any] | None) -> dict[str, SearchStrategy[Any]]:
    """The strategies of `wait_for` events, and of `interrupt` answers (`answers=`)."""
    merged = dict(events or {})
    if answers is not None:
        merged[INTERRUPT_EVENT] = answers
    return merged


# -- graphs rebuilt for checking ------------------------------------------------------------------

def graph_key(app: CompiledGraph) -> str:
    """Names `app` in hypothesis' example database: its name and the code of its nodes and
    routers, so two graphs of the same name do not replay each other's examples."""
    parts = [app.name, app.spec.schema.model.__qualname__]
    parts += [f"{name}={identity(node.call.fn)}" for name, node in app.spec.nodes.items()]
    parts += [f"{source}>{identity(branch.router.fn)}"
              for source, branches in app.spec.branches.items() for branch in branches]
    return f"{app.name}:{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"


def identity(fn: Any) -> str:
    """A function's name and where it is defined (stable across processes)."""
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '')}.{name}:{code.co_firstlineno if code else ''}"


def as_compiled(app: Any) -> CompiledGraph:
    if isinstance(app, StateGraph):
        return app.compile()
    if not isinstance(app, CompiledGraph):
        raise TypeError(f"expected a compiled graph (StateGraph(...).compile()), got {app!r}.")
    return app


def checking_spec(
    spec: GraphSpec,
    *,
    wrap_node: Callable[[NodeSpec], Callable[..., Any]] | None = None,
    wrap_router: Callable[[Branch], Callable[..., Any]] | None = None,
) -> GraphSpec:
    """`spec` without interrupts or automatic compensation (runs go end to end), its nodes'
    and routers' functions replaced by the given wrappers. Subgraph nodes are left alone."""
    nodes: dict[str, NodeSpec] = {}
    for name, node in spec.nodes.items():
        if wrap_node is not None and node.subgraph is None:
            node = dataclasses.replace(node, call=dataclasses.replace(node.call,
                                                                      fn=wrap_node(node)))
        nodes[name] = node
    branches = spec.branches
    if wrap_router is not None:
        branches = {source: tuple(dataclasses.replace(b, router=dataclasses.replace(
            b.router, fn=wrap_router(b))) for b in group) for source, group in branches.items()}
    return dataclasses.replace(spec, nodes=nodes, branches=branches,
                               interrupt_before=frozenset(), interrupt_after=frozenset(),
                               on_failure="raise")


def guarded(fn: Callable[..., Any], is_async: bool, who: str) -> Callable[..., Any]:
    """`fn`, reporting (as an `Abort`) a call that changes its first argument in place."""

    def check(fp: Fingerprint) -> None:
        if fp.changed():
            raise Abort(Failure("", who, "mutation", mutation_message(who, fp),
                                details=(("changed fields", ", ".join(fp.changed_fields())
                                          or "?"),)))

    if is_async:
        async def async_wrapper(*args: Any) -> Any:
            fp = Fingerprint(args[0])
            result = await fn(*args)
            check(fp)
            return result
        return async_wrapper

    def wrapper(*args: Any) -> Any:
        fp = Fingerprint(args[0])
        result = fn(*args)
        if inspect.isawaitable(result):
            async def finish(awaitable: Any = result) -> Any:
                value = await awaitable
                check(fp)
                return value
            return finish()
        check(fp)
        return result
    return wrapper


def evaluate(predicate: Callable[..., Any], *args: Any) -> str | None:
    """None if the user predicate holds; else why not (False, or what it raised)."""
    try:
        verdict = predicate(*args)
    except AssertionError as exc:
        return f"assertion failed: {exc}" if str(exc) else "assertion failed"
    except Exception as exc:
        return f"it raised {describe_error(exc)}"
    if verdict is None or verdict:
        return None
    return f"it returned {verdict!r}"
