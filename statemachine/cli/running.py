"""`run` and `resume`: a graph run with its progress on stderr and its final state as JSON on
stdout; how it ended, and the command that continues it."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from checkpoints.base import FINISHED

from ..commands import NO_RESUME
from ..compiled import CompiledGraph
from ..errors import ThreadNotFoundError, ThreadStateError
from ..store_reader import DEFAULT_SCHEMA
from ..terminal import safe
from ..types import Snapshot
from ..waiting import INTERRUPT_EVENT, Interrupt
from .display import RunDisplay, fmt_seconds
from .errors import (
    EPILOG,
    EXIT_INTERRUPTED,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    CliError,
    library_errors,
    setup_exit_code,
)
from .options import (
    CONTEXT_OPTION,
    DB_OPTION,
    GRAPH_ARGUMENT,
    Db,
    json_object,
    pg_schema,
    prog,
    read_json,
    repeat_context,
    shown_db,
    with_options,
)
from .output import echo_json, err_console, shell_word, show_id, state_json
from .stores import build_app, check_thread_graph, no_thread

RUN_OPTIONS = [
    click.option("--max-steps", type=click.IntRange(min=1), default=10_000, show_default=True,
                 help="Stop (as failed, resumable) after this many steps."),
    click.option("-q", "--quiet", is_flag=True, help="No progress display; errors only."),
    click.option("--traceback", "show_traceback", is_flag=True,
                 help="Print the traceback of a node that fails."),
]


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@click.option("--input", "input_", default="{}", show_default=True, metavar="JSON",
              help="The input state: JSON text, @file.json, or - for stdin.")
@DB_OPTION
@click.option("--thread", help="Thread id (with --db; generated when omitted).")
@CONTEXT_OPTION
@with_options(RUN_OPTIONS)
@click.pass_context
def run(ctx: click.Context, target: str, input_: str, db: Db | None, thread: str | None,
        context_: Any, max_steps: int, quiet: bool, show_traceback: bool) -> None:
    """Run GRAPH and print its final state as JSON (progress on stderr).

    With --db every step is committed, so a failed run can be resumed, from any process, with
    the `resume` command it prints.
    """
    data = json_object(input_, "--input")
    with contextlib.ExitStack() as stack, library_errors():
        app = build_app(target, db, stack, create=True)
        if thread is not None and app.checkpointer is None:
            raise CliError("--thread needs --db FILE (where the run is stored)", EXIT_USAGE)
        if app.checkpointer is not None and thread is None:
            thread = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            if not quiet:
                err_console().print(Text(f"thread {show_id(thread)}", style="dim"))
        if thread is not None:
            check_thread_graph(app, thread, target, db)
        if app.checkpointer is None and (app.spec.interrupt_before or app.spec.interrupt_after):
            err_console().print(Text("note: the graph has interrupts, which pause a run only with "
                                     "--db", style="yellow"))
        _execute(ctx, app, target, db, thread,
                 lambda: app.invoke(data, thread_id=thread, max_steps=max_steps,
                                    context=context_),
                 quiet=quiet, show_traceback=show_traceback)


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to continue.")
@click.option("--event", metavar="JSON",
              help='Events for a run waiting in wait_for(): {"name": value}; text, @file or -.')
@click.option("--answer", metavar="JSON",
              help="The answer to what a node asked with interrupt() (any JSON value; several "
                   'questions: {"interrupt id": answer}); text, @file or -. Given to a run '
                   "that failed after an answer, it replaces that answer.")
@CONTEXT_OPTION
@with_options(RUN_OPTIONS)
@click.pass_context
def resume(ctx: click.Context, target: str, db: Db | None, thread: str, event: str | None,
           answer: str | None, context_: Any, max_steps: int, quiet: bool,
           show_traceback: bool) -> None:
    """Continue a failed, interrupted, waiting or crashed run of GRAPH; print its final state.

    Only what had not finished runs: committed steps and the kept updates of a failed step
    are not run again.
    """
    events = json_object(event, "--event") if event is not None else None
    answered = read_json(answer, "--answer") if answer is not None else NO_RESUME
    with contextlib.ExitStack() as stack, library_errors():
        app = build_app(target, db, stack, create=False)
        if app.checkpointer is None:
            raise CliError("resume needs --db FILE (where the run is stored)", EXIT_USAGE)
        check_thread_graph(app, thread, target, db)
        snapshot = _latest(app, thread)
        if snapshot is None:
            raise no_thread(thread, app.threads(), db)
        waits_for = _events(snapshot) if snapshot.status == "interrupted" else []
        asks = snapshot.status == "interrupted" and _asks(snapshot)
        if asks and answered is NO_RESUME:
            raise CliError(
                f"thread {thread!r} waits for an answer: "
                + "; ".join(f"{i.id} (node {i.node!r}): {json.dumps(i.value, default=str)}"
                            for i in snapshot.interrupts if _is_question(i))
                + "; give it with --answer", EXIT_USAGE,
                hint=_resume_command(ctx, target, db, thread, waits_for, asks=True))
        if waits_for and not (events and all(name in events for name in waits_for)):
            missing = [n for n in waits_for if not events or n not in events]
            raise CliError(
                f"thread {thread!r} is waiting for event {', '.join(map(repr, missing))}; "
                "deliver it with --event", EXIT_USAGE,
                hint=_resume_command(ctx, target, db, thread, waits_for))
        if snapshot.status in FINISHED:
            if events:
                raise CliError(f"thread {thread!r} finished ({snapshot.status}), so --event has "
                               "nowhere to go", EXIT_USAGE)
            if not quiet:
                err_console().print(Text(f"thread {show_id(thread)} already finished "
                                         f"({snapshot.status}); nothing to run"))
            echo_json(state_json(snapshot.state))
            return
        if not quiet:
            err_console().print(Text(f"thread {show_id(thread)}: {snapshot.status} at step "
                                     f"{snapshot.step}"
                                     + (f", next: {', '.join(snapshot.next)}" if snapshot.next
                                        else ""), style="dim"))
        _execute(ctx, app, target, db, thread,
                 lambda: app.resume(thread, event=events, answer=answered,
                                    max_steps=max_steps, context=context_),
                 quiet=quiet, show_traceback=show_traceback)


def _execute(ctx: click.Context, app: CompiledGraph, target: str, db: Db | None,
             thread: str | None, call: Callable[[], Any], *, quiet: bool,
             show_traceback: bool) -> None:
    """Run `call` (an invoke or resume of `app`) with the progress display; report the end."""
    err = err_console()
    captured = [n for n, spec in app.spec.nodes.items() if spec.on_error == "capture"]
    display = RunDisplay(err, thread, quiet=quiet, captured=captured)
    app.add_listener(display)
    try:
        with contextlib.redirect_stdout(sys.stderr), display.live():
            state = call()
    except KeyboardInterrupt:
        err.print(Text("✗ interrupted (Ctrl-C)", style="bold red"))
        if thread is not None and _durable(app):
            err.print(Text("  committed steps are kept; resume with: "
                           + _resume_command(ctx, target, db, thread)))
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        code = setup_exit_code(exc)
        if code is not None:
            hint = None
            if isinstance(exc, ThreadStateError) and thread is not None:
                hint = _thread_hint(ctx, app, target, db, thread)
            raise CliError(str(exc), code, details=list(getattr(exc, "__notes__", ())),
                           hint=hint) from exc
        _report_failure(ctx, err, app, target, db, thread, exc, display, show_traceback)
        sys.exit(EXIT_RUN_FAILED)
    finally:
        app.remove_listener(display)
    snapshot = _latest(app, thread)
    _report_end(ctx, err, app, target, db, thread, snapshot, display, quiet=quiet)
    echo_json(state_json(state))


def _latest(app: CompiledGraph, thread: str | None) -> Snapshot | None:
    if thread is None or app.checkpointer is None:
        return None
    try:
        return app.get_state(thread)
    except ThreadNotFoundError:
        return None


def _thread_hint(ctx: click.Context, app: CompiledGraph, target: str, db: Db | None,
                 thread: str) -> str | None:
    snapshot = _latest(app, thread)
    if snapshot is None:
        return None
    if snapshot.status in ("failed", "interrupted", "running"):
        return f"thread {thread!r} is {snapshot.status}; continue it with: " \
            + _resume_command(ctx, target, db, thread, _events(snapshot), asks=_asks(snapshot))
    return None


def _report_end(ctx: click.Context, err: Console, app: CompiledGraph, target: str,
                db: Db | None, thread: str | None, snapshot: Snapshot | None,
                display: RunDisplay, *, quiet: bool) -> None:
    status = snapshot.status if snapshot is not None else (display.last_status or "done")
    took = f"{display.steps} step{'s' if display.steps != 1 else ''} in " \
           f"{fmt_seconds(display.elapsed())}"
    where = f" (thread {show_id(thread)})" if thread is not None else ""
    if status == "interrupted" and snapshot is not None:
        events, asks = _events(snapshot), _asks(snapshot)
        questions = [i for i in snapshot.interrupts if _is_question(i)]
        why = "asking " + "; ".join(f"{i.node}: {json.dumps(i.value, default=str)}"
                                    for i in questions) if questions else \
            f"waiting for event {', '.join(map(repr, events))}" if events else \
            f"before {', '.join(snapshot.next)} (an interrupt)" if snapshot.next else \
            "(an interrupt)"
        err.print(Text.assemble(("⏸ ", "yellow"), f"paused at step {snapshot.step} {why}"
                                f"{where}; {took}"))
        if thread is not None and _durable(app):
            err.print(Text("  resume with: " + _resume_command(ctx, target, db, thread, events,
                                                               asks=asks)), soft_wrap=True)
        return
    if not quiet:
        err.print(Text.assemble(("✓ ", "green"), f"{status}: {took}{where}"))


def _report_failure(ctx: click.Context, err: Console, app: CompiledGraph, target: str,
                    db: Db | None, thread: str | None, exc: BaseException,
                    display: RunDisplay, show_traceback: bool) -> None:
    snapshot = _latest(app, thread)
    step = snapshot.step if snapshot is not None else \
        (display.failed[0][0] if display.failed else display.step)
    at = f" at step {step}" if step is not None else ""
    err.print(Text(f"✗ the run failed{at} after {fmt_seconds(display.elapsed())}",
                   style="bold red"))
    err.print(safe(f"  {type(exc).__name__}: {exc}"))
    for note in getattr(exc, "__notes__", ()):
        err.print(safe(f"  {note}", "dim"))
    if show_traceback:
        err.print(Text("".join(traceback.format_exception(exc)).rstrip(), style="dim"))
    if snapshot is None or thread is None:
        if app.checkpointer is None:
            err.print(Text("  nothing was saved: run with --db FILE --thread ID to be able to "
                           "resume a failed run"))
        return
    if snapshot.pending_writes:
        err.print(Text(f"  kept: the updates of {', '.join(snapshot.pending_writes)} (they will "
                       "not run again)"))
    if snapshot.status == "compensated":
        err.print(Text("  the run was rolled back: its compensations ran (status compensated)"))
    elif _durable(app):
        err.print(Text("  resume with: " + _resume_command(ctx, target, db, thread)))
    else:
        err.print(Text("  its store is in memory: use --db FILE to resume it from another "
                       "process"))


def _is_question(interrupt: Interrupt) -> bool:
    """An `interrupt` question (the others are `wait_for` events)."""
    return interrupt.waits_for is None


def _asks(snapshot: Snapshot) -> bool:
    return any(_is_question(i) for i in snapshot.interrupts)


def _events(snapshot: Snapshot) -> list[str]:
    """The wait_for events the snapshot waits for (not the interrupt questions); a pause an
    older version stored lists only its events."""
    if snapshot.interrupts:
        return [i.waits_for for i in snapshot.interrupts if i.waits_for is not None]
    return [e for e in snapshot.metadata.get("waits_for", [])
            if not e.startswith(INTERRUPT_EVENT)]


def resume_command(ctx: click.Context, target: str, db: Db | None, snapshot: Snapshot) -> str:
    """The command continuing the thread at `snapshot`, asking for what it waits for."""
    paused = snapshot.status == "interrupted"
    return _resume_command(ctx, target, db, snapshot.thread_id,
                           _events(snapshot) if paused else [],
                           asks=paused and _asks(snapshot))


def _resume_command(ctx: click.Context, target: str, db: Db | None, thread: str,
                    events: Sequence[str] = (), *, asks: bool = False) -> str:
    words = ["resume", target]
    if db is not None:
        words += ["--db", shown_db(db)]
        if isinstance(db, str) and pg_schema() != DEFAULT_SCHEMA:
            words += ["--schema", pg_schema()]
    command = f"{prog(ctx)} {shlex.join(words)} --thread {shell_word(thread)}"
    if events:
        template = "{" + ", ".join(f"{json.dumps(name)}: ..." for name in events) + "}"
        command += f" --event {shlex.quote(template)}"
    if asks:
        command += " --answer '...'"
    context_words, context_note = repeat_context()
    command += context_words
    notes = [context_note] if context_note else []
    if db is not None and shown_db(db) != str(db):
        notes.append("the --db password is hidden: put it back, or set PGPASSWORD")
    return command + "".join(f"  # {note}" for note in notes[:1]) + \
        "".join(f"; {note}" for note in notes[1:])


def _durable(app: CompiledGraph) -> bool:
    """Whether another process can resume the app's threads (a store outside this process)."""
    from checkpoints import MemoryCheckpointer

    return app.checkpointer is not None and \
        not isinstance(app.checkpointer, MemoryCheckpointer)
