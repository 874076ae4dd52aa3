"""A drawing-neutral description of a compiled graph (and, optionally, of one thread's run).

`to_dot` and `to_mermaid` both render this model, so the two outputs always agree. It reads
the compiled graph and the checkpointer; it never changes either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statemachine.constants import END, START
from statemachine.store_reader import Store, history_rows

MARKERS = {"retry": "↻", "timeout": "⏱", "cache": "⚡", "compensate": "↩",
           "interrupt_before": "⏸", "interrupt_after": "⏸", "capture": "⚠"}


@dataclass
class Node:
    id: str
    label: str
    kind: str  # start | end | node | join | subgraph
    markers: list[str] = field(default_factory=list)
    visits: int = 0
    failed: bool = False
    error: str | None = None
    next: bool = False


@dataclass
class Edge:
    source: str
    target: str
    kind: str  # fixed | conditional | join | command
    labels: tuple[str, ...] = ()
    taken: int = 0


@dataclass
class Cluster:
    """A subgraph node drawn as a box around its own nodes (with `xray`)."""

    id: str
    label: str
    diagram: Diagram


@dataclass
class Diagram:
    name: str
    nodes: list[Node]
    edges: list[Edge]
    clusters: list[Cluster] = field(default_factory=list)
    title: str = ""
    status: str | None = None


def build(app: Any, *, thread_id: str | None = None, xray: bool = False,
          prefix: str = "") -> Diagram:
    """The diagram of `app`; with `thread_id`, what that thread did is marked on it."""
    spec = app.spec
    nodes = [Node(prefix + START, "START", "start"), Node(prefix + END, "END", "end")]
    by_id = {n.id: n for n in nodes}
    clusters: list[Cluster] = []
    for name, node in spec.nodes.items():
        markers = []
        if node.retry is not None or spec.retry is not None:
            markers.append("retry")
        if node.timeout is not None:
            markers.append("timeout")
        if node.cache is not None:
            markers.append("cache")
        if node.compensate is not None:
            markers.append("compensate")
        if node.on_error == "capture":
            markers.append("capture")
        if name in spec.interrupt_before:
            markers.append("interrupt_before")
        if name in spec.interrupt_after:
            markers.append("interrupt_after")
        kind = "node"
        if node.subgraph is not None:
            kind = "subgraph"
            if xray:
                clusters.append(Cluster(prefix + name, name, build(
                    node.subgraph.graph, xray=True, prefix=f"{prefix}{name}/")))
        diagram_node = Node(prefix + name, name, kind, markers)
        nodes.append(diagram_node)
        by_id[diagram_node.id] = diagram_node
    edges: list[Edge] = []
    joined = {(s, join.target) for join in spec.joins for s in join.sources}
    for source, target, data in spec.digraph.edges(data=True):
        if (source, target) in joined and data["kind"] == "join":
            continue
        edges.append(Edge(prefix + source, prefix + target, data["kind"],
                          tuple(data.get("labels", ()))))
    for join in spec.joins:
        junction = Node(f"{prefix}join:{join.index}", "all of", "join")
        nodes.append(junction)
        by_id[junction.id] = junction
        edges += [Edge(prefix + s, junction.id, "join") for s in join.sources]
        edges.append(Edge(junction.id, prefix + join.target, "join"))
    diagram = Diagram(app.name, nodes, edges, clusters, title=app.name)
    if thread_id is not None:
        _mark_run(app, diagram, by_id, thread_id, prefix)
    return diagram


def _stored_run(app: Any, thread_id: str) -> list[dict[str, Any]]:
    """The thread's checkpoints as stored, oldest first: which nodes ran, what was next, the
    status. Read from the records alone; no state is rebuilt."""
    store = Store(app.checkpointer.in_caller_thread()) if app.checkpointer is not None else None
    records = store.records(thread_id) if store is not None else []
    if not records:
        app.history(thread_id)  # raises the error that says why there is nothing to draw
    assert store is not None
    pending = store.pending([r.id for r in records])
    return list(reversed(history_rows(records, pending)))


def _mark_run(app: Any, diagram: Diagram, by_id: dict[str, Node], thread_id: str,
              prefix: str) -> None:
    history = _stored_run(app, thread_id)
    head = history[-1]
    steps = [tuple(row["nodes"]) for row in history if row["kind"] in ("step", "update")]
    for ran in steps:
        for name in ran:
            if prefix + name in by_id:
                by_id[prefix + name].visits += 1
    edge_index = {(e.source, e.target): e for e in diagram.edges}
    junctions = {e.source: e for e in diagram.edges if e.kind == "join" and
                 by_id.get(e.source) is not None and by_id[e.source].kind == "join"}
    last = tuple(head["next"])
    if head["status"] == "failed" and head["pending_writes"]:  # finished before the failure
        last = (*head["pending_writes"], *head["next"])
        for name in head["pending_writes"]:
            if prefix + name in by_id:
                by_id[prefix + name].visits += 1
    previous: tuple[str, ...] = (START,)
    for ran in [*steps, *([last] if last else [])]:
        for a in previous:
            for b in ran:
                edge = edge_index.get((prefix + a, prefix + b))
                if edge is not None:
                    edge.taken += 1
                else:  # through a join's junction
                    for junction, out in junctions.items():
                        if out.target == prefix + b and (prefix + a, junction) in edge_index:
                            edge_index[(prefix + a, junction)].taken += 1
                            out.taken = max(out.taken, 1)
        previous = ran
    if head["status"] == "done" or (head["status"] == "compensated"):
        end_edges = [e for e in diagram.edges if e.target == prefix + END and
                     e.source.removeprefix(prefix) in previous]
        for edge in end_edges:
            edge.taken += 1
    for name in head["next"]:
        node = by_id.get(prefix + name)
        if node is None:
            continue
        node.next = True
        if head["status"] == "failed":
            node.failed, node.error = True, head["error"]
    if head["status"] == "failed" and not head["next"]:  # its router failed after it finished
        for name in head["pending_writes"]:
            if prefix + name in by_id:
                by_id[prefix + name].failed, by_id[prefix + name].error = True, head["error"]
    diagram.status = head["status"]
    status, step = head["status"], head["step"]
    diagram.title = f"{app.name} — thread {thread_id}: {status} at step {step}"
