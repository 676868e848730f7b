"""Tests for qpfast.kernels: Triton kernels against their torch references, the references
against naive per-sequence loops, input validation, and dispatch.

Two kinds of tests live here:

* ordinary tests (references, validation, heuristics, dispatch) run in-process;
* ``test_interp_*`` tests run the Triton kernels in Triton's interpreter.  Triton picks
  compile-or-interpret when it is imported, process-wide, so they only run in a process
  started with ``TRITON_INTERPRET=1``.  In a normal run ``test_kernel_suite_in_subprocess``
  starts such a process for them (``pytest -k test_interp_``) and checks that every one
  of them passed; run ``TRITON_INTERPRET=1 pytest tests/test_kernels.py`` to see them
  one by one.

Every kernel output is poisoned before the run (NaN for floats, a sentinel for token
ids), so an element the kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
import zlib

import pytest
import torch

import qpfast.kernels as K
from qpfast.kernels import reference as R

INTERP = K.HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
interp_only = pytest.mark.skipif(
    not INTERP, reason="needs TRITON_INTERPRET=1 at start-up (run by test_kernel_suite_in_subprocess)")
needs_triton = pytest.mark.skipif(not K.HAS_TRITON, reason="triton is not installed")

SENTINEL = -12345        # poison for token-id outputs: never a valid answer


def seed_of(*parts) -> int:
    """A reproducible seed per test case (``hash`` of a str changes between processes)."""
    return zlib.crc32(repr(parts).encode()) % 10_000


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf if out has a NaN."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

# name: (query lengths, cached-prefix lengths, Hq, Hkv, D)
PREFILL_CASES = {
    "mha_no_prefix": ([1, 7, 16, 33], [0, 0, 0, 0], 4, 4, 32),
    "gqa2_mixed": ([5, 1, 19], [40, 0, 3], 4, 2, 16),
    "gqa4_long_prefix": ([3, 12], [150, 97], 8, 2, 32),
    "gqa8_ragged": ([1, 2, 9, 31, 1], [0, 64, 5, 17, 130], 8, 1, 64),
    "group3": ([6, 11], [10, 0], 6, 2, 32),
    "empty_seq": ([4, 0, 3], [8, 5, 0], 4, 2, 16),
}

# name: (seq_lens, Hq, Hkv, max_len, D)
DECODE_CASES = {
    "mha": ([1, 40, 17], 4, 4, 40, 32),
    "gqa2": ([67, 1, 33, 64], 4, 2, 67, 16),
    "gqa4": ([130, 65], 8, 2, 130, 32),
    "gqa8": ([2, 49, 50], 8, 1, 50, 64),
    "gqa2_d24": ([3, 70, 1], 6, 3, 70, 24),       # a head dim under its block: masked columns
}


def cumsum0(lengths) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def make_prefill(case: str, dtype=torch.float32, seed=0):
    len_q, prefix, hq, hkv, d = PREFILL_CASES[case]
    len_k = [a + b for a, b in zip(len_q, prefix)]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(len_q), hq, d, generator=g).to(dtype)
    k = torch.randn(sum(len_k), hkv, d, generator=g).to(dtype)
    v = torch.randn(sum(len_k), hkv, d, generator=g).to(dtype)
    return q, k, v, cumsum0(len_q), cumsum0(len_k)


def make_decode(case: str, dtype=torch.float32, seed=0):
    lens, hq, hkv, max_len, d = DECODE_CASES[case]
    g = torch.Generator().manual_seed(seed)
    b = len(lens)
    q = torch.randn(b, hq, d, generator=g).to(dtype)
    kc = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    vc = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    return q, kc, vc, torch.tensor(lens, dtype=torch.int32)


def make_decode_multi(case: str, t: int, dtype=torch.float32, seed=0):
    """A decode case with ``t`` new tokens per sequence (``queries_per_seq``): q ``[B * t,
    Hq, D]``, every length at least ``t``."""
    q, kc, vc, lens = make_decode(case, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(q.shape[0] * t, *q.shape[1:], generator=g).to(dtype)
    return q, kc, vc, lens.clamp(min=t)


def naive_decode_multi(q, kc, vc, lens, t, scale):
    """New token i of sequence b sees that sequence's keys < lens[b] - (t - 1 - i)."""
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // kc.shape[1]
    for b in range(kc.shape[0]):
        for i in range(t):
            n = int(lens[b]) - (t - 1 - i)
            for h in range(q.shape[1]):
                w = torch.softmax(kc[b, h // group, :n].double() @ q[b * t + i, h].double() * scale, dim=0)
                out[b * t + i, h] = w @ vc[b, h // group, :n].double()
    return out


# name: (prefix capacity P, prefix_len or None for all P); keys past prefix_len are NaN
PREFIX_CASES = {
    "empty": (0, None),
    "short": (5, None),
    "long_partial": (150, 97),
    "len_zero": (40, 0),
}


# (case, prefix) pairs for the kernel tests: every case shape and every prefix kind at least
# once (all pairs would cost the interpreter, and a GPU's compiler, too much time)
DECODE_PREFIX_PAIRS = [("mha", "long_partial"), ("gqa2", "short"), ("gqa8", "len_zero"), ("gqa2_d24", "empty"),
                       ("gqa4", "long_partial"), ("gqa2_d24", "short")]
PREFILL_PREFIX_PAIRS = [("gqa2_mixed", "long_partial"), ("gqa8_ragged", "short"), ("empty_seq", "len_zero"),
                        ("group3", "empty")]


def make_prefix(case: str, hkv: int, d: int, dtype=torch.float32, seed=0):
    """A shared prefix ``[Hkv, P, D]`` (NaN past its length, which kernels must not read
    into their sums) and its ``prefix_len`` tensor (or None)."""
    cap, n = PREFIX_CASES[case]
    g = torch.Generator().manual_seed(seed)
    pk = torch.randn(hkv, cap, d, generator=g).to(dtype)
    pv = torch.randn(hkv, cap, d, generator=g).to(dtype)
    if n is None:
        return pk, pv, None
    pk[:, n:] = float("nan")
    pv[:, n:] = float("nan")
    return pk, pv, torch.tensor([n], dtype=torch.int32)


def prefix_copied(pk, pv, plen, kc, vc, lens):
    """The decode inputs with the shared prefix copied in front of every sequence's cache
    (the "kernels" cache layout): what a shared prefix must be equivalent to."""
    n = pk.shape[1] if plen is None else int(plen[0])
    b = kc.shape[0]
    kc2 = torch.cat([pk[None, :, :n].expand(b, -1, -1, -1), kc], 2)
    vc2 = torch.cat([pv[None, :, :n].expand(b, -1, -1, -1), vc], 2)
    return kc2, vc2, lens + n


def make_layer_inputs(dtype=torch.float32, seed=0, n=7, hq=8, hkv=2, d=32, hidden=48, qk_norm=True):
    """Inputs of the fused layer pieces: a qkv projection of n tokens, rope tables, a cache
    of 5 slots x 40 positions (random: untouched entries must stay), distinct (slot, pos)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=g).to(dtype)
    norms = (1 + 0.1 * torch.randn(d, generator=g)).to(dtype), (1 + 0.1 * torch.randn(d, generator=g)).to(dtype)
    ang = torch.randn(64, d // 2, generator=g)
    cos = torch.cat([ang.cos(), ang.cos()], 1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], 1).to(dtype)
    cells = torch.randperm(5 * 40, generator=g)[:n]
    slot, pos = cells // 40, cells % 40
    rope_pos = torch.randint(0, 64, (n,), generator=g)
    kc = torch.randn(5, hkv, 40, d, generator=g).to(dtype)
    vc = torch.randn(5, hkv, 40, d, generator=g).to(dtype)
    x = torch.randn(n, hidden, generator=g).to(dtype)
    res = torch.randn(n, hidden, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    gu = torch.randn(n, 2 * hidden, generator=g).to(dtype)
    return dict(qkv=qkv, q_norm=norms[0] if qk_norm else None, k_norm=norms[1] if qk_norm else None,
                cos=cos, sin=sin, rope_pos=rope_pos, kc=kc, vc=vc, slot=slot, pos=pos, hq=hq, hkv=hkv,
                x=x, res=res, w=w, gu=gu)


def check_layer_kernels(mod, inp, tol):
    """``mod``'s add_rms_norm / qk_norm_rope_store / silu_mul against the references."""
    for res in (None, inp["res"]):
        out, h = mod.add_rms_norm(inp["x"], res, inp["w"], 1e-6)
        ref_out, ref_h = R.add_rms_norm(inp["x"], res, inp["w"], 1e-6)
        assert rel_err(h, ref_h) < tol and rel_err(out, ref_out) < tol
    kc, vc = inp["kc"].clone(), inp["vc"].clone()
    rk, rv = inp["kc"].clone(), inp["vc"].clone()
    args = (inp["q_norm"], inp["k_norm"], inp["cos"], inp["sin"], inp["rope_pos"])
    q = mod.qk_norm_rope_store(inp["qkv"], *args, kc, vc, inp["slot"], inp["pos"], inp["hq"], inp["hkv"], 1e-6)
    rq = R.qk_norm_rope_store(inp["qkv"], *args, rk, rv, inp["slot"], inp["pos"], inp["hq"], inp["hkv"], 1e-6)
    assert rel_err(q, rq) < tol
    assert rel_err(kc, rk) < tol and rel_err(vc, rv) < tol
    written = torch.zeros(kc.shape[0], kc.shape[2], dtype=torch.bool, device=kc.device)
    written[inp["slot"], inp["pos"]] = True
    assert torch.equal(kc.transpose(1, 2)[~written], inp["kc"].transpose(1, 2)[~written])   # the rest untouched
    assert torch.equal(vc[inp["slot"], :, inp["pos"]], rv[inp["slot"], :, inp["pos"]])      # v copied exactly
    assert rel_err(mod.silu_mul(inp["gu"]), R.silu_mul(inp["gu"])) < tol


def make_bitmask(rows: int, vocab: int, seed=0, density=0.5, extra_words=0) -> torch.Tensor:
    """Random bitmask with every bit pattern possible, including garbage past V."""
    g = torch.Generator().manual_seed(seed)
    words = (vocab + 31) // 32 + extra_words
    bits = torch.rand(rows, words * 32, generator=g) < density
    packed = (bits.view(rows, words, 32).long() << torch.arange(32)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def special_rows(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Rows 0..3 (if present): no allowed token, one allowed token, allowed logits all
    -inf, and a tie between two allowed tokens."""
    vocab = logits.shape[1]
    if logits.shape[0] >= 1:
        bitmask[0] = 0
    if logits.shape[0] >= 2:
        bitmask[1] = 0
        bit = 1 << ((vocab - 1) % 32)                             # only the last token
        bitmask[1, (vocab - 1) // 32] = bit - 2**32 if bit >= 2**31 else bit
    if logits.shape[0] >= 3:
        logits[2] = float("-inf")
    if logits.shape[0] >= 4 and vocab >= 3:
        bitmask[3] = -1
        logits[3] = -5.0
        logits[3, [vocab // 2, vocab - 1]] = 3.0


# --------------------------------------------------------------------------------------
# naive implementations (loops, float64): the references are checked against these
# --------------------------------------------------------------------------------------

def naive_prefill(q, k, v, cu_q, cu_k, scale):
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // k.shape[1]
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        prefix = (ke - ks) - (qe - qs)
        for t in range(qe - qs):
            for h in range(q.shape[1]):
                keys = k[ks:ks + prefix + t + 1, h // group].double()
                vals = v[ks:ks + prefix + t + 1, h // group].double()
                w = torch.softmax(keys @ q[qs + t, h].double() * scale, dim=0)
                out[qs + t, h] = w @ vals
    return out


def naive_decode(q, kc, vc, lens, scale):
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // kc.shape[1]
    for b in range(q.shape[0]):
        n = int(lens[b])
        for h in range(q.shape[1]):
            w = torch.softmax(kc[b, h // group, :n].double() @ q[b, h].double() * scale, dim=0)
            out[b, h] = w @ vc[b, h // group, :n].double()
    return out


def naive_allowed(bitmask, vocab):
    return torch.tensor([[bool((int(bitmask[r, t // 32]) >> (t % 32)) & 1) for t in range(vocab)]
                         for r in range(bitmask.shape[0])], dtype=torch.bool)


def naive_argmax(logits, bitmask):
    allowed = naive_allowed(bitmask, logits.shape[1])
    picks = []
    for r in range(logits.shape[0]):
        ok = [t for t in range(logits.shape[1]) if allowed[r, t]]
        if not ok:
            picks.append(-1)
            continue
        best = max(float(logits[r, t]) for t in ok)
        picks.append(next(t for t in ok if float(logits[r, t]) == best))  # lowest on ties
    return torch.tensor(picks)


# --------------------------------------------------------------------------------------
# references against the naive loops
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(PREFILL_CASES))
def test_reference_prefill_matches_naive(case):
    q, k, v, cu_q, cu_k = make_prefill(case, seed=1)
    scale = 0.3
    out = R.prefill_attention(q, k, v, cu_q, cu_k, sm_scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, naive_prefill(q, k, v, cu_q, cu_k, scale)) < 1e-5


def test_reference_prefill_default_scale_and_dtypes():
    q, k, v, cu_q, cu_k = make_prefill("gqa2_mixed", seed=2)
    want = naive_prefill(q, k, v, cu_q, cu_k, 1 / math.sqrt(q.shape[-1]))
    assert rel_err(R.prefill_attention(q, k, v, cu_q, cu_k), want) < 1e-5
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        out = R.prefill_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
        assert out.dtype == dtype and rel_err(out, want) < tol


def test_reference_prefill_is_causal_and_prefix_visible():
    # Changing a key after a query's position must not change that query's output;
    # changing a prefix key must.
    q, k, v, cu_q, cu_k = make_prefill("gqa4_long_prefix", seed=3)
    out = R.prefill_attention(q, k, v, cu_q, cu_k)
    k2, v2 = k.clone(), v.clone()
    last = int(cu_k[1]) - 1          # sequence 0's last key, seen only by its last query
    k2[last] += 5
    v2[last] += 5
    out2 = R.prefill_attention(q, k2, v2, cu_q, cu_k)
    n0 = int(cu_q[1])
    assert torch.equal(out[: n0 - 1], out2[: n0 - 1])
    assert not torch.allclose(out[n0 - 1], out2[n0 - 1])
    assert torch.equal(out[n0:], out2[n0:])          # other sequence untouched
    k3 = k.clone()
    k3[0] += 5                                       # first prefix key of sequence 0
    assert not torch.allclose(R.prefill_attention(q, k3, v, cu_q, cu_k)[0], out[0])


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_reference_decode_matches_naive(case):
    q, kc, vc, lens = make_decode(case, seed=4)
    out = R.decode_attention(q, kc, vc, lens, sm_scale=0.2)
    assert out.shape == q.shape
    assert rel_err(out, naive_decode(q, kc, vc, lens, 0.2)) < 1e-5


def make_row0_prefix(case: str, t: int, dtype=torch.float32, seed=0):
    """A decode case for ``row0_prefix_len``: rows ordered longest first (row 0, the
    engine's slot 0, holds the prefix), every row's own copy of the first keys different
    from row 0's, and the lengths ``L`` to try: inside a key block, every row's whole
    length, past some rows' lengths (never past row 0's)."""
    q, kc, vc, lens = make_decode_multi(case, t, dtype, seed)
    order = torch.argsort(lens, descending=True, stable=True)
    kc, vc, lens = kc[order], vc[order], lens[order]
    plens = sorted({1, int(lens.min()), max(1, int(lens[0]) // 2 + 3), int(lens[0])} - {0})
    return q, kc, vc, lens, [p for p in plens if p <= int(lens[0])]


def row0_copied(kc, vc, lens, p):
    """The caches with every row's first ``p`` positions copied from row 0 (what
    ``row0_prefix_len=p`` reads)."""
    kc, vc = kc.clone(), vc.clone()
    kc[1:, :, :p] = kc[:1, :, :p]
    vc[1:, :, :p] = vc[:1, :, :p]
    return kc, vc


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_reference_decode_row0_prefix(case, t):
    # keys below row0_prefix_len come from row 0 == the caches with row 0's copy everywhere
    q, kc, vc, lens, plens = make_row0_prefix(case, t, seed=seed_of("row0", case, t))
    for p in plens + [int(lens[0]) + 5]:
        out = R.decode_attention(q, kc, vc, lens, queries_per_seq=t, row0_prefix_len=torch.tensor([p], dtype=torch.int32))
        k2, v2 = row0_copied(kc, vc, lens, p)
        assert rel_err(out, R.decode_attention(q, k2, v2, lens, queries_per_seq=t)) < 1e-6, p
    zero = R.decode_attention(q, kc, vc, lens, queries_per_seq=t, row0_prefix_len=torch.zeros(1, dtype=torch.int32))
    assert torch.equal(zero, R.decode_attention(q, kc, vc, lens, queries_per_seq=t))
    if int(lens[1:].max()) > 0 and len(lens) > 1:      # the rows' own copies are not read
        assert not torch.equal(out, R.decode_attention(q, kc, vc, lens, queries_per_seq=t))


def test_decode_row0_prefix_bad_arguments():
    q, kc, vc, lens = make_decode("gqa2", seed=3)
    pk, pv, plen = make_prefix("short", kc.shape[1], kc.shape[3], seed=4)
    for fn in [R.decode_attention] + ([K.decode_attention] if K.HAS_TRITON else []):
        with pytest.raises(ValueError, match="row0_prefix_len.*prefix_k"):
            fn(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, row0_prefix_len=torch.tensor([2], dtype=torch.int32))
        with pytest.raises(ValueError, match="row0_prefix_len"):
            fn(q, kc, vc, lens, row0_prefix_len=torch.tensor([-1], dtype=torch.int32))
        with pytest.raises((TypeError, ValueError), match="row0_prefix_len"):
            fn(q, kc, vc, lens, row0_prefix_len=torch.tensor([2], dtype=torch.int64))
        with pytest.raises((TypeError, ValueError), match="row0_prefix_len"):
            fn(q, kc, vc, lens, row0_prefix_len=torch.tensor([2, 3], dtype=torch.int32))


def test_reference_decode_ignores_cache_past_seq_len():
    q, kc, vc, lens = make_decode("gqa2", seed=5)
    out = R.decode_attention(q, kc, vc, lens)
    kc2, vc2 = kc.clone(), vc.clone()
    for b, n in enumerate(lens.tolist()):
        kc2[b, :, n:] = float("nan")
        vc2[b, :, n:] = float("nan")
    assert torch.equal(R.decode_attention(q, kc2, vc2, lens), out)


def test_decode_equals_prefill_of_last_token():
    q, kc, vc, lens = make_decode("gqa4", seed=6)
    flat_k = torch.cat([kc[b, :, :n].transpose(0, 1) for b, n in enumerate(lens.tolist())])
    flat_v = torch.cat([vc[b, :, :n].transpose(0, 1) for b, n in enumerate(lens.tolist())])
    ones = cumsum0([1] * len(lens))
    via_prefill = R.prefill_attention(q, flat_k, flat_v, ones, cumsum0(lens.tolist()))
    assert rel_err(R.decode_attention(q, kc, vc, lens), via_prefill) < 1e-6


@pytest.mark.parametrize("t", [1, 2, 5])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_reference_decode_multi_token(case, t):
    # t new tokens per sequence == naive causal loops == prefill over each cache's keys
    q, kc, vc, lens = make_decode_multi(case, t, seed=seed_of("multi", case, t))
    out = R.decode_attention(q, kc, vc, lens, sm_scale=0.3, queries_per_seq=t)
    assert out.shape == q.shape
    assert rel_err(out, naive_decode_multi(q, kc, vc, lens, t, 0.3)) < 1e-5
    flat_k = torch.cat([kc[b, :, :n].transpose(0, 1) for b, n in enumerate(lens.tolist())])
    flat_v = torch.cat([vc[b, :, :n].transpose(0, 1) for b, n in enumerate(lens.tolist())])
    via_prefill = R.prefill_attention(q, flat_k, flat_v, cumsum0([t] * len(lens)), cumsum0(lens.tolist()), 0.3)
    assert rel_err(out, via_prefill) < 1e-6
    pk, pv, plen = make_prefix("long_partial", kc.shape[1], kc.shape[3], seed=seed_of("multi-prefix", case))
    out = R.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen, queries_per_seq=t)
    kc2, vc2, lens2 = prefix_copied(pk, pv, plen, kc, vc, lens)
    assert rel_err(out, naive_decode_multi(q, kc2, vc2, lens2, t, 1 / math.sqrt(q.shape[-1]))) < 1e-5


@pytest.mark.parametrize("prefix", list(PREFIX_CASES))
@pytest.mark.parametrize("case", ["gqa2", "gqa8", "gqa2_d24"])
def test_reference_decode_shared_prefix_equals_copied_prefix(case, prefix):
    q, kc, vc, lens = make_decode(case, seed=seed_of("ref-prefix", case, prefix))
    pk, pv, plen = make_prefix(prefix, kc.shape[1], kc.shape[3], seed=seed_of(prefix))
    out = R.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen)
    kc2, vc2, lens2 = prefix_copied(pk, pv, plen, kc, vc, lens)
    assert rel_err(out, naive_decode(q, kc2, vc2, lens2, 1 / math.sqrt(q.shape[-1]))) < 1e-5
    if pk.shape[1] == 0 or plen is not None and int(plen[0]) == 0:
        assert rel_err(out, R.decode_attention(q, kc, vc, lens)) < 1e-6


@pytest.mark.parametrize("prefix", list(PREFIX_CASES))
@pytest.mark.parametrize("case", ["gqa2_mixed", "gqa8_ragged", "empty_seq"])
def test_reference_prefill_shared_prefix_equals_copied_prefix(case, prefix):
    # the shared prefix sits before every sequence's own keys: the same as copying it there
    q, k, v, cu_q, cu_k = make_prefill(case, seed=seed_of("ref-prefix", case, prefix))
    pk, pv, plen = make_prefix(prefix, k.shape[1], k.shape[2], seed=seed_of(prefix))
    out = R.prefill_attention(q, k, v, cu_q, cu_k, prefix_k=pk, prefix_v=pv, prefix_len=plen)
    n = pk.shape[1] if plen is None else int(plen[0])
    ks, vs, lens_k = [], [], []
    for i in range(len(cu_k) - 1):
        a, b = int(cu_k[i]), int(cu_k[i + 1])
        ks += [pk[:, :n].transpose(0, 1), k[a:b]]
        vs += [pv[:, :n].transpose(0, 1), v[a:b]]
        lens_k.append(n + b - a)
    want = naive_prefill(q, torch.cat(ks), torch.cat(vs), cu_q, cumsum0(lens_k), 1 / math.sqrt(q.shape[-1]))
    assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 1000])
def test_reference_bitmask_matches_naive(vocab):
    bm = make_bitmask(5, vocab, seed=vocab, extra_words=2)
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g)
    special_rows(logits, bm)
    allowed = naive_allowed(bm, vocab)
    assert torch.equal(R.bitmask_to_bool(bm, vocab), allowed)
    applied = logits.clone()
    assert R.apply_bitmask_(applied, bm) is applied
    assert torch.equal(applied, torch.where(allowed, logits, float("-inf")))
    assert torch.equal(R.masked_argmax(logits, bm), naive_argmax(logits, bm))


def test_reference_argmax_edge_rows():
    vocab = 70
    logits = torch.randn(4, vocab)
    bm = make_bitmask(4, vocab)
    special_rows(logits, bm)
    got = R.masked_argmax(logits, bm).tolist()
    first_allowed_row2 = int(naive_allowed(bm, vocab)[2].nonzero()[0])
    assert got == [-1, vocab - 1, first_allowed_row2, vocab // 2]


def chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson goodness-of-fit at significance ~1e-5 (Wilson–Hilferty quantile), and no
    sample where the probability is zero."""
    n = counts.sum()
    keep = probs > 0
    expected = probs[keep] * n
    stat = (((counts[keep] - expected) ** 2) / expected).sum().item()
    df = int(keep.sum()) - 1
    z = 4.27
    quantile = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return bool((counts[~keep] == 0).all()) and stat < quantile


def test_reference_sample_distribution():
    vocab, rows = 40, 20000
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, vocab, generator=g) * 2
    bm = make_bitmask(1, vocab, seed=8)
    allowed = R.bitmask_to_bool(bm, vocab)[0]
    for temperature in (1.0, 0.5, 2.0):
        picks = R.masked_sample(base.expand(rows, vocab), bm.expand(rows, -1).contiguous(),
                                temperature=temperature, generator=g)
        probs = torch.softmax(base[0].masked_fill(~allowed, float("-inf")) / temperature, 0)
        assert chi2_ok(torch.bincount(picks, minlength=vocab).double(), probs.double())


def test_reference_sample_top_p():
    vocab, rows = 30, 20000
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1, vocab, generator=g) * 2
    bm = torch.full((1, 1), -1, dtype=torch.int32)
    probs = torch.softmax(base[0], 0)
    order = probs.argsort(descending=True)
    top_p = float(probs[order[:4]].sum()) - 1e-4     # nucleus: exactly the best 4 tokens
    picks = R.masked_sample(base.expand(rows, vocab), bm.expand(rows, -1).contiguous(),
                            top_p=top_p, generator=g)
    nucleus = torch.zeros(vocab, dtype=torch.double)
    nucleus[order[:4]] = probs[order[:4]].double()
    assert chi2_ok(torch.bincount(picks, minlength=vocab).double(), nucleus / nucleus.sum())


def test_reference_sample_edge_cases():
    vocab = 70
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(6, vocab, generator=g)
    bm = make_bitmask(6, vocab, seed=11)
    special_rows(logits, bm)
    greedy = R.masked_argmax(logits, bm)
    assert torch.equal(R.masked_sample(logits, bm, temperature=0.0), greedy)
    rows = [0, 1, 2, 4, 5]           # row 3 has two tied best tokens
    assert torch.equal(R.masked_sample(logits, bm, top_p=1e-6, generator=g)[rows], greedy[rows])
    assert R.masked_sample(logits, bm, top_p=1e-6, generator=g)[3] in (vocab // 2, vocab - 1)
    allowed = naive_allowed(bm, vocab)
    for _ in range(20):
        picks = R.masked_sample(logits, bm, temperature=5.0, generator=g)
        assert picks[0] == -1 and picks[1] == vocab - 1 and picks[2] == greedy[2]
        assert all(allowed[r, int(picks[r])] for r in range(1, 6))


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

def _prefill_args():
    q, k, v, cu_q, cu_k = make_prefill("gqa2_mixed")
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def _decode_args():
    q, kc, vc, lens = make_decode("gqa2")
    return dict(q=q, k_cache=kc, v_cache=vc, seq_lens=lens)


def _bitmask_args():
    return dict(logits=torch.randn(3, 50), bitmask=make_bitmask(3, 50))


PREFILL_BAD = [
    ("q", lambda a: a["q"].numpy(), TypeError, "q must be a torch.Tensor"),
    ("q", lambda a: a["q"][0], ValueError, "q must have 3 dimensions"),
    ("q", lambda a: a["q"].double(), TypeError, "q must be float16, bfloat16 or float32"),
    ("k", lambda a: a["k"].half(), TypeError, "share one dtype"),
    ("v", lambda a: a["v"][:, :1], ValueError, "k and v must have the same shape"),
    ("q", lambda a: a["q"][:, :3], ValueError, "multiple of the number of key/value heads"),
    ("q", lambda a: a["q"][:, :, :8], ValueError, "same head dim"),
    ("cu_seqlens_q", lambda a: a["cu_seqlens_q"].long(), TypeError, "cu_seqlens_q must be int32"),
    ("cu_seqlens_k", lambda a: a["cu_seqlens_k"][:-1], ValueError, "same length"),
    ("cu_seqlens_q", lambda a: a["cu_seqlens_q"] + 1, ValueError, "cu_seqlens_q[0] must be 0"),
    ("cu_seqlens_k", lambda a: torch.tensor([0, 50, 40, 67], dtype=torch.int32), ValueError,
     "cu_seqlens_k must be non-decreasing"),
    ("cu_seqlens_q", lambda a: torch.tensor([0, 5, 6, 24], dtype=torch.int32), ValueError,
     "cu_seqlens_q[-1] must equal q.shape[0]"),
    ("cu_seqlens_q", lambda a: torch.tensor([0, 5, 23, 25], dtype=torch.int32), ValueError,
     "more queries than keys"),
    ("sm_scale", lambda a: -1.0, ValueError, "sm_scale must be a positive"),
    ("sm_scale", lambda a: "0.1", TypeError, "sm_scale must be a float"),
]

DECODE_BAD = [
    ("q", lambda a: a["q"][None], ValueError, "q must have 3 dimensions"),
    ("k_cache", lambda a: a["k_cache"][0], ValueError, "k_cache must have 4 dimensions"),
    ("v_cache", lambda a: a["v_cache"].half(), TypeError, "share one dtype"),
    ("q", lambda a: a["q"][:2], ValueError, "k_cache has batch 4 but q has batch 2"),
    ("q", lambda a: a["q"][:, :3], ValueError, "multiple of the number of key/value heads"),
    ("seq_lens", lambda a: a["seq_lens"].long(), TypeError, "seq_lens must be int32"),
    ("seq_lens", lambda a: a["seq_lens"][:3], ValueError, "seq_lens must have 4 elements"),
    ("seq_lens", lambda a: torch.tensor([0, 1, 2, 3], dtype=torch.int32), ValueError, "seq_lens must lie in"),
    ("seq_lens", lambda a: torch.tensor([68, 1, 2, 3], dtype=torch.int32), ValueError, "seq_lens must lie in"),
    ("sm_scale", lambda a: float("nan"), ValueError, "sm_scale must be a positive"),
    ("queries_per_seq", lambda a: 0, ValueError, "queries_per_seq must be a positive int"),
    ("queries_per_seq", lambda a: True, ValueError, "queries_per_seq must be a positive int"),
    ("queries_per_seq", lambda a: 2.0, ValueError, "queries_per_seq must be a positive int"),
    ("queries_per_seq", lambda a: 3, ValueError, "queries_per_seq=3 rows per sequence: 12 rows"),
]

def _with_prefix(args, cap=6):
    hkv, d = (args["k_cache"].shape[1], args["k_cache"].shape[3]) if "k_cache" in args else args["k"].shape[1:]
    return dict(args, prefix_k=torch.randn(hkv, cap, d), prefix_v=torch.randn(hkv, cap, d))


PREFIX_BAD = [
    ("prefix_v", lambda a: None, ValueError, "prefix_k and prefix_v must be given together"),
    ("prefix_k", lambda a: a["prefix_k"][0], ValueError, "prefix_k must have 3 dimensions"),
    ("prefix_v", lambda a: a["prefix_v"].half(), TypeError, "prefix_k and prefix_v must have q's dtype"),
    ("prefix_v", lambda a: a["prefix_v"][:, :3], ValueError, "prefix_k and prefix_v must have the same shape"),
    ("prefix_k", lambda a: torch.cat([a["prefix_k"]] * 2), ValueError, "prefix_k must be [Hkv="),
    ("prefix_len", lambda a: torch.tensor([2], dtype=torch.int64), TypeError, "prefix_len must be int32"),
    ("prefix_len", lambda a: torch.tensor([1, 2], dtype=torch.int32), ValueError, "prefix_len must have 1 elements"),
    ("prefix_len", lambda a: torch.tensor([7], dtype=torch.int32), ValueError, "prefix_len must lie in [0, 6]"),
    ("prefix_len", lambda a: torch.tensor([-1], dtype=torch.int32), ValueError, "prefix_len must lie in [0, 6]"),
]


BITMASK_BAD = [
    ("logits", lambda a: a["logits"][0], ValueError, "logits must have 2 dimensions"),
    ("logits", lambda a: a["logits"].long(), TypeError, "logits must be float16"),
    ("bitmask", lambda a: a["bitmask"].long(), TypeError, "bitmask must be int32"),
    ("bitmask", lambda a: a["bitmask"][:, :1], ValueError, "ceil(V/32) = 2"),
    ("bitmask", lambda a: a["bitmask"][:2], ValueError, "bitmask has 2 rows"),
    ("bitmask", lambda a: [1, 2], TypeError, "bitmask must be a torch.Tensor"),
]

SAMPLING_BAD = [
    ("temperature", -0.5, ValueError, "temperature must be"),
    ("temperature", "hot", TypeError, "temperature must be a float"),
    ("top_p", 0.0, ValueError, "top_p must lie in"),
    ("top_p", 1.5, ValueError, "top_p must lie in"),
]


def _impl(where: str, module: str):
    if where == "reference":
        return R
    if where == "public":
        return K
    if not K.HAS_TRITON:
        pytest.skip("triton is not installed")
    import importlib
    return importlib.import_module(f"qpfast.kernels.{module}")   # validation runs before any launch


IMPLS = ["reference", "public", "triton"]


@pytest.mark.parametrize("where", IMPLS)
@pytest.mark.parametrize("arg,change,exc,msg", PREFILL_BAD, ids=[b[3][:30] for b in PREFILL_BAD])
def test_prefill_validation(where, arg, change, exc, msg):
    args = _prefill_args()
    args[arg] = change(args)
    with pytest.raises(exc, match=re.escape(msg)):
        _impl(where, "prefill").prefill_attention(**args)


@pytest.mark.parametrize("where", IMPLS)
@pytest.mark.parametrize("arg,change,exc,msg", DECODE_BAD, ids=[b[3][:30] for b in DECODE_BAD])
def test_decode_validation(where, arg, change, exc, msg):
    args = _decode_args()
    args[arg] = change(args)
    with pytest.raises(exc, match=re.escape(msg)):
        _impl(where, "decode").decode_attention(**args)


@pytest.mark.parametrize("where", IMPLS)
@pytest.mark.parametrize("fn", ["prefill", "decode"])
@pytest.mark.parametrize("arg,change,exc,msg", PREFIX_BAD, ids=[b[3][:40] for b in PREFIX_BAD])
def test_shared_prefix_validation(where, fn, arg, change, exc, msg):
    args = _with_prefix(_prefill_args() if fn == "prefill" else _decode_args())
    args[arg] = change(args)
    with pytest.raises(exc, match=re.escape(msg)):
        getattr(_impl(where, fn), f"{fn}_attention")(**args)


@pytest.mark.parametrize("where", IMPLS)
def test_decode_multi_token_needs_that_many_keys(where):
    args = _decode_args()                  # lengths [67, 1, 33, 64]
    args["q"] = torch.cat([args["q"]] * 2)
    with pytest.raises(ValueError, match=re.escape("seq_lens must lie in [2, max_len=67] (queries_per_seq)")):
        _impl(where, "decode").decode_attention(**args, queries_per_seq=2)


@needs_triton
def test_triton_decode_multi_token_tile_limit():
    # at most MAX_TILE_ROWS query rows (new tokens x heads of a KV head) a program
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode_multi("gqa8", 9)          # 8 heads a KV head x 9 tokens = 72 rows
    with pytest.raises(ValueError, match="queries_per_seq=9: the Triton decode kernel takes at most 64"):
        decode.decode_attention(q, kc, vc, lens, queries_per_seq=9)


def test_prefix_len_needs_a_prefix():
    with pytest.raises(ValueError, match="prefix_len needs prefix_k and prefix_v"):
        K.decode_attention(**_decode_args(), prefix_len=torch.tensor([1], dtype=torch.int32))


@pytest.mark.parametrize("where", IMPLS)
@pytest.mark.parametrize("fn", ["apply_bitmask_", "masked_argmax", "masked_sample"])
@pytest.mark.parametrize("arg,change,exc,msg", BITMASK_BAD, ids=[b[3][:30] for b in BITMASK_BAD])
def test_bitmask_validation(where, fn, arg, change, exc, msg):
    args = _bitmask_args()
    args[arg] = change(args)
    with pytest.raises(exc, match=re.escape(msg)):
        getattr(_impl(where, "bitmask"), fn)(**args)


@pytest.mark.parametrize("where", IMPLS)
@pytest.mark.parametrize("arg,value,exc,msg", SAMPLING_BAD)
def test_sampling_validation(where, arg, value, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        _impl(where, "bitmask").masked_sample(**_bitmask_args(), **{arg: value})


def test_devices_must_match():
    args = _prefill_args()
    args["k"] = args["k"].to("meta")
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        K.prefill_attention(**args)


# --------------------------------------------------------------------------------------
# heuristics and dispatch
# --------------------------------------------------------------------------------------

@needs_triton
def test_cut_and_fill_count():
    from qpfast.kernels.common import cut, fill_count
    assert cut(600, 5, 64) == (128, 5)
    assert cut(600, 3, 64) == (256, 3)
    assert cut(151936, 8, 1024) == (19456, 8)
    assert cut(100, 7, 64) == (64, 2)                      # rounding the length up leaves fewer runs
    for n, parts, block in [(1, 4, 16), (999, 7, 64), (5, 1, 8)]:
        length, runs = cut(n, parts, block)
        assert length % block == 0 and runs * length >= n > (runs - 1) * length and runs <= parts
    assert fill_count(6, 132, 32) == 32 and fill_count(6, 132, 5) == 5 and fill_count(300, 132, 9) == 1


def test_prefill_num_splits():
    from qpfast.kernels.prefill import MAX_SPLITS, MIN_SPLIT_KEYS, prefill_num_splits, split_plan
    assert prefill_num_splits(8, 552, 64, 132) == 9              # one query, 512+40, 16:2: a key block each
    assert prefill_num_splits(14, 552, 64, 132) == 9             # four queries, 8:1 heads
    assert prefill_num_splits(28, 552, 64, 132) == 1             # a quarter of the GPU busy: no split
    assert prefill_num_splits(4, MIN_SPLIT_KEYS, 64, 132) == 1   # short prefix: no split
    assert prefill_num_splits(1, 100_000, 64, 132) == MAX_SPLITS
    assert prefill_num_splits(2, 4096, 64, 1) == 1               # the interpreter: no split
    assert split_plan(552, 1, 9, 64) == (64, 9)
    assert split_plan(2208, 4, 9, 64) == (128, 18)                # the grid covers a 2208-key sequence
    assert split_plan(100, 1, 3, 16) == (48, 3)
    for total_k, seqs, want, bn in [(1, 1, 4, 16), (999, 7, 5, 64), (100_000, 3, 32, 64)]:
        split_len, grid = split_plan(total_k, seqs, want, bn)
        assert split_len % bn == 0 and grid * split_len >= total_k and grid <= MAX_SPLITS


def test_decode_num_splits():
    from qpfast.kernels.decode import MAX_SPLITS, MIN_KEYS_PER_SPLIT, decode_num_splits
    assert decode_num_splits(64, 8, 512, 132) == 1           # 512 programs fill an H100
    assert decode_num_splits(1, 8, 512, 132) == 512 // MIN_KEYS_PER_SPLIT
    assert decode_num_splits(1, 2, 32768, 132) == MAX_SPLITS
    assert decode_num_splits(4, 8, 4096, 132) == 4           # ~1 program per SM
    assert decode_num_splits(32, 2, 600, 132) == 2           # 64 programs: two splits each
    assert decode_num_splits(66, 1, 600, 132) == 2
    assert decode_num_splits(67, 1, 600, 132) == 1           # over half the SMs busy: no merge pass
    assert decode_num_splits(64, 2, 600, 132) == 1
    assert decode_num_splits(2, 8, 100, 132) == 1            # too short to split
    assert decode_num_splits(1, 2, 160, 132) == 1            # a QP cache of 160 keys: the merge costs more
    assert decode_num_splits(3, 2, 4096, 1) == 1


@needs_triton
@pytest.mark.parametrize("rows", [1, 5, 16, 64, 200, 256, 1000])
@pytest.mark.parametrize("hkv,group", [(8, 2), (2, 8), (1, 8), (4, 1), (2, 16)])
@pytest.mark.parametrize("cap", [1, 100, 389, 512])
def test_prefix_plan(rows, hkv, group, cap):
    from qpfast.kernels.cascade import MAX_TILE_ROWS, MIN_PREFIX_SPLIT, prefix_num_splits, prefix_plan
    from qpfast.kernels.common import cdiv
    cfg, split_len, splits = prefix_plan(rows, hkv, group, 128, cap, 132)
    tile = cfg["BLOCK_M"] * cfg["GROUP_PAD"]
    assert cfg["GROUP_PAD"] >= group and 16 <= tile and (tile <= MAX_TILE_ROWS or cfg["BLOCK_M"] == 1)
    assert split_len % cfg["BLOCK_N"] == 0 and splits * split_len >= cap > (splits - 1) * split_len
    programs = cdiv(rows, cfg["BLOCK_M"]) * hkv
    assert splits <= prefix_num_splits(programs, cap, 132)
    if 2 * programs >= 132 or cap <= MIN_PREFIX_SPLIT:
        assert splits == 1                                # the batch fills the GPU, or nothing to cut
    # overrides are taken as given (tests, tuning)
    cfg2, split_len2, splits2 = prefix_plan(rows, hkv, group, 128, cap, 132, num_splits=3, block_m=2, block_n=16)
    assert cfg2["BLOCK_M"] == 2 and cfg2["BLOCK_N"] == 16 and split_len2 % 16 == 0
    assert splits2 == min(3, cdiv(cap, 16))


def test_prefix_pairs_cover_every_case_and_prefix():
    assert {p for _, p in DECODE_PREFIX_PAIRS} == set(PREFIX_CASES) == {p for _, p in PREFILL_PREFIX_PAIRS}
    assert {c for c, _ in DECODE_PREFIX_PAIRS} == set(DECODE_CASES)
    assert {c for c, _ in PREFILL_PREFIX_PAIRS} <= set(PREFILL_CASES)


def test_inline_prefix_rule():
    from qpfast.kernels.decode import inline_prefix
    assert inline_prefix(16, 8, 132) and inline_prefix(1, 8, 132) and inline_prefix(64, 2, 132)
    assert not inline_prefix(17, 8, 132) and not inline_prefix(64, 8, 132) and not inline_prefix(3, 2, 1)


def test_prefix_num_splits():
    from qpfast.kernels.cascade import prefix_num_splits
    assert prefix_num_splits(8, 512, 132) == 4               # a decode batch of 16 on 8 KV heads
    assert prefix_num_splits(8, 389, 132) == 4
    assert prefix_num_splits(64, 512, 132) == 3              # ~1 program per SM
    assert prefix_num_splits(66, 512, 132) == 1              # half the SMs busy: no splits
    assert prefix_num_splits(1, 100, 132) == 1               # under one split's worth of keys
    assert prefix_num_splits(3, 512, 1) == 1                 # the interpreter: one "SM"


@needs_triton
def test_engine_graph_tile_limit_is_the_kernels():
    from qpfast.engine.cuda_graph import TILE_ROWS
    from qpfast.kernels.decode import MAX_TILE_ROWS
    assert TILE_ROWS == MAX_TILE_ROWS


def test_decode_launch():
    from qpfast.kernels.decode import decode_launch
    assert decode_launch(128, 132, 128) == (64, 3, 4)         # few programs: loads run two blocks ahead
    assert decode_launch(264, 132, 128) == (64, 3, 4)
    assert decode_launch(265, 132, 128) == (64, 2, 4)         # many: shared memory for more programs
    assert decode_launch(4, 132, 256)[0] == 32                # wide heads: smaller key blocks
    assert decode_launch(128, 132, 128, 32)[2] == 8           # tiles of several tokens' rows: 8 warps
    assert decode_launch(128, 132, 128, 16)[2] == 4


@needs_triton
def test_pick_num_chunks():
    from qpfast.kernels.bitmask import MAX_CHUNKS, pick_num_chunks
    assert pick_num_chunks(256, 151936, 2048, 132) == 1       # the rows fill an H100
    assert pick_num_chunks(1, 151936, 2048, 132) == 75        # one 2048-token block each
    assert pick_num_chunks(1, 151936, 512, 132) == MAX_CHUNKS
    assert pick_num_chunks(16, 151936, 2048, 132) == 17       # ~2 programs per SM
    assert pick_num_chunks(4, 1000, 2048, 132) == 1           # one block: nothing to split
    assert pick_num_chunks(3, 151936, 2048, 1) == 1


@needs_triton
@pytest.mark.parametrize("group", [1, 2, 3, 4, 8, 16, 32])
@pytest.mark.parametrize("mean_q", [1, 8, 40, 300])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_prefill_config_tiles(group, mean_q, head_dim):
    from qpfast.kernels.prefill import prefill_config
    cfg = prefill_config(mean_q * 4, 4, group, head_dim)
    rows = cfg["BLOCK_M"] * cfg["GROUP_PAD"]
    assert cfg["GROUP_PAD"] >= group and rows >= 16 and rows & (rows - 1) == 0
    assert rows <= (128 if head_dim <= 128 else 64) or cfg["BLOCK_M"] == 1
    assert cfg["BLOCK_D"] >= head_dim


@pytest.mark.parametrize("script,args", [("bench_kernels.py", ["--sections", "cascade,decode"]),
                                         ("bench_kernels.py", ["--sections", "decode,decode_tune", "--min-mb", "15",
                                                               "--max-mb", "25", "--tune-pdl", "--quick"]),
                                         ("bench_cascade.py", ["--quick"])])
def test_gpu_benchmark_scripts_skip_cleanly_without_cuda(tmp_path, script, args):
    # the device session runs them as they are: at least they must import and parse their
    # arguments here (bench_cascade.py imports bench_kernels.py's helpers)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the scripts would run the benchmark")
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, os.path.join(bench, script), *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipped" in res.stdout
    if script == "bench_kernels.py":
        assert "CUDA is not available" in out.read_text()


def test_decode_benchmark_size_window_picks_from_the_whole_grid():
    # the device plan's window for decode >= 60% of HBM: the six 20-22 MB shapes of run 9's table
    from bench_scripts import bench_module
    bk = bench_module("bench_kernels")
    six = bk.decode_shapes(False, 15e6, 25e6)
    assert six == [(16, 2, 32, 600), (16, 2, 128, 160), (8, 1, 64, 600), (8, 1, 256, 160), (16, 8, 8, 600),
                   (16, 8, 32, 160)]
    assert all(19.5e6 < bk._decode_bytes(*s) < 22.1e6 for s in six)
    assert len(bk.decode_shapes(False)) == 36 and len(bk.decode_shapes(True)) == 6


def test_cpu_uses_reference_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.zeros(1, 1, 16)
    assert K.backend(q) == "reference"
    args = _prefill_args()
    assert torch.equal(K.prefill_attention(**args), R.prefill_attention(**args))
    d = _decode_args()
    assert torch.equal(K.decode_attention(**d), R.decode_attention(**d))


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, qpfast.kernels as K\n"
        "assert not K.HAS_TRITON and K.backend(torch.zeros(1)) == 'reference'\n"
        "q = torch.randn(3, 2, 16); cu = torch.tensor([0, 3], dtype=torch.int32)\n"
        "o = K.prefill_attention(q, q, q, cu, cu)\n"
        "lg = torch.randn(2, 40); bm = torch.full((2, 2), -1, dtype=torch.int32)\n"
        "assert K.masked_argmax(lg, bm).tolist() == lg.argmax(1).tolist()\n"
        "print('ok', tuple(o.shape))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok (3, 2, 16)"


def interp_shards(nodeids: list[str], cores: int | None) -> list[list[str]]:
    """The interpreter tests cut into one shard per core (at most 2: CI's machines have 2),
    dealt out in turn so that each gets its share of every parametrized test's cases."""
    n = max(1, min(2, cores or 1, len(nodeids)))
    return [nodeids[i::n] for i in range(n)]


@pytest.mark.skipif(INTERP, reason="the interpreter tests run in this process")
@needs_triton
def test_kernel_suite_in_subprocess(request):
    """Run every ``test_interp_*`` test in fresh processes with TRITON_INTERPRET=1: one per
    core, in parallel (the interpreter is single-threaded Python; this process only waits)."""
    expected = [it.nodeid for it in request.session.items
                if it.name.startswith("test_interp_") and it.path == request.node.path]
    if not expected:
        pytest.skip("no interpreter tests selected")
    markexpr = request.config.getoption("markexpr")
    shards = interp_shards(expected, os.cpu_count())
    env = dict(os.environ, TRITON_INTERPRET="1")
    if len(shards) > 1:                  # one torch thread a process: the shards take the cores
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    for shard in shards:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shard]
        if markexpr:                     # the same selection as this run (e.g. -m slow)
            cmd += ["-m", markexpr]
        procs.append(subprocess.Popen(cmd, cwd=request.config.rootpath, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for shard, p, (stdout, stderr) in zip(shards, procs, outs):
        tail = (stdout + stderr)[-6000:]
        assert p.returncode == 0, tail
        m = re.search(r"(\d+) passed", stdout)
        assert m and int(m.group(1)) == len(shard), f"expected {len(shard)} passed:\n{tail}"
        assert " skipped" not in stdout, tail


def test_the_subprocess_runner_never_runs_inside_the_interpreter():
    # run in a TRITON_INTERPRET=1 process, it would start the interpreter suite again
    reasons = [m.kwargs.get("reason", "") for m in getattr(test_kernel_suite_in_subprocess, "pytestmark", [])
               if m.name == "skipif"]
    assert "the interpreter tests run in this process" in reasons and "triton is not installed" in reasons
    assert not hasattr(interp_shards, "pytestmark")


def test_shards_of_the_interpreter_suite_cover_every_test_once():
    ids = [f"t[{i}]" for i in range(7)]
    assert interp_shards(ids, 2) == [ids[0::2], ids[1::2]]
    assert interp_shards(ids, 16) == interp_shards(ids, 2)
    assert interp_shards(ids, 1) == interp_shards(ids, None) == [ids]
    assert interp_shards(ids[:1], 2) == [ids[:1]]
    for cores in (1, 2, 3):
        got = sorted(i for shard in interp_shards(ids, cores) for i in shard)
        assert got == sorted(ids)


# --------------------------------------------------------------------------------------
# Triton kernels in the interpreter, against the references
# --------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16]
DT_IDS = ["fp32", "fp16"]


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("blocks", ["auto", "small", "split"])
@pytest.mark.parametrize("case", list(PREFILL_CASES))
def test_interp_prefill(case, blocks, dtype):
    from qpfast.kernels import prefill
    q, k, v, cu_q, cu_k = make_prefill(case, dtype, seed=seed_of(case, blocks, str(dtype)))
    group_pad = prefill.prefill_config(q.shape[0], len(cu_q) - 1, q.shape[1] // k.shape[1],
                                       q.shape[2])["GROUP_PAD"]
    # "small": several tiles per sequence and several key blocks per tile; "split": the
    # same cut into key splits (rows whose visible keys end before a split, splits past a
    # short sequence's end)
    extra = {} if blocks == "auto" else dict(block_m=max(1, 16 // group_pad), block_n=16)
    if blocks == "split":
        extra["num_splits"] = 4
    out = torch.full_like(q, float("nan"))
    assert prefill.prefill_attention(q, k, v, cu_q, cu_k, out=out, **extra) is out
    assert rel_err(out, R.prefill_attention(q, k, v, cu_q, cu_k)) < TOL[dtype]


@interp_only
def test_interp_prefill_strided_inputs_and_dispatch():
    from qpfast.kernels import prefill
    q, k, v, cu_q, cu_k = make_prefill("gqa8_ragged", seed=12)
    # q/k/v as views into a fused qkv projection: row strides larger than the head block
    fused = torch.cat([q.reshape(q.shape[0], -1), torch.zeros(q.shape[0], 8)], dim=1)
    qv = fused[:, : q.numel() // q.shape[0]].view(q.shape)
    assert not qv.is_contiguous()
    assert K.backend(qv) == "interpreter"
    out = K.prefill_attention(qv, k, v, cu_q, cu_k, sm_scale=0.25)
    assert rel_err(out, R.prefill_attention(q, k, v, cu_q, cu_k, sm_scale=0.25)) < 1e-5
    poisoned = torch.full_like(q, float("nan"))
    prefill.prefill_attention(qv, k, v, cu_q, cu_k, sm_scale=0.25, out=poisoned)
    assert torch.equal(poisoned, out)


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("splits", [1, 3, 8])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_interp_decode(case, splits, dtype):
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode(case, dtype, seed=seed_of(case, splits, str(dtype)))
    out = torch.full_like(q, float("nan"))
    decode.decode_attention(q, kc, vc, lens, out=out, num_splits=splits, block_n=16)
    assert rel_err(out, R.decode_attention(q, kc, vc, lens)) < TOL[dtype]


@interp_only
def test_interp_decode_launch_overrides():
    # the tuning knobs change how the kernel is launched, never what it computes
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode("gqa2", torch.float16, seed=14)
    ref = R.decode_attention(q, kc, vc, lens)
    for kw in (dict(block_n=32, num_stages=4), dict(block_n=64, num_warps=8, num_splits=2), dict(num_stages=3)):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, out=out, **kw)
        assert rel_err(out, ref) < TOL[torch.float16], kw


def poison_past_lens(kc, vc, lens):
    """Copies of the caches with NaN at every position past a sequence's length: a kernel
    that lets them into its sums (rather than masking them) returns NaN."""
    kc, vc = kc.clone(), vc.clone()
    for i, n in enumerate(lens.tolist()):
        kc[i, :, n:] = float("nan")
        vc[i, :, n:] = float("nan")
    return kc, vc


@interp_only
@pytest.mark.parametrize("case", ["gqa8", "gqa2_d24"])
def test_interp_decode_fused_merge(case):
    # the split merge done by the last split of each row (atomic counters; the default, also
    # run by test_interp_decode) or by a second kernel, on caches holding NaN past every
    # length; the counters are back at zero after
    from qpfast.kernels import decode
    dtype = torch.float16
    q, kc, vc, lens = make_decode(case, dtype, seed=seed_of("fused", case))
    ref = R.decode_attention(q, kc, vc, lens)
    kc, vc = poison_past_lens(kc, vc, lens)
    for kw in (dict(num_splits=3, fused_merge=True), dict(num_splits=2, fused_merge=False), dict(num_splits=1)):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, out=out, block_n=16, **kw)
        assert rel_err(out, ref) < TOL[dtype], kw
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


@interp_only
def test_interp_decode_fused_merge_counter_limit(monkeypatch):
    # more rows than counters: the default falls back to the merge kernel, an explicit
    # fused_merge=True says why it cannot
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode("gqa2", seed=15)
    monkeypatch.setattr(decode, "COUNTER_SLOTS", 1)
    out = decode.decode_attention(q, kc, vc, lens, num_splits=2)
    assert rel_err(out, R.decode_attention(q, kc, vc, lens)) < TOL[torch.float32]
    with pytest.raises(ValueError, match="fused_merge"):
        decode.decode_attention(q, kc, vc, lens, num_splits=2, fused_merge=True)


@interp_only
def test_interp_decode_wide_group_one_token():
    # one token per sequence takes any number of query heads per KV head (the tile limit is
    # for several tokens); 80 heads on one KV head, unsplit and split
    from qpfast.kernels import decode
    g = torch.Generator().manual_seed(23)
    q, kc = torch.randn(2, 80, 16, generator=g), torch.randn(2, 1, 20, 16, generator=g)
    vc, lens = torch.randn(2, 1, 20, 16, generator=g), torch.tensor([20, 3], dtype=torch.int32)
    for splits in (1, 2):
        out = decode.decode_attention(q, kc, vc, lens, num_splits=splits, block_n=16)
        assert rel_err(out, R.decode_attention(q, kc, vc, lens)) < 1e-5, splits


@interp_only
def test_interp_decode_cache_views_and_dispatch():
    # caches as views of a bigger preallocated cache (batch and length sliced), the public
    # entry point with its own split heuristic
    q, kc, vc, lens = make_decode("gqa4", seed=13)
    big_k = torch.randn(5, kc.shape[1], 200, kc.shape[3])
    big_v = torch.randn_like(big_k)
    big_k[1:3, :, :130] = kc
    big_v[1:3, :, :130] = vc
    kv, vv = big_k[1:3, :, :130], big_v[1:3, :, :130]
    out = K.decode_attention(q, kv, vv, lens)
    assert rel_err(out, R.decode_attention(q, kc, vc, lens)) < 1e-5
    from qpfast.kernels import decode
    poisoned = torch.full_like(q, float("nan"))
    decode.decode_attention(q, kv, vv, lens, out=poisoned, num_splits=2)
    assert rel_err(poisoned, out) < 1e-5


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case,prefix", DECODE_PREFIX_PAIRS)
def test_interp_decode_shared_prefix(case, prefix, dtype):
    # cascade decode: the prefix kernel's partials (in one or several key splits, some past
    # the prefix's end) folded in by the decode kernel itself (one own split), by the last
    # own split (fused merge) or by the merge kernel; caches and prefix NaN past their lengths
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode(case, dtype, seed=seed_of("prefix", case, prefix, str(dtype)))
    pk, pv, plen = make_prefix(prefix, kc.shape[1], kc.shape[3], dtype, seed=seed_of(prefix, case))
    ref = R.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen)
    kc, vc = poison_past_lens(kc, vc, lens)
    # ... or the prefix read by the decode kernel itself, as every row's first keys (small
    # batches), unsplit or split with the fused merge (the merge kernel: back to the two kernels)
    for kw in (dict(num_splits=1, prefix_splits=1), dict(num_splits=1, prefix_splits=3),
               dict(num_splits=3, prefix_splits=2), dict(num_splits=2, prefix_splits=1, fused_merge=False),
               dict(num_splits=1, prefix_inline=True), dict(num_splits=3, prefix_inline=True),
               dict(num_splits=2, prefix_inline=True, fused_merge=False)):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen, out=out,
                                block_n=16, **kw)
        assert rel_err(out, ref) < TOL[dtype], kw
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case,t", [("mha", 1), ("gqa2", 3), ("gqa4", 1), ("gqa8", 3), ("gqa2_d24", 2)])
def test_interp_decode_row0_prefix(case, t, dtype):
    # keys below row0_prefix_len from row 0 (the cut inside a key block, at a split, past
    # some rows' lengths), unsplit and split, fused merge or not; caches NaN past every
    # length (row 0's copy is read only below its own length)
    from qpfast.kernels import decode
    q, kc, vc, lens, plens = make_row0_prefix(case, t, dtype, seed=seed_of("row0", case, t, str(dtype)))
    kcp, vcp = poison_past_lens(kc, vc, lens)
    for p in plens:
        plen = torch.tensor([p], dtype=torch.int32)
        ref = R.decode_attention(q, kc, vc, lens, queries_per_seq=t, row0_prefix_len=plen)
        for kw in (dict(num_splits=1), dict(num_splits=3) if p % 2 else dict(num_splits=2, fused_merge=False)):
            out = torch.full_like(q, float("nan"))
            decode.decode_attention(q, kcp, vcp, lens, queries_per_seq=t, row0_prefix_len=plen, out=out,
                                    block_n=16, **kw)
            assert rel_err(out, ref) < TOL[dtype], (p, kw)
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


# (case, new tokens per sequence, prefix): every case shape, tiles of 16 / 32 / 64 rows
DECODE_MULTI_CASES = [("mha", 3, "short"), ("gqa2", 8, None), ("gqa4", 5, "long_partial"), ("gqa8", 4, "len_zero"),
                      ("gqa2_d24", 2, None)]


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case,t,prefix", DECODE_MULTI_CASES)
def test_interp_decode_multi_token(case, t, prefix, dtype):
    # several new tokens per sequence, causal among them: unsplit, split (a later split is
    # seen by none of a sequence's first tokens) with the fused merge or the merge kernel,
    # with and without a shared prefix; caches NaN past every length
    from qpfast.kernels import decode
    q, kc, vc, lens = make_decode_multi(case, t, dtype, seed=seed_of("multi", case, t, str(dtype)))
    pre = {}
    if prefix is not None:
        pk, pv, plen = make_prefix(prefix, kc.shape[1], kc.shape[3], dtype, seed=seed_of(prefix, case))
        pre = dict(prefix_k=pk, prefix_v=pv, prefix_len=plen)
    ref = R.decode_attention(q, kc, vc, lens, queries_per_seq=t, **pre)
    kc, vc = poison_past_lens(kc, vc, lens)
    inline = [dict(num_splits=1, prefix_inline=True), dict(num_splits=3, prefix_inline=True)] if pre else []
    for kw in [dict(num_splits=1), dict(num_splits=3), dict(num_splits=2, fused_merge=False)] + inline:
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, queries_per_seq=t, out=out, block_n=16, **pre, **kw)
        assert rel_err(out, ref) < TOL[dtype], kw
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case,prefix", PREFILL_PREFIX_PAIRS)
def test_interp_prefill_shared_prefix(case, prefix, dtype):
    # cascade prefill (multi-token steps): prefix partials + the own keys' partials (one or
    # several splits and key blocks) combined by the merge kernel
    from qpfast.kernels import prefill
    q, k, v, cu_q, cu_k = make_prefill(case, dtype, seed=seed_of("prefix", case, prefix, str(dtype)))
    pk, pv, plen = make_prefix(prefix, k.shape[1], k.shape[2], dtype, seed=seed_of(prefix, case))
    ref = R.prefill_attention(q, k, v, cu_q, cu_k, prefix_k=pk, prefix_v=pv, prefix_len=plen)
    for kw in (dict(), dict(block_n=16, num_splits=3, prefix_splits=2)):
        out = torch.full_like(q, float("nan"))
        prefill.prefill_attention(q, k, v, cu_q, cu_k, prefix_k=pk, prefix_v=pv, prefix_len=plen, out=out, **kw)
        assert rel_err(out, ref) < TOL[dtype], kw


@interp_only
def test_interp_shared_prefix_dispatch_and_views():
    # the public entry points pass the prefix through; the engine's static prefix buffer is
    # a view [Hkv, :P, D] of a bigger one, with the length on the device
    q, kc, vc, lens = make_decode("gqa4", seed=21)
    big = torch.randn(2, kc.shape[1], 300, kc.shape[3])
    pk, pv = big[0, :, :200], big[1, :, :200]
    plen = torch.tensor([173], dtype=torch.int32)
    out = K.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen)
    ref = R.decode_attention(q, kc, vc, lens, prefix_k=pk.contiguous(), prefix_v=pv.contiguous(), prefix_len=plen)
    assert rel_err(out, ref) < 1e-5
    qp, k, v, cu_q, cu_k = make_prefill("gqa4_long_prefix", seed=22)
    pk2, pv2 = big[0, :2, :64, :32], big[1, :2, :64, :32]
    out = K.prefill_attention(qp, k, v, cu_q, cu_k, prefix_k=pk2, prefix_v=pv2)
    assert rel_err(out, R.prefill_attention(qp, k, v, cu_q, cu_k, prefix_k=pk2, prefix_v=pv2)) < 1e-5


@interp_only
def test_interp_engine_cascade_forward():
    # the engine's cascade layout through the kernels (the prefix in the cache's shared
    # buffers, own tokens in the slots) == its torch path: prefill rows of several lengths,
    # a decode step, a multi-token (jump-forward) step, the bucketed graph step with a
    # padding row; then a shorter prefix swapped into the same buffers
    from qpfast.engine.model_runner import NativeRunner
    from test_engine_support import qwen3_model
    model = qwen3_model(layers=1)            # one layer: the kernels run as in every other
    a = NativeRunner(model, "cpu", "cascade")
    b = NativeRunner(model, "cpu", "cascade")
    b.cascade_kernels = False                    # the CPU path: torch matmuls
    assert a.cascade_kernels
    a.enable_graphs(capture=False)
    close = dict(rtol=1e-4, atol=1e-5)
    for prefix in ([11, 12, 13, 14, 15, 16, 17], [30, 31, 32]):
        for r in (a, b):
            r.use_prefix(r.compute_prefix(prefix))
            r.reserve(4, 24)
        assert int(a.cache.shared_len[0]) == len(prefix) and a.cache.shared_capacity == 7
        steps = [([[1, 2, 3, 4, 5], [6, 7, 8], [9]], [0, 0, 0]), ([[10], [11], [12]], [5, 3, 1]),
                 ([[13, 14], [15], [16, 17, 18]], [6, 4, 2])]
        for toks, starts in steps:
            torch.testing.assert_close(a.forward(0, toks, starts), b.forward(0, toks, starts), **close)
        torch.testing.assert_close(a.decode_step([19, 20, 21], [8, 5, 5]),
                                   b.forward(0, [[19], [20], [21]], [8, 5, 5]), **close)
        # a multi-token graph step: 4 tokens a row (padding tokens in rows 0 and 1)
        feeds = [[22, 23], [24], [25, 26, 27]]
        torch.testing.assert_close(a.decode_step(feeds, [9, 6, 6]), b.forward(0, feeds, [9, 6, 6]), **close)


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", [dict(hq=8, hkv=2, d=32), dict(hq=4, hkv=4, d=16, qk_norm=False),
                                   dict(hq=6, hkv=1, d=24, hidden=100, n=1)])
