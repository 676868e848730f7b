"""`LogitScreen`: greedy dense picks from a bf16 screen plus an exact fp32 recheck give the
fp32 masked argmax (up to the rounding of a different summation order), over thousands of
random cases and on the cases built to defeat it
(logits closer than bf16 can tell apart, exact ties, rows allowing nothing, disallowed
unmasked maxima); it declines (None) where its bound cannot help; the engine gives the
same tokens with it on and off."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qpfast
from qpfast.engine import Engine
from qpfast.engine.screen import MAX_CANDIDATES, LogitScreen, cpu_has_bf16_dot
from qpfast.kernels import reference as ref

from test_engine_support import QUERIES16, qwen3_model, torch_threads


def _bitmask(allowed: torch.Tensor) -> np.ndarray:
    """int32 [n, ceil(V/32)] rows from a bool [n, V] matrix (bit j of word k = id 32k + j)."""
    n, v = allowed.shape
    a = np.zeros((n, (v + 31) // 32 * 32), dtype=bool)
    a[:, :v] = allowed.numpy()
    return np.ascontiguousarray(np.packbits(a, axis=1, bitorder="little")).view("<i4").astype(np.int32)


def _expected(x, w, b, bm):
    return ref.masked_argmax(F.linear(x, w, b), torch.from_numpy(bm)).numpy()


def _check_fp32_argmax(got, x, w, b, bm):
    """`got` is each row's masked argmax of the fp32 logits up to fp32 rounding: an allowed
    id whose logit is within the rounding bound of a dot product (H 2^-23 sum |x w|) of the
    allowed maximum; exactly the reference's pick wherever the runner-up is farther than that."""
    full = F.linear(x, w, b)
    allowed = ref.bitmask_to_bool(torch.from_numpy(bm), w.shape[0])
    exp = _expected(x, w, b, bm)
    tol = w.shape[1] * 2.0 ** -23 * (x.abs() @ w.abs().T).max(dim=1).values + 1e-30
    for i in range(x.shape[0]):
        if not allowed[i].any():
            assert got[i] == -1
            continue
        assert allowed[i, got[i]]
        vals = full[i][allowed[i]]
        assert full[i, got[i]] >= vals.max() - tol[i]
        top2 = vals.topk(min(2, vals.numel())).values
        if top2.numel() < 2 or top2[0] - top2[1] > tol[i]:
            assert got[i] == exp[i]


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(1, 2500), hidden=st.sampled_from([4, 16, 64, 256]),
       rows=st.integers(1, 9), w_scale=st.sampled_from([1e-3, 0.05, 1.0, 40.0]),
       x_scale=st.sampled_from([1e-3, 1.0, 30.0]), density=st.sampled_from([0.0, 0.002, 0.05, 0.6, 1.0]),
       bias=st.booleans())
def test_screened_argmax_equals_the_fp32_masked_argmax(seed, vocab, hidden, rows, w_scale, x_scale, density, bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, hidden, generator=g) * w_scale
    b = torch.randn(vocab, generator=g) * w_scale if bias else None
    x = torch.randn(rows, hidden, generator=g) * x_scale
    allowed = torch.rand(rows, vocab, generator=g) < density
    bm = _bitmask(allowed)
    got = LogitScreen(w, b).argmax(x, bm)
    assert got is not None
    _check_fp32_argmax(got, x, w, b, bm)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rel=st.sampled_from([1e-6, 1e-5, 1e-4, 1e-3]), rows=st.integers(1, 6))
