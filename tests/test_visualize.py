"""Diagrams: `visualize.to_dot`, `to_mermaid`, `render` and the Jupyter repr of compiled graphs.

The outputs are parsed, not compared to golden files: DOT node and edge statements with their
attributes, Mermaid node and edge lines, SVG as XML. Every example graph is drawn; small graphs
from tests/cli_graphs.py cover runs (visited, taken, failed), subgraphs and options.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import cli_graphs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import visualize
from checkpoints import MemoryCheckpointer
from statemachine import (
    END,
    START,
    CachePolicy,
    Command,
    CompiledGraph,
    RetryPolicy,
    StateGraph,
)

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"
RED, GREEN = "#d62728", "#2ca02c"


# -- the example graphs ----------------------------------------------------------------------------

def _load(path: Path) -> ModuleType:
    """Import an example as `python examples/<name>.py` would: its folder importable."""
    spec = importlib.util.spec_from_file_location(f"visualize_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _example_graphs() -> dict[str, CompiledGraph]:
    """Every graph at module level of the examples (tests among them excluded)."""
    graphs: dict[str, CompiledGraph] = {}
    for path in sorted((ROOT / "examples").glob("*.py")):
        if path.stem.startswith("test_"):
            continue
        module = _load(path)
        for name, value in vars(module).items():
            if isinstance(value, StateGraph):
                graphs[f"{path.stem}:{name}"] = value.compile()
            elif isinstance(value, CompiledGraph):
                graphs[f"{path.stem}:{name}"] = value
    return graphs


EXAMPLES = _example_graphs()


@pytest.fixture(params=sorted(EXAMPLES), ids=str)
def example(request) -> CompiledGraph:
    return EXAMPLES[request.param]


def test_the_examples_offer_their_graphs_to_draw():
    stems = {name.split(":")[0] for name in EXAMPLES}
    assert {"quickstart", "pipeline", "parallel_analysis", "routing_workflow",
            "decision_tree", "resume_after_crash"} <= stems
    assert {"quickstart:graph", "quickstart:app", "parallel_analysis:app"} <= set(EXAMPLES)


# -- parsing the outputs ---------------------------------------------------------------------------

_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]]+)')
_DOT_NODE = re.compile(r"^\s*(n\d+) \[(.*)\]$")
_DOT_EDGE = re.compile(r"^\s*(n\d+) -> (n\d+) \[(.*)\]$")


def _attrs(text: str) -> dict[str, str]:
    found = {}
    for key, value in _ATTR.findall(text):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        found[key] = value
    return found


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], dict]]:
    """(nodes by name, edges by (source name, target name)) of DOT made by `to_dot`."""
    names: dict[str, str] = {}
    nodes: dict[str, dict[str, str]] = {}
    raw_edges = []
    for line in text.splitlines():
        if match := _DOT_EDGE.match(line):
            raw_edges.append((match[1], match[2], _attrs(match[3])))
        elif match := _DOT_NODE.match(line):
            attrs = _attrs(match[2])
            names[match[1]] = attrs["id"]
            nodes[attrs["id"]] = attrs
    edges = {}
    for source, target, attrs in raw_edges:
        key = (names[source], names[target])
        assert key not in edges, f"edge {key} drawn twice"
        edges[key] = attrs
    return nodes, edges


_MERMAID_EDGE = re.compile(r"^\s*(n_\S+) (-->|-\.->|==>)(?:\|([^|]*)\|)? (n_\S+)$")


def mermaid_id(name: str) -> str:
    return "n_" + re.sub(r"[^0-9A-Za-z]", lambda m: f"_{ord(m.group()):x}_", name)


def test_mermaid_ids_of_different_names_never_collide():
    names = ["a-b", "a_2d_b", "a_b", "a__b"]
    assert len({mermaid_id(n) for n in names}) == len(names)
    g = StateGraph(Small)
    for name in names:
        g.add_node(name, lambda state: None)
        g.add_edge(START, name)
        g.add_edge(name, END)
    text = visualize.to_mermaid(g.compile())
    assert all(f"    {mermaid_id(n)}[\"{n}\"]" in text.splitlines() for n in names)


def parse_mermaid_edges(text: str) -> list[tuple[str, str, str, str]]:
    """(source id, arrow, label, target id) per edge line, in order."""
    return [(m[1], m[2], m[3] or "", m[4]) for m in map(_MERMAID_EDGE.match, text.splitlines())
            if m]


def svg_nodes(svg: str) -> tuple[ET.Element, dict[str, ET.Element]]:
    root = ET.fromstring(svg)
    nodes = {g.get("id"): g for g in root.iter(f"{SVG}g")
             if "node" in (g.get("class") or "").split()}
    return root, nodes


def classes(element: ET.Element) -> list[str]:
    return (element.get("class") or "").split()


def shape_strokes(group: ET.Element) -> set[str]:
    return {e.get("stroke") for e in group.iter() if e.tag in
            (f"{SVG}path", f"{SVG}polygon", f"{SVG}ellipse") and e.get("stroke")}


def title(root: ET.Element) -> str:
    graph = next(g for g in root.iter(f"{SVG}g") if "graph" in classes(g))
    return next(t.text or "" for t in graph.findall(f"{SVG}text"))


# -- every example ---------------------------------------------------------------------------------

def test_dot_and_mermaid_are_deterministic(example):
    assert visualize.to_dot(example) == visualize.to_dot(example)
    assert visualize.to_mermaid(example) == visualize.to_mermaid(example)
    rebuilt = CompiledGraph(example.spec, name=example.name)
    assert visualize.to_dot(rebuilt) == visualize.to_dot(example)


def test_the_text_does_not_depend_on_hash_randomization():
    script = (
        "import sys; sys.path.insert(0, 'tests'); import test_visualize as t, visualize\n"
        "for name, app in sorted(t.EXAMPLES.items()):\n"
        "    print(name); print(visualize.to_dot(app)); print(visualize.to_mermaid(app))\n"
        "    print(visualize.to_dot(app, xray=True))\n")
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].count("digraph ") == 2 * len(EXAMPLES)


def test_dot_draws_every_node_and_edge_of_the_compiled_graph(example):
    nodes, edges = parse_dot(visualize.to_dot(example))
    joins = {name for name, attrs in nodes.items() if "kind-join" in attrs["class"]}
    assert set(nodes) - joins == {START, END, *example.nodes}
    assert (nodes[START]["shape"], nodes[START]["label"]) == ("circle", "START")
    assert (nodes[END]["shape"], nodes[END]["label"]) == ("doublecircle", "END")
    for name in example.nodes:
        spec = example.spec.nodes[name]
        assert nodes[name]["shape"] == ("box3d" if spec.subgraph is not None else "box")
        assert nodes[name]["label"].split(" ")[0] == name
    expected = set()
    for source, target, data in example.spec.digraph.edges(data=True):
        if data["kind"] == "join":
            via = [j for j in joins if (source, j) in edges and (j, target) in edges]
            assert via, f"join edge {source} -> {target} is not drawn through a junction"
            assert edges[(source, via[0])]["arrowhead"] == "empty"
            expected |= {(source, via[0]), (via[0], target)}
            continue
        attrs = edges[(source, target)]
        expected.add((source, target))
        style = {"conditional": "dashed", "command": "dotted"}.get(data["kind"])
        assert attrs.get("style") == style, (source, target, attrs)
        assert f"edge-{data['kind']}" in attrs["class"]
        assert attrs.get("label", "") == ", ".join(data.get("labels", ()))
    assert set(edges) == expected


def test_mermaid_draws_the_same_edges_as_dot(example):
    _, dot_edges = parse_dot(visualize.to_dot(example))
    text = visualize.to_mermaid(example)
    assert text.startswith(f"---\ntitle: {json.dumps(example.name)}\n---\nflowchart TD\n")
    arrows = {"fixed": "-->", "conditional": "-.->", "command": "-.->", "join": "==>"}
    expected = sorted(
        (mermaid_id(s), arrows[a["class"].split()[0].removeprefix("edge-")], a.get("label", ""),
         mermaid_id(t)) for (s, t), a in dot_edges.items())
    assert sorted(parse_mermaid_edges(text)) == expected
    lines = text.splitlines()
    assert f"    {mermaid_id(START)}((START))" in lines
    assert f"    {mermaid_id(END)}(((END)))" in lines
    for name in example.nodes:
        assert any(line.startswith(f"    {mermaid_id(name)}[") for line in lines), name


def test_svg_has_one_group_per_node_named_after_it(example):
    root, nodes = svg_nodes(visualize.render_bytes(example, "svg").decode())
    drawn = set(nodes) - {n for n in nodes if n.startswith("join:")}
    assert drawn == {START, END, *example.nodes}
    assert all("visited" not in classes(g) and "failed" not in classes(g)
               for g in nodes.values())
    assert title(root) == example.name
    edge_ids = {g.get("id") for g in root.iter(f"{SVG}g") if "edge" in classes(g)}
    _, dot_edges = parse_dot(visualize.to_dot(example))
    assert edge_ids == {f"{s}->{t}" for s, t in dot_edges}


# -- options, commands, subgraphs ------------------------------------------------------------------

class Small(BaseModel):
    n: int = 0


def _options_graph() -> CompiledGraph:
    graph = StateGraph(Small)
    graph.add_node("decide", lambda s: Command(update={"n": 1}, goto="b"),
                   destinations=("a", "b"))
    graph.add_node("a", lambda s: None, retry=RetryPolicy(max_attempts=2), timeout=5)
    graph.add_node("b", lambda s: None, cache=CachePolicy(), compensate=lambda s: None)
    graph.add_edge(START, "decide")
    graph.add_edge("a", END)
    graph.add_edge("b", END)
    return graph.compile(interrupt_before=["a"])


def test_node_options_and_command_destinations_are_drawn():
    app = _options_graph()
    nodes, edges = parse_dot(visualize.to_dot(app))
    assert nodes["a"]["label"] == "a ↻⏱⏸"
    assert set(nodes["a"]["class"].split()) == \
        {"kind-node", "marker-retry", "marker-timeout", "marker-interrupt_before"}
    assert nodes["a"]["tooltip"] == "retry, timeout, interrupt before"
    assert nodes["b"]["label"] == "b ⚡↩"
    assert nodes["decide"]["label"] == "decide"
    for target in ("a", "b"):
        assert edges[("decide", target)]["style"] == "dotted"
        assert edges[("decide", target)]["arrowhead"] == "vee"
    mermaid = visualize.to_mermaid(app)
    assert '    n_a["a ↻ ⏱ ⏸"]' in mermaid.splitlines()
    assert ("n_decide", "-.->", "", "n_b") in parse_mermaid_edges(mermaid)


def test_a_subgraph_is_a_3d_box_or_with_xray_a_cluster_of_its_own_nodes():
    app = cli_graphs.research.compile()
    nodes, edges = parse_dot(visualize.to_dot(app))
    assert nodes["research"]["shape"] == "box3d"
    assert "kind-subgraph" in nodes["research"]["class"]
    assert not any(name.startswith("research/") for name in nodes)

    text = visualize.to_dot(app, xray=True)
    cluster = re.search(r"subgraph (cluster_n\d+) \{(.*?)\n\t\}", text, re.S)
    assert cluster, text
    assert 'label="subgraph research"' in cluster[2]
    nodes, edges = parse_dot(text)
    inner = {"research/__start__", "research/__end__", "research/search", "research/summarize"}
    assert inner <= set(nodes) and "research" not in nodes
    for name in inner:
        assert f'id="{name}"' in cluster[2]  # drawn inside the cluster
    assert ("plan", "research/__start__") in edges and ("research/__end__", "write") in edges
    assert ("research/search", "research/summarize") in edges

    mermaid = visualize.to_mermaid(app, xray=True)
    assert '    subgraph n_research ["subgraph research"]' in mermaid.splitlines()
    assert "        n_research_2f_search --> n_research_2f_summarize" in mermaid.splitlines()

    root, svg = svg_nodes(visualize.render_bytes(app, "svg", xray=True).decode())
    assert inner <= set(svg)
    assert any("cluster" in classes(g) for g in root.iter(f"{SVG}g"))


# -- a thread's run --------------------------------------------------------------------------------

def _failed_flaky(tmp_path: Path) -> tuple[CompiledGraph, Path]:
    app = cli_graphs.flaky.compile(checkpointer=MemoryCheckpointer())
    flag = tmp_path / "flag"
    with pytest.raises(ConnectionError):
        app.invoke({"flag": str(flag)}, thread_id="t1")
    return app, flag


def test_a_failed_run_marks_the_failed_node_red_and_the_path_to_it(tmp_path):
    app, _ = _failed_flaky(tmp_path)
    root, nodes = svg_nodes(visualize.render_bytes(app, "svg", thread_id="t1").decode())
    assert {"failed", "next"} <= set(classes(nodes["charge"]))
    assert RED in shape_strokes(nodes["charge"])
    assert any(t.get("fill") == RED for t in nodes["charge"].iter(f"{SVG}text"))
    links = [a for a in nodes["charge"].iter(f"{SVG}a")]
    assert any("ConnectionError: payment gateway unreachable" in (a.get(
        "{http://www.w3.org/1999/xlink}title") or "") for a in links)  # the error as tooltip
    assert "visited" in classes(nodes["prepare"]) and GREEN in shape_strokes(nodes["prepare"])
    for name in ("ship", "__end__"):
        assert not {"visited", "failed"} & set(classes(nodes[name]))
    assert title(root) == "OrderStateGraph — thread t1: failed at step 1"

    dot_nodes, edges = parse_dot(visualize.to_dot(app, thread_id="t1"))
    assert dot_nodes["prepare"]["label"] == "prepare ×1"
    assert dot_nodes["charge"]["tooltip"] == "ConnectionError: payment gateway unreachable"
    taken = {key for key, attrs in edges.items() if "taken" in attrs["class"]}
    assert {("__start__", "prepare"), ("prepare", "charge")} <= taken
    assert not {key for key in taken if key[1] in ("ship", END)}

    mermaid = visualize.to_mermaid(app, thread_id="t1")
    assert 'title: "OrderStateGraph — thread t1: failed at step 1"' in mermaid
    assert "    class n_charge next,failed" in mermaid.splitlines()
    assert "    class n_prepare visited" in mermaid.splitlines()
    _assert_link_styles_match(mermaid, edges)


def _assert_link_styles_match(mermaid: str, dot_edges: dict) -> None:
    """Mermaid's `linkStyle` indices name exactly the edges DOT marks taken."""
    lines = mermaid.splitlines()
    edges = parse_mermaid_edges(mermaid)
    styled = [line for line in lines if line.strip().startswith("linkStyle ")]
    indices = {int(i) for line in styled for i in line.split()[1].split(",")}
    names = {mermaid_id(s): s for s, _ in dot_edges} | {mermaid_id(t): t for _, t in dot_edges}
    taken = {(names[edges[i][0]], names[edges[i][3]]) for i in indices}
    assert taken == {key for key, attrs in dot_edges.items() if "taken" in attrs["class"]}


