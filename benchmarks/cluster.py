"""`python -m benchmarks.cluster [--quick] [--engines dask,ray] [--json PATH]`

Node tasks on local clusters (`statemachine.runners`) against the driver's own threads, on
this machine, every run durable on SQLite (`SQLiteCheckpointer`, a fresh file per run; each
task's update committed as a pending write as it arrives). The graphs are in
benchmarks/cluster_graph.py.

* **CPU-bound fan-out**: 64 `Send` tasks, each ~200 ms of pure-Python work holding the GIL
  (`spin`: the rounds are calibrated on this machine before the clusters start). Run with
  the driver's threads (no runner: today's execution), then on each engine with 1 worker
  process and with 2 (Dask: `LocalCluster(n_workers=N, threads_per_worker=1)`; Ray:
  `ray.init(num_cpus=N)`). Each engine's cluster serves one warm-up run (not timed) so
  workers have imported the graph. Targets: 2 workers at least 1.7x faster than 1, and at
  least 1.6x faster than the threads.
* **Per-task overhead** (a no-op task), on the 2-worker clusters and locally: a chain of
  steps of one task each (one task's round trip and its commit: ms per step), and one step
  of 200 parallel tasks (ms per task when they overlap); beside them, the engine's own
  round trip for a no-op task through its API (`client.submit(f).result()`,
  `ray.get(f.remote())`), the floor a step on the cluster cannot go under.

--quick: 8 tasks of ~20 ms, a 10-step chain and 20 parallel tasks. Exits 0 unless a run's
result is wrong (the targets are printed, not enforced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .about import head, load_average, progress
from .cluster_graph import chain_graph, fan_graph, noop_task, spin

PACKAGES = ("statemachine", "pydantic", "distributed", "dask", "ray", "cloudpickle")
ENGINES = ("dask", "ray")
TASKS, TASK_SECONDS = 64, 0.2
QUICK_TASKS, QUICK_TASK_SECONDS = 8, 0.02
CHAIN_STEPS, PARALLEL_NOOPS = 100, 200
QUICK_CHAIN_STEPS, QUICK_PARALLEL_NOOPS = 10, 20
SPEEDUP_OVER_ONE = 1.7
SPEEDUP_OVER_THREADS = 1.6
ROOT = Path(__file__).resolve().parent.parent


def calibrate(seconds: float) -> int:
    """The `spin` rounds that take about `seconds` here (the median of three timings)."""
    probe = 200_000
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        spin(probe)
        timings.append(time.perf_counter() - start)
    return max(1, int(probe * seconds / sorted(timings)[1]))


@contextmanager
def cluster(engine: str, workers: int) -> Iterator[Any]:
    """A local cluster of `workers` worker processes and a runner on it."""
    if engine == "dask":
        from distributed import Client, LocalCluster

        from statemachine.runners import DaskRunner

        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, worker_dashboard_address=None)
        client = Client(local)
        try:
            yield DaskRunner(client)
        finally:
            client.close()
            local.close()
        return
    import ray

    from statemachine.runners import RayRunner

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield RayRunner()
    finally:
        ray.shutdown()


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _saver(directory: Path, label: str) -> Any:
    from checkpoints import SQLiteCheckpointer

    return SQLiteCheckpointer(directory / f"{label}-{time.monotonic_ns()}.db")


def fan_run(directory: Path, label: str, tasks: int, rounds: int, runner: Any = None
            ) -> float:
    """Seconds for one invoke of the CPU fan-out; checks every task's result came once."""
    saver = _saver(directory, label)
    try:
        app = fan_graph().compile(checkpointer=saver, runner=runner)
        seconds, final = _timed(lambda: app.invoke({"tasks": tasks, "rounds": rounds},
                                                   thread_id="fan"))
    finally:
        saver.close()
    expected = sorted(spin(rounds) + i for i in range(tasks))
    if sorted(final.results) != expected:
        raise AssertionError(f"{label}: the fan-out's results are wrong")
    return seconds


def overhead_runs(directory: Path, label: str, steps: int, parallel: int, runner: Any = None
                  ) -> dict[str, float]:
    """ms per step of a chain of one no-op task a step, and ms per task of one step of
    `parallel` no-op tasks."""
    saver = _saver(directory, label)
    try:
        chain = chain_graph().compile(checkpointer=saver, runner=runner)
        chain_seconds, final = _timed(lambda: chain.invoke({"steps": steps}, thread_id="c"))
        if final.done != steps:
            raise AssertionError(f"{label}: the chain ran {final.done} steps, not {steps}")
        fan = fan_graph(noop_task).compile(checkpointer=saver, runner=runner)
        fan_seconds, fanned = _timed(lambda: fan.invoke({"tasks": parallel}, thread_id="f"))
        if sorted(fanned.results) != list(range(parallel)):
            raise AssertionError(f"{label}: the no-op fan-out's results are wrong")
    finally:
        saver.close()
    return {"ms_per_step": chain_seconds / steps * 1000,
            "ms_per_parallel_task": fan_seconds / parallel * 1000}


