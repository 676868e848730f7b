"""Greedy picks over a large allowed set on CPU: a bf16 screen, then an exact fp32 recheck.

A dense row (more allowed tokens than sparse logits take: free text such as the intent)
needs the argmax of its fp32 logits over the allowed ids, one `[rows, H] x [H, V]` product
that streams the whole fp32 lm_head (V x H x 4 bytes: 155 MB for Qwen's vocabulary at
H = 256) and dominates a CPU step. `LogitScreen` computes that product from bf16 copies
(half the bytes; native bf16 dot products on CPUs that have them), then recomputes in fp32
only the allowed ids whose screened logit is within twice a rigorous error bound of the
best allowed one. Those candidates contain the exact argmax:

    |screened_j - exact_j| <= e = ||x||_2 * R * c    for every id j,

with R the largest row norm of the lm_head and c covering the bf16 rounding of x and of
w (2u + u^2, u = 2^-8), the bf16 rounding of the product (u (1 + u)^2), the fp32
accumulation of both products (H 2^-24 each) and the bias addition. If M is the best
allowed screened logit (reached at id k), the exact argmax j* has
screened_j* >= exact_j* - e >= exact_k - e >= screened_k - 2e = M - 2e.

The recheck is a gathered fp32 product (like sparse logits), so it equals the full
product's logits up to the rounding of a different summation order; equal maxima go to the
lowest id, as `qpfast.kernels.masked_argmax`. `argmax` returns None (the caller then
computes the full fp32 logits) when the bound cannot help: non-finite states or weights,
states so small that their products come near bf16's denormals (`TINY`), or more candidates than
`MAX_CANDIDATES` a row on average (near-constant logits).
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import kernels
from .sampler import allowed_at

#: candidates a row may average before the screen gives up (the recheck gathers their rows)
MAX_CANDIDATES = 64
#: the screen declines rows whose ||x|| * max ||w|| is below this (states after a norm layer
#: are O(1); products this small would sit near bf16's denormal range)
TINY = 1e-20


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_dot() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512-BF16 or AMX-BF16: the bf16
    product then runs 3-4x faster than the fp32 one); Linux only, else False."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class LogitScreen:
    """The bf16 screen of one fp32 lm_head (`weight` [V, H], optional `bias` [V]) on CPU.

    The bf16 copy is rebuilt when the weight is modified in place (its version counter
    moves, e.g. an optimizer step), so the bound always holds for the current weights.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"weight: expected a float32 [V, H] CPU tensor, got {weight.dtype} "
                             f"{tuple(weight.shape)} on {weight.device}")
        if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != torch.float32):
            raise ValueError(f"bias: expected float32 [{weight.shape[0]}], got {bias.dtype} {tuple(bias.shape)}")
        self.weight, self.bias = weight, bias
        h = weight.shape[1]
        u = 2.0 ** -8                                # bf16 unit roundoff
        g = h * 2.0 ** -24 / (1 - h * 2.0 ** -24)    # fp32 accumulation of h products
        self.coef = 1.05 * ((2 * u + u * u) + u * (1 + u) ** 2 * (1 + g) + g * (1 + u) ** 2 + g)
        self._version = -1
        self._refresh()

    def _refresh(self) -> None:
        v = (self.weight._version, None if self.bias is None else self.bias._version)
        if v == self._version:
            return
        with torch.no_grad():
            self.weight_bf16 = self.weight.to(torch.bfloat16)
            self.radius = float(self.weight.double().norm(dim=1).max()) if self.weight.numel() else 0.0
            self.bias_max = float(self.bias.abs().max()) if self.bias is not None and self.bias.numel() else 0.0
        self._version = v

    @torch.no_grad()
    def argmax(self, states: torch.Tensor, bitmask: np.ndarray) -> Optional[np.ndarray]:
        """Each row's argmax of `states @ weight.T + bias` over the ids its bitmask row
        allows (int32 `[n, ceil(V/32)]`, bit set = allowed), -1 where it allows none; int64
        `[n]`. None when the screen cannot decide (see the module docstring)."""
        self._refresh()
        n, vocab = states.shape[0], self.weight.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.int64)
        x = states.float()
        norms = x.double().norm(dim=1)            # fp32 squares of tiny states would underflow
        if not (bool(torch.isfinite(norms).all()) and np.isfinite(self.radius) and np.isfinite(self.bias_max)):
            return None
        if float(norms.min()) * self.radius < TINY:
            return None                           # products near bf16's denormals, which the CPU may flush
        approx = F.linear(x.to(torch.bfloat16), self.weight_bf16).float()
        if self.bias is not None:
            approx += self.bias
        err = (norms * self.radius * self.coef + 2.0 ** -22 * (norms * self.radius + self.bias_max)
               + x.shape[1] * 2.0 ** -125 * (self.radius + norms + 1.0))     # flushed denormal products
        best = approx.argmax(dim=1).numpy()
        rows = np.arange(n)
        ok = allowed_at(bitmask, rows, best)
        bad = np.flatnonzero(~ok)
        if bad.size:                              # the unmasked best is not allowed: mask those rows
            allowed = kernels.reference.bitmask_to_bool(torch.from_numpy(np.ascontiguousarray(bitmask[bad])), vocab)
            sub = approx[torch.from_numpy(bad)].masked_fill(~allowed, float("-inf"))
            best[bad] = sub.argmax(dim=1).numpy()
        top = approx[torch.from_numpy(rows), torch.from_numpy(best)]
        cand = approx >= (top - 2 * err)[:, None]
        if bad.size:                              # their candidates: allowed ones only (none if none is)
            cand[torch.from_numpy(bad)] &= allowed
        cand_r, cand_i = torch.nonzero(cand, as_tuple=True)
        if cand_r.numel() > MAX_CANDIDATES * n:
            return None
        cr, ci = cand_r.numpy(), cand_i.numpy()
        keep = allowed_at(bitmask, cr, ci)
        cr, ci = cr[keep], ci[keep]
        exact = (self.weight[torch.from_numpy(ci)] * x[torch.from_numpy(cr)]).sum(dim=1)
        if self.bias is not None:
            exact += self.bias[torch.from_numpy(ci)]
        exact = exact.numpy()
        if not np.isfinite(exact).all():
            return None
        out = np.full(n, -1, dtype=np.int64)
        order = np.lexsort((ci, -exact, cr))     # per row: the largest exact logit, then the lowest id
        first = np.unique(cr[order], return_index=True)[1]
        out[cr[order][first]] = ci[order][first]
        return out
