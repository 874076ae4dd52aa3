"""Observability: listener hooks, standard logging, and OpenTelemetry spans when installed.

A listener is any object with some of these methods (sync or async; missing ones are skipped):

    on_step_start(thread_id, step, nodes)          on_step_end(event)
    on_node_start(thread_id, step, node)           on_node_end(thread_id, step, node, update,
                                                               seconds, metadata)
    on_node_error(thread_id, step, node, error, attempts)
    on_node_retry(thread_id, step, node, attempt, error, delay)

A listener that raises is logged and skipped: watching a run never breaks it.
Logs go to the `statemachine` logger: node start/end at DEBUG, retries at WARNING, failures at
INFO (the exception itself propagates to the caller), each with the thread and node.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger("statemachine")
logger.addHandler(logging.NullHandler())  # a library logs only where the app configured it

try:  # optional: spans only when the OpenTelemetry API is installed
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the environment
    _otel_trace = None


class Observer:
    """Fans run events out to listeners, the logger and the tracer of one compiled graph."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self._tracer = _otel_trace.get_tracer("statemachine") if _otel_trace else None
        self._spans: dict[tuple[Any, ...], Any] = {}

    def add(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove(self, listener: Any) -> None:
        self.listeners.remove(listener)

    @property
    def active(self) -> bool:
        """Whether anyone listens to the frequent events (so the hot path can skip them)."""
        return bool(self.listeners) or self._tracer is not None or \
            logger.isEnabledFor(logging.DEBUG)

    async def step_start(self, thread_id: str | None, step: int, nodes: tuple[str, ...]) -> None:
        if self._tracer is not None:
            self._spans[(thread_id, step)] = self._tracer.start_span(
                "statemachine.step", attributes={"statemachine.thread_id": str(thread_id),
                                                 "statemachine.step": step,
                                                 "statemachine.nodes": list(nodes)})
        await self._emit("on_step_start", thread_id=thread_id, step=step, nodes=nodes)

    async def step_end(self, event: Any) -> None:
        span = self._spans.pop((event.thread_id, event.step), None)
        if span is not None:
            span.end()
        await self._emit("on_step_end", event=event)

    async def node_start(self, thread_id: str | None, step: int, node: str) -> None:
        logger.debug("node %r started at step %d of thread %r", node, step, thread_id,
                     extra={"thread_id": thread_id, "node": node, "step": step})
        if self._tracer is not None:
            self._spans[(thread_id, step, node)] = self._tracer.start_span(
                f"statemachine.node {node}", attributes={
                    "statemachine.thread_id": str(thread_id), "statemachine.step": step,
                    "statemachine.node": node})
        await self._emit("on_node_start", thread_id=thread_id, step=step, node=node)

    async def node_end(self, thread_id: str | None, step: int, node: str,
                       update: dict[str, Any], seconds: float, metadata: dict[str, Any]) -> None:
        logger.debug("node %r finished at step %d of thread %r in %.6f s", node, step, thread_id,
                     seconds, extra={"thread_id": thread_id, "node": node, "step": step})
        span = self._spans.pop((thread_id, step, node), None)
        if span is not None:
            span.set_attribute("statemachine.seconds", seconds)
            span.end()
        await self._emit("on_node_end", thread_id=thread_id, step=step, node=node,
                         update=update, seconds=seconds, metadata=metadata)

    async def node_error(self, thread_id: str | None, step: int, node: str,
                         error: BaseException, attempts: int) -> None:
        logger.info("node %r failed at step %d of thread %r after %d attempt(s): %s: %s", node,
                    step, thread_id, attempts, type(error).__name__, error,
                    extra={"thread_id": thread_id, "node": node, "step": step})
        span = self._spans.pop((thread_id, step, node), None)
        if span is not None:
            span.record_exception(error)
            span.end()
        await self._emit("on_node_error", thread_id=thread_id, step=step, node=node,
                         error=error, attempts=attempts)

    async def node_retry(self, thread_id: str | None, step: int, node: str, attempt: int,
                         error: BaseException, delay: float) -> None:
        logger.warning("node %r failed attempt %d at step %d of thread %r (%s: %s); retrying "
                       "in %.3f s", node, attempt, step, thread_id, type(error).__name__, error,
                       delay, extra={"thread_id": thread_id, "node": node, "step": step})
        await self._emit("on_node_retry", thread_id=thread_id, step=step, node=node,
                         attempt=attempt, error=error, delay=delay)

    async def _emit(self, method: str, **kwargs: Any) -> None:
        for listener in self.listeners:
            hook = getattr(listener, method, None)
            if hook is None:
                continue
            try:
                result = hook(**kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("listener %r failed in %s; the run goes on", listener, method)
