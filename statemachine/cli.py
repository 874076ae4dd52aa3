"""The `statemachine` command line: check, draw, run and resume graphs, and read stored runs.

    statemachine validate GRAPH                       compile; print every problem
    statemachine draw GRAPH [-o flow.svg] [--format mermaid|dot|svg|png|pdf]
                            [--db runs.db --thread t1] [--xray]
    statemachine run GRAPH [--input JSON|@file.json|-] [--db runs.db] [--thread t1]
    statemachine resume GRAPH --db runs.db --thread t1 [--event JSON|@file.json]
    statemachine threads --db runs.db [--limit 100] [--offset N]   threads with their status
    statemachine history --db runs.db --thread t1 [--limit 50] [--before ID]   its checkpoints
    statemachine show --db runs.db --thread t1 [--checkpoint ID]   its state as JSON
    statemachine ui --db runs.db [--graph GRAPH] [--port 8765] [--allow-actions]   web viewer
    statemachine submit GRAPH --db URL --thread t1 [--input JSON] [--event JSON]   queue a run
    statemachine worker GRAPH --db URL [--concurrency 4] [--drain]   run queued runs
    statemachine jobs --db URL                         the queue: each job's status, attempts
    statemachine prune --db runs.db --keep-last N [--thread t1] [--finished-before DATE]
                       [--dry-run]                     drop old checkpoints or finished threads
    statemachine delete --db runs.db --thread t1 [--dry-run]   delete a thread whole

--db takes a SQLite file or a PostgreSQL URL (postgresql://user@host/database; --schema names
the schema holding the tables, default statemachine).

GRAPH is `package.module:attribute` (or `path/to/file.py:attribute`) naming a `StateGraph`,
which is compiled, or a `CompiledGraph`. The current directory is importable, so
`examples.quickstart:graph` works from a project's root. With `--db FILE` the graph runs on a
`SQLiteCheckpointer(FILE)` (`PostgresCheckpointer(URL)` for a PostgreSQL URL): a StateGraph
is compiled with it, a CompiledGraph is rebuilt on it with the same spec and name (its compile
options kept).

`run` and `resume` show each step on stderr (nodes, step, time) and print the final state as
JSON on stdout; what nodes print goes to stderr too, so stdout stays JSON. `threads`,
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

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import sqlite3
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console, Group, RenderableType
from rich.text import Text

from checkpoints.base import FINISHED, Checkpointer, CheckpointRecord, Removed, ThreadInfo
from checkpoints.redaction import MASK, redact_dsn, secret_fragments

from .compiled import CompiledGraph
from .errors import (
    CheckpointError,
    GraphValidationError,
    InvalidUpdateError,
    Problem,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
    closest_name,
)
from .graph import StateGraph
from .records import INPUT
from .store_reader import (
    DEFAULT_SCHEMA,
    Store,
    bind_graph,
    checkpoint_rows,
    format_time,
    history_page,
    listed,
    location,
    state_at,
    thread_row,
)
from .store_reader import open_store as open_location
from .terminal import json_safe, safe, safe_console, visible
from .types import Snapshot, StepEvent

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID_GRAPH = 3
EXIT_NOT_FOUND = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130

EPILOG = """\b
GRAPH is package.module:attribute (or path/to/file.py:attribute), a StateGraph or a
CompiledGraph; the current directory is importable.
\b
Exit codes:
  0  success (also a run that paused for an interrupt or an event)
  1  the run failed: a node or router raised (the resume command is printed)
  2  usage error or bad input (options, JSON, not a graph, rejected input, thread state)
  3  the graph is invalid (every problem is printed)
  4  not found: module, attribute, file, database, thread, checkpoint, Graphviz's dot
  5  the thread is busy: another run holds it
  130  interrupted with Ctrl-C (committed steps are kept)
"""

T = TypeVar("T")


# -- errors -----------------------------------------------------------------------------------

class CliError(click.ClickException):
    """An error to print (without a traceback) and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *,
                 details: Sequence[str] = (), hint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it off the instance
        self.details = list(details)
        self.hint = hint

    def show(self, file: Any = None) -> None:
        # made visible before rich sees it: rich drops some controls (BEL, CR) itself, and
        # the console's own gate would then show an id that is not the real one
        console = _stderr()
        console.print(Text.assemble(("error: ", "bold red"), visible(self.message)))
        for line in self.details:
            console.print(Text("  " + visible(line)))
        if self.hint:
            console.print(Text.assemble(("  hint: ", "yellow"), visible(self.hint)))


def _problem_lines(problems: Sequence[Problem]) -> list[str]:
    lines = []
    for problem in problems:
        lines.append(f"✗ [{problem.code}] {problem.message}")
        if problem.nodes:
            lines.append(f"    nodes: {', '.join(map(str, problem.nodes))}")
        if problem.hint:
            lines.append(f"    hint: {problem.hint}")
    return lines


def _invalid(target: str, exc: GraphValidationError) -> CliError:
    count = len(exc.problems)
    return CliError(f"{target} is invalid: {count} problem{'s' if count != 1 else ''}",
                    EXIT_INVALID_GRAPH, details=_problem_lines(exc.problems))


