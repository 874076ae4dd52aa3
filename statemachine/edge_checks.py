"""The compiler's checks of what edges name: plain edges, joins, conditional edges (routers
and their path maps), command destinations and interrupts. Every valid edge is added to the
networkx digraph the structure checks and the diagrams read."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx

from .callables import inspect_callable, literal_targets
from .constants import END, START
from .errors import Problem, closest_name, did_you_mean
from .spec import Branch, Join

if TYPE_CHECKING:
    from .graph import BranchDeclaration


class RouterWithoutPathMapWarning(UserWarning):
    """A router has neither a path map nor a Literal return annotation."""


class EdgeChecker:
    """Checks each node an edge names against the declared nodes, reporting unknown or
    misplaced names to `problems`, and collects the valid edges in `digraph`."""

    def __init__(self, names: list[str], problems: list[Problem]) -> None:
        self.names = names
        self.known = set(names)
        self.problems = problems
        self.digraph = nx.DiGraph()
        self.digraph.add_node(START, kind="start")
        self.digraph.add_node(END, kind="end")
        for name in names:
            self.digraph.add_node(name, kind="node")

    def check_name(self, ref: object, where: str, *, allow_start: bool = False,
                   allow_end: bool = False) -> bool:
        """Whether `ref` names a node (or START/END where allowed); a problem if not."""
        names = self.names
        if not isinstance(ref, str):
            self.problems.append(Problem(
                "invalid_edge", f"{where} must name one node (text), got {ref!r}.",
                hint="to run several nodes after one, add an edge to each of them, or use a "
                "join: add_edge([a, b], c)." if isinstance(ref, (list, tuple, set)) else None))
            return False
        if (ref == START and allow_start) or (ref == END and allow_end):
            return True
        if ref in (START, END):
            self.problems.append(Problem(
                "invalid_edge", f"{where} uses {ref!r}, which is not allowed there.",
                hint="edges go out of START and into END, never the other way."))
            return False
        if ref not in self.known:
            suggestion = closest_name(ref, names)
            self.problems.append(Problem(
                "unknown_node", f"{where} names unknown node {ref!r}{did_you_mean(ref, names)}.",
                nodes=(str(ref),),
                hint=f"use {suggestion!r}." if suggestion else
                f"add it with add_node({ref!r}, fn) or use one of: {', '.join(names) or 'none'}."))
            return False
        return True

    def add_edge(self, src: str, dst: str, kind: str, label: str | None = None) -> None:
        """Add `src -> dst` to the digraph; a second declaration of it adds its label, and
        conditional wins over other kinds."""
        if self.digraph.has_edge(src, dst):
            data = self.digraph.edges[src, dst]
            if label:
                data["labels"] = (*data.get("labels", ()), label)
            if kind == "conditional" or data["kind"] == "conditional":
                data["kind"] = "conditional"
            return
        self.digraph.add_edge(src, dst, kind=kind, labels=(label,) if label else ())


def check_edges(declared: Sequence[tuple[Any, Any]], checker: EdgeChecker) -> dict[str, list[str]]:
    """`add_edge(a, b)` declarations: each source's targets, in declaration order."""
    edges: dict[str, list[str]] = {}
    for src, dst in declared:
        ok_src = checker.check_name(src, f"add_edge({src!r}, {dst!r}) source", allow_start=True)
        ok_dst = checker.check_name(dst, f"add_edge({src!r}, {dst!r}) target", allow_end=True)
        if ok_src and ok_dst:
            edges.setdefault(src, [])
            if dst not in edges[src]:
                edges[src].append(dst)
            checker.add_edge(src, dst, "fixed")
    return edges


def check_joins(declared: Sequence[tuple[tuple[Any, ...], Any]],
                checker: EdgeChecker) -> list[Join]:
    """`add_edge([a, b], c)` declarations, numbered in declaration order."""
    joins: list[Join] = []
    for sources, dst in declared:
        where = f"add_edge({list(sources)!r}, {dst!r})"
        if not sources:
            checker.problems.append(Problem("invalid_edge", f"{where} joins no sources.",
                                            hint="list at least one source node."))
            continue
        ok = all([checker.check_name(s, f"{where} source") for s in sources])
        ok = checker.check_name(dst, f"{where} target", allow_end=True) and ok
        if ok:
            joins.append(Join(len(joins), tuple(dict.fromkeys(sources)), dst))
            for s in sources:
                checker.add_edge(s, dst, "join")
    return joins


