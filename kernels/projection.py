"""Triton projections for decode steps: few rows, weights streamed once, K split across SMs.

A decode step of a small model multiplies a handful of rows (the batch) by each layer's
weights, so every projection is a read of its weight matrix. At QP batch sizes torch's
GEMMs cut such a product into few output tiles: Qwen3-0.6B's o_proj and down_proj (1,024
outputs) make 8-16 tiles for a 132-SM H200, and run 13 measured its projections at ~1/3 of
HBM bandwidth (5-6 us each). :func:`linear` cuts the output into ``BLOCK_M x BLOCK_N`` tiles
and, when they leave multiprocessors idle, the reduction dimension into ``SPLIT_K`` runs,
so that about one program per SM streams its part of the weights. The runs' fp32 partials
are summed by the tile's last program to finish (an acquire-release counter per tile, as
the decode kernel's fused merge), always in split order, so the result does not depend
on which program came last, and no second launch is needed.

``swiglu=True`` takes a fused gate/up weight ``[2I, K]`` and returns ``silu(gate) * up``
``[M, I]``: each program computes matching gate and up tiles, so the MLP's activation
costs no launch and its ``[M, 2I]`` product is never written out. Arithmetic as
:func:`qpfast.kernels.reference.linear`: fp32 accumulation, the product rounded to the
input dtype before the activation (as Hugging Face's modules round it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import bulk_aligned, bulk_prefetch, cdiv, grid_dependency, num_sms, pdl_launch, pow2, zeroed_counters
from . import reference
from .reference import check_linear_args

#: Most rows :func:`linear_launch` plans for in one tile (larger inputs take more tiles).
MAX_BLOCK_M = 128


@triton.jit
def _linear_kernel(
    X, W, BIAS, OUT, PART, COUNTERS, RES, NORM_W, ROW_SS, SS_OUT,
    M, N, K, stride_xm, stride_wn, stride_om, stride_rm, split_len, n_parts, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,                      # runs of K, summed by each tile's last program
    EVEN_K: tl.constexpr,                       # K % BLOCK_K == 0: no mask along K
    HAS_BIAS: tl.constexpr,
    SWIGLU: tl.constexpr,                       # W is [2N, K] (gate rows, then up rows)
    DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,                      # programmatic dependent launch (common.grid_dependency)
    PREFETCH: tl.constexpr,                     # with USE_PDL: pull the weights into L2 before the wait
    NORM_MODE: tl.constexpr,                    # x's rows RMS-normalized (weight NORM_W) first: 0 no, 1 their
                                                # sums of squares computed here, 2 summed from ROW_SS [n_parts, M]
    HAS_RES: tl.constexpr,                      # OUT = RES + the product (the residual stream)
    WRITE_SS: tl.constexpr,                     # with HAS_RES: SS_OUT [N tiles, M] = each tile's sums of
                                                # squares of OUT's rows (a NORM_MODE 2 call's ROW_SS)
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    tiles_n = tl.cdiv(N, BLOCK_N)
    rm = (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = X + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = W + rn.to(tl.int64)[:, None] * stride_wn
    u_rows = W + (rn + N).to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    k_lo = split * split_len
    k_hi = tl.minimum(K, k_lo + split_len)
    if PREFETCH:
        # the weights do not depend on the kernel ahead: while it runs, start streaming this
        # program's slice of them from HBM into the L2 (one bulk prefetch a weight row)
        nbytes = (k_hi - k_lo) * (W.dtype.element_ty.primitive_bitwidth // 8)
        rows = tl.minimum(rn, N - 1)
        bulk_prefetch(W + k_lo + rows.to(tl.int64) * stride_wn, tl.zeros_like(rows) + nbytes)
        if SWIGLU:
            bulk_prefetch(W + k_lo + (rows + N).to(tl.int64) * stride_wn, tl.zeros_like(rows) + nbytes)
    grid_dependency(USE_PDL)
    # the RMSNorm of x's rows (add_rms_norm's arithmetic): 1 / sqrt(mean of squares + eps)
    ss = tl.zeros([BLOCK_M], tl.float32)
    if NORM_MODE == 1:                          # the whole rows, read here (from the L2)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            xf = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
            ss += tl.sum(xf * xf, axis=1)
    if NORM_MODE == 2:                          # the partial sums the call that wrote x left
        for t in range(n_parts):
            ss += tl.load(ROW_SS + t * M + rm, mask=m_ok, other=0.0)
    rstd = tl.rsqrt(ss / K + eps)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + rk
        if EVEN_K:
            x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(w_rows + kk[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = kk < K
            x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM_MODE > 0:                       # rounded to the dtype, then the weight (as HF's)
            nw = tl.load(NORM_W + kk, mask=kk < K, other=0.0).to(x.dtype)
            x = (x.to(tl.float32) * rstd[:, None]).to(x.dtype) * nw[None, :]
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        if SWIGLU:
            if EVEN_K:
                u = tl.load(u_rows + kk[None, :], mask=n_ok[:, None], other=0.0)
            else:
                u = tl.load(u_rows + kk[None, :], mask=n_ok[:, None] & (kk < K)[None, :], other=0.0)
            acc_u = tl.dot(x, tl.trans(u), acc_u, input_precision=DOT_PRECISION)

    out_ptrs = OUT + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        _linear_epilogue(acc, acc_u, BIAS, OUT, out_ptrs, RES, SS_OUT, rm, rn, m_ok, n_ok, ok, M, tile % tiles_n,
                         stride_rm, HAS_BIAS, SWIGLU, HAS_RES, WRITE_SS)
    else:
        # partials: PART [SPLIT_K, M, N] (and the up half at [SPLIT_K, M, N .. 2N] for SwiGLU)
        cols = 2 * N if SWIGLU else N
        part = PART + rm.to(tl.int64)[:, None] * cols + rn[None, :]
        plane = M * cols
        tl.store(part + split * plane, acc, mask=ok)
        if SWIGLU:
            tl.store(part + split * plane + N, acc_u, mask=ok)
        tl.debug_barrier()                                  # every thread's partials are out
        counter = COUNTERS + tile
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:                          # the tile's last program sums them
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")   # ready for the next call
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in range(SPLIT_K):                        # in split order: deterministic
                acc += tl.load(part + s * plane, mask=ok, other=0.0)
                if SWIGLU:
                    acc_u += tl.load(part + s * plane + N, mask=ok, other=0.0)
            _linear_epilogue(acc, acc_u, BIAS, OUT, out_ptrs, RES, SS_OUT, rm, rn, m_ok, n_ok, ok, M,
                             tile % tiles_n, stride_rm, HAS_BIAS, SWIGLU, HAS_RES, WRITE_SS)


@triton.jit
def _linear_epilogue(acc, acc_u, BIAS, OUT, out_ptrs, RES, SS_OUT, rm, rn, m_ok, n_ok, ok, M, tile_n, stride_rm,
                     HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr, HAS_RES: tl.constexpr, WRITE_SS: tl.constexpr):
    dt = OUT.dtype.element_ty
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if SWIGLU:
        g = acc.to(dt).to(tl.float32)                       # the projection, rounded as torch's
        act = (g / (1.0 + tl.exp(-g))).to(dt)               # F.silu rounds to the dtype
        tl.store(out_ptrs, act * acc_u.to(dt), mask=ok)
    elif HAS_RES:                                           # add_rms_norm's residual add
        r = tl.load(RES + rm.to(tl.int64)[:, None] * stride_rm + rn[None, :], mask=ok, other=0.0)
        h = (acc.to(dt).to(tl.float32) + r.to(tl.float32)).to(dt)
        tl.store(out_ptrs, h, mask=ok)
        if WRITE_SS:
            hf = tl.where(ok, h.to(tl.float32), 0.0)
            tl.store(SS_OUT + tile_n * M + rm, tl.sum(hf * hf, axis=1), mask=m_ok)
    else:
        tl.store(out_ptrs, acc.to(dt), mask=ok)


def linear_launch(m: int, n: int, k: int, sms: int, swiglu: bool = False, elem_bytes: int = 2) -> dict:
    """The launch plan of :func:`linear` for ``m`` rows, ``n`` output columns and reduction
    length ``k`` on ``sms`` multiprocessors (inputs of ``elem_bytes`` bytes): tile sizes, the
    number of K runs, pipeline stages and warps.

    Tiles of up to ``MAX_BLOCK_M`` rows (at least 16: the tensor cores' smallest) by 64
    columns and 128-long K blocks (64 for 4-byte inputs: a 128-row SwiGLU tile's three
    stages would not fit a block's shared memory); when the tiles number fewer than the multiprocessors,
    K is cut into runs of whole blocks until about one program per SM (each reads its own
    part of the weights once). Not yet fitted on a GPU (bench_kernels' ``linear`` section
    sweeps the alternatives).
    """
    block_m = min(MAX_BLOCK_M, max(16, pow2(m)))
    block_n, block_k = 64, (128 if elem_bytes <= 2 else 64)
    tiles = cdiv(max(1, m), block_m) * cdiv(n, block_n)
    k_blocks = cdiv(k, block_k)
    split = max(1, min(k_blocks, sms // max(1, tiles)))
    per = cdiv(k_blocks, split)                  # whole blocks per run; no empty run
    split = cdiv(k_blocks, per)
    return dict(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split,
                num_stages=3 if swiglu or block_m > 64 else 4, num_warps=8 if block_m > 64 else 4)


def linear(x, w, bias=None, *, swiglu=False, residual=None, norm_weight=None, eps=1e-6, row_sumsq=None,
           sumsq_out=False, out=None, block_m=None, block_n=None, block_k=None, split_k=None, num_stages=None,
           num_warps=None):
    """Triton version of :func:`qpfast.kernels.reference.linear`.

    ``row_sumsq`` (with ``norm_weight``): the partial sums of squares of x's rows that the
    call writing x returned with ``sumsq_out=True`` (float32 ``[parts, M]``); the rows' norm
    then reads them instead of the whole rows. ``sumsq_out=True`` (with ``residual``)
    returns ``(out, row_sumsq)``, one partial sum per output tile of 64 columns.
    ``out`` (optional) receives the result; ``block_m``, ``block_n``, ``block_k``,
    ``split_k``, ``num_stages`` and ``num_warps`` override :func:`linear_launch` (tests,
    tuning). A split product needs the per-tile counters (:func:`qpfast.kernels.common.
    zeroed_counters`), made on the first use outside a CUDA-graph capture; without them it
    runs unsplit.
    """
    m, k, n = check_linear_args(x, w, bias, swiglu, residual, norm_weight, row_sumsq, sumsq_out)
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    elif out.shape != (m, n) or out.dtype != x.dtype or out.device != x.device or out.stride(1) != 1:
        raise ValueError(f"out must be a {x.dtype} tensor of shape {(m, n)} on {x.device} with unit column stride")
    if m == 0 or n == 0 or k == 0:               # nothing to stream: torch's
        out.copy_(reference.linear(x, w, bias, swiglu=swiglu, residual=residual, norm_weight=norm_weight, eps=eps))
        if sumsq_out:
            return out, out.float().square().sum(1)[None]
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    if w.stride(1) != 1:
        w = w.contiguous()
    plan = linear_launch(m, n, k, num_sms(x.device), swiglu, x.element_size())
    bm = block_m or plan["block_m"]
    bn = block_n or plan["block_n"]
    bk = block_k or plan["block_k"]
    tiles = cdiv(m, bm) * cdiv(n, bn)
    split = max(1, min(int(split_k or plan["split_k"]), cdiv(k, bk)))
    split_len = cdiv(cdiv(k, bk), split) * bk
    split = cdiv(k, split_len)
    counters = zeroed_counters("linear", x.device, tiles) if split > 1 else None
    if counters is None:
        split, split_len = 1, cdiv(k, bk) * bk
    part = (torch.empty((split, m, 2 * n if swiglu else n), dtype=torch.float32, device=x.device)
            if split > 1 else out)
    ss_out = torch.empty((cdiv(n, bn), m), dtype=torch.float32, device=x.device) if sumsq_out else None
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    pdl = pdl_launch(x.device)
    _linear_kernel[(tiles, split)](
        x, w, bias if bias is not None else w, out, part, counters if counters is not None else out,
        residual if residual is not None else out, norm_weight if norm_weight is not None else w,
        row_sumsq if row_sumsq is not None else part, ss_out if ss_out is not None else part,
        m, n, k, x.stride(0), w.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        split_len, row_sumsq.shape[0] if row_sumsq is not None else 0, float(eps),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, EVEN_K=k % bk == 0,
        HAS_BIAS=bias is not None, SWIGLU=bool(swiglu),
        NORM_MODE=0 if norm_weight is None else (2 if row_sumsq is not None else 1),
        HAS_RES=residual is not None, WRITE_SS=ss_out is not None,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_stages=num_stages or plan["num_stages"], num_warps=num_warps or plan["num_warps"],
        PREFETCH=pdl["USE_PDL"] and bulk_aligned(w) and (k * w.element_size()) % 16 == 0, **pdl,
    )
    return (out, ss_out) if sumsq_out else out
