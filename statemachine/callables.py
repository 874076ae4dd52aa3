"""What the compiler reads off a user's function: how to call it with the state, the types its
annotations declare, and a fingerprint of its code."""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter

from .spec import CallableInfo


def inspect_callable(fn: Callable[..., Any], name: str) -> CallableInfo | str:
    """How to call `fn` with the state (and a context), or why it cannot be."""
    call = type(fn).__call__ if callable(fn) and not inspect.isroutine(fn) else None
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return CallableInfo(fn, name, is_async, wants_context=False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if not positional and not varargs:
        return "it takes no positional parameter, so it cannot receive the state"
    if len(required) > 2:
        return (f"it requires {len(required)} positional parameters "
                f"({', '.join(p.name for p in required)}); it gets the state and, "
                "optionally, a run context")
    if required_kw:
        return f"it requires keyword-only parameter(s) {', '.join(required_kw)}, never passed"
    return CallableInfo(fn, name, is_async, wants_context=len(required) == 2)


def payload_annotation(fn: Callable[..., Any]) -> Any:
    """The annotation of the node's first parameter (what a Send's payload is validated
    into), or None."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    if not params or params[0].name not in hints or hints[params[0].name] is Any:
        return None
    return hints[params[0].name]


def payload_type(annotation: Any) -> TypeAdapter[Any] | None:
    """A TypeAdapter of a Send payload's annotation."""
    if annotation is None:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:
        return None


def literal_targets(router: Callable[..., Any]) -> tuple[str, ...] | None:
    """The node names a router's `Literal[...]` (or `list[Literal[...]]`) return annotation
    allows, or None when it declares none."""
    try:
        hints = typing.get_type_hints(router)
    except Exception:
        return None
    annotation = hints.get("return")
    if annotation is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence, set, frozenset):
        args = typing.get_args(annotation)
        annotation = args[0] if args else None
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, str) for v in values):
            return values
    return None


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Stable across processes for the same code and captured constants, different otherwise:
    module, name, bytecode, constants, and the plain values (text, numbers, tuples) and
    functions among its default arguments and closure cells."""
    return hashlib.sha256(_describe(fn, depth=0).encode()).hexdigest()[:16]


def _describe(value: object, depth: int) -> str:
    if isinstance(value, (str, int, float, bytes, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, frozenset)) and depth < 3:
        return "(" + ",".join(_describe(v, depth + 1) for v in value) + ")"
    fn = value if callable(value) else None
    code = getattr(fn, "__code__", None)
    if code is None and fn is not None and not isinstance(fn, type):
        code = getattr(type(fn).__call__, "__code__", None)
    if code is None or depth >= 3:
        # a mutable or opaque object (a client, a counter): its type, not its changing value
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    consts = [c for c in code.co_consts if isinstance(c, (str, int, float, bytes, tuple))]
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
             if _has_contents(c)]
    defaults = getattr(fn, "__defaults__", None) or ()
    return "|".join([name, code.co_code.hex(), repr(code.co_names), repr(consts),
                     _describe(tuple(defaults), depth + 1), _describe(tuple(cells), depth + 1)])


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True
