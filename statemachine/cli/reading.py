"""`threads`, `history` and `show`: stored runs read without importing user code (unless
--graph is given), a page at a time."""

from __future__ import annotations

import contextlib
import shlex
from typing import Any

import click
from rich.console import RenderableType
from rich.text import Text

from ..store_reader import (
    DEFAULT_SCHEMA,
    checkpoint_rows,
    history_page,
    listed,
    state_at,
    thread_row,
)
from ..terminal import safe, visible
from .errors import EPILOG, EXIT_NOT_FOUND, CliError, library_errors
from .options import DB_OPTION, Db, need_db, pg_schema, prog, shown_db
from .output import (
    STATUS_STYLE,
    echo_json,
    err_console,
    new_table,
    out_console,
    print_errors,
    shell_word,
    show_id,
)
from .stores import bind_target, check_thread_graph, newest_records, open_store
from .targets import load_graph

HISTORY_LIMIT = 50
THREADS_LIMIT = 100


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--all", "show_all", is_flag=True,
              help="Include the threads subgraph nodes run in (parent::node:...).")
@click.option("--json", "as_json", is_flag=True, help="Print the threads as JSON.")
@click.option("--limit", default=THREADS_LIMIT, show_default=True, type=click.IntRange(1),
              help="Threads per page.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0),
              help="Skip this many of the most recently updated threads (the next page).")
