"""`submit`, `worker` and `jobs`: the work queue, from the command line."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click
from rich.text import Text

from ..commands import NO_RESUME
from ..errors import InvalidUpdateError, ThreadBusyError, ThreadNotFoundError, ThreadStateError
from ..store_reader import format_time
from ..terminal import safe, visible
from .errors import EPILOG, EXIT_USAGE, CliError, library_errors, setup_exit_code
from .options import (
    CONTEXT_OPTION,
    DB_OPTION,
    GRAPH_ARGUMENT,
    Db,
    json_object,
    need_db,
    read_json,
    shown_db,
)
from .output import (
    STATUS_STYLE,
    echo_json,
    err_console,
    new_table,
    out_console,
    print_errors,
    show_id,
)
from .stores import build_app, open_store


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to run.")
@click.option("--input", "input_", metavar="JSON",
              help="Input state (new thread, or a new run of a finished one): JSON text, "
                   "@file.json, or -. Without it the thread's unfinished run is continued.")
@click.option("--event", metavar="JSON",
              help='Events for a run waiting in wait_for(): {"name": value}.')
@click.option("--answer", metavar="JSON",
              help="The answer to what a node asked with interrupt() (any JSON value; several "
                   'questions: {"interrupt id": answer}); text, @file or -.')
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1),
              help="Runs of the job in all before it is given up as failed.")
def submit(target: str, db: Db | None, thread: str, input_: str | None, event: str | None,
           answer: str | None, max_attempts: int) -> None:
    """Queue a run of GRAPH for a worker and return at once (prints the thread id).

    The input is checked against the state schema now; `statemachine worker` runs it.
    """
    db = need_db(db)
    data = json_object(input_, "--input") if input_ is not None else None
    events = json_object(event, "--event") if event is not None else None
    answered = read_json(answer, "--answer") if answer is not None else NO_RESUME
    with contextlib.ExitStack() as stack, library_errors():
        app = build_app(target, db, stack, create=True)
        try:
            app.submit(data, thread, event=events, answer=answered, max_attempts=max_attempts)
        except (ThreadBusyError, ThreadStateError, ThreadNotFoundError,
                InvalidUpdateError) as exc:
            raise CliError(str(exc), setup_exit_code(exc) or EXIT_USAGE) from exc
    click.echo(visible(thread, one_line=True))


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1),
              help="Runs this worker executes at once.")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.01),
              help="Seconds between looks at an empty queue.")
@click.option("--lease", default=None, type=click.FloatRange(0.1),
              help="Seconds a thread lease or job claim lasts without renewal: how soon a dead "
                   "worker's job is taken over (default 30).")
@click.option("--retry-delay", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds before the first retry of a failed run; doubles each attempt.")
@click.option("--drain", is_flag=True, help="Exit once no job is queued or running.")
@click.option("--max-jobs", type=click.IntRange(1), help="Exit after claiming this many jobs.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary at the end.")
@CONTEXT_OPTION
def worker(target: str, db: Db | None, concurrency: int, poll: float, lease: float | None,
           retry_delay: float, drain: bool, max_jobs: int | None, quiet: bool,
           context_: Any) -> None:
    """Run queued runs of GRAPH (see `submit`), claiming them from the store's queue.

    Start as many workers as you like, on any machines that reach the database: each job goes
    to one worker; a job whose worker died is taken over once its claim expires, and continues
    from its last committed step; a failed run is retried up to its job's --max-attempts.
    Ctrl-C or SIGTERM stops claiming and hands running jobs back to the queue.
    """
    import asyncio
    import logging
    import signal

    from ..worker import Worker

    db = need_db(db)
    err = err_console()
    if not quiet:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")
    options = {} if lease is None else {"lease_seconds": lease}
    with contextlib.ExitStack() as stack, library_errors():
        app = build_app(target, db, stack, create=True, **options)

        async def work() -> Any:
            runner = Worker(app, concurrency=concurrency, poll_interval=poll,
                            retry_delay=retry_delay, context=context_)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, runner.stop)
            if not quiet:
                host = runner.identity.host.split("#")[0]
                err.print(Text(f"worker {host}:{runner.identity.pid} on "
                               f"{app.name} ({shown_db(db)}), concurrency {concurrency}"
                               + ("; exits when the queue is empty" if drain else
                                  "; Ctrl-C stops"), style="dim"))
            return await runner.run(drain=drain, max_jobs=max_jobs)

        stats = asyncio.run(work())
    summary = (f"worker done: {stats.claimed} claimed, {stats.done} done, "
               f"{stats.interrupted} interrupted, {stats.retried} retried, "
               f"{stats.failed} failed" + (f", {stats.lost} lost to other workers"
                                           if stats.lost else "")
               + (f", {stats.other_graph} handed back (their threads are bound to another "
                  "version of the graph: see `statemachine rebind`)" if stats.other_graph
                  else ""))
    err.print(Text(summary, style="bold"))
    for line in stats.errors:
        err.print(Text(f"  {line}", style="red"), soft_wrap=True)


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def jobs(db: Db | None, as_json: bool) -> None:
    """List the work queue: each submitted job with its status and attempts."""
    db = need_db(db)
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        infos = store.call(store.saver.jobs)
    rows: list[dict[str, Any]] = [
        {"thread_id": j.thread_id, "graph": j.graph, "status": j.status,
         "attempts": j.attempts, "max_attempts": j.max_attempts, "error": j.error,
         "submitted": format_time(j.submitted_at),
         "finished": format_time(j.finished_at) if j.finished_at else None} for j in infos]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        err_console().print(Text(f"no jobs in {shown_db(db)}"))
        return
    out = out_console()
    table = new_table()
    for name in ("thread", "graph", "status", "attempts", "submitted", "finished"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(safe(row["thread_id"], one_line=True), safe(row["graph"], one_line=True),
                      safe(row["status"], STATUS_STYLE.get(row["status"], "")),
                      f"{row['attempts']}/{row['max_attempts']}", row["submitted"],
                      row["finished"] or "")
    out.print(table)
    print_errors(out, [(f"thread {show_id(row['thread_id'])}", row["error"]) for row in rows])
