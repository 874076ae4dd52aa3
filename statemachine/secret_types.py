"""Finding pydantic's secret types (SecretStr, SecretBytes, Secret[T]) anywhere inside a type.

Checkpoints store values as JSON, where pydantic writes a secret as '**********': a secret in
stored state would come back as the mask. The compiler refuses such fields, and validation
errors never echo a value bound for one.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, Secret, SecretBytes, SecretStr
from typing_extensions import is_typeddict

SECRET_TYPES: tuple[type, ...] = (SecretStr, SecretBytes, Secret)

_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "pwd", "secret", "secrets", "token", "apikey",
    "credential", "credentials", "authorization", "pin", "otp", "dsn"})
_SECRET_PARTS = ("password", "passwd", "passphrase", "apikey", "privatekey", "accesskey",
                 "secretkey", "clientsecret", "authtoken", "accesstoken", "refreshtoken")


def secret_paths(annotation: Any, path: str) -> list[tuple[str, str]]:
    """(path, type name) of every secret type reachable in `annotation`, which sits at `path`.

    Looks through Annotated, Optional and unions, containers (their items are `path[*]`),
    nested pydantic models, dataclasses and TypedDicts (their fields are `path.field`)."""
    found: list[tuple[str, str]] = []
    _walk(annotation, path, found, seen=set())
    return found


def model_secret_paths(model: type[BaseModel]) -> list[tuple[str, str]]:
    """Every secret type in the fields of `model`, by field path."""
    found: list[tuple[str, str]] = []
    seen = {id(model)}
    for name, info in model.model_fields.items():
        _walk(info.annotation, name, found, seen)
    return found


def is_secret_value(value: object) -> bool:
    """Whether `value` is an instance of a pydantic secret type."""
    return isinstance(value, SECRET_TYPES)


def looks_secret(name: object) -> bool:
    """Whether a field or key name says it holds a credential (password, token, api_key...)."""
    if not isinstance(name, str):
        return False
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    joined = "".join(words)
    return any(word in _SECRET_WORDS for word in words) or \
        any(part in joined for part in _SECRET_PARTS)


def mentions_secret(value: object, names: frozenset[str] = frozenset(), depth: int = 0) -> bool:
    """Whether `value` is a secret, or a dict or model holding one under a secret-looking key
    (or one of `names`), a few levels deep: such a value is never echoed."""
    if is_secret_value(value):
        return True
    if depth > 3:
        return False
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return any(key in names or looks_secret(key) or mentions_secret(item, names, depth + 1)
                   for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(mentions_secret(item, names, depth + 1) for item in list(value)[:100])
    return False


def _walk(tp: Any, path: str, found: list[tuple[str, str]], seen: set[int]) -> None:
    if type(tp).__name__ == "TypeAliasType":  # `type X = ...` (typing or typing_extensions)
        tp = tp.__value__
    origin = typing.get_origin(tp)
    if _is_secret_class(tp) or _is_secret_class(origin):
        found.append((path, _type_name(tp)))
        return
    if origin is typing.Annotated:
        _walk(typing.get_args(tp)[0], path, found, seen)
        return
    if origin is typing.Literal:
        return
    if origin is not None:
        union = origin is typing.Union or origin is types.UnionType
        for arg in typing.get_args(tp):
            if arg is not Ellipsis and arg is not type(None):
                _walk(arg, path if union else f"{path}[*]", found, seen)
        return
    if not isinstance(tp, type) or id(tp) in seen:
        return
    if issubclass(tp, BaseModel):
        seen.add(id(tp))
        for name, info in tp.model_fields.items():
            _walk(info.annotation, f"{path}.{name}", found, seen)
    elif dataclasses.is_dataclass(tp) or is_typeddict(tp):
        seen.add(id(tp))
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # an unresolvable forward reference: pydantic reports it itself
            return
        for name, hint in hints.items():
            _walk(hint, f"{path}.{name}", found, seen)


def _is_secret_class(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, SECRET_TYPES)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("pydantic.types.", "")
