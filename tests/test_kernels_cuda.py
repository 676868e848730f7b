"""The Triton kernels compiled for a real GPU, against the torch references (float64).

Skipped without CUDA (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_kernels_cuda.py``. The same cases as the interpreter tests
in test_kernels.py (ragged lengths with 0 and 1, non-powers of two, GQA 1-8, empty and long
prefixes) plus QP shapes (head dim 128, prefix 128-512) in fp32, fp16 and bf16, outputs
poisoned with NaN / a sentinel before every run.
"""
from __future__ import annotations

import functools

import pytest
import torch

import qpfast.kernels as K
from qpfast.kernels import reference as R

from test_kernels import (DECODE_CASES, DECODE_MULTI_CASES, DECODE_PREFIX_PAIRS, LINEAR_CASES, PREFILL_CASES,
                          PREFILL_PREFIX_PAIRS, QWEN3_06B_PROJECTIONS, SENTINEL, check_layer_kernels, cumsum0,
                          make_bitmask, make_decode, make_decode_multi, make_layer_inputs, make_prefill, make_prefix,
                          poison_past_lens, rel_err, seed_of, special_rows)

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and K.HAS_TRITON),
                                reason="needs CUDA and triton")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IDS = ["fp32", "fp16", "bf16"]
# fp32 dots run in IEEE fp32; fp16/bf16 operands with fp32 accumulation
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _ref64(fn, *tensors, **kw):
    """The reference on float32 copies (on the GPU, IEEE fp32 matmuls), as float64."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    f32 = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    try:
        return fn(*(f32(t) for t in tensors), **{k: f32(v) for k, v in kw.items()}).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _cuda(*ts):
    return tuple(t.cuda() for t in ts)


def _decode_graph_replays(q, kc, vc, lens, args: dict, launch: dict = None, before=(None,) * 3, pdl=False):
    """``decode_attention(q, kc, vc, lens, **args, **launch)`` captured once in a CUDA graph
    (after a warm-up call that compiles and makes the merge counters; with programmatic
    dependent launch if ``pdl``) and replayed once per entry of ``before`` (called first with
    new queries in place), each output against the reference with ``args``."""
    from qpfast.kernels import decode
    out = torch.full_like(q, float("nan"))
    kw = dict(args, out=out, **(launch or {}))
    with K.programmatic_launch(pdl):
        decode.decode_attention(q, kc, vc, lens, **kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), K.programmatic_launch(pdl):
        decode.decode_attention(q, kc, vc, lens, **kw)
    for change in before:
        q.normal_()
        if change is not None:
            change()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, _ref64(R.decode_attention, q, kc, vc, lens, **args)) < TOL[q.dtype], change


def _graph_replays_match_eager(call, refresh, replays: int, pdl: bool = False, what=None):
    """``call()`` warmed up on a side stream, captured in a CUDA graph (both with
    programmatic dependent launch if ``pdl``), then ``replays`` times: ``refresh()`` (new
    inputs in place), a replay, and the graph's output equal to ``call()`` run eagerly, bit
    for bit. Returns the graph's output."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), K.programmatic_launch(pdl):
        call()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), K.programmatic_launch(pdl):
        out = call()
    for _ in range(replays):
        refresh()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, call()), what
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", list(PREFILL_CASES))
def test_cuda_prefill(case, dtype):
    from qpfast.kernels import prefill
    q, k, v, cu_q, cu_k = _cuda(*make_prefill(case, dtype, seed=seed_of("cuda", case, str(dtype))))
    # {}: the kernel's own choices (these few-program cases split the keys on a GPU)
    for extra in ({}, dict(block_n=16), dict(num_splits=1), dict(num_splits=3, block_n=16), dict(num_splits=8)):
        out = torch.full_like(q, float("nan"))
        prefill.prefill_attention(q, k, v, cu_q, cu_k, out=out, **extra)
        torch.cuda.synchronize()
        assert rel_err(out, _ref64(R.prefill_attention, q, k, v, cu_q, cu_k)) < TOL[dtype], extra


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("splits", [None, 1, 3, 8])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_cuda_decode(case, splits, dtype):
    from qpfast.kernels import decode
    q, kc, vc, lens = _cuda(*make_decode(case, dtype, seed=seed_of("cuda", case, splits, str(dtype))))
    out = torch.full_like(q, float("nan"))
    decode.decode_attention(q, kc, vc, lens, out=out, num_splits=splits)
    torch.cuda.synchronize()
    assert rel_err(out, _ref64(R.decode_attention, q, kc, vc, lens)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_cuda_decode_fused_merge(case, dtype):
    """The fused split merge (the last split of a row merges, atomics across programs) and
    the merge kernel, on caches that hold NaN past every sequence's length, three rounds
    (the counters must be reset by each call)."""
    from qpfast.kernels import decode
    q, kc, vc, lens = _cuda(*make_decode(case, dtype, seed=seed_of("cuda-fused", case, str(dtype))))
    ref = _ref64(R.decode_attention, q, kc, vc, lens)
    kc, vc = poison_past_lens(kc, vc, lens)
    for _ in range(3):
        for kw in (dict(num_splits=3, fused_merge=True), dict(num_splits=8, fused_merge=True, block_n=16),
                   dict(num_splits=5, fused_merge=False), dict(num_splits=1), {}):
            out = torch.full_like(q, float("nan"))
            decode.decode_attention(q, kc, vc, lens, out=out, **kw)
            torch.cuda.synchronize()
            assert rel_err(out, ref) < TOL[dtype], kw
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


def test_cuda_decode_fused_merge_qp_shape_in_graph():
    """The QP decode shape (16:2, head dim 128, 600-key caches) with the fused merge,
    captured in a CUDA graph and replayed several times: same as the reference each time."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(32, 16, 128, generator=g).to(torch.bfloat16).cuda()
    kc = torch.randn(32, 2, 600, 128, generator=g).to(torch.bfloat16).cuda()
    vc = torch.randn(32, 2, 600, 128, generator=g).to(torch.bfloat16).cuda()
    lens = torch.randint(1, 601, (32,), generator=g, dtype=torch.int32).cuda()
    _decode_graph_replays(q, kc, vc, lens, {}, dict(num_splits=4, fused_merge=True))


def _prefix(case, hkv, d, dtype, seed):
    pk, pv, plen = make_prefix(case, hkv, d, dtype, seed=seed)
    return dict(prefix_k=pk.cuda(), prefix_v=pv.cuda(), prefix_len=None if plen is None else plen.cuda())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,prefix", DECODE_PREFIX_PAIRS)
def test_cuda_decode_shared_prefix(case, prefix, dtype):
    """Cascade decode: the prefix kernel's partials (own choice of splits, or forced) folded
    in by the decode kernel, the fused merge or the merge kernel; caches and prefix NaN past
    their lengths; the merge counters back at zero after."""
    from qpfast.kernels import decode
    q, kc, vc, lens = _cuda(*make_decode(case, dtype, seed=seed_of("cuda-prefix", case, prefix, str(dtype))))
    pre = _prefix(prefix, kc.shape[1], kc.shape[3], dtype, seed_of(prefix, case))
    ref = _ref64(R.decode_attention, q, kc, vc, lens, **pre)
    kc, vc = poison_past_lens(kc, vc, lens)
    for kw in (dict(), dict(num_splits=1, prefix_splits=3), dict(num_splits=3, prefix_splits=2),
               dict(num_splits=4, prefix_splits=1, fused_merge=False), dict(num_splits=8, block_n=16),
               dict(prefix_inline=True), dict(prefix_inline=True, num_splits=3), dict(prefix_inline=False)):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, out=out, **pre, **kw)
        torch.cuda.synchronize()
        assert rel_err(out, ref) < TOL[dtype], kw
    assert int(decode.merge_counters(q.device, 1).abs().sum()) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,prefix", PREFILL_PREFIX_PAIRS)
def test_cuda_prefill_shared_prefix(case, prefix, dtype):
    from qpfast.kernels import prefill
    q, k, v, cu_q, cu_k = _cuda(*make_prefill(case, dtype, seed=seed_of("cuda-prefix", case, prefix, str(dtype))))
    pre = _prefix(prefix, k.shape[1], k.shape[2], dtype, seed_of(prefix, case))
    ref = _ref64(R.prefill_attention, q, k, v, cu_q, cu_k, **pre)
    for kw in (dict(), dict(num_splits=3, block_n=16, prefix_splits=2), dict(num_splits=1, prefix_splits=4)):
        out = torch.full_like(q, float("nan"))
        prefill.prefill_attention(q, k, v, cu_q, cu_k, out=out, **pre, **kw)
        torch.cuda.synchronize()
        assert rel_err(out, ref) < TOL[dtype], kw


@pytest.mark.parametrize("hq,hkv,batch", [(16, 8, 64), (16, 2, 1), (8, 1, 200), (16, 8, 8)])
def test_cuda_cascade_decode_qp_shape_in_graph(hq, hkv, batch):
    """The engine's cascade decode step: a 512-key prefix buffer whose length lives on the
    device, ragged own caches of up to 160 keys, captured once in a CUDA graph and replayed
    with new queries and new prefix lengths (the graph stays valid); small batches read the
    prefix inline (`inline_prefix`)."""
    g = torch.Generator().manual_seed(hq * 1000 + hkv * 10 + batch)
    dt = torch.bfloat16
    q = torch.randn(batch, hq, 128, generator=g).to(dt).cuda()
    kc = torch.randn(batch, hkv, 160, 128, generator=g).to(dt).cuda()
    vc = torch.randn(batch, hkv, 160, 128, generator=g).to(dt).cuda()
    lens = torch.randint(1, 161, (batch,), generator=g, dtype=torch.int32).cuda()
    pk = torch.randn(hkv, 512, 128, generator=g).to(dt).cuda()
    pv = torch.randn(hkv, 512, 128, generator=g).to(dt).cuda()
    plen = torch.tensor([400], dtype=torch.int32).cuda()
    _decode_graph_replays(q, kc, vc, lens, dict(prefix_k=pk, prefix_v=pv, prefix_len=plen),
                          before=[functools.partial(plen.fill_, n) for n in (400, 137, 512, 0, 1)])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case,t,prefix", DECODE_MULTI_CASES)
def test_cuda_decode_multi_token(case, t, prefix, dtype):
    # several new tokens per sequence (the engine's multi-token graph steps), causal among
    # them: the kernel's own choices, unsplit, split with the fused merge and the merge kernel
    from qpfast.kernels import decode
    q, kc, vc, lens = _cuda(*make_decode_multi(case, t, dtype, seed=seed_of("cuda-multi", case, t, str(dtype))))
    pre = {} if prefix is None else _prefix(prefix, kc.shape[1], kc.shape[3], dtype, seed_of(prefix, case))
    ref = _ref64(R.decode_attention, q, kc, vc, lens, queries_per_seq=t, **pre)
    kc, vc = poison_past_lens(kc, vc, lens)
    for kw in (dict(), dict(num_splits=1), dict(num_splits=3, block_n=16), dict(num_splits=2, fused_merge=False)):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, queries_per_seq=t, out=out, **pre, **kw)
        torch.cuda.synchronize()
        assert rel_err(out, ref) < TOL[dtype], kw


@pytest.mark.parametrize("hq,hkv,batch,t", [(16, 8, 64, 2), (16, 8, 8, 8), (16, 2, 16, 4), (8, 1, 32, 8)])
def test_cuda_multi_token_decode_qp_shape_in_graph(hq, hkv, batch, t):
    """The engine's multi-token graph step at QP shapes: t new tokens per sequence on ragged
    own caches after a 389-key shared prefix (length on the device), bf16, captured once and
    replayed with new queries."""
    g = torch.Generator().manual_seed(hq * 1000 + batch * 10 + t)
    dt = torch.bfloat16
    q = torch.randn(batch * t, hq, 128, generator=g).to(dt).cuda()
    kc = torch.randn(batch, hkv, 168, 128, generator=g).to(dt).cuda()
    vc = torch.randn(batch, hkv, 168, 128, generator=g).to(dt).cuda()
    lens = torch.randint(t, 169, (batch,), generator=g, dtype=torch.int32).cuda()
    pk = torch.randn(hkv, 512, 128, generator=g).to(dt).cuda()
    pv = torch.randn(hkv, 512, 128, generator=g).to(dt).cuda()
    plen = torch.tensor([389], dtype=torch.int32).cuda()
    _decode_graph_replays(q, kc, vc, lens, dict(prefix_k=pk, prefix_v=pv, prefix_len=plen, queries_per_seq=t))


@pytest.mark.parametrize("block_n,num_stages,num_warps", [(32, 4, 4), (64, 3, 4), (64, 4, 4), (128, 2, 4), (128, 3, 8), (128, 1, 8)])
def test_cuda_decode_launch_configs(block_n, num_stages, num_warps):
    """Every launch configuration the decode heuristic may pick (bench/bench_kernels.py's
    tuning sweep) on ragged caches, unsplit and split, head dims 32-128."""
    from qpfast.kernels import decode
    g = torch.Generator().manual_seed(block_n * 100 + num_stages * 10 + num_warps)
    for case in DECODE_CASES:
        q, kc, vc, lens = _cuda(*make_decode(case, torch.bfloat16, seed=seed_of("launch", case, block_n)))
        for splits in (1, 3):
            out = torch.full_like(q, float("nan"))
            decode.decode_attention(q, kc, vc, lens, out=out, num_splits=splits, block_n=block_n,
                                    num_stages=num_stages, num_warps=num_warps)
            assert rel_err(out, _ref64(R.decode_attention, q, kc, vc, lens)) < TOL[torch.bfloat16], (case, splits)
    q = torch.randn(5, 16, 128, generator=g).to(torch.bfloat16).cuda()
    kc = torch.randn(5, 2, 600, 128, generator=g).to(torch.bfloat16).cuda()
    vc = torch.randn(5, 2, 600, 128, generator=g).to(torch.bfloat16).cuda()
    lens = torch.tensor([600, 1, 257, 128, 599], dtype=torch.int32).cuda()
    for splits in (1, 2, 5):
        out = torch.full_like(q, float("nan"))
        decode.decode_attention(q, kc, vc, lens, out=out, num_splits=splits, block_n=block_n,
                                num_stages=num_stages, num_warps=num_warps)
        assert rel_err(out, _ref64(R.decode_attention, q, kc, vc, lens)) < TOL[torch.bfloat16], splits


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("hq,hkv", [(16, 2), (8, 1), (16, 8)])
def test_cuda_qp_shapes(hq, hkv, dtype):
    """Head dim 128, ragged 8-40 new tokens on 128-512-token prefixes; decode on caches
    longer than the sequences (the engine's static cache)."""
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    len_q = torch.randint(8, 41, (37,), generator=g).tolist() + [1]
    prefix = torch.randint(128, 513, (38,), generator=g).tolist()
    len_k = [a + b for a, b in zip(len_q, prefix)]
    q = torch.randn(sum(len_q), hq, 128, generator=g).to(dtype).cuda()
    k = torch.randn(sum(len_k), hkv, 128, generator=g).to(dtype).cuda()
    v = torch.randn(sum(len_k), hkv, 128, generator=g).to(dtype).cuda()
    cu_q, cu_k = cumsum0(len_q).cuda(), cumsum0(len_k).cuda()
    out = K.prefill_attention(q, k, v, cu_q, cu_k)
    assert rel_err(out, _ref64(R.prefill_attention, q, k, v, cu_q, cu_k)) < TOL[dtype]
    for n in (1, 3):                     # one or a few queries: the split-K path
        cq, ck = cumsum0(len_q[:n]).cuda(), cumsum0(len_k[:n]).cuda()
        qs, ks, vs = q[: sum(len_q[:n])], k[: sum(len_k[:n])], v[: sum(len_k[:n])]
        out = torch.full_like(qs, float("nan"))
        from qpfast.kernels import prefill
        prefill.prefill_attention(qs, ks, vs, cq, ck, out=out)
        assert rel_err(out, _ref64(R.prefill_attention, qs, ks, vs, cq, ck)) < TOL[dtype], n
    for batch in (1, 5, 64):
        qd = torch.randn(batch, hq, 128, generator=g).to(dtype).cuda()
        kc = torch.randn(batch, hkv, 640, 128, generator=g).to(dtype).cuda()
        vc = torch.randn(batch, hkv, 640, 128, generator=g).to(dtype).cuda()
        lens = torch.randint(1, 641, (batch,), generator=g, dtype=torch.int32).cuda()
        od = K.decode_attention(qd, kc, vc, lens)
        assert rel_err(od, _ref64(R.decode_attention, qd, kc, vc, lens)) < TOL[dtype], batch


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("vocab", [1, 33, 4133, 151936])
def test_cuda_bitmask_ops(vocab, dtype):
    from qpfast.kernels import bitmask
    rows = 9
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(rows, vocab, generator=g).to(dtype)
    bm = make_bitmask(rows, vocab, seed=vocab + 1, density=0.01 if vocab > 4000 else 0.5, extra_words=1)
    special_rows(logits, bm)
    logits, bm = logits.cuda(), bm.cuda()
    want = R.apply_bitmask_(logits.clone(), bm)
    got = logits.clone()
    bitmask.apply_bitmask_(got, bm)
    assert torch.equal(got, want)
    out = torch.full((rows,), SENTINEL, dtype=torch.long, device="cuda")
    bitmask.masked_argmax(logits, bm, out=out)
    assert torch.equal(out, R.masked_argmax(logits, bm))
    gen = torch.Generator(device="cuda").manual_seed(3)
    allowed = R.bitmask_to_bool(bm, vocab)
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_p=0.9)):
        out = torch.full((rows,), SENTINEL, dtype=torch.long, device="cuda")
        bitmask.masked_sample(logits, bm, generator=gen, out=out, **kwargs)
        some = allowed.any(1)
        assert torch.equal(out[~some], torch.full_like(out[~some], -1))      # nothing allowed
        assert all(bool(allowed[r, int(out[r])]) for r in range(rows) if some[r]), kwargs
        if kwargs["temperature"] == 0.0:
            assert torch.equal(out, R.masked_argmax(logits, bm))


