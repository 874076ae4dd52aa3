"""A subgraph node's task: the subgraph run to its end, its result an update for the parent.

With a checkpointer the subgraph runs as a thread of its own, `parent::node:index@origin`, the
same for every re-run of the task, so a resumed parent resumes it where it stopped, and a
subgraph that waits for an event pauses the parent until the parent's resume delivers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from checkpoints.base import FINISHED, CheckpointRecord

from .checkpoint_extra import CheckpointExtra, Question, extra_of
from .commands import NO_RESUME
from .errors import ThreadStateError
from .records import Task
from .spec import NodeSpec
from .streaming import StreamChannel
from .types import task_id
from .waiting import INTERRUPT_EVENT, WaitingForEvent, current_answers

if TYPE_CHECKING:
    from .executor import Executor
    from .run import Run
    from .task_runner import StepInput, TaskRunner


async def run_subgraph(runner: TaskRunner, node: NodeSpec, task: Task, arg: Any,
                       at: StepInput) -> Any:
    """Run a subgraph node to its end; its update for the parent."""
    sub = node.subgraph
    assert sub is not None
    child = runner.executor.child_executor(node)
    child_input = arg if sub.input is None else sub.input(arg)  # None: the same schema
    saver = runner.saver
    if saver is None:
        run = _child_run(child, runner.thread_id, runner, node, task, at)
        run.collected = []
        async for _ in run.execute(child_input):
            pass
        writes = [update for _, update in run.collected]
        final = run.state
    else:
        thread = f"{runner.thread_id}::{node.name}:{task.index}@{at.origin}"
        chain = await saver.load(thread)
        head = chain.head if chain is not None else None
        if chain is not None and chain.head.status in FINISHED:
            final = child.replayer.rebuild(chain)
        else:
            event, answer = _continuation(head)
            run = _child_run(child, thread, runner, node, task, at)
            if head is None and not task.sent and at.base is not None and arg is at.state \
                    and child.spec.schema.model is runner.spec.schema.model:
                # its input is this thread's state at the head: refer to it, not a copy
                run.input_base = (at.base[0], at.base[1].copy())
            async for _ in run.execute(child_input if head is None else None,
                                       resume=head is not None, event=event, answer=answer):
                pass
            final = run.state
            ended = await saver.load(thread)
            assert ended is not None
            ended_extra = extra_of(ended.head)
            waiting = ended_extra.waiting
            if ended.head.status == "interrupted":
                if waiting:  # what the subgraph's node asked is what the parent asks
                    question = _question(ended_extra, waiting[0])
                    if question is not None:  # named by the child's question: its own id
                        raise WaitingForEvent(f"{INTERRUPT_EVENT}{question.id}",
                                              question.value)
                    raise WaitingForEvent(waiting[0][2])
                raise ThreadStateError(
                    f"subgraph node {node.name!r} paused on an interrupt of its own; "
                    "interrupts inside subgraphs are not supported: use wait_for().")
        writes = [update for *_, update in (await child.run_writes(thread, saver))[1]]
    if sub.output is None:  # the same schema: its writes pass up
        return runner.spec.schema.combine(writes)
    return sub.output(final)


def _child_run(child: Executor, thread_id: str | None, runner: TaskRunner, node: NodeSpec,
               task: Task, at: StepInput) -> Run:
    """The subgraph's run on `thread_id`, as the parent's call runs: its context, its stream
    (under this task's namespace) and its cluster, which runs the subgraph's nodes too unless
    the subgraph node was added with runner="local"."""
    run = child.new_run(thread_id, inline_sync=runner.inline_sync,
                        context=_context_for(child, runner))
    run.runner.channel = _channel_for(runner, node, task, at)
    if runner.cluster is not None and not node.local:
        run.runner.cluster = runner.cluster
    return run


def _continuation(head: CheckpointRecord | None) -> tuple[dict[str, Any] | None, Any]:
    """What a re-run of the parent's task hands the subgraph's paused or failed run: (event,
    answer) for its `resume`.

    Each pause of the parent stands for exactly one question (or event) of the subgraph, so
    the parent's newest answer is the one for the subgraph's current wait: it goes to the one
    question the parent asked, by its id (parallel tasks of the subgraph each ask their own
    and are asked one at a time). No answer yet: the parent pauses, asking it. A subgraph
    that failed after an answer gets the parent's newest answer for its last question, so
    an answer replaced on the parent replaces it there too."""
    if head is None:
        return None, NO_RESUME
    extra = extra_of(head)
    given = current_answers.get()
    answers = given.answers if given is not None else []
    if head.status == "failed" and extra.questions and answers:
        return None, {extra.questions[-1].id: answers[-1]}
    if head.status != "interrupted" or not extra.waiting:
        return None, NO_RESUME
    wait = extra.waiting[0]
    question = _question(extra, wait)
    if not answers:
        if question is not None:
            raise WaitingForEvent(f"{INTERRUPT_EVENT}{question.id}", question.value)
        raise WaitingForEvent(wait[2])
    if question is not None:
        return None, {question.id: answers[-1]}
    return {wait[2]: answers[-1]}, NO_RESUME


def _question(extra: CheckpointExtra, wait: tuple[str, int, str]) -> Question | None:
    """The `interrupt` question a waiting task asked (None: it waits in `wait_for`)."""
    for question in extra.questions:
        if (question.node, question.task_index, question.event) == wait and \
                question.event.startswith(INTERRUPT_EVENT):
            return question
    return None


def _channel_for(runner: TaskRunner, node: NodeSpec, task: Task,
                 at: StepInput) -> StreamChannel | None:
    """Where the subgraph's run streams: into the caller's stream, under this task's namespace
    (`streaming`)."""
    if runner.channel is None:
        return None
    return runner.channel.for_subgraph(
        node.name, task_id(runner.thread_id, at.origin, node.name, task.index))


def _context_for(child: Executor, runner: TaskRunner) -> Any:
    """The call's context for a subgraph: as the call gave it when the subgraph has a
    `context_schema` of its own (it validates it), else as the parent's nodes see it."""
    return runner.raw_context if child.spec.context is not None else runner.call_context
