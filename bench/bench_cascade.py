#!/usr/bin/env python
"""GPU benchmark of cascade decode attention: the prompt prefix stored once for the batch
(``decode_attention(..., prefix_k=, prefix_v=, prefix_len=)``) against the engine's
"kernels" cache layout, where every sequence's cache starts with its own copy of it, read
either from each sequence's copy or (``row0_prefix_len``, the engine's steps since session
18) from the first sequence's copy for all (one copy from HBM, the rest from the L2); and
the cascade prefix read by the decode kernel itself (``prefix_inline=True``: one launch, the
default below :func:`qpfast.kernels.decode.inline_prefix`'s batch size) against the
two-kernel cascade (``prefix_inline=False``, the "casc" columns).

    python bench/bench_cascade.py [--out cascade.json] [--quick]

(also the ``cascade`` section of ``bench/bench_kernels.py``, so one device call runs it).

Shapes: QP prompts (shared prefix of 128 or 512 tokens) with 100 own keys per sequence (a
query of ~20 tokens and ~80 generated), batch 1-256, head dim 128, GQA 16:8 (Qwen3-0.6B),
16:2 and 8:1, bf16.  Per shape: both outputs checked against the torch reference first,
then cold times (``bench_graph_cold``: replayed from a CUDA graph over enough separate
buffers that every call reads from HBM, as the engine's layers do), the bytes each one must
move (copied: every sequence's whole cache; cascade: the prefix once + the own caches + the
float32 partials it writes and reads back), and, for small batches, the cascade time at
1, 2, 4 and 8 prefix splits (what ``qpfast.kernels.cascade.prefix_num_splits`` is to be
fitted to).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import (HEAD_DIM, _decode_bytes, add_shape_row, bench_graph_cold, print_table,  # noqa: E402
                           rel_err, section_main)

OWN = 100


def _shapes(quick: bool):
    heads = [(16, 8), (16, 2)] if quick else [(16, 8), (16, 2), (8, 1)]
    batches = [1, 64, 256] if quick else [1, 16, 64, 128, 256]
    prefixes = [512] if quick else [128, 512]
    return [(h, b, p) for h in heads for b in batches for p in prefixes]


def _bytes(hq: int, hkv: int, bsz: int, keys_per_seq: int, shared: int = 0, partial_slots: int = 0) -> int:
    """Bytes a bf16 decode call must move (`bench_kernels._decode_bytes`: K/V read once, q
    read, o written), plus the shared prefix's K/V read once and the float32 partials (output
    + log-sum-exp, written then read) in ``partial_slots`` scratch slots (the prefix's
    splits, and the own splits when there are several)."""
    d = HEAD_DIM
    return (_decode_bytes(hq, hkv, bsz, keys_per_seq) + 2 * 2 * hkv * shared * d
            + 2 * 4 * bsz * hq * partial_slots * (d + 1))


def bench_cascade(quick: bool = False, on_row=None) -> list[dict]:
    """One row per shape of :func:`_shapes` (see the module docstring); ``on_row(rows)``
    after each shape."""
    from qpfast.kernels.common import num_sms
    sms = num_sms(torch.device("cuda"))
    rows = []
    for (hq, hkv), bsz, plen in _shapes(quick):
        add_shape_row(rows, dict(heads=f"{hq}:{hkv}", batch=bsz, prefix=plen),
                      lambda: _cascade_shape(hq, hkv, bsz, plen, sms), on_row)
    return rows


def _cascade_shape(hq: int, hkv: int, bsz: int, plen: int, sms: int) -> dict:
    import qpfast.kernels as K
    from qpfast.kernels import decode as D
    from qpfast.kernels import reference as R
    from qpfast.kernels.cascade import prefix_plan
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(bsz * 1000 + plen)
    mk = lambda *shape: torch.randn(*shape, device="cuda", dtype=dt, generator=g)  # noqa: E731
    q = mk(bsz, hq, HEAD_DIM)
    pk, pv = mk(hkv, plen, HEAD_DIM), mk(hkv, plen, HEAD_DIM)
    kc, vc = mk(bsz, hkv, OWN, HEAD_DIM), mk(bsz, hkv, OWN, HEAD_DIM)
    lens = torch.full((bsz,), OWN, device="cuda", dtype=torch.int32)
    plen_t = torch.tensor([plen], device="cuda", dtype=torch.int32)
    full_k = torch.cat([pk[None].expand(bsz, -1, -1, -1), kc], 2)
    full_v = torch.cat([pv[None].expand(bsz, -1, -1, -1), vc], 2)
    full_lens = lens + plen
    ref = R.decode_attention(q, full_k, full_v, full_lens)
    casc = K.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen_t)
    copied = K.decode_attention(q, full_k, full_v, full_lens)
    row0 = K.decode_attention(q, full_k, full_v, full_lens, row0_prefix_len=plen_t)
    del full_k, full_v
    auto_splits = prefix_plan(bsz, hkv, hq // hkv, HEAD_DIM, plen, sms)[2]
    own_splits = D.decode_num_splits(bsz, hkv, OWN, sms)
    copied_splits = D.decode_num_splits(bsz, hkv, plen + OWN, sms)
    b_copied = _bytes(hq, hkv, bsz, plen + OWN, partial_slots=copied_splits if copied_splits > 1 else 0)
    b_casc = _bytes(hq, hkv, bsz, OWN, shared=plen,
                    partial_slots=auto_splits + (own_splits if own_splits > 1 else 0))
    b_row0 = _bytes(hq, hkv, bsz, OWN, shared=plen, partial_slots=copied_splits if copied_splits > 1 else 0)

    def copied_call(i, row0=False):
        qi = torch.randn_like(q)
        ki = torch.randn(bsz, hkv, plen + OWN, HEAD_DIM, device="cuda", dtype=dt)
        vi = torch.randn_like(ki)
        extra = dict(row0_prefix_len=plen_t) if row0 else {}
        return lambda: D.decode_attention(qi, ki, vi, full_lens, **extra)

    def cascade_call(i, splits=None, inline=False):
        qi = torch.randn_like(q)
        pki, pvi = torch.randn_like(pk), torch.randn_like(pv)
        ki, vi = torch.randn_like(kc), torch.randn_like(vc)
        return lambda: D.decode_attention(qi, ki, vi, lens, prefix_k=pki, prefix_v=pvi, prefix_len=plen_t,
                                          prefix_splits=splits, prefix_inline=inline)

    cold_copied = bench_graph_cold(copied_call, b_copied)
    cold_casc = bench_graph_cold(cascade_call, b_casc)
    cold_row0 = bench_graph_cold(lambda i: copied_call(i, row0=True), b_row0)
    inline = K.decode_attention(q, kc, vc, lens, prefix_k=pk, prefix_v=pv, prefix_len=plen_t, prefix_inline=True)
    cold_inline = bench_graph_cold(lambda i: cascade_call(i, inline=True), b_row0)
    sweep = ({ps: bench_graph_cold(lambda i, ps=ps: cascade_call(i, ps), b_casc) for ps in (1, 2, 4, 8)}
             if bsz * hkv < sms else {})
    return dict(
        heads=f"{hq}:{hkv}", batch=bsz, prefix=plen, own=OWN, prefix_splits=auto_splits,
        own_splits=own_splits, copied_splits=copied_splits, rel_err_cascade=rel_err(casc, ref),
        rel_err_copied=rel_err(copied, ref), rel_err_row0=rel_err(row0, ref), rel_err_inline=rel_err(inline, ref),
        cold_copied_ms=cold_copied, cold_cascade_ms=cold_casc, cold_row0_ms=cold_row0, cold_inline_ms=cold_inline,
        inline_auto=D.inline_prefix(bsz, hkv, sms),
        speedup=(cold_copied / cold_casc) if (cold_copied and cold_casc) else None,
        speedup_row0=(cold_copied / cold_row0) if (cold_copied and cold_row0) else None,
        bytes_copied=b_copied, bytes_cascade=b_casc, mb_copied=b_copied / 1e6, mb_cascade=b_casc / 1e6,
        copied_tb_s=b_copied / (cold_copied * 1e-3) / 1e12 if cold_copied else None,
        cascade_tb_s=b_casc / (cold_casc * 1e-3) / 1e12 if cold_casc else None,
        cold_cascade_ms_by_prefix_splits=sweep)


def print_cascade(rows: list[dict]) -> None:
    print_table(f"cascade decode vs prefix copied per sequence (bf16, D={HEAD_DIM}, {OWN} own keys, cold)", rows, [
        ("heads", "heads", ""), ("batch", "batch", "d"), ("prefix", "prefix", "d"),
        ("p_splits", "prefix_splits", "d"), ("o_splits", "own_splits", "d"),
        ("copied_ms", "cold_copied_ms", ".4f"), ("casc_ms", "cold_cascade_ms", ".4f"), ("speedup", "speedup", ".2f"),
        ("row0_ms", "cold_row0_ms", ".4f"), ("row0_x", "speedup_row0", ".2f"),
        ("inline_ms", "cold_inline_ms", ".4f"), ("inl_auto", "inline_auto", ""),
        ("copied_MB", "mb_copied", ".1f"), ("casc_MB", "mb_cascade", ".1f"),
        ("copied_TB/s", "copied_tb_s", ".2f"), ("casc_TB/s", "cascade_tb_s", ".2f"),
        ("err_casc", "rel_err_cascade", ".1e"), ("err_copied", "rel_err_copied", ".1e"),
        ("err_row0", "rel_err_row0", ".1e"), ("err_inline", "rel_err_inline", ".1e")])
    for r in rows:
        if r.get("cold_cascade_ms_by_prefix_splits"):
            print(f"  {r['heads']} b={r['batch']} prefix={r['prefix']}: cold ms by prefix splits "
                  + " ".join(f"{k}:{v:.4f}" if v else f"{k}:-" for k, v in r["cold_cascade_ms_by_prefix_splits"].items())
                  + f"  (auto {r['prefix_splits']})")


def main(argv=None) -> int:
    return section_main(argv, "bench_cascade", __doc__.split("\n\n")[0], bench_cascade, print_cascade, "fewer shapes")


if __name__ == "__main__":
    sys.exit(main())
