"""The viewer's SVG sanitizer (statemachine/ui/svg.py): hostile documents lose every script,
handler and foreign link; real Graphviz diagrams pass unchanged in what they draw."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

import visualize
from statemachine.ui.svg import ELEMENTS, ID_PREFIX, UnsafeSvgError, sanitize_svg
from tests.test_visualize import EXAMPLES
from tests.viewer_graphs import shop

SVG, XLINK = "{http://www.w3.org/2000/svg}", "{http://www.w3.org/1999/xlink}"
HEAD = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'


def clean(body: str) -> ET.Element:
    return ET.fromstring(sanitize_svg((HEAD + body + "</svg>").encode()))


def assert_safe(root: ET.Element) -> None:
    for element in root.iter():
        assert element.tag.startswith(SVG) and element.tag[len(SVG):] in ELEMENTS, element.tag
        for key, value in element.attrib.items():
            assert not key.lower().startswith("on") and key != "style", key
            if key in ("href", f"{XLINK}href"):
                assert re.fullmatch(r"#\S*|/(?![/\\])[^\s\\:]*", value), value
            # an id is no link: scoped under ID_PREFIX, any text there is inert
            assert "javascript:" not in value.lower() or key in (f"{XLINK}title", "id")


@pytest.mark.parametrize("body, kept", [
    ('<script>alert(1)</script><g id="ok"/>', "ok"),
    ('<foreignObject><div xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(1)"/>'
     '</div></foreignObject><g id="ok"/>', "ok"),
    ('<g id="ok" onload="alert(1)" onclick="alert(1)" style="background:url(javascript:x)"/>',
     "ok"),
    ('<a xlink:href="javascript:alert(1)" id="ok"><text>x</text></a>', "ok"),
    ('<a href="JaVaScRiPt:alert(1)" id="ok"/>', "ok"),
    ('<a href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;" id="ok"/>', "ok"),
    ('<a href="//evil.example/x" id="ok"/><a href="/\\evil.example" id="b"/>', "ok"),
    ('<a href="java&#10;script:alert(1)" id="ok"/><a href=" javascript:x" id="c"/>', "ok"),
    ('<use href="https://evil.example/s.svg#x"/><image href="x.png"/><g id="ok"/>', "ok"),
    ('<style>*{background:url(https://evil.example)}</style><g id="ok"/>', "ok"),
    ('<animate attributeName="href" values="javascript:alert(1)"/><set attributeName="onload" '
     'to="alert(1)"/><g id="ok"/>', "ok"),
    ('<iframe xmlns="http://www.w3.org/1999/xhtml" src="javascript:alert(1)"/><g id="ok"/>', "ok"),
    ('<SCRIPT>alert(1)</SCRIPT><Script/><g id="ok"/>', "ok"),
    ('<g id="ok"><g><script>alert(1)<g id="inside"/></script></g></g>', "ok"),
    ('<polygon id="ok" fill="url(https://evil.example/#x)"/>', "ok"),
    ('<polygon id="ok" fill="\\75 rl(https://evil.example/)" stroke="u\\rl(//evil.example)" '
     'opacity="\\55RL(https://evil.example/)"/>', "ok"),
    ('<?xml-stylesheet href="https://evil.example/x.css"?><!-- <script> --><g id="ok"/>', "ok"),
])
def test_hostile_markup_is_dropped_and_the_drawing_kept(body, kept):
    root = clean(body)
    assert_safe(root)
    assert next(e.get("id") for e in root.iter() if e.get("id")) == ID_PREFIX + kept
    assert ID_PREFIX + "inside" not in {e.get("id") for e in root.iter()}
    text = ET.tostring(root, encoding="unicode").lower()
    assert "javascript" not in text and "evil" not in text and "alert" not in text


def test_safe_links_and_tooltips_stay():
    root = clean('<a xlink:href="#node" xlink:title="a &lt;tip&gt; javascript:x"/>'
                 '<a href="/api/threads/x"/>')
    links = list(root.iter(f"{SVG}a"))
    assert links[0].get(f"{XLINK}href") == f"#{ID_PREFIX}node"
    assert links[0].get(f"{XLINK}title") == "a <tip> javascript:x"  # text, shown as a tooltip
    assert links[1].get("href") == "/api/threads/x"


@pytest.mark.parametrize("document", [
    b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>',
    b'<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>',
    b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>',
    b'<svg><g/></svg>',  # no SVG namespace: not SVG
    b'<svg xmlns="http://www.w3.org/2000/svg"><g></svg>',
    b'',
])
def test_entities_other_roots_and_broken_xml_are_refused(document):
    with pytest.raises(UnsafeSvgError):
        sanitize_svg(document)


_NAMES = st.sampled_from(["g", "a", "text", "script", "foreignObject", "use", "image", "style",
                          "animate", "set", "path", "title", "iframe"])
_KEYS = st.sampled_from(["id", "class", "href", "xlink:href", "onload", "onclick", "style",
                         "fill", "xlink:title", "src", "values", "attributeName", "begin"])
_VALUES = st.sampled_from(["#n", "/x", "javascript:alert(1)", "data:text/html,x", "//evil.example",
                           "url(javascript:x)", "url(#g)", "red", " javascript:x", "\\\\evil"])


@st.composite
def _markup(draw, depth: int = 0) -> str:
    name = draw(_NAMES)
    attrs = draw(st.dictionaries(_KEYS, _VALUES, max_size=4))
    children = draw(st.lists(_markup(depth + 1), max_size=3)) if depth < 3 else []
    text = draw(st.text(max_size=5).map(lambda t: t.replace("&", "&amp;").replace("<", "&lt;")))
    attributes = "".join(f' {k}="{v}"' for k, v in attrs.items())
    inner = text + "".join(children)
    if name in ("iframe",):
        return f'<{name} xmlns="http://www.w3.org/1999/xhtml"{attributes}>{inner}</{name}>'
    return f"<{name}{attributes}>{inner}</{name}>"


@given(st.lists(_markup(), max_size=4))
def test_any_mix_of_markup_comes_out_safe(parts):
    try:
        root = clean("".join(parts))
    except UnsafeSvgError:  # text drawn with characters XML refuses
        return
    assert_safe(root)


def _drawn(root: ET.Element) -> list[tuple[str, dict[str, str], str]]:
    """What a document draws; ids as the sanitiser scopes them (under ID_PREFIX)."""
    return [(e.tag, {k: v.removeprefix(ID_PREFIX) if k == "id" else v
                     for k, v in e.attrib.items()}, (e.text or "").strip()) for e in root.iter()]


@pytest.mark.parametrize("name", sorted(EXAMPLES)[:6])
def test_real_diagrams_pass_unchanged(name):
    raw = visualize.render_bytes(EXAMPLES[name], "svg")
    assert _drawn(ET.fromstring(sanitize_svg(raw))) == _drawn(ET.fromstring(raw))


def test_a_diagram_with_tooltips_passes_unchanged(tmp_path):
    from checkpoints import SQLiteCheckpointer

    saver = SQLiteCheckpointer(tmp_path / "runs.db")
    try:
        app = shop.compile(checkpointer=saver)
        with pytest.raises(ConnectionError):
            app.invoke({"fail": True}, "t")
        raw = visualize.render_bytes(app, "svg", thread_id="t")
    finally:
        saver.close()
    root = ET.fromstring(sanitize_svg(raw))
    assert _drawn(root) == _drawn(ET.fromstring(raw))
    assert any("payment gateway" in (a.get(f"{XLINK}title") or "") for a in root.iter(f"{SVG}a"))


def test_ids_cannot_take_the_names_of_the_pages_elements():
    """Graphviz names elements after nodes: a node called "timeline" must not become what the
    page's getElementById("timeline") finds. Ids, fragment links and url(#...) move together."""
    root = clean('<g id="timeline"><a xlink:href="#writes"/><polygon id="writes" '
                 'fill="url(#grad)"/></g>')
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    assert ids == {f"{ID_PREFIX}timeline", f"{ID_PREFIX}writes"}
    assert next(root.iter(f"{SVG}a")).get(f"{XLINK}href") == f"#{ID_PREFIX}writes"
    assert next(root.iter(f"{SVG}polygon")).get("fill") == f"url(#{ID_PREFIX}grad)"

