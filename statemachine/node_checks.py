"""The compiler's checks of node declarations: names, signatures, options, subgraphs, the
error field of nodes that capture their failures, and secrets in Send payload types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callables import code_fingerprint, inspect_callable, payload_annotation, payload_type
from .compiled import CompiledGraph
from .constants import END, START
from .errors import Problem
from .policies import CachePolicy, RetryPolicy
from .secret_types import secret_paths
from .spec import CallableInfo, NodeSpec, Subgraph
from .state import looks_like_reducer

if TYPE_CHECKING:
    from .graph import NodeDeclaration, StateGraph


def check_nodes(builder: StateGraph, problems: list[Problem]) -> dict[str, NodeSpec]:
    """A spec of every node that has a usable name; the problems found go to `problems`."""
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
        if isinstance(decl.fn, CompiledGraph):
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
        annotation = payload_annotation(decl.fn)
        if annotation is not None and annotation is not builder.state_schema:
            problems += [secret_problem(f"the Send payload of node {name!r} (its parameter's "
                                        f"type, at {path!r})", kind, nodes=(name,))
                         for path, kind in secret_paths(annotation, "payload")]
        nodes[name] = NodeSpec(name, info, **_check_node_options(decl, name, problems),
                               payload_type=payload_type(annotation),
                               code_fingerprint=code_fingerprint(decl.fn))
    return nodes


def check_error_field(schema: Any, node: NodeSpec) -> list[Problem]:
    """A node with on_error="capture" needs its error field on the state, with a reducer."""
    field_name = node.error_field
    info = schema.model_fields.get(field_name)
    hint = (f"declare `{field_name}: Annotated[list[NodeFailure], operator.add] = []` on "
            f"{schema.__name__}.")
    if info is None:
        return [Problem("invalid_error_field", f"node {node.name!r} captures its errors into "
                        f"field {field_name!r}, which {schema.__name__} does not have.",
                        nodes=(node.name,), hint=hint)]
    if not any(looks_like_reducer(m) for m in info.metadata):
        return [Problem("invalid_error_field", f"node {node.name!r} captures its errors into "
                        f"field {field_name!r}, which has no reducer, so parallel failures "
                        "would overwrite each other.", nodes=(node.name,), hint=hint)]
    return []


def secret_problem(where: str, kind: str, nodes: tuple[str, ...] = ()) -> Problem:
    """A state field or Send payload type holds a pydantic secret, which checkpoints mask."""
    return Problem(
        "secret_field", f"{where} is {kind}: checkpoints store it as '**********', so after a "
        "pause, a resume or in a worker the node would read the mask, not the secret.",
        nodes=nodes, hint="checkpoints are stored in plain text in SQLite/PostgreSQL and shown "
        "by the CLI and the viewer, so a secret belongs in the environment or a secret manager "
        "read by the node, or in run-time configuration passed to the node, not in durable "
        "state.")


def _check_subgraph(builder: StateGraph, decl: NodeDeclaration, name: str,
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


def _check_node_options(decl: NodeDeclaration, name: str,
                        problems: list[Problem]) -> dict[str, Any]:
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
    if decl.runner not in (None, "local"):
        bad("runner", "'local' (to keep the node in the driver) or None", decl.runner)
    else:
        options["local"] = decl.runner == "local"
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
