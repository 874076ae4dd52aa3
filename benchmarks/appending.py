"""The chat and big-append workloads: many small appends to one long thread, and a few very
large ones. Both engines run the same measuring code, here, each through its own side module
(workloads.py or langgraph_workloads.py), so what is timed and what is counted cannot drift
apart between the two. A side module provides:

  chat_graph(clock)          START -> reply -> END over `messages: Annotated[list[str], add]`;
                             the reply's first line is `clock.node_started()`
  big_append_graph(chunks)   a chain of len(chunks) nodes, node i appends chunks[i] to
                             `chunks: Annotated[list[str], add]`
  SQLiteSession(path, graph) the engine's SQLite checkpointer on `path` (new or existing), the
                             graph compiled on it: .invoke(input, thread, field) -> the final
                             state's field, .read(thread, field) -> the latest state's field
                             (get_state), .close() -> ClosedFile; .engine, .mode

This module imports neither engine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import (
    ClosedFile,
    FirstNodeClock,
    Params,
    Result,
    add_growth_exponent,
    append_chunk,
    chat_message,
    expected_chat,
    new_db_path,
    timed_median,
    turn_window,
)

CHAT_THREAD = "chat"
BIG_THREAD = "big-append"
FIRST_NODE_TURN = 10  # the early turn whose start-up is compared with the last turn's


@dataclass(frozen=True)
class ColdReads:
    """Medians over fresh checkpointers: opening one (and compiling the graph), its first
    latest-state read, its second; and the state the last read returned."""

    open_seconds: float
    first_seconds: float
    second_seconds: float
    state: Any


def cold_reads(open_session: Callable[[], Any], thread: str, field: str,
               times: int) -> ColdReads:
    """`times` times: a new checkpointer on the file and a freshly compiled app, read twice.

    The first read is what a new process (a viewer, a worker picking the thread up) pays: a
    new connection with an empty SQLite page cache and no prepared statements (the OS's file
    cache stays warm: this is not a cold disk); the second shows how much of that was the
    first time. Each open is closed before the next.
    """
    opens, firsts, seconds, state = [], [], [], None
    for _ in range(times):
        start = time.perf_counter()
        session = open_session()
        opened = time.perf_counter()
        state = session.read(thread, field)
        first = time.perf_counter()
        session.read(thread, field)
        seconds.append(time.perf_counter() - first)
        firsts.append(first - opened)
        opens.append(opened - start)
        session.close()
    return ColdReads(statistics.median(opens), statistics.median(firsts),
                     statistics.median(seconds), state)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _converse(session: Any, clock: FirstNodeClock, turns: int) -> tuple[float, list[str]]:
    """Invoke `turns` times on the chat thread, each with the turn's user message; the
    messages are made before the clock starts. (seconds, the last result's messages)."""
    inputs = [{"messages": [chat_message("user", turn)]} for turn in range(1, turns + 1)]
    start, last = time.perf_counter(), []
    for value in inputs:
        clock.called()
        last = session.invoke(value, CHAT_THREAD, "messages")
    return time.perf_counter() - start, last


def chat(side: ModuleType, turns: int, p: Params, directory: Path) -> Result:
    """A `turns`-long conversation on one thread of a new file, then its latest-state reads:
    warm (the app that ran it, before closing) and cold (after closing, see cold_reads)."""
    clock = FirstNodeClock()
    path = new_db_path(directory, f"chat-{side.SQLiteSession.engine}")
    session = side.SQLiteSession(path, side.chat_graph(clock))
    seconds, last = _converse(session, clock, turns)
    warm, warm_state = timed_median(lambda: session.read(CHAT_THREAD, "messages"), p.reads)
    closed = session.close()
    cold = cold_reads(lambda: side.SQLiteSession(path, side.chat_graph(None)), CHAT_THREAD,
                      "messages", p.cold_reads)
    expected = expected_chat(turns)
    extra = {"turns": turns, "messages": len(last), "state_chars": sum(map(len, last)),
             **_file_notes(closed), "bytes_per_turn": round(closed.db_bytes / turns),
             "turns_per_second": round(turns / seconds, 1), **_first_node_notes(clock, turns),
             "warm_read_ms": _ms(warm), "reads": p.reads, **_cold_notes(cold),
             "cold_reads": p.cold_reads,
             "state_ok": last == expected and warm_state == expected and cold.state == expected}
    return Result("chat", session.mode, turns, seconds, closed.db_bytes, engine=session.engine,
                  extra=extra)


def _file_notes(closed: ClosedFile) -> dict[str, Any]:
    return {"wal_bytes_after_close": closed.wal_bytes,
            "wal_file_after_close": closed.wal_present}


def _first_node_notes(clock: FirstNodeClock, turns: int) -> dict[str, Any]:
    """invoke -> first line of the node, around turn 10 and over the last five turns: equal
    if starting a turn does not depend on how long the thread already is."""
    early, late = turn_window(FIRST_NODE_TURN, turns), turn_window(turns - 2, turns)
    return {"first_node_turns_early": f"{early[0]}-{early[1]}",
            "first_node_ms_early": clock.median_ms(*early),
            "first_node_turns_late": f"{late[0]}-{late[1]}",
            "first_node_ms_late": clock.median_ms(*late)}


def _cold_notes(cold: ColdReads) -> dict[str, Any]:
    return {"cold_open_ms": _ms(cold.open_seconds),
            "cold_first_read_ms": _ms(cold.first_seconds),
            "cold_second_read_ms": _ms(cold.second_seconds)}


def chat_series(side: ModuleType, sizes: tuple[int, ...], p: Params,
                directory: Path) -> list[Result]:
    """One chat per size, each on a new file, and the fitted growth exponent of the bytes."""
    results = [chat(side, turns, p, directory) for turns in sizes]
    add_growth_exponent(results, size="turns")
    return results


def big_append(side: ModuleType, p: Params, directory: Path) -> Result:
    """One run of the big-append chain on a new file (the chunks are made before timing),
    then `big_reads` latest-state reads of the whole state."""
    chunks = [append_chunk(step, p.big_append_chars)
              for step in range(1, p.big_append_steps + 1)]
    path = new_db_path(directory, f"big-append-{side.SQLiteSession.engine}")
    session = side.SQLiteSession(path, side.big_append_graph(chunks))
    start = time.perf_counter()
    final = session.invoke({"chunks": []}, BIG_THREAD, "chunks")
    seconds = time.perf_counter() - start
    read, state = timed_median(lambda: session.read(BIG_THREAD, "chunks"), p.big_reads)
    closed = session.close()
    state_bytes = sum(map(len, chunks))
    return Result("big-append", session.mode, len(chunks), seconds, closed.db_bytes,
                  engine=session.engine, extra={
                      "steps": len(chunks), "chunk_chars": p.big_append_chars,
                      "state_bytes": state_bytes,
                      **_file_notes(closed),
                      "file_per_state": round(closed.db_bytes / state_bytes, 3),
                      "wall_s": round(seconds, 3), "read_ms": _ms(read), "reads": p.big_reads,
                      "state_ok": final == chunks and state == chunks})


__all__ = ["BIG_THREAD", "CHAT_THREAD", "big_append", "chat",
           "chat_series", "cold_reads"]
