"""Chat messages: the message list every chat memory is built on.

    from statemachine.messages import Message, MessagesState, RemoveMessage, add_messages

    class Chat(MessagesState):          # messages: Annotated[list[Message], add_messages]
        summary: str = ""

    def answer(state: Chat) -> dict:
        return {"messages": [Message(role="assistant", content="Hello!")]}

`add_messages` merges an update into the list: a message whose `id` is already there replaces
it in place, `RemoveMessage(id=...)` removes one, any other is appended. Plain dicts
(`{"role": "user", "content": "hi"}`) are validated into `Message`s like any update.

A message without an id gets one when it is merged, made from the message before it, its
role and its content, so replaying the stored updates (resume, `history`) gives every message
the same id again; an update is stored as it was given, so replacing one message stores that
message, not the list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool", "remove"]
"""A message's role; "remove" is only `RemoveMessage`'s, in updates."""
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

_ROLE_ALIASES = {"human": "user", "ai": "assistant", "developer": "system"}


class Message(BaseModel):
    """One chat message. `role` also takes LangChain's "human" and "ai"; `content` is text
    or a list of parts (images, tool results) as your model's API takes them; tool calls
    and the id of the call a tool message answers ride along."""

    model_config = ConfigDict(frozen=True, extra="allow")  # a provider's extra keys stay

    role: Role
    content: str | list[Any] | None = ""
    id: str | None = None
    """Set by `add_messages` when missing; give one to replace the message later."""
    name: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tool_call_id: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, value: Any) -> Any:
        return _ROLE_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        """Text is a user message; ("assistant", "hi") is a role and its content; a
        LangChain-style dict names its role `type` ({"type": "human", "content": ...})."""
        if isinstance(value, str):
            return {"role": "user", "content": value}
        if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str):
            return {"role": value[0], "content": value[1]}
        if isinstance(value, dict) and "role" not in value and "type" in value:
            value = dict(value)
            value["role"] = value.pop("type")
        return value


REMOVE_ALL_MESSAGES = "__remove_all__"
"""`RemoveMessage(id=REMOVE_ALL_MESSAGES)` removes every message before it (in the list and
earlier in the same update): a summary that replaces the history."""


class RemoveMessage(Message):
    """An update entry that removes the message with this `id` (stored as a message with
    role "remove", so a replayed update removes it again); `REMOVE_ALL_MESSAGES` removes all
    before it."""

    role: Literal["remove"] = "remove"
    id: str

    def __init__(self, id: str, **data: Any) -> None:
        super().__init__(id=id, **data)


def add_messages(current: Sequence[Message] | None,
                 update: Sequence[Message | dict[str, Any]] | Message | None
                 ) -> list[Message]:
    """`current` with `update` merged: same id replaces (in place), role "remove" removes
    (an unknown id is an error), anything else is appended with an id (see the module).
    Returns a new list; neither argument is changed."""
    merger = MessageMerger(current)
    merger.add(update)
    return merger.result()


class MessageMerger:
    """`add_messages` over many updates in a row (replaying a chat's history): the list and
    its id index are built once, not once per update, so n updates cost what they hold."""

    def __init__(self, current: Sequence[Message] | None) -> None:
        self.merged: list[Message] = list(current or ())
        self.position: dict[str, int] = {m.id: i for i, m in enumerate(self.merged)
                                         if m.id is not None}
        self.removed: set[int] = set()

    def add(self, update: Sequence[Message | dict[str, Any]] | Message | None) -> None:
        """Merge one update, exactly as `add_messages(result(), update)` would."""
        if update is None:
            return
        merged, position, removed = self.merged, self.position, self.removed
        entries = [update] if isinstance(update, (Message, dict)) else list(update)
        for entry in entries:
            message = entry if isinstance(entry, Message) else Message.model_validate(entry)
            if message.role == "remove" and message.id == REMOVE_ALL_MESSAGES:
                removed.update(range(len(merged)))
                continue
            if message.role == "remove":
                if message.id is None or message.id not in position or \
                        position[message.id] in removed:
                    raise ValueError(f"RemoveMessage(id={message.id!r}): no message with that "
                                     f"id (ids: {_shown(position, removed)})")
                removed.add(position[message.id])
                continue
            if message.id is not None and message.id in position and \
                    position[message.id] not in removed:
                merged[position[message.id]] = message
                continue
            key = message.id
            if key is None:
                key = _new_id(merged, removed, position, message)
                message = message.model_copy(update={"id": key})
            position[key] = len(merged)
            merged.append(message)

    def result(self) -> list[Message]:
        """The merged list (a new one)."""
        removed = self.removed
        if not removed:
            return list(self.merged)
        return [m for i, m in enumerate(self.merged) if i not in removed]


def _new_id(merged: list[Message], removed: set[int], position: dict[str, int],
            message: Message) -> str:
    """An id from what precedes the message and what it says: the same on every replay."""
    at = len(merged) - 1
    while at in removed:
        at -= 1
    previous = merged[at].id if at >= 0 else ""
    seed = json.dumps([previous, message.role, message.content, message.name,
                       message.tool_call_id], sort_keys=True, default=str)
    candidate = hashlib.sha256(seed.encode()).hexdigest()[:16]
    suffix = 1
    while candidate in position and position[candidate] not in removed:
        candidate = f"{candidate[:16]}-{suffix}"
        suffix += 1
    return candidate


def _shown(position: dict[str, int], removed: set[int]) -> str:
    ids = [str(i) for i, p in position.items() if p not in removed]
    return ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "") if ids else "none"


class MessagesState(BaseModel):
    """A state with a chat history: subclass it and add your fields."""

    messages: Annotated[list[Message], add_messages] = []


def only_appends(update: Any) -> bool:
    """Whether an `add_messages` update can only append (no ids, no removals): replaying it
    reads no more than a snapshot would hold (see `StateSchema.appends_only`)."""
    entries = [update] if isinstance(update, (Message, dict, str)) else update
    if not isinstance(entries, Sequence):
        return False
    for entry in entries:
        if isinstance(entry, str | tuple):
            continue  # a shorthand: text or (role, content), never an id
        fields = entry if isinstance(entry, dict) else {"id": entry.id, "role": entry.role}
        if fields.get("id") is not None or fields.get("role") == "remove":
            return False
    return True


def messages_of(values: Iterable[Message | dict[str, Any]]) -> list[Message]:
    """Messages from `Message`s and plain dicts, validated (ids left as they are)."""
    return [v if isinstance(v, Message) else Message.model_validate(v) for v in values]


__all__ = [
    "REMOVE_ALL_MESSAGES",
    "Message",
    "MessagesState",
    "RemoveMessage",
    "Role",
    "add_messages",
    "messages_of",
]
