"""Run-scoped context: per-call dependencies (a user id, an API client, a model name) handed
to every node and router of one call, never checkpointed.

    g = StateGraph(State, context_schema=Deps)          # a pydantic model, dataclass or TypedDict
    app.invoke(inp, thread_id="t", context={"user_id": "u1"})   # validated into Deps
    def node(state, ctx: RunContext): ctx.context.user_id

Without a `context_schema`, whatever is passed is handed on as it is. A resumed run gets the
context its own call passes: nothing of it is stored with the thread.
"""

from __future__ import annotations

from typing import Any, is_typeddict

from pydantic import TypeAdapter, ValidationError

from .errors import InvalidContextError


class ContextSchema:
    """Validates the `context=` of a call into the graph's `context_schema`."""

    def __init__(self, schema: type) -> None:
        self.schema = schema
        self._checks_instances = _has_instances(schema)
        self._adapter: TypeAdapter[Any] | None
        try:
            self._adapter = TypeAdapter(schema)
        except Exception:  # pydantic cannot read it (a class holding an API client, say):
            self._adapter = None  # its instances are taken as they are

    def validate(self, value: Any) -> Any:
        """The call's context as nodes see it. No context (None) is the schema built from its
        defaults, or an error naming the fields it needs; a class pydantic cannot read stays
        None then."""
        if self._checks_instances and isinstance(value, self.schema):
            return value
        if self._adapter is None:
            if value is None:
                return None
            raise InvalidContextError(
                f"context= must be a {self.schema.__name__} (the graph's context_schema), got "
                f"{type(value).__name__}.")
        try:
            return self._adapter.validate_python({} if value is None else value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the value'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False))
            what = f"this graph needs context= (its context_schema {self.schema.__name__}" \
                   f" has no default for everything)" if value is None else \
                f"context= does not fit the graph's context_schema {self.schema.__name__}"
            raise InvalidContextError(f"{what}: {problems}.") from None


def _has_instances(schema: type) -> bool:
    """Whether isinstance() works with `schema` (a TypedDict, of any flavour, refuses it)."""
    if is_typeddict(schema):
        return False
    try:
        isinstance(None, schema)
    except TypeError:
        return False
    return True


def check_context_schema(schema: object) -> str | None:
    """Why `schema` cannot be a context_schema; None when it can: any class (a pydantic
    model, dataclass or TypedDict validates dicts; others take their instances only)."""
    if not isinstance(schema, type):
        return f"context_schema must be a class (a pydantic model, dataclass or TypedDict), " \
               f"got {schema!r}."
    if not _has_instances(schema):  # a TypedDict: dicts are all it can take, so it must read
        try:
            TypeAdapter(schema)
        except Exception as exc:
            return f"context_schema {schema.__name__} cannot validate a context: " \
                   f"{str(exc).splitlines()[0]}"
    return None
