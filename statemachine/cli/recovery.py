"""`update`, `fork`, `rollback` and `rebind`: a person getting a stuck, failed or poisoned
run back by hand, or moving threads to a new version of their graph. Each prints what it
did, and the commands that continue it and that undo it."""

from __future__ import annotations

import contextlib
import shlex
import sys
from typing import Any

import click
from rich.text import Text

from .._sync import run_sync
from ..compiled import CompiledGraph
from ..errors import ThreadStateError
from ..graph_binding import decode_identity, same_name
from ..store_reader import DEFAULT_SCHEMA, listed, row_from_snapshot
from ..terminal import safe
from ..types import Snapshot
from .errors import EPILOG, EXIT_RUN_FAILED, EXIT_USAGE, CliError, library_errors
from .options import (
    CONTEXT_OPTION,
    DB_OPTION,
    GRAPH_ARGUMENT,
    Db,
    json_object,
    pg_schema,
    prog,
    repeat_context,
    shown_db,
)
from .output import echo_json, out_console, shell_word, show_id
from .stores import build_app, check_thread_graph

JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print the new checkpoint as JSON (as history --json does).")


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to change.")
@click.option("--values", required=True, metavar="JSON",
              help="The update: a JSON object of fields (text, @file.json or -), applied "
                   "through the state's reducers.")
@click.option("--as-node", metavar="NODE",
              help="Count the values as this node's output: the graph routes on from it (or, "
                   "for the one task a failed step still lacks, the step completes).")
@click.option("--checkpoint", metavar="ID", help="Branch off this older checkpoint instead "
                                                 "of the latest.")
@CONTEXT_OPTION
@JSON_OPTION
@click.pass_context
def update(ctx: click.Context, target: str, db: Db | None, thread: str, values: str,
           as_node: str | None, checkpoint: str | None, context_: Any, as_json: bool) -> None:
    """Change a thread's state: commit VALUES as a new checkpoint (app.update_state).

    Without --as-node the thread stays where it was (the same tasks due, a failed step's
    finished work kept), so `resume` continues it with the fixed state.
    """
    data = json_object(values, "--values")
    with contextlib.ExitStack() as stack, library_errors():
        app = _app(target, db, stack, thread)
        before = app.get_state(thread, checkpoint)
        head = app.get_state(thread) if checkpoint is not None else before
        after = app.update_state(thread, data, as_node=as_node, checkpoint_id=checkpoint,
                                 context=context_)
    if as_json:
        echo_json(row_from_snapshot(after))
        return
    out = out_console()
    out.print(Text(f"updated thread {show_id(thread)}: new checkpoint {after.checkpoint_id} "
                   f"({after.kind} after checkpoint {before.checkpoint_id}, step "
                   f"{before.step}); {_where(after)}"))
    # the fields, not their values: a value may be a secret, never printed
    out.print(safe(f"  fields: {', '.join(map(str, data)) or '(none)'}", "dim"))
    _continue(ctx, target, db, after)
    out.print(Text("  undo:     " + _undo(ctx, target, db, thread, head)), soft_wrap=True)


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to fork.")
@click.option("--checkpoint", required=True, metavar="ID",
              help="The checkpoint to branch off (see `history`).")
@click.option("--to", "to_thread", metavar="THREAD",
              help="Start a new thread from there instead; the source thread is left as it is.")