def test_interp_layer_kernels(shape, dtype):
    from qpfast.kernels import layers
    inp = make_layer_inputs(dtype, seed=seed_of("layers", str(shape), str(dtype)), **shape)
    check_layer_kernels(layers, inp, TOL[dtype])
    assert K.backend(inp["qkv"]) == "interpreter"
    q = K.qk_norm_rope_store(inp["qkv"], inp["q_norm"], inp["k_norm"], inp["cos"], inp["sin"], inp["rope_pos"],
                             inp["kc"].clone(), inp["vc"].clone(), inp["slot"], inp["pos"], inp["hq"], inp["hkv"], 1e-6)
    assert torch.isfinite(q).all()


@interp_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("vocab", [1, 31, 33, 1000, 4133])
def test_interp_apply_bitmask(vocab, dtype):
    from qpfast.kernels import bitmask
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g).to(dtype)
    bm = make_bitmask(5, vocab, seed=vocab + 1, extra_words=1)
    special_rows(logits, bm)
    want = R.apply_bitmask_(logits.clone(), bm)
    got = logits.clone()
    assert bitmask.apply_bitmask_(got, bm) is got
    assert torch.equal(got, want)
    strided = torch.cat([logits, logits], dim=1)[:, :vocab]     # non-unit row stride
    bitmask.apply_bitmask_(strided, bm)
    assert torch.equal(strided, want)


