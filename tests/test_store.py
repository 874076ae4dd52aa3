"""The long-term store on its own (`checkpoints.MemoryStore`, `SQLiteStore`): namespaces,
get/put/delete, search with filters (against a model, as a hypothesis property), TTL,
semantic search with a deterministic toy embedding, and what it refuses."""

from __future__ import annotations

import asyncio
import datetime
import enum
import hashlib
import json
import math
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from checkpoints import MemoryStore, SQLiteStore
from checkpoints.store_types import StoreError, encode_value, matches

DIMS = 256


def toy_embed(texts: list[str]) -> list[list[float]]:
    """Bag of words hashed into DIMS buckets: texts sharing words are similar."""
    out = []
    for text in texts:
        vector = [0.0] * DIMS
        for word in text.lower().replace("?", " ").replace(".", " ").split():
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIMS] += 1.0
        out.append(vector)
    return out


async def atoy_embed(texts: list[str]) -> list[list[float]]:
    await asyncio.sleep(0)
    return toy_embed(texts)


INDEX = {"embed": toy_embed, "dims": DIMS, "fields": ["text"]}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make(request, tmp_path):
    opened: list[Any] = []
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None

    def make_store(**options: Any) -> Any:
        if request.param == "memory":
            store: Any = MemoryStore(**options)
        elif request.param == "sqlite":
            store = SQLiteStore(tmp_path / f"store{len(opened)}.db", **options)
        else:
            from conftest import postgres_schema

            from checkpoints import PostgresStore

            store = PostgresStore(dsn, schema=postgres_schema(), **options)
        opened.append(store)
        return store

    yield make_store
    for store in opened:
        if hasattr(store, "close"):
            store.close()


NS = ("users", "u1", "memories")


def test_put_get_delete_and_namespaces(make):
    store = make()
    assert store.get(NS, "diet") is None
    store.put(NS, "diet", {"text": "vegetarian", "kind": "pref"})
    item = store.get(NS, "diet")
    assert (item.namespace, item.key, item.value) == (NS, "diet", {"text": "vegetarian",
                                                                   "kind": "pref"})
    first = item.created_at
    time.sleep(0.01)
    store.put(NS, "diet", {"text": "vegan", "kind": "pref"})
    again = store.get(NS, "diet")
    assert again.value["text"] == "vegan" and again.created_at == first
    assert again.updated_at > first
    store.put(("users", "u2"), "city", {"text": "Paris"})
    store.put(("teams", "t1"), "name", {"text": "core"})
    assert store.list_namespaces() == [("teams", "t1"), ("users", "u1", "memories"),
                                       ("users", "u2")]
    assert store.list_namespaces(prefix=("users",), max_depth=2) == [("users", "u1"),
                                                                      ("users", "u2")]
    assert store.list_namespaces(suffix=("memories",)) == [NS]
    store.delete(NS, "diet")
    assert store.get(NS, "diet") is None
    assert asyncio.run(store.aget(("users", "u2"), "city")).value == {"text": "Paris"}


def test_prefixes_are_whole_labels(make):
    store = make()
    store.put(("user",), "a", {"n": 1})
    store.put(("users",), "b", {"n": 2})
    store.put(("user", "x"), "c", {"n": 3})
    assert sorted(i.key for i in store.search(("user",))) == ["a", "c"]
    assert [i.key for i in store.search(("users",))] == ["b"]


def test_search_filters_and_pages_newest_first(make):
    store = make()
    for n in range(6):
        store.put(("notes",), f"k{n}", {"n": n, "kind": "even" if n % 2 == 0 else "odd",
                                        "flag": n == 3})
        time.sleep(0.002)
    assert [i.key for i in store.search(("notes",), limit=3)] == ["k5", "k4", "k3"]
    assert [i.key for i in store.search(("notes",), limit=2, offset=2)] == ["k3", "k2"]
    assert [i.key for i in store.search(("notes",), filter={"kind": "even"})] == [
        "k4", "k2", "k0"]
    assert [i.key for i in store.search(filter={"n": {"$gte": 2, "$lt": 4}})] == ["k3", "k2"]
    assert [i.key for i in store.search(filter={"flag": True})] == ["k3"]
    assert [i.key for i in store.search(filter={"kind": {"$ne": "odd"}}, limit=1)] == ["k4"]


