"""Secrets are never echoed: a value rejected for a secret field (secret-typed, or named like a
credential) appears neither in the error, its traceback, nor anywhere in the database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel, Field, SecretStr, model_validator

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, InvalidUpdateError, StateGraph
from statemachine.secret_types import looks_secret
from statemachine.state import StateSchema


def strong(value: str) -> str:
    if not value.startswith("ok-"):
        raise ValueError(f"{value!r} is too weak")
    return value


class Account(BaseModel):
    user: str = ""
    password: Annotated[str, AfterValidator(strong)] = "ok-initial"
    apiKey: str = Field(default="", max_length=1)  # camelCase, as JSON from elsewhere spells it
    count: int = 0


class Signup(BaseModel):
    user: str = ""
    pin: str = ""

    @model_validator(mode="before")
    @classmethod
    def whole(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("user") == "root":
            raise ValueError("root may not sign up")
        return data


secrets_ = st.text(st.characters(codec="utf-8"), min_size=6, max_size=80).map(
    lambda text: "Zq" + text)
"""Arbitrary text; the prefix keeps a validator from accepting it and the text from being a
word the error says anyway."""


def leaked(secret: str, text: str) -> bool:
    """Whether `text` shows `secret` or its first characters, raw, repr- or JSON-escaped."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1]}
    return any(form in text or form[:8] in text for form in forms)


def dump(path: Path) -> str:
    """Every row of every table of a SQLite file, as text."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return repr({name: conn.execute(f'SELECT * FROM "{name}"').fetchall()
                     for name in tables})


def graph(update: dict[str, object]) -> StateGraph:
    g = StateGraph(Account)
    g.add_node("change", lambda state: update)
    g.add_edge(START, "change")
    g.add_edge("change", END)
    return g


def everything(exc: BaseException) -> str:
    return str(exc) + "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("field", ["password", "apiKey"])
@given(secret=secrets_)
def test_a_rejected_secret_is_in_no_error_and_nowhere_in_the_database(field, secret):
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.db"
        with SQLiteCheckpointer(db) as saver:
            app = graph({field: secret}).compile(checkpointer=saver)
            with pytest.raises(InvalidUpdateError) as failed:
                app.invoke({}, thread_id="t")
            with pytest.raises(InvalidUpdateError) as edited:
                app.update_state("t", {field: secret})
            with pytest.raises(InvalidUpdateError) as given_input:
                app.invoke({field: secret}, thread_id="other")
            stored = app.get_state("t").error or ""
        for exc in (failed.value, edited.value, given_input.value):
            assert exc.field == field
            assert "(value hidden: a secret)" in str(exc)
            assert not leaked(secret, everything(exc)), everything(exc)
        assert "value hidden" in stored and not leaked(secret, stored)
        assert not leaked(secret, dump(db))


@given(secret=secrets_)
def test_a_whole_input_holding_a_secret_is_not_echoed_by_a_model_validator(secret):
    schema = StateSchema(Signup)
    with pytest.raises(InvalidUpdateError) as info:
        schema.validate_input({"user": "root", "pin": secret})
    assert "root may not sign up" in str(info.value)
    assert not leaked(secret, everything(info.value))


def test_secret_typed_values_are_hidden_even_without_a_telling_name():
    class Opaque(BaseModel):
        blob: SecretStr = SecretStr("")

    schema = StateSchema(Opaque)  # compile() refuses it; the schema itself still never echoes
    value = 12345678
    with pytest.raises(InvalidUpdateError) as info:
        schema.validate_update({"blob": value}, node="n")
    assert str(value) not in everything(info.value)


def test_other_fields_still_show_the_rejected_value():
    schema = StateSchema(Account)
    with pytest.raises(InvalidUpdateError) as info:
        schema.validate_update({"count": "many"}, node="n")
    assert "(got 'many')" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)  # pydantic's details stay chained


@pytest.mark.parametrize("name, secret", [
    ("password", True), ("db_passwd", True), ("userPassword", True), ("OPENAI_API_KEY", True),
    ("api_key", True), ("auth_token", True), ("client_secret", True), ("pin", True),
    ("token", True), ("author", False), ("compass", False), ("spinner", False),
    ("max_tokens", False), ("count", False), (3, False)])
def test_credential_names(name, secret):
    assert looks_secret(name) is secret
