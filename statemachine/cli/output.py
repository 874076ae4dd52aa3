"""What commands print: consoles that make stored and user text inert, JSON on stdout, ids
and shell words inside messages.

Every console prints through `safe_console`: stored text cannot drive the terminal, and the
passwords of --db never show, whatever message quotes them.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from checkpoints.redaction import MASK

from ..terminal import json_safe, safe, safe_console, visible

if TYPE_CHECKING:
    from rich.table import Table


def err_console() -> Console:
    return safe_console(scrub=scrub, stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    console = safe_console(scrub=scrub, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped: wide rows beat wrapped ones
        console = safe_console(scrub=scrub, highlight=False, width=200)
    return console


def echo_json(value: Any) -> None:
    click.echo(scrub(json_safe(json.dumps(value, indent=2, ensure_ascii=False))))


PASSWORDS: set[str] = set()
"""The passwords of the --db given to this command, scrubbed from everything printed."""


def scrub(text: str) -> str:
    for password in sorted(PASSWORDS, key=len, reverse=True):
        text = text.replace(password, MASK)
    return text


def show_id(text: str) -> str:
    """A thread or checkpoint id inside a message: on one line, control characters visible."""
    return visible(text, one_line=True)


def shell_word(word: str) -> str:
    """`word` quoted for a POSIX shell; one holding control characters as $'...', which shows
    them as escapes and still means the same word to bash and zsh."""
    if visible(word, one_line=True) == word:
        return shlex.quote(word)
    return "$'" + "".join(_shell_char(c) for c in word) + "'"


def _shell_char(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if visible(char, one_line=True) == char:
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"


def state_json(state: Any) -> Any:
    return state.model_dump(mode="json")


STATUS_STYLE = {"done": "green", "failed": "bold red", "interrupted": "yellow",
                "running": "cyan", "compensated": "magenta", "rollback_failed": "bold red"}


def new_table() -> Table:
    """A table as the commands print them: a rule under the header, no outer edges."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False)


def print_errors(out: Console, errors: Sequence[tuple[str, str | None]]) -> None:
    """Errors under a table, whole: in a narrow column they would be cut or dropped."""
    for where, error in errors:
        if error:
            out.print(Text.assemble(safe(f"{where}: ", "bold red"), safe(error)), soft_wrap=True)