@interp_only
@pytest.mark.parametrize("chunks", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("vocab,block_v", [(1, 64), (31, 64), (33, 64), (1000, 64), (1000, 2048),
                                           (4133, 2048), (4133, 512)])
def test_interp_masked_argmax(vocab, block_v, dtype, chunks):
    from qpfast.kernels import bitmask
    g = torch.Generator().manual_seed(vocab + block_v)
    logits = torch.randn(6, vocab, generator=g).to(dtype)
    bm = make_bitmask(6, vocab, seed=vocab, extra_words=1)
    special_rows(logits, bm)
    if vocab > 64:   # a tie across a block boundary: the earlier block must win
        logits[5, [3, vocab - 2]] = 100.0
        bm[5] = -1
    if vocab > 1000:   # the same tie across a chunk boundary (chunks of 1536 / 2048 tokens)
        logits[4, [100, 3000]] = 100.0
        bm[4] = -1
    out = torch.full((6,), SENTINEL, dtype=torch.long)
    bitmask.masked_argmax(logits, bm, out=out, block_v=block_v, num_chunks=chunks)
    assert torch.equal(out, R.masked_argmax(logits, bm))
    assert torch.equal(out, naive_argmax(logits, bm))


@interp_only
def test_interp_masked_sample_edge_cases():
    from qpfast.kernels import bitmask
    vocab = 300
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(6, vocab, generator=g) * 3
    bm = make_bitmask(6, vocab, seed=15)
    special_rows(logits, bm)
    greedy = R.masked_argmax(logits, bm)
    logits[4:].scatter_add_(1, greedy[4:, None], torch.full((2, 1), 5.0))   # clear winners
    # at T = 0.01 a 5-logit lead is a 500-unit lead: greedy unless the temperature is misused
    for kwargs in (dict(temperature=0.0), dict(top_p=1e-6), dict(temperature=0.01, top_p=0.9),
                   dict(temperature=0.01, num_chunks=3), dict(top_p=1e-6, num_chunks=2)):
        out = torch.full((6,), SENTINEL, dtype=torch.long)
        bitmask.masked_sample(logits, bm, generator=g, out=out, block_v=128, **kwargs)
        assert torch.equal(out[[0, 1, 2, 4, 5]], greedy[[0, 1, 2, 4, 5]]), kwargs
        assert out[3] in (vocab // 2, vocab - 1)           # the two tied best tokens
    allowed = naive_allowed(bm, vocab)
    for top_p, chunks in ((1.0, None), (0.5, None), (1.0, 3), (0.5, 2)):
        out = torch.full((6,), SENTINEL, dtype=torch.long)
        bitmask.masked_sample(logits, bm, temperature=3.0, top_p=top_p, generator=g, out=out,
                              block_v=512 if chunks is None else 64, num_chunks=chunks)
        assert out[0] == -1 and out[1] == vocab - 1 and out[2] == greedy[2]
        assert all(allowed[r, int(out[r])] for r in range(1, 6))


@interp_only
def test_interp_masked_sample_distribution():
    # Logits chosen so that a wrong Gumbel sign moves the chi-square statistic far past
    # the threshold with 300 draws (a temperature applied the wrong way is caught by the
    # T=0.01 case of test_interp_masked_sample_edge_cases).
    from qpfast.kernels import bitmask
    vocab, rows, temperature = 12, 300, 0.7
    g = torch.Generator().manual_seed(16)
    base = torch.tensor([[0.5, 0, 0, 0, 0, 0, -0.5, -0.5, -0.5, -0.5, -0.5, 1.0]])
    bm = torch.tensor([[0xFFF & ~(1 << 2 | 1 << 7 | 1 << 10)]], dtype=torch.int32)
    allowed = R.bitmask_to_bool(bm, vocab)[0]
    out = torch.full((rows,), SENTINEL, dtype=torch.long)
    bitmask.masked_sample(base.expand(rows, vocab), bm.expand(rows, 1).contiguous(),
                          temperature=temperature, generator=g, out=out, block_v=16)
    probs = torch.softmax(base[0].masked_fill(~allowed, float("-inf")) / temperature, 0)
    assert chi2_ok(torch.bincount(out, minlength=vocab).double(), probs.double())


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_interp_top_p_thresholds_bound_the_nucleus(dtype):
    # the threshold search (one max/sum pass, TOP_P_ROUNDS rounds, a final narrowing), whole
    # rows or cut into chunks: every token of the exact nucleus is kept, and a kept token
    # outside it lies within the search's resolution of the nucleus' smallest scaled logit
    from qpfast.kernels import bitmask
    vocab, rows, temperature = 300, 5, 1.3
    g = torch.Generator().manual_seed(19)
    logits = (torch.randn(rows, vocab, generator=g) * 2).to(dtype)
    bm = make_bitmask(rows, vocab, seed=20, density=0.6)
    allowed = R.bitmask_to_bool(bm, vocab)
    scaled = logits.float().masked_fill(~allowed, float("-inf")) / temperature
    for top_p in (0.2, 0.9):
        nucleus = R.top_p_keep(scaled, top_p)
        low = torch.where(nucleus, scaled, float("inf")).amin(1, keepdim=True)
        found = {}
        for chunks in (1, 3):
            th = bitmask.top_p_thresholds(logits, bm, 1.0 / temperature, top_p, 64, chunks)
            kept = allowed & (scaled >= th[:, None])
            assert (kept | ~nucleus).all(), (top_p, chunks)
            extra = kept & ~nucleus
            assert (scaled >= low - 1e-5)[extra].all(), (top_p, chunks)
            found[chunks] = th
        assert torch.allclose(found[1], found[3], atol=1e-4)


@interp_only
def test_interp_masked_sample_top_p_keeps_the_nucleus():
    from qpfast.kernels import bitmask
    vocab, rows = 200, 16
    g = torch.Generator().manual_seed(17)
    logits = torch.randn(rows, vocab, generator=g) * 2
    bm = make_bitmask(rows, vocab, seed=18, density=0.7)
    for top_p, chunks in ((0.3, None), (0.8, None), (0.8, 3)):
        scaled = logits.masked_fill(~R.bitmask_to_bool(bm, vocab), float("-inf")) / 1.5
        nucleus = R.top_p_keep(scaled, top_p)
        out = torch.full((rows,), SENTINEL, dtype=torch.long)
        bitmask.masked_sample(logits, bm, temperature=1.5, top_p=top_p, generator=g, out=out,
                              block_v=256 if chunks is None else 64, num_chunks=chunks)
        assert all(nucleus[r, int(out[r])] for r in range(rows)), top_p
        assert (out != R.masked_argmax(logits, bm)).any()   # it samples, not picks greedily


@interp_only
@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_interp_qp_shapes_slow(dtype):
    """Head dim 128, 16:2 GQA, 512-token prefix, the kernels' own block choices."""
    from qpfast.kernels import decode, prefill
    g = torch.Generator().manual_seed(19)
    len_q, prefix = [8, 40, 23], [512, 128, 300]
    len_k = [a + b for a, b in zip(len_q, prefix)]
    q = torch.randn(sum(len_q), 16, 128, generator=g).to(dtype)
    k = torch.randn(sum(len_k), 2, 128, generator=g).to(dtype)
    v = torch.randn(sum(len_k), 2, 128, generator=g).to(dtype)
    for splits in (1, 5):
        out = torch.full_like(q, float("nan"))
        prefill.prefill_attention(q, k, v, cumsum0(len_q), cumsum0(len_k), out=out, num_splits=splits)
        assert rel_err(out, R.prefill_attention(q, k, v, cumsum0(len_q), cumsum0(len_k))) < TOL[dtype]
    qd = torch.randn(3, 16, 128, generator=g).to(dtype)
    kc = torch.randn(3, 2, 600, 128, generator=g).to(dtype)
    vc = torch.randn(3, 2, 600, 128, generator=g).to(dtype)
    lens = torch.tensor([552, 168, 323], dtype=torch.int32)
    for splits in (1, 5):
        outd = torch.full_like(qd, float("nan"))
        decode.decode_attention(qd, kc, vc, lens, out=outd, num_splits=splits)
        assert rel_err(outd, R.decode_attention(qd, kc, vc, lens)) < TOL[dtype]


# --------------------------------------------------------------------------------------
# projections (kernels.linear): reference, validation, launch plan, interpreter
# --------------------------------------------------------------------------------------

def test_reference_linear_is_f_linear_and_swiglu():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(5, 12, generator=g), torch.randn(8, 12, generator=g), torch.randn(8, generator=g)
    assert torch.equal(R.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    assert torch.equal(R.linear(x, w, swiglu=True), R.silu_mul(x @ w.T))
    assert R.linear(x, w, swiglu=True).shape == (5, 4)
    if K.backend(x) == "reference":
        assert torch.equal(K.linear(x, w, b), R.linear(x, w, b))    # CPU tensors: the reference
    # a decoder layer's norm before and residual add after, fused
    ln, res = 1 + 0.1 * torch.randn(12, generator=g), torch.randn(5, 8, generator=g)
    normed = R.add_rms_norm(x, None, ln, 1e-5)[0]
    assert torch.equal(R.linear(x, w, b, norm_weight=ln, eps=1e-5), torch.nn.functional.linear(normed, w, b))
    assert torch.equal(R.linear(x, w, residual=res), R.add_rms_norm(x @ w.T, res, torch.ones(8), 1e-6)[1])
    y, sumsq = R.linear(x, w, residual=res, sumsq_out=True)
    assert sumsq is None and torch.equal(y, R.linear(x, w, residual=res))


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.zeros(3), torch.zeros(4, 3)), {}, "x must be"),
    ((torch.zeros(2, 3), torch.zeros(4, 5)), {}, "w must be"),
    ((torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.float64)), {}, "w must match"),
    ((torch.zeros(2, 3), torch.zeros(5, 3)), dict(swiglu=True), "even number of rows"),
    ((torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4)), dict(swiglu=True), "takes no bias"),
    ((torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(3)), {}, "bias must be"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(residual=torch.zeros(2, 3)), "residual must be"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(residual=torch.zeros(2, 2), swiglu=True), "takes none"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(sumsq_out=True), "needs a residual"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(norm_weight=torch.zeros(4)), "norm_weight must be"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(row_sumsq=torch.zeros(1, 2)), "only with norm_weight"),
    ((torch.zeros(2, 3), torch.zeros(4, 3)), dict(norm_weight=torch.zeros(3), row_sumsq=torch.zeros(1, 3)),
     "row_sumsq must be"),
])
def test_linear_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.linear(*args, **kwargs)


