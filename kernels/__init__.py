"""qpfast.kernels: attention and constrained-decoding kernels (Triton), with torch references.

Public functions (DESIGN.md §3)::

    prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None) -> o
    decode_attention(q, k_cache, v_cache, seq_lens, sm_scale=None) -> o
        # both also take keyword-only prefix_k, prefix_v, prefix_len: a prefix shared by
        # the whole batch and stored once (cascade attention, :mod:`.cascade`); decode
        # also queries_per_seq=T: T new tokens of each sequence, causal (multi-token steps)
    apply_bitmask_(logits, bitmask) -> logits            # in place, disallowed -> -inf
    masked_argmax(logits, bitmask) -> LongTensor [B]     # -1 for a row with no allowed token
    masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None) -> LongTensor [B]

and the fused pieces of a decoder layer the engine's own forward uses (:mod:`.layers`)::

    add_rms_norm(x, residual, weight, eps) -> (normed, x + residual)
    qk_norm_rope_store(qkv, q_norm, k_norm, cos, sin, rope_pos, k_cache, v_cache, slot,
                       write_pos, num_q_heads, num_kv_heads, eps) -> q
    silu_mul(gate_up) -> silu(gate) * up
    linear(x, w, bias=None, swiglu=False) -> x @ w.T + bias    # or SwiGLU of a fused gate/up
        # also keyword-only norm_weight / row_sumsq and residual / sumsq_out: the layer's
        # RMSNorms and residual adds fused in

Shapes and semantics are documented in :mod:`qpfast.kernels.reference`, which holds the
plain-torch versions under the same names.

Dispatch, per call, on the first tensor argument:

* CUDA tensors run the Triton kernels (:mod:`.prefill`, :mod:`.decode`, :mod:`.bitmask`);
* with ``TRITON_INTERPRET=1`` in the environment, tensors on any device run the Triton
  kernels in Triton's interpreter (slow; for tests).  Triton decides between compiling and
  interpreting when it is imported, so set the variable before anything imports triton;
* otherwise (CPU, or no usable triton) the torch references run.

``with programmatic_launch(True):`` launches the kernels of a decode step with programmatic
dependent launch on Hopper and later GPUs (:mod:`.launch`; the engine's CUDA graphs,
``DecodeGraphs.pdl``).

Importing this package never imports triton; the kernel modules load on first use.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

from . import reference
from .launch import programmatic_launch
from .reference import NO_TOKEN

__all__ = [
    "prefill_attention", "decode_attention", "apply_bitmask_", "masked_argmax",
    "masked_sample", "reference", "HAS_TRITON", "NO_TOKEN", "backend",
    "add_rms_norm", "qk_norm_rope_store", "silu_mul", "linear", "programmatic_launch",
]



def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None
        return False


#: True when the ``triton`` package is installed (it may still fail to import).
HAS_TRITON = _triton_installed()

_modules: dict[str, object] = {}
_broken: list[str] = []


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def backend(tensor) -> str:
    """``"triton"``, ``"interpreter"`` or ``"reference"``: what a call on ``tensor`` runs."""
    if not HAS_TRITON or _broken:
        return "reference"
    if _interpret():
        return "interpreter"
    if getattr(tensor, "is_cuda", False):
        return "triton"
    return "reference"


def _kernel_module(name: str, tensor):
    """The Triton module ``name`` when ``tensor`` should run on Triton, else None."""
    if backend(tensor) == "reference":
        return None
    mod = _modules.get(name)
    if mod is None:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except Exception as exc:  # triton present but unusable: fall back, say so once
            _broken.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"qpfast.kernels: triton kernels unavailable ({_broken[0]}); "
                          "using the torch references", RuntimeWarning, stacklevel=3)
            return None
        _modules[name] = mod
    return mod


def prefill_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None, *, prefix_k=None,
                      prefix_v=None, prefix_len=None):
    """Causal varlen GQA attention on a cached prefix; see
    :func:`qpfast.kernels.reference.prefill_attention`.

    q ``[total_q, Hq, D]``; k, v ``[total_k, Hkv, D]``; int32 cu_seqlens ``[B+1]``;
    returns ``[total_q, Hq, D]``.  Optional shared prefix, stored once for the batch
    (cascade attention): ``prefix_k/prefix_v [Hkv, P, D]``, int32 ``prefix_len [1]``.
    """
    mod = _kernel_module("prefill", q)
    impl = mod.prefill_attention if mod is not None else reference.prefill_attention
    return impl(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale, prefix_k=prefix_k, prefix_v=prefix_v,
                prefix_len=prefix_len)


def decode_attention(q, k_cache, v_cache, seq_lens, sm_scale=None, *, prefix_k=None, prefix_v=None,
                     prefix_len=None, queries_per_seq=1, row0_prefix_len=None):
    """New-token attention against the KV cache; see
    :func:`qpfast.kernels.reference.decode_attention`.

    q ``[B, Hq, D]``; caches ``[B, Hkv, max_len, D]``; int32 seq_lens ``[B]``;
    returns ``[B, Hq, D]``.  Optional shared prefix as in :func:`prefill_attention`.
    ``queries_per_seq=T``: T new tokens per sequence, q ``[B * T, Hq, D]``, causal.
    ``row0_prefix_len``: keys below it come from row 0 of the caches for every row.
    """
    mod = _kernel_module("decode", q)
    impl = mod.decode_attention if mod is not None else reference.decode_attention
    return impl(q, k_cache, v_cache, seq_lens, sm_scale, prefix_k=prefix_k, prefix_v=prefix_v,
                prefix_len=prefix_len, queries_per_seq=queries_per_seq, row0_prefix_len=row0_prefix_len)


def apply_bitmask_(logits, bitmask):
    """Set disallowed logits ``[B, V]`` to -inf in place (int32 bitmask ``[B, ceil(V/32)]``,
    bit set = allowed); returns logits."""
    mod = _kernel_module("bitmask", logits)
    impl = mod.apply_bitmask_ if mod is not None else reference.apply_bitmask_
    return impl(logits, bitmask)


def masked_argmax(logits, bitmask):
    """Greedy allowed token per row, int64 ``[B]``; -1 where no token is allowed; see
    :func:`qpfast.kernels.reference.masked_argmax`."""
    mod = _kernel_module("bitmask", logits)
    impl = mod.masked_argmax if mod is not None else reference.masked_argmax
    return impl(logits, bitmask)


def masked_sample(logits, bitmask, temperature=1.0, top_p=1.0, generator=None):
    """Sample an allowed token per row from ``softmax(logits / temperature)`` restricted to
    the top-p nucleus, int64 ``[B]``; temperature 0 is greedy; -1 where no token is
    allowed; see :func:`qpfast.kernels.reference.masked_sample`."""
    mod = _kernel_module("bitmask", logits)
    impl = mod.masked_sample if mod is not None else reference.masked_sample
    return impl(logits, bitmask, temperature, top_p, generator)


def add_rms_norm(x, residual, weight, eps):
    """``h = x + residual`` (residual may be None) and ``RMSNorm(h) * weight``; returns
    ``(normed, h)``; see :func:`qpfast.kernels.reference.add_rms_norm`."""
    mod = _kernel_module("layers", x)
    impl = mod.add_rms_norm if mod is not None else reference.add_rms_norm
    return impl(x, residual, weight, eps)


def qk_norm_rope_store(qkv, q_norm, k_norm, cos, sin, rope_pos, k_cache, v_cache, slot, write_pos,
                       num_q_heads, num_kv_heads, eps):
    """Per-head q/k RMSNorm + rotary embedding of a fused qkv projection, K/V written to the
    cache; returns q; see :func:`qpfast.kernels.reference.qk_norm_rope_store`."""
    mod = _kernel_module("layers", qkv)
    impl = mod.qk_norm_rope_store if mod is not None else reference.qk_norm_rope_store
    return impl(qkv, q_norm, k_norm, cos, sin, rope_pos, k_cache, v_cache, slot, write_pos,
                num_q_heads, num_kv_heads, eps)


def silu_mul(gate_up):
    """``silu(gate) * up`` of a fused ``[N, 2I]`` projection; see
    :func:`qpfast.kernels.reference.silu_mul`."""
    mod = _kernel_module("layers", gate_up)
    impl = mod.silu_mul if mod is not None else reference.silu_mul
    return impl(gate_up)


def linear(x, w, bias=None, swiglu=False, *, residual=None, norm_weight=None, eps=1e-6, row_sumsq=None,
           sumsq_out=False):
    """``x [M, K] @ w [N, K].T + bias`` in float32, rounded to x's dtype; ``swiglu=True``
    gives ``silu(gate) * up`` of a fused ``[2I, K]`` gate/up weight instead; ``norm_weight``
    RMS-normalizes x's rows first and ``residual`` adds the product to it (a decoder
    layer's norms and residual adds, fused); see :func:`qpfast.kernels.reference.linear`.
    On CUDA a kernel made for decode steps (few rows: the reduction is split across
    multiprocessors, :mod:`.projection`)."""
    mod = _kernel_module("projection", x)
    impl = mod.linear if mod is not None else reference.linear
    return impl(x, w, bias, swiglu=swiglu, residual=residual, norm_weight=norm_weight, eps=eps,
                row_sumsq=row_sumsq, sumsq_out=sumsq_out)
