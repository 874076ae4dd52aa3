"""`check_runs`: whole runs end, keep the invariant, reach a good final state; and running a
graph to its end, delivering `wait_for` events (used by the other checkers too)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

from hypothesis import settings as Settings
from hypothesis.strategies import SearchStrategy

from checkpoints import MemoryCheckpointer

from ..clock import FakeClock, use_clock
from ..compiled import CompiledGraph
from ..errors import InvalidRouteError, InvalidUpdateError, StepLimitError
from ..spec import GraphSpec
from ..types import StepEvent
from ._common import (
    CHECK_THREAD,
    Abort,
    EventScript,
    Failure,
    Invariant,
    as_compiled,
    checking_spec,
    context_source,
    describe_error,
    evaluate,
    fail,
    graph_key,
    guarded,
    make_settings,
    needs_event_message,
    path_text,
    raise_report,
    router_label,
    run_property,
    with_answers,
)
from ._strategies import states as states_of

CHECK_MAX_STEPS = 100
"""Steps a checked run may take before it counts as not terminating."""


class NeedsEvent(Exception):
    def __init__(self, event: str) -> None:
        self.event = event
        super().__init__(event)


def run_events(graph: CompiledGraph, input: Any, thread_id: str | None, max_steps: int,
               next_event: Callable[[str], Any],
               context: Any = None) -> Generator[StepEvent, None, None]:
    """The step events of a run to its end, delivering `wait_for` events from `next_event`."""
    steps = 0
    for event in graph.stream(input, thread_id=thread_id, max_steps=max_steps,
                              context=context):
        steps += 1
        yield event
    while graph.checkpointer is not None and thread_id is not None:
        snapshot = graph.get_state(thread_id)
        waits = snapshot.metadata.get("waits_for") if snapshot.status == "interrupted" else None
        if not waits:
            return
        values = {}
        for name in waits:
            try:
                values[name] = next_event(name)
            except KeyError:
                raise NeedsEvent(name) from None
        recorder = StepRecorder(thread_id)
        graph.add_listener(recorder)
        try:
            graph.resume(thread_id, event=values, max_steps=max(1, max_steps - steps),
                         context=context)
        finally:
            graph.remove_listener(recorder)
            steps += len(recorder.events)
            yield from recorder.events


class StepRecorder:
    """A listener keeping the step events of one thread (not those of its subgraphs)."""

    def __init__(self, thread_id: str, on_step_start: Callable[[int], None] | None = None
                 ) -> None:
        self.thread_id = thread_id
        self.events: list[StepEvent] = []
        self._on_step_start = on_step_start

    def on_step_start(self, thread_id: str | None, step: int, nodes: tuple[str, ...]) -> None:
        if thread_id == self.thread_id and self._on_step_start is not None:
            self._on_step_start(step)

    def on_step_end(self, event: StepEvent) -> None:
        if event.thread_id == self.thread_id:
            self.events.append(event)


def _mutation_guards(spec: GraphSpec) -> GraphSpec:
    return checking_spec(
        spec,
        wrap_node=lambda n: guarded(n.call.fn, n.call.is_async, f"node {n.name!r}"),
        wrap_router=lambda b: guarded(b.router.fn, b.router.is_async, router_label(b)))


# -- check_runs -----------------------------------------------------------------------------------

def check_runs(
    app: CompiledGraph,
    *,
    inputs: SearchStrategy[Any] | None = None,
    invariant: Invariant | None = None,
    final: Callable[[Any], Any] | None = None,
    max_steps: int = CHECK_MAX_STEPS,
    max_examples: int | None = None,
    events: Mapping[str, SearchStrategy[Any]] | None = None,
    answers: SearchStrategy[Any] | None = None,
    context: Any = None,
    settings: Settings | None = None,
) -> None:
    """Run `app` end to end on generated inputs; raise `PropertyCheckError` with the minimal
    input of a run that
    - does not end within `max_steps` steps (a loop that never exits for some inputs),
    - breaks `invariant(before, after)` at some step (`before`/`after`: the states around it),
    - ends in a state where `final(state)` is False (or raises AssertionError),
    - or fails: a node raises, returns an invalid update, a router an unknown route, or a node
      or router changes its input in place.

    `inputs` is a strategy of input dicts or states (default `states(app's state model)`).
    Runs ignore `interrupt_before`/`interrupt_after` and `on_failure="compensate"`; a node
    waiting in `wait_for(event)` is resumed with a value drawn from `events[event]`, one
    asking with `interrupt` with one drawn from `answers`. Runs get
    `context` as `invoke(context=...)` does (a value, or a strategy drawn per example). When
    `app` has a checkpointer every run gets a fresh in-memory one instead (your store is never
    touched). Retry back-offs do not sleep (`FakeClock`).
    """
    app = as_compiled(app)
    events = with_answers(events, answers)
    spec = app.spec
    input_strategy = inputs if inputs is not None else states_of(spec.schema.model)
    checked = _mutation_guards(spec)
    durable = app.checkpointer is not None
    contexts = context_source(spec, context)

    def test(data: Any) -> None:
        input = data.draw(input_strategy, label="input")
        call_context = contexts(data)
        graph = CompiledGraph(checked, checkpointer=MemoryCheckpointer() if durable else None,
                              name=app.name)
        thread_id = CHECK_THREAD if durable else None
        failure = _run_once(graph, spec, input, thread_id, max_steps, invariant, final,
                            EventScript(events, data).cursor(), call_context)
        if failure is not None:
            fail(failure)

    failures = run_property(test, key=f"check_runs:{graph_key(app)}",
                            settings=make_settings(max_examples, settings))
    if failures:
        raise_report(failures, check="check_runs", graph=app.name)


def _run_once(graph: CompiledGraph, spec: GraphSpec, input: Any, thread_id: str | None,
              max_steps: int, invariant: Invariant | None, final: Callable[[Any], Any] | None,
              next_event: Callable[[str], Any], context: Any = None) -> Failure | None:
    def found(kind: str, message: str, *details: tuple[str, Any], subject: str = "the run",
              error: BaseException | None = None) -> Failure:
        return Failure("check_runs", subject, kind, message, example=input,
                       example_label="input", details=details, error=error)

    try:
        before = spec.schema.validate_input(input)
    except InvalidUpdateError as exc:
        return found("invalid_input", f"the input is not valid: {exc}", error=exc)
    path: list[tuple[str, ...]] = []
    failure: Failure | None = None
    ended = False
    with use_clock(FakeClock()):
        events = run_events(graph, input, thread_id, max_steps, next_event, context)
        try:
            for event in events:
                path.append(event.nodes)
                if invariant is not None:
                    why = evaluate(invariant, before, event.state)
                    if why is not None:
                        failure = found(
                            "invariant", f"step {event.step} ({', '.join(event.nodes)}) breaks "
                            f"the invariant ({why})", ("path", path_text(path, ended=False)),
                            ("before", before), ("updates", event.updates),
                            ("after", event.state))
                        break
                before = event.state
            else:
                ended = True
        except StepLimitError as exc:
            failure = found(
                "non_termination", f"the run did not end within max_steps={max_steps} steps "
                f"(still due: {', '.join(map(repr, exc.next_nodes))})",
                ("path", path_text(path, ended=False)), ("state after them", before), error=exc)
        except NeedsEvent as exc:
            failure = found("needs_event", needs_event_message("a node", exc.event))
        except Abort as abort:
            failure = _in_run(abort.failure, input, path)
        except (InvalidUpdateError, InvalidRouteError) as exc:
            kind = "invalid_update" if isinstance(exc, InvalidUpdateError) else "invalid_route"
            subject = _subject(exc)
            failure = found(kind, _strip_subject(str(exc), subject),
                            ("path", path_text(path, ended=False)), ("state", before),
                            subject=subject, error=exc)
        except Exception as exc:
            failure = found("error", f"the run raised {describe_error(exc)}",
                            ("path", path_text(path, ended=False)), ("state", before),
                            error=exc)
        finally:
            events.close()
    if failure is None and ended and final is not None:
        why = evaluate(final, before)
        if why is not None:
            failure = found("final", f"the final state fails `final` ({why})",
                            ("path", path_text(path, ended=True)), ("final state", before))
    return failure


def _subject(exc: InvalidUpdateError | InvalidRouteError) -> str:
    node = getattr(exc, "node", None)
    if isinstance(exc, InvalidUpdateError) and node and not node.startswith("__"):
        return f"node {node!r}"
    return "the run"


def _strip_subject(message: str, subject: str) -> str:
    return message[len(subject) + 1:] if message.startswith(subject + " ") else message


def _in_run(failure: Failure, input: Any, path: list[tuple[str, ...]]) -> Failure:
    """A failure seen inside a node wrapper, placed in its run."""
    return Failure("check_runs", failure.subject, failure.kind,
                   f"{failure.message} (at step {len(path)})", example=input,
                   example_label="input",
                   details=(*failure.details, ("path", path_text(path, ended=False))))
