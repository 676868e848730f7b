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

Split-K (few sequences): a single QP query gives only ``Hkv * ceil(new / BLOCK_M)``
programs, far too few to fill the GPU, and each walks the whole prefix alone.  With
splits the keys are cut into chunks of ``split_len`` (a multiple of ``BLOCK_N``, sized
from the mean sequence length; the grid's third axis covers the longest possible one); each (tile, head, split) program writes its normalized
partial output and base-2 log-sum-exp to float32 scratch (plus, from split 0, each row's
count of visible keys), and decode's merge kernel (`qpfast.kernels.decode`) combines the
splits that hold at least one visible key of each (token, head).  Splits past a tile's
last key exit at once.  :func:`prefill_num_splits` decides from host-known sizes only.

Grid: ``(total_q // BLOCK_M + B, Hkv, num_splits)``.  Sequence ``i``'s tiles are numbered from
``cu_seqlens_q[i] // BLOCK_M + i``; that numbering leaves room for
``ceil(len_q(i) / BLOCK_M)`` tiles per sequence, so a program finds its sequence by a
binary search over ``cu_seqlens_q`` and the host never reads sequence lengths (no device
synchronization; the launch can be captured in a CUDA graph).  Programs that land past
their sequence's last tile exit at once.

With a shared prefix (cascade attention, :mod:`qpfast.kernels.cascade`) the prefix
kernel's partials take scratch slots ``0 .. PART_BASE - 1`` of every (token, head); unsplit,
this kernel folds them into its result before writing it; split, it writes its own partials
after them and the merge kernel combines all.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import cdiv, fill_count, merge_partials, online_softmax_step, round_up
from .common import num_sms as _num_sms
from .common import pow2 as _pow2
from .cascade import split_scratch
from .decode import merge_splits
from .reference import check_prefill_args, check_prefix_args

LOG2E = 1.4426950408889634
MAX_SPLITS = 32
MIN_SPLIT_KEYS = 256


@triton.jit
def _prefill_kernel(
    Q, K, V, OUT, CU_Q, CU_K, PART_O, PART_LSE, VISIBLE,
    qk_scale,                                   # sm_scale * log2(e)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_seqs,
    split_len,                                  # keys per split, a multiple of BLOCK_N
    NUM_SPLITS: tl.constexpr,
    GROUP: tl.constexpr,                        # query heads per key/value head
    GROUP_PAD: tl.constexpr,                    # GROUP rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,                      # HEAD_DIM rounded up to a power of two
    BLOCK_M: tl.constexpr,                      # query positions per tile
    BLOCK_N: tl.constexpr,                      # keys per step
    DOT_PRECISION: tl.constexpr,                # "ieee" for float32 inputs
    PART_BASE: tl.constexpr,                    # shared-prefix partials in scratch slots 0..PART_BASE-1
    DIRECT: tl.constexpr,                       # one split, no prefix: write o (no partials)
):
    ROWS: tl.constexpr = BLOCK_M * GROUP_PAD
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

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
    # keys this tile sees at all, and this program's share of them
    diag_end = tl.minimum(len_k, prefix + m_start + BLOCK_M)
    split_start = split * split_len
    split_end = split_start + split_len

    if (m_start < len_q) & (split_start < diag_end):
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
        for n in range(split_start, tl.minimum(full_end, split_end), BLOCK_N):
            keys = n + offs_n
            k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :],
                        mask=d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :],
                        mask=d_ok[None, :], other=0.0)
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

        # 2) the causal diagonal: up to the last row's position, masked per row.
        #    Without splits every row sees key 0, so no row stays fully masked; a later
        #    split may hold no key of an early row (the softmax step tolerates that and
        #    the merge never reads such a row's partial).
        for n in range(tl.maximum(full_end, split_start), tl.minimum(diag_end, split_end), BLOCK_N):
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

        if DIRECT:
            out = acc / l_i[:, None]
            o_rows = pos * stride_ot + head * stride_oh
            tl.store(OUT + q_start.to(tl.int64) * stride_ot + o_rows[:, None] + offs_d[None, :],
                     out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        elif NUM_SPLITS == 1:
            # one split after a shared prefix: fold the prefix's partials in here (every row
            # saw key 0, so its own part has a finite weight to start from)
            out = acc / l_i[:, None]
            token = q_start.to(tl.int64) + pos
            slots = (token * (GROUP * tl.num_programs(1)) + head) * (PART_BASE + NUM_SPLITS)
            w_sum = tl.full([ROWS], 1.0, tl.float32)
            out, _, w_sum = merge_partials(out, m_i + tl.log2(l_i), w_sum, PART_O, PART_LSE, slots, 0, PART_BASE,
                                           offs_d, row_ok, d_ok, BLOCK_D)
            o_rows = pos * stride_ot + head * stride_oh
            tl.store(OUT + q_start.to(tl.int64) * stride_ot + o_rows[:, None] + offs_d[None, :],
                     (out / w_sum[:, None]).to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        else:
            # scratch: PART_O [total_q, Hq, PART_BASE + NUM_SPLITS, BLOCK_D], PART_LSE [.., PART_BASE + NUM_SPLITS]
            seen = l_i > 0.0
            out = acc / tl.where(seen, l_i, 1.0)[:, None]
            token = q_start.to(tl.int64) + pos
            row = (token * (GROUP * tl.num_programs(1)) + head) * (PART_BASE + NUM_SPLITS) + PART_BASE + split
            tl.store(PART_O + row[:, None] * BLOCK_D + offs_d[None, :], out, mask=row_ok[:, None])
            tl.store(PART_LSE + row, tl.where(seen, m_i + tl.log2(l_i), float("-inf")), mask=row_ok)
            if split == 0:
                tl.store(VISIBLE + token, q_pos + 1, mask=row_ok & (grp == 0))


def prefill_config(total_q: int, num_seqs: int, group: int, head_dim: int) -> dict:
    """Block sizes for one launch, from host-known sizes only.

    ``BLOCK_M * G_PAD`` (rows of a tile) aims at 128 (64 for head dims above 128), with
    at least 16 rows (the smallest tensor-core tile); ``BLOCK_M`` follows the mean query
    length so that short QP queries (8-40 tokens) do not pay for padding.
    """
    group_pad = _pow2(group)
    block_d = max(16, _pow2(head_dim))
    rows = 128 if block_d <= 128 else 64
    mean_q = max(1, cdiv(total_q, max(1, num_seqs)))
    block_m = max(1, min(_pow2(mean_q), rows // group_pad), 16 // group_pad)
    return dict(GROUP_PAD=group_pad, BLOCK_D=block_d, BLOCK_M=block_m,
                BLOCK_N=64 if block_d <= 128 else 32, num_warps=tile_warps(block_m * group_pad, block_d),
                num_stages=2)


def tile_warps(rows: int, block_d: int) -> int:
    """Warps for a ``rows x block_d`` query tile: 4 warps spill registers (sm_90 resource
    report) from 64x64 / 32x128 tiles upwards, so those get 8."""
    return 8 if rows * block_d >= 32 * 128 else 4


def prefill_num_splits(programs: int, keys_per_seq: int, block_n: int, num_sms: int) -> int:
    """Key splits per sequence for one launch of ``programs`` (tile, head) programs whose
    sequences hold ``keys_per_seq`` keys on average.

    Measured on an H200 (bench/RESULTS.md): splitting pays for a single query or a few on
    long prefixes (up to 1.9x at 512 + 8), and costs once a quarter of the GPU is busy or
    the prefix is short (the merge pass and the partial outputs outweigh the shorter key
    walk).  So: one split unless at most ``num_sms / 8`` programs run and the sequences hold
    more than ``MIN_SPLIT_KEYS`` keys; then enough for about two programs per
    multiprocessor, at least one key block each, at most ``MAX_SPLITS``.
    """
    if programs * 8 > num_sms or keys_per_seq <= MIN_SPLIT_KEYS:
        return 1
    return fill_count(programs, num_sms, min(cdiv(keys_per_seq, block_n), MAX_SPLITS))


def split_plan(total_k: int, num_seqs: int, splits_per_seq: int, block_n: int) -> tuple[int, int]:
    """``(split_len, grid_splits)``: keys per split (a multiple of ``block_n``) for about
    ``splits_per_seq`` splits of a mean-length sequence, and the split axis of the grid,
    which must cover the longest possible sequence (``total_k`` keys, lengths live on the
    device) in at most ``MAX_SPLITS`` splits."""
    keys_per_seq = cdiv(max(1, total_k), max(1, num_seqs))
    split_len = max(cdiv(keys_per_seq, max(1, splits_per_seq)), cdiv(max(1, total_k), MAX_SPLITS))
    split_len = round_up(split_len, block_n)
    return split_len, max(1, cdiv(total_k, split_len))


def prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None, *, prefix_k=None,
                      prefix_v=None, prefix_len=None, out=None, block_m=None, block_n=None,
                      num_splits=None, prefix_splits=None):
    """Triton version of :func:`qpfast.kernels.reference.prefill_attention`.

    ``out`` (optional, ``[total_q, Hq, D]`` like q) receives the result; ``block_m`` /
    ``block_n`` override the tile sizes (tests use them to force several tiles and key
    blocks on tiny inputs); ``num_splits`` (splits per sequence) overrides
    :func:`prefill_num_splits`.  Head dims up to 256 are supported.

    With a shared prefix (``prefix_k``/``prefix_v``, cascade attention) every token first
    attends to it in :mod:`qpfast.kernels.cascade` (``prefix_splits`` key splits, default
    :func:`qpfast.kernels.cascade.prefix_num_splits`); this kernel folds those partials into
    its result, or (split) the merge kernel does.
    """
    scale = check_prefill_args(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale)
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    check_prefix_args(q, hkv, prefix_k, prefix_v, prefix_len)
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
    tiles = total_q // cfg["BLOCK_M"] + num_seqs
    total_k = k.shape[0]
    bn = cfg["BLOCK_N"]
    if num_splits is None:
        num_splits = prefill_num_splits(tiles * hkv, cdiv(total_k, num_seqs), bn, _num_sms(q.device))
    num_splits = max(1, min(int(num_splits), MAX_SPLITS))
    if num_splits > 1:
        split_len, num_splits = split_plan(total_k, num_seqs, num_splits, bn)
    else:                                        # one split holds every key
        split_len = round_up(max(1, total_k), bn)
    part_o, part_lse, base = split_scratch(q, num_splits, cfg["BLOCK_D"], prefix_k, prefix_v, prefix_len, scale,
                                           prefix_splits)
    if part_o is None:
        part_o = part_lse = dst                  # unused
    visible = torch.empty(total_q, dtype=torch.int32, device=q.device) if num_splits > 1 else dst
    _prefill_kernel[(tiles, hkv, num_splits)](
        q, k, v, dst, cu_seqlens_q, cu_seqlens_k, part_o, part_lse, visible, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        dst.stride(0), dst.stride(1), num_seqs, split_len,
        NUM_SPLITS=num_splits, GROUP=group, HEAD_DIM=d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PART_BASE=base,
        DIRECT=num_splits == 1 and not base,
        **cfg,
    )
    if num_splits > 1:
        merge_splits(dst, part_o, part_lse, visible, split_len, base)
    if dst is not out:
        out.copy_(dst)
    return out
