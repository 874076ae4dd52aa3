"""Routing: the tasks of a step's successor, and where a router's answer leads — the rules
the executor routes by and the testing toolkit checks routers against, in one place.

A router returns a route or a collection of them; each route is a node name (or END), a key of
the branch's path map, or a `Send`. `resolve_route` turns one into a target, or says why it is
refused; it never raises on a strange value (a nested list, an unhashable object).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from .calls import call_user_function
from .commands import Send
from .constants import END
from .errors import InvalidRouteError, InvalidUpdateError, did_you_mean
from .records import Task
from .spec import Branch, GraphSpec
from .types import RunContext, task_id

Joins = dict[int, set[str]]
"""Progress of the graph's joins (edges from several nodes): join index -> sources seen."""


@dataclass(frozen=True, slots=True)
class RefusedRoute:
    """Why a route was refused: `reason` reads after "router R after node N" in a message."""

    reason: str
    allowed: tuple[str, ...]


def route_items(result: Any) -> list[Any]:
    """The routes a router returned: a list, tuple or set of them, or a single one."""
    return list(result) if isinstance(result, (list, tuple, set, frozenset)) else [result]


def resolve_route(spec: GraphSpec, branch: Branch, item: Any) -> str | Send | RefusedRoute:
    """The target `item` (one route a router returned) leads to, or why it is refused."""
    if isinstance(item, Send):
        targets = branch.targets if (branch.mapping is not None or
                                     branch.allowed is not None) else tuple(spec.nodes)
        if item.node in targets and item.node in spec.nodes:
            return item
        return RefusedRoute(
            f"returned Send({item.node!r}, ...), but {item.node!r} is not one of its targets "
            f"({', '.join(map(repr, targets))})", tuple(targets))
    allowed: list[Any]
    if branch.mapping is not None:
        if isinstance(item, Hashable) and _hashes(item) and item in branch.mapping:
            return branch.mapping[item]
        allowed = list(branch.mapping)
    elif branch.allowed is not None:
        if isinstance(item, str) and item in branch.allowed:
            return item
        allowed = sorted(branch.allowed)
    else:
        if isinstance(item, str) and (item in spec.nodes or item == END):
            return item
        allowed = [*spec.nodes, END]
    names = [str(a) for a in allowed]
    return RefusedRoute(
        f"returned {item!r}{did_you_mean(item, names)}, which is not one of its routes "
        f"({', '.join(repr(a) for a in allowed)})", tuple(names))


def _hashes(item: Any) -> bool:
    """Whether `item` can be looked up in a dict (a tuple holding a list cannot)."""
    try:
        hash(item)
    except TypeError:
        return False
    return True


async def next_tasks(spec: GraphSpec, ran: Sequence[Task], state: BaseModel, step: int,
                     joins: Joins, *, gotos: Mapping[tuple[str, int], Sequence[str | Send]],
                     thread_id: str | None, origin: str, context: Any = None
                     ) -> tuple[list[Task], Joins]:
    """The tasks of the next step, after `ran` (with `Command` targets `gotos`) produced
    `state` at `step`, and the joins' progress then (`joins` is not changed). Routers that
    take a context get the task id of their source node's task 0 from `origin` (where the
    step's tasks were scheduled)."""
    targets: list[str | Send] = []
    progress = joins
    for task in ran:
        node = task.node
        targets.extend(spec.edges.get(node, ()))
        for branch in spec.branches.get(node, ()):
            targets.extend(await _take_branch(spec, branch, state, step, thread_id, origin,
                                              context))
        targets.extend(gotos.get(task.key, ()))
        for join in spec.joins_by_source.get(node, ()):
            if progress is joins:
                progress = {k: set(v) for k, v in joins.items()}
            seen = progress.setdefault(join.index, set())
            seen.add(node)
            if len(seen) == len(join.sources):
                targets.append(join.target)
                del progress[join.index]
    if len(targets) == 1 and isinstance(targets[0], str):
        return ([] if targets[0] == END else [Task(targets[0])]), progress
    names = {t for t in targets if isinstance(t, str) and t != END}
    tasks = [Task(t) for t in names]
    sent = Counter(names)
    for target in targets:
        if isinstance(target, Send):
            payload = _storable_payload(target, thread_id)
            tasks.append(Task(target.node, sent[target.node], payload, sent=True))
            sent[target.node] += 1
    tasks.sort(key=lambda t: (spec.order[t.node], t.index))
    return tasks, progress


def _storable_payload(send: Send, thread_id: str | None) -> Any:
    """A Send's payload in its JSON form, as it is stored: with or without a checkpointer,
    first run or resume, the node then gets the same input."""
    try:
        return to_jsonable_python(send.payload)
    except PydanticSerializationError as exc:
        raise InvalidUpdateError(
            f"the payload of Send({send.node!r}, ...) cannot be stored as JSON: {exc}",
            node=send.node, thread_id=thread_id) from exc


async def _take_branch(spec: GraphSpec, branch: Branch, state: BaseModel, step: int,
                       thread_id: str | None, origin: str, context: Any) -> list[str | Send]:
    info = branch.router
    of_thread = f" of thread {thread_id!r}" if thread_id is not None else ""
    args: tuple[Any, ...] = (state,)
    if info.wants_context:
        args = (state, RunContext(thread_id, step, branch.source,
                                  task_id(thread_id, origin, branch.source, 0),
                                  context=context))
    try:
        result = await call_user_function(info, args, inline=True)
    except Exception as exc:
        exc.add_note(f"raised by router {info.name!r} after node {branch.source!r} at "
                     f"step {step}{of_thread}")
        raise
    targets: list[str | Send] = []
    for item in route_items(result):
        target = resolve_route(spec, branch, item)
        if isinstance(target, RefusedRoute):
            raise InvalidRouteError(
                f"router {info.name!r} after node {branch.source!r} {target.reason} at "
                f"step {step}{of_thread}.", node=branch.source, returned=item,
                allowed=list(target.allowed), step=step, thread_id=thread_id)
        targets.append(target)
    return targets