@click.pass_context
def threads(ctx: click.Context, db: Db | None, show_all: bool, as_json: bool, limit: int,
            offset: int) -> None:
    """List the threads of the database with their status, most recently updated first, a
    page at a time (--limit, --offset)."""
    db = need_db(db)
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        infos = store.threads(limit=limit + 1, offset=offset)
        shown = listed(infos[:limit], show_all=show_all)
        graphs = store.graphs([t.thread_id for t in shown])
    more = len(infos) > limit
    rows = [thread_row(t, graphs.get(t.thread_id)) for t in shown]
    footer = (lambda: _more(_reading_command(ctx, db, "threads", show_all=show_all,
                                             as_json=as_json, limit=limit),
                            "--offset", offset + limit, len(rows))) if more else (lambda: None)
    if as_json:
        echo_json(rows)
        footer()
        return
    if not rows:
        err_console().print(Text(f"no threads in {shown_db(db)}" + (f" from offset {offset}"
                                                                    if offset else "")))
        footer()
        return
    out = out_console()
    out.print(Text(f"threads in {shown_db(db)}", style="bold"))
    table = new_table()
    table.add_column("thread", overflow="fold", min_width=8)
    for name, justify in (("status", "left"), ("step", "right"), ("checkpoint", "right"),
                          ("graph", "left"), ("updated", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        status = row["status"] + (" (live run)" if row["busy"] else "")
        graph = f"{row['graph']} ({row['graph_structure']})" if row["graph"] else "-"
        table.add_row(safe(row["thread_id"], one_line=True),
                      Text(status, style=STATUS_STYLE.get(row["status"], "")),
                      str(row["step"]), safe(row["checkpoint_id"], one_line=True),
                      safe(graph, one_line=True), row["time"])
    out.print(table)
    print_errors(out, [(f"thread {show_id(row['thread_id'])}", row["error"]) for row in rows])
    footer()


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--thread", required=True, help="The thread.")
@click.option("--graph", "target", metavar="GRAPH",
              help="Read through this graph (app.history()) instead of the stored writes.")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoints as JSON.")
@click.option("--limit", default=HISTORY_LIMIT, show_default=True, type=click.IntRange(1),
              help="Checkpoints per page.")
@click.option("--before", metavar="CHECKPOINT",
              help="Only checkpoints older than this one (the next page).")
@click.pass_context
def history(ctx: click.Context, db: Db | None, thread: str, target: str | None, as_json: bool,
            limit: int, before: str | None) -> None:
    """List a thread's checkpoints, newest first: step, nodes that ran, status, time; a page
    at a time (--limit, --before).

    Reads only the database (no user code) unless --graph is given.
    """
    db = need_db(db)
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        newest_records(store, db, thread)
        app = bind_target(target, load_graph(target), store.saver) if target is not None else None
        if app is not None and target is not None:
            check_thread_graph(app, thread, target, db)
        rows, cursor = history_page(store, thread, limit=limit, before=before, app=app)
    footer = (lambda: _more(_reading_command(ctx, db, "history", as_json=as_json, limit=limit,
                                             thread=thread, graph=target),
                            "--before", cursor, len(rows))) if cursor else (lambda: None)
    if as_json:
        echo_json(rows)
        footer()
        return
    if not rows:
        err_console().print(Text(f"thread {show_id(thread)} has no checkpoint older than "
                                 f"{show_id(str(before))}"))
        return
    out = out_console()
    out.print(Text(f"thread {show_id(thread)} in {shown_db(db)}", style="bold"))
    table = new_table()
    for name, justify, wrap in (("id", "right", False), ("step", "right", False),
                                ("kind", "left", False), ("nodes", "left", True),
                                ("status", "left", True), ("next", "left", True),
                                ("time", "left", False)):
        table.add_column(name, justify=justify, no_wrap=not wrap,  # type: ignore[arg-type]
                         overflow="fold", min_width=8 if wrap else None)
    for row in rows:
        status = row["status"]
        if row["failed_nodes"] and status == "failed":
            status += f" in {', '.join(row['failed_nodes'])}"
        if row["waits_for"]:
            status += f" (waits for {', '.join(row['waits_for'])})"
        next_cell = ", ".join(row["next"])
        if row["pending_writes"] and row["status"] in ("failed", "interrupted"):
            next_cell += f" (kept: {', '.join(row['pending_writes'])})"
        cells: list[RenderableType] = [
            safe(row["checkpoint_id"], one_line=True), str(row["step"]), safe(row["kind"]),
            _nodes_cell(row), safe(status, STATUS_STYLE.get(row["status"], ""), one_line=True),
            safe(next_cell.strip(), one_line=True), row["time"]]
        table.add_row(*cells)
    out.print(table)
    print_errors(out, [(f"checkpoint {row['checkpoint_id']}", row["error"]) for row in rows
                       if row["status"] == "failed" or row is rows[0]])
    footer()


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--thread", required=True, help="The thread.")
@click.option("--checkpoint", help="A checkpoint id (see `history`); default: the latest.")
@click.option("--graph", "target", metavar="GRAPH",
              help="Rebuild the state with this graph when the checkpoint stores no snapshot.")
def show(db: Db | None, thread: str, checkpoint: str | None, target: str | None) -> None:
    """Print a thread's state (latest or at --checkpoint) as JSON.

    A failed step's checkpoint stores the whole state; others mostly store only their writes
    (storage grows with what changed): with --graph the state is rebuilt exactly; without,
    the nearest stored state and the raw writes since are printed, and said so.
    """
    db = need_db(db)
    err = err_console()
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        records = newest_records(store, db, thread, 11)
        chain = store.load(thread, checkpoint)
        if chain is None:
            ids = ", ".join(r.id for r in records[:10])
            raise CliError(f"thread {thread!r} has no checkpoint {checkpoint!r}", EXIT_NOT_FOUND,
                           hint=f"its checkpoints, newest first: {ids}"
                                f"{' ...' if len(records) > 10 else ''}")
        head = chain.head
        row = checkpoint_rows(store, thread, [head], chain.records)[0]
        err.print(Text(_summary(thread, row)), style="dim")
        app = None
        if head.snapshot is None and target is not None:  # user code only when needed
            app = bind_target(target, load_graph(target), store.saver)
            check_thread_graph(app, thread, target, db)
        state, exact = state_at(thread, chain, app)
        if not exact:
            base = chain.records[0]
            err.print(Text(
                f"note: checkpoint {head.id} stores no snapshot, and without --graph the writes "
                "cannot be merged (that needs the state's reducers). Printed: the state stored "
                f"at checkpoint {base.id} (step {base.step}) and the raw writes since, as "
                "[node, index, update]. Pass --graph MODULE:ATTRIBUTE for the exact state.",
                style="yellow"))
        echo_json(state)


def _reading_command(ctx: click.Context, db: Db, command: str, *, show_all: bool = False,
                     as_json: bool = False, limit: int, **options: str | None) -> str:
    """The command line of a reading command, to print for its next page."""
    words = [command, "--db", shown_db(db)]
    if isinstance(db, str) and pg_schema() != DEFAULT_SCHEMA:
        words += ["--schema", pg_schema()]
    text = f"{prog(ctx)} {shlex.join(words)}"
    for option, value in options.items():
        if value is not None:
            text += f" --{option} {shell_word(value)}"
    text += "".join([" --all"] * show_all + [" --json"] * as_json)
    default = THREADS_LIMIT if command == "threads" else HISTORY_LIMIT
    return text + (f" --limit {limit}" if limit != default else "")


def _more(command: str, option: str, value: object, shown: int) -> None:
    """The footer of a page that is not the last: how to see the next one (on stderr, so
    stdout stays the table or JSON)."""
    err_console().print(Text(f"{shown} shown; more with: {command} {option} {value}", style="dim"))


def _nodes_cell(row: dict[str, Any]) -> Text:
    if row["nodes"]:  # they ran at the step before the checkpoint's, as the run printed them
        return safe(f"{', '.join(row['nodes'])} (step {row['nodes_step']})", "bold",
                    one_line=True)
    if row["compensates"]:
        return safe(f"↩ {row['compensates']}", "magenta", one_line=True)
    return safe(f"({row['kind']})", "dim", one_line=True)


def _summary(thread: str, row: dict[str, Any]) -> str:
    parts = [f"thread {show_id(thread)}", f"checkpoint {show_id(row['checkpoint_id'])}",
             f"step {row['step']}", row["status"]]
    if row["error"]:
        parts[-1] += f" ({visible(row['error'])})"
    if row["waits_for"]:
        parts.append(f"waits for {', '.join(row['waits_for'])}")
    if row["next"]:
        parts.append(f"next: {', '.join(row['next'])}")
    if row["pending_writes"]:
        parts.append(f"kept: {', '.join(row['pending_writes'])}")
    return " · ".join(parts)
