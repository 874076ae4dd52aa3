"""The worker threads parallel sync nodes run on (`statemachine.thread_pool`): results,
errors and context reach the caller, blocking calls overlap, a caller that stops waiting
loses nothing else, and many event loops on many OS threads share one pool."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import threading
import time

import pytest
from conftest import side_by_side
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine import END, START, StateGraph
from statemachine.thread_pool import MAX_WORKERS, ThreadPool, in_thread


class Empty(BaseModel):
    pass


marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def test_results_errors_and_the_callers_context_reach_the_caller():
    def read_marker(suffix: str) -> str:
        value = marker.get() + suffix
        marker.set("changed in the worker")  # a copy: the caller's stays as it was
        return value

    def fail() -> None:
        raise KeyError("inside the worker")

    async def main() -> None:
        marker.set("the caller's")
        assert await in_thread(read_marker, "!") == "the caller's!"
        assert marker.get() == "the caller's"
        with pytest.raises(KeyError, match="inside the worker"):
            await in_thread(fail)
        with pytest.raises(ZeroDivisionError):
            await in_thread(lambda: 1 / 0)

    asyncio.run(main())


def test_blocking_calls_overlap_up_to_the_pool_size():
    pool = ThreadPool(max_workers=4)
    inside, peak, lock = [0], [0], threading.Lock()

    def block() -> None:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.2)
        with lock:
            inside[0] -= 1

    async def main() -> tuple[float, int]:
        started = time.perf_counter()
        await asyncio.gather(*(pool.run(block) for _ in range(8)))
        threads = len(pool._loops[asyncio.get_running_loop()].executor._threads)
        return time.perf_counter() - started, threads

    took, threads = asyncio.run(main())
    assert peak[0] == 4
    assert 0.4 <= took < 1.2  # two rounds of four, not eight one after another
    assert threads == 4  # grown to its size, no further


def test_a_call_given_up_before_it_started_never_runs():
    """A call queued behind busy workers whose caller stops waiting (a timeout, a cancelled
    run) is not started later: its side effects never happen."""
    pool = ThreadPool(max_workers=1)
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        busy = pool.run(release.wait, 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(ran.append, "charged"), 0.05)
        release.set()
        await busy
        assert await pool.run(lambda: "next") == "next"

    asyncio.run(main())
    assert ran == []


def test_a_call_whose_caller_stopped_waiting_runs_to_its_end_and_is_dropped():
    pool = ThreadPool(max_workers=2)
    release, finished = threading.Event(), threading.Event()

    def slow() -> str:
        release.wait(10)
        finished.set()
        return "late"

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(slow), 0.05)
        release.set()
        assert await pool.run(lambda: "next") == "next"  # the pool goes on

    asyncio.run(main())
    assert finished.wait(10)


def test_a_call_finishing_after_its_loop_closed_is_dropped_quietly():
    pool = ThreadPool(max_workers=1)
    release = threading.Event()
    errors: list[BaseException | None] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        async def start() -> None:
            pool.run(release.wait, 10)

        asyncio.run(start())  # the loop closes with the call still running
        release.set()
        # the one worker takes this call only after it finished the other and tried to hand
        # it back to its closed loop
        assert asyncio.run(_one(pool)) == 42
    finally:
        threading.excepthook = old_hook
    assert errors == []


async def _one(pool: ThreadPool) -> int:
    return await pool.run(lambda: 42)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6))
def test_event_loops_on_many_threads_get_their_own_results(counts):
    """Each OS thread runs its own loop gathering its own calls on the shared pool: every
    loop gets exactly its results, in order."""
    results: dict[int, list[tuple[int, int]]] = {}

    def on_thread(index: int, count: int) -> None:
        async def main() -> list[tuple[int, int]]:
            return list(await asyncio.gather(
                *(in_thread(lambda i=i: (index, i)) for i in range(count))))
        results[index] = asyncio.run(main())

    threads = [threading.Thread(target=on_thread, args=(i, c)) for i, c in enumerate(counts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: [(i, n) for n in range(c)] for i, c in enumerate(counts)}


def _child(queue) -> None:
    async def main() -> int:
        return await in_thread(lambda: 7)
    queue.put(asyncio.run(main()))


def test_a_forked_child_runs_calls_on_a_pool_of_its_own():
    asyncio.run(_one_from_shared())  # the parent's pool has threads before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    assert queue.get(timeout=30) == 7
    child.join(30)
    assert child.exitcode == 0


async def _one_from_shared() -> int:
    return await in_thread(lambda: 1)


def test_parallel_sync_nodes_of_a_graph_still_run_side_by_side():
    """Nodes that block (a model call, say) overlap: the step takes about the longest one,
    not their sum."""
    width = min(MAX_WORKERS, 5)
    g = side_by_side(Empty, {f"n{i}": lambda state: (time.sleep(0.3), {})[1]
                             for i in range(width)})
    app = g.compile()
    started = time.perf_counter()
    app.invoke({})
    assert time.perf_counter() - started < 0.3 * width * 0.6


def test_a_loop_whose_workers_are_stuck_holds_up_no_other_loop():
    """Sync nodes abandoned by their timeouts keep their worker threads; a graph run on
    another OS thread (another loop) still runs at once."""
    stuck = threading.Event()
    g = StateGraph(Empty)
    g.add_node("hangs", lambda state: (stuck.wait(30), {})[1], timeout=0.05)
    g.add_node("other", lambda state: {})
    g.add_edge(START, "hangs")
    g.add_edge(START, "other")
    g.add_edge("hangs", END)
    g.add_edge("other", END)
    hanging = g.compile()
    try:
        for _ in range(MAX_WORKERS):  # every worker of this thread's loop stuck
            with pytest.raises(Exception, match="timeout"):
                hanging.invoke({})
        done = threading.Event()
        quick = side_by_side(Empty, {f"n{i}": lambda state: {} for i in range(3)}).compile()
        threading.Thread(target=lambda: (quick.invoke({}), done.set()), daemon=True).start()
        assert done.wait(10), "a graph on another loop waited for this loop's stuck workers"
    finally:
        stuck.set()


def test_nodes_mapping_a_graph_over_threads_of_their_own_never_wait_for_each_other():
    """Parallel sync nodes, each running an inner graph (of parallel sync nodes) on threads
    it starts itself, more of them than a loop has workers: the inner runs use loops and
    workers of their own."""
    from concurrent.futures import ThreadPoolExecutor

    inner = side_by_side(Empty, {f"n{i}": lambda state: (time.sleep(0.02), {})[1]
                                 for i in range(2)}).compile()

    def outer_node(i: int):
        def node(state) -> dict:
            with ThreadPoolExecutor(2) as helpers:
                list(helpers.map(lambda _: inner.invoke({}), range(2)))
            return {}
        return node

    outer = side_by_side(Empty, {f"n{i}": outer_node(i) for i in range(MAX_WORKERS + 1)}
                         ).compile()
    done = threading.Event()
    threading.Thread(target=lambda: (outer.invoke({}), done.set()), daemon=True).start()
    assert done.wait(30), "the inner runs waited for workers held by the outer nodes"


def test_nodes_that_invoke_graphs_of_parallel_nodes_never_wait_for_each_other():
    """More parallel sync nodes than the pool has threads, each invoking a graph whose own
    parallel sync nodes need worker threads too: the inner calls get threads of their own
    instead of waiting for the outer ones, which wait for them."""
    inner = side_by_side(Empty, {f"n{i}": lambda state: (time.sleep(0.05), {})[1]
                                 for i in range(3)}).compile()
    ran: list[int] = []

    def outer_node(i: int):
        def node(state: Empty) -> dict:
            time.sleep(0.05)  # every outer node holds its worker while the others start
            inner.invoke({})
            ran.append(i)
            return {}
        return node

    outer = side_by_side(Empty, {f"n{i}": outer_node(i) for i in range(MAX_WORKERS + 2)}
                         ).compile()
    done = threading.Event()
    runner = threading.Thread(target=lambda: (outer.invoke({}), done.set()), daemon=True)
    runner.start()
    assert done.wait(30), "the outer nodes waited for workers held by themselves"
    assert sorted(ran) == list(range(MAX_WORKERS + 2))
