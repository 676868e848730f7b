"""Triton attention to a prefix shared by the whole batch (the first half of cascade attention).

QP prompts start with one long shared prefix (instructions, schema, examples: 128-512
tokens) followed by each query's own tokens.  Copying the prefix's K/V into every
sequence's cache makes every decode step read it once per sequence; cascade attention
stores it once, ``[Hkv, P, D]``, and splits each query's softmax in two parts:

1. this module: every query row of the batch (decode: one per sequence; prefill: every
   new token) against the shared prefix.  The rows of all sequences that use one KV head
   form one tall matrix, so the prefix is read from memory once per step and the products
   run on tensor cores like a prefill;
2. the ordinary decode or prefill kernel over each sequence's own keys.

Each part is a partial result: its normalized output and base-2 log-sum-exp in float32
scratch ``PART_O [R, Hq, S, BLOCK_D]`` / ``PART_LSE [R, Hq, S]``.  The prefix takes slots
``0 .. prefix_splits - 1`` (it may be cut into key splits when the batch is too small to
fill the GPU), the sequence's own keys the slots after them; the own-key kernel (or the
merge kernel after it, when the own keys are split too) folds the prefix slots into its
result.  A slot that saw no key (the prefix is empty, or shorter than the split's start)
holds output 0 and log-sum-exp ``-inf``, which the merges weigh by zero.

The prefix length may live on the device (``prefix_len``, an int32 tensor of one element,
at most the buffer's ``P``) so that a CUDA graph captured once stays valid while the
engine swaps prefixes of different lengths into the same buffer.

Grid: ``(ceil(R / BLOCK_M), Hkv, prefix_splits)``; a program holds ``BLOCK_M`` query rows
times the ``GROUP`` query heads of one KV head (padded to ``GROUP_PAD``), as in
:mod:`qpfast.kernels.prefill`, whose block-size rules it reuses.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import attend_key_range, cdiv, cut, grid_dependency, num_sms, pdl_launch

LOG2E = 1.4426950408889634
MIN_PREFIX_SPLIT = 128          # keys per prefix split at least
# Query rows per tile (BLOCK_M x GROUP_PAD) at most: at head dim 128 a 128-row tile spills
# registers on sm_90 even with 8 warps (88-96 bytes of stack, ptxas resource usage of the
# cubins tests/test_kernels_compile.py builds) and a 64-row one does not (215-243 registers);
# it also gives a decode batch twice the programs (the prefix then comes from L2 once more).
MAX_TILE_ROWS = 64


@triton.jit
def _prefix_kernel(
    Q, PK, PV, PLEN, PART_O, PART_LSE,
    qk_scale,                                   # sm_scale * log2(e)
    stride_qr, stride_qh, stride_kh, stride_kt, stride_vh, stride_vt,
    num_rows, prefix_cap, split_len, part_slots,
    HAS_PLEN: tl.constexpr,                     # prefix length read from PLEN, else prefix_cap
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,                      # programmatic dependent launch (common.grid_dependency)
):
    grid_dependency(USE_PDL)
    ROWS: tl.constexpr = BLOCK_M * GROUP_PAD
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    rows = tl.arange(0, ROWS)
    r = tile * BLOCK_M + rows // GROUP_PAD      # query row (sequence or token)
    grp = rows % GROUP_PAD
    head = kv_head * GROUP + grp
    row_ok = (r < num_rows) & (grp < GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + r.to(tl.int64)[:, None] * stride_qr + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_PLEN:
        plen = tl.load(PLEN)
    else:
        plen = prefix_cap
    start = split * split_len
    end = tl.minimum(plen, start + split_len)
    k_base = PK + kv_head.to(tl.int64) * stride_kh
    v_base = PV + kv_head.to(tl.int64) * stride_vh

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    m_i, l_i, acc = attend_key_range(q, k_base, v_base, stride_kt, stride_vt, start, end, qk_scale,
                                     m_i, l_i, acc, offs_n, offs_d, d_ok, end, BLOCK_N, DOT_PRECISION, False)

    # a split past the prefix's end saw no key: output 0, log-sum-exp -inf (weight 0)
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    slot = (r.to(tl.int64) * (GROUP * tl.num_programs(1)) + head) * part_slots + split
    tl.store(PART_O + slot[:, None] * BLOCK_D + offs_d[None, :], out, mask=row_ok[:, None])
    tl.store(PART_LSE + slot, tl.where(seen, m_i + tl.log2(l_i), float("-inf")), mask=row_ok)


def prefix_num_splits(programs: int, prefix_cap: int, num_sms: int) -> int:
    """Key splits of the shared prefix for ``programs`` (row tile, KV head) programs.

    Decode batches give few programs (tiles of up to ``MAX_TILE_ROWS`` rows per KV head: 8
    programs for a batch of 16 on 8 KV heads), each walking the whole prefix alone; cutting the
    prefix into splits of at least ``MIN_PREFIX_SPLIT`` keys gives about one program per
    multiprocessor, once the programs fill less than half of them.  Each extra split costs
    one more float32 partial per (row, head) to write and merge.  Not yet fitted on a GPU.
    """
    programs = max(1, programs)
    if 2 * programs >= num_sms:
        return 1
    return max(1, min(cdiv(num_sms, programs), cdiv(max(1, prefix_cap), MIN_PREFIX_SPLIT)))


def prefix_plan(rows: int, hkv: int, group: int, head_dim: int, prefix_cap: int, num_sms: int,
                num_splits: int | None = None, block_m: int | None = None,
                block_n: int | None = None) -> tuple[dict, int, int]:
    """``(launch config, split_len, num_splits)`` of :func:`prefix_partials` for ``rows``
    query rows; the overrides are for tests and tuning."""
    from .prefill import prefill_config, tile_warps   # the prefill kernel's tile rules, one sequence of `rows`
    cfg = prefill_config(rows, 1, group, head_dim)
    gp = cfg["GROUP_PAD"]
    cfg["BLOCK_M"] = block_m or max(1, min(cfg["BLOCK_M"], MAX_TILE_ROWS // gp), 16 // gp)
    cfg["num_warps"] = tile_warps(cfg["BLOCK_M"] * gp, cfg["BLOCK_D"])
    if block_n is not None:
        cfg["BLOCK_N"] = block_n
    if num_splits is None:
        num_splits = prefix_num_splits(cdiv(max(1, rows), cfg["BLOCK_M"]) * hkv, prefix_cap, num_sms)
    split_len, num_splits = cut(max(1, prefix_cap), max(1, int(num_splits)), cfg["BLOCK_N"])
    return cfg, split_len, num_splits


def prefix_partials(q, prefix_k, prefix_v, prefix_len, scale: float, part_o, part_lse, plan) -> None:
    """Writes each query row's attention to the shared prefix into slots ``0 ..
    num_splits - 1`` of ``part_o [R, Hq, S, BLOCK_D]`` / ``part_lse [R, Hq, S]``.

    ``q [R, Hq, D]``; ``prefix_k/prefix_v [Hkv, P, D]`` (last dim contiguous);
    ``prefix_len`` None (all ``P`` keys) or an int32 ``[1]`` device tensor; ``plan`` from
    :func:`prefix_plan`.  Arguments are validated by the callers
    (:func:`qpfast.kernels.reference.check_prefix_args`)."""
    cfg, split_len, num_splits = plan
    rows, hq, d = q.shape
    hkv = prefix_k.shape[0]
    _prefix_kernel[(cdiv(rows, cfg["BLOCK_M"]), hkv, num_splits)](
        q, prefix_k, prefix_v, prefix_len if prefix_len is not None else part_lse, part_o, part_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1), prefix_k.stride(0), prefix_k.stride(1),
        prefix_v.stride(0), prefix_v.stride(1),
        rows, prefix_k.shape[1], split_len, part_o.shape[2],
        HAS_PLEN=prefix_len is not None, GROUP=hq // hkv, HEAD_DIM=d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **cfg, **pdl_launch(q.device),
    )


def split_scratch(q, own_splits: int, block_d: int, prefix_k, prefix_v, prefix_len, scale: float,
                  prefix_splits: int | None = None):
    """``(part_o, part_lse, base)`` of one decode/prefill call over ``q [R, Hq, D]`` whose own
    keys are cut into ``own_splits``: the float32 scratch ``[R, Hq, base + own_splits,
    BLOCK_D]`` / ``[R, Hq, base + own_splits]`` with the shared prefix's partials already in
    its first ``base`` slots, or ``(None, None, 0)`` when the call writes its output directly
    (one split, no prefix)."""
    shared = shared_prefix(prefix_k, prefix_v, prefix_len)
    plan, base = None, 0
    if shared is not None:
        rows, hq, d = q.shape
        hkv = shared[0].shape[0]
        plan = prefix_plan(rows, hkv, hq // hkv, d, shared[0].shape[1], num_sms(q.device), prefix_splits)
        base = plan[2]
    if own_splits == 1 and not base:
        return None, None, 0
    rows, hq = q.shape[0], q.shape[1]
    part_o = torch.empty((rows, hq, base + own_splits, block_d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((rows, hq, base + own_splits), dtype=torch.float32, device=q.device)
    if plan is not None:
        prefix_partials(q, *shared, scale, part_o, part_lse, plan)
    return part_o, part_lse, base


def shared_prefix(prefix_k, prefix_v, prefix_len):
    """The prefix arguments as the kernels take them: None when there is no prefix or it
    holds no key (``P == 0``), else ``(prefix_k, prefix_v, prefix_len)`` with contiguous
    last dims."""
    if prefix_k is None or prefix_k.shape[1] == 0:
        return None
    pk, pv = (x if x.stride(-1) == 1 else x.contiguous() for x in (prefix_k, prefix_v))
    return pk, pv, prefix_len
