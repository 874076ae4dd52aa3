"""Node tasks on real local clusters: `distributed.LocalCluster` with worker processes, and Ray
started with `ray.init(num_cpus=2)`. Each behaviour is checked on both engines against what
the same graph does locally: results and histories, retries, timeouts, capture, caching,
interrupts, store writes, streaming, errors that name the node, a worker killed mid-task and
a driver killed mid-step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import runner_graphs as rg
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoints import MemoryCheckpointer, SQLiteCheckpointer
from statemachine import GraphValidationError, NodeFailure, NodeTimeoutError, ThreadNotFoundError
from statemachine.errors import RemoteTaskError, TaskSerializationError

distributed = pytest.importorskip("distributed")
ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "examples"
ENGINES = ["dask", "ray"]
WORKER_ONLY = TESTS / "data" / "worker_path"  # on the workers' path, never on the driver's


@pytest.fixture(scope="module")
def dask_cluster():
    for path in (str(TESTS), str(EXAMPLES)):  # worker processes start with this path
        if path not in sys.path:
            sys.path.insert(0, path)
    sys.path.insert(0, str(WORKER_ONLY))
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None,
                                           worker_dashboard_address=None)
    finally:
        sys.path.remove(str(WORKER_ONLY))
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(TESTS), str(EXAMPLES), str(ROOT), str(WORKER_ONLY)])}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def runner(engine, request):
    from statemachine.runners import DaskRunner, RayRunner

    if engine == "dask":
        return DaskRunner(request.getfixturevalue("dask_cluster"))
    request.getfixturevalue("ray_instance")
    return RayRunner()


def history(app, thread):
    """The thread's checkpoints as (step, kind, status, state). Not `next`: a past checkpoint
    leaves out the tasks whose writes it kept, and which tasks of a parallel step finished
    before the others is timing, locally as on a cluster."""
    return [(s.step, s.kind, s.status, s.state.model_dump())
            for s in reversed(app.history(thread))]


# -- the same results as local execution -----------------------------------------------------

EXAMPLE_RUNS = {
    "quickstart": ("graph", lambda m: {"count": 0}),
    "map_reduce": ("graph", lambda m: {"documents": list(m.DOCUMENTS)}),
    "parallel_analysis": ("graph", lambda m: {"document": m.DOCUMENT}),
    "pipeline": ("graph", lambda m: {"source": m.RAW_CSV}),
    "routing_workflow": ("graph", lambda m: {"request": m.DEMO_REQUESTS[0]}),
    "decision_tree": ("graph", lambda m: {"application": m.DEMO_APPLICATIONS[0]}),
}


@pytest.mark.parametrize("example", sorted(EXAMPLE_RUNS))
def test_the_examples_graphs_end_as_they_do_locally(example, runner):
    import importlib

    module = importlib.import_module(example)  # by the name the workers import it by
    attribute, make_input = EXAMPLE_RUNS[example]
    builder = getattr(module, attribute)
    local = builder.compile(checkpointer=MemoryCheckpointer())
    remote = builder.compile(checkpointer=MemoryCheckpointer(), runner=runner)
    expected = local.invoke(make_input(module), thread_id="t")
    assert remote.invoke(make_input(module), thread_id="t") == expected
    assert history(remote, "t") == history(local, "t")


layer_names = st.lists(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=3,
                                unique=True), min_size=1, max_size=3)


@st.composite
def random_graphs(draw):
    layers = draw(layer_names)
    seen: set[str] = set()
    unique_layers = []
    for i, layer in enumerate(layers):
        names = [f"{name}{i}" for name in layer if f"{name}{i}" not in seen]
        seen.update(names)
        unique_layers.append(names)
    sends = draw(st.dictionaries(st.integers(0, len(layers) - 1), st.integers(1, 4),
                                 max_size=2))
    return unique_layers, sends


@pytest.mark.parametrize("engine_name", ENGINES)
def test_random_graphs_end_as_they_do_locally(engine_name, request):
    from statemachine.runners import DaskRunner, RayRunner

    if engine_name == "dask":
        runner = DaskRunner(request.getfixturevalue("dask_cluster"))
    else:
        request.getfixturevalue("ray_instance")
        runner = RayRunner()

    @settings(max_examples=12)
    @given(random_graphs(), st.booleans())
    def check(shape, asynchronous):
        layers, sends = shape
        builder = rg.random_graph(layers, sends)
        local = builder.compile(checkpointer=MemoryCheckpointer())
        remote = builder.compile(checkpointer=MemoryCheckpointer())
        expected = local.invoke({"n": 1}, thread_id="t")
        if asynchronous:
            import asyncio

            got = asyncio.run(remote.ainvoke({"n": 1}, thread_id="t", runner=runner))
        else:
            got = remote.invoke({"n": 1}, thread_id="t", runner=runner)
        assert got == expected
        assert history(remote, "t") == history(local, "t")

    check()


def test_tasks_run_in_the_workers_processes_sync_and_async(runner):
    for node in (rg.square, rg.square_async):
        final = rg.fan_graph(node).compile(runner=runner).invoke({"n": 6})
        assert sorted(final.items) == [0, 1, 4, 9, 16, 25]
        pids = {int(line.rsplit(" ", 1)[1]) for line in final.log if line.startswith("square")}
        assert pids and os.getpid() not in pids


def test_a_local_node_and_a_per_call_runner(runner):
    app = rg.fan_graph().compile()  # no runner: all local
    final = app.invoke({"n": 3})
    assert {int(line.rsplit(" ", 1)[1]) for line in final.log[1:]} == {os.getpid()}
    final = app.invoke({"n": 3}, runner=runner)
    assert final.log[0] == "start"  # the runner="local" node ran here, the others there
    assert os.getpid() not in {int(line.rsplit(" ", 1)[1]) for line in final.log[1:]}


# -- policies, errors and streaming as locally -------------------------------------------------

def test_retries_happen_in_the_driver_and_are_recorded(runner, tmp_path):
    app = rg.single(rg.flaky, retry=rg.QUICK_RETRY).compile(
        checkpointer=MemoryCheckpointer(), runner=runner)
    final = app.invoke({}, thread_id="t", context={"files": str(tmp_path)})
    assert final.log == ["flaky ok"]
    assert len(rg.Files(tmp_path).marks("flaky")) == 3
    assert app.history("t")[0].metadata["attempts"] == {"node": 3}


def test_a_remote_exception_comes_back_as_itself_with_the_remote_traceback(runner):
    app = rg.single(rg.raises_value_error).compile(runner=runner)
    with pytest.raises(ValueError, match="bad input 7") as raised:
        app.invoke({"n": 7})
    notes = "\n".join(raised.value.__notes__)
    assert "remote traceback" in notes and "raises_value_error" in notes
    assert "raised by node 'node' at step 0" in notes


def test_an_exception_that_cannot_travel_names_its_type_and_traceback(runner):
    app = rg.single(rg.raises_odd).compile(runner=runner)
    with pytest.raises(RemoteTaskError) as raised:
        app.invoke({"n": 5})
    error = raised.value
    assert error.node == "node" and error.error_type == "runner_graphs.Odd"
    assert "odd 5/2" in str(error) and "raises_odd" in error.remote_traceback
    assert "could not be sent back as itself (TypeError" in str(error)


def test_types_the_driver_cannot_import_are_errors_naming_the_node(runner):
    with pytest.raises(ModuleNotFoundError):
        import workeronly  # noqa: F401  # the premise: only the workers have it
    with pytest.raises(RemoteTaskError) as raised:
        rg.single(rg.raises_worker_only).compile(runner=runner).invoke({"n": 4})
    error = raised.value
    assert error.error_type == "workeronly.WorkerOnlyError"
    assert "only workers know this type (4)" in str(error)
    assert "cannot be rebuilt here: ModuleNotFoundError" in str(error)
    assert "raises_worker_only" in error.remote_traceback
    with pytest.raises(TypeError, match=r"node 'node' ran on .*return value cannot be loaded "
                                        r"in the driver: ModuleNotFoundError"):
        rg.single(rg.returns_worker_only).compile(runner=runner).invoke({"n": 4})


def test_sys_exit_in_a_remote_node_fails_the_node_not_the_worker_or_the_driver(runner):
    app = rg.single(rg.exits).compile(runner=runner)
    with pytest.raises(RemoteTaskError, match="raised SystemExit: 3") as raised:
        app.invoke({})
    assert raised.value.error_type == "SystemExit"
    assert rg.fan_graph().compile(runner=runner).invoke({"n": 2}).items == [0, 1]


def test_an_exception_that_comes_back_by_name_is_retried_and_captured_as_itself(runner,
                                                                                tmp_path):
    app = rg.single(rg.rate_limited_once, retry=rg.RetryPolicy(initial_interval=0.01,
                                                                jitter=False)).compile(
        runner=runner)
    assert app.invoke({}, context={"files": str(tmp_path)}).log == ["api ok"]
    assert len(rg.Files(tmp_path).marks("api")) == 2  # the default retry_on judged it by name
    captured = rg.single(rg.raises_odd, on_error="capture").compile(runner=runner)
    failure = captured.invoke({"n": 1}).errors[0]
    assert (failure.error_type, failure.message) == ("Odd", "odd 1/2")


def test_capture_turns_a_remote_failure_into_a_node_failure(runner):
    app = rg.single(rg.raises_value_error, on_error="capture").compile(runner=runner)
    final = app.invoke({"n": 3})
    assert [(type(f), f.error_type, f.message) for f in final.errors] == [
        (NodeFailure, "ValueError", "bad input 3")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_remote_timeout_fails_the_node_and_cancels_the_task(runner, engine, tmp_path):
    files = rg.Files(tmp_path)
    rg.fan_graph().compile(runner=runner).invoke({"n": 2})  # workers up: the timeout is the node's
    app = rg.single(rg.sleepy, timeout=1.0).compile(runner=runner)
    started = time.monotonic()
    try:
        with pytest.raises(NodeTimeoutError, match=r"ran longer than its timeout of 1\.0 s"):
            app.invoke({}, context={"files": str(tmp_path)})
        assert time.monotonic() - started < 15
        assert files.marks("sleepy")  # it did start on the cluster
        if engine == "ray":  # Ray stops the task by killing its worker process
            pid = _worker_pid(files, "sleepy")
            deadline = time.monotonic() + 15
            while _alive(pid):
                assert time.monotonic() < deadline, "the timed-out task's process still runs"
                time.sleep(0.05)
    finally:
        files.give("stop")


def test_the_cache_is_checked_in_the_driver_before_submitting(runner, tmp_path):
    app = rg.single(rg.counted, cache=rg.CACHE).compile(runner=runner)
    context = {"files": str(tmp_path)}
    assert app.invoke({"n": 4}, context=context).items == [40]
    assert app.invoke({"n": 4}, context=context).items == [40]
    assert len(rg.Files(tmp_path).marks("counted")) == 1


def test_max_concurrency_bounds_the_tasks_in_flight(runner, tmp_path):
    app = rg.fan_graph(rg.square).compile(runner=runner)
    final = app.invoke({"n": 4}, max_concurrency=1)
    assert sorted(final.items) == [0, 1, 4, 9]


def test_an_interrupt_in_a_remote_task_pauses_and_resumes(runner):
    app = rg.single(rg.asks).compile(checkpointer=MemoryCheckpointer(), runner=runner)
    app.invoke({"n": 2}, thread_id="t")
    paused = app.get_state("t")
    assert paused.status == "interrupted"
    assert [i.value for i in paused.interrupts] == [{"question": "approve?", "n": 2}]
    assert app.resume("t", answer="yes").log == ["answer yes"]


def test_store_writes_from_a_remote_task_commit_with_it_and_reads_say_why_not(runner,
                                                                               tmp_path):
    from checkpoints import MemoryStore

    store = MemoryStore()
    app = rg.single(rg.remembers).compile(checkpointer=MemoryCheckpointer(), store=store,
                                          runner=runner)
    app.invoke({"n": 3}, thread_id="t")
    assert store.get(("notes", "user-1"), "n3").value == {"text": "saw 3"}
    reader = rg.single(rg.reads_store).compile(store=MemoryStore(), runner=runner)
    with pytest.raises(RuntimeError, match=r"runs on a cluster.*runner='local'"):
        reader.invoke({})


def test_chunks_reach_the_stream_while_the_remote_task_runs(runner, tmp_path):
    files = rg.Files(tmp_path)
    app = rg.single(rg.streaming).compile(runner=runner)
    seen = []
    for chunk in app.stream({}, stream_mode="custom", context={"files": str(tmp_path)}):
        seen.append(chunk)
        if chunk == "first":
            files.give("seen")  # the node waits for this: the chunk came while it ran
    assert seen == ["first", {"chunk": "second"}]
    async_app = rg.single(rg.streaming_async).compile(runner=runner)
    assert list(async_app.stream({}, stream_mode="custom")) == ["async one", "async two"]


# -- what cannot travel ------------------------------------------------------------------------

def test_an_unpicklable_node_is_a_compile_error_naming_it(runner):
    lock = threading.Lock()

    def guarded(state):
        with lock:
            return {}

    builder = rg.single(guarded)
    with pytest.raises(GraphValidationError) as raised:
        builder.compile(runner=runner)
    assert raised.value.codes == ["unserializable_node"]
    assert "node 'node'" in str(raised.value) and "runner='local'" in str(raised.value)
    parent = rg.single(builder.compile())  # the same node inside a subgraph
    with pytest.raises(GraphValidationError, match="subgraph 'node''s node 'node' cannot run"):
        parent.compile(runner=runner)
    # with the node kept in the driver, the graph runs on the cluster as it is
    assert rg.single(guarded, runner="local").compile(runner=runner).invoke({}) is not None


def test_what_cannot_travel_fails_the_step_before_anything_is_submitted(runner, tmp_path):
    app = rg.fan_graph(rg.square_marked).compile(checkpointer=MemoryCheckpointer())
    context = {"files": str(tmp_path), "lock": threading.Lock()}
    with pytest.raises(TaskSerializationError) as raised:
        app.invoke({"n": 3}, thread_id="t", context=context, runner=runner)
    error = raised.value
    assert (error.node, error.part, error.step, error.thread_id) == (
        "square", "call's context", 1, "t")
    assert "step 1 of thread 't'" in str(error) and "Nothing of the step was submitted" in \
        str(error)
    assert list(tmp_path.glob("square-*")) == []
    assert app.get_state("t").status == "failed"


# -- crashes -----------------------------------------------------------------------------------

def _worker_pid(files: rg.Files, name: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not files.marks(name):
        assert time.monotonic() < deadline, f"no task left the mark {name!r}"
        time.sleep(0.02)
    return int(files.marks(name)[0].split(".")[1])


def test_a_worker_killed_mid_task_the_step_completes_nothing_committed_twice(runner, tmp_path):
    files = rg.Files(tmp_path)
    saver = SQLiteCheckpointer(tmp_path / "runs.db")
    app = rg.fan_graph(rg.slow_once).compile(checkpointer=saver, runner=runner)
    result: dict = {}

    def run() -> None:
        try:
            result["final"] = app.invoke({"n": 4}, thread_id="t",
                                         context={"files": str(tmp_path)})
        except BaseException as exc:  # the assertion below shows it
            result["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    pid = _worker_pid(files, "start-0")
    os.kill(pid, signal.SIGKILL)
    driver.join(120)
    files.give("go")
    assert not driver.is_alive()
    assert "error" not in result, result.get("error")
    final = result["final"]
    assert sorted(final.items) == [0, 1, 2, 3]  # each task's write committed once
    assert len(files.marks("start-0")) == 2  # it ran again elsewhere: at least once
    assert next(s.status for s in app.history("t")) == "done"
    saver.close()


DRIVER = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
import runner_graphs as rg
from checkpoints import SQLiteCheckpointer
from statemachine.runners import DaskRunner, RayRunner
engine, address, db, files = sys.argv[1:]
if engine == "dask":
    runner = DaskRunner(address)
else:
    import ray
    ray.init(address=address, log_to_driver=False,
             runtime_env={{"env_vars": {{"PYTHONPATH": {tests!r}}}}})
    runner = RayRunner()
app = rg.held_graph().compile(checkpointer=SQLiteCheckpointer(db), runner=runner)
app.invoke({{"n": 4}}, thread_id="t", context={{"files": files}})
"""


