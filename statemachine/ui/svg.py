"""An allow-list sanitizer for the diagrams the viewer puts into its page.

Graphviz writes what the DOT asks for, and the DOT carries stored text: whatever slipped
through would run in the viewer's origin. Only drawing elements and presentation attributes
pass; no script, foreignObject, event handlers, styles, or links other than fragments and
same-origin paths. Parsed with the standard library's expat; entity declarations refused.
"""

from __future__ import annotations

import re
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ELEMENTS = {"svg", "g", "title", "desc", "polygon", "polyline", "path", "ellipse", "circle",
            "rect", "line", "text", "tspan", "a", "defs", "linearGradient", "radialGradient",
            "stop"}
ATTRIBUTES = {"id", "class", "transform", "viewBox", "width", "height", "x", "y", "dx", "dy",
              "cx", "cy", "r", "rx", "ry", "x1", "y1", "x2", "y2", "fx", "fy", "points", "d",
              "fill", "fill-opacity", "stroke", "stroke-width", "stroke-dasharray",
              "stroke-opacity", "stroke-linecap", "stroke-linejoin", "opacity", "font-family",
              "font-size", "font-weight", "font-style", "text-anchor", "text-decoration",
              "baseline-shift", "preserveAspectRatio", "offset", "stop-color", "stop-opacity",
              "gradientUnits", "gradientTransform"}
LINKS = {"href", f"{XLINK_NS} href"}
# a fragment, or a path on this origin: not //host, not /\host, no scheme, no whitespace
_SAFE_LINK = re.compile(r"#[^\s\\]*|/(?![/\\])[^\s\\:]*")
_URL_VALUE = re.compile(r"url\(\s*(?!#)", re.IGNORECASE)
ID_PREFIX = "diagram-"
"""Put before every id, and every fragment that points at one: Graphviz names elements after
the graph's nodes, and a node named like an element of the page ("timeline") would otherwise
be what the page's getElementById finds."""


class UnsafeSvgError(ValueError):
    """The document is not SVG the viewer can show (not XML, declares entities, no <svg>)."""


def sanitize_svg(data: bytes) -> str:
    """The SVG in `data` with only allow-listed elements and attributes (and safe links)."""
    return _Sanitizer().run(data)


class _Sanitizer:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.skipping = 0  # depth inside a dropped element: all of it is dropped
        self.root_seen = False
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self.start
        parser.EndElementHandler = self.end
        parser.CharacterDataHandler = self.text
        parser.EntityDeclHandler = self.refuse_entities
        self.parser = parser

    def run(self, data: bytes) -> str:
        try:
            self.parser.Parse(data, True)
        except expat.ExpatError as exc:
            raise UnsafeSvgError(f"the diagram is not well-formed XML: {exc}") from exc
        if not self.root_seen:
            raise UnsafeSvgError("the diagram has no <svg> root element")
        return "".join(self.out)

    def refuse_entities(self, *args: object) -> None:
        raise UnsafeSvgError("the diagram declares XML entities; refused")

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = _svg_local(name)
        if not self.root_seen:
            if local != "svg":
                raise UnsafeSvgError(f"the diagram's root element is {name!r}, not <svg>")
            self.root_seen = True
        if self.skipping or local not in ELEMENTS:
            self.skipping += 1
            return
        kept = [f"{_shown(key)}={quoteattr(_scoped(key, value))}"
                for key, value in attrs.items() if _allowed(key, value)]
        if local == "svg":
            kept += [f'xmlns="{SVG_NS}"', f'xmlns:xlink="{XLINK_NS}"']
        self.out.append(f"<{local}{''.join(' ' + a for a in kept)}>")

    def end(self, name: str) -> None:
        if self.skipping:
            self.skipping -= 1
            return
        self.out.append(f"</{_svg_local(name)}>")

    def text(self, data: str) -> None:
        if not self.skipping:
            self.out.append(escape(data))


def _svg_local(name: str) -> str | None:
    """The local name of an SVG element; None for any other namespace."""
    namespace, _, local = name.rpartition(" ")
    return local if namespace == SVG_NS else None


def _allowed(key: str, value: str) -> bool:
    if key in LINKS:
        return _SAFE_LINK.fullmatch(value) is not None
    if key in (f"{XLINK_NS} title", "id"):  # text; ids are scoped (see `_scoped`)
        return True
    if key == "class":  # Graphviz's and the diagram's own words: nothing else is needed
        return re.fullmatch(r"[\w\s-]*", value) is not None
    # no backslash: CSS escapes (\75 rl(...)) would hide a url() from the check
    return key in ATTRIBUTES and not _URL_VALUE.search(value) and "\\" not in value


def _scoped(key: str, value: str) -> str:
    """Ids, and links and url() references to them, moved under `ID_PREFIX`."""
    if key == "id":
        return ID_PREFIX + value
    if key in LINKS and value.startswith("#"):
        return "#" + ID_PREFIX + value[1:]
    return re.sub(r"url\(\s*#", f"url(#{ID_PREFIX}", value, flags=re.IGNORECASE)


def _shown(key: str) -> str:
    return "xlink:" + key.split(" ")[1] if key.startswith(XLINK_NS + " ") else key
