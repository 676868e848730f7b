"""Triton kernels for the per-token elementwise work of a Llama/Qwen decoder layer.

A decode step of a small model at QP batch sizes is a chain of tiny kernels: in plain
torch each layer launches ~40 of them (two RMSNorms of six ops each, Qwen3's per-head q/k
norms, the rotary embedding's slices, negations and concatenations, the cache writes, the
SwiGLU), each a few microseconds of mostly fixed cost. These three kernels do the same
work in three launches a layer:

* :func:`add_rms_norm` — residual add and RMSNorm, one program per row;
* :func:`qk_norm_rope_store` — per-head q/k RMSNorm, rotary embedding, and the K/V cache
  writes, one program per (token, head) of q, k and v;
* :func:`silu_mul` — SwiGLU on the fused gate/up projection.

Arithmetic is float32 inside, with the same casts as Hugging Face's modules where they
change the result (the normalized row is rounded to the model dtype before the weight).
The torch versions in :mod:`qpfast.kernels.reference` define the semantics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import grid_dependency, pdl_launch, pow2


@triton.jit
def _add_rms_kernel(X, RES, W, OUT, H_OUT, n_cols, stride_x, stride_r, stride_o, stride_h, eps,
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    grid_dependency(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(RES + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(H_OUT.dtype.element_ty)
        tl.store(H_OUT + row * stride_h + cols, x, mask=ok)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(W + cols, mask=ok, other=0.0).to(OUT.dtype.element_ty)
    y = (xf * inv).to(OUT.dtype.element_ty) * w
    tl.store(OUT + row * stride_o + cols, y, mask=ok)


def add_rms_norm(x, residual, weight, eps):
    """Triton version of :func:`qpfast.kernels.reference.add_rms_norm`."""
    n, h = x.shape
    out = torch.empty_like(x)
    h_out = torch.empty_like(x) if residual is not None else x
    if n == 0:
        return out, h_out
    res = residual if residual is not None else x
    _add_rms_kernel[(n,)](x, res, weight, out, h_out, h, x.stride(0), res.stride(0), out.stride(0),
                          h_out.stride(0), eps, HAS_RES=residual is not None, BLOCK=pow2(h),
                          num_warps=4 if h <= 2048 else 8, **pdl_launch(x.device))
    return out, h_out


@triton.jit
def _norm_rope(QKV, W, COS, SIN, p, stride_cos, x1, x2, offs, ok, eps,
               HALF: tl.constexpr, HAS_NORM: tl.constexpr):
    """One head (two halves): optional RMSNorm with weight W, then the rotary embedding."""
    dt = QKV.dtype.element_ty
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    if HAS_NORM:
        inv = tl.rsqrt((tl.sum(f1 * f1, axis=0) + tl.sum(f2 * f2, axis=0)) / (2 * HALF) + eps)
        w1 = tl.load(W + offs, mask=ok, other=0.0)
        w2 = tl.load(W + HALF + offs, mask=ok, other=0.0)
        f1 = ((f1 * inv).to(dt) * w1.to(dt)).to(tl.float32)
        f2 = ((f2 * inv).to(dt) * w2.to(dt)).to(tl.float32)
    c1 = tl.load(COS + p * stride_cos + offs, mask=ok, other=0.0).to(dt).to(tl.float32)
    c2 = tl.load(COS + p * stride_cos + HALF + offs, mask=ok, other=0.0).to(dt).to(tl.float32)
    s1 = tl.load(SIN + p * stride_cos + offs, mask=ok, other=0.0).to(dt).to(tl.float32)
    s2 = tl.load(SIN + p * stride_cos + HALF + offs, mask=ok, other=0.0).to(dt).to(tl.float32)
    return f1 * c1 - f2 * s1, f2 * c2 + f1 * s2


@triton.jit
def _qk_norm_rope_kernel(QKV, QN, KN, COS, SIN, ROPE_POS, KC, VC, SLOT, WPOS, Q_OUT,
                         stride_qkv, stride_cos, stride_kb, stride_kh, stride_kt,
                         stride_vb, stride_vh, stride_vt, stride_qo, stride_qh, eps,
                         HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
                         HAS_QN: tl.constexpr, HAS_KN: tl.constexpr, USE_PDL: tl.constexpr):
    grid_dependency(USE_PDL)
    n = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)                        # head: q heads, then k heads, then v heads
    offs = tl.arange(0, BLOCK)
    ok = offs < HALF
    base = QKV + n * stride_qkv + j * (2 * HALF)
    x1 = tl.load(base + offs, mask=ok, other=0.0)
    x2 = tl.load(base + HALF + offs, mask=ok, other=0.0)
    p = tl.load(ROPE_POS + n)
    if j < HQ:
        r1, r2 = _norm_rope(QKV, QN, COS, SIN, p, stride_cos, x1, x2, offs, ok, eps, HALF, HAS_QN)
        qb = Q_OUT + n * stride_qo + j * stride_qh
        tl.store(qb + offs, r1.to(Q_OUT.dtype.element_ty), mask=ok)
        tl.store(qb + HALF + offs, r2.to(Q_OUT.dtype.element_ty), mask=ok)
    elif j < HQ + HKV:
        r1, r2 = _norm_rope(QKV, KN, COS, SIN, p, stride_cos, x1, x2, offs, ok, eps, HALF, HAS_KN)
        slot = tl.load(SLOT + n)
        wpos = tl.load(WPOS + n)
        kb = KC + slot * stride_kb + (j - HQ) * stride_kh + wpos * stride_kt
        tl.store(kb + offs, r1.to(KC.dtype.element_ty), mask=ok)
        tl.store(kb + HALF + offs, r2.to(KC.dtype.element_ty), mask=ok)
    else:                                       # v: straight into the cache
        slot = tl.load(SLOT + n)
        wpos = tl.load(WPOS + n)
        vb = VC + slot * stride_vb + (j - HQ - HKV) * stride_vh + wpos * stride_vt
        tl.store(vb + offs, x1.to(VC.dtype.element_ty), mask=ok)
        tl.store(vb + HALF + offs, x2.to(VC.dtype.element_ty), mask=ok)


def qk_norm_rope_store(qkv, q_norm, k_norm, cos, sin, rope_pos, k_cache, v_cache, slot, write_pos,
                       num_q_heads, num_kv_heads, eps):
    """Triton version of :func:`qpfast.kernels.reference.qk_norm_rope_store`."""
    n = qkv.shape[0]
    hq, hkv = num_q_heads, num_kv_heads
    d = qkv.shape[1] // (hq + 2 * hkv)
    if d % 2 or qkv.stride(1) != 1 or cos.stride(1) != 1 or sin.stride(0) != cos.stride(0) \
            or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("qk_norm_rope_store: needs an even head dim and unit inner strides")
    q = torch.empty((n, hq, d), dtype=qkv.dtype, device=qkv.device)
    if n == 0:
        return q
    half = d // 2
    _qk_norm_rope_kernel[(n, hq + 2 * hkv)](
        qkv, q_norm if q_norm is not None else qkv, k_norm if k_norm is not None else qkv,
        cos, sin, rope_pos, k_cache, v_cache, slot, write_pos, q,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), q.stride(0), q.stride(1), eps,
        HQ=hq, HKV=hkv, HALF=half, BLOCK=max(16, pow2(half)),
        HAS_QN=q_norm is not None, HAS_KN=k_norm is not None, num_warps=1 if half <= 64 else 2,
        **pdl_launch(qkv.device))
    return q


@triton.jit
def _silu_mul_kernel(GU, OUT, n_inter, stride_gu, stride_o, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    grid_dependency(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_inter
    g = tl.load(GU + row * stride_gu + cols, mask=ok, other=0.0)
    u = tl.load(GU + row * stride_gu + n_inter + cols, mask=ok, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)          # F.silu rounds to the dtype
    tl.store(OUT + row * stride_o + cols, act * u, mask=ok)


def silu_mul(gate_up):
    """Triton version of :func:`qpfast.kernels.reference.silu_mul`."""
    n, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype, device=gate_up.device)
    if n == 0:
        return out
    block = min(1024, pow2(inter))
    _silu_mul_kernel[(n, triton.cdiv(inter, block))](gate_up, out, inter, gate_up.stride(0), out.stride(0),
                                                    BLOCK=block, num_warps=4, **pdl_launch(gate_up.device))
    return out
