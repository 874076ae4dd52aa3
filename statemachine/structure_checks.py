"""The compiler's checks of the graph's shape, on its networkx digraph: something leaves
START, every node can run, every node has a way on, and END can be reached from every node."""

from __future__ import annotations

import networkx as nx

from .constants import END, START
from .errors import Problem


def check_structure(digraph: nx.DiGraph, names: list[str]) -> list[Problem]:
    """The shape problems of `digraph`, whose nodes are START, END and `names` (in
    declaration order, which is the order problems are reported in)."""
    if not any(True for _ in digraph.successors(START)):
        return [Problem(
            "no_entry", "nothing leaves START, so no node would ever run.",
            hint=f"add add_edge(START, {names[0]!r})." if names else "add a node and an edge "
            "from START to it.")]
    problems = []
    reachable = nx.descendants(digraph, START)
    for n in names:
        if n not in reachable:
            problems.append(Problem(
                "unreachable_node", f"node {n!r} can never run: no path leads to it from START.",
                nodes=(n,), hint=f"add an edge into {n!r} or remove it."))
    for n in names:
        if digraph.out_degree(n) == 0:
            problems.append(Problem(
                "dead_end", f"node {n!r} has no outgoing edge.", nodes=(n,),
                hint=f"add add_edge({n!r}, END) if the run should stop after it."))
    reaches_end = nx.ancestors(digraph, END)
    stuck = {n for n in names if n in reachable and n not in reaches_end
             and digraph.out_degree(n) > 0}
    for component in _ordered_components(digraph.subgraph(stuck), names):
        listed = " -> ".join(component)
        problems.append(Problem(
            "no_path_to_end",
            f"END can never be reached from {listed}: " +
            ("a loop with no way out." if len(component) > 1 or
             digraph.has_edge(component[0], component[0]) else "every path from it is stuck."),
            nodes=tuple(component),
            hint=f"add a conditional edge from {component[-1]!r} that can go to END."))
    return problems


def _ordered_components(subgraph: nx.DiGraph, order: list[str]) -> list[list[str]]:
    position = {n: i for i, n in enumerate(order)}
    components = [sorted(c, key=position.__getitem__)
                  for c in nx.strongly_connected_components(subgraph)]
    # a stuck node that only leads into a stuck loop is part of the same problem
    condensed = nx.condensation(subgraph, scc=[set(c) for c in components])
    sinks = [condensed.nodes[c]["members"] for c in condensed if condensed.out_degree(c) == 0]
    result = []
    for members in sinks:
        upstream = set(members)
        for c in condensed:
            if condensed.nodes[c]["members"] & set(members):
                upstream |= set().union(*(condensed.nodes[a]["members"]
                                          for a in nx.ancestors(condensed, c)))
        result.append(sorted(upstream, key=position.__getitem__))
    return sorted(result, key=lambda c: position[c[0]])