@pytest.mark.parametrize("rows", [1, 7, 200])
def test_cuda_top_p_thresholds_bound_the_nucleus(rows):
    # the chunked threshold search at Qwen's vocabulary (rows cut into chunks when few, one
    # chunk a row when they fill the GPU): the exact nucleus is kept, nothing far below it
    from qpfast.kernels import bitmask
    vocab, temperature = 151_936, 0.8
    g = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(torch.bfloat16).cuda()
    bm = make_bitmask(rows, vocab, seed=rows + 1, density=0.3).cuda()
    allowed = R.bitmask_to_bool(bm, vocab)
    scaled = logits.float().masked_fill(~allowed, float("-inf")) / temperature
    for top_p in (0.5, 0.95):
        chunks = bitmask.pick_num_chunks(rows, vocab, 1024, torch.cuda.get_device_properties(0).multi_processor_count)
        th = bitmask.top_p_thresholds(logits, bm, 1.0 / temperature, top_p, 1024, chunks)
        nucleus = R.top_p_keep(scaled, top_p)
        kept = allowed & (scaled >= th[:, None])
        assert (kept | ~nucleus).all(), top_p
        low = torch.where(nucleus, scaled, float("inf")).amin(1, keepdim=True)
        assert (scaled >= low - 1e-4)[kept & ~nucleus].all(), top_p


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [dict(hq=16, hkv=8, d=128, hidden=1024, n=64),
                                   dict(hq=8, hkv=1, d=64, hidden=100, n=3, qk_norm=False)])
