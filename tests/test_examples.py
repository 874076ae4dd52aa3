"""The examples run, print what they claim, and end in the state they claim.

Each example is loaded from its file and its `main()` called in-process; every example is also
run as a script, the way a user would first meet it.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from checkpoints import SQLiteCheckpointer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    """Import examples/<name>.py as a fresh module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"examples/{name}.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# -- quickstart ---------------------------------------------------------------------------------

def test_quickstart_loops_until_the_router_says_done(capsys):
    final = load("quickstart").main()
    assert final.count == 3
    assert final.log == ["step 0", "step 1", "step 2"]  # appended by the reducer
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 0", "step 1", "step 2", "final"]
    assert lines[0] == "step 0: ran work -> {'work': {'count': 1, 'log': ['step 0']}}"
    assert lines[-1] == "final: State(count=3, log=['step 0', 'step 1', 'step 2'])"


def test_quickstart_runs_as_a_script():
    result = run_script("quickstart")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[2] == "step 2: ran work -> {'work': {'count': 3, 'log': ['step 2']}}"
    assert lines[-1] == "final: State(count=3, log=['step 0', 'step 1', 'step 2'])"


SCRIPT_OUTPUT = {
    "routing_workflow": "  path:  analyzer -> specialist -> formatter\n",
    "pipeline": "report: 5 sales, total 9440.50; large deals: Hooli, Stark Industries\n",
    "decision_tree": "Eve  review    intake -> income_check -> amount_check -> manual_review",
    "parallel_analysis": "verdict: hold: risks need review\n",
    "resume_after_crash": "nodes that ran: charge, ship\n",  # imports checkpoints first
}
"""A line each example prints only if it did its job."""


@pytest.mark.parametrize("name", list(SCRIPT_OUTPUT))
def test_example_runs_as_a_script(name, tmp_path):
    args = [str(tmp_path / "runs.db")] if name == "resume_after_crash" else []
    result = run_script(name, *args)
    assert result.returncode == 0, result.stderr
    assert SCRIPT_OUTPUT[name] in result.stdout


# -- routing_workflow ---------------------------------------------------------------------------

SIMPLE = "How do I reset my password?"
COMPLEX = "Please integrate our SSO with the legal hold system"


def test_routing_sends_a_simple_request_to_the_general_node(capsys):
    (final,) = load("routing_workflow").main([SIMPLE])
    assert final.category == "simple"
    assert final.trail == ["analyzer", "general", "formatter"]
    assert final.final == "[SIMPLE] Answered directly: How do I reset my password."
    out = capsys.readouterr().out
    assert "  step 1: general\n" in out
    assert "specialist" not in out


def test_routing_sends_a_complex_request_to_the_specialist(capsys):
    (final,) = load("routing_workflow").main([COMPLEX])
    assert final.category == "complex"
    assert final.signals == ["integrate", "legal"]
    assert final.trail == ["analyzer", "specialist", "formatter"]
    assert final.final.startswith("[COMPLEX] Escalated to a specialist (topics: integrate, legal)")
    out = capsys.readouterr().out
    assert "  step 1: specialist\n" in out
    assert "general" not in out


def test_routing_treats_a_long_request_without_signal_words_as_complex():
    long_request = " ".join(["word"] * 26)
    (final,) = load("routing_workflow").main([long_request])
    assert final.signals == []
    assert final.trail == ["analyzer", "specialist", "formatter"]


def test_routing_demo_takes_both_paths(capsys):
    module = load("routing_workflow")
    finals = module.main()
    assert [f.request for f in finals] == list(module.DEMO_REQUESTS)
    assert [f.trail[1] for f in finals] == ["general", "specialist"]
    out = capsys.readouterr().out
    assert "  path:  analyzer -> general -> formatter\n" in out
    assert "  path:  analyzer -> specialist -> formatter\n" in out


# -- pipeline -------------------------------------------------------------------------------------

def test_pipeline_runs_its_stages_in_order_one_per_step(capsys):
    final = load("pipeline").main()
    assert final.stages == ["load", "clean", "enrich", "summarize"]
    steps = re.findall(r"^step (\d): (\w+)", capsys.readouterr().out, re.MULTILINE)
    assert steps == [("0", "load"), ("1", "clean"), ("2", "enrich"), ("3", "summarize")]


