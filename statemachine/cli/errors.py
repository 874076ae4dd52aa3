"""Exit codes, and the errors a command prints and exits with (library errors mapped)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import click
from rich.text import Text

from ..constants import INPUT
from ..errors import (
    CheckpointError,
    GraphValidationError,
    InvalidContextError,
    InvalidUpdateError,
    Problem,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
)
from ..terminal import visible
from .output import err_console

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID_GRAPH = 3
EXIT_NOT_FOUND = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130

EPILOG = """\b
GRAPH is package.module:attribute (or path/to/file.py:attribute), a StateGraph or a
CompiledGraph; the current directory is importable.
\b
Exit codes:
  0  success (also a run that paused for an interrupt or an event)
  1  the run failed: a node or router raised (the resume command is printed)
  2  usage error or bad input (options, JSON, not a graph, rejected input, thread state)
  3  the graph is invalid (every problem is printed)
  4  not found: module, attribute, file, database, thread, checkpoint, Graphviz's dot
  5  the thread is busy: another run holds it
  130  interrupted with Ctrl-C (committed steps are kept)
"""


class CliError(click.ClickException):
    """An error to print (without a traceback) and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *,
                 details: Sequence[str] = (), hint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it off the instance
        self.details = list(details)
        self.hint = hint

    def show(self, file: Any = None) -> None:
        # made visible before rich sees it: rich drops some controls (BEL, CR) itself, and
        # the console's own gate would then show an id that is not the real one
        console = err_console()
        console.print(Text.assemble(("error: ", "bold red"), visible(self.message)))
        for line in self.details:
            console.print(Text("  " + visible(line)))
        if self.hint:
            console.print(Text.assemble(("  hint: ", "yellow"), visible(self.hint)))


def problem_lines(problems: Sequence[Problem]) -> list[str]:
    lines = []
    for problem in problems:
        lines.append(f"✗ [{problem.code}] {problem.message}")
        if problem.nodes:
            lines.append(f"    nodes: {', '.join(map(str, problem.nodes))}")
        if problem.hint:
            lines.append(f"    hint: {problem.hint}")
    return lines


def invalid(target: str, exc: GraphValidationError) -> CliError:
    count = len(exc.problems)
    return CliError(f"{target} is invalid: {count} problem{'s' if count != 1 else ''}",
                    EXIT_INVALID_GRAPH, details=problem_lines(exc.problems))


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Library errors a command does not handle itself, as CLI errors with their exit code."""
    try:
        yield
    except GraphValidationError as exc:
        raise CliError(str(exc), EXIT_INVALID_GRAPH) from exc
    except ThreadNotFoundError as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from exc
    except ThreadBusyError as exc:
        raise CliError(str(exc), EXIT_BUSY) from exc
    except (ThreadStateError, CheckpointError, InvalidContextError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except sqlite3.Error as exc:  # a damaged file, or one of an incompatible version
        raise CliError(f"cannot read the checkpoint database: {type(exc).__name__}: {exc}",
                       EXIT_USAGE) from exc


def setup_exit_code(exc: BaseException) -> int | None:
    """The exit code of an error that stopped the call before the run itself failed."""
    if isinstance(exc, ThreadBusyError):
        return EXIT_BUSY
    if isinstance(exc, ThreadNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ThreadStateError, CheckpointError, InvalidContextError)):
        return EXIT_USAGE
    if isinstance(exc, InvalidUpdateError) and exc.node in (None, INPUT):
        return EXIT_USAGE
    return None