def test_a_node_that_finished_in_the_failed_step_is_drawn_as_run(tmp_path):
    app, _ = _failed_flaky(tmp_path)
    assert app.get_state("t1").pending_writes == {"reserve": {"log": ["reserve"]}}
    _, nodes = svg_nodes(visualize.render_bytes(app, "svg", thread_id="t1").decode())
    _, edges = parse_dot(visualize.to_dot(app, thread_id="t1"))
    assert "visited" in classes(nodes["reserve"])
    assert "taken" in edges[("prepare", "reserve")]["class"]


def test_after_resume_the_whole_path_is_visited_and_the_title_says_done(tmp_path):
    app, flag = _failed_flaky(tmp_path)
    flag.touch()
    app.resume("t1")
    root, nodes = svg_nodes(visualize.render_bytes(app, "svg", thread_id="t1").decode())
    for name in ("prepare", "reserve", "charge", "ship"):
        assert "visited" in classes(nodes[name]) and "failed" not in classes(nodes[name])
    assert title(root) == "OrderStateGraph — thread t1: done at step 3"
    _, edges = parse_dot(visualize.to_dot(app, thread_id="t1"))
    assert {k for k, a in edges.items() if "taken" in a["class"]} == set(edges)
    _assert_link_styles_match(visualize.to_mermaid(app, thread_id="t1"), edges)


