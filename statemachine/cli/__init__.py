"""The `statemachine` command line: check, draw, run and resume graphs, and read stored runs.

    statemachine validate GRAPH                       compile; print every problem
    statemachine draw GRAPH [-o flow.svg] [--format mermaid|dot|svg|png|pdf]
                            [--db runs.db --thread t1] [--xray]
    statemachine run GRAPH [--input JSON|@file.json|-] [--db runs.db] [--thread t1]
    statemachine resume GRAPH --db runs.db --thread t1 [--event JSON|@file.json] [--answer JSON]
    statemachine threads --db runs.db [--limit 100] [--offset N]   threads with their status
    statemachine history --db runs.db --thread t1 [--limit 50] [--before ID]   its checkpoints
    statemachine show --db runs.db --thread t1 [--checkpoint ID]   its state as JSON
    statemachine update GRAPH --db runs.db --thread t1 --values JSON [--as-node N] [--checkpoint ID]
    statemachine fork GRAPH --db runs.db --thread t1 --checkpoint ID [--to t2]   branch off, paused
    statemachine rollback GRAPH --db runs.db --thread t1   run the compensations of a failed run
    statemachine ui --db runs.db [--graph GRAPH] [--port 8765] [--allow-actions]   web viewer
    statemachine submit GRAPH --db URL --thread t1 [--input JSON] [--event JSON]   queue a run
    statemachine worker GRAPH --db URL [--concurrency 4] [--drain]   run queued runs
    statemachine jobs --db URL                         the queue: each job's status, attempts
    statemachine prune --db runs.db --keep-last N [--thread t1] [--finished-before DATE]
                       [--dry-run]                     drop old checkpoints or finished threads
    statemachine delete --db runs.db --thread t1 [--dry-run]   delete a thread whole
    statemachine store ls|get|search|rm --db runs.db ...   long-term memory items

--db takes a SQLite file or a PostgreSQL URL (postgresql://user@host/database; --schema names
the schema holding the tables, default statemachine).

GRAPH is `package.module:attribute` (or `path/to/file.py:attribute`) naming a `StateGraph`,
which is compiled, or a `CompiledGraph`. The current directory is importable, so
`examples.quickstart:graph` works from a project's root. With `--db FILE` the graph runs on a
`SQLiteCheckpointer(FILE)` (`PostgresCheckpointer(URL)` for a PostgreSQL URL): a StateGraph
is compiled with it, a CompiledGraph is rebuilt on it with the same spec and name (its compile
options kept).

`run` and `resume` show each step on stderr (nodes, step, time) and print the final state as
JSON on stdout; what nodes print goes to stderr too, so stdout stays JSON. Commands that run
nodes (`run`, `resume`, `update --as-node`, `rollback`, `worker`) take `--context JSON|@file`,
the graph's run-scoped context, which is never stored nor printed. `threads`,
`history` and `show` read the database without importing any user code; they never create a
database file. `threads` and `history` show a page (newest first) and, when there is more, the
command for the next page on stderr; `--json` pages the same way.

Everything printed comes from stored or user text made inert (control characters as visible
escapes, rich markup literally), and a PostgreSQL --db is shown without its password.

Exit codes:

    0  success; also a run that paused (an interrupt, or waiting for an event)
    1  the run failed: a node or router raised (the error and the resume command are printed)
    2  usage error or bad input: options, JSON, an object that is not a graph, input the state
       schema rejects, a thread that cannot do what was asked, a file that is not a database
    3  the graph is invalid (every problem is printed)
    4  not found: module, attribute, file, database, thread, checkpoint, Graphviz's `dot`
    5  the thread is busy: another run holds it right now
    130  interrupted with Ctrl-C (committed steps are kept; resume continues)
"""

from .main import cli, main, module_main

__all__ = ["cli", "main", "module_main"]
