"""CUDA graphs of the native runner's one-token decode step, one per batch bucket.

A decode step of a 0.6B model runs ~15 kernels per layer; at QP batch sizes each of them
takes a few microseconds, so launching them one by one from Python costs more than the
work. `DecodeGraphs` captures the whole step (embedding, every layer with the KV write and
`qpfast.kernels.decode_attention`, the final norm) once per batch bucket and replays it.

Everything the step reads lives in static buffers: one `[4, slots]` int64 tensor of token
ids, KV write positions, rotary positions and attended lengths, copied from a host buffer
in one transfer per step. In the "kernels" cache layout every slot starts with its copy of
the shared prefix (rotary position = write position, the prefix counted in the length); in
the "cascade" layout slots hold own tokens only and the step also attends to the cache's
shared prefix buffers, whose length lives on the device, so a new prefix of at most their
capacity is copied in without recapturing. A batch of `b` rows runs in the smallest bucket
`B >= b`; the `B - b` padding rows use the free slots `b..B-1` (active rows always occupy
slots `0..n-1`), write their K/V at the last cache position, which the runner keeps free
(`NativeRunner.reserve` adds one position when graphs are on), and attend to one key: no
real row's cache is touched and every value stays finite.

The graphs hold pointers into the runner's KV cache (shared prefix buffers included) and
rope table, so they are dropped whenever one of them is reallocated. With `capture=False`
the same bucketed step runs eagerly (no CUDA needed): the tests check it against the plain
forward on CPU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from .. import kernels

if TYPE_CHECKING:   # pragma: no cover
    from .model_runner import NativeRunner

#: batch sizes that get a graph (plus the cache's slot count, the largest batch)
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    """Replays the one-token decode step of a `NativeRunner` ("kernels" or "cascade"
    attention; captured graphs need the kernels, i.e. a CUDA device)."""

    def __init__(self, runner: "NativeRunner", capture: bool = True):
        if capture and runner.device.type != "cuda":
            raise ValueError(f"cuda_graphs: capture needs a CUDA device, got {runner.device}")
        self.runner = runner
        self.capture = capture
        self.captured = 0                     # graphs captured so far (stats)
        self._key: Optional[tuple] = None
        self._graphs: dict[int, tuple[Optional[torch.cuda.CUDAGraph], Optional[torch.Tensor]]] = {}
        self._idx: Optional[torch.Tensor] = None
        self._host: Optional[torch.Tensor] = None
        self._slots: Optional[torch.Tensor] = None

    def reset(self) -> None:
        """Drops every graph (the cache or rope table they point into is gone)."""
        self._graphs.clear()
        self._key = None

    def _prepare(self) -> None:
        r = self.runner
        cache = r.cache
        r._rope_table(cache.capacity + cache.shared_capacity)
        key = (cache.stamp, r.rope_stamp)
        if key == self._key:
            return
        self.reset()
        dev = r.device
        self._idx = torch.zeros((4, cache.slots), dtype=torch.long, device=dev)
        self._host = torch.zeros((4, cache.slots), dtype=torch.long, pin_memory=dev.type == "cuda")
        self._slots = torch.arange(cache.slots, dtype=torch.long, device=dev)
        self._key = key

    def bucket(self, b: int) -> int:
        slots = self.runner.cache.slots
        for size in BUCKETS:
            if b <= size <= slots:
                return size
        return slots

    def step(self, tokens: Sequence[int], starts: Sequence[int]) -> torch.Tensor:
        """Appends `tokens[i]` to the row in slot i (which holds `starts[i]` own tokens);
        returns the final hidden states `[b, hidden]` (a view of the graph's output, valid
        until the next step)."""
        r = self.runner
        b = len(tokens)
        if b == 0 or b > r.cache.slots:
            raise ValueError(f"decode step: {b} rows for a cache of {r.cache.slots} slots")
        self._prepare()
        B = self.bucket(b)
        plen = r.prefix_len
        last = r.cache.capacity - 1
        host = self._host.numpy()
        own = np.asarray(starts, dtype=np.int64)
        pos = own + plen if r.attention == "kernels" else own          # where the new K/V goes
        if int(pos.max()) >= last:
            raise ValueError(f"decode step: position {int(pos.max())} is past the cache ({r.cache.capacity})")
        host[0, :b] = tokens
        host[1, :b] = pos
        host[2, :b] = own + plen                                         # rotary position
        host[3, :b] = pos + 1                                            # keys in the slot
        host[0, b:B] = 0
        host[1:3, b:B] = last
        host[3, b:B] = 1
        self._idx[:, :B].copy_(self._host[:, :B], non_blocking=True)
        graph, out = self._graphs.get(B, (None, None))
        if out is None:
            graph, out = self._record(B)
            self._graphs[B] = (graph, out)
        if graph is None:                      # capture=False: run the same step eagerly
            out = self._core(B)
        else:
            graph.replay()
        return out[:b]

    def _record(self, B: int) -> tuple[Optional[torch.cuda.CUDAGraph], Optional[torch.Tensor]]:
        if not self.capture:
            return None, torch.empty(0)
        # Warm up on a side stream (compiles the Triton kernels, sets up cuBLAS); the run
        # writes the same K/V the replay writes, so running the step twice is harmless.
        stream = torch.cuda.Stream(self.runner.device)
        stream.wait_stream(torch.cuda.current_stream(self.runner.device))
        with torch.cuda.stream(stream):
            self._core(B)
        torch.cuda.current_stream(self.runner.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._core(B)
        self.captured += 1
        return graph, out

    def _core(self, B: int) -> torch.Tensor:
        r = self.runner
        cache = r.cache
        idx = self._idx[:, :B]
        seq_lens = idx[3].to(torch.int32)
        shared = r.attention == "cascade" and cache.shared_capacity > 0

        def attend(li: int, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
            return kernels.decode_attention(q.to(kc.dtype), kc[:B], vc[:B], seq_lens, r.scale,
                                            **(cache.prefix_args(li) if shared else {}))

        h = r.layers_forward(r.embed[idx[0]], idx[2], cache, self._slots[:B], idx[1], attend)
        return r.final_norm(h)