def test_a_loop_shows_how_often_each_node_and_edge_ran():
    app = cli_graphs.counter.compile(checkpointer=MemoryCheckpointer())
    app.invoke({"target": 3}, thread_id="loop")
    nodes, edges = parse_dot(visualize.to_dot(app, thread_id="loop"))
    assert nodes["work"]["label"] == "work ×3"
    assert edges[("work", "work")]["xlabel"] == "×2"
    assert "taken" in edges[("work", END)]["class"] and "xlabel" not in edges[("work", END)]
    mermaid = visualize.to_mermaid(app, thread_id="loop")
    assert ("n_work", "-.->", "again ×2", "n_work") in parse_mermaid_edges(mermaid)
    assert '    n_work["work ×3"]' in mermaid.splitlines()


def test_xray_mermaid_highlights_the_taken_edges_of_a_run():
    app = cli_graphs.research.compile(checkpointer=MemoryCheckpointer())
    app.invoke({}, thread_id="r1")
    mermaid = visualize.to_mermaid(app, thread_id="r1", xray=True)
    edges = parse_mermaid_edges(mermaid)
    styled = [line for line in mermaid.splitlines() if line.strip().startswith("linkStyle ")]
    indices = {int(i) for line in styled for i in line.split()[1].split(",")}
    highlighted = {(edges[i][0], edges[i][3]) for i in indices}
    assert highlighted == {(mermaid_id(START), "n_plan"), ("n_plan", "n_research"),
                           ("n_research", "n_write"), ("n_write", mermaid_id(END))}