values = st.fixed_dictionaries({}, optional={
    "n": st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.booleans(),
                   st.none(), st.text("ab", max_size=2)),
    "s": st.one_of(st.text("abc", max_size=3), st.integers(0, 2))})
conditions = st.dictionaries(
    st.sampled_from(["n", "s", "missing"]),
    st.one_of(st.integers(-3, 3), st.text("abc", max_size=2), st.booleans(), st.none(),
              st.dictionaries(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]),
                              st.one_of(st.integers(-3, 3), st.floats(-3, 3),
                                        st.text("ab", max_size=2), st.booleans(), st.none()),
                              min_size=1, max_size=2)),
    max_size=2)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(values, max_size=8), filter=conditions)
def test_a_filter_selects_what_the_python_model_selects(make, items, filter):
    """SQLite pushes conditions down to SQL; the answer must be the model's."""
    store = make()
    for n, value in enumerate(items):
        store.put(("p",), f"k{n}", value)
    from checkpoints.store_types import check_filter

    expected = {f"k{n}" for n, v in enumerate(items) if matches(v, check_filter(filter))}
    assert {i.key for i in store.search(("p",), filter=filter, limit=100)} == expected


def test_ttl_expires_items_refreshes_on_read_and_is_swept(make):
    store = make(ttl=0.2)
    store.put(NS, "short", {"text": "soon gone"})
    store.put(NS, "kept", {"text": "stays"}, ttl=None)
    store.put(NS, "read", {"text": "read often"}, ttl=0.3)
    time.sleep(0.15)
    assert store.get(NS, "read", refresh_ttl=True) is not None  # lives 0.3 s from now
    time.sleep(0.2)
    assert store.get(NS, "short") is None
    assert [i.key for i in store.search(NS)] == ["read", "kept"]
    assert store.list_namespaces() == [NS]
    assert store.sweep() == 1
    time.sleep(0.35)
    assert store.get(NS, "read") is None and store.get(NS, "kept") is not None


@pytest.mark.parametrize("embed", [toy_embed, atoy_embed])
def test_semantic_search_ranks_by_the_embedded_fields(make, embed):
    store = make(index={**INDEX, "embed": embed})
    store.put(NS, "diet", {"text": "vegetarian food only please", "kind": "pref"})
    store.put(NS, "city", {"text": "lives in Paris", "kind": "fact"})
    store.put(NS, "pet", {"text": "has a cat named Tom", "kind": "fact"})
    store.put(NS, "raw", {"text": "not indexed food"}, index=False)
    hits = store.search(("users",), query="what food do they eat?")
    assert hits[0].key == "diet" and hits[0].score > 0
    assert hits[-1].key == "raw" and hits[-1].score is None  # no vector: last
    facts = store.search(("users",), query="Paris", filter={"kind": "fact"})
    assert [i.key for i in facts] == ["city", "pet"]
    assert math.isclose(facts[0].score, 1 / math.sqrt(3), rel_tol=1e-5)  # 1 word of 3 shared
    got = asyncio.run(store.asearch(NS, query="cat", limit=1))
    assert [i.key for i in got] == ["pet"]


def test_an_items_vectors_go_when_its_value_changes_or_it_is_deleted(make):
    """A stale embedding never ranks an item: re-put without indexing, deleted and put again,
    expired and swept, or re-put with other text, the item is scored by what it holds now."""
    store = make(index=INDEX)
    store.put(NS, "diet", {"text": "vegetarian food"})
    store.put(NS, "gone", {"text": "vegetarian food"})
    store.put(NS, "swept", {"text": "vegetarian food"}, ttl=0.1)
    store.put(NS, "moved", {"text": "vegetarian food"})
    assert all(i.score for i in store.search(NS, query="vegetarian food"))
    store.put(NS, "diet", {"text": "vegetarian food"}, index=False)
    store.delete(NS, "gone")
    store.put(NS, "gone", {"text": "vegetarian food"}, index=False)
    store.put(NS, "moved", {"text": "lives in Paris"})
    time.sleep(0.15)
    assert store.sweep() == 1
    store.put(NS, "swept", {"text": "vegetarian food"}, index=False)
    scores = {i.key: i.score for i in store.search(NS, query="vegetarian food")}
    assert scores == {"moved": pytest.approx(0.0), "diet": None, "gone": None, "swept": None}
    assert store.search(NS, query="Paris", limit=1)[0].key == "moved"


