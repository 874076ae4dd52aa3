"""Stream modes, and live output from nodes (`emit`).

    for state in app.stream(inp, thread_id="t", stream_mode="values"): ...   # after each step
    for upd in app.stream(inp, thread_id="t", stream_mode="updates"): ...    # {node: update}
    for chunk in app.stream(inp, thread_id="t", stream_mode="custom"): ...   # what nodes emit
    for mode, payload in app.stream(inp, stream_mode=["updates", "custom"]): ...
    for ns, payload in app.stream(inp, stream_mode="updates", subgraphs=True): ...
    for message, metadata in app.stream(inp, stream_mode="messages"): ...  # chat messages

The run goes on in a task of its own while the caller reads; what it produces goes through one
queue (`StreamChannel`), so a chunk a node emits reaches the caller while the node still runs,
from async nodes, sync nodes (run in threads while `custom` is streamed) and parallel tasks.
The run starts a step only once the caller has read what the previous one produced.
With several modes, or with `subgraphs=True`, custom chunks come as `(node, chunk)`.
Without `subgraphs`, a subgraph's steps are its parent task's business: only its nodes' chunks
reach the caller. With it, every item is prefixed by its namespace: `()` for the parent's,
`("node:<task id>",)` for those of the subgraph that node runs (one more element per level).
`emit` is a context-variable read and nothing else when nobody streams `custom`.

"messages" streams chat messages as `(Message, metadata)` (metadata: thread_id, step, node,
task_id): each `Message` a node emits (a token chunk, say: give the chunks of one reply the
same id), and each message a node's update adds to an `add_messages` field, unless the node
streamed chunks under its id already. Messages a node emits go to "messages" when it is
streamed, else to "custom" like any chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from .messages import Message
from .state_cache import detached

StreamMode = Literal["steps", "values", "updates", "custom", "messages"]
STREAM_MODES: tuple[str, ...] = ("steps", "values", "updates", "custom", "messages")

_END = object()


class StreamChannel:
    """What a streamed run produces, in order, for the caller: (mode, payload) items. Safe to
    put into from the run's loop and from worker threads."""

    def __init__(self, modes: Sequence[str], *, subgraphs: bool = False,
                 feeds: StreamChannel | None = None, namespace: tuple[str, ...] = ()) -> None:
        """`subgraphs`: items carry their namespace, and subgraphs report all their modes.
        `feeds`: the caller's channel this one puts into (a subgraph's view of it), under
        `namespace`."""
        self.modes = frozenset(modes)
        self.custom = "custom" in self.modes
        self.messages = "messages" in self.modes
        self.live = self.custom or self.messages
        """Whether nodes' emitted chunks are streamed (they then run where they can emit
        while they run)."""
        self.updates = "updates" in self.modes
        self.values = "values" in self.modes
        self.steps = "steps" in self.modes
        self.subgraphs: bool = feeds.subgraphs if feeds is not None else subgraphs
        self.several: bool = feeds.several if feeds is not None else \
            len(self.modes) > 1 or subgraphs
        self.namespace = namespace
        self._loop: asyncio.AbstractEventLoop = feeds._loop if feeds is not None else \
            asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = feeds._queue if feeds is not None else \
            asyncio.Queue()
        self._live_only: StreamChannel | None = None

    def put(self, mode: str, payload: Any) -> None:
        self._put((self.namespace, mode, payload) if self.subgraphs else (mode, payload))

    def report(self, event: Any) -> None:
        """A committed step (a `StepEvent`), for the "steps" and "values" modes."""
        if self.steps:
            self.put("steps", event)
        if self.values:
            self.put("values", detached(event.state))  # the reader's to keep, or to change

    def _put(self, item: Any) -> None:
        """Into the queue from the loop itself, or handed to the loop from any other thread
        (the loop may move between threads: a sync stream read by a web server's pool), so
        items keep their order, the end marker last."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._queue.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        self._put(_END)

    def for_subgraph(self, node: str, task_id: str) -> StreamChannel | None:
        """This channel as the run of the subgraph that `node`'s task runs sees it: with
        `subgraphs`, all modes under the task's namespace; without, only its nodes' emitted
        chunks (its steps and updates are the parent's own to report)."""
        if self.subgraphs:
            return StreamChannel(tuple(self.modes), feeds=self,
                                 namespace=(*self.namespace, f"{node}:{task_id}"))
        if not self.live:
            return None
        if self._live_only is None:
            self._live_only = StreamChannel(tuple({"custom", "messages"} & self.modes),
                                            feeds=self)
        return self._live_only

    async def items(self) -> AsyncIterator[Any]:
        while (item := await self._queue.get()) is not _END:
            yield item
            self._queue.task_done()

    async def drained(self) -> None:
        """Wait until the caller has read everything put so far: a run streams a step ahead
        of its reader at most, and one the caller stopped reading stops with it."""
        await self._queue.join()


@dataclass(frozen=True, slots=True)
class Emitter:
    """Where the running task's `emit` goes."""

    channel: StreamChannel
    node: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """What "messages" tags the task's messages with."""
    streamed: set[str] = field(default_factory=set)
    """Ids of the messages the task streamed: its update's messages with them are not
    streamed again whole."""

    def __call__(self, chunk: Any) -> None:
        channel = self.channel
        if channel.messages and isinstance(chunk, Message):
            if chunk.id is not None:
                self.streamed.add(chunk.id)
            channel.put("messages", (chunk, dict(self.metadata)))
        elif channel.custom:
            channel.put("custom", (self.node, chunk) if channel.several else chunk)

    def finished(self, update: dict[str, Any], fields: Sequence[str]) -> None:
        """Stream the messages the task's update adds (for "messages")."""
        if not self.channel.messages:
            return
        for name in fields:
            if name not in update:
                continue
            value = update[name]
            for entry in value if isinstance(value, list | tuple) else [value]:
                if isinstance(entry, Message) and entry.role != "remove" and \
                        (entry.id is None or entry.id not in self.streamed):
                    self.channel.put("messages", (entry, dict(self.metadata)))


current_emitter: ContextVar[Emitter | None] = ContextVar("statemachine_emitter", default=None)


def emit(chunk: Any) -> None:
    """Send `chunk` (LLM tokens, progress) to whoever streams this run with
    stream_mode="custom", now, while the node runs; nothing when nobody does. Call it from a
    node (sync or async); `RunContext.emit` is the same."""
    emitter = current_emitter.get()
    if emitter is not None:
        emitter(chunk)


def shape(item: Any, single: bool, subgraphs: bool) -> Any:
    """A channel's item as the caller reads it: the payload, `(mode, payload)` with several
    modes, each prefixed by the namespace with `subgraphs`."""
    if subgraphs:
        namespace, mode, payload = item
        return (namespace, payload) if single else (namespace, mode, payload)
    return item[1] if single else item


def check_modes(stream_mode: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The modes asked for, and whether one was (payloads alone) or several (tagged)."""
    single = isinstance(stream_mode, str)
    modes = (stream_mode,) if isinstance(stream_mode, str) else tuple(stream_mode)
    unknown = [m for m in modes if m not in STREAM_MODES]
    if unknown or not modes:
        raise ValueError(f"stream_mode must be one of {', '.join(map(repr, STREAM_MODES))} "
                         f"or a list of them, got {stream_mode!r}.")
    return tuple(dict.fromkeys(modes)), single
