"""A process for the store's crash tests: one run (or resume) of a counting graph whose nodes
each add one to a counter kept in the store, on a SQLite file shared by the checkpointer
and the store, killed (os._exit) at a chosen moment.

    python tests/store_child.py DB THREAD run|resume [--die-in NODE:WHEN]

WHEN: `written` (in the node, after its store writes), `returned` (the node returned, its
step not committed: a listener's node end) or `committed` (after its step committed).
Each node reads the counter and writes counter + 1, so a write applied twice, or one from an
attempt that did not commit, shows as a wrong count. `fan` runs two such tasks at once.
"""

from __future__ import annotations

import operator
import os
import sys
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer, SQLiteStore
from statemachine import END, START, RunContext, StateGraph

NS = ("counters",)
DIE = {"node": None, "when": None}


class S(BaseModel):
    log: Annotated[list[str], operator.add] = []


def counting(name: str, key: str):
    def node(state: S, ctx: RunContext) -> dict:
        item = ctx.store.get(NS, key)
        count = item.value["n"] if item else 0
        ctx.store.put(NS, key, {"n": count + 1})
        ctx.store.put(("seen",), f"{name}-{ctx.task_id}", {"step": ctx.step})
        if DIE["node"] == name and DIE["when"] == "written":
            os._exit(9)
        return {"log": [name]}
    return node


class Killer:
    def on_node_end(self, thread_id, step, node, update, seconds, metadata) -> None:
        if DIE["node"] == node and DIE["when"] == "returned":
            os._exit(9)

    def on_step_end(self, event) -> None:
        if DIE["when"] == "committed" and DIE["node"] in event.nodes:
            os._exit(9)


def graph() -> StateGraph:
    g = StateGraph(S)
    g.add_node("a", counting("a", "total"))
    g.add_node("left", counting("left", "left"))
    g.add_node("right", counting("right", "right"))
    g.add_node("b", counting("b", "total"))
    g.add_edge(START, "a")
    g.add_edge("a", "left")
    g.add_edge("a", "right")
    g.add_edge(["left", "right"], "b")
    g.add_edge("b", END)
    return g


def main(argv: list[str]) -> int:
    db, thread, mode = argv[:3]
    if len(argv) > 4 and argv[3] == "--die-in":
        DIE["node"], DIE["when"] = argv[4].split(":")
    store = SQLiteStore(db)
    with SQLiteCheckpointer(db, lease_seconds=1.0) as saver:
        app = graph().compile(checkpointer=saver, store=store)
        app.add_listener(Killer())
        if mode == "run":
            app.invoke({}, thread_id=thread)
        else:
            app.resume(thread)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
