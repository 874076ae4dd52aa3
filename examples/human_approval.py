"""Human approval: a node asks a person with `interrupt`, the run pauses durably, and a later
call answers it.

    START -> draft -> review (asks: "send this reply?") --approved--> send -> END
                                                        --rejected--> END

`interrupt(question)` ends the run at that node and commits the pause: `invoke` returns the
state as of the pause, and `get_state(thread).interrupts` shows the question. Any process
with the same database answers it with `resume(thread, answer=...)`: the node runs again
from the top and `interrupt` returns the answer this time. Here the answer comes from a
second app on the same SQLite file, as a reviewer's web request would.
"""

import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, StateGraph, interrupt


class Reply(BaseModel):
    ticket: str = ""
    draft: str = ""
    approved: bool | None = None
    sent: bool = False


def draft(state: Reply) -> dict:
    return {"draft": f"Hello, we refunded your order for ticket {state.ticket}."}


def review(state: Reply) -> dict:
    answer = interrupt({"question": "send this reply?", "draft": state.draft})
    return {"approved": answer == "yes"}


def decide(state: Reply) -> str:
    return "send" if state.approved else END


def send(state: Reply) -> dict:
    return {"sent": True}


graph = StateGraph(Reply)
graph.add_node("draft", draft)
graph.add_node("review", review)
graph.add_node("send", send)
graph.add_edge(START, "draft")
graph.add_edge("draft", "review")
graph.add_conditional_edges("review", decide, ["send", END])
graph.add_edge("send", END)


def main(path: Path, answer: str = "yes") -> Reply:
    with SQLiteCheckpointer(path) as saver:  # the first process: runs until the question
        app = graph.compile(checkpointer=saver)
        paused = app.invoke({"ticket": "T-7"}, thread_id="T-7")
        question = app.get_state("T-7").interrupts[0]
        print(f"paused at {question.node!r}, asking: {question.value['question']}")
        print(f"invoke returned the state as of the pause: approved={paused.approved}")
    with SQLiteCheckpointer(path) as saver:  # later, anywhere: the reviewer's answer
        final = graph.compile(checkpointer=saver).resume("T-7", answer=answer)
        print(f"answered {answer!r}: approved={final.approved}, sent={final.sent}")
    return final


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(0 if main(Path(tmp) / "approvals.db").sent else 1)
