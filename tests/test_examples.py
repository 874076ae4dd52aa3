"""The examples run, print what they claim, and end in the state they claim.

Each example is loaded from its file and its `main()` called in-process; every example is also
run as a script, the way a user would first meet it.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from xml.etree import ElementTree

import pytest

from checkpoints import SQLiteCheckpointer
from statemachine import END, START, CachePolicy, StateGraph, ThreadStateError
from statemachine._sync import run_sync

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

def test_quickstart_loops_until_the_router_says_done(capsys, tmp_path):
    final = load("quickstart").main(tmp_path / "quickstart.svg")
    assert final.count == 3
    assert final.log == ["step 0", "step 1", "step 2"]  # appended by the reducer
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 0", "step 1", "step 2", "final",
                                                      "diagram"]
    assert lines[0] == "step 0: ran work -> {'work': {'count': 1, 'log': ['step 0']}}"
    assert lines[-2] == "final: State(count=3, log=['step 0', 'step 1', 'step 2'])"
    svg = ElementTree.parse(tmp_path / "quickstart.svg").getroot()
    ids = {g.get("id") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert {"__start__", "work", "__end__"} <= ids


def test_quickstart_runs_as_a_script():
    result = run_script("quickstart")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[2] == "step 2: ran work -> {'work': {'count': 3, 'log': ['step 2']}}"
    assert lines[-2] == "final: State(count=3, log=['step 0', 'step 1', 'step 2'])"
    assert lines[-1].startswith("diagram: ") and lines[-1].endswith("quickstart.svg")


SCRIPT_OUTPUT = {
    "routing_workflow": "  path:  analyzer -> specialist -> formatter\n",
    "pipeline": "report: 5 sales, total 9440.50; large deals: Hooli, Stark Industries\n",
    "decision_tree": "Eve  review    intake -> income_check -> amount_check -> manual_review",
    "parallel_analysis": "verdict: hold: risks need review\n",
    "resume_after_crash": "nodes that ran: charge, ship\n",  # imports checkpoints first
    "agent_coordination": "translator: FAILED (ConnectionError: translator unavailable (call 2))",
    "order_saga": "ran: refund, release\nstatus: compensated\n",
    "map_reduce": "merge order: ['q1', 'incident', 'roadmap', 'survey']\n",
    "approval": "decided by another process: True\n",
}
"""A line each example prints only if it did its job."""
TAKES_A_PATH = {"resume_after_crash", "order_saga", "approval"}
"""Examples that keep their SQLite file at the path given as their argument."""


@pytest.mark.parametrize("name", list(SCRIPT_OUTPUT))
def test_example_runs_as_a_script(name, tmp_path):
    args = [str(tmp_path / "runs.db")] if name in TAKES_A_PATH else []
    result = run_script(name, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
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
    assert history.splitlines()[:5] == [
        "  step 0 input  running next=['validate']",
        "  step 1 step   failed  next=['charge']",
        "  step 1 resume running next=['charge']",  # the failed checkpoint stays as it was
        "  step 2 step   running next=['ship']",
        "  step 3 step   done    next=[]",
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


# -- agent_coordination -------------------------------------------------------------------------

def test_agents_are_routed_on_the_analyzers_classification(capsys):
    module = load("agent_coordination")
    simple, complex_ = module.main().routed
    assert simple.category == "simple"
    assert simple.trail == ["analyzer", "general", "formatter"]
    assert simple.final == "[SIMPLE] Quick answer: How do I change my invoice address?"
    assert complex_.category == "complex"
    assert complex_.topics == ["integrate", "legal"]
    assert complex_.trail == ["analyzer", "specialist", "formatter"]
    assert complex_.final.startswith("[COMPLEX] Specialist plan for 12-word request")
    # each request reached exactly one of the two agents
    assert (module.general_agent.calls, module.specialist_agent.calls) == (1, 1)
    out = capsys.readouterr().out
    assert "  path:  analyzer -> general -> formatter\n" in out
    assert "  path:  analyzer -> specialist -> formatter\n" in out


def test_agent_panel_runs_in_one_step_retries_the_flaky_agent_and_captures_the_failure(capsys):
    module = load("agent_coordination")
    panel = module.main().panel
    out = capsys.readouterr().out
    assert ("step 0: summarizer, sentiment, fact_checker, translator  "
            "attempts={'fact_checker': 3, 'translator': 2}\nstep 1: aggregator\n") in out
    assert {name: agent.calls for name, agent in module.PANEL.items()} == {
        "summarizer": 1, "sentiment": 1, "fact_checker": 3, "translator": 2}
    assert "  retried fact_checker after attempt 2: TimeoutError: fact_checker unavailable " \
           "(call 2)\n" in out
    # the flaky agent's third attempt succeeded; the translator's failure became a record
    assert list(panel.results) == ["summarizer", "sentiment", "fact_checker"]
    assert panel.results["fact_checker"] == "claims consistent with the account"
    (failure,) = panel.errors
    assert isinstance(failure, module.NodeFailure)
    assert (failure.node, failure.error_type, failure.step) == ("translator", "ConnectionError", 0)
    assert failure.message == "translator unavailable (call 2)"
    assert panel.report.splitlines() == [
        "3 of 4 agents answered",
        "summarizer: 12 words about a customer request",
        "sentiment: tone: urgent",
        "fact_checker: claims consistent with the account",
        "translator: FAILED (ConnectionError: translator unavailable (call 2))",
    ]


def test_agent_panel_reports_no_error_when_every_agent_answers():
    module = load("agent_coordination")
    module.PANEL["translator"].failures = 0
    panel = module.main().panel
    assert panel.errors == []
    assert panel.results["translator"] == "translated"
    assert panel.report.startswith("4 of 4 agents answered\n")


def test_agent_panel_fails_when_an_uncaptured_agent_exhausts_its_retries():
    module = load("agent_coordination")
    module.PANEL["fact_checker"].failures = 5  # more than its 3 attempts; it captures nothing
    with pytest.raises(TimeoutError, match="fact_checker unavailable"):
        module.main()
    assert module.PANEL["fact_checker"].calls == 3


# -- order_saga -----------------------------------------------------------------------------------

def test_saga_rollback_runs_the_compensations_in_reverse_order(tmp_path, capsys):
    module = load("order_saga")
    final = module.main(tmp_path / "orders.db")
    out = capsys.readouterr().out
    run, rollback, _again = out.split("== rollback")
    assert "ran: reserve, charge, ship\n" in run
    assert "snapshot: status=failed step=2 next=['ship']\n" in run
    assert "error=\"CarrierError: carrier does not deliver to '1 Nowhere Lane, Atlantis'\"" in run
    assert "side effects: stock={'desk-lamp': 3} charges=[59.8]\n" in run
    # newest first: the charge is refunded before the reservation is released
    assert "ran: refund, release\nstatus: compensated\n" in rollback
    assert "side effects: stock={'desk-lamp': 5} refunds=[59.8]\n" in rollback
    assert rollback.split("history (oldest first):\n")[1].splitlines() == [
        "  step 0 input        running",
        "  step 1 step         running",
        "  step 2 step         failed",
        "  step 2 compensation failed       undid charge (step 1)",
        "  step 2 compensation compensated  undid reserve (step 0)",
    ]
    assert final.log[2:] == [f"refunded 59.80 of {final.payment}", "released res-7"]
    assert final.reservation is None
    assert module.warehouse.reservations == {}
    assert module.gateway.refunds == {final.payment: 59.80}


def test_saga_rollback_again_does_nothing(tmp_path, capsys):
    module = load("order_saga")
    path = tmp_path / "orders.db"
    final = module.main(path)
    assert "== rollback again\nran: nothing; status: compensated; checkpoints: 5 -> 5; " \
           "state unchanged: True\n" in capsys.readouterr().out
    with SQLiteCheckpointer(path) as saver:  # and once more, from another opening of the file
        app = module.graph.compile(checkpointer=saver)
        assert app.rollback(module.THREAD) == final
        assert module.calls == []
        assert len(app.history(module.THREAD)) == 5
        assert app.get_state(module.THREAD).status == "compensated"
    assert module.warehouse.stock == {"desk-lamp": 5}
    assert list(module.gateway.refunds.values()) == [59.80]  # refunded once


def test_saga_rollback_interrupted_by_a_crash_resumes_without_refunding_twice(tmp_path):
    module = load("order_saga")
    module.calls.clear()
    with SQLiteCheckpointer(tmp_path / "orders.db") as saver:
        app = module.graph.compile(checkpointer=saver)
        with pytest.raises(module.CarrierError):
            app.invoke(module.ORDER, thread_id=module.THREAD)
        release = module.warehouse.release
        module.warehouse.release = lambda reservation: (_ for _ in ()).throw(
            OSError("warehouse API down"))
        with pytest.raises(OSError, match="warehouse API down"):
            app.rollback(module.THREAD)
        assert module.calls == ["reserve", "charge", "ship", "refund", "release"]
        stopped = app.get_state(module.THREAD)
        assert stopped.status == "rollback_failed"
        assert stopped.error == "OSError: warehouse API down"
        module.warehouse.release = release
        final = app.rollback(module.THREAD)
    assert module.calls[5:] == ["release"]  # the committed refund does not run again
    assert final.log[2:] == [f"refunded 59.80 of {final.payment}", "released res-7"]
    assert module.warehouse.stock == {"desk-lamp": 5}


def test_saga_without_a_path_uses_a_temporary_file_and_removes_it(capsys):
    final = load("order_saga").main()
    assert final.reservation is None
    path = Path(capsys.readouterr().out.splitlines()[0].removeprefix("checkpoints: "))
    assert path.name == "orders.db"
    assert not path.parent.exists()


# -- map_reduce -----------------------------------------------------------------------------------

def test_map_reduce_merges_summaries_in_document_order(capsys):
    module = load("map_reduce")
    final = module.main()
    assert [s.id for s in final.summaries] == [d.id for d in module.DOCUMENTS]
    assert final.summaries[1].text == "Incident review: The checkout was down for 40 minutes."
    assert final.digest.splitlines()[:2] == ["4 documents, 49 words",  # 46 + 3 edited in
                                             "- Q1 report: Revenue grew 12 percent."]
    out = capsys.readouterr().out
    assert out.startswith("== first run\nstep 0: summarize x4\nstep 1: reduce x1\n")
    assert "merge order: ['q1', 'incident', 'roadmap', 'survey']\n" in out


def test_map_reduce_order_is_the_send_order_not_the_finishing_order():
    module = load("map_reduce")
    docs = [module.Document(id="long", title="Long", text=" ".join(["word"] * 60) + "."),
            *(module.Document(id=f"short{i}", title="Short", text="A few words.")
              for i in range(3))]
    module.tracker = module.Tracker()
    final = module.graph.compile(max_concurrency=2).invoke({"documents": docs})
    assert module.tracker.summarized[-1] == "long"  # it finished last...
    assert [s.id for s in final.summaries] == ["long", "short0", "short1", "short2"]  # ...first
    assert final.digest.startswith("4 documents, 69 words\n- Long: word")


def test_map_reduce_second_run_comes_from_the_cache(capsys):
    module = load("map_reduce")
    module.main()
    runs = capsys.readouterr().out.split("== ")[1:]
    first, same, edited = runs
    assert "cache_hits" not in first
    assert "summarized: q1, incident, roadmap, survey;" in first
    assert same.splitlines()[1:] == ["step 0: summarize x4  cache_hits=['summarize']",
                                     "step 1: reduce x1",
                                     "summarized: nothing, every summary came from the cache"]
    # the cache key is the document: only the edited one is summarized again
    assert "summarized: survey; at most 1 at once (limit 2)" in edited
    assert module.tracker.summarized == ["survey"]


def test_map_reduce_cache_hits_show_in_the_step_event():
    module = load("map_reduce")
    app = module.graph.compile()
    input = {"documents": list(module.DOCUMENTS)}
    cold = list(app.stream(input))
    module.tracker = module.Tracker()
    warm = list(app.stream(input))
    assert (cold[0].cache_hits, warm[0].cache_hits) == ((), ("summarize",))
    assert warm[0].timings["summarize"] == 0.0
    assert module.tracker.summarized == []
    assert warm[-1].state == cold[-1].state


def test_map_reduce_never_runs_more_summaries_at_once_than_allowed(capsys):
    module = load("map_reduce")
    module.main()
    peaks = re.findall(r"at most (\d) at once \(limit 2\)", capsys.readouterr().out)
    assert peaks and all(1 <= int(p) <= 2 for p in peaks)
    module.tracker = module.Tracker()
    module.graph.compile(max_concurrency=2).invoke(
        {"documents": list(module.DOCUMENTS)}, max_concurrency=1)  # the per-call override
    assert module.tracker.peak == 1
    assert len(module.tracker.summarized) == 4


def test_map_reduce_send_payload_keeps_its_type_with_a_checkpointer(tmp_path):
    # a node declaring its payload type gets that type, with or without a checkpointer
    module = load("map_reduce")
    received = []

    def summarize(doc: module.Document) -> None:
        received.append(type(doc).__name__)

    graph = StateGraph(module.State)
    graph.add_node("summarize", summarize)
    graph.add_conditional_edges(START, module.fan_out, ["summarize"])
    graph.add_edge("summarize", END)
    graph.compile().invoke({"documents": list(module.DOCUMENTS[:1])})
    with SQLiteCheckpointer(tmp_path / "docs.db") as saver:
        graph.compile(checkpointer=saver).invoke({"documents": list(module.DOCUMENTS[:1])},
                                                 thread_id="t")
    assert received == ["Document", "Document"]


def test_map_reduce_untyped_send_payload_is_the_same_with_and_without_a_checkpointer(tmp_path):
    module = load("map_reduce")
    received = []
    graph = StateGraph(module.State)
    graph.add_node("summarize", lambda doc: received.append(doc))
    graph.add_conditional_edges(START, module.fan_out, ["summarize"])
    graph.add_edge("summarize", END)
    graph.compile().invoke({"documents": list(module.DOCUMENTS[:1])})
    with SQLiteCheckpointer(tmp_path / "docs.db") as saver:
        graph.compile(checkpointer=saver).invoke({"documents": list(module.DOCUMENTS[:1])},
                                                 thread_id="t")
    assert received[0] == received[1]
    assert received[0] == module.DOCUMENTS[0].model_dump()


def test_map_reduce_cache_is_not_shared_with_another_graph_in_the_same_store(tmp_path):
    module = load("map_reduce")
    other = StateGraph(module.State)  # same state class and node name, another summarizer
    other.add_node("summarize", lambda doc: {"summaries": [module.Summary(
        id="other", text="another summarizer", words=0)]}, cache=CachePolicy())
    other.add_node("reduce", module.reduce)
    other.add_conditional_edges(START, module.fan_out, ["summarize"])
    other.add_edge("summarize", "reduce")
    other.add_edge("reduce", END)
    input = {"documents": list(module.DOCUMENTS[:1])}
    with SQLiteCheckpointer(tmp_path / "docs.db") as saver:
        module.graph.compile(checkpointer=saver).invoke(input, thread_id="a")
        final = other.compile(checkpointer=saver).invoke(input, thread_id="b")
    assert [s.id for s in final.summaries] == ["other"]


# -- approval -------------------------------------------------------------------------------------

def test_approval_pauses_and_a_second_process_approves(tmp_path, capsys):
    module = load("approval")
    path = tmp_path / "approvals.db"
    final = module.main(path)
    out = capsys.readouterr().out
    assert "snapshot: status=interrupted next=['approval'] waits_for=['approval']\n" in out
    assert "waits for ['approval']\n" in out  # what the approver saw
    assert "decided by another process: True\n" in out
    # the decision came from the approver's process, which also ran the rest of the run
    approver = final.decision.pid
    assert approver != os.getpid()
    assert final.decision.approved and final.decision.by == "manager Grace"
    assert final.outcome == "paid 1250.00 to Ada"
    assert final.log == [f"submitted in pid {os.getpid()}",
                         f"approved by manager Grace (pid {approver})",
                         f"paid in pid {approver}"]
    with SQLiteCheckpointer(path) as saver:
        snapshot = module.graph.compile(checkpointer=saver).get_state(module.THREAD)
    assert (snapshot.status, snapshot.next, snapshot.state) == ("done", (), final)


def test_approval_rejected_by_the_second_process_takes_the_other_branch(tmp_path):
    final = load("approval").main(tmp_path / "approvals.db", approve=False)
    assert final.decision.approved is False
    assert final.decision.pid != os.getpid()
    assert final.outcome == "told Ada: rejected (over the travel budget)"
    assert final.log[-1] == f"notified in pid {final.decision.pid}"


def test_approval_waits_until_the_event_is_delivered(tmp_path):
    module = load("approval")
    with SQLiteCheckpointer(tmp_path / "approvals.db") as saver:
        app = module.graph.compile(checkpointer=saver)
        paused = app.invoke(module.EXPENSE, thread_id="e")
        assert paused.decision is None and paused.outcome == ""
        with pytest.raises(ThreadStateError, match="waiting for event 'approval'"):
            app.resume("e")  # no event: still waiting
        snapshot = app.get_state("e")
        assert (snapshot.status, snapshot.metadata["waits_for"]) == ("interrupted", ["approval"])
        final = app.resume("e", event={"approval": {"approved": True, "by": "me", "pid": 1}})
    assert final.outcome == "paid 1250.00 to Ada"
    assert final.log[0].startswith("submitted")  # submit ran once, before the pause
    assert len(final.log) == 3


def test_approval_a_late_second_decision_is_refused(tmp_path):
    module = load("approval")
    path = tmp_path / "approvals.db"
    final = module.main(path)
    result = run_script("approval", "--reject", str(path), module.THREAD)
    assert result.returncode != 0
    assert "is not waiting for an event" in result.stderr
    with SQLiteCheckpointer(path) as saver:
        snapshot = module.graph.compile(checkpointer=saver).get_state(module.THREAD)
    assert snapshot.state == final  # still approved and paid


def test_approval_without_a_path_uses_a_temporary_file_and_removes_it(capsys):
    final = load("approval").main()
    assert final.outcome == "paid 1250.00 to Ada"
    path = Path(capsys.readouterr().out.splitlines()[0].removeprefix("checkpoints: "))
    assert path.name == "approvals.db"
    assert not path.parent.exists()


def test_approval_script_refuses_unknown_arguments():
    result = run_script("approval", "--approve", "only-a-path")
    assert result.returncode == 1
    assert "--approve DB THREAD" in result.stderr


# -- committed diagrams ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "examples").glob("*.py")
                                        if not p.stem.startswith("test_")))
def test_every_example_has_its_diagram_committed_beside_it(name):
    svg = ROOT / "examples" / f"{name}.svg"
    assert svg.exists(), f"render it: statemachine draw examples.{name}:graph -o {svg}"
    ids = {g.get("id") for g in ElementTree.parse(svg).getroot().iter(
        "{http://www.w3.org/2000/svg}g")}
    assert set(load(name).graph.compile().nodes) <= ids  # drawn from the current graph


# -- scale_out ------------------------------------------------------------------------------------

def test_scale_out_runs_every_document_once_across_two_worker_processes(postgres_dsn):
    result = run_script("scale_out", postgres_dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "submitted 12 documents"
    summaries = [line for line in lines if line.startswith("worker done: ")]
    assert len(summaries) == 2
    claimed = [int(line.split()[2]) for line in summaries]
    retried = [int(line.split(", ")[3].split()[0]) for line in summaries]
    assert sum(claimed) == 12 + 4 and sum(retried) == 4  # documents 3, 6, 9, 12 fail once
    assert "done: 12 of 12; retried after a failure: 4" in lines
    # each node's committed run happened once per document, whichever worker ran it
    assert ("committed node runs: {'fetch': 12, 'extract': 12, 'classify': 12, 'store': 12}"
            in lines)


def test_scale_out_failure_is_retried_from_the_failed_node_not_from_scratch(postgres_dsn,
                                                                            tmp_path,
                                                                            monkeypatch):
    from conftest import postgres_schema

    from checkpoints import PostgresCheckpointer
    from statemachine.worker import Worker

    example = load("scale_out")
    monkeypatch.setenv("SCALE_OUT_FLAKY_DIR", str(tmp_path))
    with PostgresCheckpointer(postgres_dsn, schema=postgres_schema()) as saver:
        app = example.graph.compile(checkpointer=saver)
        app.submit({"doc_id": 3}, thread_id="doc-3")
        stats = run_sync(lambda: Worker(app, retry_delay=0).run(drain=True))
        assert (stats.claimed, stats.retried, stats.done) == (2, 1, 1)
        trail = [step.split("@")[0] for step in app.get_state("doc-3").state.trail]
        assert trail == ["fetch", "extract", "classify", "store"]
        # the failed attempt is in the history: fetch committed once, before the failure
        assert [s.status for s in app.history("doc-3")].count("failed") == 1


# -- chat_agent -----------------------------------------------------------------------------------

def test_chat_agent_streams_uses_tools_asks_for_approval_and_remembers(tmp_path, capsys):
    db = tmp_path / "chat.db"
    final = load("chat_agent").main(db)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "user: hi",
        "assistant: Hello Ada! That is message 1 you sent me.",
        "user: what is the weather in Paris?",
        "assistant: Let me check.",
        "assistant: Done: the weather in Paris is 18°C and sunny.",
    ]
    assert lines[5:10] == ["user: please refund order 7", "assistant: I'll ask for a refund.",
                           "(paused: refund order 7?)", "approver: yes",
                           "assistant: Done: order 7 was refunded."]
    assert final.refunded == ["7"]
    roles = [m.role for m in final.messages]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user",
                     "assistant", "tool", "assistant"]
    assert len({m.id for m in final.messages}) == 10
    assert b"u-17" not in b"".join(p.read_bytes() for p in tmp_path.iterdir()
                                   if p.name.startswith("chat.db"))  # context is not stored


# -- memory_assistant ------------------------------------------------------------------------------

def test_memory_assistant_remembers_a_user_across_threads(tmp_path, capsys):
    db = tmp_path / "memory.db"
    out = load("memory_assistant").main(db)
    assert "[friday] assistant: How about a vegetarian curry?" in out
    assert "[friday] assistant: I'll check the weather in oslo." in out
    assert out[-1] == "memories: diet=eats vegetarian food; city=lives in oslo"
    from checkpoints import SQLiteStore

    with SQLiteStore(db, read_only=True) as store:  # written once each, with their step
        assert [i.key for i in store.search(("users", "ada"))] == ["city", "diet"]
        assert store.get(("users", "ada", "memories"), "diet").value["from_thread"] == "monday"


# -- a step on a cluster ----------------------------------------------------------------------

def test_cluster_map_scores_every_document_in_the_clusters_worker_processes():
    pytest.importorskip("distributed")
    result = run_script("cluster_map")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["scored 4 documents in 2 worker processes",
                     "doc 3: +3, doc 0: +2, doc 1: -1, doc 2: -1"]


# -- human approval ---------------------------------------------------------------------------

def test_human_approval_pauses_at_the_question_and_the_answer_decides(tmp_path, capsys):
    module = load("human_approval")
    final = module.main(tmp_path / "approvals.db")
    assert (final.approved, final.sent) == (True, True)
    assert capsys.readouterr().out.splitlines() == [
        "paused at 'review', asking: send this reply?",
        "invoke returned the state as of the pause: approved=None",
        "answered 'yes': approved=True, sent=True"]
    rejected = module.main(tmp_path / "rejected.db", answer="no")
    assert (rejected.approved, rejected.sent) == (False, False)


def test_human_approval_runs_as_a_script():
    result = run_script("human_approval")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "answered 'yes': approved=True, sent=True"


# -- the get-started pages' examples -------------------------------------------------------------

def test_durable_run_commits_reads_back_and_continues_the_thread(tmp_path, capsys):
    final = load("durable_run").main(tmp_path / "runs.db")
    assert final.count == 6 and final.log == [f"step {i}" for i in range(6)]
    assert capsys.readouterr().out.splitlines()[:2] == ["done 3 3", "4 checkpoints"]


def test_draw_run_writes_the_diagram_and_the_run_path(tmp_path):
    written = load("draw_run").main(tmp_path)
    svg = ElementTree.parse(written[0]).getroot()
    ids = {g.get("id") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert {"check", "review", "ship"} <= ids
    dot = written[1].read_text()
    assert "order-42" in dot and "review" in dot