@contextlib.contextmanager
def _library_errors() -> Iterator[None]:
    """Library errors a command does not handle itself, as CLI errors with their exit code."""
    try:
        yield
    except GraphValidationError as exc:
        raise CliError(str(exc), EXIT_INVALID_GRAPH) from exc
    except ThreadNotFoundError as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from exc
    except ThreadBusyError as exc:
        raise CliError(str(exc), EXIT_BUSY) from exc
    except (ThreadStateError, CheckpointError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except sqlite3.Error as exc:  # a damaged file, or one of an incompatible version
        raise CliError(f"cannot read the checkpoint database: {type(exc).__name__}: {exc}",
                       EXIT_USAGE) from exc


# -- consoles ---------------------------------------------------------------------------------

# Every console prints through `safe_console`: stored text cannot drive the terminal, and the
# passwords of --db never show, whatever message quotes them.

def _stderr() -> Console:
    return safe_console(scrub=_scrub, stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    console = safe_console(scrub=_scrub, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped: wide rows beat wrapped ones
        console = safe_console(scrub=_scrub, highlight=False, width=200)
    return console


def _echo_json(value: Any) -> None:
    click.echo(_scrub(json_safe(json.dumps(value, indent=2, ensure_ascii=False))))


_PASSWORDS: set[str] = set()
"""The passwords of the --db given to this command, scrubbed from everything printed."""


def _scrub(text: str) -> str:
    for password in sorted(_PASSWORDS, key=len, reverse=True):
        text = text.replace(password, MASK)
    return text


def _id(text: str) -> str:
    """A thread or checkpoint id inside a message: on one line, control characters visible."""
    return visible(text, one_line=True)


def _shell_word(word: str) -> str:
    """`word` quoted for a POSIX shell; one holding control characters as $'...', which shows
    them as escapes and still means the same word to bash and zsh."""
    if visible(word, one_line=True) == word:
        return shlex.quote(word)
    return "$'" + "".join(_shell_char(c) for c in word) + "'"


def _shell_char(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if visible(char, one_line=True) == char:
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}"


def _shown(db: Db) -> str:
    """A --db as messages show it: a PostgreSQL URL without its password."""
    return redact_dsn(db)


def _state_json(state: Any) -> Any:
    return state.model_dump(mode="json")


# -- loading graphs ---------------------------------------------------------------------------

def _importable_cwd() -> None:
    """Make the current directory importable, as `python -m` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _graphs_in(module: ModuleType) -> list[str]:
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and isinstance(value, (StateGraph, CompiledGraph))]


def _graphs_hint(target_module: str, module: ModuleType) -> str | None:
    found = _graphs_in(module)
    if not found:
        return f"{target_module} defines no StateGraph or CompiledGraph at module level"
    return "graphs there: " + ", ".join(f"{target_module}:{name}" for name in found)


def _import(module_part: str) -> ModuleType:
    """Import a module by dotted name or file path; CliError with a clear reason otherwise."""
    _importable_cwd()
    is_path = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    try:
        # what a module prints while it loads must not reach stdout, which carries JSON
        with contextlib.redirect_stdout(sys.stderr):
            if is_path:
                return _import_file(Path(module_part))
            return importlib.import_module(module_part)
    except CliError:
        raise
    except GraphValidationError as exc:
        raise _invalid(module_part, exc) from exc
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not is_path and (module_part == missing or module_part.startswith(missing + ".")):
            looking = f" (importing {module_part!r})" if missing != module_part else ""
            raise CliError(
                f"no module named {missing!r}{looking}", EXIT_NOT_FOUND,
                hint=f"run from the directory that contains it (the current directory, "
                     f"{os.getcwd()}, is importable) or set PYTHONPATH; a file works too: "
                     "path/to/file.py:graph") from exc
        raise _import_failed(module_part, exc) from exc
    except Exception as exc:
        raise _import_failed(module_part, exc) from exc


def _import_failed(module_part: str, exc: BaseException) -> CliError:
    return CliError(f"importing {module_part!r} failed: {type(exc).__name__}: {exc}",
                    EXIT_USAGE, details=_user_traceback(exc))


def _user_traceback(exc: BaseException) -> list[str]:
    """The traceback of `exc` without the frames of the import machinery and of this module."""
    summary = traceback.TracebackException.from_exception(exc)
    here = os.path.abspath(__file__)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not frame.filename.startswith("<frozen")
         and os.path.abspath(frame.filename) != here and "importlib" not in frame.filename])
    return "".join(summary.format()).rstrip().splitlines()


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise CliError(f"no file {str(path)!r}", EXIT_NOT_FOUND)
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules \
        else f"_statemachine_cli_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {str(path)!r} as Python code", EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # its siblings import as they would
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def load_graph(target: str) -> StateGraph | CompiledGraph:
    """The StateGraph or CompiledGraph that `module:attribute` names."""
    module_part, colon, attribute = target.rpartition(":")
    if not colon or not module_part or not attribute:
        hint = "e.g. examples.quickstart:graph or examples/quickstart.py:graph"
        if not colon and target:
            with contextlib.suppress(CliError):
                hint = _graphs_hint(target, _import(target)) or hint
        raise CliError(f"{target!r} is not MODULE:ATTRIBUTE", EXIT_USAGE, hint=hint)
    module = _import(module_part)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            known = [n for n in dir(value) if not n.startswith("_")]
            match = closest_name(part, known)
            raise CliError(
                f"{module_part} has no attribute {attribute!r}"
                + (f" (did you mean {match!r}?)" if match else ""),
                EXIT_NOT_FOUND, hint=_graphs_hint(module_part, module))
        value = getattr(value, part)
    if not isinstance(value, (StateGraph, CompiledGraph)):
        kind = "a function" if callable(value) and not isinstance(value, type) else \
            _a(type(value).__name__)
        raise CliError(f"{target} is {kind}, not a StateGraph or CompiledGraph", EXIT_USAGE,
                       hint=_graphs_hint(module_part, module))
    return value


Db = Path | str
"""A --db value: a SQLite file's path, or a PostgreSQL URL (text)."""


def open_store(db: Db, stack: contextlib.ExitStack, *, create: bool,
               read_only: bool = False, **options: Any) -> Store:
    """Open `db`, closed when `stack` is; unless `create`, a missing or empty file is an error
    and nothing is made. A PostgreSQL URL opens the schema given by --schema; `read_only` (the
    reading commands) neither creates nor changes anything."""
    if isinstance(db, Path) and not create:
        if not db.exists():
            raise _no_file(db)
        if db.is_file() and db.stat().st_size == 0:
            raise CliError(f"{str(db)!r} is empty, not a checkpoint database", EXIT_USAGE)
    try:
        store = open_location(db, schema=_schema(), read_only=read_only, **options)
    except CheckpointError as exc:
        connect = isinstance(db, str) and "cannot connect" in str(exc)
        raise CliError(str(exc), EXIT_NOT_FOUND if connect else EXIT_USAGE) from exc
    except ImportError as exc:  # psycopg, which a PostgreSQL URL needs
        raise CliError(str(exc), EXIT_NOT_FOUND,
                       hint="pip install 'statemachine[postgres]'") from exc
    stack.callback(store.close)
    return store


def _no_file(db: Path) -> CliError:
    return CliError(f"no database file {str(db)!r}", EXIT_NOT_FOUND,
                    hint="give the file a run wrote (statemachine run ... --db FILE)")


def build_app(target: str, db: Db | None, stack: contextlib.ExitStack, *,
              create: bool, **options: Any) -> CompiledGraph:
    """The graph `target` names, compiled, on the database `db` when given."""
    graph = load_graph(target)
    saver = open_store(db, stack, create=create, **options).saver if db is not None else None
    return _bind(target, graph, saver)


def _bind(target: str, graph: StateGraph | CompiledGraph,
          saver: Checkpointer | None) -> CompiledGraph:
    """`graph` (what `target` names) on `saver` (see `bind_graph`); CliError if invalid."""
    try:
        return bind_graph(graph, saver)
    except GraphValidationError as exc:
        raise _invalid(target, exc) from exc


# -- options ----------------------------------------------------------------------------------

def _read_json(value: str, option: str) -> Any:
    """JSON text, `@file.json`, or `-`/`@-` for stdin."""
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
            f"{exc.colno}", EXIT_USAGE, details=[line, " " * (exc.colno - 1) + "^"],
            hint=f"""quote it for the shell: {option} '{{"count": 0}}', or {option} @file.json"""
        ) from exc


def _json_object(value: str, option: str) -> dict[str, Any]:
    data = _read_json(value, option)
    if not isinstance(data, dict):
        raise CliError(f"{option} must be a JSON object ({{...}}), not {type(data).__name__}",
                       EXIT_USAGE)
    return data


def _with(options: Sequence[Callable[[T], T]]) -> Callable[[T], T]:
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
        _PASSWORDS.update(secret_fragments(db))
    return db


def _remember_schema(ctx: click.Context, param: click.Parameter, value: str) -> None:
    ctx.meta["statemachine.schema"] = value


def _schema() -> str:
    context = click.get_current_context(silent=True)
    return context.meta.get("statemachine.schema", DEFAULT_SCHEMA) if context else \
        DEFAULT_SCHEMA

DB_OPTION = _with([
    click.option("--db", callback=_parse_db, metavar="FILE|URL",
                 help="Checkpoint store: a SQLite file, or a PostgreSQL URL "
                      "(postgresql://user@host/database)."),
    click.option("--schema", default=DEFAULT_SCHEMA, show_default=True, expose_value=False,
                 envvar="STATEMACHINE_PG_SCHEMA", callback=_remember_schema, is_eager=True,
                 help="With a PostgreSQL --db: the schema holding the tables."),
])
GRAPH_ARGUMENT = click.argument("target", metavar="GRAPH")


# -- the command group -------------------------------------------------------------------------

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("statemachine")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"statemachine {_version()}")
        ctx.exit()


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and exit.")
def cli() -> None:
    """Durable, stateful workflows as graphs: validate, draw, run, resume and inspect them."""


# -- validate ---------------------------------------------------------------------------------

@cli.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(target: str, as_json: bool) -> None:
    """Compile GRAPH and print every problem; exit 3 when it is invalid."""
    problems: list[Problem] = []
    app: CompiledGraph | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            graph = load_graph(target)
        except CliError as exc:
            if exc.exit_code != EXIT_INVALID_GRAPH or not isinstance(
                    exc.__cause__, GraphValidationError):
                raise
            problems = exc.__cause__.problems  # the module compiles it when imported
        else:
            try:
                app = graph if isinstance(graph, CompiledGraph) else graph.compile()
            except GraphValidationError as exc:
                problems = exc.problems
    notes = [f"{w.category.__name__}: {w.message}" for w in caught]
    if as_json:
        _echo_json({
            "graph": target, "valid": not problems,
            "nodes": list(app.nodes) if app is not None else [],
            "problems": [{"code": p.code, "message": p.message, "nodes": list(p.nodes),
                          "hint": p.hint} for p in problems],
            "warnings": notes})
    else:
        out = _stdout()
        if problems:
            count = len(problems)
            out.print(Text(f"{target} is invalid: {count} problem{'s' if count != 1 else ''}",
                           style="bold red"))
            for line in _problem_lines(problems):
                out.print(Text("  " + line), soft_wrap=True)
        else:
            assert app is not None
            spec = app.spec
            edges = spec.digraph.number_of_edges()
            out.print(Text.assemble(
                ("✓ ", "green"), f"{target} is valid: {len(spec.nodes)} node"
                f"{'s' if len(spec.nodes) != 1 else ''} ({', '.join(spec.nodes)}), {edges} "
                f"edge{'s' if edges != 1 else ''}"), soft_wrap=True)
        err = _stderr()
        for note in notes:
            err.print(Text.assemble(("warning: ", "yellow"), note))
    if problems:
        sys.exit(EXIT_INVALID_GRAPH)


# -- draw -------------------------------------------------------------------------------------

DRAW_FORMATS = ("mermaid", "dot", "svg", "png", "pdf")
_EXTENSIONS = {".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid", ".dot": "dot",
               ".gv": "dot", ".svg": "svg", ".png": "png", ".pdf": "pdf"}


@cli.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write to this file (- for stdout); the format follows its extension.")
@click.option("--format", "fmt", type=click.Choice(DRAW_FORMATS),
              help="mermaid, dot, svg, png or pdf. Default: from -o's extension, else mermaid.")
@DB_OPTION
@click.option("--thread", help="Highlight this thread's run: visited nodes, taken edges, the "
                                "failed node (needs --db).")
@click.option("--xray", is_flag=True, help="Draw subgraphs' own nodes inside their node.")
def draw(target: str, output: Path | None, fmt: str | None, db: Db | None,
         thread: str | None, xray: bool) -> None:
    """Draw GRAPH as Mermaid, Graphviz DOT, SVG, PNG or PDF.

    Without -o, text formats (mermaid, dot, svg) are printed on stdout.
    SVG, PNG and PDF need Graphviz's `dot` program.
    """
    import visualize

    to_stdout = output is None or str(output) == "-"
    if fmt is None:
        if to_stdout:
            fmt = "mermaid"
        else:
            assert output is not None
            fmt = _EXTENSIONS.get(output.suffix.lower())
            if fmt is None:
                raise CliError(
                    f"cannot tell the format of {output.name!r} from its extension",
                    EXIT_USAGE, hint="name it .svg, .png, .pdf, .dot or .mmd, or pass "
                                     "--format")
    if to_stdout and fmt in ("png", "pdf") and output is None:
        raise CliError(f"{fmt} is binary: write it to a file with -o flow.{fmt} (or -o - to "
                       "pipe it)", EXIT_USAGE)
    if db is not None and thread is None:
        _stderr().print(Text("note: --db is used only with --thread (the run to highlight)",
                             style="yellow"))
    with contextlib.ExitStack() as stack, _library_errors():
        app = build_app(target, db if thread is not None else None, stack, create=False)
        if thread is not None and app.checkpointer is None:
            raise CliError("--thread needs --db FILE (where the thread's run is stored)",
                           EXIT_USAGE)
        if thread is not None:
            _require_thread(app, thread, db)
        if fmt == "mermaid":
            data: bytes = visualize.to_mermaid(app, thread_id=thread, xray=xray).encode()
        elif fmt == "dot":
            data = visualize.to_dot(app, thread_id=thread, xray=xray).encode()
        else:
            try:
                data = visualize.render_bytes(app, fmt, thread_id=thread, xray=xray)
            except visualize.GraphvizNotFoundError as exc:
                raise CliError(str(exc), EXIT_NOT_FOUND,
                               hint="--format mermaid and --format dot need no Graphviz") from exc
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        assert output is not None
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise CliError(f"cannot write {str(output)!r}: {exc}", EXIT_USAGE) from exc
        _stderr().print(Text(f"wrote {output} ({fmt}, {len(data):,} bytes)"))


def _require_thread(app: CompiledGraph, thread: str, db: Db | None) -> None:
    """ThreadNotFoundError, with the threads there are, when `thread` has no checkpoint."""
    try:
        app.get_state(thread)
    except ThreadNotFoundError:
        raise _no_thread(thread, app.threads(), db) from None


def _no_thread(thread: str, infos: Sequence[ThreadInfo], db: Db | None) -> CliError:
    """The error for a thread the store does not hold, naming those it does (`infos`)."""
    match = closest_name(thread, [t.thread_id for t in infos])
    where = f" in {_shown(db)!r}" if db is not None else ""
    shown = [t.thread_id for t in listed(infos)]
    hint = "threads there: " + ", ".join(map(_id, shown[:10])) + \
        (" ..." if len(shown) > 10 else "") if shown else "the database holds no threads yet"
    return CliError(f"no thread {thread!r}{where}"
                    + (f" (did you mean {match!r}?)" if match else ""), EXIT_NOT_FOUND,
                    hint=hint)


# -- run and resume ---------------------------------------------------------------------------

def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d} min"