@JSON_OPTION
@click.pass_context
def fork(ctx: click.Context, target: str, db: Db | None, thread: str, checkpoint: str,
         to_thread: str | None, as_json: bool) -> None:
    """Branch off an older checkpoint, paused before the tasks that were due there (app.fork).

    `resume` then runs them again: a thread poisoned by a bad event or a bad update is saved
    this way. On the same thread the fork becomes its head and the newer checkpoints stay in
    its history.
    """
    with contextlib.ExitStack() as stack, library_errors():
        app = _app(target, db, stack, thread)
        head = app.get_state(thread)
        forked = app.fork(thread, checkpoint, to_thread=to_thread)
    if as_json:
        echo_json(row_from_snapshot(forked))
        return
    out = out_console()
    onto = f"new thread {show_id(to_thread)}" if to_thread is not None else \
        f"thread {show_id(thread)}"
    out.print(Text(f"forked thread {show_id(thread)} at checkpoint {checkpoint} (step "
                   f"{forked.step}) onto {onto}: new checkpoint {forked.checkpoint_id}; "
                   f"{_where(forked)}"))
    _continue(ctx, target, db, forked)
    if to_thread is not None:
        out.print(Text("  undo:     " + _command(ctx, ["delete"], db, to_thread)),
                  soft_wrap=True)
    else:
        out.print(Text("  undo:     " + _undo(ctx, target, db, thread, head)), soft_wrap=True)


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread whose failed run to undo.")
@CONTEXT_OPTION
@JSON_OPTION
@click.pass_context
def rollback(ctx: click.Context, target: str, db: Db | None, thread: str, context_: Any,
             as_json: bool) -> None:
    """Undo a failed run: run the compensations of its completed nodes, newest first
    (app.rollback). A rollback that stopped at a failing compensation continues where it
    stopped; one that finished does nothing."""
    with contextlib.ExitStack() as stack, library_errors():
        app = _app(target, db, stack, thread)
        before = app.get_state(thread)
        failure: Exception | None = None
        try:
            app.rollback(thread, context=context_)
        except Exception as exc:
            failure = exc
        after = app.get_state(thread)
        if failure is not None and after.status != "rollback_failed":
            raise failure  # not a compensation: the thread cannot be rolled back (why it says)
        undone = _compensations_since(app, thread, before.checkpoint_id)
        failed_at = _failed_checkpoint(app, thread)
    if as_json:
        echo_json({**row_from_snapshot(after), "compensated": undone})
        if failure is not None:
            sys.exit(EXIT_RUN_FAILED)
        return
    out = out_console()
    ran = ", ".join(f"{node} (step {step})" for step, node in undone) or "none"
    if failure is not None:
        out.print(Text(f"✗ the rollback of thread {show_id(thread)} stopped: the compensation of "
                       f"{_stopped_at(after)} failed", style="bold red"))
        out.print(safe(f"  {type(failure).__name__}: {failure}"))
        out.print(Text(f"  compensated before it: {ran}"))
        out.print(Text("  after fixing the cause, continue the rollback: "
                       + _command(ctx, ["rollback", target], db, thread, context=True)),
                  soft_wrap=True)
        sys.exit(EXIT_RUN_FAILED)
    if before.status == "compensated":
        out.print(Text(f"thread {show_id(thread)} was already rolled back (status compensated); "
                       "nothing to do"))
        return
    out.print(Text(f"rolled back thread {show_id(thread)}: compensations run: {ran}; status "
                   f"{after.status}"))
    out.print(Text("  a rollback is not undone; to run the failed run again from where it "
                   "failed: " + _command(ctx, ["fork", target], db, thread)
                   + f" --checkpoint {failed_at}"), soft_wrap=True)


def _app(target: str, db: Db | None, stack: contextlib.ExitStack,
         thread: str | None = None) -> CompiledGraph:
    """The graph on the store; with `thread`, checked to be the graph that runs it."""
    app = build_app(target, db, stack, create=False)
    if app.checkpointer is None:
        raise CliError("this command needs --db FILE (where the thread is stored)", EXIT_USAGE)
    if thread is not None:
        check_thread_graph(app, thread, target, db)
    return app


def _where(snapshot: Snapshot) -> str:
    what = f"status {snapshot.status}"
    if snapshot.next:
        what += f", next: {', '.join(snapshot.next)}"
    if snapshot.pending_writes:
        what += f", kept: {', '.join(snapshot.pending_writes)}"
    return what


def _continue(ctx: click.Context, target: str, db: Db | None, snapshot: Snapshot) -> None:
    """The command that continues the thread: with the answers or events it waits for."""
    from .running import resume_command

    if snapshot.next or snapshot.status not in ("done", "compensated"):
        out_console().print(Text("  continue: " + resume_command(ctx, target, db, snapshot)),
                            soft_wrap=True)


