"""The compiler: checks a `StateGraph` with networkx and freezes it into a `GraphSpec`.

Every problem is collected before anything is raised, so a user fixes them all in one pass.
This module is the entry point and says in which order things are checked; the checks live in
`node_checks` (node declarations), `edge_checks` (what edges name, the digraph) and
`structure_checks` (the digraph's shape), the frozen result in `spec`.

Problem codes (stable, for tools and tests):

    schema_not_model   the state schema is not a pydantic model
    invalid_reducer    a reducer is not a two-argument callable
    reserved_name      a node is named START/END, or has an empty or non-text name
    duplicate_node     two nodes share a name
    node_not_callable  a node is not a function
    bad_signature      a node or router cannot be called with the state
    invalid_edge       an edge into START or out of END, or START inside a join
    unknown_node       an edge, path map or interrupt names a node that does not exist
    invalid_path_map   a path map that is not a dict or list of node names
    invalid_option     a node or compile option of the wrong kind (retry, timeout, cache, ...)
    invalid_error_field  on_error="capture" names a field that is missing or has no reducer
    subgraph_schema    a subgraph with another state schema lacks input/output mapping functions
    secret_field       a state field (or a Send payload type) holds a pydantic secret type,
                       which checkpoints would store as '**********'
    no_entry           nothing leaves START
    unreachable_node   no path leads from START to the node
    dead_end           the node has no outgoing edge
    no_path_to_end     END cannot be reached from the node (a loop with no exit)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import mutation
from .callables import inspect_callable
from .compiled import CompiledGraph
from .edge_checks import (
    EdgeChecker,
    RouterWithoutPathMapWarning,
    check_branches,
    check_destinations,
    check_edges,
    check_interrupts,
    check_joins,
)
from .errors import GraphValidationError, Problem, did_you_mean
from .migrations import Drop, Rename
from .node_checks import check_error_field, check_nodes, secret_problem
from .policies import RetryPolicy
from .run_context import ContextSchema, check_context_schema
from .secret_types import model_secret_paths
from .spec import Branch, CallableInfo, GraphSpec, Join, NodeSpec, Subgraph
from .state import StateSchema, is_state_model, reducer_problems
from .structure_checks import check_structure

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer

    from .graph import StateGraph

__all__ = [
    "Branch",
    "CallableInfo",
    "GraphSpec",
    "Join",
    "NodeSpec",
    "RouterWithoutPathMapWarning",
    "Subgraph",
    "build_spec",
    "compile_graph",
    "inspect_callable",
]


def compile_graph(
    builder: StateGraph,
    *,
    checkpointer: Checkpointer | None,
    interrupt_before: Sequence[str] | str,
    interrupt_after: Sequence[str] | str,
    name: str | None,
    retry: RetryPolicy | None = None,
    max_concurrency: int | None = None,
    on_failure: str = "raise",
    check_mutation: str | None = None,
    store: Any = None,
    runner: Any = None,
) -> CompiledGraph:
    """Check `builder` and make it runnable; raises `GraphValidationError` with every problem."""
    spec = build_spec(builder, interrupt_before=interrupt_before, interrupt_after=interrupt_after,
                      retry=retry, max_concurrency=max_concurrency, on_failure=on_failure,
                      check_mutation=check_mutation)
    return CompiledGraph(spec, checkpointer=checkpointer, name=name, store=store,
                         runner=runner)


def build_spec(
    builder: StateGraph,
    *,
    interrupt_before: Sequence[str] | str = (),
    interrupt_after: Sequence[str] | str = (),
    retry: RetryPolicy | None = None,
    max_concurrency: int | None = None,
    on_failure: str = "raise",
    check_mutation: str | None = None,
) -> GraphSpec:
    """Check every declaration of `builder`; return the frozen graph or raise with all problems.

    Problems are reported in the order the checks run: compile options, the state schema,
    nodes, edges, joins, conditional edges, each node's destinations and error field,
    interrupts, and last the shape of the whole graph.
    """
    if check_mutation is None:
        check_mutation = os.environ.get(mutation.ENVIRONMENT) or "sizes"
    problems = _check_compile_options(retry, max_concurrency, on_failure)
    if check_mutation not in mutation.CHECK_MUTATION_MODES:
        problems.append(Problem(
            "invalid_option", f"compile(check_mutation=...) (or {mutation.ENVIRONMENT}) must "
            f"be one of {', '.join(map(repr, mutation.CHECK_MUTATION_MODES))}, got "
            f"{check_mutation!r}."))
    problems += _check_schema(builder.state_schema)
    problems += _check_migrations(builder)
    context_schema = getattr(builder, "context_schema", None)
    if context_schema is not None and (why := check_context_schema(context_schema)):
        problems.append(Problem("invalid_option", why))
    nodes = check_nodes(builder, problems)
    names = list(nodes)
    checker = EdgeChecker(names, problems)
    edges = check_edges(builder.edges, checker)
    joins = check_joins(builder.joins, checker)
    branches = check_branches(builder.branches, checker)
    for node in nodes.values():
        check_destinations(node.name, node.destinations, checker)
        if node.on_error == "capture" and is_state_model(builder.state_schema):
            problems += check_error_field(builder.state_schema, node)
    before = check_interrupts(interrupt_before, "interrupt_before", checker)
    after = check_interrupts(interrupt_after, "interrupt_after", checker)
    problems += check_structure(checker.digraph, names)
    if problems:
        raise GraphValidationError(problems)

    assert is_state_model(builder.state_schema)
    by_source: dict[str, list[Join]] = {}
    for join in joins:
        for s in join.sources:
            by_source.setdefault(s, []).append(join)
    return GraphSpec(
        schema=StateSchema(builder.state_schema, builder.migrations),
        nodes=nodes,
        order={n: i for i, n in enumerate(names)},
        edges={k: tuple(v) for k, v in edges.items()},
        branches={k: tuple(v) for k, v in branches.items()},
        joins=tuple(joins),
        joins_by_source={k: tuple(v) for k, v in by_source.items()},
        interrupt_before=frozenset(before),
        interrupt_after=frozenset(after),
        digraph=checker.digraph,
        retry=retry,
        max_concurrency=max_concurrency,
        on_failure=on_failure,
        check_mutation=check_mutation,
        context=None if context_schema is None else ContextSchema(context_schema),
    )


def _check_compile_options(retry: object, max_concurrency: object, on_failure: object
                           ) -> list[Problem]:
    problems = []
    if retry is not None and not isinstance(retry, RetryPolicy):
        problems.append(Problem("invalid_option", f"compile(retry=...) must be a RetryPolicy, "
                                f"got {retry!r}."))
    if max_concurrency is not None and (not isinstance(max_concurrency, int)
                                        or max_concurrency < 1):
        problems.append(Problem("invalid_option", "compile(max_concurrency=...) must be a "
                                f"positive integer, got {max_concurrency!r}."))
    if on_failure not in ("raise", "compensate"):
        problems.append(Problem("invalid_option", "compile(on_failure=...) must be 'raise' or "
                                f"'compensate', got {on_failure!r}."))
    return problems


def _check_migrations(builder: StateGraph) -> list[Problem]:
    """Each migration names a stored field the model no longer has, once; a rename leads to a
    field it has."""
    problems: list[Problem] = []
    model = builder.state_schema
    if not is_state_model(model):  # the schema's own problem says what is wrong
        return problems
    fields = set(model.model_fields)
    seen: set[str] = set()
    for migration in getattr(builder, "migrations", ()):
        if not isinstance(migration, (Rename, Drop)):
            problems.append(Problem("invalid_migration", f"migrations=[...] holds {migration!r}, "
                                    "which is not a Rename or a Drop."))
            continue
        old = migration.old if isinstance(migration, Rename) else migration.field
        if old in fields:
            problems.append(Problem(
                "invalid_migration", f"{migration!r} names stored field {old!r}, but "
                f"{model.__name__} still has a field {old!r}: a migration is for fields the "
                "model no longer has."))
        if old in seen:
            problems.append(Problem("invalid_migration", f"stored field {old!r} has more than "
                                    "one migration."))
        seen.add(old)
        if isinstance(migration, Rename) and migration.new not in fields:
            problems.append(Problem(
                "invalid_migration", f"{migration!r} renames to {migration.new!r}, which is not "
                f"a field of {model.__name__}{did_you_mean(migration.new, sorted(fields))}."))
        if isinstance(migration, Rename) and migration.convert is not None \
                and not callable(migration.convert):
            problems.append(Problem("invalid_migration", f"{migration!r}: convert must be "
                                    "callable."))
    return problems


def _check_schema(schema: type) -> list[Problem]:
    if not is_state_model(schema):
        return [Problem(
            "schema_not_model",
            f"the state schema must be a pydantic model class, got {schema!r}.",
            hint="declare `class State(pydantic.BaseModel): ...` and pass `StateGraph(State)`.")]
    return [*reducer_problems(schema),
            *(secret_problem(f"field {path!r} of {schema.__name__}", kind)
              for path, kind in model_secret_paths(schema))]
