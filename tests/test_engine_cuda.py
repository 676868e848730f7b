"""The engine on a real GPU: Triton attention kernels, CUDA-graph decode steps.

Skipped without CUDA (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_engine_cuda.py``.
"""
from __future__ import annotations

import copy

import pytest
import torch

import qpfast
from qpfast.engine import Engine
from qpfast.testing import qwen_tokenizer

from test_engine_support import ADVERSARIAL, QUERIES16, qwen3_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _engine(dtype, **kw):
    return Engine(copy.deepcopy(qwen3_model()), qwen_tokenizer(), device="cuda", dtype=dtype, **kw)


def _strict(queries, results):
    for q, r in zip(queries, results):
        if r.error is None:
            qpfast.parse(r.raw, q, strict=True)


def test_cuda_defaults_use_kernels_and_graphs():
    eng = _engine("float32")
    assert eng.runner.attention == "kernels" and eng.runner.graphs is not None
    res = eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert all(r.error is None for r in res)
    _strict(QUERIES16, res)
    assert eng.runner.graphs.captured >= 1


def test_cuda_serving_again_reuses_the_cache_and_graphs():
    """A second `generate` at the same settings (device given as the bare "cuda") keeps the
    cache and captures nothing; graphs dropped on purpose are captured again into a fresh
    memory pool (a capture into the retired pool failed PyTorch's allocator assertion)."""
    eng = _engine("float32")
    assert eng.device == torch.device("cuda", torch.cuda.current_device())
    eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    g, stamp = eng.runner.graphs, eng.runner.cache.stamp
    captured, ids = g.captured, eng.last_token_ids
    eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert eng.runner.cache.stamp == stamp and g.captured == captured
    assert eng.last_token_ids == ids
    g.reset()
    eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert g.captured > captured and eng.last_token_ids == ids


def test_cuda_graphs_on_vs_off_same_tokens_fp32():
    on = _engine("float32")
    off = _engine("float32", cuda_graphs=False)
    cpu = Engine(copy.deepcopy(qwen3_model()), qwen_tokenizer(), device="cpu")
    for bs in (16, 5):
        on.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        off.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        assert on.last_token_ids == off.last_token_ids, bs
        # multi-token graph steps and the graph's own greedy picks both ran
        assert {T for _, T, _ in on.runner.graphs._graphs} - {1}
        assert on.last_stats["graph_pick_steps"] > 0
    cpu.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert on.last_token_ids == cpu.last_token_ids
    with_host_picks = _engine("float32", graph_picks=False)
    with_host_picks.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert with_host_picks.last_token_ids == cpu.last_token_ids
    assert with_host_picks.last_stats["graph_pick_steps"] == 0


def test_cuda_chunked_prefill_same_tokens_fp32():
    """Rows joining a running batch prefill through the captured graph steps: the eager
    engine's tokens, one prefill pass a call; with chunked_prefill off, an eager pass a refill."""
    on = _engine("float32")
    eager = _engine("float32", cuda_graphs=False)
    eager.generate(QUERIES16, max_new_tokens=96, batch_size=5)
    on.generate(QUERIES16, max_new_tokens=96, batch_size=5)
    assert on.last_token_ids == eager.last_token_ids
    assert on.last_stats["prefill_forward_passes"] == 1 and on.last_stats["graph_positions"] > 0
    on.chunked_prefill = False
    on.generate(QUERIES16, max_new_tokens=96, batch_size=5)
    assert on.last_token_ids == eager.last_token_ids
    assert on.last_stats["prefill_forward_passes"] > 1


def test_cuda_cascade_layout_same_tokens_fp32():
    """The cascade layout on CUDA (prefix stored once, the shared-prefix kernels, graphs on
    and off) gives the kernels layout's tokens and the CPU engine's."""
    kern = _engine("float32")
    casc = _engine("float32", attention="cascade")
    casc_eager = _engine("float32", attention="cascade", cuda_graphs=False)
    assert casc.runner.cascade_kernels and casc.runner.graphs is not None
    for bs in (16, 5):
        kern.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        casc.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        casc_eager.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        assert casc.last_token_ids == kern.last_token_ids == casc_eager.last_token_ids, bs
    assert casc.runner.graphs.captured >= 1
    assert casc.runner.cache.shared_capacity == casc.runner.prefix_len


@pytest.mark.parametrize("attention", ["kernels", "cascade"])
def test_cuda_warmup_captures_every_graph_before_serving(attention):
    """After `warmup`, serving at the same settings captures nothing and gives the tokens
    of an engine that never warmed up (the padding-row captures leave every slot alone)."""
    cold = _engine("float32", attention=attention)
    cold.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    warm = _engine("float32", attention=attention)
    g = warm.runner.graphs
    info = warm.warmup(batch_size=16, max_new_tokens=96, sampling=True)
    assert info["graphs"] == g.captured == len(g.shapes(16, [False, True]))
    captured = g.captured
    warm.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    assert warm.last_token_ids == cold.last_token_ids
    warm.generate(QUERIES16, max_new_tokens=96, batch_size=5, temperature=0.7, seed=1)
    assert g.captured == captured


