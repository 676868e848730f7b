"""Triton kernels that apply the matcher's token bitmask to logits and pick the next token.

Bitmask layout (DESIGN.md §2, shared with xgrammar/llguidance): int32 ``[B, W]``,
``W >= ceil(V/32)``; bit ``j`` of word ``w`` set means token ``32*w + j`` is allowed.
Bits for tokens ``>= V`` are ignored.

* :func:`apply_bitmask_` — writes ``-inf`` over disallowed logits in place.  It never
  reads the logits: the traffic is the bitmask (``V/8`` bytes a row) plus the stores.
* :func:`masked_argmax` — one pass over each row: mask and greedy pick fused, the logits
  left untouched.
* :func:`masked_sample` — temperature sampling by the Gumbel-max trick
  (``argmax(logits/T + g)``, ``g = -log(-log u)``, ``u`` uniform from Triton's Philox
  generator keyed by a seed drawn from the torch generator), fused with the mask in one
  pass; with ``top_p < 1`` the nucleus threshold is found first by a 16-way search over
  scaled-logit thresholds (one max/sum pass plus ``TOP_P_ROUNDS`` passes), see
  :func:`masked_sample`.

Return values for the picks: the chosen token id (int64); the lowest allowed token when
every allowed logit is ``-inf``; ``-1`` for a row with no allowed token.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .reference import check_bitmask_args, check_sampling_args

#: candidate thresholds per pass / passes of the top-p search: resolution
#: (ln V + 20) / 17**6, about 1.3e-6 in scaled-logit units for V = 152k.
TOP_P_CANDIDATES = 16
TOP_P_ROUNDS = 6


@triton.jit
def _apply_bitmask_kernel(LOGITS, BITMASK, vocab, stride_l, stride_m, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_vocab = offs < vocab
    words = tl.load(BITMASK + row.to(tl.int64) * stride_m + (offs >> 5), mask=in_vocab, other=0)
    banned = ((words >> (offs & 31)) & 1) == 0
    ninf = tl.full([BLOCK_V], float("-inf"), LOGITS.dtype.element_ty)
    tl.store(LOGITS + row.to(tl.int64) * stride_l + offs, ninf, mask=in_vocab & banned)


@triton.jit
def _masked_argmax_kernel(LOGITS, BITMASK, OUT, vocab, stride_l, stride_m, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    logits_row = LOGITS + row.to(tl.int64) * stride_l
    mask_row = BITMASK + row.to(tl.int64) * stride_m
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    first_ok = tl.full([], 0x7FFFFFFF, tl.int32)        # lowest allowed token so far
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_vocab = offs < vocab
        words = tl.load(mask_row + (offs >> 5), mask=in_vocab, other=0)
        ok = in_vocab & (((words >> (offs & 31)) & 1) != 0)
        x = tl.load(logits_row + offs, mask=ok, other=float("-inf")).to(tl.float32)
        blk_val = tl.max(x, axis=0)
        blk_idx = tl.argmax(x, axis=0, tie_break_left=True)
        better = blk_val > best_val                     # strict: earlier blocks win ties
        best_idx = tl.where(better, start + blk_idx, best_idx)
        best_val = tl.where(better, blk_val, best_val)
        first_ok = tl.minimum(first_ok, tl.min(tl.where(ok, offs, 0x7FFFFFFF), axis=0))
    pick = tl.where(best_val > float("-inf"), best_idx,
                    tl.where(first_ok < vocab, first_ok, -1))
    tl.store(OUT + row, pick.to(tl.int64))


@triton.jit
def _masked_sample_kernel(
    LOGITS, BITMASK, OUT, SEED, vocab, stride_l, stride_m,
    inv_temp, top_p, search_width,
    USE_TOP_P: tl.constexpr, CANDIDATES: tl.constexpr, ROUNDS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    logits_row = LOGITS + row.to(tl.int64) * stride_l
    mask_row = BITMASK + row.to(tl.int64) * stride_m
    seed = tl.load(SEED)

    threshold = tl.full([], float("-inf"), tl.float32)   # keep scaled logits >= threshold
    if USE_TOP_P:
        # pass 1: max and sum of exp of the allowed scaled logits (online)
        m = tl.full([], float("-inf"), tl.float32)
        z = tl.full([], 0.0, tl.float32)
        for start in range(0, vocab, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            in_vocab = offs < vocab
            words = tl.load(mask_row + (offs >> 5), mask=in_vocab, other=0)
            ok = in_vocab & (((words >> (offs & 31)) & 1) != 0)
            s = tl.load(logits_row + offs, mask=ok, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(s, axis=0))
            m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
            z = z * tl.exp(m - m_safe) + tl.sum(tl.where(ok, tl.exp(s - m_safe), 0.0), axis=0)
            m = m_new
        # passes 2..: the largest threshold whose kept mass is still >= top_p lies in
        # [lo, hi); each round tests CANDIDATES evenly spaced thresholds inside it.
        m_safe = tl.where(m > float("-inf"), m, 0.0)
        lo = m_safe - search_width
        hi = m_safe + 1.0
        kk = tl.arange(0, CANDIDATES)
        for _ in tl.static_range(ROUNDS):
            cand = lo + (hi - lo) * (kk + 1).to(tl.float32) / (CANDIDATES + 1)
            mass = tl.zeros([CANDIDATES], tl.float32)
            for start in range(0, vocab, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                in_vocab = offs < vocab
                words = tl.load(mask_row + (offs >> 5), mask=in_vocab, other=0)
                ok = in_vocab & (((words >> (offs & 31)) & 1) != 0)
                s = tl.load(logits_row + offs, mask=ok, other=float("-inf")).to(tl.float32) * inv_temp
                p = tl.where(ok, tl.exp(s - m_safe), 0.0)
                above = s[:, None] >= cand[None, :]
                mass += tl.sum(tl.where(above, p[:, None], 0.0), axis=0)
            enough = mass >= top_p * z
            lo = tl.maximum(lo, tl.max(tl.where(enough, cand, float("-inf")), axis=0))
            hi = tl.minimum(hi, tl.min(tl.where(enough, float("inf"), cand), axis=0))
        threshold = lo

    # final pass: Gumbel-max over the allowed (and kept) tokens
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    first_ok = tl.full([], 0x7FFFFFFF, tl.int32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_vocab = offs < vocab
        words = tl.load(mask_row + (offs >> 5), mask=in_vocab, other=0)
        ok = in_vocab & (((words >> (offs & 31)) & 1) != 0)
        s = tl.load(logits_row + offs, mask=ok, other=float("-inf")).to(tl.float32) * inv_temp
        u = tl.rand(seed, row * vocab + offs)
        key = s - tl.log(-tl.log(u))
        key = tl.where(ok & (s >= threshold), key, float("-inf"))
        blk_val = tl.max(key, axis=0)
        blk_idx = tl.argmax(key, axis=0, tie_break_left=True)
        better = blk_val > best_val
        best_idx = tl.where(better, start + blk_idx, best_idx)
        best_val = tl.where(better, blk_val, best_val)
        first_ok = tl.minimum(first_ok, tl.min(tl.where(ok, offs, 0x7FFFFFFF), axis=0))
    pick = tl.where(best_val > float("-inf"), best_idx,
                    tl.where(first_ok < vocab, first_ok, -1))
    tl.store(OUT + row, pick.to(tl.int64))


def _unit_stride(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def apply_bitmask_(logits, bitmask, *, block_v=1024):
    """Triton version of :func:`qpfast.kernels.reference.apply_bitmask_` (in place).

    Args:
        logits: ``[B, V]`` float16/bfloat16/float32.
        bitmask: int32 ``[B, W]``, ``W >= ceil(V/32)``, on logits' device.
    Returns:
        ``logits``.
    """
    check_bitmask_args(logits, bitmask)
    rows, vocab = logits.shape
    if rows == 0 or vocab == 0:
        return logits
    dst = logits if logits.stride(-1) == 1 else logits.contiguous()
    bm = _unit_stride(bitmask)
    _apply_bitmask_kernel[(rows, triton.cdiv(vocab, block_v))](
        dst, bm, vocab, dst.stride(0), bm.stride(0), BLOCK_V=block_v, num_warps=4)
    if dst is not logits:
        logits.copy_(dst)
    return logits


def masked_argmax(logits, bitmask, *, out=None, block_v=2048):
    """Triton version of :func:`qpfast.kernels.reference.masked_argmax`.

    One program per row loops over the vocabulary in ``block_v`` chunks.  ``out``
    (optional int64 ``[B]``) receives the result.
    """
    check_bitmask_args(logits, bitmask)
    rows, vocab = logits.shape
    out = _out_tokens(out, rows, logits.device)
    if rows == 0:
        return out
    lg, bm = _unit_stride(logits), _unit_stride(bitmask)
    _masked_argmax_kernel[(rows,)](lg, bm, out, vocab, lg.stride(0), bm.stride(0),
                                   BLOCK_V=block_v, num_warps=8)
    return out


def masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None, *, out=None,
                  block_v=1024):
    """Triton version of :func:`qpfast.kernels.reference.masked_sample`.

    The random stream differs from the reference's (Philox inside the kernel, seeded by
    one draw from ``generator``; the draw stays on the device, no synchronization), the
    distribution is the same.  Top-p: the kept set is every allowed token whose scaled
    logit is at least a threshold found to within ``(ln V + 20) / 17**6`` (about 1.3e-6)
    of the exact nucleus boundary; tokens tied with the boundary within that tolerance
    are kept too.
    """
    check_bitmask_args(logits, bitmask)
    temperature, top_p = check_sampling_args(temperature, top_p)
    if temperature == 0.0:
        return masked_argmax(logits, bitmask, out=out)
    rows, vocab = logits.shape
    out = _out_tokens(out, rows, logits.device)
    if rows == 0:
        return out
    dev = logits.device
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(f"generator is on {generator.device} but logits is on {dev}")
    seed = torch.randint(0, 2**31 - 1, (1,), device=dev, generator=generator, dtype=torch.int64)
    lg, bm = _unit_stride(logits), _unit_stride(bitmask)
    _masked_sample_kernel[(rows,)](
        lg, bm, out, seed, vocab, lg.stride(0), bm.stride(0),
        1.0 / temperature, top_p, math.log(max(vocab, 1)) + 20.0,
        USE_TOP_P=top_p < 1.0, CANDIDATES=TOP_P_CANDIDATES, ROUNDS=TOP_P_ROUNDS,
        BLOCK_V=block_v, num_warps=8,
    )
    return out


def _out_tokens(out, rows: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(rows, dtype=torch.long, device=device)
    if not isinstance(out, torch.Tensor) or out.shape != (rows,) or out.dtype != torch.long \
            or out.device != device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 tensor of shape ({rows},) on {device}")
    return out
