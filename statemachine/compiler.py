"""The compiler: checks a `StateGraph` with networkx and freezes it into a `GraphSpec`.

Every problem is collected before anything is raised, so a user fixes them all in one pass.
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

import hashlib
import inspect
import typing
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx
from pydantic import TypeAdapter

from .constants import END, START
from .errors import GraphValidationError, Problem, closest_name, did_you_mean
from .policies import CachePolicy, RetryPolicy
from .secret_types import model_secret_paths, secret_paths
from .spec import Branch, CallableInfo, GraphSpec, Join, NodeSpec, Subgraph
from .state import StateSchema, is_state_model, reducer_problems
from .state import looks_like_reducer as _is_reducer

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer

    from .compiled import CompiledGraph
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


class RouterWithoutPathMapWarning(UserWarning):
    """A router has neither a path map nor a Literal return annotation."""


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
) -> CompiledGraph:
    spec = build_spec(builder, interrupt_before=interrupt_before, interrupt_after=interrupt_after,
                      retry=retry, max_concurrency=max_concurrency, on_failure=on_failure,
                      has_checkpointer=checkpointer is not None)
    from .compiled import CompiledGraph

    return CompiledGraph(spec, checkpointer=checkpointer, name=name)


def build_spec(
    builder: StateGraph,
    *,
    interrupt_before: Sequence[str] | str = (),
    interrupt_after: Sequence[str] | str = (),
    retry: RetryPolicy | None = None,
    max_concurrency: int | None = None,
    on_failure: str = "raise",
    has_checkpointer: bool = True,
) -> GraphSpec:
    """Check every declaration of `builder`; return the frozen graph or raise with all problems."""
    problems: list[Problem] = []
    problems += _check_compile_options(retry, max_concurrency, on_failure)
    if on_failure == "compensate" and not has_checkpointer:
        problems.append(Problem(
            "invalid_option", "compile(on_failure='compensate') needs a checkpointer: the "
            "rollback reads which nodes completed from the thread's checkpoints and commits "
            "each compensation.", hint="compile(checkpointer=SQLiteCheckpointer('runs.db'), "
            "on_failure='compensate')."))
    schema = None
    if not is_state_model(builder.state_schema):
        problems.append(Problem(
            "schema_not_model",
            f"the state schema must be a pydantic model class, got {builder.state_schema!r}.",
            hint="declare `class State(pydantic.BaseModel): ...` and pass `StateGraph(State)`."))
    else:
        problems += reducer_problems(builder.state_schema)
        problems += [_secret_problem(f"field {path!r} of {builder.state_schema.__name__}", kind)
                     for path, kind in model_secret_paths(builder.state_schema)]

    nodes = _check_nodes(builder, problems)
    names = list(nodes)
    known = set(names)

    def check_name(ref: object, where: str, *, allow_start: bool = False,
                   allow_end: bool = False) -> bool:
        if not isinstance(ref, str):
            problems.append(Problem(
                "invalid_edge", f"{where} must name one node (text), got {ref!r}.",
                hint="to run several nodes after one, add an edge to each of them, or use a "
                "join: add_edge([a, b], c)." if isinstance(ref, (list, tuple, set)) else None))
            return False
        if (ref == START and allow_start) or (ref == END and allow_end):
            return True
        if ref in (START, END):
            problems.append(Problem(
                "invalid_edge", f"{where} uses {ref!r}, which is not allowed there.",
                hint="edges go out of START and into END, never the other way."))
            return False
        if ref not in known:
            suggestion = closest_name(ref, names)
            problems.append(Problem(
                "unknown_node", f"{where} names unknown node {ref!r}{did_you_mean(ref, names)}.",
                nodes=(str(ref),),
                hint=f"use {suggestion!r}." if suggestion else
                f"add it with add_node({ref!r}, fn) or use one of: {', '.join(names) or 'none'}."))
            return False
        return True

    digraph = nx.DiGraph()
    digraph.add_node(START, kind="start")
    digraph.add_node(END, kind="end")
    for node_name in names:
        digraph.add_node(node_name, kind="node")

    def add_nx_edge(src: str, dst: str, kind: str, label: str | None = None) -> None:
        if digraph.has_edge(src, dst):
            data = digraph.edges[src, dst]
            if label:
                data["labels"] = (*data.get("labels", ()), label)
            if kind == "conditional" or data["kind"] == "conditional":
                data["kind"] = "conditional"
            return
        digraph.add_edge(src, dst, kind=kind, labels=(label,) if label else ())

    edges: dict[str, list[str]] = {}
    for src, dst in builder.edges:
        ok_src = check_name(src, f"add_edge({src!r}, {dst!r}) source", allow_start=True)
        ok_dst = check_name(dst, f"add_edge({src!r}, {dst!r}) target", allow_end=True)
        if ok_src and ok_dst:
            edges.setdefault(src, [])
            if dst not in edges[src]:
                edges[src].append(dst)
            add_nx_edge(src, dst, "fixed")

    joins: list[Join] = []
    for sources, dst in builder.joins:
        where = f"add_edge({list(sources)!r}, {dst!r})"
        if not sources:
            problems.append(Problem("invalid_edge", f"{where} joins no sources.",
                                    hint="list at least one source node."))
            continue
        ok = all([check_name(s, f"{where} source") for s in sources])
        ok = check_name(dst, f"{where} target", allow_end=True) and ok
        if ok:
            joins.append(Join(len(joins), tuple(dict.fromkeys(sources)), dst))
            for s in sources:
                add_nx_edge(s, dst, "join")

    branches: dict[str, list[Branch]] = {}
    for decl in builder.branches:
        branch = _check_branch(decl, names, check_name, problems)
        if branch is None:
            continue
        branches.setdefault(branch.source, []).append(branch)
        if branch.mapping is not None:
            for key, target in branch.mapping.items():
                add_nx_edge(branch.source, target, "conditional", str(key))
        else:
            for target in branch.allowed if branch.allowed is not None else (*names, END):
                add_nx_edge(branch.source, target, "conditional")

    for spec_node in nodes.values():
        for target in spec_node.destinations:
            if check_name(target, f"the destinations of node {spec_node.name!r}",
                          allow_end=True):
                add_nx_edge(spec_node.name, target, "command")
        if spec_node.on_error == "capture" and is_state_model(builder.state_schema):
            problems += _check_error_field(builder.state_schema, spec_node)

    before = _check_interrupts(interrupt_before, "interrupt_before", names, check_name)
    after = _check_interrupts(interrupt_after, "interrupt_after", names, check_name)

    _check_structure(digraph, names, problems)
    if problems:
        raise GraphValidationError(problems)

    assert is_state_model(builder.state_schema)
    schema = StateSchema(builder.state_schema)
    by_source: dict[str, list[Join]] = {}
    for join in joins:
        for s in join.sources:
            by_source.setdefault(s, []).append(join)
    return GraphSpec(
        schema=schema,
        nodes=nodes,
        order={n: i for i, n in enumerate(names)},
        edges={k: tuple(v) for k, v in edges.items()},
        branches={k: tuple(v) for k, v in branches.items()},
        joins=tuple(joins),
        joins_by_source={k: tuple(v) for k, v in by_source.items()},
        interrupt_before=frozenset(before),
        interrupt_after=frozenset(after),
        digraph=digraph,
        retry=retry,
        max_concurrency=max_concurrency,
        on_failure=on_failure,
    )


def inspect_callable(fn: Callable[..., Any], name: str) -> CallableInfo | str:
    """How to call `fn` with the state (and a context), or why it cannot be."""
    call = type(fn).__call__ if callable(fn) and not inspect.isroutine(fn) else None
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return CallableInfo(fn, name, is_async, wants_context=False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if not positional and not varargs:
        return "it takes no positional parameter, so it cannot receive the state"
    if len(required) > 2:
        return (f"it requires {len(required)} positional parameters "
                f"({', '.join(p.name for p in required)}); it gets the state and, "
                "optionally, a run context")
    if required_kw:
        return f"it requires keyword-only parameter(s) {', '.join(required_kw)}, never passed"
    return CallableInfo(fn, name, is_async, wants_context=len(required) == 2)


def _check_nodes(builder: StateGraph, problems: list[Problem]) -> dict[str, NodeSpec]:
    nodes: dict[str, NodeSpec] = {}
    seen: set[object] = set()
    for decl in builder.node_declarations:
        name = decl.name
        if not isinstance(name, str) or not name or name in (START, END):
            problems.append(Problem(
                "reserved_name", f"{name!r} cannot be a node name" +
                (" (it is reserved)." if name in (START, END) else "; names are non-empty text."),
                hint="give the node a name of its own: add_node('name', fn)."))
            continue
        if name in seen:
            problems.append(Problem(
                "duplicate_node", f"node {name!r} is added more than once.", nodes=(name,),
                hint="give each node its own name."))
            continue
        seen.add(name)
        if _is_compiled_graph(decl.fn):
            nodes[name] = _check_subgraph(builder, decl, name, problems)
            continue
        if not callable(decl.fn):
            problems.append(Problem(
                "node_not_callable", f"node {name!r} is {decl.fn!r}, which is not callable.",
                nodes=(name,), hint="pass a function: add_node(name, fn)."))
            nodes[name] = NodeSpec(name, CallableInfo(decl.fn, name, False, False))
            continue
        info = inspect_callable(decl.fn, name)
        if isinstance(info, str):
            problems.append(Problem(
                "bad_signature", f"node {name!r} cannot be called with the state: {info}.",
                nodes=(name,), hint="write it as `def node(state)` or `def node(state, context)`."))
            info = CallableInfo(decl.fn, name, False, False)
        annotation = _payload_annotation(decl.fn)
        if annotation is not None and annotation is not builder.state_schema:
            problems += [_secret_problem(f"the Send payload of node {name!r} (its parameter's "
                                         f"type, at {path!r})", kind, nodes=(name,))
                         for path, kind in secret_paths(annotation, "payload")]
        nodes[name] = NodeSpec(name, info, **_check_node_options(decl, name, problems),
                               payload_type=_payload_type(annotation),
                               code_fingerprint=_fingerprint(decl.fn))
    return nodes


def _secret_problem(where: str, kind: str, nodes: tuple[str, ...] = ()) -> Problem:
    return Problem(
        "secret_field", f"{where} is {kind}: checkpoints store it as '**********', so after a "
        "pause, a resume or in a worker the node would read the mask, not the secret.",
        nodes=nodes, hint="checkpoints are stored in plain text in SQLite/PostgreSQL and shown "
        "by the CLI and the viewer, so a secret belongs in the environment or a secret manager "
        "read by the node, or in run-time configuration passed to the node, not in durable "
        "state.")


def _payload_annotation(fn: Callable[..., Any]) -> Any:
    """The annotation of the node's first parameter (what a Send's payload is validated
    into), or None."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    if not params or params[0].name not in hints or hints[params[0].name] is Any:
        return None
    return hints[params[0].name]


