"""CUDA graphs of the native runner's decode step, one per (batch bucket, tokens per row).

A decode step of a 0.6B model runs ~10 kernels per layer; at QP batch sizes each of them
takes a few microseconds, so launching them one by one from Python costs more than the
work. `DecodeGraphs` captures the whole step (embedding, every layer with the KV write and
`qpfast.kernels.decode_attention`, the final norm) once per shape and replays it.

A step appends up to `T` tokens to each row (`T` from `TOKEN_BUCKETS`): one picked token,
or the tokens the matcher forces next (jump-forward), which would otherwise take one
replay each. Every row runs `T` query positions: a row with `n < T` tokens runs `T - n`
padding tokens after its real ones, whose K/V land past its length (overwritten by its
next step, never attended: attention is causal, `decode_attention(queries_per_seq=T)`),
and its output is the state of its last real token. `max_tokens(b)` bounds `T` so that
the extra query rows stay cheap next to reading the weights (`MAX_STEP_TOKENS`).

Everything the step reads lives in static buffers: one `[5, slots * max(TOKEN_BUCKETS)]`
int64 tensor of token ids, KV write positions and rotary positions (one per query
position), the keys each row attends and the index of each row's last real token (one per
row), copied from a pinned host buffer in one asynchronous transfer per step (the next step
waits for it before rewriting the host buffer: a step that picks nothing synchronizes
nothing). In the "kernels" cache layout
every slot starts with its copy of the shared prefix (rotary position = write position,
the prefix counted in the length); in the "cascade" layout slots hold own tokens only and
the step also attends to the cache's shared prefix buffers, whose length lives on the
device, so a new prefix of at most their capacity is copied in without recapturing. A
batch of `b` rows runs in the smallest bucket `B >= b`; the `B - b` padding rows use the
free slots `b..B-1` (active rows always occupy slots `0..n-1`), write their K/V at the last
cache position and attend to their slot's first `T` keys: no real row's cache is touched
and every value stays finite. The runner keeps `SCRATCH` positions past every row's
capacity free for this (`NativeRunner.reserve`).

A step may also pick the next token of every row (greedy): given the rows' bitmasks, the
graph ends with the full-vocabulary logits and `qpfast.kernels.masked_argmax` against a
static device copy of them, so the host gets the picks with one copy back instead of
gathering logits and picking with a dozen small launches and several synchronizations.
A speculative step (`every=True`) returns the state of every position instead, so that the
host can verify the draft tokens the rows carry after their pending ones; given the rows'
bitmasks it also returns, per row, the greedy pick after its last pending token (under its
mask) and the unmasked argmax of every position: a draft position's pick is that argmax
whenever the draft's mask allows it, which the host checks without logits.

Each shape's step is captured as a few graphs over growing runs of layers (`pieces`,
`piece_bounds`) and replayed in turn: the host pays ~2 µs a kernel to launch a graph and
the GPU starts on it only once that launch is done, so with pieces it starts after the
first few layers' launch while the host launches the rest. The pieces pass the residual
stream, the next layer's normalized input and the rows' key counts on in static tensors.

The graphs hold pointers into the runner's KV cache (shared prefix buffers included) and
rope table, so they are dropped whenever one of them is reallocated. With `capture=False`
the same bucketed step runs eagerly (no CUDA needed): the tests check it against the plain
forward on CPU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import kernels

if TYPE_CHECKING:   # pragma: no cover
    from .model_runner import NativeRunner

#: batch sizes that get a graph (plus the cache's slot count, the largest batch)
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
#: tokens per row a graph appends
TOKEN_BUCKETS = (1, 2, 4, 8)
#: cache positions past every row's capacity kept free for padding tokens
SCRATCH = max(TOKEN_BUCKETS)
#: query positions (batch bucket x tokens per row) a step runs at most when rows take
#: several tokens. Fitted on an H200 (bench/RESULTS.md, run 14: a 0.6B Qwen3-shaped model,
#: bf16): 512 against 128 took a batch of 64 from 89 to 77 passes (0.308 -> 0.279 s) and one
#: of 128 from 119 to 78 (0.621 -> 0.478 s); 256 lay between. The replayed step grows
#: little with its rows there (batch 64: 1.88 ms at one token a row, 1.98 ms at two).
MAX_STEP_TOKENS = 512
#: A captured step is launched as a few graphs ("pieces") over growing runs of layers. A
#: graph's launch costs the host ~2 µs a kernel, and the GPU only starts on a graph once its
#: launch is done (H200, run 13: a replay took 0.54 ms of host time for the 0.6B model's
#: ~290-kernel step, then 1.84 ms of waiting for the GPU, about a whole step). With pieces,
#: the GPU starts after the first piece's launch (FIRST_PIECE_LAYERS layers) and the host
#: launches each later piece (PIECE_GROWTH times the layers of the one before) while the GPU
#: runs the earlier ones. Not yet timed on a GPU.
FIRST_PIECE_LAYERS = 1
PIECE_GROWTH = 3
#: the graph mode that returns the state of every position (speculative steps verify drafts)
EVERY = "every"
#: ... and also each row's masked greedy pick at one position and every position's argmax
EVERY_PICK = "every_pick"


def reads_masks(mode: Any) -> bool:
    """Whether the graphs of this mode read the rows' bitmasks (they pick)."""
    return mode is True or mode == EVERY_PICK
