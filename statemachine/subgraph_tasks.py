"""A subgraph node's task: the subgraph run to its end, its result an update for the parent.

With a checkpointer the subgraph runs as a thread of its own, `parent::node:index@origin`, the
same for every re-run of the task, so a resumed parent resumes it where it stopped, and a
subgraph that waits for an event pauses the parent until the parent's resume delivers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from checkpoints.base import FINISHED

from .checkpoint_extra import extra_of
from .errors import ThreadStateError
from .records import Task
from .spec import NodeSpec
from .streaming import StreamChannel
from .types import task_id
from .waiting import INTERRUPT_EVENT, WaitingForEvent, current_answers

if TYPE_CHECKING:
    from .executor import Executor
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
        run = child.new_run(runner.thread_id, inline_sync=runner.inline_sync,
                            context=_context_for(child, runner))
        run.runner.channel = _channel_for(runner, node, task, at)
        run.collected = []
        async for _ in run.execute(child_input):
            pass
        writes = [update for _, update in run.collected]
        final = run.state
    else:
        thread = f"{runner.thread_id}::{node.name}:{task.index}@{at.origin}"
        chain = await saver.load(thread)
        head = chain.head if chain is not None else None
        waits = extra_of(head).waiting if head is not None else []
        if chain is not None and chain.head.status in FINISHED:
            final = child.replayer.rebuild(chain)
        else:
            event = None
            if head is not None and head.status == "interrupted" and waits:
                name = waits[0][2]
                event = {name: _newest_answer(name)}
            run = child.new_run(thread, inline_sync=runner.inline_sync,
                                context=_context_for(child, runner))
            run.runner.channel = _channel_for(runner, node, task, at)
            if head is None and not task.sent and at.base is not None and arg is at.state \
                    and child.spec.schema.model is runner.spec.schema.model:
                # its input is this thread's state at the head: refer to it, not a copy
                run.input_base = (at.base[0], at.base[1].copy())
            async for _ in run.execute(child_input if head is None else None,
                                       resume=head is not None, event=event):
                pass
            final = run.state
            ended = await saver.load(thread)
            assert ended is not None
            ended_extra = extra_of(ended.head)
            waiting = ended_extra.waiting
            if ended.head.status == "interrupted":
                if waiting:  # what the subgraph's node asked is what the parent asks
                    asked = [q.value for q in ended_extra.questions
                             if (q.node, q.task_index, q.event) == waiting[0]
                             and q.event.startswith(INTERRUPT_EVENT)]
                    raise WaitingForEvent(waiting[0][2], asked[0] if asked else None)
                raise ThreadStateError(
                    f"subgraph node {node.name!r} paused on an interrupt of its own; "
                    "interrupts inside subgraphs are not supported: use wait_for().")
        writes = [update for *_, update in (await child.run_writes(thread, saver))[1]]
    if sub.output is None:  # the same schema: its writes pass up
        return runner.spec.schema.combine(writes)
    return sub.output(final)


def _newest_answer(event: str) -> Any:
    """For a subgraph waiting for `event`: the value its parent's resume delivered last, or
    pause the parent. Each pause of the parent stands for exactly one pause of the subgraph,
    so the newest answer is the one for the subgraph's current wait."""
    answers = current_answers.get()
    if answers is None or not answers.answers:
        raise WaitingForEvent(event)
    return answers.answers[-1]


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