def check_branches(declared: Sequence[BranchDeclaration],
                   checker: EdgeChecker) -> dict[str, list[Branch]]:
    """`add_conditional_edges` declarations, by source; a router that may go anywhere (no path
    map, no Literal) gets an edge to every node and END."""
    branches: dict[str, list[Branch]] = {}
    for decl in declared:
        branch = _check_branch(decl, checker)
        if branch is None:
            continue
        branches.setdefault(branch.source, []).append(branch)
        if branch.mapping is not None:
            for key, target in branch.mapping.items():
                checker.add_edge(branch.source, target, "conditional", str(key))
        else:
            for target in (branch.allowed if branch.allowed is not None
                           else (*checker.names, END)):
                checker.add_edge(branch.source, target, "conditional")
    return branches


def check_destinations(node: str, destinations: Sequence[str], checker: EdgeChecker) -> None:
    """The nodes a node's `Command(goto=...)` may go to."""
    for target in destinations:
        if checker.check_name(target, f"the destinations of node {node!r}", allow_end=True):
            checker.add_edge(node, target, "command")


def check_interrupts(value: Sequence[str] | str, option: str,
                     checker: EdgeChecker) -> list[str]:
    """The nodes `interrupt_before`/`interrupt_after` names ("*": every node)."""
    if value == "*":
        return list(checker.names)
    if isinstance(value, str):
        value = [value]
    return [n for n in value if checker.check_name(n, option)]


# how far `warnings.warn` in _check_branch is from the user's `compile()` call: _check_branch,
# check_branches, build_spec, compile_graph, StateGraph.compile, the caller
_USER_FRAME = 6


def _check_branch(decl: BranchDeclaration, checker: EdgeChecker) -> Branch | None:
    check_name, problems = checker.check_name, checker.problems
    source = decl.source
    ok = check_name(source, "add_conditional_edges source", allow_start=True)
    router_name = getattr(decl.router, "__name__", None) or repr(decl.router)
    if not callable(decl.router):
        problems.append(Problem(
            "bad_signature", f"the router of {source!r} is {decl.router!r}, which is not callable.",
            nodes=(str(source),), hint="pass a function that takes the state."))
        return None
    info = inspect_callable(decl.router, router_name)
    if isinstance(info, str):
        problems.append(Problem(
            "bad_signature", f"router {router_name!r} of {source!r} cannot be called with the "
            f"state: {info}.", nodes=(str(source),), hint="write it as `def route(state)`."))
        return None
    path_map = decl.path_map
    mapping: dict[Hashable, str] | None = None
    allowed: frozenset[str] | None = None
    where = f"the path map of {source!r}"
    if isinstance(path_map, Mapping):
        mapping = {}
        for key, target in path_map.items():
            if check_name(target, f"{where} (route {key!r})", allow_end=True):
                mapping[key] = target
            else:
                ok = False
    elif isinstance(path_map, Sequence) and not isinstance(path_map, str):
        checked = [check_name(t, where, allow_end=True) for t in path_map]
        ok = ok and all(checked)
        allowed = frozenset(path_map)
    elif path_map is not None:
        problems.append(Problem(
            "invalid_path_map", f"{where} must be a dict of route -> node or a list of nodes, "
            f"got {type(path_map).__name__}.", nodes=(str(source),)))
        return None
    else:
        literal = literal_targets(decl.router)
        if literal is not None:
            checked = [check_name(t, f"the Literal return type of {router_name!r}",
                                  allow_end=True) for t in literal]
            ok = ok and all(checked)
            allowed = frozenset(literal)
        else:
            warnings.warn(
                f"router {router_name!r} of {source!r} has no path map and no Literal return "
                "annotation, so it is assumed to reach any node or END; a path map makes "
                "validation and diagrams exact.", RouterWithoutPathMapWarning,
                stacklevel=_USER_FRAME)
    if not ok:
        return None
    return Branch(source, info, mapping, allowed)
