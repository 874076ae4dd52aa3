"""The viewer's ASGI application: JSON endpoints over a checkpoint database, and static files.

    GET  /                                           the page (static/index.html)
    GET  /static/...                                 its script and styles
    GET  /api/info                                   database, graph, whether actions are on
    GET  /api/threads[?status=failed][&all=1]        a page of threads, newest first
         [&limit=N&offset=K | &since=CURSOR]         (polls: only the changed ones)
    GET  /api/threads/{id}[?limit=N][&before=CP | &since=CP]
                                                     a thread and a page of its checkpoints
    GET  /api/threads/{id}/checkpoints/{cp}          the state there, and its diff
    GET  /api/threads/{id}/diagram.svg               the graph with the run path (needs graph;
                                                     sanitised SVG)
    GET  /api/memory[?namespace=["users","u1"]][&limit=N&offset=K]
                                                     the store: the namespaces one level
                                                     under it, and a page of its items (read-only)
    POST /api/threads/{id}/resume | /rollback        only with allow_actions (and a graph)
    POST /api/threads/{id}/update  {"values": {...}, "as_node"?, "checkpoint"?}   (the same)
    POST /api/threads/{id}/fork    {"checkpoint": "7", "to"?: "new-thread"}         (the same)
    POST /api/threads/{id}/delete                    the thread and its subgraph threads (the same)

The page polls every second: with `since` and the ETag of its last answer (If-None-Match), an
unchanged thread or list answers 304 with no body, a changed one only the rows that changed.

Without a graph, everything comes from the stored records (no user code is imported); a
checkpoint that stores no snapshot is shown as the nearest stored state plus the raw writes
since. With a graph, states are rebuilt exactly through its reducers. Given several graphs,
each thread is read, drawn and acted on with the one it is bound to (`graph_binding`); a
thread bound to none of them is shown from its records, with a note saying which graph ran
it, and its actions answer 409 with the same reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, get_args

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from checkpoints.base import Status
from checkpoints.redaction import redact_dsn
from statemachine.compiled import CompiledGraph
from statemachine.errors import StateMachineError
from statemachine.graph_binding import mismatch
from statemachine.records import stored_writes
from statemachine.store_reader import (
    DEFAULT_SCHEMA,
    Store,
    bind_graph,
    checkpoint_rows,
    listed,
    location,
    open_store,
    state_at,
    thread_row,
)

from .guards import HostGuard, SecurityHeaders, allowed_hosts, check_action_request, is_loopback
from .svg import UnsafeSvgError, sanitize_svg

STATIC = Path(__file__).resolve().parent / "static"
STATUSES: tuple[str, ...] = get_args(Status)
_BAD_ID = re.compile(r"[\x00-\x1f\x7f/\\]")
PAGE, MAX_PAGE = 100, 1000  # rows per page: by default, and at most
ACTIONS = ("resume", "rollback", "update", "fork", "delete")
MAX_ACTION_BODY = 1_000_000  # bytes of an update's values
SINCE_MARGIN = 2.0  # seconds a poll looks back before its cursor (see Viewer.threads)


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
                 graphs: Sequence[tuple[Any, str]] = (), allow_actions: bool = False,
                 schema: str = DEFAULT_SCHEMA) -> None:
        self.db = location(db)
        self.schema = schema
        self.store = open_store(self.db, schema=schema)
        given = [*graphs, *([(graph, graph_name or "graph")] if graph is not None else [])]
        self.graph_name = ", ".join(name for _, name in given) or None
        self.allow_actions = allow_actions
        # the graphs over the read-only store (history, get_state, diagram), with their names
        self.apps = [(bind_graph(g, self.store.saver), name) for g, name in given]
        self._actions_apps: dict[int, CompiledGraph] = {}
        self._writer: Store | None = None  # the store actions write to
        self._memory: Any = None  # the long-term store, read-only, opened on first use

    def close(self) -> None:
        self.store.close()
        if self._writer is not None:
            self._writer.close()
        if self._memory is not None:
            self._memory.close()

    def memory(self, namespace: tuple[str, ...], *, limit: int, offset: int) -> dict[str, Any]:
        """The store's namespaces one level under `namespace`, and a page of the items in
        and under it, newest first (read-only: no time to live is refreshed)."""
        if self._memory is None:
            if isinstance(self.db, str):
                from checkpoints.store_postgres import PostgresStore

                self._memory = PostgresStore(self.db, schema=self.schema, read_only=True)
            else:
                from checkpoints.store_sqlite import SQLiteStore

                self._memory = SQLiteStore(self.db, read_only=True)
        store = self._memory
        children = store.list_namespaces(prefix=namespace or None,
                                         max_depth=len(namespace) + 1, limit=MAX_PAGE)
        items = store.search(namespace, limit=limit + 1, offset=offset, refresh_ttl=False)
        return {"namespace": list(namespace),
                "namespaces": [list(ns) for ns in children if len(ns) > len(namespace)],
                "items": [{"namespace": list(i.namespace), "key": i.key, "value": i.value,
                           "created_at": i.created_at, "updated_at": i.updated_at,
                           "expires_at": i.expires_at} for i in items[:limit]],
                "more": len(items) > limit}

    def graph_for(self, thread_id: str) -> tuple[int | None, str | None]:
        """Which of the given graphs runs the thread (its index), or why none may: the thread
        is bound to another graph (`graph_binding`). A thread never bound takes the first."""
        if not self.apps:
            return None, None
        stored = self.store.graphs([thread_id]).get(thread_id)
        if stored is None:
            return 0, None
        for index, (app, _) in enumerate(self.apps):
            if mismatch(thread_id, stored, app.identity) is None:
                return index, None
        given = "; ".join(f"{name}: {app.identity.describe()}" for app, name in self.apps)
        return None, (f"thread {thread_id!r} was run by graph {stored.describe()}, and the "
                      f"viewer was given another ({given}). Start the viewer with --graph "
                      "naming the graph that ran it (repeat --graph for several), or move the "
                      "thread to one of these on purpose with `statemachine rebind`.")

    def app_for(self, thread_id: str) -> CompiledGraph | None:
        """The graph reading the thread (None: none given, or none of them ran it)."""
        index, _ = self.graph_for(thread_id)
        return None if index is None else self.apps[index][0]

    def actions_app(self, thread_id: str) -> CompiledGraph:
        """The graph that runs the thread, on a writing checkpointer (made on the first
        action); a 409 saying why when no graph given runs it."""
        index, why = self.graph_for(thread_id)
        if index is None:
            raise HTTPException(409, why or "actions need the graph: pass --graph "
                                             "MODULE:ATTRIBUTE")
        if index not in self._actions_apps:
            if self._writer is None:
                self._writer = open_store(self.db, schema=self.schema, read_only=False)
            self._actions_apps[index] = bind_graph(self.apps[index][0], self._writer.saver)
        return self._actions_apps[index]

    def delete(self, thread_id: str) -> dict[str, Any]:
        """Delete the thread with its subgraph threads (a live run's thread is refused)."""
        if self._writer is None:
            self._writer = open_store(self.db, schema=self.schema, read_only=False)
        writer = self._writer
        removed = writer.call(lambda: writer.saver.delete_thread(thread_id))
        if thread_id in removed.skipped:
            raise HTTPException(409, f"thread {thread_id!r} is held by a live run; it was not "
                                     "deleted")
        return {"action": "delete", "thread_id": thread_id, "threads": list(removed.threads),
                "checkpoints": sum(removed.checkpoints.values())}

    # -- reads (synchronous: the endpoints run them in the thread pool) ---------------------

    def threads(self, status: str | None, show_all: bool, *, limit: int, offset: int = 0,
                since: float | None = None) -> dict[str, Any]:
        """A page of threads, most recently updated first; with `since` (the `cursor` of an
        earlier answer), only the threads changed after it, whatever their status (the page
        drops those its filter no longer takes). `version` changes whenever any thread does.
        """
        infos = listed(self.store.threads(), show_all=show_all)
        matching = [t for t in infos if status is None or t.status == status]
        if since is None:
            chosen = matching[offset:offset + limit]
        else:  # a little before the cursor: a commit may land later than its own timestamp
            chosen = [t for t in infos if t.updated_at > since - SINCE_MARGIN]
        version = hashlib.sha256(repr([(t.thread_id, t.checkpoint_id, t.status, t.busy)
                                       for t in infos]).encode()).hexdigest()[:20]
        return {"threads": [thread_row(t) for t in chosen], "total": len(matching),
                "more": since is None and offset + limit < len(matching),
                "busy": [t.thread_id for t in infos if t.busy],
                "cursor": max((t.updated_at for t in infos), default=since or 0.0),
                "version": f"{status}:{show_all}:{version}"}

    def latest(self, thread_id: str) -> Any:
        """The thread's latest checkpoint record; 404 when there is no such thread."""
        records = self.store.records(thread_id, limit=1)
        if not records:
            raise HTTPException(404, f"no thread {thread_id!r}")
        return records[0]

    def head(self, thread_id: str, latest: Any) -> dict[str, Any] | None:
        """The thread as the list shows it. Threads are listed by their last change, which
        is never before their latest checkpoint: only those changed since are read."""
        infos = self.store.threads(updated_since=latest.created_at - SINCE_MARGIN)
        info = next((t for t in infos if t.thread_id == thread_id), None)
        return thread_row(info) if info is not None else None

    def version(self, thread_id: str) -> tuple[str, Any, dict[str, Any] | None]:
        """What identifies the thread's current state for polls (its ETag), read cheaply:
        the latest checkpoint, its pending writes (parallel nodes finish one by one), the
        thread's status, last change and liveness."""
        latest = self.latest(thread_id)
        pending = self.store.pending([latest.id]).get(latest.id, [])
        head = self.head(thread_id, latest)
        parts = (latest.id, latest.status, len(pending), head and head["status"],
                 head and head["updated_at"], head and head["busy"])
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:20], latest, head

    def thread(self, thread_id: str, *, limit: int, before: str | None = None,
               since: str | None = None) -> dict[str, Any]:
        """A page of the thread's checkpoints, newest first: the latest `limit`, or those
        older than `before`; `before` in the answer asks for the next older page (None: no
        more). With `since` (a checkpoint id), only the checkpoints from it on (it may have
        changed too); `gap` says there were more than `limit`, so the page should start over.
        """
        version, latest, head = self.version(thread_id)
        records = self.store.records(thread_id, limit=limit + 1, before=before)
        page, more, gap = records[:limit], len(records) > limit, False
        if since is not None:
            gap = more and bool(page) and int(page[-1].id) > int(since)
            page, more = [r for r in page if int(r.id) >= int(since)], False
        index, why = self.graph_for(thread_id)
        return {"thread": head,
                "checkpoints": checkpoint_rows(self.store, thread_id, page, records,
                                               timings=True),
                "before": page[-1].id if more and page else None, "gap": gap,
                "latest": latest.id,
                "graph": None if index is None else self.apps[index][1], "graph_note": why,
                "allow_actions": self.allow_actions, "version": version}

    def checkpoint(self, thread_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The state at a checkpoint (exact, or the nearest stored state and the writes since),
        what its step wrote, its pending writes, and what changed from its parent's state."""
        self.latest(thread_id)
        chain = self.store.load(thread_id, checkpoint_id)
        if chain is None:
            raise HTTPException(404, f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
        record = chain.head
        before = self.store.load(thread_id, record.parent_id) if record.parent_id else None
        parent = before.head if before is not None else None
        pending = self.store.pending([record.id, *([parent.id] if parent else [])])
        result: dict[str, Any] = {
            "checkpoint_id": record.id, "parent_id": record.parent_id, "step": record.step,
            "status": record.status, "error": record.error,
            "writes": stored_writes(record, parent, pending),
            "pending_writes": {w.node: json.loads(w.writes)
                               for w in pending.get(record.id, [])}}
        app = self.app_for(thread_id)
        state, exact = state_at(thread_id, chain, app)
        result["state"], result["exact"] = state, exact
        if before is None:
            result["diff"] = None
        else:
            earlier, earlier_exact = state_at(thread_id, before, app)
            result["diff"] = json_diff(earlier, state) if exact and earlier_exact else None
        return result

    def diagram(self, thread_id: str) -> bytes:
        import visualize

        self.latest(thread_id)
        index, why = self.graph_for(thread_id)
        if index is None:
            raise HTTPException(409, why or "pass --graph MODULE:ATTRIBUTE to see the diagram")
        try:
            svg = visualize.render_bytes(self.apps[index][0], "svg", thread_id=thread_id)
        except visualize.GraphvizNotFoundError as exc:
            raise HTTPException(501, str(exc)) from exc
        try:  # whatever stored text slipped into it must not reach the page as markup
            return sanitize_svg(svg).encode()
        except UnsafeSvgError as exc:
            raise HTTPException(500, f"the diagram of thread {thread_id!r} was refused: "
                                     f"{exc}") from exc


def _etag(version: str) -> str:
    return f'"{version}"'


def _answer(request: Request, body: dict[str, Any]) -> Response:
    """`body` as JSON with its version as ETag; 304 (no body) when the poll has it already."""
    headers = {"Cache-Control": "no-cache", "ETag": _etag(body["version"])}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


def _number(query: Any, name: str, kind: type[int] | type[float]) -> Any:
    """The query parameter `name` as a non-negative number (0 when absent); 400 if not one."""
    try:
        value = kind(query.get(name, 0))
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):
        raise HTTPException(400, f"bad {name} {query.get(name, '')[:40]!r}: give a "
                                 f"non-negative {'integer' if kind is int else 'number'}")
    return value


def _limit(query: Any) -> int:
    limit = _number(query, "limit", int) if "limit" in query else PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise HTTPException(400, f"bad limit {limit}: give 1 to {MAX_PAGE} rows per page")
    return limit


def _checkpoint_param(query: Any, name: str) -> str | None:
    value = query.get(name)
    if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise HTTPException(400, f"bad {name} {value[:40]!r}: give a checkpoint id")
    return value


def create_app(db: str | Path, *, graph: Any = None, graph_name: str | None = None,
               graphs: Sequence[tuple[Any, str]] = (), allow_actions: bool = False,
               host: str = "127.0.0.1", allow_hosts: Iterable[str] = (),
               schema: str = DEFAULT_SCHEMA) -> Starlette:
    """The viewer as an ASGI application (uvicorn runs it: see `statemachine ui`). `db` is a
    SQLite file or a PostgreSQL URL (tables in `schema`).

    Requests must name the viewer in their Host header (`allowed_hosts`: loopback, `host`,
    this machine's names, `allow_hosts`). Listening beyond loopback with actions on, actions
    also need `app.state.token` (print it for the user: the page takes it from ?token=).
    """
    viewer = Viewer(db, graph=graph, graph_name=graph_name, graphs=graphs,
                    allow_actions=allow_actions, schema=schema)
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
        where = redact_dsn(viewer.db) if isinstance(viewer.db, str) else str(viewer.db)
        return JSONResponse({"db": where, "graph": graph_name,
                             "allow_actions": allow_actions, "read_only": not allow_actions,
                             "statuses": list(STATUSES)})

    async def threads(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise HTTPException(400, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        show_all = request.query_params.get("all") in ("1", "true")
        query = request.query_params
        since = _number(query, "since", float) if "since" in query else None
        body = await off_loop(lambda: viewer.threads(
            status, show_all, limit=_limit(query), offset=_number(query, "offset", int),
            since=since))
        return _answer(request, body)

    async def thread(request: Request) -> Response:
        thread_id, query = thread_param(request), request.query_params
        before, since = (_checkpoint_param(query, name) for name in ("before", "since"))

        def read() -> dict[str, Any] | None:
            if since is not None and _etag(viewer.version(thread_id)[0]) == \
                    request.headers.get("if-none-match"):
                return None  # a poll, and nothing changed: no need to read the page
            return viewer.thread(thread_id, limit=_limit(query), before=before, since=since)

        body = await off_loop(read)
        if body is None:
            return Response(status_code=304, headers={"Cache-Control": "no-cache",
                                                      "ETag": request.headers["if-none-match"]})
        return _answer(request, body)

    async def checkpoint(request: Request) -> Response:
        checkpoint_id = request.path_params["checkpoint_id"]
        if not (checkpoint_id.isascii() and checkpoint_id.isdigit() and len(checkpoint_id) <= 19):
            raise HTTPException(400, f"bad checkpoint id {checkpoint_id[:40]!r}")
        return JSONResponse(await off_loop(viewer.checkpoint, thread_param(request),
                                           checkpoint_id))

    async def diagram(request: Request) -> Response:
        svg = await off_loop(viewer.diagram, thread_param(request))
        return Response(svg, media_type="image/svg+xml")

    async def action(request: Request) -> Response:
        thread_id = thread_param(request)
        name = request.path_params["action"]
        if name not in ACTIONS:
            raise HTTPException(404, f"no action {name!r}")
        if not allow_actions:
            raise HTTPException(403, "read-only viewer: start it with --allow-actions to "
                                     "resume or roll back runs")
        check_action_request(request, token)
        if not viewer.apps:
            raise HTTPException(409, "actions need the graph: pass --graph MODULE:ATTRIBUTE")
        options = await action_options(request, name)
        await off_loop(viewer.latest, thread_id)
        if name == "delete":  # storage alone: any graph's thread may go
            return JSONResponse(await off_loop(viewer.delete, thread_id))
        app = await off_loop(viewer.actions_app, thread_id)

        def run() -> dict[str, Any]:
            target = thread_id
            try:
                if name == "resume":
                    app.resume(thread_id)
                elif name == "rollback":
                    app.rollback(thread_id)
                elif name == "update":
                    app.update_state(thread_id, options["values"],
                                     as_node=options.get("as_node"),
                                     checkpoint_id=options.get("checkpoint"))
                else:
                    target = options.get("to") or thread_id
                    app.fork(thread_id, options["checkpoint"], to_thread=options.get("to"))
            except StateMachineError:
                raise
            except Exception as exc:  # the run failed again: its node's error
                error: str | None = f"{type(exc).__name__}: {exc}"
            else:
                error = None
            snapshot = app.get_state(target)
            return {"action": name, "thread_id": target, "status": snapshot.status,
                    "step": snapshot.step, "checkpoint_id": snapshot.checkpoint_id,
                    "error": error or snapshot.error}

        return JSONResponse(await off_loop(run))

    async def action_options(request: Request, name: str) -> dict[str, Any]:
        """The JSON body of an update or a fork, checked: what the action needs, nothing else."""
        if name not in ("update", "fork"):
            return {}
        raw = await request.body()
        if len(raw) > MAX_ACTION_BODY:
            raise HTTPException(413, f"the request is larger than {MAX_ACTION_BODY:,} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise HTTPException(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        options: dict[str, Any] = {}
        for key in ("checkpoint", "to", "as_node"):
            value = body.get(key)
            if value not in (None, ""):
                if not isinstance(value, str) or len(value) > 512:
                    raise HTTPException(400, f"{key} must be text")
                options[key] = value
        if "checkpoint" in options and not (options["checkpoint"].isascii()
                                            and options["checkpoint"].isdigit()):
            raise HTTPException(400, "checkpoint must be a checkpoint id")
        if "to" in options:
            check_thread_id(options["to"])
        if name == "update":
            if not isinstance(body.get("values"), dict):
                raise HTTPException(400, "values must be a JSON object of state fields")
            options["values"] = body["values"]
        elif "checkpoint" not in options:
            raise HTTPException(400, "fork needs the checkpoint to branch off")
        return options

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail, "status": exc.status_code},
                            status_code=exc.status_code)

    async def memory(request: Request) -> Response:
        raw = request.query_params.get("namespace") or "[]"
        try:
            namespace = json.loads(raw)
        except ValueError:
            raise HTTPException(400, "namespace must be a JSON list of labels") from None
        if not isinstance(namespace, list) or len(namespace) > 32 or not all(
                isinstance(x, str) and 0 < len(x) <= 512 for x in namespace):
            raise HTTPException(400, "namespace must be a JSON list of labels")
        query = request.query_params
        limit, offset = _limit(query), _number(query, "offset", int)
        try:
            body = await run_in_threadpool(viewer.memory, tuple(namespace), limit=limit,
                                           offset=offset)
        except StateMachineError as exc:
            raise HTTPException(400, str(exc)) from exc
        return JSONResponse(body)

    routes = [
        Route("/", index),
        Route("/api/memory", memory),
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