class Colour(enum.Enum):
    RED = "red"


class Point(BaseModel):
    x: int
    at: datetime.date


storable_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=4)  # no NUL, no lone surrogate (refused: see below)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), storable_text,
                        st.floats(allow_nan=False, allow_infinity=False))
convertible_leaves = st.one_of(  # what pydantic turns into JSON first
    st.dates(), st.datetimes(), st.uuids(), st.just(Colour.RED), st.decimals(allow_nan=False),
    st.builds(Point, x=st.integers(), at=st.dates()), st.frozensets(st.integers(), max_size=2))
store_values = st.dictionaries(storable_text, st.recursive(
    st.one_of(json_leaves, convertible_leaves),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(storable_text, inner, max_size=3)),
    max_leaves=8), max_size=4)


@given(value=store_values)
@settings(max_examples=200, deadline=None)
def test_a_value_is_stored_as_pydantic_would_write_it(value: dict[str, Any]) -> None:
    """The stored text is pydantic's JSON of the value (one call on a step's hot path; the
    conversion then json only for text that may hold NaN): the same JSON, key for key."""
    expected = json.dumps(to_jsonable_python(value), ensure_ascii=False,
                          separators=(",", ":"))
    assert json.loads(encode_value(("a",), "k", value)) == json.loads(expected)


@pytest.mark.parametrize(("value", "stored"), [
    ({"a": {None: 1, 2: "x", 1.5: True}}, '{"a":{"None":1,"2":"x","1.5":true}}'),
    ({"text": "NaN and Infinity are words"}, '{"text":"NaN and Infinity are words"}'),
    ({"big": 2**70, "tiny": 1e-7}, '{"big":1180591620717411303424,"tiny":1e-7}'),
])
def test_keys_words_and_numbers_are_stored_as_pydantic_writes_them(value, stored):
    assert encode_value(("a",), "k", value) == stored


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_finite_is_refused_by_key(bad: float) -> None:
    with pytest.raises(StoreError, match=r"'k' in namespace \('a',\) cannot be stored as "
                                         r"JSON: Out of range float"):
        encode_value(("a",), "k", {"deep": [1, {"x": bad}]})



slashed_text = st.lists(st.sampled_from(["\\", "u0000", "\x00", "a", "NaN"]),
                        max_size=6).map("".join)


