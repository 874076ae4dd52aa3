"""The viewer's ASGI application: JSON endpoints over a checkpoint database, and static files.

    GET  /                                           the page (static/index.html)
    GET  /static/...                                 its script and styles
    GET  /api/info                                   database, graph, whether actions are on
    GET  /api/threads[?status=failed][&all=1]        threads, newest first
    GET  /api/threads/{id}                           a thread and its checkpoints (timeline)
    GET  /api/threads/{id}/checkpoints/{cp}          the state there, and its diff
    GET  /api/threads/{id}/diagram.svg               the graph with the run path (needs graph)
    POST /api/threads/{id}/resume | /rollback        only with allow_actions (and a graph)

Without a graph, everything comes from the stored records (no user code is imported); a
checkpoint that stores no snapshot is shown as the nearest stored state plus the raw writes
since. With a graph, states are rebuilt exactly through its reducers.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from statemachine.errors import StateMachineError
from statemachine.records import extra_of, stored_writes
from statemachine.store_reader import history_rows, open_read_only, thread_row, unmerged_state

from .guards import HostGuard, SecurityHeaders, allowed_hosts, check_action_request, is_loopback
from .svg import UnsafeSvgError, sanitize_svg

STATIC = Path(__file__).resolve().parent / "static"
STATUSES = ("running", "done", "failed", "interrupted", "compensated")
_BAD_ID = re.compile(r"[\x00-\x1f\x7f/\\]")


def check_thread_id(thread_id: str) -> str:
    """400 for ids no run can have written through the API: empty, too long, path-like."""
    if not thread_id or len(thread_id) > 512 or thread_id in (".", "..") or \
            _BAD_ID.search(thread_id) or thread_id.startswith("."):
        raise HTTPException(400, f"bad thread id {thread_id[:80]!r}")
    return thread_id


def json_diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """What changed from `before` to `after`: [{path, op: added|removed|changed, ...}].

    Objects are compared key by key; lists that only grew show the appended items as added.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[dict[str, Any]] = []
        for key in [*before, *(k for k in after if k not in before)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                changes.append({"path": sub, "op": "removed", "before": before[key]})
            elif key not in before:
                changes.append({"path": sub, "op": "added", "after": after[key]})
            else:
                changes += json_diff(before[key], after[key], sub)
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(after) > len(before) \
            and after[:len(before)] == before:
        return [{"path": f"{path}[{i}]", "op": "added", "after": item}
                for i, item in enumerate(after[len(before):], start=len(before))]
    if before != after:
        return [{"path": path or "(state)", "op": "changed", "before": before, "after": after}]
    return []


class Viewer:
    """What the endpoints read: the read-only store, and the graph when one was given."""

    def __init__(self, db: str | Path, *, graph: Any = None, graph_name: str | None = None,
                 allow_actions: bool = False, schema: str = "statemachine") -> None:
        from checkpoints import is_postgres_url

        self.db: str | Path = db if isinstance(db, str) and is_postgres_url(db) else Path(db)
        self.schema = schema
        self.store = open_read_only(self.db, schema=schema)
        self.graph_name = graph_name
        self.allow_actions = allow_actions
        self.app = None  # the graph over the read-only store (history, get_state, diagram)
        self._graph = graph
        self._actions_app: Any = None
        if graph is not None:
            from statemachine.compiled import CompiledGraph

            spec = graph.spec if isinstance(graph, CompiledGraph) else graph.compile().spec
            name = graph.name if isinstance(graph, CompiledGraph) else None
            self.app = CompiledGraph(spec, checkpointer=self.store, name=name)

    def close(self) -> None:
        self.store.close()
        if self._actions_app is not None:
            self._actions_app.checkpointer.close()

    def actions_app(self) -> Any:
        """The graph on a writing checkpointer (made on the first action)."""
        if self._actions_app is None:
            from checkpoints import open_checkpointer
            from statemachine.compiled import CompiledGraph

            assert self.app is not None
            options = {"schema": self.schema} if isinstance(self.db, str) else {}
            self._actions_app = CompiledGraph(self.app.spec, name=self.app.name,
                                              checkpointer=open_checkpointer(str(self.db),
                                                                             **options))
        return self._actions_app

    # -- reads (synchronous: the endpoints run them in the thread pool) ---------------------

    def threads(self, status: str | None, show_all: bool) -> list[dict[str, Any]]:
        rows = [thread_row(t) for t in self.store.threads_sync()
                if show_all or "::" not in t.thread_id]
        return [r for r in rows if status is None or r["status"] == status]

    def records(self, thread_id: str) -> list[Any]:
        records = self.store.list_sync(thread_id)
        if not records:
            raise HTTPException(404, f"no thread {thread_id!r}")
        return records

    def thread(self, thread_id: str) -> dict[str, Any]:
        records = self.records(thread_id)
        pending = self.store.list_pending_sync([r.id for r in records])
        rows = history_rows(records, pending)
        by_id = {r.id: r for r in records}
        for row, record in zip(rows, records, strict=True):
            extra = extra_of(record)
            parent = by_id.get(record.parent_id) if record.parent_id else None
            row["attempts"] = extra.get("attempts", {})
            row["cache_hits"] = extra.get("cache_hits", [])
            row["duration"] = record.created_at - parent.created_at if parent else None
        info = next((t for t in self.store.threads_sync() if t.thread_id == thread_id), None)
        head = thread_row(info) if info is not None else None
        return {"thread": head, "checkpoints": rows, "graph": self.graph_name,
                "allow_actions": self.allow_actions,
                "version": f"{records[0].id}:{records[0].status}:{head and head['updated_at']}"}

    def checkpoint(self, thread_id: str, checkpoint_id: str) -> dict[str, Any]:
        records = self.records(thread_id)
        by_id = {r.id: r for r in records}
        record = by_id.get(checkpoint_id)
        if record is None:
            raise HTTPException(404, f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
        parent = by_id.get(record.parent_id) if record.parent_id else None
        pending = self.store.list_pending_sync([record.id, *([parent.id] if parent else [])])
        result: dict[str, Any] = {
            "checkpoint_id": record.id, "parent_id": record.parent_id, "step": record.step,
            "status": record.status, "error": record.error,
            "writes": stored_writes(record, parent, pending),
            "pending_writes": {w.node: json.loads(w.writes)
                               for w in pending.get(record.id, [])}}
        state, exact = self._state(thread_id, record)
        result["state"], result["exact"] = state, exact
        if parent is None:
            result["diff"] = None
        else:
            before, before_exact = self._state(thread_id, parent)
            result["diff"] = json_diff(before, state) if exact and before_exact else None
        return result

    def _state(self, thread_id: str, record: Any) -> tuple[Any, bool]:
        """The state at `record`, and whether it is exact (else: unmerged, see below)."""
        if record.snapshot is not None:
            return json.loads(record.snapshot), True
        if self.app is not None:
            snapshot = self.app.get_state(thread_id, record.id)
            return snapshot.state.model_dump(mode="json"), True
        chain = self.store.load_sync(thread_id, record.id)
        assert chain is not None
        return unmerged_state(chain), False

    def diagram(self, thread_id: str) -> bytes:
        import visualize

        if self.app is None:
            raise HTTPException(409, "pass --graph MODULE:ATTRIBUTE to see the diagram")
        self.records(thread_id)
        try:
            svg = visualize.render_bytes(self.app, "svg", thread_id=thread_id)
        except visualize.GraphvizNotFoundError as exc:
            raise HTTPException(501, str(exc)) from exc
        try:  # whatever stored text slipped into it must not reach the page as markup
            return sanitize_svg(svg).encode()
        except UnsafeSvgError as exc:
            raise HTTPException(500, f"the diagram of thread {thread_id!r} was refused: "
                                     f"{exc}") from exc


def create_app(db: str | Path, *, graph: Any = None, graph_name: str | None = None,
               allow_actions: bool = False, host: str = "127.0.0.1",
               allow_hosts: Iterable[str] = (), schema: str = "statemachine") -> Starlette:
    """The viewer as an ASGI application (uvicorn runs it: see `statemachine ui`). `db` is a
    SQLite file or a PostgreSQL URL (tables in `schema`).

    Requests must name the viewer in their Host header (`allowed_hosts`: loopback, `host`,
    this machine's names, `allow_hosts`). Listening beyond loopback with actions on, actions
    also need `app.state.token` (print it for the user: the page takes it from ?token=).
    """
    viewer = Viewer(db, graph=graph, graph_name=graph_name, allow_actions=allow_actions,
                    schema=schema)
    token = secrets.token_urlsafe(32) if allow_actions and not is_loopback(host) else None

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except StateMachineError as exc:
            raise HTTPException(409, str(exc)) from exc

    def thread_param(request: Request) -> str:
        return check_thread_id(request.path_params["thread_id"])

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> Response:
        where = viewer.store.where if isinstance(viewer.db, str) else str(viewer.db)
        return JSONResponse({"db": where, "graph": graph_name,
                             "allow_actions": allow_actions, "read_only": not allow_actions,
                             "statuses": list(STATUSES)})

    async def threads(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise HTTPException(400, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        show_all = request.query_params.get("all") in ("1", "true")
        return JSONResponse(await off_loop(viewer.threads, status, show_all))

    async def thread(request: Request) -> Response:
        return JSONResponse(await off_loop(viewer.thread, thread_param(request)))

    async def checkpoint(request: Request) -> Response:
        checkpoint_id = request.path_params["checkpoint_id"]
        if not checkpoint_id.isdigit():
            raise HTTPException(400, f"bad checkpoint id {checkpoint_id[:40]!r}")
        return JSONResponse(await off_loop(viewer.checkpoint, thread_param(request),
                                           checkpoint_id))

    async def diagram(request: Request) -> Response:
        svg = await off_loop(viewer.diagram, thread_param(request))
        return Response(svg, media_type="image/svg+xml")

    async def action(request: Request) -> Response:
        thread_id = thread_param(request)
        name = request.path_params["action"]
        if name not in ("resume", "rollback"):
            raise HTTPException(404, f"no action {name!r}")
        if not allow_actions:
            raise HTTPException(403, "read-only viewer: start it with --allow-actions to "
                                     "resume or roll back runs")
        check_action_request(request, token)
        if viewer.app is None:
            raise HTTPException(409, "actions need the graph: pass --graph MODULE:ATTRIBUTE")
        await off_loop(viewer.records, thread_id)

        def run() -> dict[str, Any]:
            app = viewer.actions_app()
            try:
                if name == "resume":
                    app.resume(thread_id)
                else:
                    app.rollback(thread_id)
            except StateMachineError:
                raise
            except Exception as exc:  # the run failed again: its node's error
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = None
            snapshot = app.get_state(thread_id)
            return {"action": name, "status": snapshot.status, "step": snapshot.step,
                    "error": error or snapshot.error}

        return JSONResponse(await off_loop(run))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail, "status": exc.status_code},
                            status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/threads", threads),
        Route("/api/threads/{thread_id}", thread),
        Route("/api/threads/{thread_id}/checkpoints/{checkpoint_id}", checkpoint),
        Route("/api/threads/{thread_id}/diagram.svg", diagram),
        Route("/api/threads/{thread_id}/{action}", action, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            viewer.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                    middleware=[Middleware(SecurityHeaders),
                                Middleware(HostGuard, allowed=allowed_hosts(host, allow_hosts))],
                    lifespan=lifespan)
    app.state.viewer, app.state.token = viewer, token
    return app
