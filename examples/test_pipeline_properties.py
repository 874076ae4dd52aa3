"""Property tests of the pipeline example (examples/pipeline.py) with `statemachine.testing`.

Instead of a few hand-written CSV files, hypothesis generates thousands of them: rows with
missing or negative amounts, duplicates, odd spacing, unknown regions. Each checker then states
what must hold for all of them, and a failure is reported with the smallest input that breaks
it. Run with:

    pip install 'statemachine[testing]'   # hypothesis
    python -m pytest examples/test_pipeline_properties.py
"""

import string

from hypothesis import strategies as st
from pipeline import REGIONS, Sale, State, app  # examples/pipeline.py, next to this file

from statemachine.testing import (
    check_nodes,
    check_resume,
    check_runs,
    states,
    transition_machine,
)

STAGES = ["load", "clean", "enrich", "summarize"]

# -- what the data looks like ----------------------------------------------------------------------

region_codes = st.sampled_from(["N", "S", "E", "W", "n", "s", "x"])  # "x": an unknown region
customers = st.text(string.ascii_letters + " ", min_size=1, max_size=12).filter(str.strip)
amounts = st.one_of(
    st.just(""),  # a missing amount
    st.decimals(min_value=-100, max_value=10_000, places=2).map(str))
rows = st.fixed_dictionaries({"region_code": region_codes, "customer": customers,
                              "amount": amounts})
csv_sources = st.lists(rows, max_size=8).map(
    lambda rows: "region_code,customer,amount\n" + "".join(
        f"{r['region_code']},{r['customer']},{r['amount']}\n" for r in rows))
"""CSV text like pipeline.RAW_CSV: any number of rows, well-formed or not."""

inputs = st.builds(dict, source=csv_sources)
"""What a caller passes to app.invoke: just the source."""

# States a node can meet mid-pipeline: rows as `load` makes them, sales with a region as
# `enrich` leaves them, stages already run. (Arbitrary states would also hold rows without an
# amount column, which `load` never produces: property tests say which states they mean.)
enriched_sales = states(Sale, region=st.sampled_from([*REGIONS.values(), "Unknown"]),
                        amount=st.floats(0.01, 1e6))
mid_pipeline = states(State, source=csv_sources, raw_rows=st.lists(rows, max_size=5),
                      sales=st.lists(enriched_sales, max_size=4),
                      stages=st.lists(st.sampled_from(STAGES), max_size=3))


def one_stage_more(before: State, after: State) -> bool:
    """Every step records exactly one stage and never forgets a dropped row."""
    return (after.stages[:-1] == before.stages and after.stages[-1] in STAGES
            and after.dropped[:len(before.dropped)] == before.dropped)


def accounted_for(final: State) -> bool:
    """Every row ends up either as a sale or with a reason it was dropped, and the totals
    add up to the sales."""
    return (final.stages == STAGES
            and len(final.sales) + len(final.dropped) == len(final.raw_rows)
            and abs(sum(final.summary.values()) - sum(s.amount for s in final.sales)) < 1e-6
            and final.report.startswith(f"{len(final.sales)} sales"))


# -- the tests -------------------------------------------------------------------------------------

def test_each_stage_alone_returns_a_valid_update():
    check_nodes(app, states=mid_pipeline, invariant=one_stage_more)


def test_every_run_ends_with_every_row_accounted_for():
    check_runs(app, inputs=inputs, invariant=one_stage_more, final=accounted_for)


def test_a_run_interrupted_anywhere_resumes_to_the_same_result():
    check_resume(app, inputs=inputs)


# A hypothesis state machine over the graph's transitions, as a unittest TestCase pytest runs.
TestPipelineTransitions = transition_machine(
    app, states=states(State, source=csv_sources, raw_rows=[], sales=[], dropped=[],
                       summary={}, report="", stages=[]),
    invariant=one_stage_more, final=accounted_for).TestCase
