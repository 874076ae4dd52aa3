"""`StateGraph`: the builder users write their workflow with.

It only records what was declared; `compile()` hands the declarations to the compiler, which
checks all of them at once and freezes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer

    from .compiled import CompiledGraph

PathMap = Mapping[Hashable, str] | Sequence[str]


@dataclass(frozen=True)
class NodeDeclaration:
    name: Any
    fn: Any


@dataclass(frozen=True)
class BranchDeclaration:
    source: Any
    router: Any
    path_map: Any


class StateGraph:
    """A workflow under construction: nodes, edges and conditional edges over a state model.

    >>> g = StateGraph(State)
    >>> g.add_node("work", work)
    >>> g.add_edge(START, "work")
    >>> g.add_conditional_edges("work", route, {"again": "work", "done": END})
    >>> app = g.compile()
    """

    def __init__(self, state_schema: type) -> None:
        self.state_schema = state_schema
        self.node_declarations: list[NodeDeclaration] = []
        self.edges: list[tuple[Any, Any]] = []
        self.joins: list[tuple[tuple[Any, ...], Any]] = []
        self.branches: list[BranchDeclaration] = []

    def add_node(
        self, node: str | Callable[..., Any], fn: Callable[..., Any] | None = None
    ) -> Self:
        """Add a node: `add_node("name", fn)` or `add_node(fn)` (named after the function).

        `fn(state)` or `fn(state, context)`, sync or async, returns a dict of updates or None.
        """
        if fn is None and not isinstance(node, str):
            name = getattr(node, "__name__", None) or repr(node)
            self.node_declarations.append(NodeDeclaration(name, node))
        else:
            self.node_declarations.append(NodeDeclaration(node, fn))
        return self

    def add_edge(self, source: str | Sequence[str], target: str) -> Self:
        """`add_edge(a, b)`: b runs after a. `add_edge([a, b], c)`: c runs once after a and b."""
        if isinstance(source, str):
            self.edges.append((source, target))
        else:
            self.joins.append((tuple(source), target))
        return self

    def add_conditional_edges(
        self,
        source: str,
        router: Callable[..., Any],
        path_map: PathMap | None = None,
    ) -> Self:
        """After `source` runs, `router(state)` picks the next node(s).

        With a dict `path_map` the router returns its keys; with a list (or none) it returns
        node names or END. It may return a list of them to run several nodes in parallel.
        """
        self.branches.append(BranchDeclaration(source, router, path_map))
        return self

    @property
    def nodes(self) -> dict[str, Callable[..., Any]]:
        """The declared nodes by name (the first declaration wins for duplicates)."""
        found: dict[str, Callable[..., Any]] = {}
        for decl in self.node_declarations:
            found.setdefault(decl.name, decl.fn)
        return found

    def compile(
        self,
        checkpointer: Checkpointer | None = None,
        *,
        interrupt_before: Sequence[str] | str = (),
        interrupt_after: Sequence[str] | str = (),
        name: str | None = None,
    ) -> CompiledGraph:
        """Check the whole graph and freeze it; raises `GraphValidationError` with every problem."""
        from .compiler import compile_graph

        return compile_graph(
            self,
            checkpointer=checkpointer,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
            name=name,
        )
