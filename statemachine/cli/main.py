"""The `statemachine` command group and its entry points."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from .errors import EPILOG, EXIT_OK
from .graphs import draw, validate
from .memory import store
from .queue import jobs, submit, worker
from .reading import history, show, threads
from .recovery import fork, rebind, rollback, update
from .retention import delete, prune
from .running import resume, run
from .viewer import ui


def main(argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> NoReturn:
    """The console script: `statemachine ...` (see the package docstring)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name or
             "statemachine")
    raise SystemExit(EXIT_OK)  # pragma: no cover - click exits itself


def module_main() -> NoReturn:
    """`python -m statemachine ...`."""
    main(prog_name=_module_prog())


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from statemachine import __version__

        click.echo(f"statemachine {__version__}")
        ctx.exit()


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100},
             commands=[validate, draw, run, resume, threads, history, show, update, fork,
                       rollback, rebind, submit, worker, jobs, prune, delete, store, ui])
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and exit.")
def cli() -> None:
    """Durable, stateful workflows as graphs: validate, draw, run, resume and inspect them."""


def _module_prog() -> str:
    """How to call this interpreter's `-m statemachine` from a shell, as short as is exact."""
    python = sys.executable or "python"
    name = os.path.basename(python)
    found = shutil.which(name)
    if found and os.path.realpath(found) == os.path.realpath(python):
        python = name
    return f"{shlex.quote(python)} -m statemachine"
