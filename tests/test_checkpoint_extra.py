"""A checkpoint's extra data: one typed encode and decode, lossless for what it knows and for
what a newer version added, and a clear error naming the checkpoint when it is damaged."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpoints.base import CheckpointRecord
from statemachine import CheckpointError
from statemachine.checkpoint_extra import CheckpointExtra, decode_extra, extra_of

names = st.text(min_size=1, max_size=8)
jsonable = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3), max_leaves=5)
extras = st.builds(
    CheckpointExtra,
    attempts=st.dictionaries(names, st.integers(2, 9), max_size=3),
    cache_hits=st.lists(names, max_size=3, unique=True),
    compensates=st.none() | st.tuples(st.integers(0, 99), names, st.integers(0, 9)),
    undo_failed=st.none() | st.tuples(st.integers(0, 99), names, st.integers(0, 9)),
    carried=st.lists(st.tuples(names, st.integers(0, 9), st.dictionaries(names, jsonable))
                     .map(list), max_size=3),
    origin=st.none() | names,
    joins=st.dictionaries(st.integers(0, 9), st.sets(names, min_size=1, max_size=3),
                          max_size=3),
    interrupt=st.sampled_from([None, "before", "after", "wait"]),
    failed=st.lists(names, max_size=3, unique=True),
    waiting=st.lists(st.tuples(names, st.integers(0, 9), names), max_size=3),
    answers=st.dictionaries(st.tuples(names, st.integers(0, 9)), st.lists(jsonable, max_size=2),
                            max_size=3),
    other=st.dictionaries(st.text(min_size=1).map(lambda k: "x-" + k), jsonable, max_size=2),
)


@given(extras)
def test_what_is_encoded_decodes_to_the_same_extra_data(extra):
    text = extra.encode()
    assert decode_extra(text) == extra
    if text is not None:
        assert isinstance(json.loads(text), dict)
    else:
        assert extra == CheckpointExtra()


def test_a_kind_of_pause_a_newer_version_wrote_survives_a_rewrite():
    extra = decode_extra('{"interrupt": "sideways", "joins": {"0": ["a"]}}')
    assert extra.interrupt is None and extra.joins == {0: {"a"}}
    assert json.loads(extra.copy(failed=["b"]).encode() or "{}") == {
        "failed": ["b"], "joins": {"0": ["a"]}, "interrupt": "sideways"}


def test_keys_a_newer_version_wrote_survive_a_rewrite():
    text = json.dumps({"interrupt": "wait", "waiting": [["a", 0, "approve"]],
                       "x-priority": {"level": 3}})
    rewritten = decode_extra(text).copy(waiting=[], interrupt=None, answers={("a", 0): [True]})
    assert json.loads(rewritten.encode() or "{}") == {"answers": {"a|0": [True]},
                                                       "x-priority": {"level": 3}}


@pytest.mark.parametrize("text", ['[1, 2]', '{"attempts": {"a": "many"}}',
                                  '{"joins": {"x": ["a"]}}', '{"waiting": [["a", 0]]}',
                                  '{"compensates": 7}', "{not json"])
def test_damaged_extra_data_is_an_error_naming_the_checkpoint(text):
    record = CheckpointRecord(id="c7", thread_id="order-1", parent_id=None, step=3,
                              kind="step", status="failed", next="[]", writes=None,
                              snapshot=None, extra=text, error=None, created_at=0.0)
    with pytest.raises(CheckpointError, match=r"thread 'order-1', checkpoint c7: its extra data"):
        extra_of(record)
