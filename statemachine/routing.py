"""Where a router's answer leads: the rules the executor routes by and the testing toolkit
checks routers against, in one place.

A router returns a route or a collection of them; each route is a node name (or END), a key of
the branch's path map, or a `Send`. `resolve_route` turns one into a target, or says why it is
refused; it never raises on a strange value (a nested list, an unhashable object).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .commands import Send
from .constants import END
from .errors import did_you_mean
from .spec import Branch, GraphSpec


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