def test_a_thread_that_does_not_exist_is_an_error():
    from statemachine import ThreadNotFoundError

    app = cli_graphs.counter.compile(checkpointer=MemoryCheckpointer())
    with pytest.raises(ThreadNotFoundError):
        visualize.to_dot(app, thread_id="nope")


# -- files, Jupyter and a machine without Graphviz -------------------------------------------------

def test_render_writes_the_format_of_the_extension(tmp_path):
    app = cli_graphs.compiled
    assert visualize.render(app, tmp_path / "g.svg") == tmp_path / "g.svg"
    ET.parse(tmp_path / "g.svg")
    visualize.render(app, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    visualize.render(app, tmp_path / "g.PDF")
    assert (tmp_path / "g.PDF").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match=r"use a \.svg, \.png or \.pdf"):
        visualize.render(app, tmp_path / "g.txt")
    assert not (tmp_path / "g.txt").exists()


def test_jupyter_shows_the_svg_and_the_mermaid_source():
    app = cli_graphs.compiled
    bundle = app._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/markdown", "image/svg+xml"}
    assert bundle["text/plain"] == repr(app)
    assert bundle["text/markdown"] == f"```mermaid\n{visualize.to_mermaid(app)}```"
    _, nodes = svg_nodes(bundle["image/svg+xml"])
    assert set(nodes) >= {"prepare", "left", "right", "finish"}
    assert app._repr_svg_() == bundle["image/svg+xml"]


