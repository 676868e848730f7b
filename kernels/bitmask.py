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
  scaled-logit thresholds (one max/sum pass plus ``TOP_P_ROUNDS`` passes, each cut into
  chunks of the row like the picks), see :func:`top_p_thresholds`.

Return values for the picks: the chosen token id (int64); the lowest allowed token when
every allowed logit is ``-inf``; ``-1`` for a row with no allowed token.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import cdiv, cut, fill_count, grid_dependency, pdl_launch, pow2
from .common import num_sms as _num_sms
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
def _allowed_block(logits_row, mask_row, offs, limit, scale):
    """Tokens `offs` (< limit) of one row: which are allowed, and their logits * scale in
    float32 (-inf where not allowed)."""
    in_range = offs < limit
    words = tl.load(mask_row + (offs >> 5), mask=in_range, other=0)
    ok = in_range & (((words >> (offs & 31)) & 1) != 0)
    return ok, tl.load(logits_row + offs, mask=ok, other=float("-inf")).to(tl.float32) * scale


@triton.jit
def _pick_kernel(
    LOGITS, BITMASK, OUT, PART_VAL, PART_IDX, PART_FIRST, SEED, THRESH,
    vocab, stride_l, stride_m, inv_temp, chunk_len,
    SAMPLE: tl.constexpr, USE_THRESH: tl.constexpr, NUM_CHUNKS: tl.constexpr, BLOCK_V: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Greedy (or Gumbel-max) pick over the allowed tokens of one chunk of one row.

    Program (row, chunk) scans tokens [chunk * chunk_len, (chunk + 1) * chunk_len). With
    one chunk it writes the pick; otherwise it writes its best key, that key's token and its
    lowest allowed token, and `_reduce_picks_kernel` combines the chunks in token order."""
    grid_dependency(USE_PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    logits_row = LOGITS + row.to(tl.int64) * stride_l
    mask_row = BITMASK + row.to(tl.int64) * stride_m
    if SAMPLE:
        seed = tl.load(SEED)
    if USE_THRESH:
        threshold = tl.load(THRESH + row)
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    first_ok = tl.full([], 0x7FFFFFFF, tl.int32)        # lowest allowed token so far
    lo = chunk * chunk_len
    hi = tl.minimum(vocab, lo + chunk_len)
    for start in range(lo, hi, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        ok, key = _allowed_block(logits_row, mask_row, offs, hi, 1.0)
        if SAMPLE:
            s = key * inv_temp
            u = tl.rand(seed, row * vocab + offs)
            key = s - tl.log(-tl.log(u))
            keep = ok
            if USE_THRESH:
                keep = keep & (s >= threshold)
            key = tl.where(keep, key, float("-inf"))
        blk_val = tl.max(key, axis=0)
        blk_idx = tl.argmax(key, axis=0, tie_break_left=True)
        better = blk_val > best_val                     # strict: earlier blocks win ties
        best_idx = tl.where(better, start + blk_idx, best_idx)
        best_val = tl.where(better, blk_val, best_val)
        first_ok = tl.minimum(first_ok, tl.min(tl.where(ok, offs, 0x7FFFFFFF), axis=0))
    if NUM_CHUNKS == 1:
        pick = tl.where(best_val > float("-inf"), best_idx,
                        tl.where(first_ok < vocab, first_ok, -1))
        tl.store(OUT + row, pick.to(tl.int64))
    else:
        slot = row * NUM_CHUNKS + chunk
        tl.store(PART_VAL + slot, best_val)
        tl.store(PART_IDX + slot, best_idx)
        tl.store(PART_FIRST + slot, first_ok)


@triton.jit
def _reduce_picks_kernel(OUT, PART_VAL, PART_IDX, PART_FIRST, vocab,
                         NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr):
    grid_dependency(USE_PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    c_ok = offs < NUM_CHUNKS
    base = row * NUM_CHUNKS
    vals = tl.load(PART_VAL + base + offs, mask=c_ok, other=float("-inf"))
    idxs = tl.load(PART_IDX + base + offs, mask=c_ok, other=0)
    firsts = tl.load(PART_FIRST + base + offs, mask=c_ok, other=0x7FFFFFFF)
    best = tl.argmax(vals, axis=0, tie_break_left=True)  # chunks in token order: lowest id wins ties
    best_val = tl.max(vals, axis=0)
    best_idx = tl.sum(tl.where(offs == best, idxs, 0), axis=0)
    first_ok = tl.min(firsts, axis=0)
    pick = tl.where(best_val > float("-inf"), best_idx, tl.where(first_ok < vocab, first_ok, -1))
    tl.store(OUT + row, pick.to(tl.int64))


@triton.jit
def _top_p_stats_kernel(LOGITS, BITMASK, PART_M, PART_Z, vocab, stride_l, stride_m, inv_temp, chunk_len,
                        NUM_CHUNKS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Top-p, pass 1: max and sum of exp of the allowed scaled logits of one chunk of one row
    (online), into PART_M / PART_Z [rows, NUM_CHUNKS]."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    logits_row = LOGITS + row.to(tl.int64) * stride_l
    mask_row = BITMASK + row.to(tl.int64) * stride_m
    lo = chunk * chunk_len
    hi = tl.minimum(vocab, lo + chunk_len)
    m = tl.full([], float("-inf"), tl.float32)
    z = tl.full([], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        ok, s = _allowed_block(logits_row, mask_row, offs, hi, inv_temp)
        m_new = tl.maximum(m, tl.max(s, axis=0))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        z = z * tl.exp(m - m_safe) + tl.sum(tl.where(ok, tl.exp(s - m_safe), 0.0), axis=0)
        m = m_new
    tl.store(PART_M + row * NUM_CHUNKS + chunk, m)
    tl.store(PART_Z + row * NUM_CHUNKS + chunk, z)


@triton.jit
def _row_stats(PART_M, PART_Z, row, NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr):
    """The row's max scaled logit (0 when nothing is allowed) and sum of exp relative to it,
    from its chunks' partials."""
    offs = tl.arange(0, BLOCK_C)
    ok = offs < NUM_CHUNKS
    pm = tl.load(PART_M + row * NUM_CHUNKS + offs, mask=ok, other=float("-inf"))
    pz = tl.load(PART_Z + row * NUM_CHUNKS + offs, mask=ok, other=0.0)
    m = tl.max(pm, axis=0)
    m_safe = tl.where(m > float("-inf"), m, 0.0)
    z = tl.sum(tl.where(pm > float("-inf"), pz * tl.exp(pm - m_safe), 0.0), axis=0)
    return m_safe, z


@triton.jit
def _narrow(PART_MASS, LOHI, row, rows, parity, z, top_p,
            NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr, CANDIDATES: tl.constexpr):
    """The nucleus threshold's interval after a round: the round's interval (LOHI[parity]),
    its candidates' kept mass summed over the chunks (PART_MASS[parity]); the largest
    candidate that still keeps >= top_p of the mass becomes the new lower end, the next one
    up the new upper end."""
    lo = tl.load(LOHI + (parity * rows + row) * 2)
    hi = tl.load(LOHI + (parity * rows + row) * 2 + 1)
    kk = tl.arange(0, CANDIDATES)
    cand = lo + (hi - lo) * (kk + 1).to(tl.float32) / (CANDIDATES + 1)
    offs_c = tl.arange(0, BLOCK_C)
    base = (parity * rows + row).to(tl.int64) * NUM_CHUNKS * CANDIDATES
    part = tl.load(PART_MASS + base + offs_c[:, None] * CANDIDATES + kk[None, :],
                   mask=(offs_c < NUM_CHUNKS)[:, None], other=0.0)
    enough = tl.sum(part, axis=0) >= top_p * z
    lo = tl.maximum(lo, tl.max(tl.where(enough, cand, float("-inf")), axis=0))
    hi = tl.minimum(hi, tl.min(tl.where(enough, float("inf"), cand), axis=0))
    return lo, hi


@triton.jit
def _top_p_round_kernel(
    LOGITS, BITMASK, PART_M, PART_Z, PART_MASS, LOHI, vocab, stride_l, stride_m, inv_temp, top_p,
    search_width, chunk_len, rnd,
    NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr, CANDIDATES: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Top-p, round `rnd` of the threshold search over one chunk of one row.

    The largest threshold whose kept mass is still >= top_p lies in an interval [lo, hi):
    round 0 starts from [max - search_width, max + 1); round r > 0 narrows round r-1's
    interval by its summed masses (every program of the row does, the same way; chunk 0
    records the result). Each round tests CANDIDATES evenly spaced thresholds inside the
    interval: this chunk's kept mass of each goes to PART_MASS. Rounds alternate between two
    halves of PART_MASS / LOHI, so a round reads the previous round's results while writing
    its own."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    rows = tl.num_programs(0)
    m_safe, z = _row_stats(PART_M, PART_Z, row, NUM_CHUNKS, BLOCK_C)
    if rnd == 0:
        lo = m_safe - search_width
        hi = m_safe + 1.0
    else:
        lo, hi = _narrow(PART_MASS, LOHI, row, rows, (rnd - 1) % 2, z, top_p, NUM_CHUNKS, BLOCK_C, CANDIDATES)
    parity = rnd % 2
    kk = tl.arange(0, CANDIDATES)
    cand = lo + (hi - lo) * (kk + 1).to(tl.float32) / (CANDIDATES + 1)
    logits_row = LOGITS + row.to(tl.int64) * stride_l
    mask_row = BITMASK + row.to(tl.int64) * stride_m
    start0 = chunk * chunk_len
    end = tl.minimum(vocab, start0 + chunk_len)
    mass = tl.zeros([CANDIDATES], tl.float32)
    for start in range(start0, end, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        ok, s = _allowed_block(logits_row, mask_row, offs, end, inv_temp)
        p = tl.where(ok, tl.exp(s - m_safe), 0.0)
        above = s[:, None] >= cand[None, :]
        mass += tl.sum(tl.where(above, p[:, None], 0.0), axis=0)
    base = (parity * rows + row).to(tl.int64) * NUM_CHUNKS * CANDIDATES + chunk * CANDIDATES
    tl.store(PART_MASS + base + kk, mass)
    if chunk == 0:
        tl.store(LOHI + (parity * rows + row) * 2, lo)
        tl.store(LOHI + (parity * rows + row) * 2 + 1, hi)


@triton.jit
def _top_p_final_kernel(PART_M, PART_Z, PART_MASS, LOHI, THRESH, top_p, last,
                        NUM_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr, CANDIDATES: tl.constexpr):
    """Top-p: the last round's narrowing; the row's threshold is the interval's lower end."""
    row = tl.program_id(0)
    _, z = _row_stats(PART_M, PART_Z, row, NUM_CHUNKS, BLOCK_C)
    lo, _ = _narrow(PART_MASS, LOHI, row, tl.num_programs(0), last % 2, z, top_p, NUM_CHUNKS, BLOCK_C, CANDIDATES)
    tl.store(THRESH + row, lo)


def top_p_thresholds(logits, bitmask, inv_temp: float, top_p: float, block_v: int, num_chunks=None):
    """Per row, the scaled-logit threshold of the top-p nucleus (see :func:`masked_sample`):
    one max/sum pass and ``TOP_P_ROUNDS`` search rounds, each over ``num_chunks`` chunks of
    the row at once (a program per chunk: a few rows still fill the GPU; cut as the picks
    cut it), then a final narrowing; float32 ``[rows]``."""
    rows, vocab = logits.shape
    chunk_len, num_chunks = _chunking(rows, vocab, block_v, num_chunks, logits.device)
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    part_m, part_z = torch.empty(rows * num_chunks, **f32), torch.empty(rows * num_chunks, **f32)
    part_mass = torch.empty(2 * rows * num_chunks * TOP_P_CANDIDATES, **f32)
    lohi = torch.empty(2 * rows * 2, **f32)
    thresh = torch.empty(rows, **f32)
    grid = (rows, num_chunks)
    common = dict(NUM_CHUNKS=num_chunks, BLOCK_V=block_v)
    _top_p_stats_kernel[grid](logits, bitmask, part_m, part_z, vocab, logits.stride(0), bitmask.stride(0), inv_temp,
                              chunk_len, num_warps=8, **common)
    block_c = max(2, pow2(num_chunks))
    for rnd in range(TOP_P_ROUNDS):
        _top_p_round_kernel[grid](logits, bitmask, part_m, part_z, part_mass, lohi, vocab, logits.stride(0),
                                  bitmask.stride(0), inv_temp, top_p, math.log(max(vocab, 1)) + 20.0, chunk_len,
                                  rnd, BLOCK_C=block_c, CANDIDATES=TOP_P_CANDIDATES, num_warps=8, **common)
    _top_p_final_kernel[(rows,)](part_m, part_z, part_mass, lohi, thresh, top_p, TOP_P_ROUNDS - 1,
                                 NUM_CHUNKS=num_chunks, BLOCK_C=block_c, CANDIDATES=TOP_P_CANDIDATES, num_warps=1)
    return thresh


MAX_CHUNKS = 128


def pick_num_chunks(rows: int, vocab: int, block_v: int, num_sms: int) -> int:
    """Chunks per row for the pick kernels: about two programs per multiprocessor when the
    rows alone do not fill the GPU, each chunk at least one ``block_v`` block."""
    if rows >= num_sms:
        return 1
    return fill_count(rows, num_sms, min(cdiv(vocab, block_v), MAX_CHUNKS))


def _chunking(rows: int, vocab: int, block_v: int, num_chunks, device) -> tuple[int, int]:
    """``(chunk_len, num_chunks)`` of a pass over ``rows`` rows: ``num_chunks`` (default
    :func:`pick_num_chunks`) bounded to ``MAX_CHUNKS`` and to one ``block_v`` block a chunk."""
    if num_chunks is None:
        num_chunks = pick_num_chunks(rows, vocab, block_v, _num_sms(device))
    num_chunks = max(1, min(int(num_chunks), MAX_CHUNKS, max(1, cdiv(vocab, block_v))))
    return cut(vocab, num_chunks, block_v)


def _pick(logits, bitmask, out, *, sample, seed=None, thresh=None, inv_temp=1.0, block_v, num_chunks):
    rows, vocab = logits.shape
    lg, bm = _unit_stride(logits), _unit_stride(bitmask)
    chunk_len, num_chunks = _chunking(rows, vocab, block_v, num_chunks, logits.device)
    if num_chunks > 1:
        part_val = torch.empty(rows * num_chunks, dtype=torch.float32, device=lg.device)
        part_idx = torch.empty(rows * num_chunks, dtype=torch.int32, device=lg.device)
        part_first = torch.empty(rows * num_chunks, dtype=torch.int32, device=lg.device)
    else:
        part_val = part_idx = part_first = out                 # unused
    _pick_kernel[(rows, num_chunks)](
        lg, bm, out, part_val, part_idx, part_first,
        seed if seed is not None else out, thresh if thresh is not None else out,
        vocab, lg.stride(0), bm.stride(0), inv_temp, chunk_len,
        SAMPLE=sample, USE_THRESH=thresh is not None, NUM_CHUNKS=num_chunks, BLOCK_V=block_v,
        num_warps=8 if block_v >= 2048 else 4, **pdl_launch(lg.device))
    if num_chunks > 1:
        _reduce_picks_kernel[(rows,)](out, part_val, part_idx, part_first, vocab,
                                      NUM_CHUNKS=num_chunks, BLOCK_C=max(2, pow2(num_chunks)), num_warps=1,
                                      **pdl_launch(lg.device))
    return out


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


def masked_argmax(logits, bitmask, *, out=None, block_v=2048, num_chunks=None):
    """Triton version of :func:`qpfast.kernels.reference.masked_argmax`.

    Each row's vocabulary is cut into ``num_chunks`` chunks (default
    :func:`pick_num_chunks`: one when the rows fill the GPU) scanned in ``block_v``
    blocks by one program each; a second kernel combines the chunks.  ``out`` (optional
    int64 ``[B]``) receives the result.
    """
    check_bitmask_args(logits, bitmask)
    rows, vocab = logits.shape
    out = _out_tokens(out, rows, logits.device)
    if rows == 0:
        return out
    return _pick(logits, bitmask, out, sample=False, block_v=block_v, num_chunks=num_chunks)


def masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None, *, out=None,
                  block_v=1024, num_chunks=None):
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
        return masked_argmax(logits, bitmask, out=out, num_chunks=num_chunks)
    rows, vocab = logits.shape
    out = _out_tokens(out, rows, logits.device)
    if rows == 0:
        return out
    dev = logits.device
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(f"generator is on {generator.device} but logits is on {dev}")
    seed = torch.randint(0, 2**31 - 1, (1,), device=dev, generator=generator, dtype=torch.int64)
    thresh = None
    if top_p < 1.0:
        lg, bm = _unit_stride(logits), _unit_stride(bitmask)
        thresh = top_p_thresholds(lg, bm, 1.0 / temperature, top_p, block_v, num_chunks)
    return _pick(logits, bitmask, out, sample=True, seed=seed, thresh=thresh, inv_temp=1.0 / temperature,
                 block_v=block_v, num_chunks=num_chunks)


def _out_tokens(out, rows: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(rows, dtype=torch.long, device=device)
    if not isinstance(out, torch.Tensor) or out.shape != (rows,) or out.dtype != torch.long \
            or out.device != device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 tensor of shape ({rows},) on {device}")
    return out
