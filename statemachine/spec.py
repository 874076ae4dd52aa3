"""The graph spec: the frozen, validated graph as plain data.

The compiler produces it; the executor, routing, the diagrams and the testing toolkit read it.
Nothing here checks anything: the checks are the compiler's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import TypeAdapter

from .policies import CachePolicy, RetryPolicy
from .run_context import ContextSchema
from .state import StateSchema


@dataclass(frozen=True)
class CallableInfo:
    """How to call a user function: its name, whether it is async, whether it takes a context."""

    fn: Callable[..., Any]
    name: str
    is_async: bool
    wants_context: bool


@dataclass(frozen=True)
class NodeSpec:
    """A node with its options, as the executor runs it."""

    name: str
    call: CallableInfo
    retry: RetryPolicy | None = None
    timeout: float | None = None
    cache: CachePolicy | None = None
    compensate: CallableInfo | None = None
    destinations: tuple[str, ...] = ()
    on_error: str = "raise"
    error_field: str = "errors"
    subgraph: Subgraph | None = None
    payload_type: TypeAdapter[Any] | None = None
    """Validates a Send's payload into the type the node's parameter declares."""
    code_fingerprint: str = ""
    """Changes when the node's code changes: part of its cache namespace."""
    local: bool = False
    """Runs in the driver even when the run's tasks go to a cluster (`runner="local"`)."""


@dataclass(frozen=True)
class Subgraph:
    """A compiled graph used as a node. Same schema: it runs on the parent's state and its
    writes pass up; otherwise `input(parent_state)` makes its input and `output(final_state)`
    the parent's update."""

    graph: Any
    input: Callable[[Any], Any] | None = None
    output: Callable[[Any], Any] | None = None

    @property
    def same_schema(self) -> bool:
        return self.input is None and self.output is None


@dataclass(frozen=True)
class Branch:
    """A conditional edge: after `source`, `router` picks the targets."""

    source: str
    router: CallableInfo
    mapping: Mapping[Hashable, str] | None
    """Route key -> target, when the path map is a dict."""
    allowed: frozenset[str] | None
    """Targets the router may name directly (list path map or Literal); None: any node or END."""

    @property
    def targets(self) -> tuple[str, ...]:
        """Every target this branch can lead to, for validation and diagrams."""
        if self.mapping is not None:
            return tuple(dict.fromkeys(self.mapping.values()))
        return tuple(sorted(self.allowed)) if self.allowed is not None else ()


@dataclass(frozen=True)
class Join:
    """`add_edge([a, b], c)`: c runs once after every source has run."""

    index: int
    sources: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class GraphSpec:
    """A validated, frozen graph: everything the executor and the diagrams read."""

    schema: StateSchema
    nodes: Mapping[str, NodeSpec]
    order: Mapping[str, int]
    edges: Mapping[str, tuple[str, ...]]
    branches: Mapping[str, tuple[Branch, ...]]
    joins: tuple[Join, ...]
    joins_by_source: Mapping[str, tuple[Join, ...]]
    interrupt_before: frozenset[str]
    interrupt_after: frozenset[str]
    digraph: nx.DiGraph = field(repr=False)
    retry: RetryPolicy | None = None
    max_concurrency: int | None = None
    on_failure: str = "raise"
    check_mutation: str = "sizes"
    """How a step checks that its nodes left the state they were given alone (`mutation`)."""
    context: ContextSchema | None = None
    """Validates a call's `context=` (`run_context`); None: taken as it is."""
