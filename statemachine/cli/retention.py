"""`prune` and `delete`: old checkpoints and finished threads removed, or shown (--dry-run)."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from datetime import UTC, datetime

import click
from rich.text import Text

from checkpoints.base import Removed

from ..errors import ThreadNotFoundError
from ..terminal import safe, visible
from .errors import EPILOG, EXIT_USAGE, CliError, library_errors
from .options import DB_OPTION, Db, need_db, shown_db
from .output import echo_json, err_console, new_table, out_console, show_id
from .stores import bind_target, check_thread_graph, newest_records, open_store
from .targets import load_graph


def _unix_time(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An ISO 8601 date or date and time as a unix time; without a time zone, UTC."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"'{visible(value, one_line=True)}' is not an ISO 8601 date or date and time "
            "(e.g. 2026-01-31, 2026-01-31T18:00, 2026-01-31T18:00+01:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--keep-last", type=click.IntRange(1), metavar="N",
              help="Trim each thread (and the threads its subgraph nodes ran) to its N newest "
                   "checkpoints, plus the older ones those are rebuilt from.")
@click.option("--thread", help="Only this thread (with its subgraph threads).")
@click.option("--finished-before", callback=_unix_time, metavar="DATE",
              help="Only threads whose run finished (done or compensated) before DATE: ISO "
                   "8601, e.g. 2026-01-31 or 2026-01-31T18:00+01:00; a DATE without a time "
                   "zone is UTC. Without --keep-last, those threads are deleted whole.")
@click.option("--graph", "target", metavar="GRAPH",
              help="The graph the threads ran: with --keep-last, the oldest checkpoint each "
                   "thread keeps first gets its state stored whole, so nothing older has to "
                   "be kept to rebuild it (without it, those stay).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def prune(db: Db | None, keep_last: int | None, thread: str | None,
          finished_before: float | None, target: str | None, dry_run: bool,
          as_json: bool) -> None:
    """Remove old checkpoints (--keep-last) or finished threads (--finished-before).

    A kept checkpoint stays exactly readable, resumable and forkable: with it are kept the
    older checkpoints its state is rebuilt from, the whole run of a thread that has not
    finished (rollback needs it), and the subgraph threads its steps ran. Threads a live run
    holds are skipped. A SQLite file gets smaller on disk (one made before files had
    incremental auto-vacuum is rewritten once, by a VACUUM); PostgreSQL reuses the space for
    new rows. See docs/retention.md.
    """
    db = need_db(db)
    if keep_last is None and finished_before is None:
        raise CliError("say what to remove: --keep-last N (trim each thread to its N newest "
                       "checkpoints), --finished-before DATE (delete the threads that finished "
                       "before it), or both", EXIT_USAGE,
                       hint="to delete one thread whole: statemachine delete --db ... "
                            "--thread ID")
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=dry_run)
        if thread is not None:
            newest_records(store, db, thread)
        if target is not None and keep_last is not None and not dry_run:
            app = bind_target(target, load_graph(target), store.saver)
            if thread is not None:
                check_thread_graph(app, thread, target, db)
            removed = app.prune(thread, keep_last=keep_last, finished_before=finished_before)
        else:
            removed = store.call(lambda: store.saver.prune(
                thread_id=thread, keep_last=keep_last, finished_before=finished_before,
                dry_run=dry_run))
    _print_removed(db, removed, doing="prune", dry_run=dry_run, as_json=as_json)
    if keep_last is not None and not as_json and any(
            kept > keep_last for kept in removed.kept.values()):
        err_console().print(Text(
            f"some threads keep more than {keep_last}: their oldest kept checkpoints are "
            "rebuilt from older ones. " + (
                    "Run without --dry-run, the prune stores those states first (--graph) and "
                    "keeps no more than asked." if target is not None else
                    "With --graph GRAPH, prune stores those states first and keeps no more than "
                    "asked."), style="dim"))


@click.command(epilog=EPILOG)
@DB_OPTION
@click.option("--thread", required=True,
              help="The thread to delete, with the threads its subgraph nodes ran.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def delete(db: Db | None, thread: str, dry_run: bool, as_json: bool) -> None:
    """Delete a thread: its checkpoints, pending writes and queued job, and the threads its
    subgraph nodes ran, in one transaction. Refused (exit 5) while a live run holds it."""
    db = need_db(db)
    with contextlib.ExitStack() as stack, library_errors():
        store = open_store(db, stack, create=False, read_only=dry_run)
        try:
            removed = store.call(lambda: store.saver.delete_thread(thread, dry_run=dry_run))
        except ThreadNotFoundError:
            newest_records(store, db, thread)
            raise
    _print_removed(db, removed, doing=f"delete thread {show_id(thread)}", dry_run=dry_run,
                   as_json=as_json)


def _print_removed(db: Db, removed: Removed, *, doing: str, dry_run: bool,
                   as_json: bool) -> None:
    """What a prune or delete removed (or, dry, would remove): a table of the threads that
    lost checkpoints or went whole, the totals, the busy threads left alone, the file's size."""
    if as_json:
        echo_json({"dry_run": dry_run, **asdict(removed)})
        return
    out = out_console()
    verb = "would remove" if dry_run else "removed"
    out.print(Text(f"{doing} in {shown_db(db)}" + (" (dry run: nothing was removed)"
                                                   if dry_run else ""), style="bold"))
    gone = set(removed.threads)
    names = [*removed.checkpoints, *(t for t in removed.threads if t not in removed.checkpoints)]
    if names:
        table = new_table()
        table.add_column("thread", overflow="fold", min_width=8)
        table.add_column("checkpoints " + verb, justify="right", no_wrap=True)
        table.add_column("kept", justify="right", no_wrap=True)
        for name in names:
            kept = Text("thread deleted", style="red") if name in gone else \
                Text(f"{removed.kept.get(name, 0):,}")
            table.add_row(safe(name, one_line=True), f"{removed.checkpoints.get(name, 0):,}",
                          kept)
        out.print(table)
    trimmed = [t for t in removed.kept if t not in removed.checkpoints]
    out.print(Text(
        f"{verb}: {_plural(len(removed.threads), 'thread')}, "
        f"{_plural(sum(removed.checkpoints.values()), 'checkpoint')}, "
        f"{_plural(removed.pending_writes, 'pending write')}, "
        f"{_plural(removed.jobs, 'job')}"
        + (f"; {_plural(len(trimmed), 'other thread')} had nothing to remove"
           if trimmed else "")))
    if removed.skipped:
        out.print(Text(f"skipped {_plural(len(removed.skipped), 'thread')}: a live run holds "
                       "it or a worker is running its job (try again when it has finished): "
                       + ", ".join(show_id(t) for t in removed.skipped), style="yellow"))
    if removed.bytes_before is not None:
        after = "unchanged" if removed.bytes_after is None else _bytes(removed.bytes_after)
        out.print(Text(f"file: {_bytes(removed.bytes_before)} -> {after}" + (
            f" ({removed.bytes_before:,} -> {removed.bytes_after:,} bytes)"
            if removed.bytes_after is not None and removed.bytes_after != removed.bytes_before
            else "")))
    elif isinstance(db, str) and removed.removed_anything and not dry_run:
        out.print(Text("PostgreSQL reuses the space of the removed rows for new ones once "
                       "autovacuum has run; its files do not shrink.", style="dim"))
    for note in removed.notes:
        out.print(Text(f"note: {note}", style="yellow"))


def _bytes(count: int) -> str:
    """A size for people: 812 bytes, 64.4 MB."""
    size, units = float(count), ["KB", "MB", "GB"]
    if count < 1000:
        return f"{count:,} bytes"
    size /= 1000
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{size:,.1f} {units[0]}"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
