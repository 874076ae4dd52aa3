"""Starting a run on a stored thread: what the head checkpoint says the run does (a new
thread, new input on a finished run, a fork, or the due tasks of a paused, failed or crashed
step with the work it already kept), and delivering events to tasks waiting in `wait_for`.

Continuing a paused or failed step commits a checkpoint of its own first (kind `resume`, or
`event` when it delivers events), carrying the step's kept work: the paused or failed one
stays in the history as it was, and a later pause or failure is marked on the new one.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from checkpoints.base import (
    FINISHED,
    Chain,
    CheckpointRecord,
    HeadMark,
    Lease,
    NewCheckpoint,
    PendingWrite,
)

from .checkpoint_extra import CheckpointExtra, Question, extra_of
from .commands import NO_RESUME
from .constants import CONTINUATIONS, INPUT, START
from .errors import ThreadStateError
from .migrations import UnknownStoredFields
from .records import Task, decode_goto, decode_tasks, unknown_due_nodes
from .replay import stale
from .snapshots import ReplayCost
from .task_runner import StepResults
from .thread_errors import not_found, rollback_stopped_message, unfinished_message
from .waiting import INTERRUPT_EVENT

if TYPE_CHECKING:
    from .executor import Executor
    from .run import Run


async def start_on_thread(run: Run, input: Any, checkpoint_id: str | None, resume: bool,
                          lease_head: HeadMark | None = None) -> None:
    """Load the thread's head and set `run` up from it: a new thread, new input on a
    finished one, a fork, or the head's due tasks (with the work its step already kept).
    `lease_head`: the head as read when the run took the thread; new input on the checkpoint a
    run here finished at then starts from the cached state, reading nothing."""
    assert run.saver is not None and run.thread_id is not None and run.committer
    schema = run.spec.schema
    loaded = await run.executor.load_state(run.saver, run.thread_id, checkpoint_id,
                                            own=True,
                                            head=lease_head if input is not None else None)
    if loaded is None:
        if checkpoint_id is not None or resume:
            raise not_found(run.thread_id, checkpoint_id)
        if input is None:
            raise ThreadStateError(
                f"thread {run.thread_id!r} does not exist yet, so there is nothing to "
                "continue; start it with an input: invoke({...}, thread_id=...).")
        run.state = schema.validate_input(input, thread_id=run.thread_id)
        await _start_run(run, None, 0, None)
        return
    state, chain, cost = loaded
    assert cost is not None
    run.committer.replay = cost
    head = chain.head
    extra = extra_of(head)
    rolling_back = head.kind == "compensation" and head.status not in FINISHED
    if (head.status == "rollback_failed" or rolling_back) and checkpoint_id is None:
        raise ThreadStateError(rollback_stopped_message(head, extra))
    if input is None:  # a fork runs the due tasks again: the step's kept work is not used
        _check_nodes_known(run, head, chain if checkpoint_id is None else None)
    if input is not None:
        if checkpoint_id is None and head.status not in FINISHED:
            raise ThreadStateError(unfinished_message(head))
        update = schema.validate_update(input, node=INPUT, step=head.step,
                                        thread_id=run.thread_id)
        run.state = schema.apply(state, [(INPUT, update)], step=head.step,
                                  thread_id=run.thread_id)
        await _start_run(run, head.id, head.step, update)
        return
    run.state, run.step = state, head.step
    run.joins = extra.joins
    # paused before these tasks (or paused, resumed, then failed in them): run them now
    run.skip_interrupt_before = head.kind in CONTINUATIONS or (
        head.status in ("interrupted", "failed") and extra.interrupt == "before")
    run.tasks = decode_tasks(head.next)
    if checkpoint_id is not None:  # a fork: a new branch that runs the tasks again
        await run.committer.put(NewCheckpoint(
            parent_id=head.id, step=head.step, kind="fork", status="running",
            next=head.next, snapshot=run.committer.snapshot_if_due(0, True, run.state),
            extra=CheckpointExtra(joins=run.joins).encode(), created_at=time.time()))
        return
    run.committer.start_at(head, cost)
    run.step_origin = extra.origin
    run.runner.results = stored_results(run.executor, head, chain)
    run.runner.results.answers = {k: list(v) for k, v in extra.answers.items()}
    run.head_status, run.head_extra = head.status, extra
    run.head_record, run.head_pending = head, chain.pending.get(head.id, [])


async def take_with_input(run: Run, input: Any) -> tuple[Lease, bool]:
    """Take the thread for a run of new input; when the run before it finished here and its
    state is cached, commit the input in the same transaction (`Checkpointer.lease_and_put`):
    the state and the input checkpoint are made from the cached state first, and stored only
    if the thread's head is still that run's last checkpoint, bound to the graph text that run
    accepted; when nothing of the thread is cached, as a new thread's first input
    (`_take_as_new`). Returns the lease and whether the input is committed; if not, the run
    starts as after `lease` (the cached state was stale, or the thread not new: it is read
    from storage).

    Only for a graph whose START has fixed edges: no router, nothing of the user's but the
    input's validation and the reducers runs before the thread is taken. Whatever fails while
    the input is made from the cached state (which may be stale) is left to the run from
    storage, which fails the same way if it must."""
    saver, committer, thread_id = run.saver, run.committer, run.thread_id
    assert saver is not None and committer is not None and thread_id is not None
    executor, spec = run.executor, run.spec
    if spec.branches.get(START):
        return await saver.lease(thread_id, run.owner), False
    cached = executor.states.take_finished(thread_id)
    if cached is None:
        return await _take_as_new(run, input)
    graph = None
    if executor.binds_threads:
        graph = cached.graph
        if graph is None:  # which binding the last run accepted is not known
            cached = None
    if cached is None or cached.head is None:
        return await saver.lease(thread_id, run.owner), False
    head, schema = cached.head, spec.schema
    try:
        update = schema.validate_update(input, node=INPUT, step=head.step,
                                        thread_id=thread_id)
        state = schema.apply(cached.state, [(INPUT, update)], step=head.step,
                             thread_id=thread_id)
        tasks, joins = await run.route([Task(START)], state, head.step, {})
        committer.replay = cached.cost
        checkpoint = committer.input_checkpoint(
            head.id, head.step, state, tasks,
            (update, schema.encode_update(update, node=INPUT, step=head.step,
                                          thread_id=thread_id)),
            CheckpointExtra(joins=joins).encode())
    except Exception:
        committer.replay = ReplayCost()
        return await saver.lease(thread_id, run.owner), False
    lease, written = await saver.lease_and_put(
        thread_id, run.owner, checkpoint,
        head=HeadMark(cached.checkpoint_id, cached.created_at, None), graph=graph)
    if written is None:
        committer.replay = ReplayCost()
        return lease, False
    run.state, run.step, run.tasks, run.joins = state, head.step, tasks, joins
    run.bound_graph = graph
    committer.committed(checkpoint, written)
    return lease, True


async def _take_as_new(run: Run, input: Any) -> tuple[Lease, bool]:
    """`take_with_input` for a thread this process has no state of: made as a new thread's
    first checkpoint (the input validated as a whole state, routed from START), the input is
    committed with the take only if the thread has no checkpoint, and the thread is bound to
    this graph in it if the take creates it. A new conversation's first turn then waits for
    one commit before its first step, not three (take, input, binding). A thread that exists
    is read from storage as before; an input that is not a whole state fails there as before."""
    saver, committer, thread_id = run.saver, run.committer, run.thread_id
    assert saver is not None and committer is not None and thread_id is not None
    if run.input_base is not None:  # a subgraph's thread starts from its parent's checkpoint
        return await saver.lease(thread_id, run.owner), False
    executor = run.executor
    try:
        state = run.spec.schema.validate_input(input, thread_id=thread_id)
        tasks, joins = await run.route([Task(START)], state, 0, {})
        checkpoint = committer.input_checkpoint(None, 0, state, tasks, None,
                                                CheckpointExtra(joins=joins).encode())
    except Exception:
        committer.replay = ReplayCost()
        return await saver.lease(thread_id, run.owner), False
    graph = executor.identity.encode() if executor.binds_threads else None
    lease, written = await saver.lease_and_put(thread_id, run.owner, checkpoint,
                                               head=NO_HEAD, graph=graph)
    if written is None:
        committer.replay = ReplayCost()
        return lease, False
    run.state, run.step, run.tasks, run.joins = state, 0, tasks, joins
    run.bound_graph = graph
    committer.committed(checkpoint, written)
    return lease, True


NO_HEAD = HeadMark(None, None, None)
"""The head of a thread with no checkpoint."""


async def deliver(run: Run, event: dict[str, Any] | None, answer: Any = NO_RESUME) -> None:
    """Hand delivered event values (and answers to `interrupt` questions) to the tasks
    waiting for them, durably, before running; a paused or failed step is continued on a
    checkpoint of its own (see the module). An answer given to a step that failed after its
    questions were answered replaces the answer (a wrong one must not leave it stuck)."""
    waiting = run.head_extra.waiting if run.head_status == "interrupted" else None
    by_task: dict[tuple[str, int, str], Any] = {}
    if answer is not NO_RESUME:
        if not waiting and run.head_status == "failed" and run.head_extra.questions:
            run.runner.results.answers, redo = _replaced(run, answer)
            _forget_kept(run, redo)
            await _continue(run, "event", run.runner.results.answers)
            return
        by_task = _as_events(run, answer, waiting or [])
    if not waiting:
        if event is not None:
            raise ThreadStateError(
                f"thread {run.thread_id!r} is not waiting for an event, so event="
                f"{event!r} has nowhere to go; resume it without one.")
        if run.head_status in ("interrupted", "failed") and run.tasks:
            await _continue(run, "resume", run.runner.results.answers)
        return
    given = [(n, i, name) for n, i, name in waiting
             if (n, i, name) in by_task or (event is not None and name in event)]
    missing = [name for n, i, name in waiting if (n, i, name) not in given]
    asked = [q for q in run.head_extra.questions
             if (q.node, q.task_index, q.event) not in given
             and q.event.startswith(INTERRUPT_EVENT) and q.event in missing]
    if asked and not given:
        questions = "; ".join(f"{q.id} (node {q.node!r}): {q.value!r}" for q in asked)
        raise ThreadStateError(
            f"thread {run.thread_id!r} waits for an answer: {questions}. Give it with "
            f"app.resume({run.thread_id!r}, answer=...) or invoke(Command(resume=...), "
            f"thread_id={run.thread_id!r}).")
    events_missing = [name for name in missing if not name.startswith(INTERRUPT_EVENT)]
    if events_missing and not given:
        raise ThreadStateError(
            f"thread {run.thread_id!r} is waiting for event {events_missing[0]!r} (node "
            f"{waiting[0][0]!r}); resume it with app.resume({run.thread_id!r}, "
            f"event={{{events_missing[0]!r}: ...}}).")
    # what is given goes on; a task still unanswered runs again and asks again (pauses)
    assert run.committer is not None
    answers = run.runner.results.answers
    for node, index, name in given:
        value = by_task[(node, index, name)] if (node, index, name) in by_task else \
            (event or {})[name]
        answers.setdefault((node, index), []).append(to_jsonable_python(value))
    run.skip_interrupt_before = True
    await _continue(run, "event", answers)


def _pending(run: Run, waiting: list[tuple[str, int, str]]) -> list[Question]:
    """The questions of the head still waiting for an answer; on a failed head, those of
    the tasks that did not finish (all, when every task finished and the step failed after
    them, in a router say)."""
    if not waiting:
        done = run.runner.results.pending
        unfinished = [q for q in run.head_extra.questions
                      if (q.node, q.task_index) not in done]
        return unfinished or list(run.head_extra.questions)
    names = {(n, i, e) for n, i, e in waiting}
    return [q for q in run.head_extra.questions if (q.node, q.task_index, q.event) in names]


_INTERRUPT_ID = re.compile(r"[0-9a-f]{32}")


def _by_id(run: Run, answer: Any, pending: list[Question]) -> dict[str, Any]:
    """`answer` as {interrupt id: answer}: a dict of pending ids, or the one answer."""
    ids = {q.id for q in pending}
    if isinstance(answer, dict) and answer and set(answer) <= ids:
        return answer
    if isinstance(answer, dict) and answer and all(
            isinstance(k, str) and _INTERRUPT_ID.fullmatch(k) for k in answer):
        unknown = sorted(set(answer) - ids)
        asked = "; ".join(f"{q.id} (node {q.node!r}: {q.value!r})" for q in pending) or "none"
        raise ThreadStateError(
            f"thread {run.thread_id!r} asks no question with id {', '.join(unknown)} (an "
            f"answered or older question's, or a subgraph's own); it waits for: {asked}.")
    if len(pending) == 1:
        return {pending[0].id: answer}
    if not pending:
        raise ThreadStateError(f"thread {run.thread_id!r} asked nothing, so answer= has "
                               "nowhere to go; resume it without one.")
    asked = "; ".join(f"{q.id} (node {q.node!r}: {q.value!r})" for q in pending)
    raise ThreadStateError(
        f"thread {run.thread_id!r} waits for {len(pending)} answers: answer each by its id, "
        f"answer={{id: ..., ...}}. Waiting: {asked}.")


def _as_events(run: Run, answer: Any, waiting: list[tuple[str, int, str]]
               ) -> dict[tuple[str, int, str], Any]:
    """Answers to a paused head's questions, by the waiting task and event they answer."""
    pending = _pending(run, waiting)
    by_id = _by_id(run, answer, pending)
    return {(q.node, q.task_index, q.event): by_id[q.id] for q in pending if q.id in by_id}


