"""The read model of stored runs, shared by the command line and the viewer (`statemachine ui`).

A store opened from a path or URL (`open_store`) with synchronous reads (`Store`); a thread's
checkpoints as rows (`history_page`, `checkpoint_rows`) and its threads (`listed`,
`thread_row`), read from the checkpointer's records (JSON text) without importing user code;
the state at a checkpoint (`state_at`): exact from a snapshot or through the graph's reducers,
else the nearest stored state and the raw writes since; a graph on a store (`bind_graph`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from checkpoints import SQLiteCheckpointer, is_postgres_url
from checkpoints.base import Chain, Checkpointer, CheckpointRecord, PendingWrite, ThreadInfo
from checkpoints.errors import CheckpointError
from checkpoints.retention import is_top_level
from checkpoints.rows import damaged

from ._sync import run_sync
from .checkpoint_extra import extra_of
from .compiled import CompiledGraph
from .graph_binding import GraphIdentity, decode_identity
from .memory import store_beside
from .records import decode_tasks, finished_tasks, ran_nodes, stored_writes
from .types import Snapshot
from .waiting import INTERRUPT_EVENT

if TYPE_CHECKING:
    from .graph import StateGraph

T = TypeVar("T")

DEFAULT_SCHEMA = "statemachine"
"""The PostgreSQL schema holding the tables unless another is named."""

# -- opening a store ----------------------------------------------------------------------------

def location(where: str | Path) -> Path | str:
    """A store's location as given: a PostgreSQL URL stays text, anything else is the path of
    a SQLite file."""
    return where if isinstance(where, str) and is_postgres_url(where) else Path(where)


def open_store(where: str | Path, *, schema: str = DEFAULT_SCHEMA, read_only: bool = True,
               **options: Any) -> Store:
    """The store at `where`: a SQLite file, or a PostgreSQL URL (its tables in `schema`).

    `read_only` opens SQLite's read-only mode, or read-only PostgreSQL connections: nothing is
    created or changed, and the write methods raise `CheckpointError`. Runs that other
    processes commit meanwhile are seen. `options` go to the checkpointer (`lease_seconds`)."""
    where = location(where)
    if isinstance(where, str):
        from checkpoints.postgres import PostgresCheckpointer

        return Store(PostgresCheckpointer(where, schema=schema, read_only=read_only, **options))
    return Store(SQLiteCheckpointer(where, read_only=read_only, **options))


@dataclass(frozen=True)
class Store:
    """An open checkpointer with synchronous twins of its reads: the command line and the
    viewer are synchronous (the viewer runs them in worker threads). Give `saver` to a graph
    (`bind_graph`) to read states through its reducers."""

    saver: Checkpointer

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Any other call of the checkpointer, run to its end: `store.call(store.saver.jobs)`."""
        return run_sync(make)

    def load(self, thread_id: str, checkpoint_id: str | None = None) -> Chain | None:
        return run_sync(lambda: self.saver.load(thread_id, checkpoint_id))

    def records(self, thread_id: str, *, limit: int | None = None,
                before: str | None = None) -> list[CheckpointRecord]:
        """The thread's checkpoints, newest first (see `Checkpointer.list`)."""
        return run_sync(lambda: self.saver.list(thread_id, limit=limit, before=before))

    def parents_outside(self, thread_id: str, page: Sequence[CheckpointRecord],
                        known: Iterable[str] = ()) -> dict[str, Chain]:
        return run_sync(lambda: self.saver.parents_outside(thread_id, page, known))

    def pending(self, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        return run_sync(lambda: self.saver.list_pending(checkpoint_ids))

    def threads(self, *, limit: int | None = None, offset: int = 0,
                updated_since: float | None = None) -> list[ThreadInfo]:
        return run_sync(lambda: self.saver.threads(limit=limit, offset=offset,
                                                   updated_since=updated_since))

    def graphs(self, thread_ids: Sequence[str]) -> dict[str, GraphIdentity]:
        """The graph each of these threads is bound to (`graph_binding`); unbound ones are
        left out, and so is a damaged binding (one thread's must not take a listing down;
        running that thread says what is wrong)."""
        stored = run_sync(lambda: self.saver.thread_graphs(thread_ids))
        graphs = {}
        for thread, text in stored.items():
            with contextlib.suppress(CheckpointError):
                graphs[thread] = decode_identity(text, thread)
        return graphs

    def close(self) -> None:
        self.saver.close()


def bind_graph(graph: StateGraph | CompiledGraph, saver: Checkpointer | None) -> CompiledGraph:
    """`graph` on the store `saver`: a StateGraph compiled with it, a CompiledGraph rebuilt on
    it with the same spec and name (its compile options kept). Without a store, a StateGraph
    is compiled and a CompiledGraph stays as it is. `GraphValidationError` if it is invalid."""
    if saver is None:
        return graph if isinstance(graph, CompiledGraph) else graph.compile()
    if isinstance(graph, CompiledGraph):  # its store moves to the database too
        store = store_beside(saver, graph.store) if graph.store is not None else None
        return CompiledGraph(graph.spec, checkpointer=saver, store=store,
                             name=graph.name if graph.identity.named else None)
    return graph.compile(checkpointer=saver, store=store_beside(saver))


# -- threads and checkpoints as rows ------------------------------------------------------------

def listed(infos: Iterable[ThreadInfo], *, show_all: bool = False) -> list[ThreadInfo]:
    """The threads a listing shows: not those subgraph nodes ran in (`parent::node:...`)
    unless `show_all`."""
    return [t for t in infos if show_all or is_top_level(t.thread_id)]


def thread_row(info: ThreadInfo, graph: GraphIdentity | None = None) -> dict[str, Any]:
    """A thread as a dict (what `threads --json` prints), with the graph it is bound to."""
    return {"thread_id": info.thread_id, "status": info.status, "step": info.step,
            "checkpoint_id": info.checkpoint_id, "busy": info.busy, "error": info.error,
            "graph": graph.name if graph else None,
            "graph_structure": graph.fingerprint if graph else None,
            "updated_at": info.updated_at, "time": format_time(info.updated_at)}


def history_page(store: Store, thread_id: str, *, limit: int, before: str | None = None,
                 app: CompiledGraph | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a thread's history rows, newest first: at most `limit` checkpoints older
    than `before` (a checkpoint id; None: from the latest), and the `before` of the next older
    page (None on the last). From the stored records, or through `app.history()` when given.
    It reads the page and one more row, never the whole thread."""
    if app is not None:
        snapshots = app.history(thread_id, limit=limit + 1, before=before)
        rows = [row_from_snapshot(s) for s in snapshots[:limit]]
        return rows, rows[-1]["checkpoint_id"] if len(snapshots) > limit else None
    records = store.records(thread_id, limit=limit + 1, before=before)
    page = records[:limit]
    rows = checkpoint_rows(store, thread_id, page, records)
    return rows, page[-1].id if len(records) > limit and page else None


def checkpoint_rows(store: Store, thread_id: str, page: Sequence[CheckpointRecord],
                    read: Iterable[CheckpointRecord] = (), *, timings: bool = False
                    ) -> list[dict[str, Any]]:
    """Rows of `page` (checkpoints of one thread). The parents it points to outside what was
    `read` already are loaded (`parents_outside`), and the pending writes of both: a step's
    nodes are told from its parent's. `timings` adds the viewer's `attempts`, `cache_hits`
    and `duration` (seconds since the parent)."""
    if not page:
        return []
    by_id = {r.id: r for r in (*read, *page)}
    by_id.update((parent_id, chain.head) for parent_id, chain in
                 store.parents_outside(thread_id, page, by_id).items())
    parents = [by_id.get(r.parent_id) if r.parent_id else None for r in page]
    pending = store.pending([*dict.fromkeys(
        [r.id for r in page] + [p.id for p in parents if p is not None])])
    rows = []
    for record, parent in zip(page, parents, strict=True):
        row = row_from_record(record, parent, pending)
        if timings:
            extra = extra_of(record)
            row["attempts"] = extra.attempts
            row["cache_hits"] = extra.cache_hits
            row["duration"] = record.created_at - parent.created_at if parent else None
        rows.append(row)
    return rows


def history_rows(records: Sequence[CheckpointRecord], pending: dict[str, list[PendingWrite]]
                 ) -> list[dict[str, Any]]:
    """Rows of a thread's checkpoints (as `saver.list` gives them, newest first)."""
    by_id = {r.id: r for r in records}
    return [row_from_record(r, by_id.get(r.parent_id) if r.parent_id else None, pending)
            for r in records]


def row_from_record(record: CheckpointRecord, parent: CheckpointRecord | None,
                    pending: dict[str, list[PendingWrite]]) -> dict[str, Any]:
    """A checkpoint as a dict (what `history --json` prints), from the stored record."""
    extra = extra_of(record)
    done = finished_tasks(record, pending)
    next_nodes = [t.node for t in decode_tasks(record.next) if t.key not in done]
    compensates = extra.compensates
    return make_row(record.id, record.parent_id, record.step, record.kind, record.status,
                    list(ran_nodes(record, parent, pending)), list(dict.fromkeys(next_nodes)),
                    sorted({node for node, _ in done}), record.error, record.created_at,
                    compensates[1] if compensates else None,
                    [name for *_, name in extra.waiting], list(extra.failed))


def row_from_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """A checkpoint as a dict, from a graph's `history()` snapshot."""
    compensates = snapshot.metadata.get("compensates")
    return make_row(snapshot.checkpoint_id, snapshot.parent_id, snapshot.step, snapshot.kind,
                    snapshot.status, list(snapshot.ran), list(dict.fromkeys(snapshot.next)),
                    sorted(snapshot.pending_writes), snapshot.error, snapshot.created_at,
                    compensates[1] if compensates else None,
                    list(snapshot.metadata.get("waits_for", [])),
                    list(snapshot.metadata.get("failed_nodes", [])))


def make_row(checkpoint_id: str, parent_id: str | None, step: int, kind: str, status: str,
             nodes: list[str], next_nodes: list[str], kept: list[str], error: str | None,
             created_at: float, compensates: str | None, waits_for: list[str],
             failed_nodes: list[str]) -> dict[str, Any]:
    """A checkpoint as history shows it. `nodes` are those whose writes made it: they ran at
    step `nodes_step`, the one before the checkpoint's own (a checkpoint's step is the one its
    `next` tasks run at, as a run's output numbers them); on a failed checkpoint,
    `failed_nodes` are those whose tasks raised at its step."""
    return {"checkpoint_id": checkpoint_id, "parent_id": parent_id, "step": step, "kind": kind,
            "status": status, "nodes": nodes, "nodes_step": step - 1 if nodes else None,
            "failed_nodes": failed_nodes, "next": next_nodes,
            "pending_writes": kept,
            "waits_for": [_shown_wait(name) for name in waits_for],
            "compensates": compensates, "error": error,
            "created_at": created_at, "time": format_time(created_at)}


def _shown_wait(event: str) -> str:
    """A waited-for event as people read it: an `interrupt` waits for an answer."""
    return "an answer" if event.startswith(INTERRUPT_EVENT) else event


def format_time(created_at: float) -> str:
    """A stored time for people; "?" for one no clock gives (a damaged or edited row), which
    must not take the whole list down."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created_at))
    except (OverflowError, OSError, ValueError):
        return "?"


# -- the state at a checkpoint ------------------------------------------------------------------

def state_at(thread_id: str, chain: Chain, app: CompiledGraph | None = None
             ) -> tuple[Any, bool]:
    """The state at `chain`'s head as plain JSON values, and whether it is exact: the stored
    snapshot, or the state rebuilt through `app`'s reducers; without either, not exact: the
    nearest stored state and the raw writes since (`unmerged_state`)."""
    head = chain.head
    if head.snapshot is not None:
        return stored_state(head), True
    if app is not None:
        return app.get_state(thread_id, head.id).state.model_dump(mode="json"), True
    return unmerged_state(chain), False


def unmerged_state(chain: Chain) -> dict[str, Any]:
    """A checkpoint that stores no snapshot, as far as it is known without the reducers: the
    nearest stored state and the raw writes since ([node, index, update] each)."""
    base = chain.records[0]
    since = []
    for before, record in pairwise(chain.records):
        since.append({"checkpoint_id": record.id, "step": record.step, "kind": record.kind,
                      "writes": stored_writes(record, before, chain.pending)})
    return {"exact": False, "checkpoint_id": chain.head.id,
            "snapshot": {"checkpoint_id": base.id, "step": base.step,
                         "state": stored_state(base)},
            "writes_since": since}


def stored_state(record: CheckpointRecord) -> Any:
    """The state a checkpoint stores (its snapshot) as plain JSON values, read without the
    graph; `CheckpointError` naming thread and checkpoint when it is not JSON."""
    try:
        return json.loads(record.snapshot or "null")
    except ValueError as exc:
        raise damaged(None, record.thread_id, record.id,
                      f"its 'snapshot' column is not JSON ({exc})") from None