def test_a_driver_killed_mid_step_resume_submits_only_the_unfinished_tasks(engine, request,
                                                                           tmp_path):
    from statemachine.runners import DaskRunner, RayRunner

    if engine == "dask":
        client = request.getfixturevalue("dask_cluster")
        address, runner = client.scheduler.address, DaskRunner(client)
    else:
        address = request.getfixturevalue("ray_instance")
        runner = RayRunner()
    files = rg.Files(tmp_path / "files")
    Path(files.root).mkdir()
    db = tmp_path / "runs.db"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS), root=str(ROOT)))
    driver = subprocess.Popen([sys.executable, str(script), engine, address, str(db),
                               files.root], stderr=subprocess.PIPE)
    saver = SQLiteCheckpointer(db)
    app = rg.held_graph().compile(checkpointer=saver)
    try:
        deadline = time.monotonic() + 90
        while True:  # tasks 0 and 1 finished: their writes are committed as pending
            assert driver.poll() is None, driver.stderr.read().decode()
            assert time.monotonic() < deadline, "the driver never committed two writes"
            try:
                due = app.get_state("t").next  # its tasks without a committed write
            except ThreadNotFoundError:  # not started yet
                due = ()
            if due == ("work", "work"):
                break
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert sorted(len(files.marks(f"run-{i}")) for i in (0, 1)) == [1, 1]
    files.give("release")
    final = app.resume("t", context={"files": files.root}, runner=runner)
    assert sorted(final.items) == [0, 1, 2, 3]
    # the finished tasks were not submitted again; the unfinished ones ran (again)
    assert [len(files.marks(f"run-{i}")) for i in (0, 1)] == [1, 1]
    assert all(files.marks(f"run-{i}") for i in (2, 3))
    saver.close()


