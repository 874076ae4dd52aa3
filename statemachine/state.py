"""What the executor knows about a state schema: its fields, their reducers, and fast per-update
validation and JSON encoding.

Each step validates only the update a node returned (one pydantic-core call through a cached
`TypeAdapter` of a total=False TypedDict mirroring the fields), never the whole state, and
builds the next state with a shallow `model_copy`, so a step costs what its writes cost.
"""

from __future__ import annotations

import inspect
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, TypeGuard, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WrapValidator,
)
from pydantic_core import PydanticSerializationError, from_json
from typing_extensions import TypedDict

from .constants import INPUT, UPDATE
from .errors import InvalidUpdateError, Problem, did_you_mean
from .messages import MessageMerger, add_messages, only_appends
from .migrations import Migration, UnknownStoredFields, migrate, old_names
from .mutation import Sizer
from .reducers import append
from .secret_types import looks_secret, mentions_secret, secret_paths

Reducer = Callable[[Any, Any], Any]
Write = tuple[str, dict[str, Any]]
"""(node name, validated update) — one task's contribution to a step."""

_CONFIG_KEYS = ("strict", "arbitrary_types_allowed", "str_strip_whitespace", "ser_json_bytes",
                "val_json_bytes", "ser_json_timedelta", "coerce_numbers_to_str")


