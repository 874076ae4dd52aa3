"""`StateGraph`: the builder users write their workflow with.

It only records what was declared; `compile()` hands the declarations to the compiler, which
checks all of them at once and freezes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

from .compiler import compile_graph
from .migrations import Migration

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer
    from checkpoints.store_base import BaseStore

    from .compiled import CompiledGraph
    from .policies import CachePolicy, RetryPolicy
    from .runners import Runner

PathMap = Mapping[Hashable, str] | Sequence[str]


@dataclass(frozen=True)
class NodeDeclaration:
    name: Any
    fn: Any
    retry: Any = None
    timeout: Any = None
    cache: Any = None
    compensate: Any = None
    destinations: Any = ()
    on_error: Any = "raise"
    error_field: Any = "errors"
    subgraph_input: Any = None
    subgraph_output: Any = None
    runner: Any = None


@dataclass(frozen=True)
class BranchDeclaration:
    source: Any
    router: Any
    path_map: Any


class StateGraph:
    """A workflow under construction: nodes, edges and conditional edges over a state model.

        g = StateGraph(State)
        g.add_node("work", work)
        g.add_edge(START, "work")
        g.add_conditional_edges("work", route, {"again": "work", "done": END})
        app = g.compile()
    """

    def __init__(self, state_schema: type, *, migrations: Sequence[Migration] = (),
                 context_schema: type | None = None) -> None:
        """`migrations` say what became of fields stored by earlier versions of the state
        model (`Rename`, `Drop`: see `statemachine.migrations`); `context_schema` is the type
        of the per-call `context=` nodes get in `RunContext.context` (`run_context`)."""
        self.state_schema = state_schema
        self.migrations: tuple[Migration, ...] = tuple(migrations)
        self.context_schema = context_schema
        self.node_declarations: list[NodeDeclaration] = []
        self.edges: list[tuple[Any, Any]] = []
        self.joins: list[tuple[tuple[Any, ...], Any]] = []
        self.branches: list[BranchDeclaration] = []

    def add_node(
        self,
        node: str | Callable[..., Any],
        fn: Callable[..., Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        cache: CachePolicy | None = None,
        compensate: Callable[..., Any] | None = None,
        destinations: Sequence[str] = (),
        on_error: Literal["raise", "capture"] = "raise",
        error_field: str = "errors",
        input: Callable[[Any], Any] | None = None,
        output: Callable[[Any], Any] | None = None,
        runner: Literal["local"] | None = None,
    ) -> Self:
        """Add a node: `add_node("name", fn)` or `add_node(fn)` (named after the function).

        `fn(state)` or `fn(state, context)`, sync or async, returns a dict of updates, an
        instance of the state model, a `Command`, or None.

        - `retry`: a `RetryPolicy` (default: the one given to `compile`, else none).
        - `timeout`: seconds; past them the node fails with `NodeTimeoutError`.
        - `cache`: a `CachePolicy`; a hit skips the node and reuses its update.
        - `compensate`: `fn(state)` that undoes this node's effect, run by `rollback`.
        - `destinations`: the nodes a returned `Command(goto=...)` may go to.
        - `on_error="capture"`: a failure becomes a `NodeFailure` appended to `error_field`
          instead of failing the step.

        `fn` may also be a compiled graph (a subgraph). With the parent's state schema it runs
        on the parent's state and its nodes' writes pass up; with another schema give
        `input(parent_state)` (its input) and `output(final_state)` (the parent's update).

        `runner="local"` keeps the node in the driver when the graph or a call runs its
        tasks on a cluster (`statemachine.runners`): a light node not worth a round trip,
        or one that reads `ctx.store`.
        """
        options = dict(retry=retry, timeout=timeout, cache=cache, compensate=compensate,
                       destinations=tuple(destinations) if not isinstance(destinations, str)
                       else (destinations,), on_error=on_error, error_field=error_field,
                       subgraph_input=input, subgraph_output=output, runner=runner)
        if fn is None and not isinstance(node, str):
            name = getattr(node, "__name__", None) or repr(node)
            self.node_declarations.append(NodeDeclaration(name, node, **options))
        else:
            self.node_declarations.append(NodeDeclaration(node, fn, **options))
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
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        on_failure: Literal["raise", "compensate"] = "raise",
        check_mutation: Literal["sizes", "full", "off"] | None = None,
        store: BaseStore | None = None,
        runner: Runner | None = None,
    ) -> CompiledGraph:
        """Check the whole graph and freeze it; raises `GraphValidationError` with every problem.

        `retry` is the default policy of nodes without their own; `max_concurrency` bounds
        how many tasks of a step run at once (overridable per call); `on_failure="compensate"`
        rolls a failed run back (see `CompiledGraph.rollback`) before the error propagates.
        `check_mutation` says how each step checks that its nodes did not change the state
        they were given in place: "sizes" (the default, about 1 µs a step), "full" (the
        whole state compared, for tests) or "off"; the STATEMACHINE_CHECK_MUTATION
        environment variable sets the default (see `statemachine.mutation`). `store` is
        the long-term memory nodes reach as `ctx.store` (`statemachine.memory`): their writes
        commit with their step, so it must be a `MemoryStore` or live in the checkpointer's
        database. `runner` runs the graph's node tasks on a cluster (`DaskRunner`,
        `RayRunner` from `statemachine.runners`); a call's own `runner=` overrides it.
        """
        return compile_graph(
            self,
            checkpointer=checkpointer,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
            name=name,
            retry=retry,
            max_concurrency=max_concurrency,
            on_failure=on_failure,
            check_mutation=check_mutation,
            store=store,
            runner=runner,
        )
