"""Static, preallocated KV cache (gpt-fast style) and the shared-prefix KV.

Layout per layer: `k[slot, kv_head, position, head_dim]` (the layout of
`qpfast.kernels.decode_attention`). Active sequences always occupy slots `0..n-1`: when one
finishes, the last active slot is moved into the hole (`move`), so every step works on a
contiguous view `k[:n]` without copying the cache.

Two attention layouts share this class:
- "cascade": slots hold only each sequence's own tokens; the shared prefix KV lives once in
  `PrefixKV` and every query attends to it in one batched matmul (no copy per sequence);
- "kernels": every slot starts with a copy of the prefix (written once when the prefix or
  the cache changes, never per batch), so the varlen/decode attention kernels see each
  sequence as one contiguous key range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PrefixKV:
    """KV of the shared prompt prefix: per layer `[kv_heads, P, head_dim]`."""

    ids: tuple[int, ...]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    extra: object = None       # runner-specific state (the HF cache of the generic runner)

    @property
    def length(self) -> int:
        return len(self.ids)


class KVCache:
    """Per-layer `[slots, kv_heads, capacity, head_dim]` key and value tensors."""

    def __init__(self, n_layers: int, slots: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.slots, self.capacity = slots, capacity
        shape = (slots, kv_heads, capacity, head_dim)
        # zeros, not empty: padded query rows may read stale slots; they must stay finite
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.prefix: Optional[PrefixKV] = None   # the prefix copied into every slot (kernels layout)

    def fits(self, slots: int, capacity: int, dtype: torch.dtype, device: torch.device) -> bool:
        t = self.k[0]
        return self.slots >= slots and self.capacity >= capacity and t.dtype == dtype and t.device == device

    def write_prefix(self, prefix: Optional[PrefixKV]) -> None:
        """Copies the prefix into positions [0, P) of every slot (kernels layout)."""
        if prefix is not None and prefix.length:
            p = prefix.length
            for kc, vc, pk, pv in zip(self.k, self.v, prefix.k, prefix.v):
                kc[:, :, :p] = pk.to(kc.dtype)[None]
                vc[:, :, :p] = pv.to(vc.dtype)[None]
        self.prefix = prefix

    def move(self, src: int, dst: int, start: int, end: int) -> None:
        """Copies positions [start, end) of slot `src` into slot `dst`."""
        if src == dst or end <= start:
            return
        for kc, vc in zip(self.k, self.v):
            kc[dst, :, start:end] = kc[src, :, start:end]
            vc[dst, :, start:end] = vc[src, :, start:end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
