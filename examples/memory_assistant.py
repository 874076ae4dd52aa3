"""Memory assistant: a chat assistant that remembers a user's preferences across threads.

    START -> recall -> reply -> learn -> END

- Each conversation is a thread of its own; what the assistant learns about the user lives
  in the store, in the namespace ("users", <user id>, "memories"), shared by every thread
  of that user and by no other user's.
- `recall` searches the user's memories for the ones closest to the new message (semantic
  search with a small offline embedding: words hashed into buckets, no download);
  `reply` answers with them; `learn` stores what the message says ("I am vegetarian", "I
  live in Oslo") with `ctx.store.put`.
- A node's memory writes commit with its step, in the same SQLite transaction as the
  checkpoint: a node that fails and is retried, or a process killed mid-step, never leaves a
  memory twice or one from a step that did not commit.

    python examples/memory_assistant.py [DB]     two conversations of one user (temp file default)
"""

import hashlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from checkpoints import SQLiteCheckpointer, SQLiteStore
from statemachine import END, START, RunContext, StateGraph
from statemachine.messages import Message, MessagesState

DIMS = 256
FACTS = [  # what a message can teach: (pattern, memory key, how it is remembered)
    (r"\bi(?: am|'m) (vegetarian|vegan)\b", "diet", "eats {0} food"),
    (r"\bi live in (\w+)", "city", "lives in {0}"),
    (r"\bcall me (\w+)", "name", "is called {0}"),
]


def embed(texts: list[str]) -> list[list[float]]:
    """A deterministic toy embedding: each word adds one to a bucket picked by its hash."""
    vectors = []
    for text in texts:
        vector = [0.0] * DIMS
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMS] += 1.0
        vectors.append(vector)
    return vectors


class User(BaseModel):
    user_id: str


class Chat(MessagesState):
    recalled: list[str] = Field(default_factory=list)


def memories(ctx: RunContext) -> tuple[str, ...]:
    return ("users", ctx.context.user_id, "memories")


def recall(state: Chat, ctx: RunContext) -> dict[str, Any]:
    question = str(state.messages[-1].content)
    found = ctx.store.search(memories(ctx), query=question, limit=2)
    return {"recalled": [item.value["text"] for item in found if (item.score or 0) > 0]}


def reply(state: Chat, ctx: RunContext) -> dict[str, Any]:
    text = str(state.messages[-1].content).lower()
    if re.search(r"\b(dinner|eat|cook)\b", text):
        diet = ctx.store.get(memories(ctx), "diet")
        answer = f"How about a {diet.value['text'].split()[1]} curry?" if diet else \
            "How about a steak?"
    elif re.search(r"\bweather\b", text):
        city = ctx.store.get(memories(ctx), "city")
        answer = f"I'll check the weather in {city.value['text'].split()[-1]}." if city else \
            "Where do you live?"
    else:
        answer = "Noted." if state.recalled == [] else f"Noted (I know you {state.recalled[0]})."
    return {"messages": [Message(role="assistant", content=answer)]}


def learn(state: Chat, ctx: RunContext) -> dict[str, Any]:
    said = str(state.messages[-2].content)
    for pattern, key, how in FACTS:
        if (found := re.search(pattern, said, re.IGNORECASE)) is not None:
            ctx.store.put(memories(ctx), key, {"text": how.format(found[1].lower()),
                                              "from_thread": ctx.thread_id})
    return {}


builder = StateGraph(Chat, context_schema=User)
builder.add_node("recall", recall)
builder.add_node("reply", reply)
builder.add_node("learn", learn)
builder.add_edge(START, "recall")
builder.add_edge("recall", "reply")
builder.add_edge("reply", "learn")
builder.add_edge("learn", END)
graph = builder


def main(path: str | Path | None = None) -> list[str]:
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(path) if path else Path(tmp) / "memory.db"
        index = {"embed": embed, "dims": DIMS, "fields": ["text"]}
        user = User(user_id="ada")
        conversations = {
            "monday": ["Hi, I am vegetarian.", "I live in Oslo by the way."],
            "friday": ["What should I cook for dinner?", "And what is the weather like?"],
        }
        with SQLiteCheckpointer(db) as saver, SQLiteStore(db, index=index) as store:
            app = graph.compile(checkpointer=saver, store=store)
            for thread, lines in conversations.items():  # a new thread: no shared messages
                for line in lines:
                    state = app.invoke({"messages": [{"role": "user", "content": line}]},
                                       thread_id=thread, context=user)
                    out.append(f"[{thread}] user: {line}")
                    out.append(f"[{thread}] assistant: {state.messages[-1].content}")
            remembered = store.search(("users", "ada"))
            out.append("memories: " + "; ".join(
                f"{item.key}={item.value['text']}" for item in reversed(remembered)))
    for line in out:
        print(line)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