def test_a_subgraphs_nodes_run_on_the_calls_cluster_unless_the_subgraph_is_local(runner):
    inner = rg.fan_graph().compile()
    remote = rg.single(inner).compile(runner=runner).invoke({"n": 3})
    local = rg.single(inner, runner="local").compile(runner=runner).invoke({"n": 3})
    for final, here in ((remote, False), (local, True)):
        assert sorted(final.items) == [0, 1, 4]
        pids = {int(line.rsplit(" ", 1)[1]) for line in final.log if line.startswith("square")}
        assert (pids == {os.getpid()}) is here, pids


def test_a_task_rerun_after_its_worker_died_finishes_its_stream_without_waiting(runner,
                                                                                 tmp_path):
    """The lost run's chunks were streamed as they came; the finishing run's chunks are
    counted apart, so the driver neither stops early nor waits out CHUNK_WAIT."""
    rg.fan_graph().compile(runner=runner).invoke({"n": 2})  # workers up
    app = rg.single(rg.streams_then_dies_once).compile(runner=runner)
    started = time.monotonic()
    chunks = list(app.stream({}, stream_mode="custom", context={"files": str(tmp_path)}))
    assert time.monotonic() - started < 25  # CHUNK_WAIT is 30 s
    assert len(rg.Files(tmp_path).marks("streamer")) == 2
    # the finishing run's chunks all arrived, in order; the lost run's, if any got out first
    # (here they die with the process), were streamed as they came and are not counted
    assert chunks[-3:] == ["second-0", "second-1", "second-2"]
    assert set(chunks[:-3]) <= {"first-0", "first-1", "first-2"}