def _nothing(value: int) -> int:
    return value


def bare_round_trip_ms(engine: str, runner: Any, times: int) -> float:
    """ms for one no-op task through the engine's own API, submitted and awaited one after
    another (`client.submit(...).result()`, `ray.get(f.remote(...))`): the engine's floor."""
    if engine == "dask":
        client = runner.client
        client.submit(_nothing, -1, pure=False).result()
        start = time.perf_counter()
        for i in range(times):
            client.submit(_nothing, i, pure=False).result()
    else:
        import ray

        remote = ray.remote(_nothing)
        ray.get(remote.remote(-1))
        start = time.perf_counter()
        for i in range(times):
            ray.get(remote.remote(i))
    return (time.perf_counter() - start) / times * 1000


def run(quick: bool, engines: tuple[str, ...], directory: Path) -> dict[str, Any]:
    tasks, task_seconds = (QUICK_TASKS, QUICK_TASK_SECONDS) if quick else (TASKS, TASK_SECONDS)
    steps, parallel = (QUICK_CHAIN_STEPS, QUICK_PARALLEL_NOOPS) if quick else \
        (CHAIN_STEPS, PARALLEL_NOOPS)
    rounds = calibrate(task_seconds)
    result: dict[str, Any] = {
        "sizes": {"tasks": tasks, "task_seconds": task_seconds, "rounds": rounds,
                  "chain_steps": steps, "parallel_noops": parallel},
        "fanout": {}, "overhead": {}}
    progress(f"threads: {tasks} tasks of ~{task_seconds * 1000:g} ms ({rounds:,} rounds)")
    result["fanout"]["threads"] = fan_run(directory, "threads", tasks, rounds)
    result["overhead"]["local"] = overhead_runs(directory, "local", steps, parallel)
    for engine in engines:
        for workers in (1, 2):
            progress(f"{engine}, {workers} worker process{'es' if workers > 1 else ''}")
            with cluster(engine, workers) as runner:
                fan_run(directory, f"{engine}-warm", workers, 1, runner)  # imports, not timed
                result["fanout"][f"{engine}-{workers}"] = fan_run(
                    directory, f"{engine}-{workers}", tasks, rounds, runner)
                if workers == 2:
                    result["overhead"][engine] = overhead_runs(
                        directory, engine, steps, parallel, runner)
                    result["overhead"][engine]["engine_ms_per_task"] = bare_round_trip_ms(
                        engine, runner, steps)
    return result


def targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    fan = result["fanout"]
    found = []
    for engine in ENGINES:
        one, two = fan.get(f"{engine}-1"), fan.get(f"{engine}-2")
        if one is None or two is None:
            continue
        found.append((f"{engine}: 2 workers >= {SPEEDUP_OVER_ONE}x faster than 1",
                      one / two >= SPEEDUP_OVER_ONE, f"{one / two:.2f}x"))
        found.append((f"{engine}: 2 workers >= {SPEEDUP_OVER_THREADS}x faster than threads",
                      fan["threads"] / two >= SPEEDUP_OVER_THREADS,
                      f"{fan['threads'] / two:.2f}x"))
    return found


def print_report(result: dict[str, Any]) -> None:
    sizes = result["sizes"]
    print(f"CPU-bound fan-out: {sizes['tasks']} tasks x ~{sizes['task_seconds'] * 1000:g} ms "
          f"({sizes['rounds']:,} rounds of spin each), durable on SQLite")
    threads = result["fanout"]["threads"]
    for label, seconds in result["fanout"].items():
        print(f"  {label:<10} {seconds:8.2f} s   {threads / seconds:5.2f}x the threads")
    print(f"Per-task overhead of a no-op task ({sizes['chain_steps']}-step chain; one step of "
          f"{sizes['parallel_noops']} tasks):")
    for label, row in result["overhead"].items():
        bare = row.get("engine_ms_per_task")
        print(f"  {label:<10} {row['ms_per_step']:8.2f} ms a step   "
              f"{row['ms_per_parallel_task']:8.3f} ms a parallel task"
              + (f"   (the engine alone: {bare:.2f} ms a task round trip)"
                 if bare is not None else ""))
    print()
    print("Targets (computed from this run):")
    for name, passed, value in targets(result):
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite's)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated: dask, ray (default both)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results")
    args = parser.parse_args(argv)
    engines = tuple(e for e in args.engines.split(",") if e)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine {unknown[0]!r} (one of {', '.join(ENGINES)})")
    if str(ROOT) not in sys.path:  # Dask's worker processes start with this path
        sys.path.insert(0, str(ROOT))
    info, packages = head(PACKAGES)
    print(f"cores: {os.cpu_count()}; the driver runs beside the workers on them")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="statemachine-cluster-") as tmp:
        result = run(args.quick, engines, Path(tmp))
    info["load_average_at_end"] = load_average()
    result.update(machine=info, versions=packages, quick=args.quick,
                  seconds=time.perf_counter() - started)
    print()
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