def test_cuda_layer_kernels(shape, dtype):
    from qpfast.kernels import layers
    inp = make_layer_inputs(dtype, seed=seed_of("cuda-layers", str(shape), str(dtype)), **shape)
    inp = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inp.items()}
    check_layer_kernels(layers, inp, TOL[dtype])


@pytest.mark.parametrize("hq,hkv,batch,t", [(16, 8, 64, 1), (16, 8, 64, 8), (16, 2, 1, 1), (8, 1, 16, 4)])
def test_cuda_row0_prefix_qp_shape_in_graph(hq, hkv, batch, t):
    """The "kernels" layout's graph step at QP shapes: every row reads its first 389 keys
    (the prompt prefix, length on the device) from row 0's copy and its own after them,
    bf16, captured once and replayed with new queries and a new prefix length."""
    g = torch.Generator().manual_seed(hq * 1000 + batch * 10 + t + 7)
    dt = torch.bfloat16
    q = torch.randn(batch * t, hq, 128, generator=g).to(dt).cuda()
    kc = torch.randn(batch, hkv, 560, 128, generator=g).to(dt).cuda()
    vc = torch.randn(batch, hkv, 560, 128, generator=g).to(dt).cuda()
    lens = torch.randint(389 + t, 561, (batch,), generator=g, dtype=torch.int32).cuda()
    lens[0] = 560
    plen = torch.tensor([389], dtype=torch.int32).cuda()
    _decode_graph_replays(q, kc, vc, lens, dict(row0_prefix_len=plen, queries_per_seq=t),
                          before=(None, lambda: plen.fill_(130), lambda: plen.fill_(0)))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_cuda_linear(case, dtype):
    from qpfast.kernels import projection
    m, n, k, split, swiglu, bias, bk = LINEAR_CASES[case]
    g = torch.Generator().manual_seed(seed_of("cuda-linear", case))
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    w = (torch.randn(2 * n if swiglu else n, k, generator=g) / k ** 0.5).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda() if bias else None
    for cfg in (dict(split_k=split, block_k=bk, block_m=64, block_n=16), {}):
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        projection.linear(x, w, b, swiglu=swiglu, out=out, **cfg)
        ref = R.linear(x.float(), w.float(), None if b is None else b.float(), swiglu=swiglu)
        assert rel_err(out, ref) < TOL[dtype] * 4, cfg


