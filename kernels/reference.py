"""Plain-torch references for every kernel in :mod:`qpfast.kernels`.

Same names and signatures as the Triton kernels.  These are what the engine runs on
CPU, so they are vectorized (no Python loop over tokens or sequences) and they validate
their inputs exactly like the kernels do.  Attention is computed in float32 and cast back
to the input dtype.

The argument checks used by both the references and the kernels live here too
(``check_prefill_args`` and friends): one set of rules, one set of error messages.

Shapes (``B`` sequences, ``Hq`` query heads, ``Hkv`` key/value heads, ``D`` head dim):

* ``prefill_attention(q [total_q, Hq, D], k/v [total_k, Hkv, D], cu_seqlens_q [B+1],
  cu_seqlens_k [B+1]) -> [total_q, Hq, D]``
* ``decode_attention(q [B, Hq, D], k_cache/v_cache [B, Hkv, max_len, D],
  seq_lens [B]) -> [B, Hq, D]``; keyword-only ``queries_per_seq=T`` takes ``T`` new tokens
  of each sequence at once, ``q [B * T, Hq, D]`` (causal among them)
* both attention functions take an optional shared prefix, stored once for the whole
  batch (cascade attention): keyword-only ``prefix_k/prefix_v [Hkv, P, D]`` and
  ``prefix_len`` (int32 ``[1]``, default ``P``); every query attends to those keys before
  its own
* ``apply_bitmask_(logits [B, V], bitmask int32 [B, W >= ceil(V/32)])`` in place
* ``masked_argmax(logits, bitmask) -> int64 [B]``
* ``masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None)
  -> int64 [B]``
* ``linear(x [M, K], w [N, K], bias=None, swiglu=False) -> [M, N]`` (``[M, N/2]``, the
  SwiGLU of a fused gate/up weight, with ``swiglu``); keyword-only ``norm_weight`` (x's
  rows RMS-normalized first, ``row_sumsq``) and ``residual`` (added to the product,
  ``sumsq_out``): a decoder layer's norms and residual adds
"""
from __future__ import annotations

import math
import numbers
import sys

import torch
import torch.nn.functional as F

