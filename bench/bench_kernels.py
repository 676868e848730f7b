#!/usr/bin/env python
"""GPU benchmark of qpfast.kernels at query-processing shapes.

    python bench/bench_kernels.py [--out results.json] [--quick] [--no-engine]

Prints one table per kernel family and writes every number (with the card, the date and
the library versions) to ``--out``.  Without CUDA it prints a note, writes
``{"skipped": ...}`` to ``--out`` if given, and exits 0.

What is measured (``triton.testing.do_bench`` medians: L2 flushed before every call,
device events around it; each measurement taken twice, both reported):

* ceilings, measured on the card: device-to-device copy bandwidth (bytes read + written)
  and a bf16 8192^3 matrix product; the datasheet HBM bandwidth comes from the device
  name (H100 SXM 3.35 TB/s, H100 PCIe 2.0 TB/s, H200 4.8 TB/s);
* prefill attention: cached prefix 128-512, 8-40 new tokens per query, batch 1-256, head
  dim 128, GQA 16:2 and 8:1 (and Qwen3-0.6B's 16:8), bf16.  The baseline is torch SDPA
  restricted to the flash backend over the same uniform-length batch ([B, H, Q, D] queries
  against [B, H, P+Q, D] keys with a bottom-right causal mask, GQA native when the backend
  takes it).  Ragged batches (query lengths spread over 8-40) are timed for qpfast alone.
  TFLOP/s counts only the visible (causal) pairs: 4·D·Hq·Σ(Q·P + Q(Q+1)/2);
* decode attention: batch 1-256, cache length 160-600, same head layouts; the baseline is
  flash SDPA with one query; fraction of HBM bandwidth = (K/V read once + q + o) / time;
* bitmask: apply_bitmask_, masked_argmax and masked_sample on [B, 151936] logits with a
  QP-like sparse mask, against the torch references run on the GPU;
* ``engine_benchmark()``: the end-to-end engine on a random 0.6B Qwen3-shaped model,
  skipped with a note when ``qpfast.Engine`` is not available.

Every kernel output is first compared with the reference on the same bf16 inputs
(‖out − ref‖ / ‖ref‖ reported as ``rel_err``; token picks must match exactly).

See /work/.library/device/METHOD.md for the method these timings follow.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import tempfile
import time
import traceback

import torch

try:
    import triton
    import triton.testing
except ImportError:  # pragma: no cover - the script needs triton on a GPU machine
    triton = None

import qpfast.kernels as K
from qpfast.kernels import reference as R
from qpfast.kernels.common import cut, num_sms

VOCAB = 151_936          # Qwen2/Qwen3 lm_head rows
HEAD_DIM = 128


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def datasheet_hbm(name: str) -> float | None:
    """Datasheet HBM bandwidth in bytes/s for the cards this project uses."""
    n = name.upper()
    if "H200" in n:
        return 4.8e12
    if "H100" in n:
        return 2.0e12 if "PCIE" in n else 3.35e12
    if "A100" in n:
        return 2.0e12 if "80GB" in n else 1.555e12
    return None


def bench(fn) -> tuple[float, float]:
    """Median milliseconds of ``fn``, measured twice (the spread shows the noise)."""
    a = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    b = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return a, b


def bench_graph(fn) -> float | None:
    """Median milliseconds of ``fn`` replayed from a CUDA graph (no launch overhead, as
    the engine runs its decode step; the L2 is not flushed between replays). None when
    ``fn`` cannot be captured."""
    try:
        fn()
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception:                     # e.g. a reference that synchronizes
        torch.cuda.synchronize()
        return None


def bench_graph_cold(make_call, nbytes: int) -> float | None:
    """Median milliseconds per call of ``make_call(i)()`` replayed from a CUDA graph that
    runs ``n`` calls on ``n`` separate sets of buffers (``make_call(i)`` allocates set
    ``i``), ``n`` chosen so that the sets together exceed twice the L2 cache: each call
    reads its inputs from HBM, not from the L2, and pays no launch cost.  This is how
    the HBM fractions are computed (one layer's cache, then the next layer's...)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or (50 << 20)
    n = max(1, min(256, -(-2 * l2 // max(1, nbytes))))
    try:
        calls = [make_call(i) for i in range(n)]

        def run():
            for c in calls:
                c()
        run()
        return triton.testing.do_bench_cudagraph(run, rep=50, return_mode="median") / n
    except Exception:
        torch.cuda.synchronize()
        return None


def copy_call(nbytes: int):
    """A device-to-device copy moving ``nbytes`` in all (half read, half written): the
    fastest way to stream that many bytes, the yardstick for small shapes."""
    n = max(1, nbytes // 4)                                   # bf16 elements per side
    src = torch.empty(n, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def measure_ceilings() -> dict:
    n = 1 << 28                                               # 512 MiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms, _ = bench(lambda: dst.copy_(src))
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    mm_ms, _ = bench(lambda: a @ b)
    return {"copy_bytes_per_s": 2 * n * 2 / (copy_ms * 1e-3),
            "bf16_matmul_flops_per_s": 2 * m ** 3 / (mm_ms * 1e-3)}


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_table(title: str, rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    print(f"\n== {title}")
    print("  ".join(f"{h:>{max(len(h), 9)}}" for h, _, _ in cols))
    for r in rows:
        cells = []
        for h, key, spec in cols:
            v = r.get(key)
            s = v if isinstance(v, str) else _fmt(v, spec)
            cells.append(f"{s:>{max(len(h), 9)}}")
        print("  ".join(cells))


# --------------------------------------------------------------------------------------
# prefill
# --------------------------------------------------------------------------------------

def _sdpa_flash():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def _sdpa_prefill_fn(qb, kb, vb, scale):
    """Flash SDPA over a uniform batch with a bottom-right causal mask; GQA native if the
    backend takes it, else with K/V expanded beforehand (noted in the results)."""
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right
    mask = causal_lower_right(qb.shape[2], kb.shape[2])
    group = qb.shape[1] // kb.shape[1]

    def native():
        with _sdpa_flash():
            return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale,
                                                  enable_gqa=group > 1)
    try:
        native()
        return native, "flash"
    except RuntimeError:
        ke = kb.repeat_interleave(group, 1)
        ve = vb.repeat_interleave(group, 1)

        def expanded():
            with _sdpa_flash():
                return F.scaled_dot_product_attention(qb, ke, ve, attn_mask=mask, scale=scale)
        try:
            expanded()
            return expanded, "flash (K/V pre-expanded)"
        except RuntimeError as exc:
            return None, f"unavailable: {exc}"[:80]


def bench_prefill(quick: bool) -> list[dict]:
    heads = [(16, 2), (8, 1)] if quick else [(16, 2), (8, 1), (16, 8)]
    batches = [1, 64] if quick else [1, 4, 16, 64, 256]
    lengths = [(128, 8), (512, 40)] if quick else [(128, 8), (128, 40), (512, 8), (512, 40), (300, 24)]
    from qpfast.kernels import prefill as P
    rows = []
    dt = torch.bfloat16
    for (hq, hkv), bsz, (prefix, qlen) in ((h, b, n) for h in heads for b in batches for n in lengths):
        klen = prefix + qlen
        q = torch.randn(bsz * qlen, hq, HEAD_DIM, device="cuda", dtype=dt)
        k = torch.randn(bsz * klen, hkv, HEAD_DIM, device="cuda", dtype=dt)
        v = torch.randn_like(k)
        cu_q = torch.arange(0, bsz + 1, device="cuda", dtype=torch.int32) * qlen
        cu_k = torch.arange(0, bsz + 1, device="cuda", dtype=torch.int32) * klen
        scale = HEAD_DIM ** -0.5
        ours = K.prefill_attention(q, k, v, cu_q, cu_k)
        ref = R.prefill_attention(q, k, v, cu_q, cu_k)
        err = rel_err(ours, ref)
        ms, ms2 = bench(lambda: K.prefill_attention(q, k, v, cu_q, cu_k))

        qb = q.view(bsz, qlen, hq, HEAD_DIM).transpose(1, 2)
        kb = k.view(bsz, klen, hkv, HEAD_DIM).transpose(1, 2)
        vb = v.view(bsz, klen, hkv, HEAD_DIM).transpose(1, 2)
        sdpa, how = _sdpa_prefill_fn(qb.contiguous(), kb.contiguous(), vb.contiguous(), scale)
        sdpa_ms = bench(sdpa)[0] if sdpa is not None else None
        g_ms = bench_graph(lambda: K.prefill_attention(q, k, v, cu_q, cu_k))
        g_sdpa = bench_graph(sdpa) if sdpa is not None else None
        cfg = P.prefill_config(q.shape[0], bsz, hq // hkv, HEAD_DIM)
        tiles = q.shape[0] // cfg["BLOCK_M"] + bsz
        splits = P.prefill_num_splits(tiles * hkv, klen, cfg["BLOCK_N"], num_sms(q.device))
        # replayed time per forced split count per sequence (1 = no split-K), to check the heuristic
        sweep = {}
        if tiles * hkv < num_sms(q.device):
            for ns in (1, 3, 5, 9, 16):
                sweep[ns] = bench_graph(lambda: P.prefill_attention(q, k, v, cu_q, cu_k, num_splits=ns))

        pairs = bsz * (qlen * prefix + qlen * (qlen + 1) // 2)
        flops = 4 * HEAD_DIM * hq * pairs
        nbytes = 2 * (2 * q.numel() + k.numel() + v.numel())
        rows.append(dict(kind="uniform", heads=f"{hq}:{hkv}", batch=bsz, prefix=prefix, qlen=qlen,
                         splits=splits, graph_ms_by_splits=sweep,
                         ms=ms, ms_repeat=ms2, sdpa_ms=sdpa_ms, sdpa=how,
                         speedup_vs_sdpa=(sdpa_ms / ms) if sdpa_ms else None,
                         graph_ms=g_ms, sdpa_graph_ms=g_sdpa,
                         graph_speedup_vs_sdpa=(g_sdpa / g_ms) if (g_ms and g_sdpa) else None,
                         tflops=flops / (ms * 1e-3) / 1e12, bytes=nbytes,
                         bytes_per_s=nbytes / (ms * 1e-3), rel_err=err))

    # ragged: query lengths spread over 8..40, prefixes over 128..512 (no SDPA baseline)
    g = torch.Generator().manual_seed(0)
    for (hq, hkv), bsz in ((h, b) for h in heads[:2] for b in batches[1:]):
        qlens = torch.randint(8, 41, (bsz,), generator=g)
        prefixes = torch.randint(128, 513, (bsz,), generator=g)
        klens = qlens + prefixes
        q = torch.randn(int(qlens.sum()), hq, HEAD_DIM, device="cuda", dtype=dt)
        k = torch.randn(int(klens.sum()), hkv, HEAD_DIM, device="cuda", dtype=dt)
        v = torch.randn_like(k)
        cu_q = torch.cat([torch.zeros(1, dtype=torch.long), qlens.cumsum(0)]).int().cuda()
        cu_k = torch.cat([torch.zeros(1, dtype=torch.long), klens.cumsum(0)]).int().cuda()
        err = rel_err(K.prefill_attention(q, k, v, cu_q, cu_k), R.prefill_attention(q, k, v, cu_q, cu_k))
        ms, ms2 = bench(lambda: K.prefill_attention(q, k, v, cu_q, cu_k))
        pairs = int((qlens * prefixes + qlens * (qlens + 1) // 2).sum())
        flops = 4 * HEAD_DIM * hq * pairs
        nbytes = 2 * (2 * q.numel() + k.numel() + v.numel())
        rows.append(dict(kind="ragged", heads=f"{hq}:{hkv}", batch=bsz, prefix="128-512", qlen="8-40",
                         ms=ms, ms_repeat=ms2, sdpa_ms=None, sdpa="-", speedup_vs_sdpa=None,
                         tflops=flops / (ms * 1e-3) / 1e12, bytes=nbytes,
                         bytes_per_s=nbytes / (ms * 1e-3), rel_err=err))
    return rows


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------

def decode_shapes(quick: bool, min_bytes: float = 0, max_bytes: float = float("inf")) -> list[tuple]:
    """The decode sections' shapes `(hq, hkv, batch, cache_len)`: the QP grid (a smaller one
    with `quick`), less those whose bf16 call moves fewer than `min_bytes` or more than
    `max_bytes` (`_decode_bytes`)."""
    heads = [(16, 2), (8, 1)] if quick else [(16, 2), (8, 1), (16, 8)]
    batches = [1, 64, 256] if quick else [1, 8, 32, 64, 128, 256]
    lens = [600] if quick else [160, 600]
    return [(hq, hkv, b, n) for hq, hkv in heads for b in batches for n in lens
            if min_bytes <= _decode_bytes(hq, hkv, b, n) <= max_bytes]


def bench_decode(quick: bool, min_bytes: float = 0, max_bytes: float = float("inf")) -> list[dict]:
    """The decode table (`decode_shapes`): eager, graph and cold times against flash SDPA
    and a copy of the same bytes, cold also under programmatic dependent launch."""
    import torch.nn.functional as F
    from qpfast.kernels import decode as D
    rows = []
    dt = torch.bfloat16
    for hq, hkv, bsz, seq in decode_shapes(quick, min_bytes, max_bytes):
        q = torch.randn(bsz, hq, HEAD_DIM, device="cuda", dtype=dt)
        kc = torch.randn(bsz, hkv, seq, HEAD_DIM, device="cuda", dtype=dt)
        vc = torch.randn_like(kc)
        seq_lens = torch.full((bsz,), seq, device="cuda", dtype=torch.int32)
        err = rel_err(K.decode_attention(q, kc, vc, seq_lens), R.decode_attention(q, kc, vc, seq_lens))
        ms, ms2 = bench(lambda: K.decode_attention(q, kc, vc, seq_lens))
        splits = D.decode_num_splits(bsz, hkv, seq, num_sms(q.device))

        q4 = q[:, :, None]
        try:
            def sdpa():
                with _sdpa_flash():
                    return F.scaled_dot_product_attention(q4, kc, vc, enable_gqa=hq != hkv)
            sdpa()
            sdpa_ms, how = bench(sdpa)[0], "flash"
        except RuntimeError as exc:
            sdpa, sdpa_ms, how = None, None, f"unavailable: {exc}"[:80]
        g_ms = bench_graph(lambda: K.decode_attention(q, kc, vc, seq_lens))
        g_sdpa = bench_graph(sdpa) if sdpa is not None else None
        nbytes = 2 * (kc.numel() + vc.numel() + 2 * q.numel())

        # cold: replayed over enough separate caches that they come from HBM, not the L2
        def decode_call(i, ns=None, flash=False):
            qi = torch.randn_like(q)
            ki = torch.empty_like(kc).normal_()
            vi = torch.empty_like(vc).normal_()
            if flash:
                def call():
                    with _sdpa_flash():
                        return F.scaled_dot_product_attention(qi[:, :, None], ki, vi, enable_gqa=hq != hkv)
                return call
            return lambda: D.decode_attention(qi, ki, vi, seq_lens, num_splits=ns)
        cold = bench_graph_cold(decode_call, nbytes)
        with K.programmatic_launch(True):     # each call's programs wait resident for the one before
            cold_pdl = bench_graph_cold(decode_call, nbytes)
        cold_sdpa = bench_graph_cold(lambda i: decode_call(i, flash=True), nbytes) if sdpa is not None else None
        cold_copy = bench_graph_cold(lambda i: copy_call(nbytes), nbytes)
        cold_sweep = ({ns: bench_graph_cold(lambda i, ns=ns: decode_call(i, ns), nbytes) for ns in (1, 2, 4, 8)}
                      if bsz * hkv < num_sms(q.device) else {})
        rows.append(dict(heads=f"{hq}:{hkv}", batch=bsz, seq_len=seq, splits=splits, ms=ms, ms_repeat=ms2,
                         cold_ms=cold, cold_pdl_ms=cold_pdl, cold_sdpa_ms=cold_sdpa, cold_copy_ms=cold_copy,
                         cold_ms_by_splits=cold_sweep,
                         cold_vs_copy=cold_copy / cold if (cold and cold_copy) else None,
                         sdpa_ms=sdpa_ms, sdpa=how, speedup_vs_sdpa=(sdpa_ms / ms) if sdpa_ms else None,
                         graph_ms=g_ms, sdpa_graph_ms=g_sdpa,
                         graph_speedup_vs_sdpa=(g_sdpa / g_ms) if (g_ms and g_sdpa) else None,
                         graph_bytes_per_s=nbytes / (g_ms * 1e-3) if g_ms else None,
                         bytes=nbytes, bytes_per_s=nbytes / (ms * 1e-3), rel_err=err))
    return rows


# configurations tried by the decode tuning sweep: (block_n, num_stages, num_warps)
DECODE_TUNE_CONFIGS = [(64, 2, 4), (64, 3, 4), (64, 4, 4), (32, 4, 4), (128, 2, 4), (128, 3, 8), (128, 1, 8)]
# how split partials are merged: by a second kernel (False) or by the last split (True)
DECODE_TUNE_MERGES = [False, True]


def graph_cold_ms(calls, min_calls: int = 64, replays: int = 10, pdl: bool = False) -> float:
    """Median milliseconds per call of ``calls`` (each on its own buffers, together over
    twice the L2, see :func:`bench_graph_cold`) replayed from one CUDA graph that runs the
    list round-robin at least ``min_calls`` times (so the graph launch is amortized);
    with ``pdl`` the Triton calls are captured with programmatic dependent launch."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls:                     # compile, warm up
            c()
    torch.cuda.synchronize()
    rounds = -(-min_calls // len(calls))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), K.programmatic_launch(pdl):
        for _ in range(rounds):
            for c in calls:
                c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / (rounds * len(calls)))
    del g
    return sorted(times)[len(times) // 2]


def _decode_bytes(hq: int, hkv: int, bsz: int, seq: int) -> int:
    """Bytes one bf16 decode call moves: the K/V caches read once, q read and o written."""
    return 2 * (2 * bsz * hkv * seq * HEAD_DIM + 2 * bsz * hq * HEAD_DIM)


def bench_decode_tune(quick: bool, on_row=None, configs=None, min_bytes: float = 0,
                      merges=None, max_bytes: float = float("inf"), pdl: bool = False) -> list[dict]:
    """Cold decode times (from HBM, graph replay) at the decode section's shapes for each
    launch configuration in DECODE_TUNE_CONFIGS and for the heuristics' own choice
    (`decode_launch`, `decode_num_splits`), at the heuristic's split count and, where
    the sequences x KV heads leave multiprocessors idle, at 1, 2, 4 and 8 splits; with a
    same-size copy as the yardstick.  Each variant's output is checked against the
    reference first.  This is what `decode_launch` / `decode_num_splits` are fitted to.
    ``on_row(rows)`` is called after each shape (the caller saves partial results);
    ``configs`` replaces DECODE_TUNE_CONFIGS; shapes under ``min_bytes`` or over ``max_bytes``
    are skipped;
    ``merges`` = the fused_merge settings to try (default DECODE_TUNE_MERGES); ``pdl``:
    the decode calls chained with programmatic dependent launch (the copy stays plain)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or (50 << 20)
    rows = []
    for hq, hkv, bsz, seq in decode_shapes(quick, min_bytes, max_bytes):
        add_shape_row(rows, dict(heads=f"{hq}:{hkv}", batch=bsz, seq_len=seq),
                      lambda: _tune_decode_shape(hq, hkv, bsz, seq, num_sms(torch.device("cuda")), l2,
                                                 configs or DECODE_TUNE_CONFIGS,
                                                 DECODE_TUNE_MERGES if merges is None else merges, pdl), on_row)
    return rows


def add_shape_row(rows: list, shape: dict, measure, on_row=None) -> None:
    """Appends ``measure()``'s row for one shape, or ``shape`` with the error when it fails
    (one shape failing keeps the others); then frees the cached GPU memory and hands the
    rows so far to ``on_row`` (the caller saves partial results)."""
    try:
        rows.append(measure())
    except Exception as exc:
        traceback.print_exc()
        torch.cuda.synchronize()
        rows.append(dict(shape, error=f"{type(exc).__name__}: {exc}"[:300]))
    torch.cuda.empty_cache()
    if on_row is not None:
        on_row(rows)


def _tune_decode_shape(hq: int, hkv: int, bsz: int, seq: int, sms: int, l2: int, configs, merges,
                       pdl: bool = False) -> dict:
    from qpfast.kernels import decode as D
    dt = torch.bfloat16
    nbytes = _decode_bytes(hq, hkv, bsz, seq)
    n = max(1, min(256, -(-2 * l2 // nbytes)))
    sets = [(torch.randn(bsz, hq, HEAD_DIM, device="cuda", dtype=dt),
             torch.randn(bsz, hkv, seq, HEAD_DIM, device="cuda", dtype=dt),
             torch.randn(bsz, hkv, seq, HEAD_DIM, device="cuda", dtype=dt)) for _ in range(n)]
    outs = [torch.empty_like(q) for q, _, _ in sets]
    seq_lens = torch.full((bsz,), seq, device="cuda", dtype=torch.int32)
    q0, k0, v0 = sets[0]
    ref = R.decode_attention(q0, k0, v0, seq_lens)
    auto = D.decode_num_splits(bsz, hkv, seq, sms)
    few = bsz * hkv < sms
    split_choices = (sorted({auto, 1, 2, 4, 8}) if (few and nbytes >= 16e6) else
                     sorted({auto, 1, 2, 4}) if nbytes >= 16e6 else sorted({auto, 1}))
    copies = [copy_call(nbytes) for _ in range(n)]           # each on its own buffers, like the sets
    copy_ms = graph_cold_ms(copies)
    row = dict(heads=f"{hq}:{hkv}", batch=bsz, seq_len=seq, bytes=nbytes, auto_splits=auto,
               cold_copy_ms=copy_ms, pdl=pdl, variants=[])
    seen = set()
    auto_cfg = D.decode_launch(bsz * hkv * auto, sms, HEAD_DIM)          # what decode_attention picks
    for (bn, st, nw), ns, fused in [(auto_cfg, auto, True)] + [
            (c, ns, m) for c in configs for ns in split_choices for m in merges]:
        split_len, runs = cut(seq, ns, bn)
        fused = fused and runs > 1                # one split has nothing to merge
        key = (bn, st, nw, split_len, runs, fused)   # forced counts that cut the same way run the same
        if key in seen:
            continue
        seen.add(key)
        kw = dict(num_splits=ns, block_n=bn, num_stages=st, num_warps=nw, fused_merge=fused)
        v = dict(block_n=bn, num_stages=st, num_warps=nw, splits=ns, splits_run=runs, fused=fused)
        try:
            err = rel_err(D.decode_attention(q0, k0, v0, seq_lens, **kw), ref)
            ms = graph_cold_ms([lambda q=q, k=k, vv=vv, o=o: D.decode_attention(q, k, vv, seq_lens, out=o, **kw)
                                for (q, k, vv), o in zip(sets, outs)], pdl=pdl)
            v.update(cold_ms=ms, rel_err=err, hbm_bytes_per_s=nbytes / (ms * 1e-3),
                     vs_copy=copy_ms / ms)
        except Exception as exc:             # e.g. out of shared memory: record, go on
            torch.cuda.synchronize()
            v.update(error=f"{type(exc).__name__}: {exc}"[:200])
        row["variants"].append(v)
    ok = [v for v in row["variants"] if v.get("cold_ms") and v["rel_err"] < 2e-2]
    if ok:
        best = min(ok, key=lambda v: v["cold_ms"])
        row["best"] = best
        row["auto"] = dict(block_n=auto_cfg[0], num_stages=auto_cfg[1], num_warps=auto_cfg[2], splits=auto)
        row["auto_cold_ms"] = row["variants"][0].get("cold_ms")
    print(f"  tune {row['heads']} b={bsz} len={seq} {nbytes / 1e6:.1f} MB: copy {copy_ms * 1e3:.1f} us, "
          f"auto {_fmt((row.get('auto_cold_ms') or 0) * 1e3, '.1f')} us {'/'.join(map(str, auto_cfg))} x{auto}, best "
          + (f"{best['cold_ms'] * 1e3:.1f} us {best['block_n']}/{best['num_stages']}/{best['num_warps']}"
             f" x{best['splits_run']}{' fused' if best['fused'] else ''}"
             if ok else "-"), flush=True)
    for v in row["variants"]:                     # the whole sweep, one line per variant
        print(f"    {v['block_n']}/{v['num_stages']}/{v['num_warps']} x{v['splits_run']}"
              f"{' fused' if v['fused'] else ''}: "
              + (f"{v['cold_ms'] * 1e3:.1f} us" if v.get("cold_ms") else v.get("error", "-")), flush=True)
    return row


# --------------------------------------------------------------------------------------
# bitmask
# --------------------------------------------------------------------------------------

def _qp_bitmask(rows: int, vocab: int, allowed_frac: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    words = (vocab + 31) // 32
    bits = torch.rand(rows, words * 32, device="cuda", generator=g) < allowed_frac
    packed = (bits.view(rows, words, 32).long() << torch.arange(32, device="cuda")).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def bench_bitmask(quick: bool, lite: bool = False) -> list[dict]:
    """``lite``: bf16 logits with 1% allowed only (the QP case)."""
    rows_out = []
    batches = [1, 64] if quick else [1, 16, 64, 256]
    dtypes = (torch.bfloat16,) if lite else (torch.bfloat16, torch.float32)
    fracs = (0.01,) if lite else (0.01, 0.5)
    for bsz, dt, frac in ((b, d, f) for b in batches for d in dtypes for f in fracs):
        logits = torch.randn(bsz, VOCAB, device="cuda", dtype=dt)
        bm = _qp_bitmask(bsz, VOCAB, frac)
        esz = logits.element_size()
        words_bytes = bm.numel() * 4
        # correctness first
        a = logits.clone()
        K.apply_bitmask_(a, bm)
        b = logits.clone()
        R.apply_bitmask_(b, bm)
        apply_ok = torch.equal(a, b)
        argmax_ok = torch.equal(K.masked_argmax(logits, bm), R.masked_argmax(logits, bm))
        work = logits.clone()
        cases = [
            ("apply_bitmask_", lambda: K.apply_bitmask_(work, bm), lambda: R.apply_bitmask_(work, bm),
             words_bytes + (1 - frac) * logits.numel() * esz, apply_ok),
            ("masked_argmax", lambda: K.masked_argmax(logits, bm), lambda: R.masked_argmax(logits, bm),
             words_bytes + logits.numel() * esz, argmax_ok),
            ("masked_sample", lambda: K.masked_sample(logits, bm, temperature=0.7),
             lambda: R.masked_sample(logits, bm, temperature=0.7),
             words_bytes + logits.numel() * esz, None),
            ("masked_sample top_p=0.9", lambda: K.masked_sample(logits, bm, temperature=0.7, top_p=0.9),
             lambda: R.masked_sample(logits, bm, temperature=0.7, top_p=0.9),
             words_bytes + 8 * logits.numel() * esz, None),
        ]
        for name, ours, ref, nbytes, ok in cases:
            ms, ms2 = bench(ours)
            ref_ms = bench(ref)[0]
            g_ms, g_ref = bench_graph(ours), bench_graph(ref)
            rows_out.append(dict(op=name, batch=bsz, dtype=str(dt).replace("torch.", ""), allowed=frac,
                                 ms=ms, ms_repeat=ms2, torch_ms=ref_ms, speedup_vs_torch=ref_ms / ms,
                                 graph_ms=g_ms, torch_graph_ms=g_ref,
                                 bytes=nbytes, bytes_per_s=nbytes / (ms * 1e-3),
                                 matches_reference=ok))
    return rows_out


# --------------------------------------------------------------------------------------
# engine (end to end)
# --------------------------------------------------------------------------------------

QP_QUERIES = [
    "兰蔻小黑瓶适合什么肤质", "iphone 15 pro max 和 华为 mate60 哪个好", "周末 上海 去哪玩",
    "油皮 夏天 粉底液 推荐", "小米su7 值得买吗", "学生党 平价 口红 推荐", "雅思 7 分 怎么 准备",
    "猫咪 不吃 东西 怎么办", "北京 三里屯 咖啡 探店", "耐克 574 尺码 偏大 吗", "宝妈 产后 减脂 食谱",
    "成都 民宿 推荐 带院子", "考研 英语 作文 模板", "switch 塞尔达 新手 攻略", "租房 押一付三 合同 注意",
    "星巴克 新品 拿铁 好喝吗",
]


def _qwen3_06b_dir(out_dir: str) -> str:
    """A random-weight checkpoint with Qwen3-0.6B's shapes (28 layers, hidden 1024, 16:8
    heads of dim 128, MLP 3072, vocabulary 151,936, tied embeddings) and Qwen's tokenizer."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
    from qpfast.testing import qwen_tokenizer_dir
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):   # random init on the GPU: seconds
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _profile_engine(eng, queries, path: str) -> None:
    """One `generate` under cProfile (Python time by function) and one under
    torch.profiler (CPU and GPU time by op), written to `path`."""
    import cProfile
    import io
    import pstats
    from torch.profiler import ProfilerActivity, profile
    with open(path, "w") as f:
        pr = cProfile.Profile()
        torch.cuda.synchronize()
        pr.enable()
        eng.generate(queries)
        torch.cuda.synchronize()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(45)
        buf.write("\n\n")
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(35)
        f.write(buf.getvalue())
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            eng.generate(queries)
            torch.cuda.synchronize()
        ka = prof.key_averages()
        f.write("\n\n== by self CPU time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=30))
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                f.write(f"\n\n== by {key}\n" + ka.table(sort_by=key, row_limit=30))
                break
            except Exception:
                continue


def _time_engine(eng, queries: list[str], repeats: int, weight_bytes: int, hbm) -> tuple[dict, list]:
    """Median wall time of ``eng.generate(queries)`` after a warm-up (compile, capture,
    caches), its counters and, with the datasheet bandwidth, the time to read the weights
    once per forward pass; returns (that row, the output token ids)."""
    eng.generate(queries)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = eng.generate(queries)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    stats = dict(getattr(eng, "last_stats", {}) or {})
    wall = sorted(times)[len(times) // 2]
    steps = int(stats.get("decode_forward_passes", 0)) + int(stats.get("prefill_forward_passes", 0))
    cfg = dict(wall_s=wall, wall_s_all=times, forward_passes=steps,
               errors=sum(r.error is not None for r in results),
               stats={k: v for k, v in stats.items() if isinstance(v, (int, float, str))})
    if steps and hbm:
        floor = steps * weight_bytes / hbm
        cfg.update(weights_floor_s=floor, wall_over_floor=wall / floor)
    return cfg, list(eng.last_token_ids)


def engine_benchmark(batch: int = 64, repeats: int = 3, profile_path: str | None = None) -> dict:
    """End to end: ``qpfast.Engine`` on a random 0.6B Qwen3-shaped model, ``batch`` queries
    at once, greedy, against the time to read the weights once per decode step (the issue's
    target: ≤ 3×) and, when ``xgrammar`` is installed, ``model.generate`` constrained by
    xgrammar's built-in JSON grammar (a looser constraint than qp-json/1, so a lower bound
    on that baseline's cost).  Five engine configurations: the default ("kernels" cache
    layout, CUDA-graph decode steps of up to ``DecodeGraphs.max_tokens`` tokens a row that
    also pick), the same with the host picking, the same with one token a row per step, the
    same without graphs, and the "cascade" layout (prompt prefix stored once, the
    shared-prefix kernels) with graphs; then speculative drafts on the graph steps with the
    shipped default model (``_speculation_benchmark``).  Skipped with a note when
    ``qpfast.Engine`` is unavailable.
    """
    import qpfast
    engine_cls = getattr(qpfast, "Engine", None)
    if engine_cls is None:
        note = "qpfast.Engine is not available in this build: engine benchmark skipped"
        print(f"\n== engine\n{note}")
        return {"skipped": note}
    queries = (QP_QUERIES * (batch // len(QP_QUERIES) + 1))[:batch]
    with tempfile.TemporaryDirectory(prefix="qpfast-bench-06b-") as tmp:
        model_dir = _qwen3_06b_dir(tmp)
        eng = engine_cls(model_dir, device="cuda", dtype="bfloat16")
        weight_bytes = sum(p.numel() * p.element_size() for p in eng.model.parameters())
        hbm = datasheet_hbm(torch.cuda.get_device_name())
        out = dict(batch=batch, weight_bytes=weight_bytes, configs={})
        print(f"\n== engine, as timed (batch {batch})", flush=True)
        ids = {}
        # "graphs": CUDA-graph decode steps, forced tokens up to DecodeGraphs.max_tokens a
        # step, greedy picks inside the graph (the default on CUDA); "graphs_host_picks":
        # the same, picks by the host's sparse/dense path; "graphs_1tok": one token a row
        # per step, host picks (the engine of runs 1-11); "eager": no graphs, forced tokens
        # in one multi-token pass (the prefill kernel)
        for name, graphs in (("graphs", True), ("graphs_host_picks", True), ("graphs_1tok", True),
                             ("eager", False)):
            eng.graph_picks = name == "graphs"
            if graphs:
                eng.runner.enable_graphs()
                if name == "graphs_1tok":
                    eng.runner.graphs.max_step_tokens = 0
            else:
                eng.runner.graphs = None
                eng.runner.cache = None
            if name == "graphs":
                # what a server pays once at start: every graph shape up to the default batch
                try:
                    out["warmup"] = eng.warmup()
                    print(f"  warmup: {out['warmup']}", flush=True)
                except Exception as exc:
                    traceback.print_exc()
                    out["warmup"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            out["configs"][name], ids[name] = _time_engine(eng, queries, repeats, weight_bytes, hbm)
            _print_engine_config(name, out["configs"][name])
        eng.graph_picks = True
        out["same_tokens_graphs_vs_eager"] = ids["graphs"] == ids["eager"]
        out["same_rows_graphs_vs_1tok"] = sum(a == b for a, b in zip(ids["graphs"], ids["graphs_1tok"]))
        eng.runner.enable_graphs()
        casc = None
        try:
            casc = engine_cls(model_dir, device="cuda", dtype="bfloat16", attention="cascade")
            out["configs"]["cascade"], ids["cascade"] = _time_engine(casc, queries, repeats, weight_bytes, hbm)
            _print_engine_config("cascade", out["configs"]["cascade"])
            # bf16: the two layouts sum in different orders, so a near-tie may pick differently
            out["cascade_same_rows_vs_graphs"] = sum(a == b for a, b in zip(ids["cascade"], ids["graphs"]))
        except Exception as exc:
            traceback.print_exc()
            out["configs"]["cascade"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if profile_path:
            try:
                eng.generate(queries)
                _profile_engine(eng, queries, profile_path)
            except Exception:
                traceback.print_exc()
        try:
            out["speculation"] = _speculation_benchmark(engine_cls, queries, repeats, hbm)
        except Exception as exc:
            traceback.print_exc()
            out["speculation"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out["xgrammar_baseline"] = _xgrammar_baseline(eng, queries)
        for key, e in (("step_ms", eng), ("cascade_step_ms", casc)):
            if e is None:
                continue
            try:
                out[key] = _step_times(e)
            except Exception as exc:
                traceback.print_exc()
                out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print("\n== engine (0.6B Qwen3-shaped, random weights, bf16, batch %d)" % batch)
    for name, cfg in out["configs"].items():
        _print_engine_config(name, cfg)
    sp = out.get("speculation") or {}
    if "spec4" in sp:
        a, b = sp["spec0"], sp["spec4"]
        print(f"  default model, graphs, drafts 0 / 4: wall {a['wall_s']:.3f} / {b['wall_s']:.3f} s, decode passes "
              f"{a['stats'].get('decode_forward_passes')} / {b['stats'].get('decode_forward_passes')}, drafts "
              f"accepted {b['stats'].get('accepted_draft_tokens')} of {b['stats'].get('draft_tokens')}, "
              f"same rows {sp['same_rows']}")
    w = out.get("warmup") or {}
    if "seconds" in w:
        print(f"  warmup: {w['seconds']:.2f} s, {w['graphs']} graphs, cache {w['cache_slots']} slots x "
              f"{w['cache_positions']} positions ({w['cache_bytes'] / 2**30:.2f} GiB)")
    print(f"  same tokens graphs vs eager: {out['same_tokens_graphs_vs_eager']}")
    print(f"  rows with the same tokens, graphs vs one token a step: {out['same_rows_graphs_vs_1tok']} / {batch}")
    if "cascade_same_rows_vs_graphs" in out:
        print(f"  cascade rows with the same tokens as graphs: {out['cascade_same_rows_vs_graphs']} / {batch}")
    for key in ("step_ms", "cascade_step_ms"):
        for row in out[key] if isinstance(out.get(key), list) else [out.get(key)]:
            print(f"  {key} {row}")
    print(f"  xgrammar: {out['xgrammar_baseline']}")
    base = out["xgrammar_baseline"].get("wall_s") if isinstance(out["xgrammar_baseline"], dict) else None
    if base:
        for name, cfg in out["configs"].items():
            if "wall_s" in cfg:
                print(f"  speedup {name} vs HF generate + xgrammar: {base / cfg['wall_s']:.2f}x")
    return out


def _print_engine_config(name: str, cfg: dict) -> None:
    """One engine configuration's line (printed as soon as it is timed, so that a run cut
    short by its time limit still reports what it measured, and again in the summary)."""
    if "error" in cfg:
        print(f"  {name:>7}: {cfg['error']}", flush=True)
        return
    st = cfg["stats"]
    print(f"  {name:>7}: wall {cfg['wall_s']:.3f} s  forward passes {cfg['forward_passes']}"
          f"  ({st.get('decode_forward_passes')} decode)  output tokens {st.get('output_tokens')}"
          f"  forward {st.get('time_forward', 0):.3f} s  masks {st.get('time_masks', 0):.3f} s"
          f"  logits {st.get('time_logits', 0):.3f} s  floor {cfg.get('weights_floor_s', 0):.3f} s"
          f"  errors {cfg['errors']}", flush=True)


def _speculation_benchmark(engine_cls, queries: list[str], repeats: int, hbm) -> dict:
    """Speculative drafts on the CUDA-graph steps (`speculate=4`) against none, on the
    shipped default model: trained, so its outputs repeat their queries and drafts get
    accepted (the random 0.6B model's do not). Wall times, decode passes, accepted drafts,
    and how many rows gave the same tokens (bf16: a step's shape may round differently)."""
    from qpfast.generate import default_model_dir
    out: dict = {}
    ids = {}
    for name, spec in (("spec0", 0), ("spec4", 4)):
        eng = engine_cls(default_model_dir(), device="cuda", dtype="bfloat16", speculate=spec)
        weight_bytes = sum(p.numel() * p.element_size() for p in eng.model.parameters())
        out[name], ids[name] = _time_engine(eng, queries, repeats, weight_bytes, hbm)
        _print_engine_config(name, out[name])
    out["same_rows"] = sum(a == b for a, b in zip(ids["spec0"], ids["spec4"]))
    return out


def _step_times(eng, batches=(1, 16, 64, 128)) -> list[dict]:
    """Milliseconds of one decode step (medians): replayed CUDA graph (host inputs, copy,
    replay) vs the eager forward, the replayed step that also picks (mask copy, logits,
    masked argmax, picks copied back), and the full-vocabulary logits + argmax of its
    rows; plus the replayed step appending the most tokens a row the graphs allow at that
    batch."""
    r = eng.runner
    if r.prefix is None:
        raise RuntimeError("no prefix in use")
    r.reserve(max(batches), 512)
    rows = []
    for b in batches:
        toks, starts = [100] * b, [40] * b
        graph = triton.testing.do_bench(lambda: r.decode_step(toks, starts), return_mode="median")
        eager = triton.testing.do_bench(lambda: r.forward(0, [[t] for t in toks], starts), return_mode="median")
        states = r.decode_step(toks, starts).clone()
        logits = triton.testing.do_bench(lambda: r.full_logits(states).argmax(1), return_mode="median")
        mask = torch.full((b, -(-r.vocab_size // 32)), -1, dtype=torch.int32,
                          pin_memory=r.device.type == "cuda")
        picked = triton.testing.do_bench(lambda: r.decode_step(toks, starts, mask=mask)[1].cpu(),
                                         return_mode="median")
        row = dict(batch=b, graph_ms=graph, graph_pick_ms=picked, eager_ms=eager, logits_argmax_ms=logits)
        t = r.step_tokens(b)
        if t > 1:
            multi = [[100] * t] * b
            row.update(tokens=t, graph_multi_ms=triton.testing.do_bench(lambda: r.decode_step(multi, starts),
                                                                         return_mode="median"))
        rows.append(row)
    g = r.graphs
    if g is not None and len(g.pieces) > 2:
        # the same picking step launched as one graph instead of pieces (the host launches
        # the whole graph before the GPU starts on it)
        pieces = g.pieces
        g.set_pieces([0, len(r.layers)])
        try:
            for row in rows:
                row["one_graph_pick_ms"] = _step_ms(r, row["batch"], pick=True)
                row["pieces"] = len(pieces) - 1
        finally:
            g.set_pieces(pieces)
    if g is None or r.projection_rows or g.pdl:
        return rows
    # the same steps captured with programmatic dependent launch between the Triton kernels
    # ("pdl"), with the layer projections through kernels.linear (K split across the SMs,
    # SwiGLU fused) instead of torch's GEMMs ("projections"), and with both ("pdl_projections")
    rows_all = max(batches) * r.step_tokens(max(batches))
    for name, pdl, proj in (("pdl", True, 0), ("projections", False, rows_all), ("pdl_projections", True, rows_all)):
        r.set_projection_rows(proj)
        g.set_pdl(pdl)
        try:
            for row in rows:
                row[f"{name}_ms"] = _step_ms(r, row["batch"], pick=False)
                row[f"{name}_pick_ms"] = _step_ms(r, row["batch"], pick=True)
        finally:
            r.set_projection_rows(0)
            g.set_pdl(False)
    return rows


def _step_ms(r, b: int, pick: bool) -> float:
    """Median milliseconds of one replayed one-token decode step of ``b`` rows, with the
    graph's masked pick (an all-allowed mask copied in, the picks copied back) or without."""
    toks, starts = [100] * b, [40] * b
    if not pick:
        return triton.testing.do_bench(lambda: r.decode_step(toks, starts), return_mode="median")
    mask = torch.full((b, -(-r.vocab_size // 32)), -1, dtype=torch.int32, pin_memory=r.device.type == "cuda")
    return triton.testing.do_bench(lambda: r.decode_step(toks, starts, mask=mask)[1].cpu(), return_mode="median")


def section_main(argv, name: str, description: str, run, show, quick_help: str) -> int:
    """``main`` of a script that runs one of this benchmark's sections on its own
    (bench_cascade.py, bench_projections.py): ``--out`` JSON, ``--quick``; skipped without CUDA."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{name}: CUDA is not available; skipped.")
        return 0
    rows = run(args.quick)
    show(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    return 0


def _xgrammar_baseline(eng, queries: list[str]) -> dict:
    try:
        import xgrammar as xgr
    except ImportError:
        return {"skipped": "xgrammar is not installed"}
    try:
        from qpfast.prompt import build_prompt
        tok, model = eng.tokenizer, eng.model
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=eng.vocab_size)
        grammar = xgr.GrammarCompiler(info).compile_builtin_json_grammar()
        prompts = [build_prompt(q, eng.schema, tokenizer=tok) for q in queries]
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True).to("cuda")
        new_tokens = int(eng.last_stats.get("output_tokens", 0) / max(1, len(queries))) or 64

        def run():
            proc = xgr.contrib.hf.LogitsProcessor(grammar)
            return model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                  logits_processor=[proc], pad_token_id=tok.pad_token_id)
        run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return {"wall_s": time.perf_counter() - t0, "max_new_tokens": new_tokens,
                "grammar": "xgrammar builtin JSON"}
    except Exception as exc:   # the baseline must not sink the engine numbers
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


# --------------------------------------------------------------------------------------

def _cascade_section(quick: bool, on_row) -> list[dict]:
    """bench_cascade.py's rows (imported here: it imports this module's helpers)."""
    from bench_cascade import bench_cascade
    return bench_cascade(quick, on_row=on_row)


def _projections_section(quick: bool, on_row) -> list[dict]:
    """bench_projections.py's rows (imported here: it imports this module's helpers)."""
    from bench_projections import bench_projections
    return bench_projections(quick, on_row=on_row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    ap.add_argument("--no-engine", action="store_true", help="skip the end-to-end engine benchmark")
    ap.add_argument("--sections", default="engine,prefill,decode,cascade,bitmask",
                    help="comma-separated sections to run: engine, prefill, decode, decode_tune (launch "
                         "configurations), cascade (bench_cascade.py: shared-prefix decode vs the prefix "
                         "copied per sequence), projections (bench_projections.py: kernels.linear vs torch's GEMMs "
                         "at Qwen3-0.6B's decode projections), bitmask or bitmask_lite (bf16, 1%% allowed only); default: "
                         "engine, prefill, decode, cascade, bitmask")
    ap.add_argument("--profile", metavar="PATH", help="also profile one engine run (CUDA graphs) into PATH")
    ap.add_argument("--tune-configs", help="decode_tune: launch configurations to try, as block_n/stages/warps "
                                            "separated by commas (default: DECODE_TUNE_CONFIGS)")
    ap.add_argument("--min-mb", "--tune-min-mb", dest="min_mb", type=float, default=0.0,
                    help="decode, decode_tune: skip shapes of fewer MB (the whole grid, not --quick's, when "
                         "either bound is given)")
    ap.add_argument("--max-mb", "--tune-max-mb", dest="max_mb", type=float, default=float("inf"),
                    help="decode, decode_tune: skip shapes of more MB")
    ap.add_argument("--tune-pdl", action="store_true",
                    help="decode_tune: chain the calls with programmatic dependent launch")
    ap.add_argument("--tune-merges", help="decode_tune: split merges to try, 'kernel' (a second kernel) and/or "
                                           "'fused' (the last split), separated by commas (default: both)")
    args = ap.parse_args(argv)
    tune_configs = ([tuple(int(x) for x in c.split("/")) for c in args.tune_configs.split(",")]
                    if args.tune_configs else None)
    tune_merges = ([m.strip() == "fused" for m in args.tune_merges.split(",")] if args.tune_merges else None)

    meta = dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), torch=torch.__version__,
                triton=getattr(triton, "__version__", None))
    if not torch.cuda.is_available() or triton is None:
        why = "CUDA is not available" if triton is not None else "triton is not installed"
        print(f"bench_kernels: {why}; the GPU benchmark is skipped.")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(dict(meta, skipped=why), f, indent=2)
        return 0

    name = torch.cuda.get_device_name()
    hbm = datasheet_hbm(name)
    results = dict(meta, device=name, datasheet_hbm_bytes_per_s=hbm, backend=K.backend(torch.empty(1, device="cuda")))
    print(f"device: {name}  torch {torch.__version__}  triton {triton.__version__}  ({meta['date']})")
    results["ceilings"] = measure_ceilings()
    ceil = results["ceilings"]
    print(f"measured copy bandwidth {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s"
          f" (datasheet {hbm / 1e12 if hbm else float('nan'):.2f}),"
          f" bf16 matmul {ceil['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")

    def hbm_frac(rows):
        for r in rows:
            r["hbm_fraction"] = r["bytes_per_s"] / hbm if hbm else None
            r["copy_fraction"] = r["bytes_per_s"] / ceil["copy_bytes_per_s"]
            if r.get("graph_bytes_per_s") and hbm:
                r["graph_hbm_fraction"] = r["graph_bytes_per_s"] / hbm
            for key in ("cold_ms", "cold_pdl_ms", "cold_copy_ms"):   # decode: from HBM, see bench_graph_cold
                if key in r:
                    t = r[key]
                    r[key.replace("_ms", "_hbm_fraction")] = r["bytes"] / (t * 1e-3) / hbm if (t and hbm) else None
                    # the same against the bandwidth a large copy measured on this card (METHOD.md)
                    r[key.replace("_ms", "_ceiling_fraction")] = (r["bytes"] / (t * 1e-3) / ceil["copy_bytes_per_s"]
                                                                  if t else None)
        return rows

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2, default=str)

    def partial(key):
        def keep(rows):                             # a run cut short still leaves its rows
            results[key] = rows
            save()
        return keep

    def tables(key):
        if key == "prefill" and isinstance(results.get("prefill"), list):
            print_table("prefill attention (bf16, D=128)   target: speedup_vs_sdpa >= 0.9", results["prefill"], [
                ("kind", "kind", ""), ("heads", "heads", ""), ("batch", "batch", "d"), ("prefix", "prefix", ""),
                ("qlen", "qlen", ""), ("ms", "ms", ".4f"), ("ms_again", "ms_repeat", ".4f"),
                ("sdpa_ms", "sdpa_ms", ".4f"), ("vs_sdpa", "speedup_vs_sdpa", ".2f"), ("TFLOP/s", "tflops", ".1f"),
                ("graph_ms", "graph_ms", ".4f"), ("g_sdpa_ms", "sdpa_graph_ms", ".4f"),
                ("g_vs_sdpa", "graph_speedup_vs_sdpa", ".2f"), ("splits", "splits", "d"),
                ("rel_err", "rel_err", ".1e")])
            for r in results["prefill"]:
                if r.get("graph_ms_by_splits"):
                    print(f"  {r['heads']} b={r['batch']} {r['prefix']}+{r['qlen']}: graph ms by splits "
                          + " ".join(f"{k}:{_fmt(v, '.4f')}" for k, v in r["graph_ms_by_splits"].items())
                          + f"  (auto {r['splits']}, sdpa {_fmt(r.get('sdpa_graph_ms'), '.4f')})")
        if key == "decode" and isinstance(results.get("decode"), list):
            print_table("decode attention (bf16, D=128)   target: HBM_frac >= 0.6", results["decode"], [
                ("heads", "heads", ""), ("batch", "batch", "d"), ("seq_len", "seq_len", "d"),
                ("splits", "splits", "d"), ("ms", "ms", ".4f"), ("ms_again", "ms_repeat", ".4f"),
                ("sdpa_ms", "sdpa_ms", ".4f"), ("vs_sdpa", "speedup_vs_sdpa", ".2f"),
                ("HBM_frac", "hbm_fraction", ".2f"), ("graph_ms", "graph_ms", ".4f"),
                ("g_sdpa_ms", "sdpa_graph_ms", ".4f"), ("g_vs_sdpa", "graph_speedup_vs_sdpa", ".2f"),
                ("g_HBM", "graph_hbm_fraction", ".2f"), ("cold_ms", "cold_ms", ".4f"),
                ("cold_sdpa", "cold_sdpa_ms", ".4f"), ("cold_copy", "cold_copy_ms", ".4f"),
                ("cold_HBM", "cold_hbm_fraction", ".2f"), ("copy_HBM", "cold_copy_hbm_fraction", ".2f"),
                ("cold_ceil", "cold_ceiling_fraction", ".2f"), ("cold_pdl", "cold_pdl_ms", ".4f"),
                ("pdl_ceil", "cold_pdl_ceiling_fraction", ".2f"),
                ("vs_copy", "cold_vs_copy", ".2f"), ("rel_err", "rel_err", ".1e")])
            for r in results["decode"]:
                print(f"  {r['heads']} b={r['batch']} len={r['seq_len']}: cold ms by splits "
                      + " ".join(f"{k}:{_fmt(v, '.4f')}" for k, v in (r.get("cold_ms_by_splits") or {}).items())
                      + f"  (auto {r['splits']})")
        if key == "cascade" and isinstance(results.get("cascade"), list):
            from bench_cascade import print_cascade
            print_cascade(results["cascade"])
        if key == "projections" and isinstance(results.get("projections"), list):
            from bench_projections import print_projections
            print_projections(results["projections"])
        if key.startswith("bitmask") and isinstance(results.get(key), list):
            print_table(f"bitmask ops (V={VOCAB})", results[key], [
                ("op", "op", ""), ("batch", "batch", "d"), ("dtype", "dtype", ""), ("allowed", "allowed", ".2f"),
                ("ms", "ms", ".4f"), ("ms_again", "ms_repeat", ".4f"), ("torch_ms", "torch_ms", ".4f"),
                ("vs_torch", "speedup_vs_torch", ".1f"), ("graph_ms", "graph_ms", ".4f"),
                ("g_torch_ms", "torch_graph_ms", ".4f"), ("HBM_frac", "hbm_fraction", ".2f")])
            bad = [r for r in results[key] if r["matches_reference"] is False]
            if bad:
                print(f"!! {len(bad)} bitmask results differ from the reference")

    # the engine first: it is the number that matters most if the run is cut short;
    # every section's table is printed and the JSON saved as soon as it is done
    # a size window picks from the whole decode grid (--quick's six shapes would miss it)
    filtered = args.min_mb > 0 or args.max_mb != float("inf")
    mb = dict(min_bytes=args.min_mb * 1e6, max_bytes=args.max_mb * 1e6)
    sections = [] if args.no_engine else [("engine", lambda quick: engine_benchmark(profile_path=args.profile))]
    sections += [("prefill", lambda q: hbm_frac(bench_prefill(q))), ("decode", lambda q: hbm_frac(bench_decode(q and not filtered, **mb))),
                 ("decode_tune", lambda q: bench_decode_tune(q and not filtered, on_row=partial("decode_tune"),
                                                             configs=tune_configs, merges=tune_merges,
                                                             pdl=args.tune_pdl, **mb)),
                 ("cascade", lambda q: _cascade_section(q, partial("cascade"))),
                 ("projections", lambda q: _projections_section(q, partial("projections"))),
                 ("bitmask", lambda q: hbm_frac(bench_bitmask(q))),
                 ("bitmask_lite", lambda q: hbm_frac(bench_bitmask(q, lite=True)))]
    wanted = {x.strip() for x in args.sections.split(",") if x.strip()}
    sections = [(key, fn) for key, fn in sections if key in wanted]
    for key, fn in sections:
        try:
            results[key] = fn(args.quick)
        except Exception as exc:                    # report, keep the other sections
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        torch.cuda.empty_cache()
        tables(key)
        save()

    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