# Qwen3-0.6B's decode projections: (outputs, reduction length, swiglu)
QWEN3_06B_PROJECTIONS = [(4096, 1024, False), (1024, 2048, False), (3072, 1024, True), (1024, 3072, False)]


@needs_triton
@pytest.mark.parametrize("rows", [1, 16, 64, 128, 200])
def test_linear_launch_plan(rows):
    from qpfast.kernels.common import cdiv
    from qpfast.kernels.projection import MAX_BLOCK_M, linear_launch
    for n, k, swiglu in QWEN3_06B_PROJECTIONS:
        plan = linear_launch(rows, n, k, 132, swiglu)
        bm, bn, bk, split = plan["block_m"], plan["block_n"], plan["block_k"], plan["split_k"]
        assert 16 <= bm <= MAX_BLOCK_M and bm >= min(rows, MAX_BLOCK_M)
        tiles = cdiv(rows, bm) * cdiv(n, bn)
        per = cdiv(cdiv(k, bk), split)
        assert cdiv(cdiv(k, bk), per) == split                 # every run has K blocks to read
        assert tiles * split <= max(132, tiles)                 # about one program an SM at most
        if tiles * 2 <= 132:
            assert split > 1                                   # few tiles: K is cut to fill the SMs
        assert linear_launch(rows, n, k, 1, swiglu)["split_k"] == 1   # nothing to fill (interpreter)
        for size in (2, 4):             # the pipeline's buffers fit an H100/H200 block (227 KiB)
            p = linear_launch(rows, n, k, 132, swiglu, size)
            per_stage = (p["block_m"] + p["block_n"] * (2 if swiglu else 1)) * p["block_k"] * size
            assert p["num_stages"] * per_stage <= 227 * 1024, (size, p)


