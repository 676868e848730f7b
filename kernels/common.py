"""Pieces the Triton kernel modules share: block-size rounding, how to cut work into
splits, the GPU's multiprocessor count, and the online-softmax update of the attention
kernels."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _interpret as _interpreting
from .launch import programmatic_launch_on

try:                                        # Triton >= 3.3 (older: no PDL, launches as before)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_PDL = True
except ImportError:                         # pragma: no cover - depends on the installed triton
    gdc_launch_dependents = gdc_wait = None
    HAS_PDL = False


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (b > 0)."""
    return -(-a // b)


def round_up(a: int, m: int) -> int:
    """The smallest multiple of ``m`` that is >= ``a``."""
    return cdiv(a, m) * m


def cut(n: int, parts: int, block: int) -> tuple[int, int]:
    """Cut ``n`` items into about ``parts`` runs of a multiple of ``block`` items: returns
    ``(run length, number of runs)``; rounding the length up may leave fewer runs."""
    length = round_up(cdiv(max(1, n), max(1, parts)), block)
    return length, max(1, cdiv(n, length))


def fill_count(programs: int, num_sms: int, most: int) -> int:
    """How many pieces to cut each of ``programs`` programs' work into for about two
    programs per multiprocessor: at least 1, at most ``most``."""
    return max(1, min(cdiv(2 * num_sms, max(1, programs)), most))


def device_index(device: torch.device) -> int:
    """The device's index (a bare ``cuda`` is the current CUDA device; 0 off CUDA)."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" else 0


def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 elsewhere (the interpreter runs programs one at a
    time: splitting work buys nothing there)."""
    if device.type == "cuda":
        return _cuda_sms(device_index(device))
    return 1


# Counters of the kernels whose last program reduces its peers' partials (the decode
# kernel's fused merge, the split projections): int32, zero between calls (each kernel's
# last program resets its own), kept per (use, device) and made outside any CUDA-graph
# capture so captured graphs can use them. Two calls of one use that overlap on two
# streams of a device must not share them; qpfast's engine runs one stream.
_counters: dict[tuple[str, str, int], torch.Tensor] = {}


def zeroed_counters(use: str, device: torch.device, rows: int, slots: int = 1 << 14) -> torch.Tensor | None:
    """``use``'s zeroed counters (``slots`` of them) for ``rows`` rows on ``device``, or
    None where there are none to use (more rows than slots, or a first use inside a graph
    capture)."""
    if rows > slots:
        return None
    key = (use, device.type, device_index(device))
    buf = _counters.get(key)
    if buf is None or buf.numel() < slots:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        buf = _counters[key] = torch.zeros(slots, dtype=torch.int32, device=device)
    return buf


def pdl_launch(device: torch.device) -> dict:
    """The launch options of a kernel that calls :func:`grid_dependency` on ``device``:
    ``{"USE_PDL": True, "launch_pdl": True}`` inside ``programmatic_launch(True)`` on a GPU
    of compute capability 9.0+ (not in the interpreter), else ``{"USE_PDL": False}``."""
    on = (HAS_PDL and programmatic_launch_on() and device.type == "cuda" and not _interpreting()
          and _cuda_capability(device_index(device)) >= 9)
    return dict(USE_PDL=True, launch_pdl=True) if on else dict(USE_PDL=False)


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


@triton.jit
def grid_dependency(USE_PDL: tl.constexpr):
    """A kernel's first step under programmatic dependent launch: wait until the kernel
    ahead of it in the stream has finished and its writes are visible, then let the next
    kernel launch (its programs become resident and wait in turn). No-op when off."""
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def prefetch_l2(BASE, nbytes):
    """Hopper's bulk prefetch of ``nbytes`` bytes (a multiple of 16; none if <= 0) from
    ``BASE`` (16-byte aligned) into the L2, in up to 256 pieces of at least 4 KiB issued by
    different threads of the program (ptxas issues the instruction a lane at a time, so few
    pieces for small ranges). A hint: it never changes a result, so a kernel may issue it
    before ``griddepcontrol.wait``, with sizes from loads the kernel ahead may still change
    (clamped to the buffer). A piece's size field holds < 1 MiB, so at most 256 MiB a call.
    sm_90+ only (PTX ``cp.async.bulk.prefetch.L2``)."""
    i = tl.arange(0, 256)
    chunk = tl.maximum((tl.maximum(nbytes, 0) + 256 * 16 - 1) // (256 * 16) * 16, 4096)
    lo = i * chunk
    bulk_prefetch(BASE.to(tl.pointer_type(tl.int8)) + lo.to(tl.int64), tl.maximum(tl.minimum(chunk, nbytes - lo), 0))


@triton.jit
def bulk_prefetch(addrs, sizes):
    """One ``cp.async.bulk.prefetch.L2`` of ``sizes[i]`` bytes (a multiple of 16; none when
    0) at ``addrs[i]`` (16-byte aligned) for every element; sm_90+."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [addrs, sizes], dtype=tl.int32, is_pure=False, pack=1)


def bulk_aligned(*tensors) -> bool:
    """Whether :func:`prefetch_l2` may take ranges of whole rows of these tensors: each
    16-byte aligned, with 16-byte multiples for every stride but the last (unit) one."""
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
            return False
    return True


def keys_prefetchable(*caches) -> bool:
    """Whether the decode kernel may prefetch ranges of keys of these caches (``[..., keys,
    D]``) as one byte range each: :func:`bulk_aligned`, and each head's keys contiguous (a
    strided view would stretch a range over other heads' keys, past the tensor's end)."""
    return bulk_aligned(*caches) and all(t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] for t in caches)


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """Folds one key block into a running softmax-weighted sum (base-2 scores `s`
    [rows, keys], -inf where masked; values `v` [keys, D]); returns the new (m, l, acc).
    A row whose keys so far are all masked keeps m = -inf, l = 0, acc = 0."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)   # a row with no visible key yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def attend_key_range(q, k_base, v_base, stride_kt, stride_vt, start, end, qk_scale, m_i, l_i, acc,
                     offs_n, offs_d, d_ok, row_end, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     CAUSAL: tl.constexpr):
    """Folds keys ``start .. end - 1`` (key ``j`` at ``k_base + j * stride_kt``, its value at
    ``v_base + j * stride_vt``) into the running softmax (m, l, acc) of the query rows ``q``
    (scores scaled by ``qk_scale``, base 2), ``BLOCK_N`` keys a step, keys past ``end``
    masked; with ``CAUSAL`` row ``r`` also sees only keys ``< row_end[r]`` (unused
    otherwise).  Returns the new (m, l, acc)."""
    for n in range(start, end, BLOCK_N):
        keys = n + offs_n
        key_ok = keys < end
        k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if CAUSAL:
            s = tl.where(key_ok[None, :] & (keys[None, :] < row_end[:, None]), s, float("-inf"))
        else:
            s = tl.where(key_ok[None, :], s, float("-inf"))
        v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def merge_partials(merged, m_all, w_sum, PART_O, PART_LSE, slots, first, last, offs_d, h_ok, d_ok,
                    BLOCK_D: tl.constexpr):
    """Folds partial slots ``first .. last - 1`` of each row (base slot ``slots``) into a
    running merge: ``merged`` = sum of weight x partial output, ``w_sum`` = sum of weights,
    weights relative to ``2 ** m_all``, for the rows of the vector ``slots`` (``h_ok``
    masks rows that do not exist).  A slot whose log-sum-exp is -inf (it saw no key) adds
    weight 0 once ``m_all`` is finite: fold a slot that saw a key first."""
    for j in range(first, last):
        lse = tl.load(PART_LSE + slots + j, mask=h_ok, other=0.0, cache_modifier=".cg")
        part = tl.load(PART_O + (slots + j)[:, None] * BLOCK_D + offs_d[None, :],
                       mask=h_ok[:, None] & d_ok[None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_all, lse)
        alpha = tl.exp2(m_all - m_new)
        w = tl.exp2(lse - m_new)
        w_sum = w_sum * alpha + w
        merged = merged * alpha[:, None] + part * w[:, None]
        m_all = m_new
    return merged, m_all, w_sum