#: query rows (tokens x query heads of one KV head) the Triton decode kernel takes
#: (qpfast.kernels.decode.MAX_TILE_ROWS)
TILE_ROWS = 64


def piece_bounds(n_layers: int, first: int = FIRST_PIECE_LAYERS, growth: int = PIECE_GROWTH) -> list[int]:
    """Layer bounds of a captured step's pieces: piece k runs layers `bounds[k]` to
    `bounds[k+1] - 1`; the first has `first` layers, each next one `growth` times more
    (`first >= n_layers`: one piece)."""
    if n_layers < 1 or first < 1 or growth < 1:
        raise ValueError(f"piece_bounds: needs n_layers, first, growth >= 1, got {n_layers}, {first}, {growth}")
    bounds, size = [0], first
    while bounds[-1] < n_layers:
        bounds.append(min(n_layers, bounds[-1] + size))
        size *= growth
    return bounds


class DecodeGraphs:
    """Replays the decode step of a `NativeRunner` ("kernels" or "cascade" attention;
    captured graphs need the kernels, i.e. a CUDA device): one graph per (batch bucket,
    tokens per row, whether it picks)."""

    def __init__(self, runner: "NativeRunner", capture: bool = True):
        if capture and runner.device.type != "cuda":
            raise ValueError(f"cuda_graphs: capture needs a CUDA device, got {runner.device}")
        self.runner = runner
        self.capture = capture
        self.captured = 0                     # graphs captured so far (stats)
        self.positions = 0                    # query positions the steps ran, padding included (stats)
        self.max_step_tokens = MAX_STEP_TOKENS
        self._key: Optional[tuple] = None
        #: (B, T, mode) -> (its pieces' graphs, or None without capture; the step's output;
        #: the tensors the pieces pass on, kept alive)
        self._graphs: dict[tuple[int, int, Any], tuple[Optional[list], Any, list]] = {}
        self.pieces = piece_bounds(len(runner.layers))
        #: capture with programmatic dependent launch between the step's Triton kernels
        #: (`qpfast.kernels.launch`: each one's programs wait resident for the one before,
        #: hiding the launch gaps; Hopper and later); `set_pdl`
        self.pdl = False
        self._slot_idx: dict[tuple[int, int], torch.Tensor] = {}
        self._idx: Optional[torch.Tensor] = None
        self._host: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None       # [slots, words] int32 on the device
        self._copied: Optional[torch.cuda.Event] = None  # the last step's host-to-device copies
        # one memory pool for all graphs (as vLLM does): they replay one at a time and a step's
        # output is consumed before the next replay, so their temporaries may overlap
        self._pool = None

    def reset(self) -> None:
        """Drops every graph (the cache or rope table they point into is gone)."""
        self._drop(list(self._graphs))
        self._key = None

    def set_pieces(self, bounds: Sequence[int]) -> None:
        """Launches each step as the graphs of these layer bounds from now on (`[0,
        n_layers]`: one graph a step; default `piece_bounds(n_layers)`); drops the graphs."""
        n = len(self.runner.layers)
        b = [int(x) for x in bounds]
        if len(b) < 2 or b[0] != 0 or b[-1] != n or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"pieces: expected increasing layer bounds from 0 to {n}, got {list(bounds)}")
        self.reset()
        self.pieces = b

    def set_pdl(self, enabled: bool) -> None:
        """Captures the steps with programmatic dependent launch (or without) from now on;
        drops the graphs."""
        self.reset()
        self.pdl = bool(enabled)

    def _drop(self, keys: Sequence[tuple]) -> None:
        """Drops the graphs of `keys`; later captures go to a new memory pool. (PyTorch's
        allocator retires a pool once the last graph that used it is gone, and a capture
        into a retired pool fails an internal assertion, `use_count > 0`, seen on an H200.)"""
        for k in keys:
            del self._graphs[k]
        if keys:
            self._pool = None

    def _prepare(self) -> None:
        r = self.runner
        cache = r.cache
        r._rope_table(cache.capacity + cache.shared_capacity)
        key = (cache.stamp, r.rope_stamp)
        if key == self._key:
            return
        self.reset()
        dev = r.device
        n = cache.slots * SCRATCH
        self._idx = torch.zeros((5, n), dtype=torch.long, device=dev)
        self._host = torch.zeros((5, n), dtype=torch.long, pin_memory=dev.type == "cuda")
        self._slot_idx = {}
        self._mask = None
        self._key = key

    def bucket(self, b: int) -> int:
        slots = self.runner.cache.slots
        for size in BUCKETS:
            if b <= size <= slots:
                return size
        return slots

    def max_tokens(self, b: int) -> int:
        """How many tokens each of `b` rows may append in one step: the largest of
        `TOKEN_BUCKETS` whose query positions stay within `max_step_tokens` (at least 1)
        and whose query rows fit the decode kernel's tile."""
        r = self.runner
        B = self.bucket(b) if r.cache is not None else b
        group = r.hq // r.hkv
        best = 1
        for t in TOKEN_BUCKETS:
            if B * t <= self.max_step_tokens and group * t <= TILE_ROWS:
                best = t
        return best

    @staticmethod
    def step_width(token_lists: Sequence[Sequence[int]]) -> int:
        """The positions a row runs (`T`) in the step that appends `token_lists`."""
        most = max(len(t) for t in token_lists)
        return next(t for t in TOKEN_BUCKETS if t >= most)

    def step(self, token_lists: Sequence[Sequence[int]], starts: Sequence[int], mask: Optional[torch.Tensor] = None,
             every: bool = False, pick_at: Optional[Sequence[int]] = None):
        """Appends `token_lists[i]` (1 to `max_tokens(b)` token ids; `NativeRunner.decode_step`
        turns single ids into lists) to the row in slot i (which holds `starts[i]` own
        tokens); returns the final hidden state of each row's last new token `[b, hidden]`
        (a view of the graph's output, valid until the next step). With `mask` (int32 `[b, words]` on the CPU, pinned for
        an asynchronous copy) the step also picks each row's greedy next token under its
        mask row and returns `(states, picks)`, picks int64 `[b]` on the device (-1 where a
        row allows nothing). With `every` (speculative steps) it returns the state of every
        position instead, `[b, T, hidden]` (row i's tokens at `[i, :len]`); with `every` and
        `mask`, `(states, picks)`: picks int64 `[b, 1 + T]` on the device, column 0 the greedy
        pick under row i's mask after its token `pick_at[i]` (default: its last), then the
        unmasked argmax (lowest index among equal maxima) after each of its `T` positions."""
        r = self.runner
        b = len(token_lists)
        if b == 0 or b > r.cache.slots:
            raise ValueError(f"decode step: {b} rows for a cache of {r.cache.slots} slots")
        lens = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=b)
        most = self.max_tokens(b)
        if int(lens.min()) < 1 or int(lens.max()) > most:
            raise ValueError(f"decode step: each row appends 1 to {most} tokens here, got {int(lens.min())} "
                             f"to {int(lens.max())}")
        self._prepare()
        B = self.bucket(b)
        T = self.step_width(token_lists)
        n = B * T
        self.positions += n
        plen = r.prefix_len
        self._wait_copied()
        host_rows = self._rows(self._host, n)
        host = host_rows.numpy()
        own = np.asarray(starts, dtype=np.int64)
        pos = own + plen if r.attention == "kernels" else own          # where the first new K/V goes
        if int((pos + lens).max()) > r.cache.capacity - SCRATCH:
            raise ValueError(f"decode step: position {int((pos + lens).max()) - 1} is past the cache "
                             f"({r.cache.capacity - SCRATCH} positions a row)")
        j = np.arange(T)
        flat = np.zeros((b, T), dtype=np.int64)
        for i, t in enumerate(token_lists):
            flat[i, :len(t)] = t
        host[0, :b * T] = flat.reshape(-1)                               # padding tokens: id 0
        host[1, :b * T] = (pos[:, None] + j).reshape(-1)                 # KV write positions
        host[2, :b * T] = (own[:, None] + plen + j).reshape(-1)          # rotary positions
        host[3, :b] = pos + T                                            # keys each row attends
        at = lens - 1 if pick_at is None else np.asarray(pick_at, dtype=np.int64)
        if pick_at is not None and (at.shape != (b,) or int(at.min()) < 0 or bool((at >= lens).any())):
            raise ValueError("decode step: pick_at needs one index per row, within its tokens")
        host[4, :b] = np.arange(b) * T + at                              # the token each row picks after
        self._pad_rows(host, b, B, T)
        self._rows(self._idx, n).copy_(host_rows, non_blocking=True)
        pick = mask is not None
        if pick_at is not None and not (pick and every):
            raise ValueError("decode step: pick_at goes with every=True and a mask")
        if pick:
            if mask.dtype != torch.int32 or mask.dim() != 2 or mask.shape[0] != b:
                raise ValueError(f"decode step: mask must be int32 [{b}, words], got {mask.dtype} {tuple(mask.shape)}")
            self._mask_buffer(mask.shape[1])[:b].copy_(mask, non_blocking=True)
        if r.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        mode = (EVERY_PICK if pick else EVERY) if every else pick
        key = (B, T, mode)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._record(B, T, mode)
        graphs, out, _ = entry
        if graphs is None:                     # capture=False: run the same step eagerly
            out = self._core(B, T, mode)
        else:
            for g in graphs:
                g.replay()
        if every:
            if pick:
                return out[0][:b * T].view(b, T, out[0].shape[-1]), out[1][:b]
            return out[:b * T].view(b, T, out.shape[-1])
        return (out[0][:b], out[1][:b]) if pick else out[:b]

    @staticmethod
    def _rows(buf: torch.Tensor, n: int) -> torch.Tensor:
        """The index rows of a step of `n` query positions, `[5, n]`: the first `5 * n`
        elements of the index buffer (host or device), contiguous, so that the step's
        host-to-device copy is one asynchronous copy from pinned memory (a `[:, :n]` column
        slice of the `[5, N]` buffer is strided: torch stages such a copy through a pageable
        temporary and an extra copy kernel). Every shape's graph reads its own view; a
        step writes all of it before replaying."""
        return buf.view(-1)[:5 * n].view(5, n)

    def _wait_copied(self) -> None:
        """Waits for the last step's host-to-device copy (it may not have read the pinned host
        buffer yet), before the host buffer is rewritten."""
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None

    def _pad_rows(self, host: np.ndarray, b: int, B: int, T: int) -> None:
        """Rows `b..B-1` of the host buffer as padding rows: token 0 at every position,
        K/V written at the last cache position, attending to their slot's first `T` keys."""
        last = self.runner.cache.capacity - 1
        host[0, b * T:B * T] = 0
        host[1:3, b * T:B * T] = last
        host[3, b:B] = T
        host[4, b:B] = np.arange(b, B) * T

    def _mask_buffer(self, words: int) -> torch.Tensor:
        """The device copy of the rows' bitmasks the picking graphs read, `[slots, words]`."""
        if self._mask is None or self._mask.shape[1] != words:
            self._drop([k for k in self._graphs if reads_masks(k[2])])   # they read the old buffer
            r = self.runner
            self._mask = torch.zeros((r.cache.slots, words), dtype=torch.int32, device=r.device)
        return self._mask

    def shapes(self, max_batch: int, picks: Sequence[Any] = (False,)) -> list[tuple[int, int, Any]]:
        """Every graph key `(B, T, mode)` a step of 1 to `max_batch` rows can use, for each
        mode in `picks`: False (states of each row's last token), True (also its greedy pick),
        `EVERY` (the states of every position: speculative steps), `EVERY_PICK` (and the picks
        of a speculative step)."""
        slots = self.runner.cache.slots
        top = self.bucket(min(max_batch, slots))
        sizes = sorted({s for s in BUCKETS if s <= top} | {top})
        return [(B, T, pick) for B in sizes for T in TOKEN_BUCKETS if T <= self.max_tokens(B) for pick in picks]

    def warmup(self, max_batch: int, picks: Sequence[Any] = (False,), mask_words: Optional[int] = None) -> int:
        """Records the step of every shape in `shapes(max_batch, picks)` that has no graph
        yet (captures it on CUDA: the Triton kernels compile and cuBLAS sets up here, not
        during the first steps that need them; without capture the step runs once
        eagerly). Every row is a padding row, so no cached key or value changes. Picking
        shapes need `mask_words` (the bitmask width). Returns how many shapes were new."""
        if any(reads_masks(p) for p in picks) and mask_words is None:
            raise ValueError("mask_words: needed to record the steps that pick")
        self._prepare()
        self._wait_copied()
        new = 0
        for B, T, pick in self.shapes(max_batch, picks):
            if reads_masks(pick):
                self._mask_buffer(mask_words)
            if (B, T, pick) in self._graphs:
                continue
            host_rows = self._rows(self._host, B * T)
            self._pad_rows(host_rows.numpy(), 0, B, T)
            self._rows(self._idx, B * T).copy_(host_rows)
            entry = self._graphs[(B, T, pick)] = self._record(B, T, pick)
            if entry[0] is None:
                self._core(B, T, pick)
            new += 1
        return new

    def _record(self, B: int, T: int, pick: Any) -> tuple[Optional[list], Any, list]:
        """Captures the step of this shape as one graph per piece (`pieces`); returns
        (the graphs, the last piece's output, the tensors the pieces pass on)."""
        if not self.capture:
            return None, torch.empty(0), []
        # Warm up on a side stream (compiles the Triton kernels, sets up cuBLAS); the run
        # writes the same K/V the replay writes, so running the step twice is harmless.
        dev = self.runner.device
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream), kernels.programmatic_launch(self.pdl):
            self._core(B, T, pick)
        torch.cuda.current_stream(dev).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graphs, states, state = [], [], None
        try:
            for k in range(len(self.pieces) - 1):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool), kernels.programmatic_launch(self.pdl):
                    state = self._piece(B, T, pick, k, state)
                graphs.append(graph)
                states.append(state)
        except BaseException:
            if not self._graphs:               # the failed capture may be the pool's only user
                self._pool = None
            raise
        self.captured += 1
        return graphs, state, states[:-1]

    def _slots(self, B: int, T: int) -> torch.Tensor:
        """The slot of each of the step's `B * T` query positions (static per shape)."""
        idx = self._slot_idx.get((B, T))
        if idx is None:
            idx = torch.arange(B, dtype=torch.long, device=self.runner.device).repeat_interleave(T)
            self._slot_idx[(B, T)] = idx
        return idx

    def _core(self, B: int, T: int, pick: Any = False):
        """The whole step of this shape, eagerly: its pieces in turn."""
        state = None
        for k in range(len(self.pieces) - 1):
            state = self._piece(B, T, pick, k, state)
        return state

    def _piece(self, B: int, T: int, pick: Any, k: int, state: Any):
        """Piece `k` of the step: the embedding (first piece), layers `pieces[k]` to
        `pieces[k+1] - 1`, then (last piece) the final norm and the step's output (see
        `step`). Returns what the next piece takes, `(x, h, seq_lens)`, or the output."""
        r = self.runner
        cache = r.cache
        idx = self._rows(self._idx, B * T)
        lo, hi = self.pieces[k], self.pieces[k + 1]
        if k == 0:
            x, h, seq_lens = None, r.embed[idx[0]], idx[3, :B].to(torch.int32)
        else:
            x, h, seq_lens = state
        if r.attention == "cascade":
            shared = cache.shared_capacity > 0
            pre = (lambda li: cache.prefix_args(li)) if shared else (lambda li: {})
        elif r.row0_reads:      # every slot holds the prefix: the rows read slot 0's copy
            pre = (lambda li: dict(row0_prefix_len=cache.row0_len))
        else:
            pre = (lambda li: {})

        def attend(li: int, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
            return kernels.decode_attention(q.to(kc.dtype), kc[:B], vc[:B], seq_lens, r.scale, queries_per_seq=T,
                                            **pre(li))

        x, h = r.layer_span(x, h, lo, hi, idx[2], cache, self._slots(B, T), idx[1], attend)
        if hi < len(r.layers):
            return x, h, seq_lens
        if pick == EVERY:
            return r.final_norm(h)
        if pick == EVERY_PICK:
            states = r.final_norm(h)
            logits = F.linear(states, r.lm_head, r.lm_bias)
            first = kernels.masked_argmax(logits[idx[4, :B]], self._mask[:B])
            return states, torch.cat([first[:, None], logits.argmax(dim=1).view(B, T)], dim=1)
        if T > 1:
            h = h[idx[4, :B]]
        states = r.final_norm(h)
        if not pick:
            return states
        logits = F.linear(states, r.lm_head, r.lm_bias)
        return states, kernels.masked_argmax(logits, self._mask[:B])
