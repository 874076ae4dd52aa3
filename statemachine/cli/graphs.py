"""`validate` and `draw`: a graph checked, and drawn (with a stored run marked on it)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import click
from rich.text import Text

from ..compiled import CompiledGraph
from ..errors import GraphValidationError, Problem, ThreadNotFoundError
from .errors import (
    EPILOG,
    EXIT_INVALID_GRAPH,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    library_errors,
    problem_lines,
)
from .options import DB_OPTION, GRAPH_ARGUMENT, Db
from .output import echo_json, err_console, out_console
from .stores import build_app, check_thread_graph, no_thread
from .targets import load_graph


@click.command(epilog=EPILOG)
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
        echo_json({
            "graph": target, "valid": not problems,
            "nodes": list(app.nodes) if app is not None else [],
            "problems": [{"code": p.code, "message": p.message, "nodes": list(p.nodes),
                          "hint": p.hint} for p in problems],
            "warnings": notes})
    else:
        out = out_console()
        if problems:
            count = len(problems)
            out.print(Text(f"{target} is invalid: {count} problem{'s' if count != 1 else ''}",
                           style="bold red"))
            for line in problem_lines(problems):
                out.print(Text("  " + line), soft_wrap=True)
        else:
            assert app is not None
            spec = app.spec
            edges = spec.digraph.number_of_edges()
            out.print(Text.assemble(
                ("✓ ", "green"), f"{target} is valid: {len(spec.nodes)} node"
                f"{'s' if len(spec.nodes) != 1 else ''} ({', '.join(spec.nodes)}), {edges} "
                f"edge{'s' if edges != 1 else ''}"), soft_wrap=True)
        err = err_console()
        for note in notes:
            err.print(Text.assemble(("warning: ", "yellow"), note))
    if problems:
        sys.exit(EXIT_INVALID_GRAPH)


DRAW_FORMATS = ("mermaid", "dot", "svg", "png", "pdf")
_EXTENSIONS = {".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid", ".dot": "dot",
               ".gv": "dot", ".svg": "svg", ".png": "png", ".pdf": "pdf"}


@click.command(epilog=EPILOG)
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
        err_console().print(Text("note: --db is used only with --thread (the run to highlight)",
                                 style="yellow"))
    with contextlib.ExitStack() as stack, library_errors():
        app = build_app(target, db if thread is not None else None, stack, create=False)
        if thread is not None and app.checkpointer is None:
            raise CliError("--thread needs --db FILE (where the thread's run is stored)",
                           EXIT_USAGE)
        if thread is not None:
            _require_thread(app, thread, db)
            check_thread_graph(app, thread, target, db)
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
        err_console().print(Text(f"wrote {output} ({fmt}, {len(data):,} bytes)"))


def _require_thread(app: CompiledGraph, thread: str, db: Db | None) -> None:
    """ThreadNotFoundError, with the threads there are, when `thread` has no checkpoint."""
    try:
        app.get_state(thread)
    except ThreadNotFoundError:
        raise no_thread(thread, app.threads(), db) from None