def _payload_type(annotation: Any) -> TypeAdapter[Any] | None:
    """A TypeAdapter of a Send payload's annotation."""
    if annotation is None:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:
        return None


def _fingerprint(fn: Callable[..., Any]) -> str:
    """Stable across processes for the same code and captured constants, different otherwise:
    module, name, bytecode, constants, and the plain values (text, numbers, tuples) and
    functions among its default arguments and closure cells."""
    return hashlib.sha256(_describe(fn, depth=0).encode()).hexdigest()[:16]


def _describe(value: object, depth: int) -> str:
    if isinstance(value, (str, int, float, bytes, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, frozenset)) and depth < 3:
        return "(" + ",".join(_describe(v, depth + 1) for v in value) + ")"
    fn = value if callable(value) else None
    code = getattr(fn, "__code__", None)
    if code is None and fn is not None and not isinstance(fn, type):
        code = getattr(type(fn).__call__, "__code__", None)
    if code is None or depth >= 3:
        # a mutable or opaque object (a client, a counter): its type, not its changing value
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    consts = [c for c in code.co_consts if isinstance(c, (str, int, float, bytes, tuple))]
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
             if _has_contents(c)]
    defaults = getattr(fn, "__defaults__", None) or ()
    return "|".join([name, code.co_code.hex(), repr(code.co_names), repr(consts),
                     _describe(tuple(defaults), depth + 1), _describe(tuple(cells), depth + 1)])


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _is_compiled_graph(obj: object) -> bool:
    from .compiled import CompiledGraph

    return isinstance(obj, CompiledGraph)


