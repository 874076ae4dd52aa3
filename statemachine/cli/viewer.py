"""`ui`: the web viewer of a store's runs, served with uvicorn (see `statemachine.ui`)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from .errors import EPILOG, EXIT_NOT_FOUND, EXIT_USAGE, CliError, library_errors
from .options import DB_OPTION, Db, need_db, pg_schema
from .output import err_console
from .stores import bind_target, no_file
from .targets import load_graph


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--graph", "targets", metavar="GRAPH", multiple=True,
              help="The graph the threads ran: shows diagrams with the run path, exact states, "
                   "and allows actions; repeat it for several (each thread is shown with the "
                   "one it is bound to). Without it, no user code is imported.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (loopback only by default).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@click.option("--allow-actions", is_flag=True,
              help="Show Resume and Rollback buttons (they write to the database; need "
                   "--graph). Without it the database is opened read-only.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another host name the viewer answers to (repeatable); loopback names, "
                   "--host and this machine's names always are.")
def ui(db: Db | None, targets: tuple[str, ...], host: str, port: int, allow_actions: bool,
       allow_hosts: tuple[str, ...]) -> None:
    """Serve a web viewer of the database's runs: threads, diagrams, timelines, states.

    Read-only by default: a SQLite file is opened with SQLite's read-only mode, a PostgreSQL
    database with read-only connections; nothing is ever written.
    A running thread updates on the page as it advances. Needs the `ui` extra (starlette and
    uvicorn).
    """
    db = need_db(db)
    try:
        import uvicorn

        from ..ui import create_app
    except ImportError as exc:
        raise CliError(f"the viewer needs {exc.name or 'starlette and uvicorn'}",
                       EXIT_NOT_FOUND, hint="pip install 'statemachine[ui]'") from exc
    if isinstance(db, Path) and not db.is_file():
        raise no_file(db)
    if allow_actions and not targets:
        raise CliError("--allow-actions needs --graph (resume and rollback run the graph)",
                       EXIT_USAGE)
    graphs = [(bind_target(target, load_graph(target), None), target) for target in targets]
    with library_errors():
        app = create_app(db, graphs=graphs, allow_actions=allow_actions, host=host,
                         allow_hosts=allow_hosts, schema=pg_schema())
    err = err_console()
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(Text(f"warning: listening on {host}: anyone who can reach it can read every "
                       "run's state" + ("; actions need the token in the URL below"
                                        if allow_actions else ""), style="yellow"))
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={app.state.token}" if app.state.token else ""  # actions need it
    err.print(Text.assemble(("statemachine ui: ", "bold"), f"http://{shown}:{port}/{query}",
                            (f"  ({db}, {'actions allowed' if allow_actions else 'read-only'}"
                             f"{', graph ' + ', '.join(targets) if targets else ''}; Ctrl-C "
                             "stops)", "dim")))
    uvicorn.run(app, host=host, port=port, log_level="warning")