def test_without_graphviz_text_still_works_and_rendering_says_how_to_install_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    script = (
        "import json, visualize\n"
        "from tests.cli_graphs import compiled\n"
        "out = {'dot': visualize.to_dot(compiled).startswith('digraph'),\n"
        "       'bundle': sorted(compiled._repr_mimebundle_()), 'svg': compiled._repr_svg_()}\n"
        "try:\n"
        f"    visualize.render(compiled, {str(tmp_path / 'g.svg')!r})\n"
        "except visualize.GraphvizNotFoundError as exc:\n"
        "    out['error'] = str(exc)\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["dot"] is True
    assert out["bundle"] == ["text/markdown", "text/plain"]  # Mermaid instead of SVG
    assert out["svg"] is None
    assert "Graphviz's `dot` program" in out["error"]
    assert "apt-get install graphviz" in out["error"] and "brew install graphviz" in out["error"]
    assert not (tmp_path / "g.svg").exists()


# -- untrusted text ----------------------------------------------------------------------------

XLINK = "{http://www.w3.org/1999/xlink}"
# what Graphviz writes for the attributes to_dot sets: no link, no script, nothing else
SVG_ATTRIBUTES = {"id", "class", "transform", "viewBox", "width", "height", "x", "y", "cx",
                  "cy", "rx", "ry", "points", "d", "fill", "stroke", "stroke-width",
                  "stroke-dasharray", "font-family", "font-size", "font-weight", "text-anchor",
                  f"{XLINK}title"}
NASTY = ["\\", "a\\", '"', '\\"', "<b>x</b>", "<x> URL=\"javascript:alert(1)\" target=<_self>",
         "\\N \\G \\l \\n \\E \\T \\H \\L \\r", "&lt;script&gt;", "&amp;", "&#60;", "&foo;",
         "line 1\nline 2", "\x00\x01\x7f\t", "\ud800", "node", "subgraph", "]; x [URL=\"j\"",
         "}", "a  b", " lead", "é \u202e"]


def shown(text: str) -> str:
    """What Graphviz should show for `text`: itself, with unshowable characters spelled out."""
    return visualize.dot._UNSHOWABLE.sub(lambda m: visualize.dot._visible(m.group()), text)


def _literal_in_svg(name: str, error: str, edge_text: str, title_text: str) -> None:
    from visualize.diagram import Diagram, Edge, Node

    failed = Node(name, name, "node", visits=1, failed=True, error=error, next=True)
    other = Node(f"{name}+", "other", "node")
    diagram = Diagram(name, [failed, other], [Edge(name, other.id, "conditional", (edge_text,))],
                      title=title_text)
    source = visualize.dot._digraph(diagram).source
    svg = subprocess.run(["dot", "-Tsvg"], input=source.encode(), capture_output=True,
                         check=True).stdout  # the real `dot` parses it
    root = ET.fromstring(svg)
    attributes = {key for element in root.iter() for key in element.attrib}
    assert attributes <= SVG_ATTRIBUTES, attributes - SVG_ATTRIBUTES  # never an attribute
    node = next(g for g in root.iter(f"{SVG}g") if "failed" in classes(g))
    if name:  # else Graphviz makes one up
        assert plain(node.get("id")) == plain(shown(name).replace("\n", "\\x0a"))
    assert _lines(node.iter(f"{SVG}text")) == _lines_of(f"{shown(name)} ×1")
    tooltips = [plain(a.get(f"{XLINK}title")) for a in node.iter(f"{SVG}a")]
    assert tooltips == ([plain(shown(error))] if error else [])
    edge = next(g for g in root.iter(f"{SVG}g") if "edge" in classes(g))
    assert _lines(edge.iter(f"{SVG}text")) == _lines_of(shown(edge_text))
    graph = next(g for g in root.iter(f"{SVG}g") if "graph" in classes(g))
    assert _lines(graph.findall(f"{SVG}text")) == _lines_of(shown(title_text))


def plain(text: str) -> str:
    """Graphviz writes a space after a space as U+00A0: compared as spaces."""
    return text.replace("\xa0", " ")


def _lines(texts) -> list[str]:
    """The lines of a label: Graphviz writes each as a <text>, but none for an empty one."""
    return [plain(t.text or "") for t in texts]


def _lines_of(text: str) -> list[str]:
    return [plain(line) for line in text.split("\n") if line]


@pytest.mark.parametrize("text", NASTY)
def test_names_errors_and_titles_reach_the_svg_as_literal_text(text):
    _literal_in_svg(text, text, text, text)


@given(name=st.text(max_size=30), error=st.text(max_size=60), edge=st.text(max_size=20),
       title_text=st.text(max_size=30))
def test_any_text_reaches_the_svg_as_literal_text(name, error, edge, title_text):
    _literal_in_svg(name, error, edge, title_text)


_ENTITY = re.compile(r"#(\d+);")
_MERMAID_LABEL = re.compile(r'^\s*n_\w*\["([^"]*)"\]$')


def _mermaid_of(name: str, error: str, edge_text: str, title_text: str) -> None:
    from visualize.diagram import Diagram, Edge, Node
    from visualize.mermaid import _flowchart

    failed = Node(name, name, "node", failed=True, error=error, next=True)
    other = Node(f"{name}+", "other", "node")
    text = _flowchart(Diagram(name, [failed, other],
                              [Edge(name, other.id, "conditional", (edge_text,))],
                              title=title_text))
    lines = text.splitlines()
    assert len(lines) == 12 and lines[1].startswith("title: ")
    # a YAML (and JSON) string on its own line, holding no character YAML would refuse
    assert json.loads(lines[1][7:]) == title_text
    assert not [c for c in lines[1] if unicodedata.category(c)[0] == "C" or
                unicodedata.category(c) in ("Zl", "Zp")]
    label = _MERMAID_LABEL.match(lines[4])
    assert label, lines[4]
    assert re.fullmatch(r"[^\"'`|\[\]{}()<>&\\\n\r]*", label[1].replace("'", ""))
    assert _ENTITY.sub(lambda m: chr(int(m[1])), label[1]) == name
    edges = parse_mermaid_edges(text)
    assert len(edges) == 1 and _ENTITY.sub(lambda m: chr(int(m[1])), edges[0][2]) == edge_text
    assert "click" not in {line.split()[0] for line in lines[4:]}


@pytest.mark.parametrize("text", [*NASTY, 'x"] --> y\nclick x href "javascript:alert(1)"',
                                  "#quot; #124; #35;", "`**md**`", "<img src=x onerror=alert(1)>",
                                  "a\u2028b", "%%{init: {}}%%"])
def test_mermaid_labels_and_titles_are_literal_text(text):
    _mermaid_of(text, text, text, text)


@given(name=st.text(min_size=1, max_size=30), error=st.text(max_size=30),
       edge=st.text(max_size=20), title_text=st.text(max_size=30))
def test_any_text_is_a_literal_mermaid_label(name, error, edge, title_text):
    _mermaid_of(name, error, edge, title_text)