# (rows, outputs, reduction length, K runs, SwiGLU, bias, K block)
LINEAR_CASES = {
    "one_row": (1, 16, 32, 1, False, False, 32),
    "ragged_k_split3": (3, 48, 100, 3, False, True, 32),
    "swiglu_split2": (17, 40, 200, 2, True, False, 32),
    "rows_over_block_split4": (70, 24, 256, 4, False, True, 32),
    "swiglu_unsplit_ragged_n": (5, 20, 64, 1, True, False, 64),
}


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_interp_linear(case, dtype):
    from qpfast.kernels import projection
    from qpfast.kernels.common import zeroed_counters
    m, n, k, split, swiglu, bias, bk = LINEAR_CASES[case]
    g = torch.Generator().manual_seed(seed_of("linear", case))
    xs = torch.randn(m, k + 3, generator=g).to(dtype)[:, :k]           # a row stride past K
    w = (torch.randn(2 * n if swiglu else n, k, generator=g) / k ** 0.5).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    cfg = dict(split_k=split, block_k=bk, block_m=64, block_n=16)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    assert projection.linear(xs, w, b, swiglu=swiglu, out=out, **cfg) is out
    ref = R.linear(xs.float(), w.float(), None if b is None else b.float(), swiglu=swiglu)
    assert rel_err(out, ref) < TOL[dtype] * 4
    assert torch.equal(projection.linear(xs, w, b, swiglu=swiglu, **cfg), out)      # deterministic
    if swiglu:       # the fused activation: silu_mul's kernel on the same product, bit for bit
        from qpfast.kernels import layers
        assert torch.equal(out, layers.silu_mul(projection.linear(xs, w, **cfg)))
    if split > 1:
        assert int(zeroed_counters("linear", xs.device, 1).abs().sum()) == 0         # reset for the next call