def test_pipeline_cleans_enriches_and_summarizes_the_dataset(capsys):
    final = load("pipeline").main()
    assert len(final.raw_rows) == 8
    assert final.dropped == ["Acme Corp: duplicate row", "Initech: missing amount",
                             "Umbrella: non-positive amount -40"]
    assert [s.customer for s in final.sales] == ["Acme Corp", "Globex", "Hooli",
                                                 "Stark Industries", "Wayne Enterprises"]
    assert [s.region for s in final.sales] == ["North", "South", "South", "East", "Unknown"]
    assert [s.customer for s in final.sales if s.large] == ["Hooli", "Stark Industries"]
    assert final.summary == {"East": 4100.0, "North": 1200.0, "South": 3150.5, "Unknown": 990.0}
    assert final.report == "5 sales, total 9440.50; large deals: Hooli, Stark Industries"
    out = capsys.readouterr().out
    assert "step 1: clean     raw=8 sales=5 dropped=3" in out
    assert "  South      3150.50" in out


def test_pipeline_keeps_every_row_of_a_clean_dataset():
    source = "region_code,customer,amount\nN,Acme,10\nS,Globex,2000\n"
    final = load("pipeline").main(source)
    assert final.dropped == []
    assert final.summary == {"North": 10.0, "South": 2000.0}
    assert final.report == "2 sales, total 2010.00; large deals: Globex"


# -- decision_tree --------------------------------------------------------------------------------

@pytest.mark.parametrize(("applicant", "decision", "path"), [
    ("Ann", "declined", ["intake", "decline", "notify"]),
    ("Bob", "declined", ["intake", "income_check", "decline", "notify"]),
    ("Cat", "approved", ["intake", "income_check", "amount_check", "auto_approve", "notify"]),
    ("Dan", "approved", ["intake", "income_check", "amount_check", "premium_approve", "notify"]),
    ("Eve", "review", ["intake", "income_check", "amount_check", "manual_review", "notify"]),
])
def test_decision_tree_takes_one_branch_per_level(applicant, decision, path, capsys):
    module = load("decision_tree")
    (application,) = [a for a in module.DEMO_APPLICATIONS if a.applicant == applicant]
    (final,) = module.main([application])
    assert final.decision == decision
    assert final.path == path
    assert final.message.startswith(f"Dear {applicant}, decision: {decision} (")
    assert capsys.readouterr().out.startswith(f"{applicant:<4} {decision:<9} {' -> '.join(path)}")


def test_decision_tree_explains_each_decline():
    module = load("decision_tree")
    ann, bob = module.main(module.DEMO_APPLICATIONS[:2])
    assert ann.reason == "credit score 550 is below 580"
    assert bob.dti == 0.6
    assert bob.reason == "debt-to-income 60% is above 45%"


def test_decision_tree_thresholds_are_inclusive_for_the_applicant():
    module = load("decision_tree")
    edge = module.Application(applicant="Flo", credit_score=580, monthly_income=1000,
                              monthly_debt=450, amount=50_000)
    (final,) = module.main([edge])
    assert final.credit_band == "good"
    assert final.path == ["intake", "income_check", "amount_check", "auto_approve", "notify"]


def test_decision_tree_demo_prints_every_applicant(capsys):
    module = load("decision_tree")
    finals = module.main()
    assert [f.decision for f in finals] == ["declined", "declined", "approved", "approved",
                                            "review"]
    out = capsys.readouterr().out
    assert out.count("Dear ") == len(module.DEMO_APPLICATIONS)


# -- parallel_analysis ----------------------------------------------------------------------------

def test_parallel_analysts_run_in_one_step_and_the_join_runs_once(capsys):
    module = load("parallel_analysis")
    events = list(module.app.stream({"document": module.DOCUMENT}))
    assert [e.nodes for e in events] == [("sentiment", "keywords", "risk"), ("aggregate",)]
    final = module.main()
    assert capsys.readouterr().out.startswith(
        "step 0: sentiment, keywords, risk\nstep 1: aggregate\n")
    assert final == events[-1].state


