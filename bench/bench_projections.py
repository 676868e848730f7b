#!/usr/bin/env python
"""GPU benchmark of a decode step's layer projections: ``qpfast.kernels.linear`` (Triton,
K split across the SMs, SwiGLU fused) against torch's GEMMs (cuBLAS, ``F.linear``, and
``F.linear`` + ``silu_mul`` for the MLP's gate/up), at Qwen3-0.6B's four projections and the
engine's decode batch sizes.

    python bench/bench_projections.py [--out projections.json] [--quick]

(also the ``projections`` section of ``bench/bench_kernels.py``, so one device call runs it).

Per (projection, rows): both outputs checked against the float32 reference first; then cold
times (``bench_graph_cold``: replayed from a CUDA graph over enough separate weight copies
that every call reads its weights from HBM, as a step's 28 layers do) for torch, for the
kernel's own plan (``linear_launch``), and for the variants of :data:`VARIANTS` (tile width,
K runs, pipeline depth), which is what ``linear_launch`` is to be fitted to; bytes moved =
the weights + the rows read + the output written; ``x_torch`` = torch's time / the plan's.

Run 13 (H200) had torch's projections at 5-6 us each, about a third of HBM bandwidth; the
step's 112 of them were ~0.6 of its 1.88 ms.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import add_shape_row, bench_graph_cold, print_table, rel_err, section_main  # noqa: E402

# Qwen3-0.6B: name -> (weight rows, reduction length, SwiGLU fused)
PROJECTIONS = {"qkv": (4096, 1024, False), "o": (1024, 2048, False), "gate_up": (6144, 1024, True),
               "down": (1024, 3072, False)}
# launch variants tried beside the plan: (block_n, split_k or None = the plan's, stages)
VARIANTS = [(32, None, 4), (64, None, 3), (128, None, 3), (64, 1, 4), (32, 1, 4), ("x2", None, 4)]


def _variant_cfg(plan: dict, variant) -> dict:
    bn, split, stages = variant
    cfg = dict(plan, num_stages=stages)
    if bn == "x2":                              # twice the plan's K runs
        cfg["split_k"] = plan["split_k"] * 2
    else:
        cfg["block_n"] = bn
        if split is not None:
            cfg["split_k"] = split
    return cfg


def _measure(name: str, rows: int, sms: int, device: str = "cuda", cold_timer=bench_graph_cold,
             dt: torch.dtype = torch.bfloat16) -> dict:
    """One row of :func:`bench_projections` (``device``, ``cold_timer`` and ``dt``: a CPU
    test runs it in Triton's interpreter, which has no bf16, with a stand-in timer)."""
    from qpfast.kernels import programmatic_launch, projection, reference
    n_w, k, swiglu = PROJECTIONS[name]
    n_out = n_w // 2 if swiglu else n_w
    nbytes = 2 * (n_w * k + rows * k + rows * n_out)
    g = torch.Generator(device=device).manual_seed(rows)
    x = torch.randn(rows, k, device=device, generator=g).to(dt)
    w0 = (torch.randn(n_w, k, device=device, generator=g) / k ** 0.5).to(dt)
    plan = projection.linear_launch(rows, n_out, k, sms, swiglu)
    ref = reference.linear(x.float(), w0.float(), swiglu=swiglu)

    def torch_call(w):
        return lambda: reference.silu_mul(F.linear(x, w)) if swiglu else F.linear(x, w)

    def kernel_call(w, cfg):
        out = torch.empty(rows, n_out, device=device, dtype=dt)
        return lambda: projection.linear(x, w, swiglu=swiglu, out=out, **cfg)

    row = dict(proj=name, rows=rows, n=n_out, k=k, bytes=nbytes, mb=nbytes / 1e6, plan=f"{plan['block_m']}x{plan['block_n']}"
               f"x{plan['block_k']}/s{plan['split_k']}/st{plan['num_stages']}/w{plan['num_warps']}")
    row["rel_err"] = rel_err(projection.linear(x, w0, swiglu=swiglu, **plan), ref)
    row["torch_rel_err"] = rel_err(torch_call(w0)(), ref)

    def cold(make):
        return cold_timer(lambda i: make(w0 if i == 0 else torch.randn_like(w0)), nbytes)

    row["torch_ms"] = cold(torch_call)
    row["ms"] = cold(lambda w: kernel_call(w, plan))
    with programmatic_launch(True):     # each call's weights prefetched while the one before runs
        row["pdl_ms"] = cold(lambda w: kernel_call(w, plan))
    by_variant = {}
    for v in VARIANTS:
        cfg = _variant_cfg(plan, v)
        key = f"n{cfg['block_n']}/s{cfg['split_k']}/st{cfg['num_stages']}"
        if key in by_variant:
            continue
        err = rel_err(projection.linear(x, w0, swiglu=swiglu, **cfg), ref)
        by_variant[key] = cold(lambda w, cfg=cfg: kernel_call(w, cfg)) if err < 2e-2 else f"rel_err {err:.1e}"
    row["ms_by_variant"] = by_variant
    timed = {k2: v for k2, v in by_variant.items() if isinstance(v, float)}
    if timed:
        row["best_variant"], row["best_ms"] = min(timed.items(), key=lambda kv: kv[1])
    for key in ("torch_ms", "ms", "pdl_ms", "best_ms"):
        t = row.get(key)
        row[key.replace("ms", "tb_s")] = nbytes / (t * 1e-3) / 1e12 if t else None
    row["x_torch"] = row["torch_ms"] / row["ms"] if row.get("torch_ms") and row.get("ms") else None
    return row


def bench_projections(quick: bool = False, on_row=None) -> list[dict]:
    """One row per (projection, rows); ``on_row(rows)`` after each (partial results)."""
    from qpfast.kernels.common import num_sms
    sms = num_sms(torch.device("cuda"))
    batches = [16, 64] if quick else [1, 16, 64, 128]
    rows: list[dict] = []
    for name in PROJECTIONS:
        for b in batches:
            add_shape_row(rows, dict(proj=name, rows=b), lambda: _measure(name, b, sms), on_row)
    return rows


def print_projections(rows: list[dict]) -> None:
    print_table("decode projections (bf16, Qwen3-0.6B, cold)   kernels.linear vs torch", rows, [
        ("proj", "proj", ""), ("rows", "rows", "d"), ("MB", "mb", ".1f"), ("plan", "plan", ""),
        ("torch_ms", "torch_ms", ".4f"), ("ms", "ms", ".4f"), ("x_torch", "x_torch", ".2f"),
        ("torch_TB/s", "torch_tb_s", ".2f"), ("TB/s", "tb_s", ".2f"), ("pdl_ms", "pdl_ms", ".4f"),
        ("pdl_TB/s", "pdl_tb_s", ".2f"), ("best", "best_variant", ""),
        ("best_ms", "best_ms", ".4f"), ("rel_err", "rel_err", ".1e")])
    for r in rows:
        if r.get("ms_by_variant"):
            print(f"  {r['proj']} rows={r['rows']}: " + " ".join(
                f"{k}:{v if isinstance(v, str) else f'{v:.4f}'}" for k, v in r["ms_by_variant"].items()))


def main(argv=None) -> int:
    return section_main(argv, "bench_projections", __doc__.split("\n\n")[0], bench_projections, print_projections,
                        "batches 16 and 64 only")


if __name__ == "__main__":
    sys.exit(main())
