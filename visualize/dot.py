"""Graphviz DOT output (built with the `graphviz` package) and rendering to SVG/PNG/PDF."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import graphviz

from statemachine.errors import StateMachineError

from .diagram import MARKERS, Cluster, Diagram, Edge, Node, build

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
_FAILED, _VISITED, _NEXT = "#d62728", "#2ca02c", "#1f77b4"
# shown as \xNN / \uNNNN: no XML 1.0 document may hold them (nor can UTF-8 encode surrogates)
_UNSHOWABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


class GraphvizNotFoundError(StateMachineError):
    """Rendering to SVG/PNG/PDF needs Graphviz's `dot` program, which is not installed."""


def to_dot(app: Any, *, thread_id: str | None = None, xray: bool = False) -> str:
    """The graph as Graphviz DOT source; with `thread_id`, that thread's run is highlighted.

    Needs no `dot` program. The same graph always gives the same text.
    """
    return _digraph(build(app, thread_id=thread_id, xray=xray)).source


def render(app: Any, path: str | Path, *, thread_id: str | None = None,
           xray: bool = False) -> Path:
    """Write the diagram to `path` as SVG, PNG or PDF (by its extension); returns the path."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot render {path.name!r}: use a .svg, .png or .pdf file name "
                         "(or to_dot / to_mermaid for text).")
    data = render_bytes(app, fmt, thread_id=thread_id, xray=xray)
    path.write_bytes(data)
    return path


def render_bytes(app: Any, fmt: str, *, thread_id: str | None = None,
                 xray: bool = False) -> bytes:
    graph = _digraph(build(app, thread_id=thread_id, xray=xray))
    try:
        return graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise GraphvizNotFoundError(
            "rendering to SVG/PNG/PDF needs Graphviz's `dot` program, which was not found on "
            "PATH. Install it (Debian/Ubuntu: `apt-get install graphviz`; macOS: "
            "`brew install graphviz`; Windows: `winget install graphviz`), or use to_dot() / "
            "to_mermaid(), which need nothing.") from exc


def dot_text(text: str) -> str:
    """`text` as a DOT label or id that Graphviz shows literally, whatever it holds.

    Names, thread ids and stored errors reach labels, tooltips and ids: unescaped, a quote
    or a trailing backslash ends the string early (the rest becomes attributes, such as
    URL="javascript:..."), `<...>` would be an HTML-like label, `\\N`, `\\G`, `\\l` are
    Graphviz escapes, and `&lt;` an entity Graphviz decodes. All are escaped here.
    """
    return _escaped(text, backslash="\\\\", newline="\\n")


def dot_id(text: str) -> str:
    """`text` as a DOT `id` (the SVG element's id) kept literally: as a label, but a line
    break is spelled `\\x0a` (an id cannot hold one: Graphviz writes it raw, XML reads a
    space)."""
    return _escaped(text, backslash="\\\\", newline="\\\\x0a")


def dot_tooltip(text: str) -> str:
    """`text` as a DOT tooltip shown literally: Graphviz unescapes a tooltip's backslashes
    twice (and takes `\\n` literally), so a backslash is written four times, a line break
    as itself."""
    return _escaped(text, backslash="\\" * 4, newline="\n")


def _escaped(text: str, *, backslash: str, newline: str) -> str:
    text = _UNSHOWABLE.sub(lambda m: _visible(m.group()), text)
    text = text.replace("\\", backslash).replace('"', '\\"').replace("&", "&amp;")
    return graphviz.nohtml(text.replace("\n", newline))


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _digraph(diagram: Diagram) -> graphviz.Digraph:
    graph = graphviz.Digraph(name=dot_text(diagram.name))
    graph.attr(rankdir="TB", label=dot_text(diagram.title), labelloc="t", fontname="Helvetica",
               fontsize="14")
    graph.attr("node", fontname="Helvetica", fontsize="11")
    graph.attr("edge", fontname="Helvetica", fontsize="9")
    _fill(graph, diagram)
    return graph


class _Ids:
    """DOT ids n0, n1, ... in drawing order: node names may hold ':' (a port in DOT). The
    name itself becomes the element's `id` in SVG output, where tests and tools find it."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        return self._ids.setdefault(name, f"n{len(self._ids)}")


def _fill(graph: graphviz.Digraph, diagram: Diagram, ids: _Ids | None = None) -> None:
    ids = ids or _Ids()
    expanded = {c.id: c for c in diagram.clusters}
    for node in diagram.nodes:
        if node.id in expanded:
            continue
        graph.node(ids(node.id), id=dot_id(node.id), **_node_attrs(node))
    for cluster in diagram.clusters:
        _cluster(graph, cluster, ids)
    for edge in diagram.edges:
        source = f"{edge.source}/__end__" if edge.source in expanded else edge.source
        target = f"{edge.target}/__start__" if edge.target in expanded else edge.target
        graph.edge(ids(source), ids(target), id=dot_id(f"{source}->{target}"),
                   **_edge_attrs(edge))


def _cluster(graph: graphviz.Digraph, cluster: Cluster, ids: _Ids) -> None:
    with graph.subgraph(name=f"cluster_{ids(cluster.id)}") as sub:
        sub.attr(label=dot_text(f"subgraph {cluster.label}"), style="rounded,dashed",
                 color="#7f7f7f")
        _fill(sub, cluster.diagram, ids)


def _node_attrs(node: Node) -> dict[str, str]:
    """The node's attributes; its label and tooltip are raw text, escaped on return."""
    attrs: dict[str, str] = {"label": node.label}
    if node.kind == "start":
        attrs.update(shape="circle", style="filled", fillcolor="#222222", fontcolor="white",
                     width="0.5", fixedsize="true")
    elif node.kind == "end":
        attrs.update(shape="doublecircle", style="filled", fillcolor="#222222",
                     fontcolor="white", width="0.45", fixedsize="true")
    elif node.kind == "join":
        attrs.update(shape="box", style="filled", fillcolor="#eeeeee", fontsize="9",
                     height="0.2", tooltip="waits for all of its sources")
    else:
        symbols = "".join(MARKERS[m] for m in node.markers)
        label = f"{node.label} {symbols}" if symbols else node.label
        if node.visits:
            label += f" ×{node.visits}"
        attrs.update(label=label, shape="box3d" if node.kind == "subgraph" else "box",
                     style="rounded,filled", fillcolor="#ffffff")
        if node.markers:
            attrs["tooltip"] = ", ".join(m.replace("_", " ") for m in node.markers)
        if node.visits:
            attrs.update(fillcolor="#e5f5e0", color=_VISITED)
        if node.next:
            attrs.update(color=_NEXT, penwidth="2.5")
        if node.failed:
            attrs.update(fillcolor="#fde0dd", color=_FAILED, fontcolor=_FAILED, penwidth="2.5")
            if node.error:
                attrs["tooltip"] = node.error
    attrs["class"] = " ".join(_classes(node))
    return {**attrs, "label": dot_text(attrs["label"]),
            **({"tooltip": dot_tooltip(attrs["tooltip"])} if "tooltip" in attrs else {})}


def _classes(node: Node) -> list[str]:
    classes = [f"kind-{node.kind}", *(f"marker-{m}" for m in node.markers)]
    if node.visits:
        classes.append("visited")
    if node.next:
        classes.append("next")
    if node.failed:
        classes.append("failed")
    return classes


def _edge_attrs(edge: Edge) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if edge.labels:
        attrs["label"] = dot_text(", ".join(edge.labels))
    if edge.kind == "conditional":
        attrs["style"] = "dashed"
    elif edge.kind == "command":
        attrs.update(style="dotted", arrowhead="vee")
    elif edge.kind == "join":
        attrs["arrowhead"] = "empty"
    classes = [f"edge-{edge.kind}"]
    if edge.taken:
        attrs.update(color=_VISITED, penwidth="2")
        classes.append("taken")
        if edge.taken > 1:
            attrs["xlabel"] = f"×{edge.taken}"
    attrs["class"] = " ".join(classes)
    return attrs