class RunDisplay:
    """A listener that shows a run step by step on stderr.

    Each finished step is a line (step, nodes, time, retries, cache hits; "(kept)" marks a node
    whose update a failed attempt of the step kept, so it did not run again); while a step runs, a
    spinner names its nodes and the time elapsed (on a terminal). Steps of subgraphs are
    indented under their parent's.
    """

    def __init__(self, console: Console, thread_id: str | None, *, quiet: bool,
                 captured: Sequence[str] = ()) -> None:
        self.console, self.thread_id, self.quiet = console, thread_id, quiet
        self.captured = set(captured)
        self.started = time.perf_counter()
        self.step: int | None = None
        self.step_started: dict[tuple[str | None, int], float] = {}
        self.running: dict[str, None] = {}
        self.depth = 0
        self.steps = 0
        self.last_status: str | None = None
        self.failed: list[tuple[int, str, BaseException, int]] = []
        self._spinner: Any = None

    # -- listener hooks (called with keyword arguments) -----------------------------------------

    def on_step_start(self, thread_id: str | None, step: int, nodes: tuple[str, ...]) -> None:
        self.depth += 1
        self.step_started[(thread_id, step)] = time.perf_counter()
        if self._is_main(thread_id):
            self.step = step
            self.running = dict.fromkeys(nodes)

    def on_node_end(self, thread_id: str | None, step: int, node: str, update: Any,
                    seconds: float, metadata: Any) -> None:
        if self._is_main(thread_id):
            self.running.pop(node, None)

    def on_node_retry(self, thread_id: str | None, step: int, node: str, attempt: int,
                      error: BaseException, delay: float) -> None:
        self._line(Text.assemble(
            ("↻ ", "yellow"), f"step {step}  ", (node, "bold"),
            f"  attempt {attempt} failed ({type(error).__name__}: {error}); retrying in "
            f"{_fmt_seconds(delay)}"), thread_id)

    def on_node_error(self, thread_id: str | None, step: int, node: str,
                      error: BaseException, attempts: int) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if node in self.captured:
            self._line(Text.assemble(
                ("⚠ ", "yellow"), f"step {step}  ", (node, "bold"),
                f"  failed{tries}, captured into the state: {type(error).__name__}: {error}"),
                thread_id)
            return
        self.failed.append((step, node, error, attempts))
        self._line(Text.assemble(("✗ ", "bold red"), f"step {step}  ", (node, "bold red"),
                                 visible(f"  failed{tries}: {type(error).__name__}: {error}")),
                   thread_id)

    def on_step_end(self, event: StepEvent) -> None:
        started = self.step_started.pop((event.thread_id, event.step), None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        nested = not self._is_main(event.thread_id)
        if not nested:
            self.steps += 1
            self.last_status = event.status
            self.running = {}
        names = []
        for node in event.nodes:
            update = event.updates.get(node)
            name = f"{node} ×{len(update)}" if isinstance(update, list) else node
            if node not in event.timings:  # its update was kept from an earlier attempt
                name += " (kept)"
            names.append(name)
        extras = []
        for node, attempts in event.attempts.items():
            extras.append(f"{node}: {attempts} attempts")
        if event.cache_hits:
            extras.append("cached: " + ", ".join(event.cache_hits))
        self._line(Text.assemble(
            ("✓ ", "green"), f"step {event.step}  ", (", ".join(names), "bold"),
            (f"  {_fmt_seconds(elapsed)}", "dim"),
            (f"  ({'; '.join(extras)})" if extras else "", "yellow")), event.thread_id)
        self.depth = max(0, self.depth - 1)

    # -- drawing --------------------------------------------------------------------------------

    def _is_main(self, thread_id: str | None) -> bool:
        if thread_id is not None and self.thread_id is not None:
            return thread_id == self.thread_id
        return self.depth <= 1

    def _indent(self, thread_id: str | None) -> str:
        if thread_id is not None and self.thread_id is not None:
            level = thread_id.count("::") - self.thread_id.count("::")
        else:
            level = self.depth - 1
        return "    " * max(0, level)

    def _line(self, text: Text, thread_id: str | None) -> None:
        if not self.quiet:
            self.console.print(Text(self._indent(thread_id)) + text)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def render(self) -> RenderableType:
        from rich.spinner import Spinner

        if self._spinner is None:
            self._spinner = Spinner("dots", style="cyan")
        running = ", ".join(self.running) or "…"
        step = "starting" if self.step is None else f"step {self.step}"
        self._spinner.update(text=Text.assemble(
            f"{step}  ", (running, "bold"), (f"  {_fmt_seconds(self.elapsed())} elapsed", "dim")))
        return Group(self._spinner)

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if self.quiet or not self.console.is_terminal:
            yield
            return
        from rich.live import Live

        with Live(get_renderable=self.render, console=self.console, transient=True,
                  refresh_per_second=10, redirect_stdout=True, redirect_stderr=True):
            yield


def _prog(ctx: click.Context) -> str:
    return ctx.find_root().info_name or "statemachine"


def _resume_command(ctx: click.Context, target: str, db: Db | None, thread: str,
                    events: Sequence[str] = ()) -> str:
    words = ["resume", target]
    if db is not None:
        words += ["--db", _shown(db)]
        if isinstance(db, str) and _schema() != DEFAULT_SCHEMA:
            words += ["--schema", _schema()]
    command = f"{_prog(ctx)} {shlex.join(words)} --thread {_shell_word(thread)}"
    if events:
        template = "{" + ", ".join(f"{json.dumps(name)}: ..." for name in events) + "}"
        command += f" --event {shlex.quote(template)}"
    if db is not None and _shown(db) != str(db):
        command += "  # the --db password is hidden: put it back, or set PGPASSWORD"
    return command


def _durable(app: CompiledGraph) -> bool:
    """Whether another process can resume the app's threads (a store outside this process)."""
    from checkpoints import MemoryCheckpointer

    return app.checkpointer is not None and \
        not isinstance(app.checkpointer, MemoryCheckpointer)


def _setup_exit_code(exc: BaseException) -> int | None:
    """The exit code of an error that stopped the call before the run itself failed."""
    if isinstance(exc, ThreadBusyError):
        return EXIT_BUSY
    if isinstance(exc, ThreadNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ThreadStateError, CheckpointError)):
        return EXIT_USAGE
    if isinstance(exc, InvalidUpdateError) and exc.node in (None, INPUT):
        return EXIT_USAGE
    return None