@pytest.mark.parametrize("rows", [1, 16, 64, 128])
def test_cuda_linear_qwen3_shapes_in_graph(rows):
    """Qwen3-0.6B's four decode projections (SwiGLU fused) at the plan's own split, bf16,
    captured in a CUDA graph and replayed with new rows: the split runs' counters reset
    themselves, and replays give the eager bits (the sum runs in split order)."""
    from qpfast.kernels import projection
    from qpfast.kernels.common import zeroed_counters
    g = torch.Generator().manual_seed(rows)
    dt = torch.bfloat16
    for n, k, swiglu in QWEN3_06B_PROJECTIONS:
        w = (torch.randn(2 * n if swiglu else n, k, generator=g) / k ** 0.5).to(dt).cuda()
        x = torch.randn(rows, k, generator=g).to(dt).cuda()
        want = projection.linear(x, w, swiglu=swiglu)
        ref = R.linear(x.float(), w.float(), swiglu=swiglu)
        assert rel_err(want, ref) < 1e-2
        _graph_replays_match_eager(lambda: projection.linear(x, w, swiglu=swiglu),
                                   lambda: x.copy_(torch.randn(rows, k, generator=g).to(dt)), 3,
                                   what=(n, k, swiglu))
        assert int(zeroed_counters("linear", x.device, 1).abs().sum()) == 0


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9.0+")
def test_cuda_programmatic_launch_chain_in_graph():
    """A decode layer's kernels launched with programmatic dependent launch, captured in a
    CUDA graph and replayed with new inputs: each kernel reads what the one before wrote
    (norm -> projection -> rope/cache write -> attention -> projection + SwiGLU), bit for
    bit the chain launched plainly."""
    from qpfast.kernels import decode, layers, projection
    g = torch.Generator().manual_seed(11)
    dt = torch.bfloat16
    hq, hkv, d, hidden, b, cap = 16, 8, 128, 1024, 64, 512

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).cuda()

    x, ln = rnd(b, hidden), rnd(hidden, scale=0.1) + 1
    wqkv, wgu = rnd((hq + 2 * hkv) * d, hidden, scale=hidden ** -0.5), rnd(6144, hidden, scale=hidden ** -0.5)
    kc, vc = rnd(b, hkv, cap, d), rnd(b, hkv, cap, d)
    ang = torch.randn(cap, d // 2, generator=g)
    cos, sin = torch.cat([ang.cos()] * 2, 1).to(dt).cuda(), torch.cat([ang.sin()] * 2, 1).to(dt).cuda()
    pos = torch.randint(100, cap - 1, (b,), generator=g).cuda()
    slot = torch.arange(b).cuda()
    lens = (pos + 1).to(torch.int32)

    def chain():
        xn, _ = layers.add_rms_norm(x, None, ln, 1e-6)
        qkv = projection.linear(xn, wqkv)
        q = layers.qk_norm_rope_store(qkv, None, None, cos, sin, pos, kc, vc, slot, pos, hq, hkv, 1e-6)
        o = decode.decode_attention(q, kc, vc, lens)
        return projection.linear(o.reshape(b, hq * d)[:, :hidden], wgu, swiglu=True)

    want = chain()
    out = _graph_replays_match_eager(chain, lambda: x.copy_(torch.randn(b, hidden, generator=g).to(dt)), 3,
                                     pdl=True)
    assert out.shape == want.shape == (b, 3072)



@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9.0+")
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("mode", ["own", "row0", "inline"])
def test_cuda_decode_programmatic_launch_prefetch_in_graph(mode, splits):
    """The decode kernel launched with programmatic dependent launch, which first asks the L2
    for its split's keys (and, in row 0's programs, the prefix's): captured and replayed
    with new queries and lengths, it gives the reference's attention (bf16, Qwen3-0.6B's
    16:8 heads, batch 64, a 389-key prefix)."""
    g = torch.Generator().manual_seed(len(mode) * 10 + splits)
    dt, b, hq, hkv, cap = torch.bfloat16, 64, 16, 8, 560
    q = torch.randn(b, hq, 128, generator=g).to(dt).cuda()
    kc = torch.randn(b, hkv, cap, 128, generator=g).to(dt).cuda()
    vc = torch.randn(b, hkv, cap, 128, generator=g).to(dt).cuda()
    plen = torch.tensor([389], dtype=torch.int32).cuda()
    if mode == "inline":
        lens = torch.randint(1, cap - 389, (b,), generator=g, dtype=torch.int32).cuda()
        pk = torch.randn(hkv, 389, 128, generator=g).to(dt).cuda()
        pv = torch.randn(hkv, 389, 128, generator=g).to(dt).cuda()
        args = dict(prefix_k=pk, prefix_v=pv, prefix_len=plen)
    else:
        lens = torch.randint(390, cap + 1, (b,), generator=g, dtype=torch.int32).cuda()
        args = dict(row0_prefix_len=plen) if mode == "row0" else {}
    new_lens = lambda: lens.copy_(torch.randint(int(lens.min()), int(lens.max()) + 1, (b,),  # noqa: E731
                                                generator=g, dtype=torch.int32))
    launch = dict(num_splits=splits, **(dict(prefix_inline=True) if mode == "inline" else {}))
    _decode_graph_replays(q, kc, vc, lens, args, launch, before=(None, new_lens), pdl=True)


@pytest.mark.parametrize("rows", [16, 64])
def test_cuda_linear_fused_layer_half_in_graph(rows):
    """Qwen3-0.6B's MLP half as the engine's fused steps run it (`set_projection_rows`):
    o_proj adding to the residual stream and leaving its sums of squares, gate/up normalizing
    from them with SwiGLU, down_proj adding again; bf16, against the reference chain, then
    captured in a CUDA graph and replayed with new rows, bit for bit the eager chain."""
    from qpfast.kernels import projection
    g = torch.Generator().manual_seed(rows + 5)
    dt = torch.bfloat16

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).cuda()

    h0, o = rnd(rows, 1024), rnd(rows, 2048)
    wo, wgu = rnd(1024, 2048, scale=2048 ** -0.5), rnd(6144, 1024, scale=1024 ** -0.5)
    wd = rnd(1024, 3072, scale=3072 ** -0.5)
    ln = rnd(1024, scale=0.1) + 1

    def chain():
        h1, ss = projection.linear(o, wo, residual=h0, sumsq_out=True)
        y = projection.linear(h1, wgu, swiglu=True, norm_weight=ln, row_sumsq=ss)
        return projection.linear(y, wd, residual=h1)

    f = {k: v.float() for k, v in dict(h0=h0, o=o, wo=wo, wgu=wgu, wd=wd, ln=ln).items()}
    h1 = R.linear(f["o"], f["wo"], residual=f["h0"])
    want = R.linear(R.linear(h1, f["wgu"], swiglu=True, norm_weight=f["ln"]), f["wd"], residual=h1)
    eager = chain()
    assert rel_err(eager, want) < 2e-2
    _graph_replays_match_eager(chain, lambda: o.copy_(torch.randn(rows, 2048, generator=g).to(dt)), 2)
