"""Rebuilding states from storage: which writes each checkpoint applied, in the order its step
merged them, replayed through the reducers onto the nearest stored snapshot.

The one definition of "the writes a checkpoint applies, in order" (`Replayer.step_writes`)
that the executor, `update_state`, compensation and snapshots of a thread use; the order
itself is `records.in_merge_order`, which the live run follows too and the readers use
without the schema (`records.stored_writes`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ValidationError

from checkpoints.base import Chain, CheckpointRecord, PendingWrite
from checkpoints.rows import damaged

from .checkpoint_extra import extra_of
from .errors import CheckpointError
from .migrations import UnknownStoredFields
from .records import in_merge_order
from .snapshots import ReplayCost
from .state import StateSchema

Write = tuple[str, int, dict[str, Any]]
"""One task's validated update: (node, task index, update)."""


class Replayer:
    """Rebuilds the states of one graph's threads from their stored checkpoints."""

    def __init__(self, schema: StateSchema, parent: Replayer | None = None) -> None:
        self.schema = schema
        self.parent = parent
        """For a subgraph's threads: the replayer of the graph it is a node of, which replays
        the part of a chain that belongs to the parent's thread."""

    def rebuild(self, chain: Chain, base: BaseModel | None = None) -> BaseModel:
        """The state at `chain.head`: the state at its first checkpoint (`base`, else that
        checkpoint's snapshot) plus the writes since, replayed.

        The writes of the whole chain are decoded in one call and folded into one new state
        (`StateSchema.replay`), so a long chain costs about what its writes hold. If they do
        not decode, each checkpoint is replayed on its own, which names the one that fails."""
        return self.rebuild_counting(chain, base)[0]

    def rebuild_counting(self, chain: Chain, base: BaseModel | None = None,
                         cost: ReplayCost | None = None) -> tuple[BaseModel, ReplayCost]:
        """`rebuild`, and what the rebuild replayed (see `snapshots`) on top of `cost`, what
        rebuilding the chain's first checkpoint costs (None: it has a snapshot)."""
        records = chain.records
        if base is None and records[0].thread_id != chain.head.thread_id:
            # a subgraph's thread that starts from its parent's state: the parent's part of
            # the chain is replayed by the parent's replayer (its schema, its reducers)
            split = next(i for i, r in enumerate(records) if r.thread_id == chain.head.thread_id)
            parent = self.parent or self
            base, cost = parent.rebuild_counting(Chain(records[:split], chain.pending))
            chain = Chain(records[split - 1:], chain.pending)
        state = self.decode_snapshot(chain.records[0]) if base is None else base
        cost = ReplayCost(len(chain.records[0].snapshot or "")) if cost is None else cost
        if len(chain.records) == 1:
            return state, cost
        try:
            steps = self._chain_writes(chain)
        except (ValidationError, ValueError):  # incl. UnknownStoredFields: named per checkpoint
            steps = [[(n, u) for n, _, u in self.step_writes(
                parent, record, chain.pending.get(parent.id, []))]
                for parent, record in pairwise(chain.records)]
            for (_, record), writes in zip(pairwise(chain.records), steps, strict=True):
                state = self.schema.apply(state, writes, step=record.step,
                                          thread_id=record.thread_id)
        else:
            state = self.schema.replay(state, steps, thread_id=chain.head.thread_id)
        appends = self.schema.appends_only
        return state, cost.plus(chain, [not all(appends(u) for _, u in writes)
                                        for writes in steps])

    def _chain_writes(self, chain: Chain) -> list[list[tuple[str, dict[str, Any]]]]:
        """Each checkpoint's writes after the first, in merge order, decoded in one call:
        `step_writes` for a whole chain."""
        arrays = []
        for parent, record in pairwise(chain.records):
            items = []
            if record.kind == "step":
                carried = parent.extra and '"carried"' in parent.extra and \
                    extra_of(parent).carried
                if carried:
                    items.append(json.dumps(carried)[1:-1])
                items += [f"[{json.dumps(w.node)},{w.index},{w.writes}]"
                          for w in chain.pending.get(parent.id, ())]
            if record.kind != "fork" and record.writes:
                text = record.writes
                if not (text.startswith("[") and text.endswith("]")):
                    raise ValueError("not a JSON array as a run writes it")
                items.append(text[1:-1])
            arrays.append("[" + ",".join(item for item in items if item) + "]")
        decoded = self.schema.decode_chain_writes("[" + ",".join(arrays) + "]")
        if len(decoded) != len(arrays):
            raise ValueError("the writes do not split into one array per checkpoint")
        return [[(n, u) for n, _, u in (
            in_merge_order(writes, parent) if record.kind == "step" else writes)]
            for (parent, record), writes in zip(pairwise(chain.records), decoded, strict=True)]

    def apply_record(self, state: BaseModel, parent: CheckpointRecord, record: CheckpointRecord,
                     parent_pending: Sequence[PendingWrite]) -> BaseModel:
        """The state after `record`, from the state at its parent."""
        writes = [(n, u) for n, _, u in self.step_writes(parent, record, parent_pending)]
        return self.schema.apply(state, writes, step=record.step, thread_id=record.thread_id)

    def step_writes(self, parent: CheckpointRecord, record: CheckpointRecord,
                    parent_pending: Sequence[PendingWrite]) -> list[Write]:
        """What `record` applied to its parent's state, decoded, in merge order: a step's
        finished tasks (carried or pending on the parent) and its own inline writes, merged
        in the order the parent lists its tasks; an input, update or compensation its own
        writes as stored; a fork nothing."""
        if record.kind == "fork":
            return []
        own = self.decode_record_writes(record)
        if record.kind != "step":
            return own
        return in_merge_order([*self.finished_writes(parent, parent_pending), *own], parent)

    def finished_writes(self, record: CheckpointRecord, pending: Sequence[PendingWrite]
                        ) -> list[Write]:
        """The writes `record`'s step already keeps (carried onto it by update_state, or
        pending), decoded, in merge order."""
        try:
            writes = [*self.carried_writes(record), *(
                (w.node, w.index, self.schema.decode_update(w.writes)) for w in pending)]
        except (ValidationError, UnknownStoredFields) as exc:
            raise stale(record, exc) from exc
        return in_merge_order(writes, record)

    def carried_writes(self, record: CheckpointRecord) -> list[Write]:
        """Writes of finished tasks that update_state carried onto `record`, validated."""
        carried = extra_of(record).carried
        if not carried:
            return []
        return self.schema.decode_writes(json.dumps(carried))

    def decode_record_writes(self, record: CheckpointRecord) -> list[Write]:
        """The writes stored inline in a checkpoint."""
        if not record.writes:
            return []
        try:
            return self.schema.decode_writes(record.writes)
        except (ValidationError, UnknownStoredFields) as exc:
            raise stale(record, exc) from exc

    def decode_snapshot(self, record: CheckpointRecord) -> BaseModel:
        if record.snapshot is None:
            raise CheckpointError(
                f"checkpoint {record.id} of thread {record.thread_id!r} has no stored state and "
                "no parent to rebuild it from; the file is damaged.")
        try:
            return self.schema.decode_state(record.snapshot)
        except (ValidationError, UnknownStoredFields) as exc:
            raise stale(record, exc) from exc


