"""Untrusted text (thread ids, error messages, stored values) made safe to print on a terminal.

Control characters (C0 such as ESC and CR, DEL, C1 such as CSI \\x9b) and bidirectional
overrides would let stored text clear the screen, set the window title, plant hyperlinks or
hide what precedes them; they are shown as visible escapes (`\\x1b`, `\\u202e`) instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderHook
from rich.segment import Segment
from rich.text import Text

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINE = re.compile(_UNSAFE.pattern[:-1] + "\n\t]")


def visible(text: object, *, one_line: bool = False) -> str:
    """`text` with every control character written as an escape; with `one_line`, newlines
    and tabs too (for table cells and ids). Newlines and tabs are kept otherwise."""
    pattern = _UNSAFE_LINE if one_line else _UNSAFE
    return pattern.sub(_escape, str(text))


def safe_console(*, scrub: Callable[[str], str] | None = None, **options: Any) -> Console:
    """A rich Console whose every printed character of content is made `visible` (and passed
    through `scrub`, e.g. to hide passwords), whatever a caller hands it: the one gate between
    untrusted text and the terminal. Rich's own styles and cursor controls are untouched."""
    console = Console(**options)
    console.push_render_hook(_VisibleHook(scrub))
    return console


def safe(text: object, style: str = "", *, one_line: bool = False) -> Text:
    """A rich Text of `text` made visible: printed literally, never read as markup."""
    return Text(visible(text, one_line=one_line), style=style)


def json_safe(text: str) -> str:
    """JSON text whose strings hold no raw C1 or bidirectional controls (JSON escapes C0
    itself): they are written as \\uXXXX escapes, which decode to the same strings."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class _VisibleHook(RenderHook):
    def __init__(self, scrub: Callable[[str], str] | None) -> None:
        self.scrub = scrub

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        return [_Visible(r, self.scrub) for r in renderables]


class _Visible:
    """Renders another renderable with its content made visible."""

    def __init__(self, inner: RenderableType, scrub: Callable[[str], str] | None) -> None:
        self.inner, self.scrub = inner, scrub

    def __rich_console__(self, console: Console, options: ConsoleOptions
                         ) -> Iterator[Segment]:
        segments: Iterable[Segment] = console.render(self.inner, options)
        for segment in segments:
            if segment.control:
                yield segment
                continue
            text = visible(segment.text)
            yield Segment(self.scrub(text) if self.scrub else text, segment.style)
