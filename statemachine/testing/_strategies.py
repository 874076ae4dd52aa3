"""`states(Model)`: hypothesis strategies of valid instances of a pydantic state model.

`hypothesis.strategies.from_type` knows nothing of pydantic constraints, so each field gets a
strategy built from its annotation and its metadata (`Field(ge=..., max_length=...,
pattern=...)`, `annotated_types` markers, `Literal`, enums, nested models, optionals,
collections), and the assembled values go through the model's own validation, which also
applies validators and filters out the rare combination they reject.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import types
import typing
from collections import abc
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..errors import did_you_mean
from ..messages import CHAT_ROLES, Message

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_MAX_SIZE = 6
"""Collections without a `max_length` get at most this many items (more via an override)."""
DEFAULT_MAX_TEXT = 24
"""Strings without a `max_length` get at most this many characters."""

_CONSTRAINT_ATTRS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length",
                     "pattern", "allow_inf_nan", "max_digits", "decimal_places")
_CONSTRAINT_MODULES = ("annotated_types", "pydantic")


@dataclass
class Constraints:
    """The constraints that bear on generating one value (tightest wins when repeated)."""

    gt: Any = None
    ge: Any = None
    lt: Any = None
    le: Any = None
    multiple_of: Any = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    allow_inf_nan: bool = False
    max_digits: int | None = None
    decimal_places: int | None = None
    predicates: list[Any] = field(default_factory=list)

    def add(self, items: typing.Iterable[Any]) -> Constraints:
        merged = Constraints(**{k: getattr(self, k) for k in _CONSTRAINT_ATTRS},
                             predicates=list(self.predicates))
        for item in items:
            merged._add_one(item)
        return merged

    def _add_one(self, item: Any) -> None:
        if item is None:
            return
        if isinstance(item, FieldInfo):
            for inner in item.metadata:
                self._add_one(inner)
            return
        module = type(item).__module__.split(".")[0]
        if module not in _CONSTRAINT_MODULES:
            return
        func = getattr(item, "func", None)
        if type(item).__name__ == "Predicate" and callable(func):
            self.predicates.append(func)
            return
        for attr in _CONSTRAINT_ATTRS:
            value = getattr(item, attr, None)
            if value is None:
                continue
            current = getattr(self, attr)
            if attr in ("gt", "ge", "min_length") and current is not None:
                value = max(current, value)
            elif attr in ("lt", "le", "max_length", "max_digits", "decimal_places") \
                    and current is not None:
                value = min(current, value)
            setattr(self, attr, value)


NO_CONSTRAINTS = Constraints()


class _Builder:
    """Builds strategies for types; remembers models being built so recursive ones work."""

    def __init__(self) -> None:
        self.models: dict[type[BaseModel], SearchStrategy[Any]] = {}

    def model(self, model: type[BaseModel],
              overrides: typing.Mapping[str, Any] | None = None) -> SearchStrategy[Any]:
        if not overrides and model in self.models:
            return self.models[model]
        if not overrides:  # a model containing itself (a tree) refers back through deferred
            self.models[model] = st.deferred(lambda: self.models[model])
        fields: dict[str, SearchStrategy[Any]] = {}
        for name, info in model.model_fields.items():
            if overrides and name in overrides:
                fields[name] = _as_strategy(overrides[name])
            else:
                fields[name] = self.field(model, name, info)
        strategy = st.fixed_dictionaries(fields).map(_validator(model)).filter(_is_valid)
        if not overrides:
            self.models[model] = strategy
        return strategy

    def field(self, model: type[BaseModel], name: str, info: FieldInfo) -> SearchStrategy[Any]:
        try:
            return self.of(info.annotation, NO_CONSTRAINTS.add(info.metadata))
        except _Unsupported as exc:
            raise TypeError(
                f"cannot generate field {name!r} of {model.__name__}: {exc}. Pass a strategy "
                f"for it: states({model.__name__}, {name}=...)") from None

    def of(self, tp: Any, c: Constraints = NO_CONSTRAINTS) -> SearchStrategy[Any]:
        strategy = self._of(tp, c)
        for predicate in c.predicates:
            strategy = strategy.filter(predicate)
        return strategy

    def _of(self, tp: Any, c: Constraints) -> SearchStrategy[Any]:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self.of(args[0], c.add(tp.__metadata__))
        if tp is None or tp is type(None):
            return st.none()
        if tp is typing.Any or tp is object or isinstance(tp, TypeVar):
            return _ANY
        if origin is typing.Literal:
            return st.sampled_from(args)
        if origin is typing.Union or origin is types.UnionType:
            members = sorted(args, key=lambda a: a is not type(None))  # None first: shrinks to it
            plain = c.add(()) if not c.predicates else Constraints(
                **{k: getattr(c, k) for k in _CONSTRAINT_ATTRS})  # predicates: on the union
            return st.one_of([self._of(a, plain) for a in members])
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return st.sampled_from(list(tp))
        if isinstance(tp, type) and issubclass(tp, Message):  # chat messages, not removals
            return st.builds(Message, role=st.sampled_from(CHAT_ROLES), content=_text(c),
                             id=st.none())
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.model(tp)
        if tp is bool:
            return st.booleans()
        if tp is int:
            return _integers(c)
        if tp is float:
            return _floats(c)
        if tp is Decimal:
            return _decimals(c)
        if tp is str:
            return _text(c)
        if tp is bytes:
            return st.binary(min_size=c.min_length or 0, max_size=_max_size(c, DEFAULT_MAX_TEXT))
        if tp in (dt.datetime, dt.date, dt.time, dt.timedelta):
            return _bounded(st.from_type(tp), c)
        if origin in (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection) \
                or tp in (list, abc.Sequence):
            return st.lists(self._item(args), **_sizes(c))
        if origin in (set, abc.Set, abc.MutableSet) or tp is set:
            return st.sets(self._item(args), **_sizes(c))
        if origin is frozenset or tp is frozenset:
            return st.frozensets(self._item(args), **_sizes(c))
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                return st.lists(self._item(args[:1]), **_sizes(c)).map(tuple)
            if args == ((),):
                return st.just(())
            return st.tuples(*(self.of(a) for a in args))
        if origin in (dict, abc.Mapping, abc.MutableMapping) or tp is dict:
            key, value = (args or (str, typing.Any))
            return st.dictionaries(self.of(key), self.of(value), **_sizes(c))
        try:
            return st.from_type(tp)
        except Exception as exc:  # hypothesis raises on types it cannot resolve at all
            raise _Unsupported(f"no strategy for {tp!r} ({exc})") from None

    def _item(self, args: tuple[Any, ...]) -> SearchStrategy[Any]:
        return self.of(args[0]) if args else _ANY


class _Unsupported(Exception):
    pass


_ANY: SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8))
"""Values for `Any`: small JSON-friendly scalars."""


def _as_strategy(value: Any) -> SearchStrategy[Any]:
    return value if isinstance(value, SearchStrategy) else st.just(value)


_INVALID = object()


def _validator(model: type[BaseModel]) -> typing.Callable[[dict[str, Any]], Any]:
    def validate(values: dict[str, Any]) -> Any:
        try:
            return model.model_validate(values, by_alias=True, by_name=True)
        except ValidationError:
            return _INVALID
    return validate


def _is_valid(value: Any) -> bool:
    return value is not _INVALID


def _max_size(c: Constraints, default: int) -> int:
    if c.max_length is not None:
        return c.max_length
    return max(default, (c.min_length or 0) + default)


def _sizes(c: Constraints) -> dict[str, Any]:
    return {"min_size": c.min_length or 0, "max_size": _max_size(c, DEFAULT_MAX_SIZE)}


def _integers(c: Constraints) -> SearchStrategy[int]:
    low = None if c.ge is None else math.ceil(c.ge)
    if c.gt is not None:
        low = max(low, math.floor(c.gt) + 1) if low is not None else math.floor(c.gt) + 1
    high = None if c.le is None else math.floor(c.le)
    if c.lt is not None:
        high = min(high, math.ceil(c.lt) - 1) if high is not None else math.ceil(c.lt) - 1
    step = c.multiple_of
    if step:
        step = abs(int(step))
        low_k = None if low is None else -(-low // step)
        high_k = None if high is None else high // step
        return st.integers(low_k, high_k).map(lambda k: k * step)
    return st.integers(low, high)


def _floats(c: Constraints) -> SearchStrategy[float]:
    low = c.ge if c.ge is not None else c.gt
    high = c.le if c.le is not None else c.lt
    if c.multiple_of:
        step = c.multiple_of
        low_k = None if low is None else math.ceil(low / step)
        high_k = None if high is None else math.floor(high / step)
        return st.integers(low_k, high_k).map(lambda k: float(k * step)).filter(
            lambda v: (c.gt is None or v > c.gt) and (c.lt is None or v < c.lt))
    allow = c.allow_inf_nan and low is None and high is None
    return st.floats(
        min_value=None if low is None else float(low),
        max_value=None if high is None else float(high),
        exclude_min=c.ge is None and c.gt is not None,
        exclude_max=c.le is None and c.lt is not None,
        allow_nan=allow, allow_infinity=allow)


def _decimals(c: Constraints) -> SearchStrategy[Decimal]:
    low = c.ge if c.ge is not None else c.gt
    high = c.le if c.le is not None else c.lt
    places = c.decimal_places
    strategy = st.decimals(min_value=low, max_value=high, places=places, allow_nan=False,
                           allow_infinity=False)
    if c.max_digits is not None:
        digits = c.max_digits
        strategy = strategy.filter(lambda d: len(d.as_tuple().digits) <= digits)
    return strategy.filter(lambda d: (c.gt is None or d > c.gt) and (c.lt is None or d < c.lt))


def _text(c: Constraints) -> SearchStrategy[str]:
    min_size, max_size = c.min_length or 0, _max_size(c, DEFAULT_MAX_TEXT)
    if c.pattern is not None:
        return st.from_regex(c.pattern, fullmatch=True).filter(
            lambda s: min_size <= len(s) <= max_size)
    return st.text(min_size=min_size, max_size=max_size)


def _bounded(strategy: SearchStrategy[Any], c: Constraints) -> SearchStrategy[Any]:
    def within(value: Any) -> bool:
        try:
            return ((c.ge is None or value >= c.ge) and (c.gt is None or value > c.gt)
                    and (c.le is None or value <= c.le) and (c.lt is None or value < c.lt))
        except TypeError:
            return True  # leave the comparison to the model's validation
    return strategy.filter(within)


def states(model: type[ModelT], /,
           **overrides: SearchStrategy[Any] | Any) -> SearchStrategy[ModelT]:
    """A hypothesis strategy of valid instances of the pydantic model `model`.

    Every field is generated from its annotation and constraints: numbers within
    `Field(ge=, gt=, le=, lt=, multiple_of=)`, strings and collections within
    `min_length`/`max_length` (and a `pattern`), `Literal` values, enum members, nested models,
    `X | None` (None first, so failures shrink to it), and reducer fields by their type
    (`Annotated[list[str], operator.add]` is a list of str). Floats are finite unless the field
    allows inf/nan and has no bounds. Collections and strings without a `max_length` stay short
    (at most 6 items, 24 characters) to keep examples fast; override a field to go larger.

    `overrides` give a field its own strategy (or a plain value, always used):
    `states(State, count=st.integers(0, 10), log=[])`. Each assembled state goes through
    `State.model_validate`, so model and field validators hold too.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"states() takes a pydantic model class, got {model!r}.")
    unknown = [name for name in overrides if name not in model.model_fields]
    if unknown:
        raise TypeError(
            f"states({model.__name__}, ...) got unknown field {unknown[0]!r}"
            f"{did_you_mean(unknown[0], model.model_fields)}; the fields of {model.__name__} "
            f"are: {', '.join(model.model_fields)}.")
    return _Builder().model(model, overrides)


def values_of(annotation: Any) -> SearchStrategy[Any]:
    """A strategy of values of a type annotation, honouring its pydantic/annotated_types
    constraints (what `states` uses per field), e.g. for a `Send` payload type."""
    try:
        return _Builder().of(annotation)
    except _Unsupported as exc:
        raise TypeError(f"cannot generate values of {annotation!r}: {exc}") from None