def stale(record: CheckpointRecord, exc: ValidationError | UnknownStoredFields
          ) -> CheckpointError:
    """The error for a checkpoint whose stored JSON no longer validates."""
    if isinstance(exc, UnknownStoredFields):
        many = len(exc.fields) != 1
        return CheckpointError(
            f"checkpoint {record.id} of thread {record.thread_id!r} holds field"
            f"{'s' if many else ''} {', '.join(map(repr, exc.fields))}, which the state model "
            f"no longer has. Say what became of {'them' if many else 'it'}, and nothing stored "
            f"is lost: StateGraph(State, migrations=[Rename({exc.fields[0]!r}, 'new_name')]) "
            f"or [Drop({exc.fields[0]!r})] (statemachine.migrations).")
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return damaged(None, record.thread_id, record.id, "its stored state or writes are not "
                       f"valid JSON ({exc.errors(include_url=False)[0]['msg']})")
    fields = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
    return CheckpointError(
        f"checkpoint {record.id} of thread {record.thread_id!r} no longer fits the state "
        f"schema (field{'s' if len(fields) != 1 else ''} {', '.join(fields) or '?'}): "
        f"{exc.errors(include_url=False)[0]['msg']}. The schema changed since it was written; "
        "make the change backwards compatible (a default, a wider type) or migrate the data.")
