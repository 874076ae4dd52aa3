"""Workers: processes that take queued runs from the store and run them.

`app.submit(input, thread_id=...)` puts a run in the checkpointer's queue; any number of
workers, on any number of machines sharing the store (PostgreSQL, or one SQLite file on one
machine), claim runs one at a time and execute them:

    statemachine worker --db postgresql://db/app pkg.flows:graph --concurrency 4

What a worker guarantees, on top of the executor's own (each committed step is kept and never
re-run; one writer per thread):

* **Jobs belong to a graph**, by its name (`compile(name=...)`; by default named after the
  state class): a worker claims only jobs of the graph it runs, so graphs can share a store.
* **Each job goes to one worker.** Claims use `SELECT ... FOR UPDATE SKIP LOCKED` on
  PostgreSQL (SQLite has one writer at a time) and are renewed while the job runs.
* **A dead worker's job is taken over.** Its claim stops being renewed; once it expires another
  worker claims the job and *continues* the thread from its last committed step.
* **Failed runs are retried** — re-run from the failed step — up to the job's `max_attempts`,
  waiting `retry_delay * 2**(attempt-1)` seconds (at most `max_retry_delay`) between attempts.
  Failures a retry cannot fix (input the schema rejects, a thread in the wrong state) are not.
* **A job is started once.** The job remembers the thread's latest checkpoint when it was
  submitted; a worker that finds the thread moved on since continues it instead of applying the
  input a second time, and one that finds it finished only records the job as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from checkpoints.base import FINISHED

from .checkpoint_extra import extra_of
from .commands import NO_RESUME, Command
from .constants import INPUT
from .errors import (
    CheckpointerRequiredError,
    CheckpointError,
    GraphMismatchError,
    GraphValidationError,
    InvalidUpdateError,
    ThreadBusyError,
    ThreadNotFoundError,
    ThreadStateError,
)
from .graph_binding import check_reader
from .waiting import INTERRUPT_EVENT

if TYPE_CHECKING:
    from checkpoints.base import Checkpointer, ClaimedJob

    from .compiled import CompiledGraph

log = logging.getLogger("statemachine.worker")

DEFAULT_MAX_ATTEMPTS = 3

_PERMANENT = (InvalidUpdateError, ThreadStateError, ThreadNotFoundError, GraphValidationError)
"""Failures that running the job again cannot fix."""


ANSWER_KEY = "__answer__"
"""A queued job's event holding an `interrupt` answer ({ANSWER_KEY: answer}): event names
starting with "__" are the engine's own, so no `wait_for` event is taken for it."""


