"""Node tasks on a Ray cluster (`pip install 'statemachine[ray]'`).

    import ray
    from statemachine.runners import RayRunner

    ray.init()                                   # or RayRunner(address="ray://head:10001")
    app = g.compile(checkpointer=..., runner=RayRunner())

Each task is one Ray task running `remote_task.execute` on its packed bytes. Ray runs a task
again when its worker process dies (`max_retries`, Ray's default 3), so the driver gets one
outcome. A task whose chunks are streamed is a streaming generator task: the node runs in a
thread of the task while the task yields each chunk as it is emitted, then the outcome.
Cancelling a task (a node's timeout) is `ray.cancel(..., force=True)`: its worker process is
killed, so the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from .base import ChunkStream, Runner
from .remote_task import execute

_DONE = object()


class RayRunner(Runner):
    """Run node tasks on Ray. Uses the Ray instance this process started or joined
    (`ray.init()`); if there is none, joins or starts one with `address` and `init_options`
    (passed to `ray.init`), and `close` shuts it down again. `num_cpus` (default 1),
    `resources`, `max_retries` and `runtime_env` are each task's Ray options."""

    engine: ClassVar[str] = "Ray"
    chunks_in_order: ClassVar[bool] = True  # a streaming task yields them before its outcome

    def __init__(self, *, address: str | None = None, num_cpus: float | None = None,
                 resources: dict[str, float] | None = None, max_retries: int | None = None,
                 runtime_env: dict[str, Any] | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("RayRunner needs Ray: pip install 'statemachine[ray]'") from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            ray.init(address=address, **(init_options or {}))
        options: dict[str, Any] = {}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if resources:
            options["resources"] = dict(resources)
        if max_retries is not None:
            options["max_retries"] = max_retries
        if runtime_env:
            options["runtime_env"] = runtime_env
        self._plain = ray.remote(_run_on_worker).options(**options)
        self._streaming = ray.remote(_run_streaming).options(num_returns="streaming", **options)

    def __repr__(self) -> str:
        return f"<RayRunner: {'started' if self._owned else 'joined'} Ray>"

    async def submit(self, blob: bytes, *, node: str, stream: ChunkStream | None) -> bytes:
        ray = self._ray
        if stream is None:
            ref = self._plain.remote(blob)
            try:
                return bytes(await ref)
            except BaseException as exc:
                _cancel_or_note(ray, ref, exc, node)
                raise
        generator: Any = self._streaming.remote(blob)  # an ObjectRefGenerator
        try:
            async for ref in generator:
                item = await ref
                if item[0] == "chunk":
                    stream.put(item[1], item[2])
                else:
                    return bytes(item[1])
        except BaseException as exc:
            _cancel_or_note(ray, generator, exc, node)
            raise
        raise RuntimeError(f"node {node!r}: its Ray task ended without an outcome")

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._owned = False
            self._ray.shutdown()


def _cancel_or_note(ray: Any, ref: Any, exc: BaseException, node: str) -> None:
    """A task the driver stopped waiting for is cancelled (its process killed); a failure of
    Ray's own says which node it was running."""
    if isinstance(exc, asyncio.CancelledError):
        with contextlib.suppress(Exception):  # already finished, or its worker gone
            ray.cancel(ref, force=True)
    elif isinstance(exc, Exception):
        exc.add_note(f"node {node!r} did not finish on the Ray cluster")


def _where() -> str:
    import ray

    try:
        context = ray.get_runtime_context()
        return f"Ray worker {context.get_worker_id()[:12]} on node {context.get_node_id()[:12]}"
    except Exception:
        return "a Ray worker"


def _run_on_worker(blob: bytes) -> bytes:
    """The Ray task: run the packed node task."""
    return execute(blob, None, _where())


def _run_streaming(blob: bytes) -> Iterator[tuple[Any, ...]]:
    """The streaming Ray task: the node runs in a thread; each chunk it emits is yielded as
    it comes ("chunk", attempt, bytes), then its outcome ("outcome", bytes)."""
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    where = _where()
    box: dict[str, bytes] = {}

    def run() -> None:
        try:
            box["outcome"] = execute(blob, lambda attempt, data: items.put((attempt, data)),
                                     where)
        finally:
            items.put(_DONE)

    thread = threading.Thread(target=run, name="statemachine-node", daemon=True)
    thread.start()
    while (item := items.get()) is not _DONE:
        yield "chunk", *item
    thread.join()
    if "outcome" not in box:  # execute itself failed (it catches what a node raises)
        raise RuntimeError("the node's task ended without an outcome")
    yield "outcome", box["outcome"]