def test_logits_closer_than_bf16_resolution_are_told_apart_exactly(seed, rel, rows):
    """Pairs of lm_head rows that round to (nearly) the same bf16 values but whose fp32
    logits differ: the screen cannot order them, the recheck must."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(200, 64, generator=g)
    w = torch.cat([base, base * (1 + rel * torch.randn(200, 1, generator=g))])       # 400 rows, in pairs
    x = torch.randn(rows, 64, generator=g)
    x = x * torch.sign(F.linear(x, base).max(dim=1, keepdim=True).values)           # positive tops
    allowed = torch.rand(rows, 400, generator=g) < 0.7
    bm = _bitmask(allowed)
    got = LogitScreen(w).argmax(x, bm)
    assert got is not None
    _check_fp32_argmax(got, x, w, None, bm)


def test_exact_ties_go_to_the_lowest_id_and_empty_rows_get_minus_one():
    w = torch.randn(50, 32)
    w[40] = w[7]                      # exact duplicates: equal logits for every state
    w[45] = w[7]
    x = w[7:8].repeat(4, 1)           # the duplicates are everyone's maximum
    allowed = torch.ones(4, 50, dtype=torch.bool)
    allowed[1, 7] = False             # then 40 wins (lowest allowed of the tie)
    allowed[2] = False                # allows nothing
    allowed[3, :] = False
    allowed[3, [3, 45]] = True        # the unmasked maximum (7) is not allowed: masked path
    got = LogitScreen(w).argmax(x, _bitmask(allowed))
    assert got.tolist() == [7, 40, -1, 45]
    assert LogitScreen(w).argmax(x[:0], _bitmask(allowed[:0])).shape == (0,)


def test_declines_where_its_bound_cannot_help():
    w = torch.randn(300, 16)
    bm = _bitmask(torch.ones(2, 300, dtype=torch.bool))
    x = torch.randn(2, 16)
    x[1, 3] = float("nan")
    assert LogitScreen(w).argmax(x, bm) is None                       # non-finite states
    # states whose fp32 squares underflow (a review found the bound collapsing there) and
    # products near bf16's denormals: declined, the caller computes the fp32 logits
    tiny = torch.tensor([[1.004, 0.0], [1.0035, 0.003]])
    assert LogitScreen(tiny).argmax(torch.full((1, 2), 1e-24), _bitmask(torch.ones(1, 2, dtype=torch.bool))) is None
    got = LogitScreen(tiny).argmax(torch.full((1, 2), 1e-9), _bitmask(torch.ones(1, 2, dtype=torch.bool)))
    assert got.tolist() == [1]                                           # 1.0065e-9 > 1.004e-9
    flat = torch.ones(MAX_CANDIDATES * 10, 16)                          # every logit equal
    bm = _bitmask(torch.ones(2, flat.shape[0], dtype=torch.bool))
    assert LogitScreen(flat).argmax(torch.randn(2, 16), bm) is None    # too many candidates
    with pytest.raises(ValueError, match="weight"):
        LogitScreen(w.half())
    with pytest.raises(ValueError, match="bias"):
        LogitScreen(w, torch.zeros(3))


def test_follows_in_place_weight_updates():
    w = torch.randn(500, 32)
    x = torch.randn(3, 32)
    bm = _bitmask(torch.ones(3, 500, dtype=torch.bool))
    s = LogitScreen(w)
    np.testing.assert_array_equal(s.argmax(x, bm), _expected(x, w, None, bm))
    with torch.no_grad():
        w.mul_(-1)                    # an optimizer step, say: the bf16 copy must follow
    np.testing.assert_array_equal(s.argmax(x, bm), _expected(x, w, None, bm))


def test_cpu_flag_probe():
    assert isinstance(cpu_has_bf16_dot(), bool)


def test_engine_same_tokens_with_the_screen_on_and_off():
    with torch_threads(1):
        on = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", screen_logits=True)
        off = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", screen_logits=False)
        for eng in (on, off):
            res = eng.generate(QUERIES16, max_new_tokens=96, batch_size=16)
            assert all(r.error is None for r in res)
        assert on.last_token_ids == off.last_token_ids
        assert on.last_stats["screened_logit_steps"] == on.last_stats["dense_logit_steps"] > 0
        assert off.last_stats["screened_logit_steps"] == 0
        auto = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu")
        auto.generate(QUERIES16[:4], max_new_tokens=96)
        assert (auto.last_stats["screened_logit_steps"] > 0) == cpu_has_bf16_dot()
        on.generate(QUERIES16[:4], max_new_tokens=96, temperature=0.8, seed=1)   # sampling: full logits
        assert on.last_stats["screened_logit_steps"] == 0
    with pytest.raises(ValueError, match="screen_logits"):
        Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", screen_logits="yes")