def _replaced(run: Run, answer: Any
              ) -> tuple[dict[tuple[str, int], list[Any]], set[tuple[str, int]]]:
    """The failed head's answers with those of `answer` replaced (and any given after them
    dropped: they answered questions asked after the wrong answer), and the tasks whose
    answers changed."""
    pending = _pending(run, [])
    by_id = _by_id(run, answer, pending)
    answers = {k: list(v) for k, v in run.runner.results.answers.items()}
    changed: set[tuple[str, int]] = set()
    for q in pending:
        if q.id in by_id:
            key = (q.node, q.task_index)
            answers[key] = [*answers.get(key, [])[:q.position], to_jsonable_python(by_id[q.id])]
            changed.add(key)
    run.skip_interrupt_before = True
    return answers, changed


def _forget_kept(run: Run, tasks: set[tuple[str, int]]) -> None:
    """Drop what `tasks` finished with their old answers (their update was kept when the
    step failed after them, in a router say): they run again with the new answers."""
    results = run.runner.results
    for key in tasks:
        for kept in (results.pending, results.encoded, results.meta, results.gotos):
            kept.pop(key, None)
        results.committed.discard(key)
    run.head_pending = [w for w in run.head_pending if (w.node, w.index) not in tasks]
    extra = run.head_extra
    run.head_extra = extra.copy(
        carried=[c for c in extra.carried if (c[0], c[1]) not in tasks],
        carried_meta={k: v for k, v in extra.carried_meta.items() if k not in tasks})


