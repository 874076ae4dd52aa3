"""Scale out: many worker processes share one PostgreSQL database and a queue of runs.

    fetch -> extract -> classify -> store

Each document to process is a thread. The script submits them all (`app.submit`: checked
against the state schema, queued, returns at once), then starts two worker processes — the
same command you would run on each machine:

    statemachine worker examples.scale_out:graph --db postgresql://... --drain

Each worker claims jobs (`SELECT ... FOR UPDATE SKIP LOCKED`: one worker per job) and runs
them, committing every step. `extract` fails on the first try for some documents, as a flaky
service would: the worker queues the job again and the retry — by whichever worker claims it —
continues from `extract`, without fetching again.

Run it with a database URL, or with none to start a throwaway PostgreSQL server from the
machine's PostgreSQL programs (Debian: `apt-get install postgresql`):

    python examples/scale_out.py [postgresql://user@host/database]
"""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from statemachine import END, START, RunContext, StateGraph, reducers

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = 12
SCHEMA = "scale_out_example"


class Document(BaseModel):
    doc_id: int
    text: str = ""
    words: int = 0
    label: str = ""
    stored_by: str = ""
    trail: Annotated[list[str], reducers.append] = []


def fetch(state: Document) -> dict:
    return {"text": f"document {state.doc_id} " + "lorem ipsum " * (state.doc_id % 5 + 1),
            "trail": [f"fetch@{os.getpid()}"]}


def extract(state: Document, context: RunContext) -> dict:
    # A flaky service: every third document fails the first time it is tried. What "the
    # first time" is must outlive the worker process, so it is a marker file per task.
    flaky = os.environ.get("SCALE_OUT_FLAKY_DIR")
    if flaky and state.doc_id % 3 == 0:
        marker = Path(flaky) / context.task_id
        if not marker.exists():
            marker.touch()
            raise ConnectionError(f"extraction service timed out on document {state.doc_id}")
    return {"words": len(state.text.split()), "trail": [f"extract@{os.getpid()}"]}


def classify(state: Document) -> dict:
    return {"label": "long" if state.words > 8 else "short",
            "trail": [f"classify@{os.getpid()}"]}


def store(state: Document) -> dict:
    return {"stored_by": str(os.getpid()), "trail": [f"store@{os.getpid()}"]}


graph = StateGraph(Document)
graph.add_node("fetch", fetch)
graph.add_node("extract", extract)
graph.add_node("classify", classify)
graph.add_node("store", store)
graph.add_edge(START, "fetch")
graph.add_edge("fetch", "extract")
graph.add_edge("extract", "classify")
graph.add_edge("classify", "store")
graph.add_edge("store", END)


@contextlib.contextmanager
def database(argv: list[str]) -> Iterator[str]:
    if argv:
        yield argv[0]
        return
    from statemachine.testing.postgres import postgres_server

    with postgres_server() as dsn:
        yield dsn


def main(argv: list[str]) -> None:
    from checkpoints import PostgresCheckpointer

    with database(argv) as dsn, PostgresCheckpointer(dsn, schema=SCHEMA) as saver, \
            tempfile.TemporaryDirectory() as flaky:
        app = graph.compile(checkpointer=saver)
        run = f"{int(time.time())}"
        threads = [f"doc-{run}-{i}" for i in range(1, DOCUMENTS + 1)]
        for i, thread in enumerate(threads, start=1):
            app.submit({"doc_id": i}, thread_id=thread)
        print(f"submitted {len(threads)} documents")

        command = [sys.executable, "-m", "statemachine", "worker", "examples.scale_out:graph",
                   "--db", dsn, "--schema", SCHEMA, "--drain", "--quiet", "--retry-delay",
                   "0.2"]
        env = {**os.environ, "SCALE_OUT_FLAKY_DIR": flaky}
        workers = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        for worker in workers:
            _, err = worker.communicate(timeout=300)
            if worker.returncode != 0:
                raise SystemExit(f"a worker failed:\n{err}")
            print(err.strip().splitlines()[-1])

        jobs = {j.thread_id: j for j in app.jobs()}
        states = [app.get_state(t).state for t in threads]
        ran = Counter(step.split("@")[0] for s in states for step in s.trail)
        print(f"done: {sum(jobs[t].status == 'done' for t in threads)} of {len(threads)}; "
              f"retried after a failure: {sum(jobs[t].attempts > 1 for t in threads)}")
        print(f"committed node runs: {dict(ran)}")  # one each per document: none twice
        print(f"stored by {len({s.stored_by for s in states})} worker process(es)")


if __name__ == "__main__":
    main(sys.argv[1:])