def is_state_model(schema: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def reducer_problems(schema: type[BaseModel]) -> list[Problem]:
    """Problems with the reducers declared on `schema` (each must take two arguments)."""
    problems = []
    for name, info in schema.model_fields.items():
        found = [m for m in info.metadata if looks_like_reducer(m)]
        if len(found) > 1:
            problems.append(Problem(
                "invalid_reducer", f"field {name!r} declares {len(found)} reducers; a field "
                "takes at most one.", hint=f"keep one of {[_name_of(f) for f in found]}."))
        for reducer in found:
            if not _takes_two_arguments(reducer):
                problems.append(Problem(
                    "invalid_reducer", f"the reducer {_name_of(reducer)} of field {name!r} must "
                    "take two arguments (current, update).",
                    hint="write it as `def merge(current, update): ...`."))
    return problems


class StateSchema:
    """A pydantic state model, read once: fields, reducers, adapters for updates and writes."""

    def __init__(self, model: type[BaseModel], migrations: Sequence[Migration] = ()) -> None:
        self.model = model
        self.migrations = tuple(migrations)
        self._old_names = old_names(self.migrations)
        self.fields: tuple[str, ...] = tuple(model.model_fields)
        self.reducers: dict[str, Reducer] = {}
        annotations: dict[str, Any] = {}
        validators = _field_validators(model)
        for name, info in model.model_fields.items():
            constraints = [m for m in info.metadata if not looks_like_reducer(m)]
            constraints += validators.get(name, [])
            reducers = [m for m in info.metadata if looks_like_reducer(m)]
            if reducers:
                self.reducers[name] = reducers[0]
                if reducers[0] is add_messages:  # one message may be returned alone
                    constraints.insert(0, BeforeValidator(_one_or_many))
            annotations[name] = (
                Annotated[(info.annotation, *constraints)] if constraints else info.annotation
            )
        update_type = TypedDict(f"{model.__name__}Update", annotations, total=False)  # type: ignore[misc]
        model_config = cast(dict[str, Any], model.model_config)
        config = {k: model_config[k] for k in _CONFIG_KEYS if k in model_config}
        # a stored update with a field the model no longer has is an error, never dropped
        config["extra"] = "forbid"
        update_type.__pydantic_config__ = cast(ConfigDict, config)  # type: ignore[attr-defined]
        self._annotations = annotations
        self.message_fields: tuple[str, ...] = tuple(
            name for name, reducer in self.reducers.items() if reducer is add_messages)
        """The fields merged with `add_messages` (chat messages)."""
        self._aliases = {info.alias: name for name, info in model.model_fields.items()
                         if info.alias}
        self._stored_keys = frozenset((*self.fields, *self._aliases))
        self.sizer = Sizer(model)
        """What the "sizes" check of in-place changes measures (`mutation`)."""
        self._drops_unknown = model_config.get("extra", "ignore") == "ignore"
        """Whether the model would drop a stored field it does not have (extra="ignore"):
        then such a field no migration covers is refused here. A model that allows extra
        fields keeps them; one that forbids them refuses them itself."""
        self._secret_fields = frozenset(
            key for name, info in model.model_fields.items()
            if secret_paths(info.annotation, name) or looks_secret(name) or looks_secret(info.alias)
            for key in (name, info.alias) if key)
        """Fields (and aliases) whose rejected values errors never echo."""
        # typed Any: what they return is the update dict the rest of the engine works with
        self._update: TypeAdapter[Any] = TypeAdapter(update_type)
        self._writes: TypeAdapter[Any] = TypeAdapter(
            list[tuple[str, int, update_type]])
        self._chain_writes: TypeAdapter[Any] = TypeAdapter(
            list[list[tuple[str, int, update_type]]])

    # -- validation -------------------------------------------------------------------------

    def validate_input(self, value: object, *, thread_id: str | None = None) -> BaseModel:
        """The full state for a new run: a dict or an instance of the model. Message lists
        (`add_messages`) are merged into an empty one, so their messages get ids too."""
        if isinstance(value, self.model):
            return self._with_message_ids(value)
        if not isinstance(value, Mapping):
            expected, got = _qualified(self.model), _qualified(type(value))
            if got == expected or type(value).__name__ != self.model.__name__:
                expected, got = self.model.__name__, type(value).__name__
            raise InvalidUpdateError(
                f"the input must be a dict or a {expected}, not {got}"
                f"{_where(None, thread_id)}.", thread_id=thread_id)
        self._reject_unknown_keys(value, "the input", node=None, step=None, thread_id=thread_id)
        given = dict(value)
        for name, reducer in self.reducers.items():  # one message may be given alone
            if reducer is add_messages and name in given:
                given[name] = _one_or_many(given[name])
        try:
            state = self.model.model_validate(given, by_alias=True, by_name=True)
        except ValidationError as exc:
            field = _first_field(exc)
            reasons, hidden = _reasons(exc, self._secret_fields)
            raise InvalidUpdateError(
                f"the input is not a valid {self.model.__name__}"
                f"{_where(None, thread_id)}: {reasons}",
                field=field, thread_id=thread_id) from (None if hidden else exc)
        return self._with_message_ids(state)

    def _with_message_ids(self, state: BaseModel) -> BaseModel:
        changes = {name: add_messages([], getattr(state, name)) for name, reducer in
                   self.reducers.items() if reducer is add_messages and getattr(state, name)}
        return state.model_copy(update=changes) if changes else state

    def validate_update(
        self,
        update: object,
        *,
        node: str | None,
        step: int | None = None,
        thread_id: str | None = None,
    ) -> dict[str, Any]:
        """A node's return value as a validated update dict (None means no update)."""
        if update is None:
            return {}
        if isinstance(update, self.model):
            update = {name: getattr(update, name) for name in update.model_fields_set}
        elif not isinstance(update, Mapping):
            who = {INPUT: "the input is", UPDATE: "update_state() was given"}.get(
                node or "", f"node {node!r} returned" if node else "the update is")
            raise InvalidUpdateError(
                f"{who} {type(update).__name__} ({_short(update)}), expected a dict "
                f"of state fields, an instance of {self.model.__name__} or None"
                f"{_where(step, thread_id)}.",
                node=node, step=step, thread_id=thread_id)
        if not update:
            return {}
        what = _subject(node)
        self._reject_unknown_keys(update, what, node=node, step=step, thread_id=thread_id)
        if self._aliases and any(key in self._aliases for key in update):
            update = {self._aliases.get(key, key): value for key, value in update.items()}
        try:
            return self._update.validate_python(update)
        except ValidationError as exc:
            field = _first_field(exc)
            reasons, hidden = _reasons(exc, self._secret_fields)
            # pydantic's own text (a chained cause, shown in tracebacks) quotes the input
            raise InvalidUpdateError(
                f"{what} {_verb(what)} an invalid value for field {field!r}"
                f"{_where(step, thread_id)}: {reasons}",
                node=node, field=field, step=step, thread_id=thread_id
            ) from (None if hidden else exc)

    def _reject_unknown_keys(
        self, update: Mapping[Any, Any], what: str, *, node: str | None, step: int | None,
        thread_id: str | None,
    ) -> None:
        unknown = [key for key in update if key not in self.model.model_fields
                   and key not in self._aliases]
        if unknown:
            key = unknown[0]
            raise InvalidUpdateError(
                f"{what} {_verb(what)} unknown field {key!r}{did_you_mean(key, self.fields)}"
                f"{_where(step, thread_id)}; the fields of {self.model.__name__} are: "
                f"{', '.join(self.fields)}.",
                node=node, field=str(key), step=step, thread_id=thread_id)

    # -- applying updates -------------------------------------------------------------------

    def apply(
        self,
        state: BaseModel,
        writes: Sequence[Write],
        *,
        step: int | None = None,
        thread_id: str | None = None,
    ) -> BaseModel:
        """The state after `writes`, applied in the given order through the reducers.

        Two writers of one field without a reducer in the same step is an error: there is no
        way to choose between them that would not depend on timing.
        """
        changes: dict[str, Any] = {}
        writers: dict[str, str] = {}
        for node, update in writes:
            for name, value in update.items():
                reducer = self.reducers.get(name)
                if reducer is None:
                    if name in writers:
                        raise _two_writers(writers[name], node, name, step, thread_id)
                    writers[name] = node
                    changes[name] = value
                else:
                    current = changes[name] if name in changes else getattr(state, name)
                    changes[name] = _merge(reducer, current, value, node, name, step,
                                           thread_id)
        return state.model_copy(update=changes) if changes else state

    def replay(self, state: BaseModel, steps: Iterable[Sequence[Write]], *,
               thread_id: str | None = None) -> BaseModel:
        """The state after many committed steps, each applied as `apply` would, in order.

        What rebuilding a checkpoint from its snapshot does: the values are folded in one
        dict and the model is copied once at the end, and a list merged with `operator.add`
        or `reducers.append` (or a string with `operator.add`) grows in place instead of being
        copied at every step, so replaying n appends costs what they hold, not n times the
        field."""
        changes: dict[str, Any] = {}
        lists: dict[str, list[Any]] = {}  # list values made here (changes holds them too)
        strings: dict[str, list[str]] = {}  # string values as parts, joined when read
        chats: dict[str, MessageMerger] = {}  # add_messages fields, merged in one go

        def current(name: str) -> Any:
            if name in strings:
                changes[name] = "".join(strings.pop(name))
            return changes[name] if name in changes else getattr(state, name)

        for writes in steps:
            writers: dict[str, str] = {}
            for node, update in writes:
                for name, value in update.items():
                    reducer = self.reducers.get(name)
                    if reducer is add_messages:
                        chat = chats.get(name)
                        if chat is None:
                            chat = chats[name] = MessageMerger(current(name))
                        _merge(MessageMerger.add, chat, value, node, name, None, thread_id)
                        continue
                    if reducer is None:
                        if name in writers:  # only a damaged or hand-made store has this
                            raise _two_writers(writers[name], node, name, None, thread_id)
                        writers[name] = node
                        lists.pop(name, None)
                        strings.pop(name, None)
                        changes[name] = value
                        continue
                    if reducer in _APPENDS and type(value) is list:
                        if name in lists:
                            lists[name].extend(value)
                            continue
                        old = current(name)
                        if type(old) is list:
                            changes[name] = lists[name] = [*old, *value]
                            continue
                    elif reducer is operator.add and type(value) is str:
                        if name in strings:
                            strings[name].append(value)
                            continue
                        old = current(name)
                        if type(old) is str:
                            strings[name] = [old, value]
                            continue
                    old = current(name)
                    lists.pop(name, None)
                    changes[name] = _merge(reducer, old, value, node, name, None, thread_id)
        for name in list(strings):
            current(name)
        for name, chat in chats.items():
            changes[name] = chat.result()
        return state.model_copy(update=changes) if changes else state

    def appends_only(self, update: Mapping[str, Any]) -> bool:
        """Whether `update` only appends (each field merged with `operator.add` or
        `reducers.append`): replaying it
        reads no more than a snapshot of the state it makes would hold."""
        reducers = self.reducers
        return all(reducers.get(name) in _APPENDS or (
            reducers.get(name) is add_messages and only_appends(value))
            for name, value in update.items())

    def combine(self, updates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Several successive updates as one: reducer fields folded through their reducer
        (exact for associative reducers, as all stock ones are), other fields last-wins."""
        combined: dict[str, Any] = {}
        for update in updates:
            for name, value in update.items():
                reducer = self.reducers.get(name)
                if reducer is add_messages:  # its entries, in order: removals and replaced
                    combined[name] = [*combined.get(name, ()), *_entries(value)]  # ids may
                    continue  # name messages the subgraph's own updates do not hold
                combined[name] = reducer(combined[name], value) \
                    if reducer is not None and name in combined else value
        return combined

    # -- JSON encoding (checkpoints) --------------------------------------------------------

    def encode_update(self, update: Mapping[str, Any], *, node: str, step: int | None,
                      thread_id: str | None) -> str:
        """An update as JSON text; unserializable values fail here, before any commit."""
        try:
            return self._update.dump_json(update).decode()
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            field = self._unserializable_field(update)
            raise InvalidUpdateError(
                f"node {node!r} returned a value for field {field!r} that cannot be stored as "
                f"JSON{_where(step, thread_id)}: {exc}", node=node, field=field, step=step,
                thread_id=thread_id) from exc

    def encode_writes(self, writes: Sequence[tuple[str, int, str]]) -> str:
        """A step's writes [(node, index, update JSON)] as one JSON array."""
        return "[" + ",".join(f"[{json.dumps(n)},{i},{u}]" for n, i, u in writes) + "]"

    def decode_writes(self, text: str) -> list[tuple[str, int, dict[str, Any]]]:
        try:
            return self._writes.validate_json(text)
        except ValidationError as exc:
            return self._writes.validate_json(self._migrated(text, exc, 1))

    def decode_chain_writes(self, text: str) -> list[list[tuple[str, int, dict[str, Any]]]]:
        """The writes of many checkpoints in one call: a JSON array of `encode_writes` arrays."""
        try:
            return self._chain_writes.validate_json(text)
        except ValidationError as exc:
            return self._chain_writes.validate_json(self._migrated(text, exc, 2))

    def decode_update(self, text: str) -> dict[str, Any]:
        try:
            return self._update.validate_json(text)
        except ValidationError as exc:
            return self._update.validate_json(self._migrated(text, exc, 0))

    def _migrated(self, text: str, exc: ValidationError, depth: int) -> str:
        """Stored updates (`depth` arrays deep: an update, a step's writes, a chain's) whose
        fields the model no longer has, with the migrations applied; re-raises `exc` when it
        is about something else, `UnknownStoredFields` for fields no migration covers."""
        unknown = {str(e["loc"][-1]) for e in exc.errors() if e["type"] == "extra_forbidden"}
        if not unknown:
            raise exc
        uncovered = sorted(unknown - self._old_names)
        if uncovered:
            raise UnknownStoredFields(uncovered) from None

        def upgrade(value: Any, level: int) -> Any:
            if level == 0:
                return migrate(value, self.migrations) if isinstance(value, dict) else value
            return [[*w[:2], upgrade(w[2], 0)] if level == 1 and isinstance(w, list) and
                    len(w) == 3 else upgrade(w, level - 1) for w in value]

        return json.dumps(upgrade(json.loads(text), depth))

    def encode_state(self, state: BaseModel) -> str:
        return state.model_dump_json(round_trip=True)

    def decode_state(self, text: str) -> BaseModel:
        """A stored state; `UnknownStoredFields` if it has fields the model no longer has and
        no migration covers (they are never dropped silently)."""
        if self._drops_unknown or self.migrations:
            try:
                raw = from_json(text)
            except ValueError:  # not JSON: model_validate_json below says so, as pydantic does
                raw = None
            if isinstance(raw, dict) and not self._stored_keys.issuperset(raw):
                unknown = [key for key in raw if key not in self._stored_keys]
                uncovered = [key for key in unknown if key not in self._old_names]
                if uncovered and self._drops_unknown:
                    raise UnknownStoredFields(uncovered)
                if len(uncovered) < len(unknown):
                    text = json.dumps(migrate(raw, self.migrations))
        return self.model.model_validate_json(text, by_alias=True, by_name=True)

    def _unserializable_field(self, update: Mapping[str, Any]) -> str | None:
        for name, value in update.items():
            try:
                TypeAdapter(self._annotations[name]).dump_json(value)
            except Exception:
                return name
        return None


def _one_or_many(value: Any) -> Any:
    """An `add_messages` update given as one message (a `Message`, a dict or text) as a list
    of it; pydantic would otherwise read a message as the list of its fields."""
    return [value] if isinstance(value, (BaseModel, Mapping, str)) else value


def _entries(value: Any) -> list[Any]:
    """An `add_messages` update as a list of entries (one message may be given alone)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


_APPENDS = (operator.add, append)
"""Reducers that append (to a list or, operator.add only, a string): replay grows the value."""


def _merge(reducer: Reducer, current: Any, value: Any, node: str, field: str,
           step: int | None, thread_id: str | None) -> Any:
    """`reducer(current, value)`; its exception says which node's update into which field."""
    try:
        return reducer(current, value)
    except Exception as exc:
        exc.add_note(f"while merging the update of node {node!r} into field {field!r}"
                     f"{_where(step, thread_id)}")
        raise


def _two_writers(first: str, second: str, field: str, step: int | None,
                 thread_id: str | None) -> InvalidUpdateError:
    return InvalidUpdateError(
        f"nodes {first!r} and {second!r} both wrote field {field!r} in one step"
        f"{_where(step, thread_id)}, and it has no reducer to merge them. Give it one "
        "(Annotated[..., reducer]) or let one node write it.", node=second, field=field,
        step=step, thread_id=thread_id)


_VALIDATOR_KINDS = {"before": BeforeValidator, "after": AfterValidator, "wrap": WrapValidator,
                    "plain": PlainValidator}


def _field_validators(model: type[BaseModel]) -> dict[str, list[Any]]:
    """The model's @field_validator functions per field, as Annotated validators, so that
    updates are checked by the same validators as whole states."""
    found: dict[str, list[Any]] = {}
    for decorator in model.__pydantic_decorators__.field_validators.values():
        kind = _VALIDATOR_KINDS[decorator.info.mode]
        fields = decorator.info.fields
        for name in model.model_fields if "*" in fields else fields:
            found.setdefault(name, []).append(kind(decorator.func))
    return found


def looks_like_reducer(obj: object) -> bool:
    return callable(obj) and not isinstance(obj, type) and type(obj).__module__ not in (
        "annotated_types", "pydantic.functional_validators", "pydantic.functional_serializers",
        "pydantic.fields", "pydantic.types")


def _takes_two_arguments(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True  # cannot tell (some builtins): trust the user
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    return len(required) <= 2 and (len(positional) >= 2 or has_varargs) and not required_kw


def _name_of(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


def _first_field(exc: ValidationError) -> str | None:
    for error in exc.errors():
        if error.get("loc"):
            return str(error["loc"][0])
    return None


def _reasons(exc: ValidationError, secret_fields: frozenset[str]) -> tuple[str, bool]:
    """pydantic's reasons, each with the rejected value unless it is bound for a secret (a
    secret-typed field, or one named like a credential); and whether any value was hidden."""
    parts, hidden = [], False
    for error in exc.errors(include_url=False):
        path = error.get("loc", ())
        loc = ".".join(str(p) for p in path)
        value = error.get("input")
        if (path and path[0] in secret_fields) or any(looks_secret(p) for p in path) \
                or mentions_secret(value, secret_fields):
            hidden = True
            parts.append(f"{loc}: {_withheld(error['msg'], value)} (value hidden: a secret)")
        else:
            parts.append(f"{loc}: {error['msg']} (got {_short(value)})")
    return "; ".join(parts), hidden


def _withheld(message: str, value: object) -> str:
    """`message`, unless it quotes `value` (a validator's own text may)."""
    quoted = {repr(value), str(value)} if isinstance(value, (str, bytes)) else {repr(value)}
    if any(text and text in message for text in quoted):
        return "rejected by a validator whose message quotes the value (withheld)"
    return message


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _subject(node: str | None) -> str:
    """Who gave an update, as messages name it: a node, the run's input, update_state()."""
    if node == INPUT:
        return "the input"
    if node == UPDATE:
        return "the update_state() values"
    return f"node {node!r}" if node else "the update"


def _verb(subject: str) -> str:
    return {"the input": "has", "the update_state() values": "have"}.get(subject, "returned")


def _where(step: int | None, thread_id: str | None) -> str:
    parts = []
    if step is not None:
        parts.append(f"step {step}")
    if thread_id is not None:
        parts.append(f"thread {thread_id!r}")
    return (" (" + ", ".join(parts) + ")") if parts else ""