def test_parallel_findings_merge_through_the_reducer_in_declaration_order():
    final = load("parallel_analysis").main()
    assert list(final.findings) == ["sentiment", "keywords", "risk"]
    # risk finishes first and sentiment last, yet updates apply in declaration order
    assert final.finished == ["sentiment", "keywords", "risk"]
    assert final.findings["sentiment"].summary == "+4 / -2 words"
    assert final.findings["risk"].summary == "legal, retention, refund"
    assert final.findings["keywords"].summary == "launch, checkout, clean"
    assert final.verdict == "hold: risks need review"


@pytest.mark.parametrize(("document", "verdict"), [
    ("A fast and clean release, customers loved it.", "ship"),
    ("The slow and broken build looks bad.", "rework"),
])
def test_parallel_verdict_combines_the_analysts(document, verdict, capsys):
    final = load("parallel_analysis").main(document)
    assert final.findings["risk"].summary == "none"
    assert final.verdict == verdict
    assert capsys.readouterr().out.endswith(f"verdict: {verdict}\n")


# -- resume_after_crash ---------------------------------------------------------------------------

def test_resume_shows_the_failed_snapshot_then_reruns_only_unfinished_nodes(tmp_path, capsys):
    module = load("resume_after_crash")
    final = module.main(tmp_path / "runs.db")
    out = capsys.readouterr().out
    run1, run2 = out.split("== run 2")
    assert "invoke raised ConnectionError: payment gateway unreachable" in run1
    assert "nodes that ran: validate, reserve_stock, charge\n" in run1
    assert "snapshot: status=failed step=1 next=['charge']\n" in run1
    assert "error='ConnectionError: payment gateway unreachable'" in run1
    assert "pending writes from: ['reserve_stock']" in run1
    # validate and reserve_stock finished in run 1: only charge and what follows run again
    assert "nodes that ran: charge, ship\n" in run2
    assert module.calls == ["charge", "ship"]
    assert "snapshot: status=done step=3 next=[]" in run2
    assert final.reservation == "res-1001"
    assert final.tracking == "trk-1001"
    assert final.log == ["validated order 1001", "reserved keyboard, mouse", "charged 129.90",
                         f"shipped with res-1001 / {final.receipt}"]


def test_resume_charges_once_with_the_same_idempotency_key(tmp_path, capsys):
    module = load("resume_after_crash")
    final = module.main(tmp_path / "runs.db")
    assert len(module.charge_keys) == 2
    assert module.charge_keys[0] == module.charge_keys[1]
    assert module.gateway.charges == {module.charge_keys[0]: 129.90}
    assert final.receipt == f"rcpt-{module.charge_keys[0][:8]}"
    assert "same idempotency key on both charge attempts: True" in capsys.readouterr().out


def test_resume_history_records_the_failure_and_the_recovery(tmp_path, capsys):
    load("resume_after_crash").main(tmp_path / "runs.db")
    history = capsys.readouterr().out.split("history (oldest first):\n")[1]
    assert history.splitlines()[:4] == [
        "  step 0 input running next=['validate']",
        "  step 1 step  failed  next=['charge']",
        "  step 2 step  running next=['ship']",
        "  step 3 step  done    next=[]",
    ]


def test_resume_leaves_the_finished_thread_in_the_given_file(tmp_path):
    module = load("resume_after_crash")
    path = tmp_path / "runs.db"
    final = module.main(path)
    with SQLiteCheckpointer(path) as saver:
        snapshot = module.graph.compile(checkpointer=saver).get_state(module.THREAD)
    assert snapshot.status == "done"
    assert snapshot.state == final


def test_resume_without_a_path_uses_a_temporary_file_and_removes_it(capsys):
    final = load("resume_after_crash").main()
    assert final.tracking == "trk-1001"
    first_line = capsys.readouterr().out.splitlines()[0]
    path = Path(first_line.removeprefix("checkpoints: "))
    assert path.name == "runs.db"
    assert not path.exists()
    assert not path.parent.exists()
