"""A run shown step by step on stderr while it runs (`run`, `resume`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from ..terminal import visible
from ..types import StepEvent


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d} min"


class RunDisplay:
    """A listener that shows a run step by step on stderr.

    Each finished step is a line (step, nodes, time, retries, cache hits; "(kept)" marks a node
    whose update a failed attempt of the step kept, so it did not run again); while a step runs, a
    spinner names its nodes and the time elapsed (on a terminal). Steps of subgraphs are
    indented under their parent's.
    """

    def __init__(self, console: Console, thread_id: str | None, *, quiet: bool,
                 captured: Sequence[str] = ()) -> None:
        self.console, self.thread_id, self.quiet = console, thread_id, quiet
        self.captured = set(captured)
        self.started = time.perf_counter()
        self.step: int | None = None
        self.step_started: dict[tuple[str | None, int], float] = {}
        self.running: dict[str, None] = {}
        self.depth = 0
        self.steps = 0
        self.last_status: str | None = None
        self.failed: list[tuple[int, str, BaseException, int]] = []
        self._spinner: Any = None

    # -- listener hooks (called with keyword arguments) -----------------------------------------

    def on_step_start(self, thread_id: str | None, step: int, nodes: tuple[str, ...]) -> None:
        self.depth += 1
        self.step_started[(thread_id, step)] = time.perf_counter()
        if self._is_main(thread_id):
            self.step = step
            self.running = dict.fromkeys(nodes)

    def on_node_end(self, thread_id: str | None, step: int, node: str, update: Any,
                    seconds: float, metadata: Any) -> None:
        if self._is_main(thread_id):
            self.running.pop(node, None)

    def on_node_retry(self, thread_id: str | None, step: int, node: str, attempt: int,
                      error: BaseException, delay: float) -> None:
        self._line(Text.assemble(
            ("↻ ", "yellow"), f"step {step}  ", (node, "bold"),
            f"  attempt {attempt} failed ({type(error).__name__}: {error}); retrying in "
            f"{fmt_seconds(delay)}"), thread_id)

    def on_node_error(self, thread_id: str | None, step: int, node: str,
                      error: BaseException, attempts: int) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if node in self.captured:
            self._line(Text.assemble(
                ("⚠ ", "yellow"), f"step {step}  ", (node, "bold"),
                f"  failed{tries}, captured into the state: {type(error).__name__}: {error}"),
                thread_id)
            return
        self.failed.append((step, node, error, attempts))
        self._line(Text.assemble(("✗ ", "bold red"), f"step {step}  ", (node, "bold red"),
                                 visible(f"  failed{tries}: {type(error).__name__}: {error}")),
                   thread_id)

    def on_step_end(self, event: StepEvent) -> None:
        started = self.step_started.pop((event.thread_id, event.step), None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        nested = not self._is_main(event.thread_id)
        if not nested:
            self.steps += 1
            self.last_status = event.status
            self.running = {}
        names = []
        for node in event.nodes:
            update = event.updates.get(node)
            name = f"{node} ×{len(update)}" if isinstance(update, list) else node
            if node not in event.timings:  # its update was kept from an earlier attempt
                name += " (kept)"
            names.append(name)
        extras = []
        for node, attempts in event.attempts.items():
            extras.append(f"{node}: {attempts} attempts")
        if event.cache_hits:
            extras.append("cached: " + ", ".join(event.cache_hits))
        self._line(Text.assemble(
            ("✓ ", "green"), f"step {event.step}  ", (", ".join(names), "bold"),
            (f"  {fmt_seconds(elapsed)}", "dim"),
            (f"  ({'; '.join(extras)})" if extras else "", "yellow")), event.thread_id)
        self.depth = max(0, self.depth - 1)

    # -- drawing --------------------------------------------------------------------------------

    def _is_main(self, thread_id: str | None) -> bool:
        if thread_id is not None and self.thread_id is not None:
            return thread_id == self.thread_id
        return self.depth <= 1

    def _indent(self, thread_id: str | None) -> str:
        if thread_id is not None and self.thread_id is not None:
            level = thread_id.count("::") - self.thread_id.count("::")
        else:
            level = self.depth - 1
        return "    " * max(0, level)

    def _line(self, text: Text, thread_id: str | None) -> None:
        if not self.quiet:
            self.console.print(Text(self._indent(thread_id)) + text)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def render(self) -> RenderableType:
        from rich.spinner import Spinner

        if self._spinner is None:
            self._spinner = Spinner("dots", style="cyan")
        running = ", ".join(self.running) or "…"
        step = "starting" if self.step is None else f"step {self.step}"
        self._spinner.update(text=Text.assemble(
            f"{step}  ", (running, "bold"), (f"  {fmt_seconds(self.elapsed())} elapsed", "dim")))
        return Group(self._spinner)

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if self.quiet or not self.console.is_terminal:
            yield
            return
        from rich.live import Live

        with Live(get_renderable=self.render, console=self.console, transient=True,
                  refresh_per_second=10, redirect_stdout=True, redirect_stderr=True):
            yield
