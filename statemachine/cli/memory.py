"""`store`: the long-term memory in a database, read and pruned by hand.

    statemachine store ls --db runs.db [--prefix users/u1] [--max-depth 2]
    statemachine store get --db runs.db --namespace users/u1/memories --key diet
    statemachine store search --db runs.db [--prefix users] [--filter JSON] [--limit 20]
    statemachine store rm --db runs.db --namespace users/u1/memories --key diet

A namespace is its labels joined by "/" (`users/u1`), or a JSON list when a label holds "/"
(`'["a/b", "c"]'`). Reading never creates a database file; values are shown made inert.
Semantic search needs the store's embedding function, which lives in the graph's code: use
`store.search(query=...)` from Python for it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from typing import Any

import click
from rich.text import Text

from checkpoints.store_base import BaseStore
from checkpoints.store_types import Item, Namespace, StoreError

from ..terminal import safe, visible
from .errors import EPILOG, EXIT_NOT_FOUND, EXIT_USAGE, CliError, library_errors
from .options import DB_OPTION, Db, need_db, pg_schema, read_json
from .output import echo_json, new_table, out_console

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(epilog=EPILOG)
def store() -> None:
    """Read, search and remove long-term memory items (a store's namespaces and keys)."""


@store.command(epilog=EPILOG)
@DB_OPTION
@click.option("--prefix", metavar="NAMESPACE", help="Only namespaces under this one.")
@click.option("--max-depth", type=click.IntRange(1), help="Cut namespaces to this many labels.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@JSON_OPTION
def ls(db: Db | None, prefix: str | None, max_depth: int | None, limit: int, offset: int,
       as_json: bool) -> None:
    """The namespaces that hold items."""
    with _opened(db) as memory:
        found = memory.list_namespaces(prefix=_namespace(prefix, "--prefix"),
                                       max_depth=max_depth, limit=limit, offset=offset)
    if as_json:
        echo_json([list(ns) for ns in found])
        return
    out = out_console()
    if not found:
        out.print(Text("no namespaces hold items" + (f" under {prefix}" if prefix else "")))
    for ns in found:
        out.print(safe(_shown(ns), one_line=True))


@store.command(epilog=EPILOG)
@DB_OPTION
@click.option("--namespace", required=True, metavar="NAMESPACE")
@click.option("--key", required=True)
@JSON_OPTION
def get(db: Db | None, namespace: str, key: str, as_json: bool) -> None:
    """One item: its value and times."""
    ns = _required(namespace)
    with _opened(db) as memory:
        item = memory.get(ns, key)
    if item is None:
        raise CliError(f"no item {key!r} in namespace {_shown(ns)}", EXIT_NOT_FOUND)
    if as_json:
        echo_json(_row(item))
        return
    out = out_console()
    out.print(safe(f"{_shown(item.namespace)}  {json.dumps(item.key)}", "bold", one_line=True))
    out.print(safe(f"created {_time(item.created_at)}, updated {_time(item.updated_at)}"
                   + (f", expires {_time(item.expires_at)}" if item.expires_at else ""), "dim"))
    out.print(safe(json.dumps(item.value, indent=2, ensure_ascii=False)))


@store.command(epilog=EPILOG)
@DB_OPTION
@click.option("--prefix", metavar="NAMESPACE", help="Only items under this namespace.")
@click.option("--filter", "filter_", metavar="JSON",
              help='Conditions on top-level fields: {"kind": "pref", "n": {"$gte": 3}}.')
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@JSON_OPTION
def search(db: Db | None, prefix: str | None, filter_: str | None, limit: int, offset: int,
           as_json: bool) -> None:
    """Items under a namespace meeting a filter, newest first."""
    conditions = read_json(filter_, "--filter") if filter_ is not None else None
    with _opened(db) as memory:
        items = memory.search(_namespace(prefix, "--prefix") or (), filter=conditions,
                              limit=limit, offset=offset)
    if as_json:
        echo_json([_row(i) for i in items])
        return
    table = new_table()
    for column in ("namespace", "key", "updated", "value"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(safe(_shown(item.namespace), one_line=True),
                      safe(item.key, one_line=True), _time(item.updated_at),
                      safe(_preview(item.value), one_line=True))
    out = out_console()
    out.print(table)
    if len(items) == limit:
        out.print(Text(f"(more may follow: --offset {offset + limit})", style="dim"))


@store.command(epilog=EPILOG)
@DB_OPTION
@click.option("--namespace", required=True, metavar="NAMESPACE")
@click.option("--key", required=True)
def rm(db: Db | None, namespace: str, key: str) -> None:
    """Delete one item."""
    ns = _required(namespace)
    with _opened(db, write=True) as memory:
        if memory.get(ns, key) is None:
            raise CliError(f"no item {key!r} in namespace {_shown(ns)}", EXIT_NOT_FOUND)
        memory.delete(ns, key)
    out_console().print(safe(f"deleted {key!r} from {_shown(ns)}"))


@contextlib.contextmanager
def _opened(db: Db | None, *, write: bool = False) -> Iterator[BaseStore]:
    """The store in --db: read-only unless `write`; a missing file is an error."""
    where = need_db(db)
    with library_errors():
        try:
            if isinstance(where, str):
                from checkpoints.store_postgres import PostgresStore

                opened: Any = PostgresStore(where, schema=pg_schema(), read_only=not write)
            else:
                if not where.exists():
                    raise CliError(f"no database file {str(where)!r}", EXIT_NOT_FOUND)
                from checkpoints.store_sqlite import SQLiteStore

                opened = SQLiteStore(where, read_only=not write)
        except StoreError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
        try:
            yield opened
        except StoreError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
        finally:
            opened.close()


def _required(text: str) -> Namespace:
    ns = _namespace(text, "--namespace")
    assert ns is not None
    return ns


def _namespace(text: str | None, option: str) -> Namespace | None:
    if text is None:
        return None
    if text.lstrip().startswith("["):
        labels = read_json(text, option)
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise CliError(f"{option} must be a JSON list of labels, like "
                           '\'["users", "u1"]\'', EXIT_USAGE)
        return tuple(labels)
    labels = [part for part in text.split("/") if part]
    if not labels:
        raise CliError(f"{option} needs at least one label, like users/u1", EXIT_USAGE)
    return tuple(labels)


def _shown(ns: Namespace) -> str:
    """a/b, or the JSON list when a label could read as something else (a "/", a leading
    "[", a control character, surrounding spaces)."""
    plain = all("/" not in x and not x.startswith("[") and x == x.strip() and
                visible(x, one_line=True) == x for x in ns)
    return "/".join(ns) if plain else json.dumps(list(ns))


def _row(item: Item) -> dict[str, Any]:
    return {"namespace": list(item.namespace), "key": item.key, "value": item.value,
            "created_at": item.created_at, "updated_at": item.updated_at,
            "expires_at": item.expires_at}


def _preview(value: dict[str, Any], width: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[:width - 1] + "…"


def _time(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["store"]
