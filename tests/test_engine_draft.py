"""`DraftIndex`: the drafts of a speculative step are the tokens that followed the latest
earlier occurrence of the longest (<= max_n) suffix of a sequence's tokens; checked against
a naive scan over random token streams, and the engine's `speculate` argument checks."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qpfast
from qpfast.engine import Engine
from qpfast.engine.draft import DraftIndex

from test_engine_support import qwen3_model


def _naive(tokens: list[int], k: int, max_n: int) -> list[int]:
    end = len(tokens)
    for n in range(min(max_n, end), 0, -1):
        pat = tokens[end - n:]
        for start in range(end - n - 1, -1, -1):         # latest occurrence that something follows
            if tokens[start:start + n] == pat:
                return tokens[start + n:start + n + k]
    return []


@settings(max_examples=500, deadline=None)
@given(tokens=st.lists(st.integers(0, 6), max_size=60), k=st.integers(0, 6), max_n=st.integers(1, 5),
       split=st.integers(0, 60))
def test_proposals_match_a_naive_scan(tokens, k, max_n, split):
    idx = DraftIndex(tokens[:split], max_n=max_n)       # built from a prefix, then appended to
    for t in tokens[split:]:
        idx.append(t)
    assert idx.tokens == tokens
    assert idx.propose(k) == _naive(tokens, k, max_n)


def test_proposals_on_a_qp_like_stream():
    # the term list repeats the segments: after `"` + 兰 the index proposes 蔻 ... again
    idx = DraftIndex([1, 50, 51, 52, 2, 3, 60, 61, 4])
    idx.extend([1, 50])
    assert idx.propose(3) == [51, 52, 2]
    assert DraftIndex([]).propose(4) == [] and DraftIndex([7]).propose(2) == []
    assert DraftIndex([7, 7]).propose(3) == [7]
    with pytest.raises(ValueError, match="max_n"):
        DraftIndex([], max_n=0)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "yes", None])
def test_speculate_argument_errors(bad):
    with pytest.raises(ValueError, match="speculate"):
        Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", speculate=bad)


def test_speculate_is_checked_when_set_later_too():
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu")
    for bad in (-1, "AUTO", 2.5, True):
        with pytest.raises(ValueError, match="speculate"):
            eng.speculate = bad
    eng.speculate = 3
    assert eng.speculate == 3
    eng.generate(["兰蔻小黑瓶适合什么肤质"], max_new_tokens=64)
    assert eng.last_stats["speculate"] == 3


def test_every_position_needs_the_graph_step():
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=False)
    r = eng.runner
    r.reserve(2, 16)
    with pytest.raises(ValueError, match="graph step"):
        r.decode_step([[1], [2]], [0, 0], every=True)