async def submit(app: CompiledGraph, input: Any, thread_id: str, *,
                 event: dict[str, Any] | None = None, answer: Any = NO_RESUME,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """Queue a run (see `CompiledGraph.submit`); checks the input now, not in the worker."""
    saver = _saver(app)
    if isinstance(input, Command):
        if not input.resumes or input.update is not None or input.goto:
            raise ThreadStateError("a Command given to submit answers a paused run: "
                                   "Command(resume=answer).")
        input, answer = None, input.resume
    if answer is not NO_RESUME:
        if event is not None:
            raise ThreadStateError("submit() takes an event or an answer, not both.")
        event = {ANSWER_KEY: answer}
    if not isinstance(thread_id, str) or not thread_id:
        raise ThreadStateError("submit() needs a thread_id: any text naming the run.")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    await check_reader(saver, thread_id, app.identity)  # another graph's thread: say so now
    chain = await saver.load(thread_id)

    async def refuse(error: ThreadStateError) -> ThreadBusyError | ThreadStateError:
        # the thread looks unfinished (or finished) because a job of it is queued or running:
        # say that, rather than what its state is in the meantime
        if await saver.jobs(thread_id=thread_id, open_only=True):
            from checkpoints.base import job_busy_error

            return job_busy_error(thread_id)
        return error

    schema = app.spec.schema
    encoded: str | None = None
    if chain is None:
        if input is None:
            raise ThreadNotFoundError(
                f"thread {thread_id!r} does not exist yet, so there is nothing to continue; "
                "submit it with an input: submit({...}, thread_id=...).")
        encoded = schema.encode_state(schema.validate_input(input, thread_id=thread_id))
    elif input is not None:
        if chain.head.status not in FINISHED:
            raise await refuse(ThreadStateError(
                f"thread {thread_id!r} has an unfinished run (status {chain.head.status!r}); "
                f"submit(None, thread_id={thread_id!r}) queues its continuation."))
        update = schema.validate_update(input, node=INPUT, step=chain.head.step,
                                        thread_id=thread_id)
        encoded = schema.encode_update(update, node=INPUT, step=chain.head.step,
                                       thread_id=thread_id)
    elif chain.head.status in FINISHED:
        raise await refuse(ThreadStateError(
            f"thread {thread_id!r} has finished (status {chain.head.status!r}); there is "
            "nothing to continue. Submit an input to run it again."))
    if chain is not None and input is None and event is None and \
            chain.head.status == "interrupted":
        asked = [q for q in extra_of(chain.head).questions
                 if q.event.startswith(INTERRUPT_EVENT)]
        if asked:
            raise ThreadStateError(
                f"thread {thread_id!r} waits for an answer: "
                + "; ".join(f"{q.id} (node {q.node!r}): {q.value!r}" for q in asked)
                + f"; queue it with submit(None, thread_id={thread_id!r}, answer=...).")
    if event is not None and not isinstance(event, dict):
        raise ThreadStateError("event must be a dict: {event name: value}.")
    if event is not None and input is not None:
        raise ThreadStateError(
            "an event continues a run waiting in wait_for(); it cannot come with new input: "
            f"submit(None, thread_id={thread_id!r}, event={{...}}).")
    await saver.enqueue(thread_id, input=encoded,
                        event=None if event is None else to_json(event).decode(),
                        base=None if chain is None else chain.head.id,
                        max_attempts=max_attempts, graph=app.name)
    return thread_id


@dataclass
class WorkerStats:
    """What a worker did: jobs claimed, and how each ended."""

    claimed: int = 0
    done: int = 0
    interrupted: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0
    """Jobs whose claim another worker took over while this one ran them."""
    other_graph: int = 0
    """Jobs handed back because another version of the graph runs their thread."""
    errors: list[str] = field(default_factory=list)


class Worker:
    """Claims queued runs of one graph and runs them, `concurrency` at a time.

        worker = Worker(app, concurrency=4)
        await worker.run()            # until stop() (or Ctrl-C in the CLI)
        await worker.run(drain=True)  # until the queue is empty
    """

    def __init__(self, app: CompiledGraph, *, concurrency: int = 1, poll_interval: float = 0.5,
                 retry_delay: float = 1.0, max_retry_delay: float = 60.0,
                 context: Any = None) -> None:
        """`context`: the run-scoped context every run this worker makes gets (an API
        client, settings): jobs carry none, as no call's context is stored. It is validated
        into the graph's `context_schema` now."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        from checkpoints.base import Owner

        self.app = app
        spec_context = app.spec.context
        self.context = context if spec_context is None else spec_context.validate(context)
        self.saver = _saver(app)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.identity = Owner.new()
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._claiming = 0
        """Claims in progress: they count against `max_jobs` until they return."""
        self._foreign: set[str] = set()
        """Threads found bound to another graph (their jobs are left to its workers)."""

    def stop(self) -> None:
        """Claim nothing more; runs in progress are cancelled and their jobs queued again
        (what they committed is kept: the next worker continues from there)."""
        self._stopping.set()

    async def run(self, *, drain: bool = False, max_jobs: int | None = None) -> WorkerStats:
        """Work until `stop()`; with `drain`, until no job of this graph is queued or running;
        with `max_jobs`, until this worker has claimed that many. A `stop()` that came before
        `run()` (a signal while the worker was starting) is kept: run() returns at once."""
        slots = [asyncio.create_task(self._slot(drain, max_jobs), name=f"worker-slot-{i}")
                 for i in range(self.concurrency)]
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([*slots, stopping],
                                         return_when=asyncio.FIRST_COMPLETED)
            while stopping not in done and not all(s.done() for s in slots):
                done, _ = await asyncio.wait([*slots, stopping],
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*slots, stopping]:
                task.cancel()
            results = await asyncio.gather(*slots, stopping, return_exceptions=True)
            self._stopping = asyncio.Event()  # stopped: a later run() starts afresh
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise result
        return self.stats

    async def _slot(self, drain: bool, max_jobs: int | None) -> None:
        while not self._stopping.is_set():
            if max_jobs is not None and self.stats.claimed + self._claiming >= max_jobs:
                return
            try:
                job = await self._claim()
                # draining: done once this graph has no job queued (later) or running, but
                # those of threads another version of it runs (handed back for its workers)
                if job is None and drain and not any(
                        j.thread_id not in self._foreign for j in await self.saver.jobs(
                            graph=self.app.name, open_only=True)):
                    return
            except CheckpointError as exc:  # the store is unreachable: wait, then look again
                log.error("cannot claim a job: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), max(self.poll_interval, 1.0))
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_interval)
                continue
            self.stats.claimed += 1
            try:
                await self._run_job(job)
            except CheckpointError as exc:
                # the job's outcome could not be recorded; its claim expires and another
                # worker continues the thread from its last committed step
                self.stats.errors.append(f"{job.thread_id}: {exc}")
                log.error("could not record the end of %s: %s", job.thread_id, exc)

    async def _claim(self) -> ClaimedJob | None:
        """The next job, or None. Stopped while the store hands one over, give that job back
        to the queue (its attempt uncounted) rather than leave it claimed but never run."""
        self._claiming += 1
        claiming = asyncio.ensure_future(self.saver.claim(self.identity, self.app.name))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            job = await claiming
            if job is not None:
                await self.saver.finish(job, status="queued", retry_in=0, count_attempt=False)
            raise
        finally:
            self._claiming -= 1

    async def _run_job(self, job: ClaimedJob) -> None:
        thread = job.thread_id
        log.info("claimed %s (attempt %d of %d)", thread, job.attempts, job.max_attempts)
        try:
            status = await self._execute(job)
        except asyncio.CancelledError:
            await asyncio.shield(self.saver.finish(job, status="queued", retry_in=0,
                                                   count_attempt=False))
            raise
        except GraphMismatchError as exc:
            # another version of the graph runs this thread (a rolling deploy): leave the job
            # to a worker of that version, or to an operator's `statemachine rebind`
            self._foreign.add(thread)
            self.stats.other_graph += 1
            if await self.saver.finish(job, status="queued", error=str(exc),
                                       retry_in=min(self.saver.lease_seconds, 5.0),
                                       count_attempt=False):
                log.warning("%s is bound to another graph; queued again for a worker of "
                            "that graph: %s", thread, exc)
            else:
                self.stats.lost += 1
            return
        except ThreadBusyError as exc:
            if not await self.saver.finish(job, status="queued", error=str(exc),
                                           retry_in=min(self.saver.lease_seconds, 5.0),
                                           count_attempt=False):
                self.stats.lost += 1
                log.warning("lost %s to another worker: %s", thread, exc)
            else:
                log.info("%s is busy; queued again", thread)
            return
        except Exception as exc:
            await self._failed(job, exc)
            return
        if await self.saver.finish(job, status=status):
            if status == "interrupted":
                self.stats.interrupted += 1
            else:
                self.stats.done += 1
            log.info("%s %s", thread, status)
        else:
            self.stats.lost += 1

    async def _execute(self, job: ClaimedJob) -> str:
        """Run (or continue) the job's thread; its status at the end."""
        thread, schema = job.thread_id, self.app.spec.schema
        chain = await self.saver.load(thread)
        head = None if chain is None else chain.head
        if (None if head is None else head.id) == job.base:  # nothing ran since submission
            if job.event is not None:
                delivered = json.loads(job.event)
                if isinstance(delivered, dict) and set(delivered) == {ANSWER_KEY}:
                    await self.app.aresume(thread, answer=delivered[ANSWER_KEY],
                                           context=self.context)
                else:
                    await self.app.aresume(thread, event=delivered, context=self.context)
            elif job.input is not None:
                value = schema.decode_state(job.input) if job.base is None \
                    else schema.decode_update(job.input)
                await self.app.ainvoke(value, thread_id=thread, context=self.context)
            else:
                await self.app.aresume(thread, context=self.context)
        elif head is not None and head.status in FINISHED | {"interrupted"}:
            return "interrupted" if head.status == "interrupted" else "done"  # ran already
        else:  # an earlier attempt started it: continue from its last committed step
            await self.app.aresume(thread, context=self.context)
        snapshot = await self.app.aget_state(thread)
        return "interrupted" if snapshot.status == "interrupted" else "done"

    async def _failed(self, job: ClaimedJob, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, _PERMANENT) or not isinstance(exc, Exception)
        if not permanent and job.attempts < job.max_attempts:
            delay = min(self.retry_delay * 2 ** (job.attempts - 1), self.max_retry_delay)
            if await self.saver.finish(job, status="queued", error=error, retry_in=delay):
                self.stats.retried += 1
                log.warning("%s failed (attempt %d of %d), retrying in %.3g s: %s",
                            job.thread_id, job.attempts, job.max_attempts, delay, error)
            else:
                self.stats.lost += 1
            return
        if await self.saver.finish(job, status="failed", error=error):
            self.stats.failed += 1
            self.stats.errors.append(f"{job.thread_id}: {error}")
            log.error("%s failed for good after %d attempt(s): %s", job.thread_id,
                      job.attempts, error)
        else:
            self.stats.lost += 1


def _saver(app: CompiledGraph) -> Checkpointer:
    if app.checkpointer is None:
        raise CheckpointerRequiredError(
            "the work queue lives in the checkpointer's store: compile the graph with one, "
            "e.g. compile(checkpointer=PostgresCheckpointer('postgresql://...')).")
    return app.checkpointer
