"""The store a command works on, opened from --db with the CLI's errors; the graph on it;
"no thread" errors that name the threads there are."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from checkpoints.base import Checkpointer, CheckpointRecord, ThreadInfo

from .. import store_reader
from .._sync import run_sync
from ..compiled import CompiledGraph
from ..errors import CheckpointError, GraphMismatchError, GraphValidationError, closest_name
from ..graph import StateGraph
from ..graph_binding import check_reader
from ..store_reader import DEFAULT_SCHEMA, Store, bind_graph, listed
from .errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError, invalid
from .options import Db, pg_schema, prog, shown_db
from .output import shell_word, show_id
from .targets import load_graph

KNOWN_THREADS = 1000
"""How many of the latest threads a "no thread" error looks through for a close name."""


def build_app(target: str, db: Db | None, stack: contextlib.ExitStack, *,
              create: bool, **options: Any) -> CompiledGraph:
    """The graph `target` names, compiled, on the database `db` when given."""
    graph = load_graph(target)
    saver = open_store(db, stack, create=create, **options).saver if db is not None else None
    return bind_target(target, graph, saver)


def check_thread_graph(app: CompiledGraph, thread: str, target: str, db: Db | None) -> None:
    """Say why not, before anything reads or runs `thread` through `app`, when the thread
    is bound to another graph (`graph_binding`): CliError with the command that moves it."""
    if app.checkpointer is None:
        return
    saver = app.checkpointer
    try:
        run_sync(lambda: check_reader(saver, thread, app.identity))
    except GraphMismatchError as exc:
        words = ["rebind", target] + (["--db", shown_db(db)] if db is not None else [])
        if isinstance(db, str) and pg_schema() != DEFAULT_SCHEMA:
            words += ["--schema", pg_schema()]
        raise CliError(str(exc), EXIT_USAGE, hint="to move it to this graph on purpose: "
                       f"{prog(click.get_current_context())} {shlex.join(words)} --thread "
                       f"{shell_word(thread)}") from exc


def bind_target(target: str, graph: StateGraph | CompiledGraph,
                saver: Checkpointer | None) -> CompiledGraph:
    """`graph` (what `target` names) on `saver` (see `bind_graph`); CliError if invalid."""
    try:
        return bind_graph(graph, saver)
    except GraphValidationError as exc:
        raise invalid(target, exc) from exc


def open_store(db: Db, stack: contextlib.ExitStack, *, create: bool,
               read_only: bool = False, **options: Any) -> Store:
    """Open `db`, closed when `stack` is; unless `create`, a missing or empty file is an error
    and nothing is made. A PostgreSQL URL opens the schema given by --schema; `read_only` (the
    reading commands) neither creates nor changes anything."""
    if isinstance(db, Path) and not create:
        if not db.exists():
            raise no_file(db)
        if db.is_file() and db.stat().st_size == 0:
            raise CliError(f"{str(db)!r} is empty, not a checkpoint database", EXIT_USAGE)
    try:
        store = store_reader.open_store(db, schema=pg_schema(), read_only=read_only, **options)
    except CheckpointError as exc:
        connect = isinstance(db, str) and "cannot connect" in str(exc)
        raise CliError(str(exc), EXIT_NOT_FOUND if connect else EXIT_USAGE) from exc
    except ImportError as exc:  # psycopg, which a PostgreSQL URL needs
        raise CliError(str(exc), EXIT_NOT_FOUND,
                       hint="pip install 'statemachine[postgres]'") from exc
    stack.callback(store.close)
    return store


def newest_records(store: Store, db: Db, thread: str, count: int = 1
                   ) -> list[CheckpointRecord]:
    """The thread's `count` newest checkpoints; CliError naming the threads there if none."""
    records = store.records(thread, limit=count)
    if not records:
        raise no_thread(thread, store.threads(limit=KNOWN_THREADS), db)
    return records


def no_thread(thread: str, infos: Sequence[ThreadInfo], db: Db | None) -> CliError:
    """The error for a thread the store does not hold, naming those it does (`infos`)."""
    match = closest_name(thread, [t.thread_id for t in infos])
    where = f" in {shown_db(db)!r}" if db is not None else ""
    shown = [t.thread_id for t in listed(infos)]
    hint = "threads there: " + ", ".join(map(show_id, shown[:10])) + \
        (" ..." if len(shown) > 10 else "") if shown else "the database holds no threads yet"
    return CliError(f"no thread {thread!r}{where}"
                    + (f" (did you mean {match!r}?)" if match else ""), EXIT_NOT_FOUND,
                    hint=hint)


def no_file(db: Path) -> CliError:
    return CliError(f"no database file {str(db)!r}", EXIT_NOT_FOUND,
                    hint="give the file a run wrote (statemachine run ... --db FILE)")
