"""`GraphStateMachine`: a hypothesis rule-based state machine walking a compiled graph."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis.strategies import SearchStrategy

from checkpoints import MemoryCheckpointer

from ..clock import FakeClock, use_clock
from ..commands import Send
from ..compiled import CompiledGraph
from ..constants import END
from ..errors import InvalidRouteError, InvalidUpdateError
from ..spec import Branch, GraphSpec
from ..types import StepEvent
from ._common import (
    CHECK_THREAD,
    Abort,
    EventScript,
    Failure,
    Invariant,
    PropertyCheckError,
    as_compiled,
    checking_spec,
    context_source,
    describe_error,
    evaluate,
    graph_key,
    guarded,
    identity,
    make_settings,
    needs_event_message,
    path_text,
    route_problem,
    router_items,
    router_label,
    show,
    with_answers,
)
from ._nodes import payload_type
from ._runs import NeedsEvent, run_events
from ._strategies import states as states_of

CHECK = "transition_machine"
CONTINUE_WEIGHT = 3
Routes = Literal["router", "any"]


class GraphStateMachine(RuleBasedStateMachine):
    """Runs of a compiled graph as a hypothesis state machine, one transition per rule.

    `start` draws an initial state; each `step` takes the outgoing transitions of the nodes
    that are due (fixed edges, joins, `Command`s, and the routers' decisions), running the
    real executor one step at a time, so hypothesis explores paths through loops and shrinks a
    failing one to the shortest sequence of transitions from the simplest initial state. One
    example is one run; once it has ended only `finished` (which does nothing) remains. Every
    step checks that nodes return valid updates and do not change their input, that routers
    return allowed routes, and `invariant(before, after)`; a finished run checks `final`.

    With `routes = "any"` hypothesis chooses each conditional edge itself among the router's
    declared targets (the router still runs and must return an allowed route), exploring every
    path the graph's structure allows, not only those today's routers take. Routers returning
    `Send`s and fan-outs (several routes at once) are followed as they are, and so are
    `Command` gotos; nodes a `Send` feeds (their first parameter is annotated with another type
    than the state) are never chosen.
    Routes that go on are drawn three times as often as routes to END, so loops get explored.

    Build one with `transition_machine(app, ...)`, or subclass and set the class attributes:

        class Flow(GraphStateMachine):
            app = my_app
            initial_states = states(State, count=st.integers(0, 5))

        TestFlow = Flow.TestCase
    """

    app: ClassVar[CompiledGraph | None] = None
    initial_states: ClassVar[SearchStrategy[Any] | None] = None
    """Strategy of initial states; default `states(app's state model)`."""
    routes: ClassVar[Routes] = "router"
    events: ClassVar[Mapping[str, SearchStrategy[Any]] | None] = None
    """Strategies of the values `wait_for(event)` receives, by event name."""
    answers: ClassVar[SearchStrategy[Any] | None] = None
    """The strategy of the answers `interrupt()` receives."""
    context: ClassVar[Any] = None
    """The runs' `context=`: a value, or a strategy drawn at the start of each run."""
    max_steps: ClassVar[int] = 10_000

    def __init__(self) -> None:
        super().__init__()
        self.state: Any = None
        self.initial: Any = None
        self.path: list[tuple[str, ...]] = []
        self.choices: list[str] = []
        self.ended = True
        self._run: Iterator[StepEvent] | None = None
        self._data: Any = None
        self._script: EventScript | None = None
        self._shown_context: tuple[tuple[str, Any], ...] = ()

    # -- hooks a subclass may override ------------------------------------------------------------

    def check_step(self, before: Any, after: Any) -> str | None:
        """Why the step from `before` to `after` is wrong, or None. Default: the invariant."""
        invariant = _configured(self, "_invariant")
        return evaluate(invariant, before, after) if invariant is not None else None

    def check_final(self, state: Any) -> str | None:
        """Why a final state is wrong, or None. Default: the `final` predicate."""
        final = _configured(self, "_final")
        return evaluate(final, state) if final is not None else None

    # -- rules ------------------------------------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data: Any) -> None:
        state = data.draw(self._initial_states(), label="initial state")
        context = type(self).context
        drawn = context_source(self._app().spec, context)(data)
        self._shown_context = (("context", drawn),) \
            if isinstance(context, SearchStrategy) else ()
        self._begin(state, drawn)

    @precondition(lambda self: not self.ended)
    @rule(data=st.data())
    def step(self, data: Any) -> None:
        self._advance(data)

    @precondition(lambda self: self.ended)
    @rule()
    def finished(self) -> None:
        """The run has ended (hypothesis needs a rule to take; this one does nothing)."""

    def teardown(self) -> None:
        self._close()

    # -- machinery --------------------------------------------------------------------------------

    def _app(self) -> CompiledGraph:
        app = type(self).app
        if app is None:
            raise TypeError(f"{type(self).__name__} has no app: set `app = <compiled graph>` or "
                            "use transition_machine(app).")
        return as_compiled(app)

    def _initial_states(self) -> SearchStrategy[Any]:
        cls = type(self)
        strategy = cls.initial_states
        if strategy is None:
            strategy = cls.__dict__.get("_default_states")
            if strategy is None:
                strategy = states_of(self._app().spec.schema.model)
                cls._default_states = strategy
        return strategy

    def _begin(self, state: Any, context: Any = None) -> None:
        self._close()
        app = self._app()
        self.initial = self.state = app.spec.schema.validate_input(state)
        self.path, self.choices, self.ended = [], [], False
        durable = app.checkpointer is not None
        graph = CompiledGraph(self._spec(app.spec),
                              checkpointer=MemoryCheckpointer() if durable else None,
                              name=app.name)
        self._script = EventScript(with_answers(type(self).events, type(self).answers), None)
        self._run = run_events(graph, state, CHECK_THREAD if durable else None,
                               type(self).max_steps, self._script.cursor(), context)

    def _spec(self, spec: GraphSpec) -> GraphSpec:
        def wrap_router(branch: Branch) -> Callable[..., Any]:
            inner = guarded(branch.router.fn, branch.router.is_async, router_label(branch))
            if self.routes != "any":
                return inner
            if branch.router.is_async:
                async def choose_async(*args: Any) -> Any:
                    return self._choose(spec, branch, await inner(*args))
                return choose_async
            return lambda *args: self._choose(spec, branch, inner(*args))

        if self.routes not in ("router", "any"):
            raise ValueError(f"routes must be 'router' or 'any', got {self.routes!r}")
        return checking_spec(
            spec, wrap_node=lambda n: guarded(n.call.fn, n.call.is_async, f"node {n.name!r}"),
            wrap_router=wrap_router)

    def _choose(self, spec: GraphSpec, branch: Branch, result: Any) -> Any:
        """In "any" mode: check the router's answer, then let hypothesis pick the route."""
        items = router_items(result)
        for item in items:
            problem = route_problem(spec, branch, item)
            if problem is not None:
                raise Abort(Failure(CHECK, router_label(branch), "invalid_route", problem,
                                    details=(("returned", show(result)),)))
        if len(items) != 1 or isinstance(items[0], Send):
            return result  # a fan-out (or a Send) is followed: only single routes are chosen
        if branch.mapping is not None:
            mapping = branch.mapping
            options = sorted(mapping, key=lambda k: (mapping[k] != END, str(k)))
            ends = {k for k in options if mapping[k] == END}
        elif branch.allowed is not None:
            options = sorted(branch.allowed, key=lambda t: (t != END, t))
            ends = {END}
        else:
            options, ends = [END, *spec.nodes], {END}
        # nodes fed by Send (their first parameter is not the state) cannot take the state
        options = [o for o in options if o in ends or _takes_state(spec, branch, o)]
        # routes that go on count thrice, so walks explore loops instead of mostly ending; the
        # ending routes come first, so a failing walk still shrinks towards the shortest path
        weighted = [o for o in options if o in ends] + \
            [o for o in options if o not in ends for _ in range(CONTINUE_WEIGHT)]
        choice = self._data.draw(st.sampled_from(weighted), label=f"route after {branch.source!r}")
        self.choices.append(f"after {branch.source!r}: {choice!r}")
        return choice

    def _advance(self, data: Any) -> None:
        assert self._run is not None and self._script is not None
        self._data = self._script.data = data
        before = self.state
        failure: Failure | None = None
        event: StepEvent | None = None
        with use_clock(FakeClock()):
            try:
                event = next(self._run, None)
            except NeedsEvent as exc:
                failure = self._failure("the run", "needs_event",
                                        needs_event_message("a node", exc.event))
            except Abort as abort:
                failure = self._failure(abort.failure.subject, abort.failure.kind,
                                        abort.failure.message, *abort.failure.details)
            except (InvalidUpdateError, InvalidRouteError) as exc:
                kind = "invalid_update" if isinstance(exc, InvalidUpdateError) else \
                    "invalid_route"
                failure = self._failure("the run", kind, str(exc), ("state", before))
            except Exception as exc:
                failure = self._failure("the run", "error", f"raised {describe_error(exc)}",
                                        ("state", before))
        if failure is None and event is not None:
            self.path.append(event.nodes)
            self.state = event.state
            why = self.check_step(before, event.state)
            if why is not None:
                failure = self._failure(
                    "the run", "invariant", f"step {event.step} ({', '.join(event.nodes)}) "
                    f"breaks the invariant ({why})", ("before", before),
                    ("updates", event.updates), ("after", event.state))
        if failure is None and (event is None or event.status == "done"):
            self.ended = True
            why = self.check_final(self.state)
            if why is not None:
                failure = self._failure("the run", "final", f"the final state fails `final` "
                                        f"({why})", ("final state", self.state))
        if failure is not None:
            self._raise(failure)

    def _failure(self, subject: str, kind: str, message: str,
                 *details: tuple[str, Any]) -> Failure:
        context: list[tuple[str, Any]] = [*self._shown_context,
                                          ("path", path_text(self.path, ended=self.ended))]
        if self.choices:
            context.append(("routes chosen", "; ".join(self.choices)))
        return Failure(CHECK, subject, kind, message, example=self.initial,
                       example_label="initial state", details=(*context, *details))

    def _raise(self, failure: Failure) -> None:
        raise PropertyCheckError([failure], check=CHECK, graph=self._app().name)

    def _close(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            close = getattr(run, "close", None)
            if close is not None:
                close()


def _takes_state(spec: GraphSpec, branch: Branch, option: Any) -> bool:
    target = branch.mapping[option] if branch.mapping is not None else option
    node = spec.nodes.get(target)
    return node is None or payload_type(node, spec.schema.model) is None


def _configured(machine: GraphStateMachine, name: str) -> Any:
    holder = getattr(type(machine), name, None)
    return holder[0] if holder else None


def transition_machine(
    app: CompiledGraph,
    *,
    states: SearchStrategy[Any] | None = None,
    invariant: Invariant | None = None,
    final: Callable[[Any], Any] | None = None,
    routes: Routes = "router",
    events: Mapping[str, SearchStrategy[Any]] | None = None,
    context: Any = None,
    answers: SearchStrategy[Any] | None = None,
) -> type[GraphStateMachine]:
    """A `GraphStateMachine` subclass for `app`: use `transition_machine(app).TestCase` as a
    test class, or `check_transitions(app, ...)` to run it at once.

    `states`: strategy of initial states (default `states(app's state model)`);
    `invariant(before, after)` is checked at every step, `final(state)` when a run ends;
    `routes="any"` lets hypothesis choose each conditional edge among its declared targets
    instead of following the router; `events` give `wait_for` values and `answers` the
    answers `interrupt` gets; `context` is the runs' `context=` (a value, or a strategy drawn
    per run).
    """
    app = as_compiled(app)
    if routes not in ("router", "any"):
        raise ValueError(f"routes must be 'router' or 'any', got {routes!r}")
    namespace = {
        "app": app, "initial_states": states, "routes": routes, "events": events,
        "context": context, "answers": answers,
        "_invariant": (invariant,) if invariant is not None else None,
        "_final": (final,) if final is not None else None,
        "__module__": __name__,
    }
    name = "".join(part[:1].upper() + part[1:] for part in
                   app.name.replace("-", "_").split("_") if part) or "Graph"
    machine = type(f"{name}Transitions", (GraphStateMachine,), namespace)
    # the example database tells state machines apart by their source, which this one lacks
    key = (f"{CHECK}:{graph_key(app)}:{routes}:{identity(invariant)}:{identity(final)}:"
           f"{states!r}:{context!r}")
    machine._hypothesis_internal_add_digest = key.encode()  # type: ignore[attr-defined]
    return machine


def check_transitions(
    app: CompiledGraph,
    *,
    states: SearchStrategy[Any] | None = None,
    invariant: Invariant | None = None,
    final: Callable[[Any], Any] | None = None,
    routes: Routes = "router",
    events: Mapping[str, SearchStrategy[Any]] | None = None,
    context: Any = None,
    answers: SearchStrategy[Any] | None = None,
    max_examples: int | None = None,
    settings: Settings | None = None,
) -> None:
    """Run `transition_machine(app, ...)` now; raises `PropertyCheckError` (with hypothesis'
    minimal sequence of steps attached) when a path breaks a check. Like hypothesis' own state
    machine tests it runs without a deadline; every other setting comes from the profile."""
    machine = transition_machine(app, states=states, invariant=invariant, final=final,
                                 routes=routes, events=events, context=context,
                                 answers=answers)
    run_state_machine_as_test(machine,
                              settings=make_settings(max_examples, settings, deadline=None))