@interp_only
def test_interp_linear_dispatch_and_edges():
    from qpfast.kernels import projection
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(4, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    assert K.backend(x) == "interpreter"
    assert rel_err(K.linear(x, w, b), R.linear(x, w, b)) < TOL[torch.float32]
    assert rel_err(K.linear(x, w.t().contiguous().t()), R.linear(x, w)) < TOL[torch.float32]   # strided w
    assert projection.linear(x[:0], w).shape == (0, 24)
    assert torch.equal(projection.linear(x[:, :0], w[:, :0], b), b.expand(4, 24))             # empty sum
    assert torch.equal(projection.linear(x[:, :0], w[:, :0], swiglu=True), torch.zeros(4, 12))
    with pytest.raises(ValueError, match="out must be"):
        projection.linear(x, w, out=torch.empty(4, 23))


@interp_only
def test_interp_engine_projections_forward():
    # the engine's layers with their projections through kernels.linear (gate/up fused with
    # SwiGLU) == torch's GEMMs: prefill rows, a decode step, a multi-token graph step; steps
    # of more tokens than projection_rows keep torch's
    from qpfast.engine.model_runner import NativeRunner
    from test_engine_support import qwen3_model
    model = qwen3_model(layers=1)
    a = NativeRunner(model, "cpu", "kernels")
    b = NativeRunner(model, "cpu", "kernels")
    a.set_projection_rows(8)
    assert not a.weights_in_out and b.weights_in_out
    a.enable_graphs(capture=False)
    calls = []
    real = K.linear
    close = dict(rtol=1e-4, atol=1e-5)
    try:
        K.linear = lambda *args, **kw: calls.append(args[0].shape[0]) or real(*args, **kw)
        for r in (a, b):
            r.use_prefix(r.compute_prefix([11, 12, 13, 14, 15]))
            r.reserve(3, 24)
        assert calls and set(calls) == {5}                  # the 5-token prefix: the kernel
        calls.clear()
        torch.testing.assert_close(a.forward(0, [[1, 2, 3, 4, 5], [6, 7, 8], [9]], [0, 0, 0]),
                                   b.forward(0, [[1, 2, 3, 4, 5], [6, 7, 8], [9]], [0, 0, 0]), **close)
        assert not calls                                    # 9 tokens: torch's GEMMs
        torch.testing.assert_close(a.decode_step([19, 20, 21], [5, 3, 1]),
                                   b.forward(0, [[19], [20], [21]], [5, 3, 1]), **close)
        n_layers = len(a.layers)
        assert calls == [3] * (4 * n_layers)               # qkv, o, gate/up + SwiGLU, down
        feeds = [[22, 23], [24], [25, 26]]
        torch.testing.assert_close(a.decode_step(feeds, [6, 4, 2]), b.forward(0, feeds, [6, 4, 2]), **close)
    finally:
        K.linear = real
    with pytest.raises(ValueError, match="rows"):
        a.set_projection_rows(-1)


@needs_triton
def test_programmatic_launch_setting():
    """`programmatic_launch` turns PDL on for this thread only, restores what was set before,
    and never applies off a GPU (CPU tensors, the interpreter): kernels then launch as
    before."""
    import threading

    from qpfast.kernels.common import pdl_launch
    from qpfast.kernels.launch import programmatic_launch_on
    cpu = torch.device("cpu")
    assert not programmatic_launch_on() and pdl_launch(cpu) == dict(USE_PDL=False)
    seen = []
    with K.programmatic_launch(True):
        assert programmatic_launch_on()
        assert pdl_launch(cpu) == dict(USE_PDL=False)          # no GPU: off whatever the setting
        with K.programmatic_launch(False):
            assert not programmatic_launch_on()
        assert programmatic_launch_on()
        t = threading.Thread(target=lambda: seen.append(programmatic_launch_on()))
        t.start()
        t.join()
    assert seen == [False] and not programmatic_launch_on()
    with pytest.raises(RuntimeError):
        with K.programmatic_launch(True):
            raise RuntimeError("boom")
    assert not programmatic_launch_on()                         # restored on the way out



# a decoder layer's MLP half through the fused projections: (rows, hidden, intermediate, K runs,
# row tile); the residual stream h0 -> o_proj + residual -> gate/up on its norm -> down + residual
FUSED_LAYER_CASES = {"rows5_split3": (5, 96, 40, 3, 64), "rows40_tile16_unsplit": (40, 64, 24, 1, 16)}


@interp_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", list(FUSED_LAYER_CASES))
def test_interp_linear_fused_norm_and_residual(case, dtype):
    """`linear(residual=, sumsq_out=True)` writes the residual stream and its rows' sums of
    squares in parts (one per output tile); `linear(norm_weight=, row_sumsq=)` normalizes its
    input rows from them, `norm_weight=` alone from the rows themselves: both as the
    reference (add_rms_norm's arithmetic), and as the unfused kernels up to the order of the
    squares' sum."""
    from qpfast.kernels import layers, projection
    m, hid, inter, split, bm = FUSED_LAYER_CASES[case]
    g = torch.Generator().manual_seed(seed_of("fused", case))
    h0, o = torch.randn(m, hid, generator=g).to(dtype), torch.randn(m, 80, generator=g).to(dtype)
    wo = (torch.randn(hid, 80, generator=g) / 9).to(dtype)
    wgu = (torch.randn(2 * inter, hid, generator=g) / 10).to(dtype)
    wd = (torch.randn(hid, inter, generator=g) / 6).to(dtype)
    ln = (1 + 0.1 * torch.randn(hid, generator=g)).to(dtype)
    cfg = dict(split_k=split, block_k=32, block_n=16, block_m=bm)
    tol = TOL[dtype] * 4
    h1 = torch.full((m, hid), float("nan"), dtype=dtype)
    got, sumsq = projection.linear(o, wo, residual=h0, sumsq_out=True, out=h1, **cfg)
    assert got is h1 and sumsq.shape == (hid // 16, m) and sumsq.dtype == torch.float32
    assert rel_err(h1, R.linear(o.float(), wo.float(), residual=h0.float())) < tol
    torch.testing.assert_close(sumsq.sum(0), h1.float().square().sum(1), rtol=1e-5, atol=1e-5)
    want = R.linear(h1.float(), wgu.float(), swiglu=True, norm_weight=ln.float())
    y_parts = projection.linear(h1, wgu, swiglu=True, norm_weight=ln, row_sumsq=sumsq, **cfg)
    y_rows = projection.linear(h1, wgu, swiglu=True, norm_weight=ln, **cfg)
    assert rel_err(y_parts, want) < tol and rel_err(y_rows, want) < tol
    unfused = projection.linear(layers.add_rms_norm(h1, None, ln, 1e-6)[0], wgu, swiglu=True, **cfg)
    assert rel_err(y_rows, unfused) < TOL[dtype] / 4
    h2, _ = projection.linear(y_parts, wd, residual=h1, sumsq_out=True, **cfg)
    assert rel_err(h2, R.linear(y_parts.float(), wd.float(), residual=h1.float())) < tol



@needs_triton
def test_prefetch_needs_aligned_contiguous_rows():
    """The L2 prefetches take whole 16-byte-aligned rows: a cache whose heads' keys are not
    contiguous (a [B, L, Hkv, D] view transposed), or rows of a size that is no multiple of 16
    bytes, get no prefetch."""
    from qpfast.kernels.common import bulk_aligned, keys_prefetchable
    cache = torch.zeros(2, 4, 256, 64, dtype=torch.float16)
    assert keys_prefetchable(cache, cache.clone()) and bulk_aligned(cache)
    strided = torch.zeros(2, 256, 4, 64, dtype=torch.float16).transpose(1, 2)
    assert bulk_aligned(strided) and not keys_prefetchable(cache, strided)
    assert not bulk_aligned(torch.zeros(8, 100, dtype=torch.float16)[:, :50][:, 1:])    # misaligned start
    assert not bulk_aligned(torch.zeros(8, 100, dtype=torch.float16))                    # 200-byte rows