def _check_subgraph(builder: StateGraph, decl: Any, name: str,
                    problems: list[Problem]) -> NodeSpec:
    child = decl.fn
    mapped = decl.subgraph_input is not None or decl.subgraph_output is not None
    if not mapped and child.state_schema is not builder.state_schema:
        problems.append(Problem(
            "subgraph_schema", f"subgraph node {name!r} has state {child.state_schema.__name__}"
            f", not {getattr(builder.state_schema, '__name__', builder.state_schema)}.",
            nodes=(name,), hint="pass add_node(name, subgraph, input=parent_state -> child "
            "input, output=child_final_state -> parent update)."))
    elif mapped and not (callable(decl.subgraph_input) and callable(decl.subgraph_output)):
        problems.append(Problem(
            "subgraph_schema", f"subgraph node {name!r} needs both input= and output= mapping "
            "functions (or neither, for a subgraph with the parent's schema).", nodes=(name,)))

    options = _check_node_options(decl, name, problems)
    options["subgraph"] = Subgraph(child, decl.subgraph_input, decl.subgraph_output)
    # the executor runs a subgraph node itself (as a child thread, durably); `call` is what
    # running it plainly means, for tools that call nodes one by one
    return NodeSpec(name, CallableInfo(child.ainvoke, name, True, False), **options)