async def _continue(run: Run, kind: str, answers: dict[tuple[str, int], list[Any]]) -> None:
    """Commit the checkpoint continuing the paused or failed head: its due tasks, with the
    work the head's step kept (carried, as update_state carries it), the same task ids (their
    origin) and the events delivered so far."""
    head, committer = run.head_record, run.committer
    assert head is not None and committer is not None
    kept = run.head_extra
    # an operator's go-ahead past an interrupt_before stays given (an edit keeps it too)
    extra = carried_on(kept, run.head_pending).copy(
        origin=kept.origin or head.id, joins=kept.joins, answers=dict(answers),
        interrupt="before" if kept.interrupt == "before" else None, other=kept.other,
        questions=kept.questions)
    await committer.put(NewCheckpoint(
        parent_id=head.id, step=head.step, kind=kind, status="running", next=head.next,
        snapshot=committer.snapshot_if_due(0, True, run.state), extra=extra.encode(),
        created_at=time.time()))
    run.step_origin = extra.origin

async def _start_run(run: Run, parent_id: str | None, step: int,
                     update: dict[str, Any] | None) -> None:
    """Route from START and commit the run's input checkpoint."""
    assert run.committer is not None and run.thread_id is not None
    run.step = step
    run.tasks, run.joins = await run.route([Task(START)], run.state, step, {})
    encoded = None
    if update is not None:
        encoded = (update, run.spec.schema.encode_update(
            update, node=INPUT, step=step, thread_id=run.thread_id))
    if parent_id is None and run.input_base is not None:
        parent_id, run.committer.replay = run.input_base
    await run.committer.put_input(parent_id, step, run.state, run.tasks, encoded,
                                   CheckpointExtra(joins=run.joins).encode())