def _undo(ctx: click.Context, target: str, db: Db | None, thread: str, head: Snapshot) -> str:
    """The command that puts `thread` back at `head`: an empty update branching off it keeps
    its state, its due tasks and the finished work of a failed step."""
    return _command(ctx, ["update", target], db, thread) + \
        f" --checkpoint {head.checkpoint_id} --values '{{}}'"


def _command(ctx: click.Context, words: list[str], db: Db | None, thread: str, *,
             context: bool = False) -> str:
    """A command on `thread`; with `context`, one that runs nodes: given this command's
    --context (`repeat_context`)."""
    if db is not None:
        words = [*words, "--db", shown_db(db)]
        if isinstance(db, str) and pg_schema() != DEFAULT_SCHEMA:
            words += ["--schema", pg_schema()]
    command = f"{prog(ctx)} {shlex.join(words)} --thread {shell_word(thread)}"
    if context:
        context_words, note = repeat_context()
        command += context_words + (f"  # {note}" if note else "")
    return command


def _compensations_since(app: CompiledGraph, thread: str, since: str) -> list[tuple[int, str]]:
    """(step, node) of the compensations committed after checkpoint `since`, in order."""
    done: list[tuple[int, str]] = []
    for snapshot in app.history(thread, limit=1000):
        if snapshot.checkpoint_id == since:
            break
        undid = snapshot.metadata.get("compensates")
        if undid:
            done.append((undid[0], undid[1]))
    return done[::-1]


def _stopped_at(snapshot: Snapshot) -> str:
    failed = snapshot.metadata.get("undo_failed")
    return f"node {failed[1]!r} (step {failed[0]})" if failed else "a node"


def _failed_checkpoint(app: CompiledGraph, thread: str) -> str:
    """The checkpoint of the failed step the rollback undid."""
    for snapshot in app.history(thread, limit=1000):
        if snapshot.kind != "compensation":
            return snapshot.checkpoint_id
    return "ID"


@click.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", help="The thread to move to GRAPH.")
@click.option("--all", "every", is_flag=True,
              help="Every thread bound to a graph of GRAPH's name with another structure (the "
                   "threads of the previous version, after deploying a new one).")
@click.pass_context
def rebind(ctx: click.Context, target: str, db: Db | None, thread: str | None,
           every: bool) -> None:
    """Move threads to GRAPH on purpose (app.rebind): from then on GRAPH runs them and
    other graphs are refused.

    A thread is bound to the graph that first ran it (its name and structure); a new version
    of the graph with other nodes or edges is refused on it until it is moved. A thread due to
    run a node GRAPH lacks is left as it is. Checkpoints are not changed.
    """
    if (thread is None) == (not every):
        raise CliError("name the thread to move with --thread ID, or pass --all", EXIT_USAGE)
    with contextlib.ExitStack() as stack, library_errors():
        app = _app(target, db, stack)
        current = app.identity
        if thread is not None:
            threads = [thread]
        else:
            saver = app.checkpointer
            assert saver is not None
            names = [t.thread_id for t in listed(app.threads())]
            bound = run_sync(lambda: saver.thread_graphs(names))
            threads = [name for name in names if name in bound and (
                same_name(old := decode_identity(bound[name], name), current)
                and old.fingerprint != current.fingerprint)]
        out, refused = out_console(), 0
        if not threads:
            out.print(Text(f"no thread is bound to another version of graph "
                           f"{current.name!r}; nothing to do"))
        for name in threads:
            try:
                before = app.rebind(name)
            except ThreadStateError as exc:
                if thread is not None:
                    raise
                refused += 1
                out.print(safe(f"✗ thread {show_id(name)} left as it was: {exc}", "red"))
                continue
            was = before.describe() if before is not None else "no graph yet"
            out.print(safe(f"thread {show_id(name)}: now bound to graph {current.describe()}; "
                           f"before: {was}"))
            if before is not None and before != current:
                out.print(Text("  undo:     rebind it with the graph that ran it before: "
                               + _command(ctx, ["rebind", "GRAPH"], db, name)), soft_wrap=True)
    if refused:
        sys.exit(EXIT_USAGE)
