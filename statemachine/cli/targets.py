"""Importing what GRAPH names (`module:attribute` or `path/to/file.py:attribute`), with
errors that say what was wrong and what there is instead."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from ..compiled import CompiledGraph
from ..errors import GraphValidationError, closest_name
from ..graph import StateGraph
from .errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError, invalid


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
        raise invalid(module_part, exc) from exc
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