def _check_node_options(decl: Any, name: str, problems: list[Problem]) -> dict[str, Any]:
    def bad(option: str, expected: str, value: object) -> None:
        problems.append(Problem(
            "invalid_option", f"node {name!r}: {option} must be {expected}, got {value!r}.",
            nodes=(name,)))

    options: dict[str, Any] = {"destinations": decl.destinations}
    if decl.retry is not None and not isinstance(decl.retry, RetryPolicy):
        bad("retry", "a RetryPolicy", decl.retry)
    else:
        options["retry"] = decl.retry
    if decl.timeout is not None and (isinstance(decl.timeout, bool) or not isinstance(
            decl.timeout, (int, float)) or decl.timeout <= 0):
        bad("timeout", "a positive number of seconds", decl.timeout)
    else:
        options["timeout"] = decl.timeout
    if decl.cache is not None and not isinstance(decl.cache, CachePolicy):
        bad("cache", "a CachePolicy", decl.cache)
    else:
        options["cache"] = decl.cache
    if decl.on_error not in ("raise", "capture"):
        bad("on_error", "'raise' or 'capture'", decl.on_error)
    else:
        options["on_error"] = decl.on_error
    options["error_field"] = decl.error_field
    if decl.compensate is not None:
        info = inspect_callable(decl.compensate, f"compensate of {name}") \
            if callable(decl.compensate) else "it is not callable"
        if isinstance(info, str):
            problems.append(Problem(
                "bad_signature", f"the compensation of node {name!r} cannot be called with the "
                f"state: {info}.", nodes=(name,), hint="write it as `def undo(state)`."))
        else:
            options["compensate"] = info
    return options


def _check_error_field(schema: Any, node: NodeSpec) -> list[Problem]:
    field_name = node.error_field
    info = schema.model_fields.get(field_name)
    hint = (f"declare `{field_name}: Annotated[list[NodeFailure], operator.add] = []` on "
            f"{schema.__name__}.")
    if info is None:
        return [Problem("invalid_error_field", f"node {node.name!r} captures its errors into "
                        f"field {field_name!r}, which {schema.__name__} does not have.",
                        nodes=(node.name,), hint=hint)]
    if not any(_is_reducer(m) for m in info.metadata):
        return [Problem("invalid_error_field", f"node {node.name!r} captures its errors into "
                        f"field {field_name!r}, which has no reducer, so parallel failures "
                        "would overwrite each other.", nodes=(node.name,), hint=hint)]
    return []


def _check_compile_options(retry: object, max_concurrency: object,
                           on_failure: object) -> list[Problem]:
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


def _check_branch(decl: Any, names: list[str], check_name: Callable[..., bool],
                  problems: list[Problem]) -> Branch | None:
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
        literal = _literal_targets(decl.router)
        if literal is not None:
            checked = [check_name(t, f"the Literal return type of {router_name!r}",
                                  allow_end=True) for t in literal]
            ok = ok and all(checked)
            allowed = frozenset(literal)
        else:
            warnings.warn(
                f"router {router_name!r} of {source!r} has no path map and no Literal return "
                "annotation, so it is assumed to reach any node or END; a path map makes "
                "validation and diagrams exact.", RouterWithoutPathMapWarning, stacklevel=5)
    if not ok:
        return None
    return Branch(source, info, mapping, allowed)


def _literal_targets(router: Callable[..., Any]) -> tuple[str, ...] | None:
    try:
        hints = typing.get_type_hints(router)
    except Exception:
        return None
    annotation = hints.get("return")
    if annotation is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence, set, frozenset):
        args = typing.get_args(annotation)
        annotation = args[0] if args else None
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, str) for v in values):
            return values
    return None


def _check_interrupts(value: Sequence[str] | str, option: str, names: list[str],
                      check_name: Callable[..., bool]) -> list[str]:
    if value == "*":
        return list(names)
    if isinstance(value, str):
        value = [value]
    return [n for n in value if check_name(n, option)]


def _check_structure(digraph: nx.DiGraph, names: list[str], problems: list[Problem]) -> None:
    if not any(True for _ in digraph.successors(START)):
        problems.append(Problem(
            "no_entry", "nothing leaves START, so no node would ever run.",
            hint=f"add add_edge(START, {names[0]!r})." if names else "add a node and an edge "
            "from START to it."))
        return
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
