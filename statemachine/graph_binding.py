"""Threads know their graph: the graph's name and a fingerprint of its structure are stored
with each thread the first time a run writes it, and a run, edit, fork or rollback by a
different graph is refused before anything is written, naming both.

The fingerprint covers what a stored thread depends on to continue: the node names, the
fixed, conditional and join edges, and the structure of subgraph nodes (a subgraph's threads
belong to their parent's, so they are not bound themselves); interrupts are left out. It leaves
out the node functions' code (fixing a bug in a node is not a new graph) and the state
schema (stored states are upgraded by migrations, `migrations.py`). A thread stored before
threads recorded their graph is bound by its next run.

A deliberate upgrade moves threads to the new version explicitly: `app.rebind(thread_id)`,
or `statemachine rebind GRAPH --db ... --thread T` (or `--all` for every thread of a graph
of the same name).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from checkpoints.base import FINISHED, Checkpointer, Owner
from checkpoints.errors import CheckpointError

from .committer import holding
from .errors import GraphMismatchError, ThreadStateError
from .records import unknown_due_nodes
from .thread_errors import not_found

if TYPE_CHECKING:
    from .spec import GraphSpec


@dataclass(frozen=True, slots=True)
class GraphIdentity:
    """Which graph ran a thread: its name, its structure's fingerprint, and its nodes (to
    say what changed)."""

    name: str
    fingerprint: str
    nodes: tuple[str, ...]
    named: bool = True
    """Whether the name was given (`compile(name=...)`), not made from the state model's
    class name: only given names tell graphs apart (renaming a model is not a new graph)."""

    def encode(self) -> str:
        return _encoded(self)

    def describe(self) -> str:
        return f"{self.name!r} (structure {self.fingerprint})"


@functools.cache
def _encoded(identity: GraphIdentity) -> str:
    """An identity as stored (made once: every run compares the stored text with it)."""
    return json.dumps({"name": identity.name, "fingerprint": identity.fingerprint,
                       "nodes": list(identity.nodes), "named": identity.named},
                      separators=(",", ":"))


def identity_of(spec: GraphSpec, name: str, *, named: bool = True) -> GraphIdentity:
    """`spec`'s identity under `name` (see the module for what the fingerprint covers);
    `named`: the name was given, not made up."""
    structure = {
        "nodes": sorted([n, None if node.subgraph is None else identity_of(
            node.subgraph.graph.spec, node.subgraph.graph.name).fingerprint]
            for n, node in spec.nodes.items()),
        "edges": sorted([source, target] for source, targets in spec.edges.items()
                        for target in targets),
        "branches": sorted([b.source, list(b.targets) if b.mapping is not None or
                            b.allowed is not None else "*"]
                           for group in spec.branches.values() for b in group),
        "joins": sorted([sorted(j.sources), j.target] for j in spec.joins),
    }
    digest = hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()
    return GraphIdentity(name, digest[:12], tuple(spec.nodes), named)


def decode_identity(text: str, thread_id: str) -> GraphIdentity:
    """A stored identity; a `CheckpointError` naming the thread if it is not one."""
    try:
        raw = json.loads(text)
        return GraphIdentity(str(raw["name"]), str(raw["fingerprint"]),
                             tuple(str(n) for n in raw["nodes"]), bool(raw.get("named", True)))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"thread {thread_id!r}: the graph it is bound to (threads.graph) is not what a run "
            f"stores ({exc}). The database is damaged or was edited by hand; bind the thread "
            "again with app.rebind(...) or statemachine rebind.") from None


async def stored_identity(saver: Checkpointer, thread_id: str) -> GraphIdentity | None:
    """The graph `thread_id` is bound to; None for a thread never bound."""
    text = (await saver.thread_graphs([thread_id])).get(thread_id)
    return None if text is None else decode_identity(text, thread_id)


def same_name(stored: GraphIdentity, current: GraphIdentity) -> bool:
    """Whether two identities name the same graph: only given names tell graphs apart."""
    return stored.name == current.name or not (stored.named and current.named)


def mismatch(thread_id: str, stored: GraphIdentity, current: GraphIdentity) -> str | None:
    """Why `current` may not continue a thread bound to `stored`; None when it may: the same
    structure, under the same name where both names were given."""
    named_alike = same_name(stored, current)
    if named_alike and stored.fingerprint == current.fingerprint:
        return None
    if named_alike:
        added = [n for n in current.nodes if n not in stored.nodes]
        removed = [n for n in stored.nodes if n not in current.nodes]
        changes = [f"nodes added: {', '.join(added)}"] * bool(added) + \
            [f"nodes removed: {', '.join(removed)}"] * bool(removed)
        what = "; ".join(changes) if changes else "its edges or subgraphs changed"
        return (f"thread {thread_id!r} was run by graph {stored.describe()}, and this graph "
                f"{current.name!r} has another structure ({current.fingerprint}: {what}). "
                f"If this version is meant to continue it, move it on purpose: "
                f"app.rebind({thread_id!r}), or statemachine rebind GRAPH --db ... --thread "
                f"{thread_id}; otherwise continue it with the version that ran it.")
    return (f"thread {thread_id!r} was run by graph {stored.describe()}, not by this graph "
            f"{current.describe()}. Continue it with the graph that ran it; to move it to "
            f"this one on purpose: app.rebind({thread_id!r}), or statemachine rebind GRAPH "
            f"--db ... --thread {thread_id}.")


def runs(thread_id: str, stored: str, current: GraphIdentity) -> bool:
    """Whether `current` may run a thread bound to `stored` (the stored text); a
    `CheckpointError` if that text is damaged."""
    return stored == current.encode() or \
        mismatch(thread_id, decode_identity(stored, thread_id), current) is None


async def check_binding(saver: Checkpointer, thread_id: str, current: GraphIdentity,
                        known: str | None = None) -> bool:
    """Raise `GraphMismatchError` if `thread_id` is bound to another graph than `current`;
    whether `current` should bind it once it wrote to it (`bind`): the thread was never
    bound (a new thread, or one stored before threads recorded their graph), or has no
    checkpoint (a first run refused its input, say), which makes it anyone's. Writes nothing:
    a run or edit refused later must not bind the thread to the graph it refused. `known`:
    what `acquire` read of the binding ("" for none), if it did."""
    text = (await saver.thread_graphs([thread_id])).get(thread_id) if known is None \
        else known or None
    if text is None:
        return True
    if text == current.encode():  # the common case, without decoding
        return False
    error = refusal(thread_id, decode_identity(text, thread_id), current)
    if error is not None and await saver.list(thread_id, limit=1):
        raise error
    return error is not None


async def bind(saver: Checkpointer, thread_id: str, owner: Owner, current: GraphIdentity,
               needed: bool) -> None:
    """Bind the held thread to `current` when `check_binding` said it should."""
    if needed:
        await saver.bind_graph(thread_id, owner, current.encode())


async def check_reader(saver: Checkpointer, thread_id: str, current: GraphIdentity) -> None:
    """Raise `GraphMismatchError` if `thread_id` is bound to another graph than `current`
    (for what only reads it, such as the source of a fork to another thread)."""
    stored = await stored_identity(saver, thread_id)
    error = None if stored is None else refusal(thread_id, stored, current)
    if error is not None:
        raise error


def refusal(thread_id: str, stored: GraphIdentity, current: GraphIdentity
            ) -> GraphMismatchError | None:
    """The error refusing `current` on a thread bound to `stored`; None when it may run it."""
    reason = mismatch(thread_id, stored, current)
    if reason is None:
        return None
    return GraphMismatchError(reason, thread_id=thread_id, stored=stored.name,
                              stored_fingerprint=stored.fingerprint, graph=current.name,
                              fingerprint=current.fingerprint)


async def rebind(saver: Checkpointer, thread_id: str, current: GraphIdentity,
                 node_names: Sequence[str]) -> GraphIdentity | None:
    """Bind `thread_id` to `current` on purpose (a deliberate upgrade); what it was bound to
    before. Refused, changing nothing, when the thread does not exist or is due to run nodes
    the graph (`node_names`) lacks, which it could never continue."""
    async with holding(saver, thread_id) as owner:
        records = await saver.list(thread_id, limit=1)
        if not records:
            raise not_found(thread_id, None)
        head = records[0]
        if head.status not in FINISHED:
            pending = (await saver.list_pending([head.id])).get(head.id, [])
            unknown = unknown_due_nodes(head, pending, node_names)
            if unknown:
                raise ThreadStateError(
                    f"thread {thread_id!r} is due to run node{'s' * (len(unknown) != 1)} "
                    f"{', '.join(map(repr, unknown))}, which graph {current.name!r} does not "
                    "have: it could not continue the thread, so the thread was left bound as "
                    "it was. Fork it from a checkpoint this graph can run, or finish it with "
                    "the graph that ran it.")
        previous = await stored_identity(saver, thread_id)
        await saver.bind_graph(thread_id, owner, current.encode())
    return previous
