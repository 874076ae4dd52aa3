"""Chat agent: a multi-turn assistant with streamed tokens, tools, an approval and memory.

    START -> agent --(the reply calls a tool)--> tools --Command(goto="agent")--> agent
             agent --(a plain reply)--> END

- `agent` asks a (fake, offline) LLM for the next message and streams its tokens with
  `ctx.emit(Message(...))` as they come, each chunk under the reply's id: the caller prints
  them live with stream_mode=["messages", ...], and the whole reply is not sent again.
- A reply may call a tool; `tools` runs it and hands the result back with a `Command`.
  Refunds need a person: the tool asks with `interrupt(...)`, the run pauses durably, and the
  next call answers with `Command(resume="yes")`.
- The thread is the chat's memory: each turn adds to `messages` (`add_messages`), so the
  LLM sees the whole conversation, across processes (a SQLite file).
- The user's id rides in `context=`: every node sees it, nothing of it is stored.

    python examples/chat_agent.py [DB]     three turns, the last one approved (temp file default)
"""

import operator
import re
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, Field

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, Command, RunContext, StateGraph, interrupt
from statemachine.messages import Message, MessagesState

THREAD = "chat-ada"
WEATHER = {"paris": "18°C and sunny", "oslo": "4°C and raining"}


class Chat(MessagesState):
    refunded: Annotated[list[str], operator.add] = Field(default_factory=list)


class User(BaseModel):
    user_id: str
    name: str


class Reply(NamedTuple):
    text: str
    tool: dict[str, Any] | None = None


class FakeLLM:
    """A stand-in for a chat model: replies from the conversation, token by token."""

    def reply(self, messages: list[Message], user: User) -> Reply:
        last = messages[-1]
        if last.role == "tool":
            return Reply(f"Done: {last.content}.")
        text = str(last.content).lower()
        if (city := re.search(r"weather in (\w+)", text)) is not None:
            return Reply("Let me check.", {"name": "weather", "args": {"city": city[1]}})
        if (order := re.search(r"refund order (\w+)", text)) is not None:
            return Reply("I'll ask for a refund.", {"name": "refund",
                                                     "args": {"order": order[1]}})
        said = sum(1 for m in messages if m.role == "user")
        return Reply(f"Hello {user.name}! That is message {said} you sent me.")

    def stream(self, text: str) -> list[str]:
        return [word + " " for word in text.split()]


LLM = FakeLLM()


def agent(state: Chat, ctx: RunContext) -> dict:
    reply = LLM.reply(state.messages, ctx.context)
    reply_id = f"reply-{ctx.task_id[:16]}"  # the task's id: the same if the step runs again
    for token in LLM.stream(reply.text):  # each reaches a streaming caller now, while this runs
        ctx.emit(Message(role="assistant", content=token, id=reply_id))
    calls = [{"id": f"call-{len(state.messages)}", **reply.tool}] if reply.tool else []
    return {"messages": [Message(role="assistant", content=reply.text, tool_calls=calls,
                                 id=reply_id)]}


def route(state: Chat) -> str:
    return "tools" if state.messages[-1].tool_calls else END


def tools(state: Chat) -> Command:
    call = state.messages[-1].tool_calls[0]
    update: dict[str, Any] = {}
    if call["name"] == "weather":
        result = f"the weather in {call['args']['city'].title()} is " \
                 f"{WEATHER.get(call['args']['city'], 'unknown')}"
    else:  # a refund moves money: a person approves it first
        order = call["args"]["order"]
        verdict = interrupt({"question": f"refund order {order}?", "order": order})
        if verdict == "yes":
            result, update = f"order {order} was refunded", {"refunded": [order]}
        else:
            result = f"the refund of order {order} was declined"
    message = Message(role="tool", content=result, tool_call_id=call["id"])
    return Command(update={"messages": [message], **update}, goto="agent")


builder = StateGraph(Chat, context_schema=User)
builder.add_node("agent", agent)
builder.add_node("tools", tools, destinations=("agent",))
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", route, ["tools", END])
graph = builder


def turn(app: Any, text: Any, user: User, out: list[str]) -> None:
    """One user turn: stream the assistant's tokens as they come, and say if it paused."""
    value = {"messages": [{"role": "user", "content": text}]} if isinstance(text, str) else text
    line = ""
    for mode, payload in app.stream(value, thread_id=THREAD, context=user,
                                    stream_mode=["messages", "updates"]):
        if mode == "messages":
            message, _ = payload  # (a token chunk or a whole message, its metadata)
            if message.role == "assistant":
                line += message.content
        elif "__interrupt__" in payload:
            if line:
                out.append(f"assistant: {line.strip()}")
            out.append(f"(paused: {payload['__interrupt__'][0].value['question']})")
            return
        elif "agent" in payload and line:
            out.append(f"assistant: {line.strip()}")
            line = ""


def main(path: str | Path | None = None) -> Chat:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(path) if path else Path(tmp) / "chat.db"
        user = User(user_id="u-17", name="Ada")
        out: list[str] = []
        with SQLiteCheckpointer(db) as saver:
            app = graph.compile(checkpointer=saver)
            for text in ("hi", "what is the weather in Paris?", "please refund order 7"):
                out.append(f"user: {text}")
                turn(app, text, user, out)
            out.append("approver: yes")
            turn(app, Command(resume="yes"), user, out)
        with SQLiteCheckpointer(db) as saver:  # the memory is in the file
            final = graph.compile(checkpointer=saver).get_state(THREAD).state
        print("\n".join(out))
        print(f"messages in memory: {len(final.messages)}; refunded: {final.refunded}")
        return final


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
