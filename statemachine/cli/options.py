"""The options commands share: --db and --schema, GRAPH, JSON values; and the program name."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from checkpoints.redaction import redact_dsn, secret_fragments

from ..store_reader import DEFAULT_SCHEMA, location
from .errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError
from .output import PASSWORDS

T = TypeVar("T")

Db = Path | str
"""A --db value: a SQLite file's path, or a PostgreSQL URL (text)."""


def with_options(options: Sequence[Callable[[T], T]]) -> Callable[[T], T]:
    """Several click options as one decorator, in the order given."""
    def apply(fn: T) -> T:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def _parse_db(ctx: click.Context, param: click.Parameter, value: str | None) -> Db | None:
    if value is None:
        return None
    db = location(value)
    if isinstance(db, str):
        PASSWORDS.update(secret_fragments(db))
    return db


def _remember_schema(ctx: click.Context, param: click.Parameter, value: str) -> None:
    ctx.meta["statemachine.schema"] = value


DB_OPTION = with_options([
    click.option("--db", callback=_parse_db, metavar="FILE|URL",
                 help="Checkpoint store: a SQLite file, or a PostgreSQL URL "
                      "(postgresql://user@host/database)."),
    click.option("--schema", default=DEFAULT_SCHEMA, show_default=True, expose_value=False,
                 envvar="STATEMACHINE_PG_SCHEMA", callback=_remember_schema, is_eager=True,
                 help="With a PostgreSQL --db: the schema holding the tables."),
])
GRAPH_ARGUMENT = click.argument("target", metavar="GRAPH")


def _parse_context(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    ctx.meta["statemachine.context"] = value
    return read_json(value, "--context", secret=True)


CONTEXT_OPTION = click.option(
    "--context", "context_", callback=_parse_context, metavar="JSON",
    help="The run's context (the graph's context_schema: a user id, settings): JSON text, "
         "@file.json or -. Never stored, printed or echoed in errors; give it to each "
         "command that runs nodes.")


def repeat_context() -> tuple[str, str | None]:
    """How a printed command passes this command's --context on: a file again by name; a
    value given as text or on stdin only as a place to put it back (it is never printed);
    and the note saying so."""
    context = click.get_current_context(silent=True)
    given = context.meta.get("statemachine.context") if context else None
    if given is None:
        return "", None
    if given.startswith("@") and given != "@-":
        return f" --context {shlex.quote(given)}", None
    return " --context '...'", "give the same --context again (it is never stored or shown)"


def need_db(db: Db | None) -> Db:
    """--db, which the command needs."""
    if db is None:
        raise CliError("--db FILE is required: the checkpoint database to read", EXIT_USAGE)
    return db


def pg_schema() -> str:
    """The --schema of the running command (its PostgreSQL tables)."""
    context = click.get_current_context(silent=True)
    return context.meta.get("statemachine.schema", DEFAULT_SCHEMA) if context else \
        DEFAULT_SCHEMA


def shown_db(db: Db) -> str:
    """A --db as messages show it: a PostgreSQL URL without its password."""
    return redact_dsn(db)


def prog(ctx: click.Context) -> str:
    """How the user called the program (`statemachine`, or `python -m statemachine`)."""
    return ctx.find_root().info_name or "statemachine"


def json_object(value: str, option: str) -> dict[str, Any]:
    """The JSON object an option gives (text, @file or -); CliError saying what is wrong."""
    data = read_json(value, option)
    if not isinstance(data, dict):
        raise CliError(f"{option} must be a JSON object ({{...}}), not {type(data).__name__}",
                       EXIT_USAGE)
    return data


def read_json(value: str, option: str, *, secret: bool = False) -> Any:
    """JSON text, `@file.json`, or `-`/`@-` for stdin. `secret`: a mistake is described
    without showing the text around it."""
    source = "text"
    if value in ("-", "@-"):
        text, source = sys.stdin.read(), "stdin"
    elif value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CliError(f"{option}: no file {str(path)!r}", EXIT_NOT_FOUND) from None
        except OSError as exc:
            raise CliError(f"{option}: cannot read {str(path)!r}: {exc}", EXIT_USAGE) from exc
        source = str(path)
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if text.splitlines() else ""
        raise CliError(
            f"{option} is not valid JSON ({source}): {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}", EXIT_USAGE,
            details=[] if secret else [line, " " * (exc.colno - 1) + "^"],
            hint=f"""quote it for the shell: {option} '{{"count": 0}}', or {option} @file.json"""
        ) from exc