def _check_nodes_known(run: Run, head: CheckpointRecord, chain: Chain | None) -> None:
    """The head's due tasks and kept work name only nodes of this graph: a thread run by
    another graph is refused before anything runs, its stored error left as it is."""
    nodes = run.spec.nodes
    unknown = unknown_due_nodes(head, None if chain is None else chain.pending.get(head.id, []),
                                nodes)
    if unknown:
        raise ThreadStateError(
            f"thread {run.thread_id!r} is due to run node"
            f"{'s' if len(unknown) != 1 else ''} {', '.join(map(repr, unknown))}, which graph "
            f"{run.executor.name!r} does not have (its nodes: {', '.join(nodes)}): it was run by "
            "another graph, or by an older version of this one. Continue it with the graph "
            "that ran it; or start a new branch from a checkpoint this graph can run with "
            "app.fork(...) or invoke(input, thread_id=..., checkpoint_id=...).")


def stored_results(executor: Executor, head: CheckpointRecord, chain: Chain) -> StepResults:
    """What the tasks of `head`'s step already finished, as stored: writes carried onto it by
    update_state and its pending writes, with their metadata and `Command` targets."""
    schema = executor.spec.schema
    results = StepResults()
    thread_id = head.thread_id
    carried_meta = extra_of(head).carried_meta
    for node, index, update in executor.replayer.carried_writes(head):
        results.pending[(node, index)] = update
        results.encoded[(node, index)] = schema.encode_update(
            update, node=node, step=head.step, thread_id=thread_id)
        _keep_meta(results, (node, index), carried_meta.get((node, index)))
    for write in chain.pending.get(head.id, []):
        key = (write.node, write.index)
        try:
            results.pending[key] = schema.decode_update(write.writes)
        except (ValidationError, UnknownStoredFields) as exc:
            raise stale(head, exc) from exc
        results.encoded[key] = write.writes
        _keep_meta(results, key, json.loads(write.meta) if write.meta else None)
    results.committed = set(results.pending)
    return results


def _keep_meta(results: StepResults, key: tuple[str, int], meta: dict[str, Any] | None) -> None:
    if meta:
        results.meta[key] = meta
        if "goto" in meta:
            results.gotos[key] = decode_goto(meta["goto"])


def carried_on(extra: CheckpointExtra, pending: list[PendingWrite]) -> CheckpointExtra:
    """What a checkpoint continuing a step carries of it: the work the step's checkpoint
    carried and its pending writes, with what those tasks decided (`Command` targets)."""
    meta = dict(extra.carried_meta)
    meta.update(((w.node, w.index), json.loads(w.meta)) for w in pending if w.meta)
    return CheckpointExtra(
        carried=[*extra.carried, *([w.node, w.index, json.loads(w.writes)] for w in pending)],
        carried_meta=meta)
