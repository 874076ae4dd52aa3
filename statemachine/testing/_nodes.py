"""`check_nodes`: every node and router, alone, on generated states."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hypothesis import settings as Settings
from hypothesis.strategies import SearchStrategy

from ..clock import FakeClock, use_clock
from ..commands import Command, Send
from ..compiled import CompiledGraph
from ..constants import END
from ..errors import InvalidUpdateError, did_you_mean
from ..mutation import Fingerprint, mutation_message
from ..spec import Branch, NodeSpec
from ..waiting import TaskAnswers, WaitingForEvent, current_answers
from ._common import (
    EventScript,
    Failure,
    Invariant,
    as_compiled,
    call_user,
    context_source,
    describe_error,
    evaluate,
    fail,
    graph_key,
    make_settings,
    needs_event_message,
    raise_report,
    route_problem,
    router_items,
    router_label,
    run_context,
    run_property,
    show,
    with_answers,
)
from ._strategies import states as states_of
from ._strategies import values_of

CHECK = "check_nodes"
MAX_WAITS = 50


def check_nodes(
    app: CompiledGraph,
    *,
    invariant: Invariant | None = None,
    states: SearchStrategy[Any] | None = None,
    max_examples: int | None = None,
    payloads: Mapping[str, SearchStrategy[Any]] | None = None,
    skip: Iterable[str] = (),
    allowed_errors: tuple[type[BaseException], ...] = (),
    events: Mapping[str, SearchStrategy[Any]] | None = None,
    answers: SearchStrategy[Any] | None = None,
    context: Any = None,
    settings: Settings | None = None,
) -> None:
    """Run every node and every router of `app` alone on generated states; raise
    `PropertyCheckError` listing each one that misbehaves, with its minimal state.

    A node fails the check when, for some state, it
    - returns an unknown field, or a value its field rejects (type or `Field` constraint:
      a node that can push a count past `Field(le=100)` is reported),
    - returns a value that cannot be stored as JSON (only if `app` has a checkpointer),
    - returns a `Command` going where its `destinations` do not allow,
    - changes its input state in place instead of returning an update,
    - raises (unless the node captures its errors, `on_error="capture"`, or the error is an
      instance of `allowed_errors`),
    - or breaks `invariant(before, after)`, `after` being `before` with the node's update
      applied through the reducers.
    A router fails when it returns a route outside its path map (or `Literal`), raises, or
    changes the state.

    `states` is a strategy of the states to try (default `states(app's state model)`). They are
    arbitrary valid states, not only reachable ones: to check that a node preserves a property
    write the invariant as `preserves(prop)` (`not prop(before) or prop(after)`), or pass a
    strategy of the states you care about.

    Nodes a `Send` feeds get a payload instead of the state: from `payloads[node]` when given,
    else generated from the annotation of their first parameter when it is not the state model
    (`def summarize(doc: Document)`). Their update is applied to a generated state for the
    invariant. An unannotated Send-only node receives states: annotate it, give its payloads,
    or `skip` it. Subgraph nodes are skipped (check the subgraph's compiled graph itself), and
    so are the names in `skip`. A node calling `wait_for(event)` gets values drawn from
    `events[event]`, one asking with `interrupt` answers drawn from `answers`. Nodes and
    routers see `context` in their `RunContext.context` (a value,
    or a strategy drawn per example), as `invoke(context=...)` gives it.

    `max_examples` examples per node and router (default: the loaded hypothesis profile's);
    every other setting comes from the profile, or from `settings`.
    """
    app = as_compiled(app)
    events = with_answers(events, answers)
    spec = app.spec
    model = spec.schema.model
    state_strategy = states if states is not None else states_of(model)
    payloads = dict(payloads or {})
    skipped = set(skip)
    for name in [*payloads, *skipped]:
        if name not in spec.nodes:
            raise TypeError(f"check_nodes: unknown node {name!r}"
                            f"{did_you_mean(name, list(spec.nodes))}; the nodes of {app.name} "
                            f"are: {', '.join(spec.nodes)}.")
    run_settings = make_settings(max_examples, settings)
    contexts = context_source(spec, context)
    failures: list[Failure] = []
    with use_clock(FakeClock()):
        for name, node in spec.nodes.items():
            if name in skipped or node.subgraph is not None:
                continue
            payload = payloads.get(name)
            if payload is None:
                annotation = payload_type(node, model)
                if annotation is not None:
                    payload = values_of(annotation)
            test = _node_test(app, node, state_strategy, payload, invariant, allowed_errors,
                              events, contexts)
            failures += run_property(test, key=f"{CHECK}:{graph_key(app)}:node:{name}",
                                     settings=run_settings)
        for source, branches in spec.branches.items():
            for index, branch in enumerate(branches):
                test = _router_test(app, branch, state_strategy, allowed_errors, events,
                                    contexts)
                failures += run_property(
                    test, key=f"{CHECK}:{graph_key(app)}:router:{source}:{index}",
                    settings=run_settings)
    if failures:
        raise_report(failures, check=CHECK, graph=app.name)


def payload_type(node: NodeSpec, model: type) -> Any | None:
    """The annotation of a node's first parameter when it is not the state (a Send payload)."""
    fn = node.call.fn
    target = fn if inspect.isroutine(fn) else type(fn).__call__
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:
        return None
    if not params or params[0].name not in hints:
        return None
    annotation = hints[params[0].name]
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated \
        else annotation
    if base is typing.Any or base is object:
        return None
    if isinstance(base, type) and issubclass(model, base):
        return None
    return annotation


def _call(fn: Callable[..., Any], args: tuple[Any, ...], is_async: bool, who: str,
          script: EventScript) -> tuple[str, Any]:
    """("ok", result), ("error", exception) or ("needs_event", event name)."""
    answers: list[Any] = []
    next_value = script.cursor()
    for _ in range(MAX_WAITS):
        token = current_answers.set(TaskAnswers(list(answers)))
        try:
            return "ok", call_user(fn, args, is_async)
        except WaitingForEvent as waiting:
            try:
                answers.append(next_value(waiting.event))
            except KeyError:
                return "needs_event", waiting.event
        except Exception as exc:
            return "error", exc
        finally:
            current_answers.reset(token)
    return "error", RuntimeError(f"{who} waited for more than {MAX_WAITS} events")


def _node_test(app: CompiledGraph, node: NodeSpec, state_strategy: SearchStrategy[Any],
               payload: SearchStrategy[Any] | None, invariant: Invariant | None,
               allowed_errors: tuple[type[BaseException], ...],
               events: Mapping[str, SearchStrategy[Any]] | None,
               contexts: Callable[[Any], Any]) -> Callable[[Any], None]:
    spec, schema = app.spec, app.spec.schema
    name, who = node.name, f"node {node.name!r}"
    storable = app.checkpointer is not None

    def test(data: Any) -> None:
        if payload is not None:
            arg = data.draw(payload, label="payload")
            before = schema.validate_input(data.draw(state_strategy, label="state"))
            label, example = "payload", arg
        else:
            arg = before = schema.validate_input(data.draw(state_strategy, label="state"))
            label, example = "state", arg
        args = (arg, run_context(name, context=contexts(data))) if node.call.wants_context \
            else (arg,)
        fp = Fingerprint(arg)
        outcome, value = _call(node.call.fn, args, node.call.is_async, who,
                               EventScript(events, data))
        failure = None

        def found(kind: str, message: str, *details: tuple[str, Any],
                  error: BaseException | None = None) -> Failure:
            return Failure(CHECK, who, kind, message, example=example, example_label=label,
                           details=details, error=error)

        if outcome == "needs_event":
            failure = found("needs_event", needs_event_message(who, value))
        elif outcome == "error":
            if node.on_error != "capture" and not isinstance(value, allowed_errors):
                failure = found("error", f"raised {describe_error(value)}", error=value)
        elif fp.changed():
            failure = found("mutation", mutation_message(who, fp, "input"))
        else:
            failure = _check_update(spec, schema, node, value, before, invariant, storable,
                                    found)
        if failure is not None:
            fail(failure)

    return test


def _check_update(spec: Any, schema: Any, node: NodeSpec, result: Any, before: Any,
                  invariant: Invariant | None, storable: bool,
                  found: Callable[..., Failure]) -> Failure | None:
    name = node.name
    if isinstance(result, Command):
        for target in result.targets():
            goto = target.node if isinstance(target, Send) else target
            if goto not in node.destinations and not (goto == END and
                                                      not isinstance(target, Send)):
                return found("invalid_command",
                             f"returned Command(goto={goto!r}), but its declared destinations "
                             f"are {list(node.destinations)}; add it: add_node(..., "
                             "destinations=[...]).")
        result = result.update
    try:
        update = schema.validate_update(result, node=name)
    except InvalidUpdateError as exc:
        kind = "unknown_field" if exc.field is not None and exc.field not in schema.fields \
            and "unknown field" in str(exc) else "invalid_update"
        return found(kind, _strip_who(str(exc), name), ("returned", show(result)), error=exc)
    if storable:
        try:
            schema.encode_update(update, node=name, step=None, thread_id=None)
        except InvalidUpdateError as exc:
            return found("unstorable", _strip_who(str(exc), name), ("returned", show(result)),
                         error=exc)
    try:
        after = schema.apply(before, [(name, update)])
    except Exception as exc:
        return found("error", f"its update cannot be merged: {describe_error(exc)}",
                     ("update", update), error=exc)
    if invariant is not None:
        why = evaluate(invariant, before, after)
        if why is not None:
            return found("invariant", f"breaks the invariant ({why})", ("update", update),
                         ("after", after))
    return None


def _strip_who(message: str, name: str) -> str:
    prefix = f"node {name!r} "
    return message[len(prefix):] if message.startswith(prefix) else message


def _router_test(app: CompiledGraph, branch: Branch, state_strategy: SearchStrategy[Any],
                 allowed_errors: tuple[type[BaseException], ...],
                 events: Mapping[str, SearchStrategy[Any]] | None,
                 contexts: Callable[[Any], Any]) -> Callable[[Any], None]:
    spec = app.spec
    who = router_label(branch)
    storable = app.checkpointer is not None

    def test(data: Any) -> None:
        state = spec.schema.validate_input(data.draw(state_strategy, label="state"))
        info = branch.router
        args = (state, run_context(branch.source, context=contexts(data))) \
            if info.wants_context else (state,)
        fp = Fingerprint(state)
        outcome, value = _call(info.fn, args, info.is_async, who, EventScript(events, data))
        failure = None
        if outcome == "needs_event":
            failure = Failure(CHECK, who, "needs_event", needs_event_message(who, value),
                              example=state)
        elif outcome == "error":
            if not isinstance(value, allowed_errors):
                failure = Failure(CHECK, who, "error", f"raised {describe_error(value)}",
                                  example=state, error=value)
        elif fp.changed():
            failure = Failure(CHECK, who, "mutation", mutation_message(who, fp), example=state)
        else:
            for item in router_items(value):
                problem = route_problem(spec, branch, item)
                if problem is None and storable and isinstance(item, Send):
                    problem = _unstorable_payload(item)
                if problem is not None:
                    failure = Failure(CHECK, who, "invalid_route", problem, example=state,
                                      details=(("returned", show(value)),))
                    break
        if failure is not None:
            fail(failure)

    return test


def _unstorable_payload(send: Send) -> str | None:
    from pydantic_core import to_jsonable_python

    try:
        to_jsonable_python(send.payload)
    except Exception as exc:
        return f"returned Send({send.node!r}, ...) whose payload cannot be stored as JSON: {exc}"
    return None