def test_cuda_speculative_drafts_on_graph_steps_same_tokens_fp32():
    """Drafts carried by the CUDA-graph steps (the "every_pick" graphs, captured: the picks
    after the pending tokens and every draft come from the graph): the same tokens as without
    drafts in fp32, drafts accepted, and warmup captures the "every_pick" shapes."""
    plain = _engine("float32", speculate=0)
    spec = _engine("float32", speculate=4)
    g = spec.runner.graphs
    spec.warmup(batch_size=16, max_new_tokens=96)
    captured = g.captured
    assert any(mode == "every_pick" for _, _, mode in g._graphs)
    for bs in (16, 5):
        plain.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        spec.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        assert spec.last_token_ids == plain.last_token_ids, bs
        assert spec.last_stats["accepted_draft_tokens"] > 0
    assert g.captured == captured


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_cascade_half_precision_outputs_parse_strictly(dtype):
    eng = _engine(dtype, attention="cascade")
    res = eng.generate(ADVERSARIAL * 3, max_new_tokens=128, batch_size=24)
    _strict(ADVERSARIAL * 3, res)
    assert sum(r.error is None for r in res) >= len(ADVERSARIAL * 3) - 6


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_outputs_parse_strictly(dtype):
    eng = _engine(dtype)
    res = eng.generate(ADVERSARIAL * 3, max_new_tokens=128, batch_size=24)
    _strict(ADVERSARIAL * 3, res)
    assert sum(r.error is None for r in res) >= len(ADVERSARIAL * 3) - 6   # the empty queries
    res = eng.generate(ADVERSARIAL, max_new_tokens=128, temperature=1.0, seed=0)
    _strict(ADVERSARIAL, res)


def test_cuda_graph_pieces_captured_give_the_eager_tokens():
    """Each step captured as several graphs (`DecodeGraphs.pieces`), replayed in turn, the
    states they pass on kept alive: any split gives the tokens of the eager engine in fp32,
    with shapes captured and replayed in mixed order (batches 16, 5, 16)."""
    model = qwen3_model(layers=5)
    eager = Engine(copy.deepcopy(model), qwen_tokenizer(), device="cuda", dtype="float32", cuda_graphs=False)
    want = {}
    for bs in (16, 5):
        eager.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        want[bs] = eager.last_token_ids
    eng = Engine(copy.deepcopy(model), qwen_tokenizer(), device="cuda", dtype="float32")
    g = eng.runner.graphs
    for bounds in ([0, 1, 4, 5], [0, 5], [0, 2, 3, 5]):
        g.set_pieces(bounds)
        for bs in (16, 5, 16):
            eng.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
            assert eng.last_token_ids == want[bs], (bounds, bs)
        assert g.captured > 0 and all(len(e[0]) == len(bounds) - 1 for e in g._graphs.values())


def test_cuda_projection_kernels_give_the_gemm_tokens_fp32():
    """Decode steps with their projections through `kernels.linear` (K split across the SMs,
    SwiGLU fused; `NativeRunner.set_projection_rows`), graphs on and off, give the tokens of
    torch's GEMMs in fp32."""
    want = _engine("float32")
    want.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    for graphs in (True, False):
        eng = _engine("float32", cuda_graphs=graphs)
        eng.runner.set_projection_rows(256)
        eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
        assert eng.last_token_ids == want.last_token_ids, graphs


@pytest.mark.parametrize("projections", [0, 256])
def test_cuda_programmatic_launch_graphs_give_the_eager_tokens_fp32(projections):
    """Decode-step graphs captured with programmatic dependent launch (`DecodeGraphs.set_pdl`:
    each Triton kernel's programs wait resident for the kernel before) give the tokens of the
    eager engine in fp32, with torch's GEMMs between the kernels and with every projection a
    Triton kernel too (`set_projection_rows`: a chain of dependent launches)."""
    want = _engine("float32", cuda_graphs=False)
    want.generate(QUERIES16, max_new_tokens=96, batch_size=16)
    eng = _engine("float32")
    eng.runner.set_projection_rows(projections)
    eng.runner.graphs.set_pdl(True)
    for bs in (16, 5, 16):
        eng.generate(QUERIES16, max_new_tokens=96, batch_size=bs)
        if bs == 16:
            assert eng.last_token_ids == want.last_token_ids
    assert eng.runner.graphs.captured > 0
