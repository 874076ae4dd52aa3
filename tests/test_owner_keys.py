"""Owner tokens, commit keys and claim keys: unique across live processes, including a forked
child that shares its parent's memory (and, in nested pid namespaces, even its pid); a
PostgreSQL commit whose key collided anyway writes and releases nothing."""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import make_store

from checkpoints.base import NewCheckpoint, Owner, process_space, unique_key
from statemachine import ThreadBusyError


def keys_of_forked_child(new_pid_namespace: bool) -> list[str]:
    """Three keys made by a forked child (in a pid namespace of its own: a grandchild, which
    is pid 1 there), read back through a pipe."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            if new_pid_namespace:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.unshare(0x20000000) != 0:  # CLONE_NEWPID
                    os._exit(3)
                grandchild = os.fork()
                if grandchild != 0:
                    os.waitpid(grandchild, 0)
                    os._exit(0)
            os.write(write, " ".join([unique_key(), unique_key(), Owner.new().token,
                                      process_space()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) == 3:
        pytest.skip("this machine does not let a test open a pid namespace")
    with os.fdopen(read) as pipe:
        return pipe.read().split()


def test_a_forked_child_makes_keys_no_parent_makes():
    mine = {unique_key(), unique_key(), Owner.new().token}
    theirs = keys_of_forked_child(new_pid_namespace=False)
    assert len(theirs) == 4 and not mine & set(theirs[:3])
    assert {len(k) for k in theirs[:3]} == {32}
    assert theirs[0][:16] != next(iter(mine))[:16]  # a prefix of its own


def test_a_child_in_its_own_pid_namespace_makes_keys_and_a_space_of_its_own():
    """There a grandchild can have its grandparent's pid: a pid check would keep the keys."""
    mine = {unique_key(), unique_key(), Owner.new().token}
    theirs = keys_of_forked_child(new_pid_namespace=True)
    assert not mine & set(theirs[:3])
    assert theirs[3] != process_space()  # another pid namespace, so another space


def test_keys_from_many_threads_never_repeat():
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: unique_key(), range(20_000)))
    assert len(set(keys)) == len(keys)


def test_keys_of_separate_processes_differ():
    code = "from checkpoints.base import unique_key; print(unique_key())"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(3)]
    assert len(set(runs)) == 3


@pytest.fixture
def postgres_store(request, tmp_path):
    """Retry keys are PostgreSQL's: its store only."""
    store = make_store("postgres", tmp_path, request)
    yield store
    store.close()


@pytest.mark.parametrize("release", [False, True])
def test_a_postgres_commit_whose_key_collided_writes_and_releases_nothing(postgres_store,
                                                                           release):
    """Defence in depth: a retried commit finds only its own thread's checkpoint by its key,
    and the thread is released only by a checkpoint actually written."""
    store = postgres_store
    saver = store.open()
    saver._retry_key = lambda: "k" * 32  # two commits with one key, as a collision would
    first, second = Owner.new(), Owner.new()

    async def main() -> None:
        await saver.acquire("t", first)
        await saver.put("t", first, NewCheckpoint(None, 0, "input", "done", "[]"))
        await saver.acquire("u", second)
        with pytest.raises(ThreadBusyError):
            await saver.put("u", second, NewCheckpoint(None, 0, "input", "done", "[]"),
                            release=release)

    asyncio.run(main())
    assert store.query("SELECT owner FROM threads WHERE thread_id = 'u'") == [(second.token,)]
    assert store.query("SELECT count(*) FROM checkpoints c JOIN threads t ON t.key = c.thread "
                       "WHERE t.thread_id = 'u'") == [(0,)]


def test_a_damaged_row_read_through_the_async_api_is_a_clear_error(tmp_path):
    """Text that is not UTF-8 gives the same CheckpointError through the async API (whose
    reads run on the loop's own connection) as through the sync one."""
    path = tmp_path / "runs.db"
    script = textwrap.dedent(f"""
        import asyncio, sqlite3
        from pydantic import BaseModel
        from checkpoints import SQLiteCheckpointer
        from statemachine import END, START, CheckpointError, StateGraph

        class S(BaseModel):
            n: int = 0

        g = StateGraph(S)
        g.add_node("a", lambda s: {{"n": s.n + 1}})
        g.add_edge(START, "a")
        g.add_edge("a", END)
        saver = SQLiteCheckpointer({str(path)!r})
        app = g.compile(checkpointer=saver)
        app.invoke({{}}, thread_id="t")
        saver.close()
        conn = sqlite3.connect({str(path)!r})
        conn.execute("UPDATE checkpoints SET next = CAST(X'5b22ff225d' AS TEXT)")
        conn.commit()
        conn.close()

        async def main():
            saver = SQLiteCheckpointer({str(path)!r})
            app = g.compile(checkpointer=saver)
            try:
                await app.aget_state("t")
            except CheckpointError as exc:
                print("CheckpointError", "UTF-8" in str(exc))
            await saver.aclose()

        asyncio.run(main())
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CheckpointError", "True"]