def _execute(ctx: click.Context, app: CompiledGraph, target: str, db: Db | None,
             thread: str | None, call: Callable[[], Any], *, quiet: bool,
             show_traceback: bool) -> None:
    """Run `call` (an invoke or resume of `app`) with the progress display; report the end."""
    err = _stderr()
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
        code = _setup_exit_code(exc)
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
    _echo_json(_state_json(state))


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
        events = snapshot.metadata.get("waits_for", ())
        return f"thread {thread!r} is {snapshot.status}; continue it with: " \
            + _resume_command(ctx, target, db, thread, events)
    return None


def _report_end(ctx: click.Context, err: Console, app: CompiledGraph, target: str,
                db: Db | None, thread: str | None, snapshot: Snapshot | None,
                display: RunDisplay, *, quiet: bool) -> None:
    status = snapshot.status if snapshot is not None else (display.last_status or "done")
    took = f"{display.steps} step{'s' if display.steps != 1 else ''} in " \
           f"{_fmt_seconds(display.elapsed())}"
    where = f" (thread {_id(thread)})" if thread is not None else ""
    if status == "interrupted" and snapshot is not None:
        events = snapshot.metadata.get("waits_for", [])
        why = f"waiting for event {', '.join(map(repr, events))}" if events else \
            f"before {', '.join(snapshot.next)} (an interrupt)" if snapshot.next else \
            "(an interrupt)"
        err.print(Text.assemble(("⏸ ", "yellow"), f"paused at step {snapshot.step} {why}"
                                f"{where}; {took}"))
        if thread is not None and _durable(app):
            err.print(Text("  resume with: " + _resume_command(ctx, target, db, thread, events)))
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
    err.print(Text(f"✗ the run failed{at} after {_fmt_seconds(display.elapsed())}",
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


RUN_OPTIONS = [
    click.option("--max-steps", type=click.IntRange(min=1), default=10_000, show_default=True,
                 help="Stop (as failed, resumable) after this many steps."),
    click.option("-q", "--quiet", is_flag=True, help="No progress display; errors only."),
    click.option("--traceback", "show_traceback", is_flag=True,
                 help="Print the traceback of a node that fails."),
]


@cli.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@click.option("--input", "input_", default="{}", show_default=True, metavar="JSON",
              help="The input state: JSON text, @file.json, or - for stdin.")
@DB_OPTION
@click.option("--thread", help="Thread id (with --db; generated when omitted).")
@_with(RUN_OPTIONS)
@click.pass_context
def run(ctx: click.Context, target: str, input_: str, db: Db | None, thread: str | None,
        max_steps: int, quiet: bool, show_traceback: bool) -> None:
    """Run GRAPH and print its final state as JSON (progress on stderr).

    With --db every step is committed, so a failed run can be resumed, from any process, with
    the `resume` command it prints.
    """
    data = _json_object(input_, "--input")
    with contextlib.ExitStack() as stack, _library_errors():
        app = build_app(target, db, stack, create=True)
        if thread is not None and app.checkpointer is None:
            raise CliError("--thread needs --db FILE (where the run is stored)", EXIT_USAGE)
        if app.checkpointer is not None and thread is None:
            thread = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            if not quiet:
                _stderr().print(Text(f"thread {_id(thread)}", style="dim"))
        if app.checkpointer is None and (app.spec.interrupt_before or app.spec.interrupt_after):
            _stderr().print(Text("note: the graph has interrupts, which pause a run only with "
                                 "--db", style="yellow"))
        _execute(ctx, app, target, db, thread,
                 lambda: app.invoke(data, thread_id=thread, max_steps=max_steps),
                 quiet=quiet, show_traceback=show_traceback)


@cli.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to continue.")
@click.option("--event", metavar="JSON",
              help='Events for a run waiting in wait_for(): {"name": value}; text, @file or -.')
@_with(RUN_OPTIONS)
@click.pass_context
def resume(ctx: click.Context, target: str, db: Db | None, thread: str, event: str | None,
           max_steps: int, quiet: bool, show_traceback: bool) -> None:
    """Continue a failed, interrupted, waiting or crashed run of GRAPH; print its final state.

    Only what had not finished runs: committed steps and the kept updates of a failed step
    are not run again.
    """
    events = _json_object(event, "--event") if event is not None else None
    with contextlib.ExitStack() as stack, _library_errors():
        app = build_app(target, db, stack, create=False)
        if app.checkpointer is None:
            raise CliError("resume needs --db FILE (where the run is stored)", EXIT_USAGE)
        snapshot = _latest(app, thread)
        if snapshot is None:
            raise _no_thread(thread, app.threads(), db)
        waits_for = snapshot.metadata.get("waits_for", []) \
            if snapshot.status == "interrupted" else []
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
                _stderr().print(Text(f"thread {_id(thread)} already finished ({snapshot.status}); "
                                     "nothing to run"))
            _echo_json(_state_json(snapshot.state))
            return
        if not quiet:
            _stderr().print(Text(f"thread {_id(thread)}: {snapshot.status} at step {snapshot.step}"
                                 + (f", next: {', '.join(snapshot.next)}" if snapshot.next
                                    else ""), style="dim"))
        _execute(ctx, app, target, db, thread,
                 lambda: app.resume(thread, event=events, max_steps=max_steps),
                 quiet=quiet, show_traceback=show_traceback)


# -- reading stored runs (no user code) -------------------------------------------------------

def _newest_records(store: Store, db: Db, thread: str, count: int = 1
                    ) -> list[CheckpointRecord]:
    """The thread's `count` newest checkpoints; CliError naming the threads there if none."""
    records = store.records(thread, limit=count)
    if not records:
        raise _no_thread(thread, store.threads(limit=_KNOWN_THREADS), db)
    return records


_KNOWN_THREADS = 1000
"""How many of the latest threads a "no thread" error looks through for a close name."""

HISTORY_LIMIT = 50
THREADS_LIMIT = 100


def _more(command: str, option: str, value: object, shown: int) -> None:
    """The footer of a page that is not the last: how to see the next one (on stderr, so
    stdout stays the table or JSON)."""
    _stderr().print(Text(f"{shown} shown; more with: {command} {option} {value}", style="dim"))



_STATUS_STYLE = {"done": "green", "failed": "bold red", "interrupted": "yellow",
                 "running": "cyan", "compensated": "magenta"}


def _nodes_cell(row: dict[str, Any]) -> Text:
    if row["nodes"]:
        return safe(", ".join(row["nodes"]), "bold", one_line=True)
    if row["compensates"]:
        return safe(f"↩ {row['compensates']}", "magenta", one_line=True)
    return safe(f"({row['kind']})", "dim", one_line=True)


@cli.command(epilog=EPILOG)
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
    db = _need_db(db)
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        infos = store.threads(limit=limit + 1, offset=offset)
    more = len(infos) > limit
    rows = [thread_row(t) for t in listed(infos[:limit], show_all=show_all)]
    footer = (lambda: _more(_reading_command(ctx, db, "threads", show_all=show_all,
                                             as_json=as_json, limit=limit),
                            "--offset", offset + limit, len(rows))) if more else (lambda: None)
    if as_json:
        _echo_json(rows)
        footer()
        return
    if not rows:
        _stderr().print(Text(f"no threads in {_shown(db)}" + (f" from offset {offset}"
                                                               if offset else "")))
        footer()
        return
    from rich import box
    from rich.table import Table

    out = _stdout()
    out.print(Text(f"threads in {_shown(db)}", style="bold"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("thread", overflow="fold", min_width=8)
    for name, justify in (("status", "left"), ("step", "right"), ("checkpoint", "right"),
                          ("updated", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        status = row["status"] + (" (live run)" if row["busy"] else "")
        table.add_row(safe(row["thread_id"], one_line=True),
                      Text(status, style=_STATUS_STYLE.get(row["status"], "")),
                      str(row["step"]), safe(row["checkpoint_id"], one_line=True), row["time"])
    out.print(table)
    _print_errors(out, [(f"thread {_id(row['thread_id'])}", row["error"]) for row in rows])
    footer()


def _reading_command(ctx: click.Context, db: Db, command: str, *, show_all: bool = False,
                     as_json: bool = False, limit: int, **options: str | None) -> str:
    """The command line of a reading command, to print for its next page."""
    words = [command, "--db", _shown(db)]
    if isinstance(db, str) and _schema() != DEFAULT_SCHEMA:
        words += ["--schema", _schema()]
    text = f"{_prog(ctx)} {shlex.join(words)}"
    for option, value in options.items():
        if value is not None:
            text += f" --{option} {_shell_word(value)}"
    text += "".join([" --all"] * show_all + [" --json"] * as_json)
    default = THREADS_LIMIT if command == "threads" else HISTORY_LIMIT
    return text + (f" --limit {limit}" if limit != default else "")


@cli.command(epilog=EPILOG)
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
    db = _need_db(db)
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        _newest_records(store, db, thread)
        app = _bind(target, load_graph(target), store.saver) if target is not None else None
        rows, cursor = history_page(store, thread, limit=limit, before=before, app=app)
    footer = (lambda: _more(_reading_command(ctx, db, "history", as_json=as_json, limit=limit,
                                             thread=thread, graph=target),
                            "--before", cursor, len(rows))) if cursor else (lambda: None)
    if as_json:
        _echo_json(rows)
        footer()
        return
    if not rows:
        _stderr().print(Text(f"thread {_id(thread)} has no checkpoint older than "
                             f"{_id(str(before))}"))
        return
    from rich import box
    from rich.table import Table

    out = _stdout()
    out.print(Text(f"thread {_id(thread)} in {_shown(db)}", style="bold"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name, justify, wrap in (("id", "right", False), ("step", "right", False),
                                ("kind", "left", False), ("nodes", "left", True),
                                ("status", "left", True), ("next", "left", True),
                                ("time", "left", False)):
        table.add_column(name, justify=justify, no_wrap=not wrap,  # type: ignore[arg-type]
                         overflow="fold", min_width=8 if wrap else None)
    for row in rows:
        status = row["status"]
        if row["waits_for"]:
            status += f" (waits for {', '.join(row['waits_for'])})"
        next_cell = ", ".join(row["next"])
        if row["pending_writes"] and row["status"] in ("failed", "interrupted"):
            next_cell += f" (kept: {', '.join(row['pending_writes'])})"
        cells: list[RenderableType] = [
            safe(row["checkpoint_id"], one_line=True), str(row["step"]), safe(row["kind"]),
            _nodes_cell(row), safe(status, _STATUS_STYLE.get(row["status"], ""), one_line=True),
            safe(next_cell.strip(), one_line=True), row["time"]]
        table.add_row(*cells)
    out.print(table)
    _print_errors(out, [(f"checkpoint {row['checkpoint_id']}", row["error"]) for row in rows
                        if row["status"] == "failed" or row is rows[0]])
    footer()


def _print_errors(out: Console, errors: Sequence[tuple[str, str | None]]) -> None:
    """Errors under a table, whole: in a narrow column they would be cut or dropped."""
    for where, error in errors:
        if error:
            out.print(Text.assemble(safe(f"{where}: ", "bold red"), safe(error)), soft_wrap=True)


@cli.command(epilog=EPILOG)
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
    db = _need_db(db)
    err = _stderr()
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        records = _newest_records(store, db, thread, 11)
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
            app = _bind(target, load_graph(target), store.saver)
        state, exact = state_at(thread, chain, app)
        if not exact:
            base = chain.records[0]
            err.print(Text(
                f"note: checkpoint {head.id} stores no snapshot, and without --graph the writes "
                "cannot be merged (that needs the state's reducers). Printed: the state stored "
                f"at checkpoint {base.id} (step {base.step}) and the raw writes since, as "
                "[node, index, update]. Pass --graph MODULE:ATTRIBUTE for the exact state.",
                style="yellow"))
        _echo_json(state)


def _summary(thread: str, row: dict[str, Any]) -> str:
    parts = [f"thread {_id(thread)}", f"checkpoint {_id(row['checkpoint_id'])}",
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


def _need_db(db: Db | None) -> Db:
    if db is None:
        raise CliError("--db FILE is required: the checkpoint database to read", EXIT_USAGE)
    return db


# -- the work queue ---------------------------------------------------------------------------

@cli.command(epilog=EPILOG)
@GRAPH_ARGUMENT
@DB_OPTION
@click.option("--thread", required=True, help="The thread to run.")
@click.option("--input", "input_", metavar="JSON",
              help="Input state (new thread, or a new run of a finished one): JSON text, "
                   "@file.json, or -. Without it the thread's unfinished run is continued.")
@click.option("--event", metavar="JSON",
              help='Events for a run waiting in wait_for(): {"name": value}.')
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1),
              help="Runs of the job in all before it is given up as failed.")
def submit(target: str, db: Db | None, thread: str, input_: str | None, event: str | None,
           max_attempts: int) -> None:
    """Queue a run of GRAPH for a worker and return at once (prints the thread id).

    The input is checked against the state schema now; `statemachine worker` runs it.
    """
    db = _need_db(db)
    data = _json_object(input_, "--input") if input_ is not None else None
    events = _json_object(event, "--event") if event is not None else None
    with contextlib.ExitStack() as stack, _library_errors():
        app = build_app(target, db, stack, create=True)
        try:
            app.submit(data, thread, event=events, max_attempts=max_attempts)
        except (ThreadBusyError, ThreadStateError, ThreadNotFoundError,
                InvalidUpdateError) as exc:
            raise CliError(str(exc), _setup_exit_code(exc) or EXIT_USAGE) from exc
    click.echo(visible(thread, one_line=True))


@cli.command(epilog=EPILOG)
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
def worker(target: str, db: Db | None, concurrency: int, poll: float, lease: float | None,
           retry_delay: float, drain: bool, max_jobs: int | None, quiet: bool) -> None:
    """Run queued runs of GRAPH (see `submit`), claiming them from the store's queue.

    Start as many workers as you like, on any machines that reach the database: each job goes
    to one worker; a job whose worker died is taken over once its claim expires, and continues
    from its last committed step; a failed run is retried up to its job's --max-attempts.
    Ctrl-C or SIGTERM stops claiming and hands running jobs back to the queue.
    """
    import asyncio
    import logging
    import signal

    from .worker import Worker

    db = _need_db(db)
    err = _stderr()
    if not quiet:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")
    options = {} if lease is None else {"lease_seconds": lease}
    with contextlib.ExitStack() as stack, _library_errors():
        app = build_app(target, db, stack, create=True, **options)

        async def work() -> Any:
            runner = Worker(app, concurrency=concurrency, poll_interval=poll,
                            retry_delay=retry_delay)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, runner.stop)
            if not quiet:
                host = runner.identity.host.split("#")[0]
                err.print(Text(f"worker {host}:{runner.identity.pid} on "
                               f"{app.name} ({_shown(db)}), concurrency {concurrency}"
                               + ("; exits when the queue is empty" if drain else
                                  "; Ctrl-C stops"), style="dim"))
            return await runner.run(drain=drain, max_jobs=max_jobs)

        stats = asyncio.run(work())
    summary = (f"worker done: {stats.claimed} claimed, {stats.done} done, "
               f"{stats.interrupted} interrupted, {stats.retried} retried, "
               f"{stats.failed} failed" + (f", {stats.lost} lost to other workers"
                                           if stats.lost else ""))
    err.print(Text(summary, style="bold"))
    for line in stats.errors:
        err.print(Text(f"  {line}", style="red"), soft_wrap=True)


@cli.command(epilog=EPILOG)
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def jobs(db: Db | None, as_json: bool) -> None:
    """List the work queue: each submitted job with its status and attempts."""
    db = _need_db(db)
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=True)
        infos = store.call(store.saver.jobs)
    rows: list[dict[str, Any]] = [
        {"thread_id": j.thread_id, "graph": j.graph, "status": j.status,
         "attempts": j.attempts, "max_attempts": j.max_attempts, "error": j.error,
         "submitted": format_time(j.submitted_at),
         "finished": format_time(j.finished_at) if j.finished_at else None} for j in infos]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        _stderr().print(Text(f"no jobs in {_shown(db)}"))
        return
    from rich import box
    from rich.table import Table

    out = _stdout()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("thread", "graph", "status", "attempts", "submitted", "finished"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(safe(row["thread_id"], one_line=True), safe(row["graph"], one_line=True),
                      safe(row["status"], _STATUS_STYLE.get(row["status"], "")),
                      f"{row['attempts']}/{row['max_attempts']}", row["submitted"],
                      row["finished"] or "")
    out.print(table)
    _print_errors(out, [(f"thread {_id(row['thread_id'])}", row["error"]) for row in rows])


# -- retention --------------------------------------------------------------------------------

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


def _print_removed(db: Db, removed: Removed, *, doing: str, dry_run: bool,
                   as_json: bool) -> None:
    """What a prune or delete removed (or, dry, would remove): a table of the threads that
    lost checkpoints or went whole, the totals, the busy threads left alone, the file's size."""
    if as_json:
        _echo_json({"dry_run": dry_run, **asdict(removed)})
        return
    out = _stdout()
    verb = "would remove" if dry_run else "removed"
    out.print(Text(f"{doing} in {_shown(db)}" + (" (dry run: nothing was removed)"
                                                 if dry_run else ""), style="bold"))
    gone = set(removed.threads)
    names = [*removed.checkpoints, *(t for t in removed.threads if t not in removed.checkpoints)]
    if names:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
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
                       + ", ".join(_id(t) for t in removed.skipped), style="yellow"))
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


@cli.command(epilog=EPILOG)
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
    db = _need_db(db)
    if keep_last is None and finished_before is None:
        raise CliError("say what to remove: --keep-last N (trim each thread to its N newest "
                       "checkpoints), --finished-before DATE (delete the threads that finished "
                       "before it), or both", EXIT_USAGE,
                       hint="to delete one thread whole: statemachine delete --db ... "
                            "--thread ID")
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=dry_run)
        if thread is not None:
            _newest_records(store, db, thread)
        if target is not None and keep_last is not None and not dry_run:
            app = _bind(target, load_graph(target), store.saver)
            removed = app.prune(thread, keep_last=keep_last, finished_before=finished_before)
        else:
            removed = store.call(lambda: store.saver.prune(
                thread_id=thread, keep_last=keep_last, finished_before=finished_before,
                dry_run=dry_run))
    _print_removed(db, removed, doing="prune", dry_run=dry_run, as_json=as_json)
    if keep_last is not None and not as_json and any(
            kept > keep_last for kept in removed.kept.values()):
        _stderr().print(Text(
            f"some threads keep more than {keep_last}: their oldest kept checkpoints are "
            "rebuilt from older ones. " + (
                "Run without --dry-run, the prune stores those states first (--graph) and "
                "keeps no more than asked." if target is not None else
                "With --graph GRAPH, prune stores those states first and keeps no more than "
                "asked."), style="dim"))


@cli.command(epilog=EPILOG)
@DB_OPTION
@click.option("--thread", required=True,
              help="The thread to delete, with the threads its subgraph nodes ran.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def delete(db: Db | None, thread: str, dry_run: bool, as_json: bool) -> None:
    """Delete a thread: its checkpoints, pending writes and queued job, and the threads its
    subgraph nodes ran, in one transaction. Refused (exit 5) while a live run holds it."""
    db = _need_db(db)
    with contextlib.ExitStack() as stack, _library_errors():
        store = open_store(db, stack, create=False, read_only=dry_run)
        try:
            removed = store.call(lambda: store.saver.delete_thread(thread, dry_run=dry_run))
        except ThreadNotFoundError:
            _newest_records(store, db, thread)
            raise
    _print_removed(db, removed, doing=f"delete thread {_id(thread)}", dry_run=dry_run,
                   as_json=as_json)


# -- ui ---------------------------------------------------------------------------------------

@cli.command(epilog=EPILOG)
@DB_OPTION
@click.option("--graph", "target", metavar="GRAPH",
              help="The graph the threads ran: shows diagrams with the run path, exact states, "
                   "and allows actions. Without it, no user code is imported.")
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
def ui(db: Db | None, target: str | None, host: str, port: int, allow_actions: bool,
       allow_hosts: tuple[str, ...]) -> None:
    """Serve a web viewer of the database's runs: threads, diagrams, timelines, states.

    Read-only by default: a SQLite file is opened with SQLite's read-only mode, a PostgreSQL
    database with read-only connections; nothing is ever written.
    A running thread updates on the page as it advances. Needs the `ui` extra (starlette and
    uvicorn).
    """
    db = _need_db(db)
    try:
        import uvicorn

        from .ui import create_app
    except ImportError as exc:
        raise CliError(f"the viewer needs {exc.name or 'starlette and uvicorn'}",
                       EXIT_NOT_FOUND, hint="pip install 'statemachine[ui]'") from exc
    if isinstance(db, Path) and not db.is_file():
        raise _no_file(db)
    if allow_actions and target is None:
        raise CliError("--allow-actions needs --graph (resume and rollback run the graph)",
                       EXIT_USAGE)
    graph = _bind(target, load_graph(target), None) if target is not None else None
    with _library_errors():
        app = create_app(db, graph=graph, graph_name=target, allow_actions=allow_actions,
                         host=host, allow_hosts=allow_hosts, schema=_schema())
    err = _stderr()
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(Text(f"warning: listening on {host}: anyone who can reach it can read every "
                       "run's state" + ("; actions need the token in the URL below"
                                        if allow_actions else ""), style="yellow"))
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={app.state.token}" if app.state.token else ""  # actions need it
    err.print(Text.assemble(("statemachine ui: ", "bold"), f"http://{shown}:{port}/{query}",
                            (f"  ({db}, {'actions allowed' if allow_actions else 'read-only'}"
                             f"{', graph ' + target if target else ''}; Ctrl-C stops)", "dim")))
    uvicorn.run(app, host=host, port=port, log_level="warning")


# -- entry points -----------------------------------------------------------------------------

def _module_prog() -> str:
    """How to call this interpreter's `-m statemachine` from a shell, as short as is exact."""
    python = sys.executable or "python"
    name = os.path.basename(python)
    found = shutil.which(name)
    if found and os.path.realpath(found) == os.path.realpath(python):
        python = name
    return f"{shlex.quote(python)} -m statemachine"


def main(argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> NoReturn:
    """The console script: `statemachine ...` (see the module docstring)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name or
             "statemachine")
    raise SystemExit(EXIT_OK)  # pragma: no cover - click exits itself


def module_main() -> NoReturn:
    """`python -m statemachine ...`."""
    main(prog_name=_module_prog())


__all__ = ["cli", "main"]
