"""Mermaid flowchart output: paste it into Markdown (GitHub, docs) to get the diagram."""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from .diagram import MARKERS, Diagram, Node, build


def to_mermaid(app: Any, *, thread_id: str | None = None, xray: bool = False) -> str:
    """The graph as a Mermaid flowchart; with `thread_id`, that thread's run is highlighted."""
    return _flowchart(build(app, thread_id=thread_id, xray=xray))


def _flowchart(diagram: Diagram) -> str:
    lines = ["---", f"title: {_yaml_string(diagram.title)}", "---", "flowchart TD"]
    _body(diagram, lines, "    ", itertools.count())
    lines += [
        "    classDef visited fill:#e5f5e0,stroke:#2ca02c",
        "    classDef next stroke:#1f77b4,stroke-width:3px",
        "    classDef failed fill:#fde0dd,stroke:#d62728,color:#d62728,stroke-width:3px",
        "    classDef terminal fill:#222,color:#fff",
    ]
    return "\n".join(lines) + "\n"


def _body(diagram: Diagram, lines: list[str], indent: str, links: Iterator[int]) -> None:
    """Mermaid numbers links in the order they are written, clusters included: `links`
    carries that count across nested calls, so linkStyle picks the right ones."""
    expanded = {c.id: c for c in diagram.clusters}
    for node in diagram.nodes:
        if node.id not in expanded:
            lines.append(indent + _node(node))
    for cluster in diagram.clusters:
        label = _escape(f"subgraph {cluster.label}")
        lines.append(f"{indent}subgraph {_id(cluster.id)} [\"{label}\"]")
        _body(cluster.diagram, lines, indent + "    ", links)
        lines.append(f"{indent}end")
    taken = []
    for edge in diagram.edges:
        index = next(links)
        arrow = {"conditional": "-.->", "command": "-.->", "join": "==>"}.get(edge.kind, "-->")
        label = ", ".join(edge.labels)
        if edge.taken > 1:
            label = f"{label} ×{edge.taken}".strip()
        text = f"|{_escape(label)}|" if label else ""
        lines.append(f"{indent}{_id(edge.source)} {arrow}{text} {_id(edge.target)}")
        if edge.taken:
            taken.append(index)
    if taken:
        lines.append(f"{indent}linkStyle {','.join(map(str, taken))} "
                     "stroke:#2ca02c,stroke-width:3px")
    for node in diagram.nodes:
        classes = [c for c, on in (("visited", node.visits), ("next", node.next),
                                   ("failed", node.failed)) if on]
        if node.kind in ("start", "end"):
            classes.append("terminal")
        if classes:
            lines.append(f"{indent}class {_id(node.id)} {','.join(classes)}")


def _node(node: Node) -> str:
    if node.kind == "start":
        return f"{_id(node.id)}((START))"
    if node.kind == "end":
        return f"{_id(node.id)}(((END)))"
    if node.kind == "join":
        return f"{_id(node.id)}{{{{\"all of\"}}}}"
    label = node.label + "".join(f" {MARKERS[m]}" for m in node.markers)
    if node.visits:
        label += f" ×{node.visits}"
    if node.kind == "subgraph":
        return f"{_id(node.id)}[[\"{_escape(label)}\"]]"
    return f"{_id(node.id)}[\"{_escape(label)}\"]"


def _id(name: str) -> str:
    """A Mermaid-safe id; every character but letters and digits is escaped (underscore too),
    so different names never share an id."""
    return "n_" + re.sub(r"[^0-9A-Za-z]", lambda m: f"_{ord(m.group()):x}_", name)


_PLAIN = re.compile(r"[0-9A-Za-z _.,:/!?+=*@'-]")


def _escape(text: str) -> str:
    """`text` for a quoted Mermaid label, shown literally: Mermaid renders labels as HTML and
    reads quotes, brackets, pipes, `#...;` entities and line breaks as syntax, so every
    character but plain ones is written as its entity `#<code>;`."""
    return "".join(c if _PLAIN.match(c) or (not c.isascii() and _printable(c))
                   else f"#{ord(c)};" for c in text)


def _printable(char: str) -> bool:
    return unicodedata.category(char)[0] != "C" and unicodedata.category(char) not in (
        "Zl", "Zp")


def _yaml_string(text: str) -> str:
    """`text` as a YAML double-quoted string on one line (JSON is YAML): a line break in a
    thread id must not end the front matter and start diagram statements."""
    return "".join(c if (c.isascii() and c != "\x7f") or _printable(c) else json.dumps(c)[1:-1]
                   for c in json.dumps(text, ensure_ascii=False))
