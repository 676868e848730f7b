"""`Engine.warmup`: the cache, the prefix and every graph shape paid for before serving.

On CPU the graph step runs eagerly (`cuda_graphs=True`, no capture): warmup records every
(batch bucket, tokens per row, pick) shape a batch can use, runs each once with padding
rows only, and a later `generate` at the same settings records nothing new, reallocates
nothing and gives the same tokens as an engine that never warmed up.
"""
from __future__ import annotations

import pytest
import torch

import qpfast
from qpfast.engine import Engine
from qpfast.engine.cuda_graph import BUCKETS, TOKEN_BUCKETS

from test_engine_support import QUERIES16, qwen3_model

BUDGET = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plain_ids():
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels")
    res = eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=16)
    assert all(r.error is None for r in res)
    return eng.last_token_ids


def _graph_engine(**kw):
    return Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=True, **kw)


@pytest.mark.parametrize("attention", ["kernels", "cascade"])
def test_warmup_records_every_shape_and_serving_records_none(plain_ids, attention):
    eng = _graph_engine(attention=attention)
    g = eng.runner.graphs
    info = eng.warmup(batch_size=16, max_new_tokens=BUDGET)
    expected = {(B, T, True) for B in (1, 2, 4, 8, 12, 16) for T in TOKEN_BUCKETS if B * T <= g.max_step_tokens}
    assert set(g._graphs) == expected and info["graphs"] == len(expected)
    assert info["cache_slots"] == 16 and info["cache_bytes"] == eng.runner.cache.nbytes() > 0
    # room for the longest query of the schema (64 characters x 4 byte tokens) and the budget
    assert info["cache_positions"] >= 4 * eng.schema.max_query_chars + BUDGET
    assert info["seconds"] > 0
    stamp = eng.runner.cache.stamp
    res = eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=16)
    assert all(r.error is None for r in res)
    assert eng.last_token_ids == plain_ids            # the padding-row steps left every slot alone
    assert set(g._graphs) == expected                 # no shape recorded while serving
    assert eng.runner.cache.stamp == stamp            # no cache reallocated
    assert eng.last_stats["graph_pick_steps"] > 0
    assert eng.warmup(batch_size=16, max_new_tokens=BUDGET)["graphs"] == 0   # nothing left to record
    # smaller batches use the same shapes
    eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=5)
    assert eng.last_token_ids == plain_ids and set(g._graphs) == expected


def test_warmup_for_sampling_and_host_picks():
    eng = _graph_engine(graph_picks=False)
    g = eng.runner.graphs
    eng.warmup(batch_size=8, max_new_tokens=BUDGET)
    assert {pick for _, _, pick in g._graphs} == {False}
    eng = _graph_engine()
    g = eng.runner.graphs
    info = eng.warmup(batch_size=8, max_new_tokens=BUDGET, sampling=True)
    shapes = {(B, T) for B in (1, 2, 4, 8) for T in TOKEN_BUCKETS}
    assert set(g._graphs) == {(B, T, p) for B, T in shapes for p in (False, True)} and info["graphs"] == 2 * len(shapes)
    res = eng.generate(QUERIES16[:8], max_new_tokens=BUDGET, batch_size=8, temperature=0.8, seed=3)
    assert all(r.error is None for r in res)
    assert len(g._graphs) == 2 * len(shapes)


@pytest.mark.parametrize("graph_picks", [True, False])
def test_warmup_records_the_speculative_shapes(plain_ids, graph_picks):
    from qpfast.engine.cuda_graph import EVERY, EVERY_PICK
    eng = _graph_engine(speculate=2, graph_picks=graph_picks)
    g = eng.runner.graphs
    eng.warmup(batch_size=16, max_new_tokens=BUDGET)
    assert {mode for _, _, mode in g._graphs} == ({True, EVERY_PICK} if graph_picks else {False, EVERY})
    n = len(g._graphs)
    eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=16)
    assert eng.last_token_ids == plain_ids and len(g._graphs) == n
    assert eng.last_stats["accepted_draft_tokens"] > 0


def test_warmup_shapes_follow_the_step_budget():
    eng = _graph_engine()
    g = eng.runner.graphs
    g.max_step_tokens = 16
    eng.warmup(batch_size=24, max_new_tokens=BUDGET)
    got = {(B, T) for B, T, _ in g._graphs}
    assert got == {(B, T) for B in (1, 2, 4, 8, 12, 16, 24) for T in TOKEN_BUCKETS if T == 1 or B * T <= 16}
    assert all(B in BUCKETS for B, _ in got)


def test_warmup_without_graphs_and_with_the_hf_runner(plain_ids):
    for kw in (dict(attention="kernels"), dict(runner="hf")):
        eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", **kw)
        info = eng.warmup(batch_size=4, max_new_tokens=BUDGET)
        assert info["graphs"] == 0
        assert eng.last_stats["queries"] == 1            # the eager paths ran one query
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels")
    eng.warmup(batch_size=16, max_new_tokens=BUDGET, rules=["品牌词单独成段"])
    eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=16)
    assert eng.last_token_ids == plain_ids              # another prompt's warmup changes nothing


def test_warmup_argument_errors():
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        eng.warmup(batch_size=0)
    with pytest.raises(TypeError, match="max_new_tokens"):
        eng.warmup(max_new_tokens=1.5)
    with pytest.raises(ValueError, match="query"):
        eng.warmup(query="  \t")
    with pytest.raises(ValueError, match="query"):
        eng.warmup(query=None)
    with pytest.raises(TypeError, match="rules"):
        eng.warmup(rules=3)
    with pytest.raises(ValueError, match="query"):         # a budget its query cannot fit: said, not skipped
        eng.warmup(max_new_tokens=5)
    g = _graph_engine().runner
    g.reserve(2, 8)
    with pytest.raises(ValueError, match="mask_words"):
        g.graphs.warmup(2, [True])
    assert torch.is_tensor(g.cache.k[0])


def test_dropped_graphs_send_later_captures_to_a_new_memory_pool():
    """PyTorch retires a graph memory pool once its last graph is gone, and a capture into a
    retired pool fails an allocator assertion (seen on an H200): whenever graphs are dropped
    (new cache or rope table, a new mask width), later captures get a new pool."""
    eng = _graph_engine()
    g = eng.runner.graphs
    eng.warmup(batch_size=4, max_new_tokens=BUDGET, sampling=True)
    words = g._mask.shape[1]
    pool = g._pool = object()                  # as if captured (CPU runs the steps eagerly)
    g._mask_buffer(words)                      # same width: nothing dropped
    assert g._pool is pool
    g._mask_buffer(words + 1)                  # the picking graphs read the old buffer
    assert g._pool is None and g._graphs and {pick for _, _, pick in g._graphs} == {False}
    g._pool = object()
    g.reset()
    assert g._pool is None and not g._graphs
    g._pool = pool
    g.reset()                                  # nothing left to drop: the pool stays
    assert g._pool is pool

