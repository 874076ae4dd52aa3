"""`python -m benchmarks.store [--quick] [--compare langgraph] [--json out.json]`

The long-term store (issue 18), in one run:

* put + get on SQLite, one item at a time, ours (`SQLiteStore`) beside LangGraph's
  `SqliteStore` (with --compare): operations per second and the ratio;
* a committed step that also writes one memory (`ctx.store.put`), against the same step that
  does not: a loop of one node on SQLite, steps per second (the median of seven alternated
  runs of 2,000 steps each) and the ratio;
* search with a filter among 100,000 items in 1,000 namespaces: one user's namespace (the
  shape an assistant asks), and, for the record, the whole store; median ms (LangGraph's too
  with --compare);
* semantic search over 10,000 items of 384 dims (precomputed unit vectors, a cheap query
  embedding): median ms.

Speed is measured, never asserted; the test suite runs --quick so this cannot rot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import operator
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer, SQLiteStore
from checkpoints.store_types import StoreWrite
from statemachine import END, START, RunContext, StateGraph

DIMS = 384


def fake_embed(texts: list[str]) -> list[list[float]]:
    """A cheap deterministic embedding (a seeded random unit vector per text)."""
    import numpy

    out = []
    for text in texts:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        vector = numpy.random.default_rng(seed).standard_normal(DIMS)
        out.append((vector / numpy.linalg.norm(vector)).tolist())
    return out


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# -- put + get ----------------------------------------------------------------------------------

def ours_put_get(path: Path, n: int) -> float:
    with SQLiteStore(path) as store:
        started = time.perf_counter()
        for i in range(n):
            store.put(("users", f"u{i % 50}"), f"k{i}", {"text": f"memory {i}", "n": i})
            store.get(("users", f"u{i % 50}"), f"k{i}")
        return n / (time.perf_counter() - started)


def theirs_put_get(path: Path, n: int) -> float:
    from langgraph.store.sqlite import SqliteStore

    with SqliteStore.from_conn_string(str(path)) as store:
        store.setup()
        started = time.perf_counter()
        for i in range(n):
            store.put(("users", f"u{i % 50}"), f"k{i}", {"text": f"memory {i}", "n": i})
            store.get(("users", f"u{i % 50}"), f"k{i}")
        return n / (time.perf_counter() - started)


# -- a step with and without a memory ---------------------------------------------------------

class Loop(BaseModel):
    n: int = 0
    log: Annotated[list[int], operator.add] = []


def step_rate(path: Path, steps: int, *, memory: bool) -> float:
    def work(state: Loop, ctx: RunContext) -> dict[str, Any]:
        if memory:
            ctx.store.put(("loop",), f"k{state.n}", {"n": state.n})
        return {"n": state.n + 1}

    g = StateGraph(Loop)
    g.add_node("work", work)
    g.add_edge(START, "work")
    g.add_conditional_edges("work", lambda s: "work" if s.n < steps else END, ["work", END])
    with SQLiteCheckpointer(path) as saver, SQLiteStore(path) as store:
        app = g.compile(checkpointer=saver, store=store)
        app.invoke({}, thread_id="warm", max_steps=steps + 1)
        started = time.perf_counter()
        app.invoke({}, thread_id="t", max_steps=steps + 1)
        return steps / (time.perf_counter() - started)


# -- search -------------------------------------------------------------------------------------

def filled(path: Path, namespaces: int, per: int) -> SQLiteStore:
    store = SQLiteStore(path)
    writes = [StoreWrite(("users", f"u{u}", "memories"), f"k{i}", json.dumps(
        {"kind": "pref" if i % 4 == 0 else "fact", "n": i, "text": f"memory {i} of {u}"}))
        for u in range(namespaces) for i in range(per)]
    for start in range(0, len(writes), 10_000):
        store.apply(writes[start:start + 10_000])
    return store


def theirs_filled(path: Path, namespaces: int, per: int) -> Any:
    from langgraph.store.base import PutOp
    from langgraph.store.sqlite import SqliteStore

    manager = SqliteStore.from_conn_string(str(path))
    store = manager.__enter__()
    store.setup()
    ops = [PutOp(("users", f"u{u}", "memories"), f"k{i}",
                 {"kind": "pref" if i % 4 == 0 else "fact", "n": i,
                  "text": f"memory {i} of {u}"})
           for u in range(namespaces) for i in range(per)]
    for start in range(0, len(ops), 10_000):
        store.batch(ops[start:start + 10_000])
    return manager, store


def vectors_filled(path: Path, items: int) -> SQLiteStore:
    store = SQLiteStore(path, index={"embed": fake_embed, "dims": DIMS, "fields": ["text"]})
    texts = [f"memory number {i}" for i in range(items)]
    vectors = fake_embed(texts)
    writes = [StoreWrite(("docs", f"d{i % 10}"), f"k{i}", json.dumps({"text": text}),
                         None, {"text": vector})
              for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))]
    for start in range(0, len(writes), 5_000):
        store.apply(writes[start:start + 5_000])
    return store


# -- the run ------------------------------------------------------------------------------------

def run(quick: bool, compare: bool, tmp: Path) -> dict[str, Any]:
    ops = 200 if quick else 2_000
    steps = 50 if quick else 2_000
    namespaces, per = (20, 10) if quick else (1_000, 100)
    vector_items = 500 if quick else 10_000
    repeats = 5 if quick else 50
    out: dict[str, Any] = {"sizes": {"put_get": ops, "steps": steps,
                                     "items": namespaces * per, "namespaces": namespaces,
                                     "vector_items": vector_items, "dims": DIMS}}
    out["put_get_ours"] = ours_put_get(tmp / "ours.db", ops)
    if compare:
        out["put_get_theirs"] = theirs_put_get(tmp / "theirs.db", ops)
    rates = []
    # alternated, the median of seven each: a run of 2,000 steps takes ~0.25 s, in which one
    # stall of the machine (or a lucky quiet moment) moves a single rate by 5-10%
    for memory in (False, True) * (2 if quick else 7):
        rates.append((memory, step_rate(tmp / f"steps-{len(rates)}.db", steps, memory=memory)))
    out["steps_plain"] = statistics.median(r for m, r in rates if not m)
    out["steps_memory"] = statistics.median(r for m, r in rates if m)
    store = filled(tmp / "search.db", namespaces, per)
    users = iter(range(10**9))
    out["search_one_user_ms"] = median_ms(lambda: store.search(
        ("users", f"u{next(users) % namespaces}"), filter={"kind": "pref"}, limit=10), repeats)
    out["search_all_ms"] = median_ms(lambda: store.search(
        ("users",), filter={"kind": "pref"}, limit=10), max(3, repeats // 10))
    store.close()
    if compare:
        manager, theirs = theirs_filled(tmp / "theirs-search.db", namespaces, per)
        users = iter(range(10**9))
        out["search_one_user_theirs_ms"] = median_ms(lambda: theirs.search(
            ("users", f"u{next(users) % namespaces}"), filter={"kind": "pref"}, limit=10),
            repeats)
        manager.__exit__(None, None, None)
    vectors = vectors_filled(tmp / "vectors.db", vector_items)
    queries = iter(range(10**9))
    out["semantic_ms"] = median_ms(lambda: vectors.search(
        ("docs",), query=f"question {next(queries)}", limit=10), repeats)
    vectors.close()
    return out


def targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    found: list[tuple[str, bool | None, str]] = []
    theirs = result.get("put_get_theirs")
    if theirs:
        ratio = result["put_get_ours"] / theirs
        found.append(("put + get on SQLite >= 5x LangGraph's SqliteStore", ratio >= 5,
                      f"{ratio:.2f}x"))
    cost = result["steps_plain"] / result["steps_memory"]
    found.append(("a step writing one memory costs <= 1.3x one that does not", cost <= 1.3,
                  f"{cost:.2f}x"))
    found.append(("filtered search, 100,000 items / 1,000 namespaces: median < 10 ms",
                  result["search_one_user_ms"] < 10, f"{result['search_one_user_ms']:.3f} ms"))
    found.append(("semantic search, 10,000 items of 384 dims: median < 30 ms",
                  result["semantic_ms"] < 30, f"{result['semantic_ms']:.3f} ms"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--compare", choices=["langgraph"])
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.quick, args.compare == "langgraph", Path(tmp))
    print(f"sizes: {result['sizes']}")
    print(f"put + get (SQLite), ops/s: ours {result['put_get_ours']:,.0f}"
          + (f", LangGraph {result['put_get_theirs']:,.0f}" if "put_get_theirs" in result
             else ""))
    print(f"loop steps/s on SQLite: without a memory {result['steps_plain']:,.0f}, "
          f"writing one {result['steps_memory']:,.0f}")
    print(f"filtered search, median ms: one user's namespace {result['search_one_user_ms']:.3f}"
          + (f" (LangGraph {result['search_one_user_theirs_ms']:.3f})"
             if "search_one_user_theirs_ms" in result else "")
          + f"; the whole store {result['search_all_ms']:.3f}")
    print(f"semantic search, median ms: {result['semantic_ms']:.3f}")
    found = targets(result)
    if not args.quick:
        print("Targets (computed from this run):")
        for name, passed, value in found:
            print(f"  {'PASS' if passed else 'FAIL'}  {name:<66} {value}")
    if args.json:
        args.json.write_text(json.dumps({**result, "targets": [
            {"target": n, "passed": p, "value": v} for n, p, v in found]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
