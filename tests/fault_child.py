"""The processes of the fault-injection suite, one per command (run as a script).

    run STORE THREAD run|resume   one run of tests/fault_graph.py; one JSON line on stdout
    churn DB SECONDS WORKERS PREFIX   runs on many threads while another thread of the same
                                  process opens and closes checkpointers on DB every 20 ms
    hold-lock DB SECONDS LOCKED   BEGIN EXCLUSIVE on DB, create LOCKED, hold it, commit
    inspect DB                    integrity_check and every thread's owner and checkpoints
    damage DB garble|truncate|sql ARG...   change DB's bytes or rows, as another program would

STORE is JSON: {"kind": "sqlite", "path": ...} or {"kind": "postgres", "dsn": ..., "schema": ...}.
`run` exits 0 with {"final": state}, 3 on ThreadBusyError, 4 on ThreadStateError, 6 on
CheckpointError (subclasses included) and 1 on anything else, printing {"error", "message",
"elapsed", "at"}.
FAULT_SKEW=SECONDS sets this process's wall clock that far ahead (clock skew between hosts):
`time.time` is replaced before statemachine is imported. Debian's libfaketime was tried
instead and dropped: under it Python's `time.sleep` fails with EINVAL or hangs.
"""

from __future__ import annotations

import os
import time

if os.environ.get("FAULT_SKEW"):
    _skew, _wall = float(os.environ["FAULT_SKEW"]), time.time
    time.time = lambda: _wall() + _skew

# the clock is set before anything reads it
import argparse
import json
import random
import sqlite3
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXIT_BUSY, EXIT_STATE, EXIT_CHECKPOINT, EXIT_OTHER = 3, 4, 6, 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("store")
    run.add_argument("thread")
    run.add_argument("mode", choices=["run", "resume"])
    run.add_argument("--lease", type=float)
    run.add_argument("--busy-timeout", type=float)
    run.add_argument("--close-after", help="wait for this file to exist before close()")
    churn = commands.add_parser("churn")
    churn.add_argument("db")
    churn.add_argument("seconds", type=float)
    churn.add_argument("workers", type=int)
    churn.add_argument("prefix")
    hold = commands.add_parser("hold-lock")
    hold.add_argument("db")
    hold.add_argument("seconds", type=float)
    hold.add_argument("locked")
    inspect = commands.add_parser("inspect")
    inspect.add_argument("db")
    damage = commands.add_parser("damage")
    damage.add_argument("db")
    damage.add_argument("how", choices=["garble", "truncate", "sql"])
    damage.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    return {"run": run_graph, "churn": churn_checkpointers, "hold-lock": hold_lock,
            "inspect": inspect_db, "damage": damage_db}[args.command](args)


def open_store(spec: dict, **options):
    if spec["kind"] == "postgres":
        from checkpoints import PostgresCheckpointer

        return PostgresCheckpointer(spec["dsn"], schema=spec["schema"], **options)
    from checkpoints import SQLiteCheckpointer

    return SQLiteCheckpointer(spec["path"], **options)


