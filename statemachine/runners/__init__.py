"""Where a step's node tasks run: in the driver (the default), or on a Dask or Ray cluster.

    from statemachine.runners import DaskRunner, RayRunner   # extras: [dask], [ray]

    app = g.compile(checkpointer=saver, runner=DaskRunner(client))   # every run of the graph
    app.invoke(inp, thread_id="t", runner=RayRunner())               # or one call
    g.add_node("route", route, runner="local")                       # a light node stays here

The step loop, routing, validation, the reducers and every commit stay in the driver process;
the cluster runs node tasks (parallel nodes and each `Send`) and sends back their updates.
Each finished task's update is committed as a pending write the moment it arrives, so after
a driver crash `resume` submits only the tasks that have none. Retries, timeouts,
`max_concurrency`, `CachePolicy` (checked before submitting), `on_error="capture"`, `emit`
and `interrupt` behave as they do locally.

A task runs at least once on a cluster (a lost worker's task runs again elsewhere); its
update commits exactly once. Make a node's side effects idempotent with
`RunContext.task_id`, the same on every run of the task. Subgraph nodes run in the driver
(their own nodes then use the call's runner); a node on a cluster can write `ctx.store`
(the writes commit with the task) but not read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Runner, check_runner

if TYPE_CHECKING:
    from .dask_runner import DaskRunner
    from .ray_runner import RayRunner

__all__ = ["DaskRunner", "RayRunner", "Runner", "check_runner"]


def __getattr__(name: str) -> Any:
    """The engines' runners are imported when first named, so importing this package needs
    neither engine (each needs its extra when used)."""
    if name == "DaskRunner":
        from .dask_runner import DaskRunner

        return DaskRunner
    if name == "RayRunner":
        from .ray_runner import RayRunner

        return RayRunner
    raise AttributeError(f"module 'statemachine.runners' has no attribute {name!r}")
