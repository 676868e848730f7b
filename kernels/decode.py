"""Triton decode attention: one new token per sequence against its KV cache, split-KV.

Layout (``B`` sequences, ``Hq = G * Hkv`` query heads, head dim ``D``)::

    q                 [B, Hq, D]
    k_cache, v_cache  [B, Hkv, max_len, D]     positions < seq_lens[b] are valid
    seq_lens          int32 [B]
    o                 [B, Hq, D]

Decode reads the whole cache once per step and does little arithmetic on it, so it is
bound by memory bandwidth; what matters is that enough programs stream the cache at once.
One program handles one sequence, one key/value head and one contiguous chunk ("split") of
the cache, for all ``G`` query heads of the group at once (each K/V tile is read once per
group; the ``G`` rows are padded to 16 so the products run on tensor cores).

* ``num_splits == 1``: the program normalizes and writes ``o`` directly.
* ``num_splits > 1`` (small batches, long caches): each split writes its normalized partial
  output and its log-sum-exp (base 2) to float32 scratch, and the splits of each (sequence,
  head) are merged, either by a second kernel or ("fused merge") by whichever split of the
  (sequence, KV head) finishes last: each split counts itself in on an int32 counter
  (acquire-release atomic) and the one that sees the count reach the number of splits in
  use merges them and resets the counter to zero for the next call.  Splits that start
  past ``seq_lens[b]`` do nothing and the merge ignores them, so the host never reads
  ``seq_lens`` (no synchronization).

:func:`decode_num_splits` picks the split count from the batch, the head count, the cache
capacity and the number of multiprocessors.

With a shared prefix (cascade attention, :mod:`qpfast.kernels.cascade`) the caches hold
each sequence's own keys only; the prefix kernel runs first and leaves its partials in
scratch slots ``0 .. PART_BASE - 1`` of each (sequence, head); this kernel's own splits
take the slots after them, and whoever writes ``o`` (the program itself when unsplit, the
last split, or the merge kernel) folds the prefix slots in.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cascade import shared_prefix, split_scratch
from .common import (attend_key_range, cdiv, cut, grid_dependency, keys_prefetchable, merge_partials, pdl_launch,
                     prefetch_l2, zeroed_counters)
from .common import num_sms as _num_sms
from .common import pow2 as _pow2
from .reference import check_decode_args, check_prefix_args, check_row0_prefix

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_KEYS_PER_SPLIT = 128
MIN_SPLIT_LEN = 256
#: query rows (new tokens x query heads of one KV head) one program holds at most
MAX_TILE_ROWS = 64


@triton.jit
def _decode_kernel(
    Q, K, V, OUT, PART_O, PART_LSE, SEQ_LENS, COUNTERS, PLEN, PK, PV,
    qk_scale,                                   # sm_scale * log2(e)
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_pkh, stride_pkt, stride_pvh, stride_pvt,
    split_len,                                  # keys per split, a multiple of BLOCK_N
    own_cap, prefix_cap,                        # keys the caches hold a row, and PK/PV a head (prefetch bounds)
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,                      # GROUP padded to a power of two >= 16
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FUSED_MERGE: tl.constexpr,                  # the last split merges (COUNTERS [B * Hkv])
    PART_BASE: tl.constexpr,                    # shared-prefix partials in scratch slots 0..PART_BASE-1
    QPS: tl.constexpr,                          # new tokens (query rows) per sequence, causal among them
    PREFIX_MODE: tl.constexpr,                  # keys < PLEN[0] from PK/PV: 1 = row 0 of the caches, 2 =
                                                # a shared prefix (the rows' own keys after it)
    USE_PDL: tl.constexpr,                      # programmatic dependent launch (common.grid_dependency)
    PREFETCH: tl.constexpr,                     # with USE_PDL: ask the L2 for the keys before the wait
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if PREFETCH:
        _prefetch_split(K, V, SEQ_LENS, PLEN, PK, PV, b, kv_head, split, split_len, own_cap, prefix_cap,
                        stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_pkh, stride_pkt,
                        stride_pvh, stride_pvt, PREFIX_MODE)
    grid_dependency(USE_PDL)
    offs_h = tl.arange(0, BLOCK_H)              # tile row: new token offs_h // GROUP, head offs_h % GROUP
    if QPS == 1:
        q_row = b.to(tl.int64)                  # q / out / scratch row of each tile row
        head = kv_head * GROUP + offs_h
        h_ok = offs_h < GROUP
    else:
        q_row = b.to(tl.int64) * QPS + offs_h // GROUP
        head = kv_head * GROUP + offs_h % GROUP
        h_ok = offs_h < GROUP * QPS
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    # q does not depend on seq_len: both loads are in flight together
    if QPS == 1:
        q_ptrs = Q + q_row * stride_qb + head[:, None] * stride_qh + offs_d[None, :]
    else:
        q_ptrs = Q + q_row[:, None] * stride_qb + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=h_ok[:, None] & d_ok[None, :], other=0.0)
    seq_len = tl.load(SEQ_LENS + b)
    plen = 0
    if PREFIX_MODE > 0:
        plen = tl.load(PLEN)
    if PREFIX_MODE == 2:                        # key positions: the prefix's, then the row's own
        seq_len += plen
    # new token i sees keys < seq_len - (QPS - 1 - i) (only used when QPS > 1)
    row_end = seq_len - (QPS - 1) + offs_h // GROUP
    start = split * split_len
    if start < seq_len:
        end = tl.minimum(seq_len, start + split_len)
        offs_n = tl.arange(0, BLOCK_N)
        # 64-bit offsets for the (sequence, head) base only; within one head's
        # [max_len, D] slab 32-bit offsets suffice and keep the pointer tiles small
        k_base = K + b.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh

        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        # The first block holds key `start` < seq_len, so with one query row per sequence
        # no row is ever fully masked; with several, the split holding key 0 is seen by
        # every row (seq_len >= QPS) and a later split may be seen by none of some rows.
        own = start
        if PREFIX_MODE > 0:                     # the prefix part of the split, from PK/PV: row 0's
            own = tl.maximum(start, tl.minimum(end, plen))      # copy (1) or the shared prefix (2)
            m_i, l_i, acc = attend_key_range(q, PK + kv_head.to(tl.int64) * stride_pkh,
                                             PV + kv_head.to(tl.int64) * stride_pvh, stride_pkt, stride_pvt,
                                             start, own, qk_scale, m_i, l_i, acc, offs_n, offs_d, d_ok, row_end,
                                             BLOCK_N, DOT_PRECISION, QPS > 1)
        if PREFIX_MODE == 2:                    # own key j at position plen + j
            k_base -= plen.to(tl.int64) * stride_kt
            v_base -= plen.to(tl.int64) * stride_vt
        m_i, l_i, acc = attend_key_range(q, k_base, v_base, stride_kt, stride_vt, own, end, qk_scale,
                                         m_i, l_i, acc, offs_n, offs_d, d_ok, row_end, BLOCK_N, DOT_PRECISION,
                                         QPS > 1)
        if QPS == 1:
            out = acc / l_i[:, None]
            lse_own = m_i + tl.log2(l_i)
        else:                                   # a row that saw no key: output 0, weight 0
            seen = l_i > 0.0
            out = acc / tl.where(seen, l_i, 1.0)[:, None]
            lse_own = tl.where(seen, m_i + tl.log2(l_i), float("-inf"))
        # scratch: PART_O [B*QPS, Hq, PART_BASE + NUM_SPLITS, BLOCK_D], PART_LSE [B*QPS, Hq, PART_BASE + NUM_SPLITS]
        slots = (q_row * (GROUP * tl.num_programs(1)) + head) * (PART_BASE + NUM_SPLITS)
        if QPS == 1:
            o_ptrs = OUT + q_row * stride_ob + head[:, None] * stride_oh + offs_d[None, :]
        else:
            o_ptrs = OUT + q_row[:, None] * stride_ob + head[:, None] * stride_oh + offs_d[None, :]
        if NUM_SPLITS == 1:
            if PART_BASE > 0:                           # fold in the shared prefix's partials
                w_sum = tl.full([BLOCK_H], 1.0, tl.float32)
                out, _, w_sum = merge_partials(out, lse_own, w_sum, PART_O, PART_LSE, slots, 0, PART_BASE,
                                                offs_d, h_ok, d_ok, BLOCK_D)
                out = out / w_sum[:, None]
            tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=h_ok[:, None] & d_ok[None, :])
        else:
            row = slots + PART_BASE + split
            tl.store(PART_O + row[:, None] * BLOCK_D + offs_d[None, :], out,
                     mask=h_ok[:, None] & d_ok[None, :])
            tl.store(PART_LSE + row, lse_own, mask=h_ok)
            if FUSED_MERGE:
                used = tl.cdiv(seq_len, split_len)          # splits that saw at least one key
                tl.debug_barrier()                          # every thread's partials are out
                counter = COUNTERS + b * tl.num_programs(1) + kv_head
                arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if arrived == used - 1:                     # the last split of this row merges
                    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")   # ready for the next call
                    # own splits first (each saw a key: finite weights), then the prefix's
                    merged = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
                    m_all = tl.full([BLOCK_H], float("-inf"), tl.float32)
                    w_sum = tl.zeros([BLOCK_H], tl.float32)
                    merged, m_all, w_sum = merge_partials(merged, m_all, w_sum, PART_O, PART_LSE, slots,
                                                           PART_BASE, PART_BASE + used, offs_d, h_ok, d_ok,
                                                           BLOCK_D)
                    if PART_BASE > 0:
                        merged, m_all, w_sum = merge_partials(merged, m_all, w_sum, PART_O, PART_LSE, slots,
                                                               0, PART_BASE, offs_d, h_ok, d_ok, BLOCK_D)
                    tl.store(o_ptrs, (merged / w_sum[:, None]).to(OUT.dtype.element_ty),
                             mask=h_ok[:, None] & d_ok[None, :])


@triton.jit
def _prefetch_split(K, V, SEQ_LENS, PLEN, PK, PV, b, kv_head, split, split_len, own_cap, prefix_cap,
                    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_pkh, stride_pkt,
                    stride_pvh, stride_pvt, PREFIX_MODE: tl.constexpr):
    """Before the wait of a programmatic dependent launch: the keys and values program
    (b, kv_head, split) will read, into the L2, while the kernel ahead still runs (the new
    token's K/V it may be writing are coherent there). The lengths come from loads that
    kernel may still change: hints, like the prefetch itself, clamped to the buffers so that
    a stale value cannot send it outside them. The shared or row-0 prefix, read by every row,
    is asked for by row 0's programs only. Needs each head's keys contiguous (the wrapper
    checks)."""
    esize = K.dtype.element_ty.primitive_bitwidth // 8
    seq_len = tl.minimum(tl.maximum(tl.load(SEQ_LENS + b), 0), own_cap)
    plen = 0
    if PREFIX_MODE > 0:
        plen = tl.minimum(tl.maximum(tl.load(PLEN), 0), prefix_cap)
    if PREFIX_MODE == 2:
        seq_len += plen
    start = split * split_len
    end = tl.minimum(seq_len, start + split_len)
    own = start
    if PREFIX_MODE > 0:
        own = tl.maximum(start, tl.minimum(end, plen))
        if b == 0:
            prefetch_l2(PK + kv_head.to(tl.int64) * stride_pkh + start.to(tl.int64) * stride_pkt,
                        (own - start) * stride_pkt * esize)
            prefetch_l2(PV + kv_head.to(tl.int64) * stride_pvh + start.to(tl.int64) * stride_pvt,
                        (own - start) * stride_pvt * esize)
    first = own
    if PREFIX_MODE == 2:                        # own key j at cache position j (key position plen + j)
        first = own - plen
    prefetch_l2(K + b.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh + first.to(tl.int64) * stride_kt,
                (end - own) * stride_kt * esize)
    prefetch_l2(V + b.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh + first.to(tl.int64) * stride_vt,
                (end - own) * stride_vt * esize)


@triton.jit
def _merge_splits_kernel(
    OUT, PART_O, PART_LSE, SEQ_LENS,
    stride_ob, stride_oh,
    num_heads, split_len,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,                   # scratch slots per (row, head), prefix ones included
    BLOCK_S: tl.constexpr,                      # NUM_SPLITS rounded up to a power of two
    PART_BASE: tl.constexpr,                    # leading slots every row uses (the shared prefix)
    QPS: tl.constexpr,                          # consecutive rows per entry of SEQ_LENS
    USE_PDL: tl.constexpr,
):
    grid_dependency(USE_PDL)
    b = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(SEQ_LENS + b // QPS)
    used = PART_BASE + tl.cdiv(seq_len, split_len)   # the prefix's slots + own splits that saw a key
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < used
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row = (b.to(tl.int64) * num_heads + head) * NUM_SPLITS + offs_s
    lse = tl.load(PART_LSE + row, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    w = tl.where(s_ok, w, 0.0)
    part = tl.load(PART_O + row[:, None] * BLOCK_D + offs_d[None, :],
                   mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(OUT + b.to(tl.int64) * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty),
             mask=d_ok)


def merge_splits(out, part_o, part_lse, seq_lens, split_len: int, base: int = 0, rows_per_len: int = 1) -> None:
    """Combine split partials into ``out`` ``[R, H, D]``: row ``r`` (a sequence, or a
    prefill token) used the ``base`` leading slots (a shared prefix's partials, some maybe
    empty: log-sum-exp -inf) and, after them, the splits holding the first
    ``seq_lens[r // rows_per_len]`` keys (a split the row saw no key of holds log-sum-exp
    -inf); ``part_o`` ``[R, H, S, BLOCK_D]`` and ``part_lse`` ``[R, H, S]`` as the attention
    kernels write them."""
    rows, heads, d = out.shape
    num_splits, block_d = part_o.shape[2], part_o.shape[3]
    _merge_splits_kernel[(rows, heads)](
        out, part_o, part_lse, seq_lens, out.stride(0), out.stride(1), heads, split_len,
        HEAD_DIM=d, BLOCK_D=block_d, NUM_SPLITS=num_splits, BLOCK_S=_pow2(num_splits), PART_BASE=base,
        QPS=rows_per_len, num_warps=4, **pdl_launch(out.device))


def decode_num_splits(batch: int, num_kv_heads: int, max_len: int, num_sms: int) -> int:
    """How many chunks to cut each sequence's cache into.

    One split (no merge pass) once the ``batch * num_kv_heads`` programs reach half the
    multiprocessors, or for a cache of at most ``MIN_SPLIT_LEN`` keys.  Otherwise about one
    program per multiprocessor, each split at least ``MIN_KEYS_PER_SPLIT`` keys of cache
    capacity, at most ``MAX_SPLITS``.  Fitted on an H200 (bench/RESULTS.md, run 6: cold
    times of every split count at caches of 160 and 600 keys): with the kernel's loads
    running two key blocks ahead one program streams a 600-key cache nearly as fast as
    several do, and the partial outputs and the merge launch cost more than the extra
    parallelism brings once a quarter of the GPU is busy (128 programs: 14.5 us unsplit,
    16.6 us in two).  Decided on the cache capacity, not the actual lengths, which only
    the device knows.
    """
    programs = max(1, batch * num_kv_heads)
    if 2 * programs > num_sms or max_len <= MIN_SPLIT_LEN:
        return 1
    return max(1, min(num_sms // programs, cdiv(max_len, MIN_KEYS_PER_SPLIT), MAX_SPLITS))


def inline_prefix(batch: int, num_kv_heads: int, num_sms: int) -> bool:
    """Whether the decode kernel reads a shared prefix itself (as every row's first keys)
    rather than after the cascade kernel's tall-matrix pass over it: while the programs
    (sequences x KV heads) leave SMs idle, where the cascade pass is one more launch for
    little work (H200, run 13: cascade 0.54-1.0x the copied layout at batch 1-16 on 8 KV
    heads, 2.0x at 64). Not yet fitted on a GPU."""
    return batch * num_kv_heads < num_sms


def decode_launch(programs: int, num_sms: int, block_d: int, tile_rows: int = 16) -> tuple[int, int, int]:
    """``(block_n, num_stages, num_warps)`` of the decode kernel: the key block, how many
    key blocks the loads run ahead plus one (software pipelining) and the warps per
    program, for ``programs`` programs (sequences x KV heads x splits), a padded head
    dim ``block_d`` and ``tile_rows`` query rows a program (``BLOCK_H``).

    Up to two programs per multiprocessor each one keeps two 64-key blocks in flight (3
    stages): its walk down the cache is a chain of memory round trips, and a deeper
    pipeline hides them (H200, 128 programs on 600-key caches: 14.5 us against 20.4 with
    one block ahead).  Beyond that the extra shared memory costs resident programs and 2
    stages is faster (512 programs on 160-key caches: 15.3 us against 17.8).

    Tiles of more than 16 rows (several new tokens per sequence) get 8 warps: with 4, ptxas
    spills at head dim 128 (sm_90: 8 bytes of stack at 32 rows, 88 at 64; none with 8 warps).
    """
    block_n = 64 if block_d <= 128 else 32
    return block_n, (3 if programs <= 2 * num_sms else 2), (8 if tile_rows > 16 else 4)


# Fused-merge counters: one int32 per (sequence, KV head), zero between calls
# (:func:`qpfast.kernels.common.zeroed_counters`).
COUNTER_SLOTS = 1 << 14


def merge_counters(device: torch.device, rows: int) -> torch.Tensor | None:
    """The fused merge's zeroed counters for ``rows`` (sequence, KV head) rows on ``device``,
    or None where there are none to use (too many rows, or first use inside a graph capture)."""
    return zeroed_counters("merge", device, rows, COUNTER_SLOTS)


def decode_attention(q, k_cache, v_cache, seq_lens, sm_scale=None, *, prefix_k=None, prefix_v=None,
                     prefix_len=None, queries_per_seq=1, row0_prefix_len=None, out=None, num_splits=None,
                     block_n=None, num_stages=None, num_warps=None, fused_merge=None, prefix_splits=None,
                     prefix_inline=None):
    """Triton version of :func:`qpfast.kernels.reference.decode_attention`.

    ``out`` (optional, like q) receives the result; ``num_splits`` overrides
    :func:`decode_num_splits`; ``block_n``, ``num_stages`` and ``num_warps`` override
    :func:`decode_launch` (tests, tuning); ``fused_merge=False`` merges the splits in a
    second kernel (by default the last split of each row merges them where
    :func:`merge_counters` has counters).  Head dims up to 256 are supported.

    With a shared prefix (``prefix_k``/``prefix_v``, cascade attention) a first kernel
    (:mod:`qpfast.kernels.cascade`) attends every row to it, cut into ``prefix_splits``
    key splits (default :func:`qpfast.kernels.cascade.prefix_num_splits`), and this kernel
    folds those partials into each row's result.  With few programs
    (:func:`inline_prefix`, or ``prefix_inline=True``) this kernel reads the prefix itself
    instead, as the first keys of every row (one launch instead of two; it needs the fused
    merge when the keys are split, and falls back to the two kernels without it).

    ``queries_per_seq = T > 1`` (q ``[B * T, Hq, D]``): one program still reads each
    (sequence, KV head, split) once, for the ``T x G`` query rows of its new tokens and
    heads together (causal among the new tokens); at most ``MAX_TILE_ROWS`` of them (one
    token per sequence takes any group size, as before).

    ``row0_prefix_len`` (the engine's "kernels" layout, where every slot holds a copy of the
    prompt prefix): each program reads the keys of its split below that length from row 0
    and the rest from its own row, so the batch streams one copy of the prefix from memory
    and the other programs find it in the L2.
    """
    scale = check_decode_args(q, k_cache, v_cache, seq_lens, sm_scale, queries_per_seq)
    rows, hq, d = q.shape
    b, hkv, max_len = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    qps = int(queries_per_seq)
    check_prefix_args(q, hkv, prefix_k, prefix_v, prefix_len)
    check_row0_prefix(q, prefix_k, row0_prefix_len)
    if d > 256:
        raise ValueError(f"the Triton decode kernel supports head dims up to 256, got {d}")
    group = hq // hkv
    if qps > 1 and group * qps > MAX_TILE_ROWS:
        raise ValueError(f"queries_per_seq={qps}: the Triton decode kernel takes at most {MAX_TILE_ROWS} query "
                         f"rows per KV head ({group} query heads x queries_per_seq); use prefill_attention")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}")
    if b == 0:
        return out
    q, k_cache, v_cache = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_cache, v_cache))
    dst = out if out.stride(-1) == 1 else torch.empty_like(q)

    block_d = max(16, _pow2(d))
    sms = _num_sms(q.device)
    block_h = max(16, _pow2(group * qps))
    shared = shared_prefix(prefix_k, prefix_v, prefix_len)
    inline = shared is not None and fused_merge is not False and (
        inline_prefix(b, hkv, sms) if prefix_inline is None else bool(prefix_inline))

    def plan(keys: int):
        splits = decode_num_splits(b, hkv, keys, sms) if num_splits is None else num_splits
        splits = max(1, min(int(splits), MAX_SPLITS))
        auto = decode_launch(b * hkv * splits, sms, block_d, block_h)
        return (*cut(keys, splits, block_n or auto[0]), auto)

    split_len, splits, auto = plan(max_len + (shared[0].shape[1] if inline else 0))
    counters = None
    if splits > 1 and fused_merge is not False:
        counters = merge_counters(q.device, b * hkv)
        if counters is None and fused_merge:              # asked for: say why not; else merge apart
            raise ValueError("fused_merge=True needs merge counters: at most "
                             f"{COUNTER_SLOTS} sequences x KV heads, first used outside a graph capture")
    if inline and splits > 1 and counters is None:        # the inline prefix needs the fused merge
        inline = False
        split_len, splits, auto = plan(max_len)
    if inline:
        pk, pv, plen = shared
        if plen is None:
            plen = torch.full((1,), pk.shape[1], dtype=torch.int32, device=q.device)
        part_o, part_lse, base = split_scratch(q, splits, block_d, None, None, None, scale)
        mode, extra = 2, (plen, pk, pv)
        pstrides = (pk.stride(0), pk.stride(1), pv.stride(0), pv.stride(1))
    else:
        part_o, part_lse, base = split_scratch(q, splits, block_d, prefix_k, prefix_v, prefix_len, scale,
                                               prefix_splits)
        mode = 1 if row0_prefix_len is not None else 0
        extra = (row0_prefix_len if mode else seq_lens, k_cache, v_cache)       # row 0 of the caches
        pstrides = (k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2))
    if part_o is None:
        part_o = part_lse = dst                  # unused
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    pdl = pdl_launch(q.device)
    prefetch = pdl["USE_PDL"] and keys_prefetchable(k_cache, v_cache, *(extra[1:] if mode == 2 else ()))
    _decode_kernel[(b, hkv, splits)](
        q, k_cache, v_cache, dst, part_o, part_lse, seq_lens, counters if counters is not None else seq_lens,
        *extra, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), dst.stride(0), dst.stride(1), *pstrides,
        split_len, max_len, extra[1].shape[1] if mode == 2 else max_len,
        GROUP=group, BLOCK_H=block_h, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_N=block_n or auto[0], NUM_SPLITS=splits, DOT_PRECISION=dot_precision,
        FUSED_MERGE=counters is not None, PART_BASE=base, QPS=qps, PREFIX_MODE=mode,
        num_warps=num_warps or auto[2], num_stages=num_stages or auto[1], PREFETCH=prefetch, **pdl,
    )
    if splits > 1 and counters is None:
        merge_splits(dst, part_o, part_lse, seq_lens, split_len, base, qps)
    if dst is not out:
        out.copy_(dst)
    return out
