"""The graph of the scale-out load test (benchmarks/scale_out.py), importable by workers:

    python -m statemachine worker benchmarks.scale_out_graph:graph --db postgresql://... --drain

One node, `step`, loops on itself until the thread has run `steps` steps. Every execution of
it records a side effect before returning: one row (thread, step, node, worker pid) in an
`effects` table of the same PostgreSQL database, inserted on a connection of its own in
autocommit mode, so the row is durable before the engine commits the step. The load test
counts the rows: a (thread, step) with no row is a lost step, one with two rows ran twice.

Where the rows go comes from the environment the load test gives each worker:
STATEMACHINE_SCALE_OUT_DSN (the database) and STATEMACHINE_SCALE_OUT_TABLE (a schema-qualified
table, `schema.effects`). Without them the node records nothing, which is how the load test
computes the reference result of an uninterrupted run in its own process.
"""

from __future__ import annotations

import operator
import os
import threading
from typing import Annotated, Any

from pydantic import BaseModel

from statemachine import END, START, StateGraph

DSN_VARIABLE = "STATEMACHINE_SCALE_OUT_DSN"
TABLE_VARIABLE = "STATEMACHINE_SCALE_OUT_TABLE"
NODE = "step"


class ScaleState(BaseModel):
    thread: str
    """The thread's id, so the node can name it in its side effect."""
    steps: int
    """Steps the run makes before it ends."""
    count: int = 0
    trail: Annotated[list[int], operator.add] = []
    checksum: int = 0
    """A running hash of the steps in order: a step applied twice or out of order shows."""


_local = threading.local()


def _connection(dsn: str) -> Any:
    """This thread's connection to the effects database (sync nodes run on worker threads)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        import psycopg

        conn = _local.conn = psycopg.connect(dsn, autocommit=True)
    return conn


def record_effect(thread: str, step: int, node: str = NODE) -> None:
    """Insert one effects row for this execution (nothing without the environment)."""
    dsn, table = os.environ.get(DSN_VARIABLE), os.environ.get(TABLE_VARIABLE)
    if not dsn or not table:
        return
    from psycopg import sql

    schema, _, name = table.partition(".")
    _connection(dsn).execute(
        sql.SQL("INSERT INTO {}.{} (thread_id, step, node, pid) VALUES (%s, %s, %s, %s)")
        .format(sql.Identifier(schema), sql.Identifier(name)),
        (thread, step, node, os.getpid()))


def step(state: ScaleState) -> dict[str, Any]:
    n = state.count + 1
    record_effect(state.thread, n)
    return {"count": n, "trail": [n], "checksum": (state.checksum * 31 + n) % 1_000_000_007}


def route(state: ScaleState) -> str:
    return END if state.count >= state.steps else NODE


def build() -> StateGraph:
    g = StateGraph(ScaleState)
    g.add_node(NODE, step)
    g.add_edge(START, NODE)
    g.add_conditional_edges(NODE, route, [NODE, END])
    return g


graph = build()