def run_graph(args: argparse.Namespace) -> int:
    """One run or resume; the error, if any, as JSON with how long the call took."""
    from fault_graph import graph

    from statemachine import CheckpointError, ThreadBusyError, ThreadStateError

    options = {k: v for k, v in (("lease_seconds", args.lease),
                                 ("busy_timeout", args.busy_timeout)) if v is not None}
    started = time.monotonic()
    report: dict = {}
    code = 0
    saver = None
    try:
        saver = open_store(json.loads(args.store), **options)
        app = graph.compile(checkpointer=saver)
        final = app.invoke({}, thread_id=args.thread) if args.mode == "run" else \
            app.resume(args.thread)
        report["final"] = final.model_dump(exclude={"blob"})
    except Exception as exc:
        code = next((c for kind, c in ((ThreadBusyError, EXIT_BUSY),
                                        (ThreadStateError, EXIT_STATE),
                                        (CheckpointError, EXIT_CHECKPOINT))
                     if isinstance(exc, kind)), EXIT_OTHER)
        report.update(error=type(exc).__name__, message=str(exc),
                      elapsed=time.monotonic() - started, at=time.time())
        if code == EXIT_OTHER:
            import traceback

            traceback.print_exc()
    if args.close_after and saver is not None:
        while not os.path.exists(args.close_after):
            time.sleep(0.01)
    if saver is not None:
        try:
            saver.close()
        except Exception as exc:
            report["close_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report))
    return code


def churn_checkpointers(args: argparse.Namespace) -> int:
    """Runs on `workers` threads on one checkpointer, while another thread opens and closes
    checkpointers on the same file every 20 ms (a per-request checkpointer in a server)."""
    from fault_graph import expected_final, graph

    from checkpoints import SQLiteCheckpointer

    expected = expected_final()
    stop = time.monotonic() + args.seconds
    errors: list[str] = []
    counts = {"runs": 0, "wrong": 0, "opened": 0}
    lock = threading.Lock()

    def note(exc: BaseException) -> None:
        with lock:
            errors.append(f"{type(exc).__name__}: {exc}")

    def runner(app, worker: int) -> None:
        number = 0
        while time.monotonic() < stop:
            thread_id = f"{args.prefix}-{worker}-{number}"
            number += 1
            try:
                final = app.invoke({}, thread_id=thread_id).model_dump(exclude={"blob"})
            except Exception as exc:
                note(exc)
                continue
            with lock:
                counts["runs"] += 1
                counts["wrong"] += final != expected

    def churn() -> None:
        while time.monotonic() < stop:
            try:
                SQLiteCheckpointer(args.db).close()
            except Exception as exc:
                note(exc)
            with lock:
                counts["opened"] += 1
            time.sleep(0.02)

    with SQLiteCheckpointer(args.db) as saver:
        app = graph.compile(checkpointer=saver)
        threads = [threading.Thread(target=runner, args=(app, w)) for w in range(args.workers)]
        threads.append(threading.Thread(target=churn))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(json.dumps({**counts, "errors": len(errors),
                      "samples": sorted(set(errors))[:5]}))
    return 0


def hold_lock(args: argparse.Namespace) -> int:
    """Another program holding the database's write lock for `seconds`."""
    conn = sqlite3.connect(args.db, isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    Path(args.locked).touch()
    time.sleep(args.seconds)
    conn.execute("COMMIT")
    conn.close()
    return 0


def inspect_db(args: argparse.Namespace) -> int:
    """What a fresh process finds in the file once every writer is gone."""
    if not Path(args.db).exists():  # connect would create it
        print(json.dumps({"integrity": ["ok"], "threads": {}}))
        return 0
    conn = sqlite3.connect(args.db, timeout=30)
    report: dict = {"integrity": [row[0] for row in conn.execute("PRAGMA integrity_check")]}
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if report["integrity"] == ["ok"] and "threads" in tables:
        report["threads"] = {
            thread: {"owner": owner, "checkpoints": [list(row) for row in conn.execute(
                "SELECT id, parent, step, kind, status FROM checkpoints WHERE thread = ? "
                "ORDER BY id", (key,))]}
            for key, thread, owner in conn.execute("SELECT key, thread_id, owner FROM threads")}
    conn.close()
    print(json.dumps(report))
    return 0


def damage_db(args: argparse.Namespace) -> int:
    """Garbage over bytes (garble OFFSET LENGTH SEED), a shorter file (truncate SIZE), or one
    SQL statement run with the plain sqlite3 module (sql STATEMENT)."""
    path = Path(args.db)
    if args.how == "garble":
        offset, length, seed = map(int, args.args)
        with path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(random.Random(seed).randbytes(length))
    elif args.how == "truncate":
        os.truncate(path, int(args.args[0]))
    else:
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(args.args[0])
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