@given(value=st.dictionaries(slashed_text, st.one_of(slashed_text, st.lists(slashed_text,
                                                                             max_size=2)),
                             max_size=3),
       nan=st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_value_is_refused_for_a_nul_character_and_only_for_one(value: dict[str, Any],
                                                                 nan: bool) -> None:
    """A NUL anywhere in a value (key or text) is refused; the text backslash-u0000, which
    JSON writes with its backslash escaped, is stored as it is (with or without a NaN beside
    it, which takes the slower conversion)."""
    if nan:
        value = {**value, "nan": "NaN"}
    texts = [*value, *(t for v in value.values() for t in (v if isinstance(v, list) else [v]))]
    if any("\x00" in text for text in texts):
        with pytest.raises(StoreError, match=r"'k' in namespace \('a',\) holds a NUL"):
            encode_value(("a",), "k", value)
    else:
        assert json.loads(encode_value(("a",), "k", value)) == value

def test_refusals_name_the_namespace_and_key(make):
    store = make()
    with pytest.raises(StoreError, match=r"'k' in namespace \('a',\) cannot be stored as "
                                          r"JSON: it holds a object"):
        store.put(("a",), "k", {"x": object()})
    with pytest.raises(StoreError, match="must be a dict"):
        store.put(("a",), "k", ["not", "a", "dict"])
    with pytest.raises(StoreError, match="non-empty text"):
        store.put(("a", ""), "k", {})
    with pytest.raises(StoreError, match="tuple of text labels"):
        store.put("users", "k", {})
    for unhashable in ((["users"],), ("users", {"id": 1})):  # refused, not a TypeError
        with pytest.raises(StoreError, match="non-empty text"):
            store.put(unhashable, "k", {})
    with pytest.raises(StoreError, match="at least one label"):
        store.put((), "k", {})
    with pytest.raises(StoreError, match="unknown operator '\\$in'"):
        store.search(filter={"n": {"$in": [1]}})
    with pytest.raises(StoreError, match="needs a store made with an index"):
        store.search(query="anything")
    with pytest.raises(StoreError, match="ttl must be positive"):
        store.put(("a",), "k", {}, ttl=-1)
    assert store.search(("a",)) == []  # nothing half-written


def test_a_sqlite_store_shares_the_file_with_a_checkpointer_and_reads_it_read_only(tmp_path):
    from checkpoints import SQLiteCheckpointer

    db = tmp_path / "runs.db"
    with SQLiteCheckpointer(db), SQLiteStore(db) as store:
        store.put(NS, "diet", {"text": "vegetarian"})
    with SQLiteStore(db, read_only=True) as reader:
        assert reader.get(NS, "diet").value == {"text": "vegetarian"}
        with pytest.raises(StoreError, match="read-only"):
            reader.put(NS, "x", {})


WRITER = """
import sys
from checkpoints import SQLiteStore
kind, where, schema, me = sys.argv[1:5]
if kind == "sqlite":
    store = SQLiteStore(where)
else:
    from checkpoints import PostgresStore
    store = PostgresStore(where, schema=schema)
for n in range(40):
    store.put(("shared",), "key", {"writer": me, "n": n, "payload": me * 2000})
store.close()
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_writers_in_several_processes_on_one_key_leave_one_whole_value(kind, tmp_path,
                                                                        request):
    import subprocess
    import sys

    if kind == "sqlite":
        where, schema = str(tmp_path / "shared.db"), ""
        SQLiteStore(where).close()
    else:
        from conftest import postgres_schema

        from checkpoints import PostgresStore

        where, schema = request.getfixturevalue("postgres_dsn"), postgres_schema()
        PostgresStore(where, schema=schema).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, kind, where, schema, me])
               for me in "abcd"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    if kind == "sqlite":
        store: Any = SQLiteStore(where, read_only=True)
    else:
        from checkpoints import PostgresStore

        store = PostgresStore(where, schema=schema, read_only=True)
    with store:
        item = store.get(("shared",), "key")
    assert item.value["n"] == 39  # the last write of whichever writer committed last
    assert item.value["payload"] == item.value["writer"] * 2000  # whole, never torn


def test_the_command_line_lists_reads_searches_and_removes_items(tmp_path):
    import json as jsonlib

    from tests.test_cli import NOT_FOUND, OK, USAGE, cli

    db = tmp_path / "runs.db"
    missing = cli("store", "ls", "--db", str(db))
    assert missing.returncode == NOT_FOUND and not db.exists()  # reading creates nothing
    with SQLiteStore(db) as store:
        store.put(NS, "diet", {"text": "vegetarian", "kind": "pref"})
        store.put(("users", "u2"), "evil", {"text": "\x1b[2J[bold]boom[/bold]"})
        store.put(("a/b", "c"), "slash", {"n": 1})
    listed = cli("store", "ls", "--db", str(db), "--prefix", "users", "--max-depth", "2")
    assert listed.returncode == OK and listed.stdout.split() == ["users/u1", "users/u2"]
    assert jsonlib.loads(cli("store", "ls", "--db", str(db), "--json").stdout) == [
        ["a/b", "c"], ["users", "u1", "memories"], ["users", "u2"]]
    got = cli("store", "get", "--db", str(db), "--namespace", "users/u1/memories", "--key",
              "diet", "--json")
    assert jsonlib.loads(got.stdout)["value"] == {"text": "vegetarian", "kind": "pref"}
    slash = cli("store", "get", "--db", str(db), "--namespace", '["a/b", "c"]', "--key",
                "slash", "--json")
    assert jsonlib.loads(slash.stdout)["value"] == {"n": 1}
    found = cli("store", "search", "--db", str(db), "--prefix", "users", "--filter",
                '{"kind": "pref"}', "--json")
    assert [i["key"] for i in jsonlib.loads(found.stdout)] == ["diet"]
    shown = cli("store", "search", "--db", str(db))
    assert shown.returncode == OK and "\x1b" not in shown.stdout and "[bold]" in shown.stdout
    bad = cli("store", "search", "--db", str(db), "--filter", '{"n": {"$in": [1]}}')
    assert bad.returncode == USAGE and "unknown operator" in bad.stderr
    removed = cli("store", "rm", "--db", str(db), "--namespace", "users/u1/memories",
                  "--key", "diet")
    assert removed.returncode == OK
    again = cli("store", "rm", "--db", str(db), "--namespace", "users/u1/memories", "--key",
                "diet")
    assert again.returncode == NOT_FOUND and "no item 'diet'" in again.stderr


def test_text_no_store_can_keep_is_refused_at_put(make):
    store = make()
    for bad in ({"t": "nul \x00 here"}, {"t": "\ud800"}):
        with pytest.raises(StoreError, match=r"'k' in namespace \('a',\)"):
            store.put(("a",), "k", bad)
    with pytest.raises(StoreError, match="NUL"):
        store.put(("a",), "k\x00", {})
    with pytest.raises(StoreError, match="surrogate"):
        store.put(("a\ud800",), "k", {})
    store.put(("a",), "slash", {"t": "\\u0000 is six characters", "\\u0000": 1})
    assert store.get(("a",), "slash").value == {"t": "\\u0000 is six characters",
                                                "\\u0000": 1}
    store.put(("a",), "big", {"n": 2**64})
    assert [i.key for i in store.search(("a",), filter={"n": 2**64})] == ["big"]
    assert store.search(("a",), filter={"n": 2**64 + 1}) == []


def test_a_cached_semantic_view_sees_a_change_made_in_the_same_microsecond(make, monkeypatch):
    import checkpoints.store_base as base

    store = make(index=INDEX)
    monkeypatch.setattr(base.time, "time", lambda: 1_700_000_000.0)
    store.put(NS, "c", {"text": "sport"})
    assert store.search(NS, query="food", limit=1)[0].score == 0
    store.put(NS, "c", {"text": "food"})
    assert store.search(NS, query="food", limit=1)[0].score == pytest.approx(1.0)


def test_writes_sweep_expired_items_away(make, monkeypatch):
    import checkpoints.store_base as base

    store = make()
    now = [1_700_000_000.0]
    monkeypatch.setattr(base.time, "time", lambda: now[0])
    store.put(NS, "old", {"text": "gone soon"}, ttl=5)
    now[0] += base.SWEEP_SECONDS + 10
    store.put(NS, "new", {"text": "here"})  # sweeps on the way
    now[0] -= base.SWEEP_SECONDS + 10  # even seen from before it expired, it is gone
    assert store.get(NS, "old") is None and store.sweep() == 0


def test_a_wildcard_in_list_namespaces_is_refused_not_silently_empty(make):
    store = make()
    store.put(("users", "u1"), "k", {})
    with pytest.raises(StoreError, match="wildcard is not supported"):
        store.list_namespaces(prefix=("users", "*"))
    assert store.list_namespaces(prefix=("users",)) == [("users", "u1")]


@pytest.mark.parametrize("alphabet", ["abcdefghijklmnopqrstuvwxyz", "éàüß", "😀🚀🌍"])
def test_a_namespace_and_key_past_the_limit_are_refused_alike_by_every_store(make, alphabet):
    """Every store keeps a namespace and key of up to ADDRESS_BYTES UTF-8 bytes together
    (PostgreSQL's index holds about 2,700), and refuses one byte more at the put, naming it."""
    from checkpoints.store_types import ADDRESS_BYTES

    store = make()
    rng = random.Random(alphabet)  # text that does not compress: PostgreSQL is tested honestly
    ns = ("users", "u1")
    room = ADDRESS_BYTES - len("users\x1fu1")
    width = len(alphabet[0].encode())
    key = "".join(rng.choice(alphabet) for _ in range(room // width))
    key += "x" * (room - len(key.encode()))  # exactly at the limit
    store.put(ns, key, {"fits": True})
    assert store.get(ns, key).value == {"fits": True}
    with pytest.raises(StoreError, match=r"in namespace \('users', 'u1'\) is too long: with "
                                         rf"its namespace it takes {ADDRESS_BYTES + 1:,} bytes"):
        store.put(ns, key + "y", {"fits": False})
    assert [i.key for i in store.search(ns)] == [key]  # nothing of the refused one
