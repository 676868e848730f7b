"""Triton prefill attention: causal, variable length, grouped-query, on a cached prefix.

Layout (``B`` sequences, ``Hq = G * Hkv`` query heads, head dim ``D``)::

    q       [total_q, Hq, D]     sequence i's queries at rows cu_seqlens_q[i] : cu_seqlens_q[i+1]
    k, v    [total_k, Hkv, D]    sequence i's keys    at rows cu_seqlens_k[i] : cu_seqlens_k[i+1]
    o       [total_q, Hq, D]

Query ``t`` of sequence ``i`` sits at key position ``P_i + t`` with
``P_i = len_k(i) - len_q(i)`` (the cached prefix) and sees keys ``0 .. P_i + t``.

One program computes a tile of ``BLOCK_M`` query positions times all ``G`` query heads
that share one key/value head, as one ``[BLOCK_M * G_PAD, D]`` block: every K/V tile is
loaded once per group of query heads (GQA) and the matrix products are tall enough for
the tensor cores even for short queries.  Keys are walked in ``BLOCK_N`` steps with an
online softmax in float32 (base-2 exponentials, the scale folded into ``log2 e``): first
the blocks every row of the tile sees in full (no mask), then the causal diagonal.

Grid: ``(total_q // BLOCK_M + B, Hkv)``.  Sequence ``i``'s tiles are numbered from
``cu_seqlens_q[i] // BLOCK_M + i``; that numbering leaves room for
``ceil(len_q(i) / BLOCK_M)`` tiles per sequence, so a program finds its sequence by a
binary search over ``cu_seqlens_q`` and the host never reads sequence lengths (no device
synchronization; the launch can be captured in a CUDA graph).  Programs that land past
their sequence's last tile exit at once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import online_softmax_step
from .common import pow2 as _pow2
from .reference import check_prefill_args

LOG2E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    Q, K, V, OUT, CU_Q, CU_K,
    qk_scale,                                   # sm_scale * log2(e)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_seqs,
    GROUP: tl.constexpr,                        # query heads per key/value head
    GROUP_PAD: tl.constexpr,                    # GROUP rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,                      # HEAD_DIM rounded up to a power of two
    BLOCK_M: tl.constexpr,                      # query positions per tile
    BLOCK_N: tl.constexpr,                      # keys per step
    DOT_PRECISION: tl.constexpr,                # "ieee" for float32 inputs
):
    ROWS: tl.constexpr = BLOCK_M * GROUP_PAD
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Sequence of this tile: the largest i with cu_q[i] // BLOCK_M + i <= tile.
    lo = tile * 0
    hi = lo + num_seqs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        first_tile = tl.load(CU_Q + mid) // BLOCK_M + mid
        go_right = first_tile <= tile
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    seq = lo

    q_start = tl.load(CU_Q + seq)
    len_q = tl.load(CU_Q + seq + 1) - q_start
    k_start = tl.load(CU_K + seq)
    len_k = tl.load(CU_K + seq + 1) - k_start
    prefix = len_k - len_q
    m_start = (tile - (q_start // BLOCK_M + seq)) * BLOCK_M

    if m_start < len_q:
        rows = tl.arange(0, ROWS)
        pos = m_start + rows // GROUP_PAD        # query position within the sequence
        grp = rows % GROUP_PAD                   # query head within the group
        head = kv_head * GROUP + grp
        row_ok = (pos < len_q) & (grp < GROUP)
        q_pos = prefix + pos                     # its key position: sees keys <= q_pos
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        offs_n = tl.arange(0, BLOCK_N)

        # 64-bit offsets for the sequence's base only; 32-bit within the sequence
        q_rows = pos * stride_qt + head * stride_qh
        q = tl.load(Q + q_start.to(tl.int64) * stride_qt + q_rows[:, None] + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        k_base = K + k_start.to(tl.int64) * stride_kt + kv_head * stride_kh
        v_base = V + k_start.to(tl.int64) * stride_vt + kv_head * stride_vh

        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, BLOCK_D], tl.float32)

        # 1) keys that every row of the tile sees: [0, prefix + m_start] in whole blocks.
        full_end = (prefix + m_start + 1) // BLOCK_N * BLOCK_N
        for n in range(0, full_end, BLOCK_N):
            keys = n + offs_n
            k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :],
                        mask=d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :],
                        mask=d_ok[None, :], other=0.0)
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

        # 2) the causal diagonal: up to the last row's position, masked per row.
        #    Every row sees key 0, so no row is fully masked after the first block.
        diag_end = tl.minimum(len_k, prefix + m_start + BLOCK_M)
        for n in range(full_end, diag_end, BLOCK_N):
            keys = n + offs_n
            key_ok = keys < len_k
            k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :],
                        mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            visible = key_ok[None, :] & (keys[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
            v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :],
                        mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

        out = acc / l_i[:, None]
        o_rows = pos * stride_ot + head * stride_oh
        tl.store(OUT + q_start.to(tl.int64) * stride_ot + o_rows[:, None] + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def prefill_config(total_q: int, num_seqs: int, group: int, head_dim: int) -> dict:
    """Block sizes for one launch, from host-known sizes only.

    ``BLOCK_M * G_PAD`` (rows of a tile) aims at 128 (64 for head dims above 128), with
    at least 16 rows (the smallest tensor-core tile); ``BLOCK_M`` follows the mean query
    length so that short QP queries (8-40 tokens) do not pay for padding.
    """
    group_pad = _pow2(group)
    block_d = max(16, _pow2(head_dim))
    rows = 128 if block_d <= 128 else 64
    mean_q = max(1, -(-total_q // max(1, num_seqs)))
    block_m = max(1, min(_pow2(mean_q), rows // group_pad), 16 // group_pad)
    # 4 warps spill registers (sm_90 resource report) from 64x64 / 32x128 tiles upwards
    big = block_m * group_pad * block_d >= 32 * 128
    return dict(GROUP_PAD=group_pad, BLOCK_D=block_d, BLOCK_M=block_m,
                BLOCK_N=64 if block_d <= 128 else 32, num_warps=8 if big else 4, num_stages=2)


def prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None, *, out=None,
                      block_m=None, block_n=None):
    """Triton version of :func:`qpfast.kernels.reference.prefill_attention`.

    ``out`` (optional, ``[total_q, Hq, D]`` like q) receives the result; ``block_m`` /
    ``block_n`` override the tile sizes (tests use them to force several tiles and key
    blocks on tiny inputs).  Head dims up to 256 are supported.
    """
    scale = check_prefill_args(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale)
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    if d > 256:
        raise ValueError(f"the Triton prefill kernel supports head dims up to 256, got {d}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}")
    num_seqs = cu_seqlens_q.numel() - 1
    if total_q == 0 or num_seqs == 0:
        return out
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    dst = out if out.stride(-1) == 1 else torch.empty_like(q)

    group = hq // hkv
    cfg = prefill_config(total_q, num_seqs, group, d)
    if block_m is not None:
        cfg["BLOCK_M"] = block_m
    if block_n is not None:
        cfg["BLOCK_N"] = block_n
    grid = (total_q // cfg["BLOCK_M"] + num_seqs, hkv)
    _prefill_kernel[grid](
        q, k, v, dst, cu_seqlens_q, cu_seqlens_k, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        dst.stride(0), dst.stride(1), num_seqs,
        GROUP=group, HEAD_DIM=d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **cfg,
    )
    if dst is not out:
        out.copy_(dst)
    return out