__all__ = [
    "prefill_attention", "decode_attention", "apply_bitmask_", "masked_argmax",
    "masked_sample", "bitmask_to_bool", "linear",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Returned by ``masked_argmax``/``masked_sample`` for a row in which no token is allowed.
NO_TOKEN = -1


# --------------------------------------------------------------------------------------
# argument checks (shared with the Triton wrappers)
# --------------------------------------------------------------------------------------

def _tensor(name: str, x, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _float_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")


def _same_device(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def _int32_vector(name: str, x, length: int | None = None) -> torch.Tensor:
    _tensor(name, x, 1)
    if x.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {x.dtype}")
    if length is not None and x.numel() != length:
        raise ValueError(f"{name} must have {length} elements, got {x.numel()}")
    return x


def check_sm_scale(sm_scale, head_dim: int) -> float:
    """Return the softmax scale: ``sm_scale`` or ``1/sqrt(head_dim)`` when None."""
    if sm_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    sm_scale = float(sm_scale)
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale}")
    return sm_scale


def check_prefill_args(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale) -> float:
    """Validate ``prefill_attention`` arguments; returns the softmax scale.

    The values of ``cu_seqlens_*`` (start at 0, non-decreasing, end at the token counts,
    every sequence has at least as many keys as queries) are checked when they live on
    the CPU; on a GPU that check would cost a device synchronization on every call (and
    break CUDA-graph capture), so there they are trusted.
    """
    _tensor("q", q, 3)
    _tensor("k", k, 3)
    _tensor("v", v, 3)
    _float_dtype("q", q)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    _, hq, d = q.shape
    hkv = k.shape[1]
    if k.shape[2] != d:
        raise ValueError(f"q and k must have the same head dim, got {d} and {k.shape[2]}")
    if d == 0 or hq == 0 or hkv == 0:
        raise ValueError(f"q and k need at least one head of non-zero head dim, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if hq % hkv != 0:
        raise ValueError(f"the number of query heads ({hq}) must be a multiple of the number of key/value heads ({hkv})")
    _same_device("k", k, "q", q)
    _same_device("v", v, "q", q)
    _int32_vector("cu_seqlens_q", cu_seqlens_q)
    _int32_vector("cu_seqlens_k", cu_seqlens_k)
    if cu_seqlens_q.numel() < 1:
        raise ValueError("cu_seqlens_q must have B+1 >= 1 elements")
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must have the same length (B+1), got "
            f"{cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}")
    _same_device("cu_seqlens_q", cu_seqlens_q, "q", q)
    _same_device("cu_seqlens_k", cu_seqlens_k, "q", q)
    if cu_seqlens_q.device.type == "cpu":
        _check_cu_values(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
    return check_sm_scale(sm_scale, d)


def _check_cu_values(cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int) -> None:
    for name, cu, total, what in (("cu_seqlens_q", cu_q, total_q, "q.shape[0]"),
                                  ("cu_seqlens_k", cu_k, total_k, "k.shape[0]")):
        if int(cu[0]) != 0:
            raise ValueError(f"{name}[0] must be 0, got {int(cu[0])}")
        if bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{name} must be non-decreasing, got {cu.tolist()}")
        if int(cu[-1]) != total:
            raise ValueError(f"{name}[-1] must equal {what} = {total}, got {int(cu[-1])}")
    short = (cu_k[1:] - cu_k[:-1]) < (cu_q[1:] - cu_q[:-1])
    if bool(short.any()):
        i = int(short.nonzero()[0])
        raise ValueError(
            f"sequence {i} has more queries than keys: cu_seqlens_q gives "
            f"{int(cu_q[i + 1] - cu_q[i])}, cu_seqlens_k gives {int(cu_k[i + 1] - cu_k[i])} "
            "(its queries must be the last positions of its keys)")


def check_decode_args(q, k_cache, v_cache, seq_lens, sm_scale, queries_per_seq: int = 1) -> float:
    """Validate ``decode_attention`` arguments; returns the softmax scale.

    ``seq_lens`` values (``queries_per_seq <= seq_lens[b] <= max_len``) are checked on the
    CPU only, for the reason given in :func:`check_prefill_args`.
    """
    _tensor("q", q, 3)
    _tensor("k_cache", k_cache, 4)
    _tensor("v_cache", v_cache, 4)
    _float_dtype("q", q)
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(
            f"q, k_cache and v_cache must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if isinstance(queries_per_seq, bool) or not isinstance(queries_per_seq, numbers.Integral) \
            or queries_per_seq < 1:
        raise ValueError(f"queries_per_seq must be a positive int, got {queries_per_seq!r}")
    t = int(queries_per_seq)
    rows, hq, d = q.shape
    kb, hkv, max_len, kd = k_cache.shape
    if rows != kb * t:
        if t == 1:
            raise ValueError(f"k_cache has batch {kb} but q has batch {rows}")
        raise ValueError(f"q must hold queries_per_seq={t} rows per sequence: {kb * t} rows for "
                         f"k_cache's batch {kb}, got {rows}")
    b = kb
    if kd != d:
        raise ValueError(f"q and k_cache must have the same head dim, got {d} and {kd}")
    if d == 0 or hq == 0 or hkv == 0:
        raise ValueError(f"q and k_cache need at least one head of non-zero head dim, got q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    if hq % hkv != 0:
        raise ValueError(f"the number of query heads ({hq}) must be a multiple of the number of key/value heads ({hkv})")
    _same_device("k_cache", k_cache, "q", q)
    _same_device("v_cache", v_cache, "q", q)
    _int32_vector("seq_lens", seq_lens, b)
    _same_device("seq_lens", seq_lens, "q", q)
    if seq_lens.device.type == "cpu" and b > 0:
        lo, hi = int(seq_lens.min()), int(seq_lens.max())
        if lo < t or hi > max_len:
            raise ValueError(f"seq_lens must lie in [{t}, max_len={max_len}]"
                             f"{' (queries_per_seq)' if t > 1 else ''}, got values in [{lo}, {hi}]")
    return check_sm_scale(sm_scale, d)


def check_prefix_args(q, hkv: int, prefix_k, prefix_v, prefix_len) -> int:
    """Validate the optional shared prefix of the attention functions; returns how many
    of its keys are given (``P``, its capacity; ``prefix_len`` may use fewer).

    ``prefix_k``/``prefix_v`` are ``[Hkv, P, D]`` (given together, q's dtype and device);
    ``prefix_len`` is None (all ``P`` keys) or an int32 tensor of one element on q's device
    whose value lies in ``[0, P]`` (checked on the CPU only, as in
    :func:`check_prefill_args`).
    """
    if prefix_k is None and prefix_v is None:
        if prefix_len is not None:
            raise ValueError("prefix_len needs prefix_k and prefix_v")
        return 0
    if prefix_k is None or prefix_v is None:
        raise ValueError("prefix_k and prefix_v must be given together")
    _tensor("prefix_k", prefix_k, 3)
    _tensor("prefix_v", prefix_v, 3)
    if prefix_k.dtype != q.dtype or prefix_v.dtype != q.dtype:
        raise TypeError(f"prefix_k and prefix_v must have q's dtype {q.dtype}, got {prefix_k.dtype}, {prefix_v.dtype}")
    if prefix_k.shape[0] != hkv or prefix_k.shape[2] != q.shape[-1]:
        raise ValueError(f"prefix_k must be [Hkv={hkv}, P, D={q.shape[-1]}], got {tuple(prefix_k.shape)}")
    if prefix_k.shape != prefix_v.shape:
        raise ValueError(f"prefix_k and prefix_v must have the same shape, got {tuple(prefix_k.shape)} "
                         f"and {tuple(prefix_v.shape)}")
    _same_device("prefix_k", prefix_k, "q", q)
    _same_device("prefix_v", prefix_v, "q", q)
    cap = prefix_k.shape[1]
    if prefix_len is not None:
        _int32_vector("prefix_len", prefix_len, 1)
        _same_device("prefix_len", prefix_len, "q", q)
        if prefix_len.device.type == "cpu" and not 0 <= int(prefix_len[0]) <= cap:
            raise ValueError(f"prefix_len must lie in [0, {cap}] (prefix_k.shape[1]), got {int(prefix_len[0])}")
    return cap


def check_row0_prefix(q, prefix_k, row0_prefix_len) -> None:
    """Validate ``decode_attention``'s ``row0_prefix_len`` (an int32 tensor of one element
    on q's device, >= 0, checked on the CPU only; not together with a shared prefix)."""
    if row0_prefix_len is None:
        return
    if prefix_k is not None:
        raise ValueError("row0_prefix_len: not with prefix_k/prefix_v (the prefix is in the caches' row 0 or "
                         "in the shared buffers, not both)")
    _int32_vector("row0_prefix_len", row0_prefix_len, 1)
    _same_device("row0_prefix_len", row0_prefix_len, "q", q)
    if row0_prefix_len.device.type == "cpu" and int(row0_prefix_len[0]) < 0:
        raise ValueError(f"row0_prefix_len must be >= 0, got {int(row0_prefix_len[0])}")


def _prefix_keys(prefix_k, prefix_v, prefix_len, rows: int):
    """The shared prefix as float32 ``[rows, Hkv, P, D]`` keys and values (zeros past
    ``prefix_len``) and its key mask ``[P]``, or Nones without a prefix."""
    if prefix_k is None:
        return None, None, None
    cap = prefix_k.shape[1]
    n = cap if prefix_len is None else int(prefix_len[0])
    live = torch.arange(cap, device=prefix_k.device) < n
    pk = torch.where(live[None, :, None], prefix_k.float(), 0.0)
    pv = torch.where(live[None, :, None], prefix_v.float(), 0.0)
    return pk[None].expand(rows, -1, -1, -1), pv[None].expand(rows, -1, -1, -1), live


def check_linear_args(x, w, bias, swiglu, residual=None, norm_weight=None, row_sumsq=None,
                      sumsq_out=False) -> tuple[int, int, int]:
    """Validates :func:`linear`'s arguments; returns ``(rows, reduction length, output
    columns)``."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got shape {tuple(x.shape)}")
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"w must be [N, K] with K = {x.shape[1]} (x's columns), got shape {tuple(w.shape)}")
    if w.dtype != x.dtype or w.device != x.device:
        raise ValueError(f"w must match x's dtype and device ({x.dtype}, {x.device}), got {w.dtype}, {w.device}")
    n = w.shape[0]
    if swiglu:
        if n % 2:
            raise ValueError(f"swiglu=True needs w with an even number of rows (gate, then up), got {n}")
        if bias is not None:
            raise ValueError("swiglu=True takes no bias")
        n //= 2
    if bias is not None and (bias.shape != (w.shape[0],) or bias.dtype != x.dtype or bias.device != x.device
                             or bias.stride(0) != 1):
        raise ValueError(f"bias must be a contiguous {x.dtype} tensor of shape ({w.shape[0]},) on {x.device}")
    m, k = x.shape
    if residual is not None:
        if swiglu:
            raise ValueError("residual: swiglu=True takes none")
        if residual.shape != (m, n) or residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(f"residual must be a {x.dtype} tensor of shape {(m, n)} on {x.device}, "
                             f"got {residual.dtype} {tuple(residual.shape)} on {residual.device}")
    if sumsq_out and residual is None:
        raise ValueError("sumsq_out=True needs a residual (the sums of squares are the residual stream's)")
    if norm_weight is not None and (norm_weight.shape != (k,) or norm_weight.dtype != x.dtype
                                    or norm_weight.device != x.device or norm_weight.stride(0) != 1):
        raise ValueError(f"norm_weight must be a contiguous {x.dtype} tensor of shape ({k},) on {x.device}")
    if row_sumsq is not None:
        if norm_weight is None:
            raise ValueError("row_sumsq: only with norm_weight")
        if (row_sumsq.dim() != 2 or row_sumsq.shape[1] != m or row_sumsq.dtype != torch.float32
                or row_sumsq.device != x.device or not row_sumsq.is_contiguous()):
            raise ValueError(f"row_sumsq must be a contiguous float32 [parts, {m}] tensor on {x.device}")
    return m, k, n


def check_bitmask_args(logits, bitmask) -> None:
    """Validate a ``logits [B, V]`` / ``bitmask int32 [B, W]`` pair (``W >= ceil(V/32)``).

    Words past ``ceil(V/32)`` and bits past ``V`` in the last needed word are ignored.
    """
    _tensor("logits", logits, 2)
    _tensor("bitmask", bitmask, 2)
    _float_dtype("logits", logits)
    if bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be int32, got {bitmask.dtype}")
    rows, vocab = logits.shape
    if bitmask.shape[0] != rows:
        raise ValueError(f"bitmask has {bitmask.shape[0]} rows but logits has {rows}")
    need = (vocab + 31) // 32
    if bitmask.shape[1] < need:
        raise ValueError(
            f"bitmask needs at least ceil(V/32) = {need} int32 words per row for V = {vocab}, "
            f"got {bitmask.shape[1]}")
    _same_device("bitmask", bitmask, "logits", logits)


def check_sampling_args(temperature, top_p) -> tuple[float, float]:
    for name, x in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name} must be a float, got {type(x).__name__}")
    temperature, top_p = float(temperature), float(top_p)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not (0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    return temperature, top_p


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------

def prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None, *, prefix_k=None,
                      prefix_v=None, prefix_len=None):
    """Causal variable-length attention of new tokens on top of each sequence's cache.

    Args:
        q: ``[total_q, Hq, D]`` queries of all sequences, concatenated.
        k, v: ``[total_k, Hkv, D]`` keys/values of all sequences, concatenated; sequence
            ``i`` holds its cached prefix first, then its own new tokens.
        cu_seqlens_q, cu_seqlens_k: int32 ``[B+1]`` offsets of each sequence in q / k.
        sm_scale: softmax scale, default ``1/sqrt(D)``.
        prefix_k, prefix_v: optional ``[Hkv, P, D]``, a prefix shared by every sequence
            and stored once (cascade attention): every query also attends to its first
            ``prefix_len`` keys, which come before the sequence's own keys.
        prefix_len: optional int32 ``[1]`` tensor, default ``P``.

    Query ``t`` of sequence ``i`` (0-based among its ``len_q(i)`` queries) sits at key
    position ``len_k(i) - len_q(i) + t`` of its own keys and attends to own keys ``0..``
    that position (and to the whole shared prefix, if given).

    Returns:
        ``[total_q, Hq, D]`` in q's dtype.

    Sequences are padded to the longest one and run through one SDPA call with an explicit
    mask (float32), so the cost is ``B * max_q * max_k``.
    """
    scale = check_prefill_args(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale)
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    check_prefix_args(q, hkv, prefix_k, prefix_v, prefix_len)
    nseq = cu_seqlens_q.numel() - 1
    if total_q == 0 or nseq == 0:
        return q.new_empty(q.shape)
    dev = q.device
    cu_q = cu_seqlens_q.to(device=dev, dtype=torch.long)
    cu_k = cu_seqlens_k.to(device=dev, dtype=torch.long)
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    max_q, max_k = int(len_q.max()), int(len_k.max())

    t = torch.arange(max_q, device=dev)
    j = torch.arange(max_k, device=dev)
    q_valid = t[None, :] < len_q[:, None]                               # [B, max_q]
    k_valid = j[None, :] < len_k[:, None]                               # [B, max_k]
    q_idx = torch.where(q_valid, cu_q[:-1, None] + t[None, :], 0)
    k_idx = torch.where(k_valid, cu_k[:-1, None] + j[None, :], 0)

    qp = q[q_idx.reshape(-1)].view(nseq, max_q, hq, d).transpose(1, 2).float()
    kp = k[k_idx.reshape(-1)].view(nseq, max_k, hkv, d).transpose(1, 2).float()
    vp = v[k_idx.reshape(-1)].view(nseq, max_k, hkv, d).transpose(1, 2).float()

    qpos = (len_k - len_q)[:, None] + t[None, :]                         # [B, max_q]
    mask = k_valid[:, None, :] & (j[None, None, :] <= qpos[:, :, None])  # [B, max_q, max_k]
    pk, pv, live = _prefix_keys(prefix_k, prefix_v, prefix_len, nseq)
    if pk is not None:                                                  # shared keys first
        kp, vp = torch.cat([pk, kp], 2), torch.cat([pv, vp], 2)
        mask = torch.cat([live[None, None, :].expand(nseq, max_q, -1), mask], 2)
    out = F.scaled_dot_product_attention(
        qp, kp, vp, attn_mask=mask[:, None], scale=scale, enable_gqa=hq != hkv)
    out = out.transpose(1, 2).reshape(nseq * max_q, hq, d)[q_valid.reshape(-1)]
    return out.to(q.dtype)


def decode_attention(q, k_cache, v_cache, seq_lens, sm_scale=None, *, prefix_k=None, prefix_v=None,
                     prefix_len=None, queries_per_seq=1, row0_prefix_len=None):
    """New tokens of each sequence attending to its KV cache: one per sequence, or the
    same number ``T = queries_per_seq`` of each (a multi-token step: jump-forward,
    speculation).

    Args:
        q: ``[B * T, Hq, D]``, the new tokens' queries, sequence by sequence (row
            ``b * T + t`` is new token ``t`` of sequence ``b``).
        k_cache, v_cache: ``[B, Hkv, max_len, D]``; positions ``< seq_lens[b]`` are valid
            (the new tokens' own keys/values already written at ``seq_lens[b] - T ..
            seq_lens[b] - 1``).
        seq_lens: int32 ``[B]``, each in ``[T, max_len]``.
        sm_scale: softmax scale, default ``1/sqrt(D)``.
        prefix_k, prefix_v, prefix_len: optional shared prefix stored once, as in
            :func:`prefill_attention`: every sequence attends to its first ``prefix_len``
            keys, then to its own cached keys.
        queries_per_seq: ``T``; new token ``t`` sits at position ``seq_lens[b] - T + t``
            and attends to the sequence's keys up to that position (causal), as
            :func:`prefill_attention` would with the cache as its keys.
        row0_prefix_len: optional int32 tensor of one element on q's device, ``L``: every
            sequence reads its keys and values at positions ``< L`` from row 0 of the
            caches (a prefix every row holds a copy of: the batch reads one copy, which the
            GPU then serves from its L2). Not with ``prefix_k``.

    Returns:
        ``[B * T, Hq, D]`` in q's dtype.
    """
    scale = check_decode_args(q, k_cache, v_cache, seq_lens, sm_scale, queries_per_seq)
    rows, hq, d = q.shape
    b, hkv = k_cache.shape[0], k_cache.shape[1]
    t = int(queries_per_seq)
    check_prefix_args(q, hkv, prefix_k, prefix_v, prefix_len)
    check_row0_prefix(q, prefix_k, row0_prefix_len)
    if rows == 0:
        return q.new_empty(q.shape)
    lens = seq_lens.to(device=q.device, dtype=torch.long)
    n = int(lens.max())                        # never read past the longest sequence
    j = torch.arange(n, device=q.device)
    valid = j[None, :] < lens[:, None]                                  # [B, n]
    # zero the unused slots: a preallocated cache may hold NaN there, and 0 * NaN is NaN
    live = valid[:, None, :, None]
    kc = torch.where(live, k_cache[:, :, :n].float(), 0.0)
    vc = torch.where(live, v_cache[:, :, :n].float(), 0.0)
    if row0_prefix_len is not None:
        p = max(0, min(int(row0_prefix_len[0]), n))          # (the kernel reads a negative one as 0)
        kc[:, :, :p] = torch.where(live[:, :, :p], k_cache[:1, :, :p].float(), 0.0)
        vc[:, :, :p] = torch.where(live[:, :, :p], v_cache[:1, :, :p].float(), 0.0)
    # new token i of sequence b sees keys < seq_lens[b] - (T - 1 - i)
    ends = lens[:, None] - (t - 1 - torch.arange(t, device=q.device))[None, :]      # [B, T]
    mask = j[None, None, :] < ends[:, :, None]                          # [B, T, n]
    pk, pv, shared = _prefix_keys(prefix_k, prefix_v, prefix_len, b)
    if pk is not None:                                                  # shared keys first
        kc, vc = torch.cat([pk, kc], 2), torch.cat([pv, vc], 2)
        mask = torch.cat([shared[None, None, :].expand(b, t, -1), mask], 2)
    qs = q.view(b, t, hq, d).transpose(1, 2).float()                    # [B, Hq, T, D]
    out = F.scaled_dot_product_attention(qs, kc, vc, attn_mask=mask[:, None], scale=scale,
                                         enable_gqa=hq != hkv)
    return out.transpose(1, 2).reshape(rows, hq, d).to(q.dtype)


# --------------------------------------------------------------------------------------
# bitmask
# --------------------------------------------------------------------------------------

_BYTE_BITS: dict[torch.device, torch.Tensor] = {}


def _byte_table(device: torch.device) -> torch.Tensor:
    """``[256, 8]`` bool: row ``x`` holds the bits of byte ``x``, least significant first."""
    table = _BYTE_BITS.get(device)
    if table is None:
        x = torch.arange(256, dtype=torch.int32)
        table = ((x[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).bool().to(device)
        _BYTE_BITS[device] = table
    return table


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpack an int32 ``[B, W]`` bitmask to a bool ``[B, vocab_size]`` (True = allowed).

    Bit ``j`` of word ``w`` is token ``32*w + j``.
    """
    rows = bitmask.shape[0]
    words = (vocab_size + 31) // 32
    bm = bitmask[:, :words].contiguous()
    if sys.byteorder == "little":
        # byte k of word w holds tokens 32w+8k .. 32w+8k+7: a table lookup per byte
        allowed = _byte_table(bm.device)[bm.view(torch.uint8).long()]
    else:  # pragma: no cover - no big-endian CI
        allowed = ((bm[:, :, None] >> torch.arange(32, device=bm.device, dtype=torch.int32)) & 1).bool()
    return allowed.reshape(rows, words * 32)[:, :vocab_size]


def apply_bitmask_(logits, bitmask):
    """Set disallowed logits to ``-inf`` in place.

    Args:
        logits: ``[B, V]`` float16/bfloat16/float32.
        bitmask: int32 ``[B, W]``, ``W >= ceil(V/32)``; bit set = allowed.

    Returns:
        ``logits`` (the same tensor).
    """
    check_bitmask_args(logits, bitmask)
    allowed = bitmask_to_bool(bitmask, logits.shape[1])
    return logits.masked_fill_(~allowed, float("-inf"))


def _masked_pick(keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """argmax of ``keys`` over allowed entries (disallowed must already be -inf).

    Ties go to the lowest index.  A row whose allowed keys are all ``-inf`` gets its
    lowest allowed token; a row with no allowed token gets ``NO_TOKEN`` (-1).
    """
    best = keys.argmax(dim=1)
    best_val = keys.gather(1, best[:, None])[:, 0]
    any_allowed = allowed.any(dim=1)
    first_allowed = allowed.to(torch.uint8).argmax(dim=1)
    out = torch.where(best_val > float("-inf"), best, first_allowed)
    return torch.where(any_allowed, out, torch.full_like(out, NO_TOKEN))


def masked_argmax(logits, bitmask):
    """Greedy pick among allowed tokens (logits are not modified).

    Returns:
        int64 ``[B]``: the allowed token with the largest logit, the lowest index on
        ties; the lowest allowed token if all allowed logits are ``-inf``; ``-1`` for a
        row that allows no token.
    """
    check_bitmask_args(logits, bitmask)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    allowed = bitmask_to_bool(bitmask, logits.shape[1])
    keys = logits.float().masked_fill(~allowed, float("-inf"))
    return _masked_pick(keys, allowed)


def top_p_keep(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: bool ``[B, V]``, True for the smallest set of highest-probability
    tokens whose probability sums to at least ``top_p`` (``scaled`` are logits/temperature,
    disallowed ones ``-inf``)."""
    probs = torch.softmax(scaled, dim=1)
    sorted_p, order = probs.sort(dim=1, descending=True)
    before = sorted_p.cumsum(dim=1) - sorted_p          # mass of strictly better tokens
    keep_sorted = before < top_p
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None):
    """Sample one allowed token per row from ``softmax(logits / temperature)``.

    Args:
        logits: ``[B, V]`` float16/bfloat16/float32 (not modified).
        bitmask: int32 ``[B, W]``, ``W >= ceil(V/32)``.
        temperature: ``>= 0``; ``0`` means greedy (exactly ``masked_argmax``).
        top_p: in ``(0, 1]``; sampling is restricted to the nucleus, the smallest set of
            most likely allowed tokens holding at least ``top_p`` of the allowed mass.
        generator: optional ``torch.Generator`` on logits' device.

    Returns:
        int64 ``[B]``; rows with no allowed token give ``-1``, rows whose allowed logits
        are all ``-inf`` give their lowest allowed token (as ``masked_argmax``).

    Uses the exponential-race form of sampling: ``argmax(p / E)`` with ``E ~ Exp(1)``
    picks token ``i`` with probability ``p_i``, without a host synchronization.
    """
    check_bitmask_args(logits, bitmask)
    temperature, top_p = check_sampling_args(temperature, top_p)
    if temperature == 0.0:
        return masked_argmax(logits, bitmask)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    allowed = bitmask_to_bool(bitmask, logits.shape[1])
    scaled = logits.float().masked_fill(~allowed, float("-inf")) / temperature
    live = scaled.amax(dim=1, keepdim=True) > float("-inf")
    safe = torch.where(live, scaled, 0.0)          # rows without a finite logit: no NaN
    if top_p < 1.0:
        safe = safe.masked_fill(~top_p_keep(safe, top_p), float("-inf"))
    probs = torch.softmax(safe, dim=1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    keys = torch.where(allowed & live, probs / race, float("-inf"))
    keys = torch.where(keys > 0, keys, float("-inf"))  # zero-probability tokens never win
    return _masked_pick(keys, allowed)


# --------------------------------------------------------------------------------------
# fused decoder-layer pieces (the engine's per-token elementwise work)
# --------------------------------------------------------------------------------------

def _rms_rows(x: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Hugging Face's RMSNorm: normalize in float32, cast, scale by the weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w.to(dtype) * h.to(dtype)


def add_rms_norm(x, residual, weight, eps):
    """``h = x + residual`` (or ``x`` when residual is None), then ``RMSNorm(h) * weight``.

    x, residual ``[N, H]``; weight ``[H]``.  Returns ``(normed, h)``, both like x.
    """
    h = x if residual is None else (x + residual).to(x.dtype)
    return _rms_rows(h, weight, eps, x.dtype), h


def qk_norm_rope_store(qkv, q_norm, k_norm, cos, sin, rope_pos, k_cache, v_cache, slot, write_pos,
                       num_q_heads, num_kv_heads, eps):
    """The attention input of ``N`` new tokens from their fused q/k/v projection.

    qkv ``[N, (Hq + 2 Hkv) D]``; q_norm / k_norm ``[D]`` or None (Qwen3's per-head norms);
    cos / sin rope tables ``[max_pos, D]``; rope_pos, slot, write_pos int64 ``[N]``;
    caches ``[slots, Hkv, capacity, D]``.  Per-head RMSNorm, rotary embedding (rotate-half
    form), then K and V are written to ``cache[slot, :, write_pos]``.  Returns q
    ``[N, Hq, D]`` (qkv's dtype).
    """
    n = qkv.shape[0]
    hq, hkv = num_q_heads, num_kv_heads
    d = qkv.shape[1] // (hq + 2 * hkv)
    dt = qkv.dtype
    q = qkv[:, : hq * d].view(n, hq, d)
    k = qkv[:, hq * d: (hq + hkv) * d].view(n, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(n, hkv, d)
    if q_norm is not None:
        q = _rms_rows(q, q_norm, eps, dt)
    if k_norm is not None:
        k = _rms_rows(k, k_norm, eps, dt)
    c, s = cos[rope_pos][:, None, :].to(dt), sin[rope_pos][:, None, :].to(dt)

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * c + torch.cat((-x2, x1), dim=-1) * s
    q, k = rot(q), rot(k)
    k_cache[slot, :, write_pos] = k.to(k_cache.dtype)
    v_cache[slot, :, write_pos] = v.to(v_cache.dtype)
    return q


def silu_mul(gate_up):
    """SwiGLU: ``silu(gate) * up`` of a fused ``[N, 2I]`` projection -> ``[N, I]``."""
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


def linear(x, w, bias=None, *, swiglu=False, residual=None, norm_weight=None, eps=1e-6, row_sumsq=None,
           sumsq_out=False):
    """A projection of the rows ``x [M, K]`` by ``w [N, K]`` (``F.linear``'s layout):
    ``x @ w.T + bias`` ``[M, N]``, accumulated in float32 and rounded to x's dtype.

    ``swiglu=True``: ``w`` is a fused gate/up weight ``[2I, K]`` (gate rows first) and the
    result is :func:`silu_mul` of the product, ``[M, I]``; no bias then.
    ``norm_weight [K]``: x's rows are RMS-normalized first (``add_rms_norm(x, None,
    norm_weight, eps)[0]``); ``row_sumsq`` may carry their sums of squares in parts from the
    call that wrote x (the kernel reads them; here they are recomputed).
    ``residual [M, N]``: returns ``residual + product`` rounded as :func:`add_rms_norm`'s
    residual add (the decoder's residual stream); ``sumsq_out=True`` then returns
    ``(out, row_sumsq)`` for the next call's norm (here None: recomputed there).
    """
    check_linear_args(x, w, bias, swiglu, residual, norm_weight, row_sumsq, sumsq_out)
    if norm_weight is not None:
        x = _rms_rows(x, norm_weight, eps, x.dtype)
    y = F.linear(x, w, bias)
    if swiglu:
        y = silu_mul(y)
    if residual is not None:
        y = (y + residual).to(x.dtype)
    return (y, None) if sumsq_out else y
