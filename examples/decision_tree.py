"""Decision tree: loan triage with three levels of conditional edges.

    intake --credit--> decline                    (score below 580)
       \\--> income_check --dti--> decline         (debt-to-income above 45%)
                \\--> amount_check --amount--> auto_approve | premium_approve | manual_review

Each level is one node that computes a fact and one router that branches on it, so every
decision is a named, testable function, and `path` in the final state shows the branch taken.
Every leaf ends in `notify`.
"""

import operator
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel

from statemachine import END, START, StateGraph

MIN_SCORE = 580
MAX_DTI = 0.45
AUTO_LIMIT = 50_000
PREMIUM_SCORE = 740


class Application(BaseModel):
    applicant: str
    credit_score: int
    monthly_income: float
    monthly_debt: float
    amount: float


class State(BaseModel):
    application: Application
    credit_band: str = ""
    dti: float | None = None
    decision: Literal["approved", "declined", "review"] | None = None
    reason: str = ""
    message: str = ""
    path: Annotated[list[str], operator.add] = []


# -- level 1: credit ------------------------------------------------------------------------

def intake(state: State) -> dict:
    score = state.application.credit_score
    band = "poor" if score < MIN_SCORE else "good" if score < PREMIUM_SCORE else "excellent"
    return {"credit_band": band, "path": ["intake"]}


def route_credit(state: State) -> str:
    return "reject" if state.credit_band == "poor" else "continue"


# -- level 2: affordability ---------------------------------------------------------------

def income_check(state: State) -> dict:
    application = state.application
    dti = application.monthly_debt / application.monthly_income
    return {"dti": round(dti, 3), "path": ["income_check"]}


def route_income(state: State) -> str:
    return "reject" if state.dti > MAX_DTI else "continue"


# -- level 3: amount ------------------------------------------------------------------------

def amount_check(state: State) -> dict:
    return {"path": ["amount_check"]}


def route_amount(state: State) -> str:
    if state.application.amount <= AUTO_LIMIT:
        return "small"
    return "large_prime" if state.credit_band == "excellent" else "large"


# -- leaves -----------------------------------------------------------------------------------

def decline(state: State) -> dict:
    if state.credit_band == "poor":
        reason = f"credit score {state.application.credit_score} is below {MIN_SCORE}"
    else:
        reason = f"debt-to-income {state.dti:.0%} is above {MAX_DTI:.0%}"
    return {"decision": "declined", "reason": reason, "path": ["decline"]}


def auto_approve(state: State) -> dict:
    return {"decision": "approved", "reason": f"amount within the {AUTO_LIMIT:,} auto limit",
            "path": ["auto_approve"]}


def premium_approve(state: State) -> dict:
    return {"decision": "approved", "reason": "large amount, excellent credit",
            "path": ["premium_approve"]}


def manual_review(state: State) -> dict:
    return {"decision": "review", "reason": "large amount needs an underwriter",
            "path": ["manual_review"]}


def notify(state: State) -> dict:
    name = state.application.applicant
    return {"message": f"Dear {name}, decision: {state.decision} ({state.reason}).",
            "path": ["notify"]}


graph = StateGraph(State)
for node in (intake, income_check, amount_check, decline, auto_approve, premium_approve,
             manual_review, notify):
    graph.add_node(node)
graph.add_edge(START, "intake")
graph.add_conditional_edges("intake", route_credit,
                            {"reject": "decline", "continue": "income_check"})
graph.add_conditional_edges("income_check", route_income,
                            {"reject": "decline", "continue": "amount_check"})
graph.add_conditional_edges("amount_check", route_amount,
                            {"small": "auto_approve", "large_prime": "premium_approve",
                             "large": "manual_review"})
for leaf in ("decline", "auto_approve", "premium_approve", "manual_review"):
    graph.add_edge(leaf, "notify")
graph.add_edge("notify", END)
app = graph.compile()

DEMO_APPLICATIONS = (
    Application(applicant="Ann", credit_score=550, monthly_income=5000, monthly_debt=500,
                amount=10_000),
    Application(applicant="Bob", credit_score=690, monthly_income=4000, monthly_debt=2400,
                amount=20_000),
    Application(applicant="Cat", credit_score=700, monthly_income=6000, monthly_debt=1200,
                amount=25_000),
    Application(applicant="Dan", credit_score=780, monthly_income=9000, monthly_debt=1500,
                amount=120_000),
    Application(applicant="Eve", credit_score=660, monthly_income=9000, monthly_debt=1500,
                amount=120_000),
)


def main(applications: Sequence[Application] = DEMO_APPLICATIONS) -> list[State]:
    """Triage each application; returns the final state of each."""
    finals = []
    for application in applications:
        final = app.invoke({"application": application})
        print(f"{application.applicant:<4} {final.decision:<9} {' -> '.join(final.path)}")
        print(f"     {final.message}")
        finals.append(final)
    return finals


if __name__ == "__main__":
    main()
