"""Node tasks on a Dask cluster (`pip install 'statemachine[dask]'`).

    from distributed import Client, LocalCluster
    from statemachine.runners import DaskRunner

    client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
    app = g.compile(checkpointer=..., runner=DaskRunner(client))   # or DaskRunner("tcp://...")

Each task is one Dask task (`client.submit`, never cached by Dask: `pure=False`) running
`remote_task.execute` on its packed bytes. A task whose worker dies is run again on another
worker by the scheduler (up to its `allowed-failures`); the driver then gets one outcome.
Chunks a task emits travel as worker events on the runner's topic, tagged by task
(`Worker.log_event`, `Client.subscribe_topic`). Cancelling a task (a node's timeout) releases
it on the scheduler; a task already running on a worker thread finishes there, and what it
returns is dropped (Python cannot stop a running thread; a process-killing engine is Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, ClassVar

from checkpoints.base import unique_key

from .base import ChunkStream, Runner
from .remote_task import execute

_topic: str | None = None


def _process_topic() -> str:
    """This process's chunk topic (a forked child makes its own)."""
    global _topic
    if _topic is None:
        _topic = f"statemachine-emit-{unique_key()}"
    return _topic


def _forget_topic_after_fork() -> None:
    global _topic
    _topic = None


os.register_at_fork(after_in_child=_forget_topic_after_fork)


class DaskRunner(Runner):
    """Run node tasks on a Dask cluster through `client` (a `distributed.Client`, or the
    address of a scheduler to connect to; a client this runner opens, `close` closes).
    `resources` (e.g. {"GPU": 1}) is passed to every `client.submit`. A task lost with its
    worker is rerun by the scheduler (its `allowed-failures`, 3 by default); a node's own
    failures come back to the driver, where its `RetryPolicy` decides."""

    engine: ClassVar[str] = "Dask"

    def __init__(self, client: Any, *, resources: dict[str, float] | None = None) -> None:
        try:
            import distributed
        except ImportError:
            raise ImportError("DaskRunner needs Dask's distributed scheduler: "
                              "pip install 'statemachine[dask]'") from None
        self._owned = isinstance(client, str)
        self.client = distributed.Client(client) if isinstance(client, str) else client
        if not isinstance(self.client, distributed.Client):
            raise TypeError(f"DaskRunner takes a distributed.Client or a scheduler address, "
                            f"got {type(client).__name__}.")
        if self.client.asynchronous:
            raise TypeError("DaskRunner takes a synchronous distributed.Client (the default, "
                            "Client(...) without asynchronous=True): runs may start on any "
                            "event loop, an asynchronous client belongs to one.")
        self._options: dict[str, Any] = {}
        if resources:
            self._options["resources"] = dict(resources)
        self._topic = _process_topic()
        """Where this process's tasks send the chunks they emit, each tagged by its task:
        one topic per driver process, so what the scheduler keeps of it is bounded (its
        last `distributed.admin.low-level-log-length` events, 1,000 by default)."""
        self._streams: dict[str, ChunkStream] = {}
        self._subscribed = False

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        stream = self._streams.get(message.get("task", ""))
        if stream is not None:
            stream.put(message["attempt"], message["chunk"])

    def _forget(self, token: str) -> None:
        self._streams.pop(token, None)

    def __repr__(self) -> str:
        scheduler = self.client.scheduler
        return f"<DaskRunner on {scheduler.address if scheduler is not None else '?'}>"

    async def submit(self, blob: bytes, *, node: str, stream: ChunkStream | None) -> bytes:
        loop = asyncio.get_running_loop()
        client = self.client
        token = None
        if stream is not None:
            token = unique_key()
            self._streams[token] = stream
            stream.on_close(lambda: self._forget(token))
            if not self._subscribed:
                client.subscribe_topic(self._topic, self._on_event)
                self._subscribed = True
        done: asyncio.Future[tuple[bool, Any]] = loop.create_future()

        def settle(outcome: tuple[bool, Any]) -> None:
            if not done.done():
                done.set_result(outcome)

        def finished(future: Any) -> None:  # on a thread of Dask's: fetching may wait
            try:
                outcome: tuple[bool, Any] = (True, future.result())
            except BaseException as exc:  # the engine's own failure (a task lost for good)
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the run's loop closed meanwhile
                loop.call_soon_threadsafe(settle, outcome)

        future = client.submit(_run_on_worker, blob, self._topic if token else None, token,
                               pure=False,
                               key=f"statemachine-{node}-{unique_key()}",
                               **self._options)
        try:
            future.add_done_callback(finished)
            ok, value = await done
        except asyncio.CancelledError:
            loop.run_in_executor(None, future.cancel)  # a round trip: not on this loop
            raise
        if not ok:
            value.add_note(f"node {node!r} did not finish on the Dask cluster")
            raise value
        return bytes(value)

    def close(self) -> None:
        if self._subscribed:
            self._subscribed = False
            if self.client.status == "running":
                self.client.unsubscribe_topic(self._topic)
        if self._owned:
            self.client.close()


def _run_on_worker(blob: bytes, topic: str | None, token: str | None) -> bytes:
    """The Dask task: run the packed node task; its chunks go out as worker events on the
    runner's topic, tagged with `token`."""
    from distributed import get_worker

    worker = get_worker()
    sink = None
    if topic is not None:
        def sink(attempt: str, data: bytes) -> None:
            worker.log_event(topic, {"task": token, "attempt": attempt, "chunk": data})
    return execute(blob, sink, f"Dask worker {worker.address}")
