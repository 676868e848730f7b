"""Static, preallocated KV cache (gpt-fast style) and the shared-prefix KV.

Layout per layer: `k[slot, kv_head, position, head_dim]` (the layout of
`qpfast.kernels.decode_attention`). Active sequences always occupy slots `0..n-1`: when one
finishes, the last active slot is moved into the hole (`move`), so every step works on a
contiguous view `k[:n]` without copying the cache.

Two attention layouts share this class:
- "cascade": slots hold only each sequence's own tokens; the shared prefix KV lives once
  (`PrefixKV`, and a copy in the cache's static `shared_k`/`shared_v` buffers with its
  length on the device, `shared_len`, for the cascade kernels and the CUDA graphs that
  point into them) and every query attends to it in one batched product (no copy per
  sequence);
- "kernels": every slot starts with a copy of the prefix (written once when the prefix or
  the cache changes, never per batch), so the varlen/decode attention kernels see each
  sequence as one contiguous key range.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional

import torch

# Stamps for buffers that CUDA graphs point into (caches, shared prefix buffers, rope
# tables): unlike id(), a stamp is never reused by a later buffer at the same address.
_stamps = itertools.count(1)


def new_stamp() -> int:
    return next(_stamps)


def canonical_device(device: Any) -> torch.device:
    """`device` with its index filled in ("cuda" -> "cuda:<current device>"): the device of
    the tensors made on it. `torch.device("cuda") != torch.device("cuda:0")`, so a cache check
    against the bare name failed on every call and reallocated the cache (and dropped every
    CUDA graph) at each `generate`."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())
    return d


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
    """Per-layer `[slots, kv_heads, capacity, head_dim]` key and value tensors (`k[layer]`,
    `v[layer]`: views of one `[layers, slots, ...]` tensor each, so a slot moves in one
    copy for all layers)."""

    def __init__(self, n_layers: int, slots: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.slots, self.capacity = slots, capacity
        shape = (n_layers, slots, kv_heads, capacity, head_dim)
        # zeros, not empty: padded query rows may read stale slots; they must stay finite
        self._k = torch.zeros(shape, dtype=dtype, device=device)
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self.k = [self._k[i] for i in range(n_layers)]
        self.v = [self._v[i] for i in range(n_layers)]
        self.prefix: Optional[PrefixKV] = None   # the prefix copied into every slot / the shared buffers
        self.shared_k: list[torch.Tensor] = []   # cascade layout: per layer [kv_heads, shared_capacity, head_dim]
        self.shared_v: list[torch.Tensor] = []
        self.shared_len = torch.zeros(1, dtype=torch.int32, device=device)
        # kernels layout: the prefix length every slot holds a copy of, on the device (decode
        # steps read those keys from slot 0's copy: `decode_attention(row0_prefix_len=)`)
        self.row0_len = torch.zeros(1, dtype=torch.int32, device=device)
        self._n_layers, self._kv_heads, self._head_dim = n_layers, kv_heads, head_dim
        self.stamp = new_stamp()                 # changes whenever buffers are (re)allocated

    def fits(self, slots: int, capacity: int, dtype: torch.dtype, device: torch.device) -> bool:
        t = self.k[0]
        return (self.slots >= slots and self.capacity >= capacity and t.dtype == dtype
                and t.device == canonical_device(device))

    def write_prefix(self, prefix: Optional[PrefixKV]) -> None:
        """Copies the prefix into positions [0, P) of every slot (kernels layout) and sets
        `row0_len` to P."""
        p = prefix.length if prefix is not None else 0
        if p:
            for kc, vc, pk, pv in zip(self.k, self.v, prefix.k, prefix.v):
                kc[:, :, :p] = pk.to(kc.dtype)[None]
                vc[:, :, :p] = pv.to(vc.dtype)[None]
        self.row0_len.fill_(p)
        self.prefix = prefix

    @property
    def shared_capacity(self) -> int:
        return self.shared_k[0].shape[1] if self.shared_k else 0

    def write_shared(self, prefix: Optional[PrefixKV]) -> None:
        """Copies the prefix into the shared buffers (cascade layout) and sets `shared_len`;
        the buffers grow (new tensors) only when the prefix is longer than they are."""
        p = prefix.length if prefix is not None else 0
        if p > self.shared_capacity:
            t = self.k[0]
            shape = (self._kv_heads, p, self._head_dim)
            self.shared_k = [torch.zeros(shape, dtype=t.dtype, device=t.device) for _ in range(self._n_layers)]
            self.shared_v = [torch.zeros(shape, dtype=t.dtype, device=t.device) for _ in range(self._n_layers)]
            self.stamp = new_stamp()
        if p:
            for sk, sv, pk, pv in zip(self.shared_k, self.shared_v, prefix.k, prefix.v):
                sk[:, :p] = pk.to(sk.dtype)
                sv[:, :p] = pv.to(sv.dtype)
        self.shared_len.fill_(p)
        self.prefix = prefix

    def prefix_args(self, layer: int) -> dict:
        """The shared prefix of `layer` as the attention kernels' keyword arguments."""
        return dict(prefix_k=self.shared_k[layer], prefix_v=self.shared_v[layer], prefix_len=self.shared_len)

    def move(self, src: int, dst: int, start: int, end: int) -> None:
        """Copies positions [start, end) of slot `src` into slot `dst` (every layer)."""
        if src == dst or end <= start:
            return
        self._k[:, dst, :, start:end] = self._k[:, src, :, start:end]
        self._v[:, dst, :, start:end] = self._v[:, src, :, start:end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self._k, self._v] + self.shared_k + self.shared_v)
