"""Model runners: the engine's own forward over Hugging Face weights, and a generic fallback.

`NativeRunner` reimplements the decoder of Llama / Qwen2 / Qwen3 checkpoints (RMSNorm, RoPE
from the model's own rotary module so config rope scaling is honoured, grouped-query
attention, SwiGLU MLP, Qwen2 q/k/v biases, Qwen3 per-head q_norm/k_norm, tied embeddings)
on the HF weight tensors, with a static KV cache. One `forward` call runs any mix of rows,
each appending any number of new tokens after the tokens already cached for it: prompt
suffixes (prefill), one picked token (decode) or a picked token plus forced ones
(jump-forward). It returns final hidden states; logits are computed afterwards, either for
the whole vocabulary or only for a few gathered lm_head rows (sparse logits).

Attention (`attention=`):
- "kernels": calls `qpfast.kernels.decode_attention` (all rows one token) or
  `prefill_attention` (varlen) on slots that hold a copy of the shared prefix: the path the
  Triton kernels (and later CUDA graphs) plug into; on CPU they are the torch references;
- "cascade": the shared prefix is stored once; all queries of a step attend to it in one
  batched product, then to their own tokens, and the two softmax parts are merged by their
  log-sum-exp. No per-sequence copy of the prefix is read. Where the Triton kernels run (CUDA,
  or the interpreter) this goes through `decode_attention` / `prefill_attention` with their
  shared-prefix arguments (the cache's static prefix buffers, so CUDA graphs work too);
  elsewhere through torch matmuls, the fast path on CPU.
"auto" = "kernels" on CUDA, "cascade" elsewhere.

`HFRunner` calls the model's own forward (one row at a time, with the model's own cache when
it returns one, else recomputing the row's whole sequence): any causal LM object works.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import kernels
from .cuda_graph import SCRATCH, DecodeGraphs
from .kv_cache import KVCache, PrefixKV, canonical_device, new_stamp

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def _text_config(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def native_support(model: Any) -> Optional[str]:
    """None when `NativeRunner` can run `model`, else why not."""
    cfg = _text_config(model)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_MODEL_TYPES}"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
        return "no .model.layers / .model.embed_tokens"
    if getattr(model, "lm_head", None) is None:
        return "no lm_head"
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "sliding_window", None) and mtype == "mistral":
        return "sliding-window attention"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rtype = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rtype in ("dynamic", "longrope"):
        return f"rope_type {rtype!r} depends on the sequence length"
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(model, "rotary_emb", None) is None and getattr(base, "rotary_emb", None) is None:
        return "no rotary embedding module"
    return None


def lm_head_rows(model: Any, tokenizer: Any = None) -> int:
    """Rows of the model's output layer (>= the tokenizer's size)."""
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            out = get()
            if out is not None and getattr(out, "weight", None) is not None:
                return int(out.weight.shape[0])
        except (NotImplementedError, AttributeError):
            pass
    cfg = _text_config(model)
    v = getattr(cfg, "vocab_size", None)
    if isinstance(v, int):
        return v
    if tokenizer is not None:
        return len(tokenizer)
    raise ValueError("model: cannot tell its vocabulary size (no lm_head, no config.vocab_size)")


class _Layer:
    __slots__ = ("ln1", "wqkv", "bqkv", "wo", "bo", "qn", "kn", "ln2", "wgu", "wd")


class StepInputs:
    """Index tensors of one forward call over rows in slots [slot0, slot0 + b)."""

    def __init__(self, token_lists: Sequence[Sequence[int]], starts: Sequence[int], slot0: int, offset: int,
                 device: torch.device):
        b = len(token_lists)
        lens = [len(t) for t in token_lists]
        self.b, self.lens, self.starts = b, lens, list(starts)
        self.T = max(lens)
        self.N = sum(lens)
        flat, row, t_idx = [], [], []
        for i, toks in enumerate(token_lists):
            flat.extend(toks)
            row.extend([i] * len(toks))
            t_idx.extend(range(len(toks)))
        cpu = torch.device("cpu")
        row_t = torch.tensor(row, dtype=torch.long, device=cpu)
        t_t = torch.tensor(t_idx, dtype=torch.long, device=cpu)
        starts_t = torch.tensor(self.starts, dtype=torch.long, device=cpu)
        own = starts_t[row_t] + t_t                        # own position of each new token
        self.tokens = torch.tensor(flat, dtype=torch.long, device=cpu).to(device)
        self.row = row_t.to(device)
        self.own_pos = own.to(device)
        self.abs_pos = (own + offset).to(device)           # rope position (prefix first)
        self.slot = (row_t + slot0).to(device)
        self.pad_index = (row_t * self.T + t_t).to(device)
        self.last = torch.tensor([sum(lens[: i + 1]) - 1 for i in range(b)], dtype=torch.long).to(device)
        self.starts_t = starts_t.to(device)
        self.lens_t = torch.tensor(lens, dtype=torch.long).to(device)
        self.slot0 = slot0


class NativeRunner:
    """The engine's own forward over a Llama/Qwen2/Qwen3 model's weights."""

    kind = "native"
    supports_sparse = True

    def __init__(self, model: Any, device: torch.device, attention: str = "auto"):
        why = native_support(model)
        if why is not None:
            raise ValueError(f"model: the native runner cannot run it ({why})")
        cfg = _text_config(model)
        self.device = canonical_device(device)
        if attention == "auto":
            attention = "kernels" if self.device.type == "cuda" else "cascade"
        if attention not in ("kernels", "cascade"):
            raise ValueError(f"attention: expected 'auto', 'kernels' or 'cascade', got {attention!r}")
        self.attention = attention
        base = model.model
        self.embed = base.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.hq = cfg.num_attention_heads
        self.hkv = getattr(cfg, "num_key_value_heads", None) or self.hq
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.scale = self.d ** -0.5
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        act = getattr(cfg, "hidden_act", "silu")
        self.act = F.silu if act in ("silu", "swish") else (
            lambda x: F.gelu(x, approximate="tanh") if act == "gelu_pytorch_tanh" else F.gelu(x))
        self.layers: list[_Layer] = []
        # On CPU the projections are kept transposed ([in, out], contiguous) and applied as
        # x @ w: at a few rows that product runs up to 2x faster than F.linear's x @ w.T
        # (the default model's 24 projections at one row: 1.9 -> 1.0 ms), and never slower.
        self.weights_in_out = self.device.type == "cpu"
        with torch.no_grad():
            for layer in base.layers:
                a, m = layer.self_attn, layer.mlp
                L = _Layer()
                L.ln1 = layer.input_layernorm.weight
                L.ln2 = layer.post_attention_layernorm.weight
                L.wqkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0).contiguous()
                biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
                L.bqkv = torch.cat(biases, 0).contiguous() if all(x is not None for x in biases) else None
                L.wo = a.o_proj.weight
                L.bo = a.o_proj.bias
                L.qn = a.q_norm.weight if getattr(a, "q_norm", None) is not None else None
                L.kn = a.k_norm.weight if getattr(a, "k_norm", None) is not None else None
                L.wgu = torch.cat([m.gate_proj.weight, m.up_proj.weight], 0).contiguous()
                L.wd = m.down_proj.weight
                if self.weights_in_out:
                    for name in ("wqkv", "wo", "wgu", "wd"):
                        setattr(L, name, getattr(L, name).t().contiguous())
                self.layers.append(L)
        self.norm = base.norm.weight
        self.lm_head = model.lm_head.weight
        self.lm_bias = getattr(model.lm_head, "bias", None)
        self.vocab_size = int(self.lm_head.shape[0])
        self._rotary = getattr(base, "rotary_emb", None) or getattr(model, "rotary_emb")
        self._cos = self._sin = None
        self.rope_stamp = 0                      # kv_cache.new_stamp() of the current rope table
        self.cache: Optional[KVCache] = None
        self.prefix: Optional[PrefixKV] = None
        self._prefix_f32: Optional[tuple[list[torch.Tensor], list[torch.Tensor]]] = None
        self.graphs: Optional[DecodeGraphs] = None
        # cascade attention through the kernels (Triton or its interpreter), else torch matmuls
        self.cascade_kernels = attention == "cascade" and kernels.backend(self.embed) != "reference"
        # "kernels" layout: one-token steps read the prefix from slot 0's copy for every row
        # (`decode_attention(row0_prefix_len=)`); False reads each row's own copy (benchmarks;
        # set it before the CUDA graphs are captured)
        self.row0_reads = True
        # steps of at most this many tokens run their layer projections through
        # `kernels.linear` (Triton on CUDA: K split across the SMs, SwiGLU fused), larger
        # ones (prefill) through torch's GEMMs; 0: torch's everywhere (set_projection_rows)
        self.projection_rows = 0

    def set_projection_rows(self, rows: int) -> None:
        """Run the layer projections of steps of at most `rows` tokens through
        `kernels.linear`, the layer's norms and residual adds fused into them (with a SwiGLU
        MLP: `_fused_layer_span`); 0: torch's GEMMs for all. Drops the captured CUDA graphs. The
        kernels take `F.linear`'s [out, in] weights: a CPU runner (the interpreter, for
        tests) turns its [in, out] copies back."""
        rows = int(rows)
        if rows < 0:
            raise ValueError(f"rows: expected a count >= 0, got {rows}")
        if rows and self.weights_in_out:
            with torch.no_grad():
                for L in self.layers:
                    for name in ("wqkv", "wo", "wgu", "wd"):
                        setattr(L, name, getattr(L, name).t().contiguous())
            self.weights_in_out = False
        if rows and kernels.backend(self.embed) == "triton":
            from ..kernels.common import zeroed_counters
            zeroed_counters("linear", self.device, 1)     # the split runs' counters, outside any capture
        self.projection_rows = rows
        if self.graphs is not None:
            self.graphs.reset()

    def enable_graphs(self, capture: bool = True) -> None:
        """Decode steps (`decode_step`) replay CUDA graphs from now on; with
        `capture=False` the same bucketed step runs eagerly (CPU tests)."""
        self.graphs = DecodeGraphs(self, capture=capture)
        self.cache = None                      # the next reserve() adds the scratch positions

    def step_tokens(self, b: int) -> int:
        """How many tokens each of `b` rows may append in one `decode_step` (graph steps
        have a bounded shape; a plain forward takes any number)."""
        return self.graphs.max_tokens(b) if self.graphs is not None else 1 << 30

    @torch.no_grad()
    def decode_step(self, tokens: Sequence, starts: Sequence[int], mask: Optional[torch.Tensor] = None,
                    every: bool = False, pick_at: Optional[Sequence[int]] = None):
        """New tokens for each row in slots [0, b): `tokens[i]` is a token id or a list of
        at most `step_tokens(b)` of them; returns the final hidden state of each row's last
        new token [b, hidden]. Through the CUDA graphs when they are enabled, else a plain
        `forward`. With `mask` (int32 [b, words] on the CPU) also each row's greedy pick
        under it: `(states, picks)`; with `every` (graphs only) the states of every position,
        `[b, T, hidden]`, and with a mask too the picks of a speculative step at `pick_at`
        (see `DecodeGraphs.step`)."""
        lists = [[int(t)] if isinstance(t, (int, np.integer)) else [int(x) for x in t] for t in tokens]
        if self.graphs is not None:
            return self.graphs.step(lists, starts, mask, every, pick_at)
        if every or pick_at is not None:
            raise ValueError("decode step: `every` and `pick_at` need the graph step (enable_graphs)")
        states = self.forward(0, lists, starts)
        if mask is None:
            return states
        return states, kernels.masked_argmax(self.full_logits(states), mask.to(self.device))

    # -- rope --------------------------------------------------------------------------
    def _rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.shape[0] < n:
            size = max(n, 1024, 2 * (0 if self._cos is None else self._cos.shape[0]))
            pos = torch.arange(size, device=self.device)[None]
            dummy = torch.zeros(1, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                cos, sin = self._rotary(dummy, pos)
            self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
            self.rope_stamp = new_stamp()
        return self._cos, self._sin

    # -- cache management --------------------------------------------------------------
    def reserve(self, slots: int, own_capacity: int) -> None:
        """Makes sure the static cache holds `slots` rows of `own_capacity` own tokens."""
        p = self.prefix.length if (self.prefix is not None and self.attention == "kernels") else 0
        cap = p + own_capacity + (SCRATCH if self.graphs is not None else 0)   # + the graphs' scratch positions
        if self.cache is None or not self.cache.fits(slots, cap, self.dtype, self.device):
            old = self.cache
            slots = max(slots, old.slots if old else 0)
            cap = max(cap, old.capacity if old else 0)
            self.cache = None
            del old
            self.cache = KVCache(len(self.layers), slots, self.hkv, cap, self.d, self.dtype, self.device)
        if self.cache.prefix is not self.prefix:
            self._write_prefix()

    def _write_prefix(self) -> None:
        """The current prefix into the cache: a copy per slot ("kernels") or the shared
        buffers (cascade through the kernels or the graph step; the torch cascade path reads
        the prefix itself)."""
        if self.attention == "kernels":
            self.cache.write_prefix(self.prefix)
        elif self.cascade_kernels or self.graphs is not None:
            self.cache.write_shared(self.prefix)
        else:
            self.cache.prefix = self.prefix

    @torch.no_grad()
    def compute_prefix(self, ids: Sequence[int]) -> PrefixKV:
        """The shared prefix's KV (one forward pass over the prefix tokens)."""
        ids = tuple(int(i) for i in ids)
        if not ids:
            return PrefixKV((), [], [])
        tmp = KVCache(len(self.layers), 1, self.hkv, len(ids), self.d, self.dtype, self.device)
        self._forward(tmp, None, 0, [list(ids)], [0], 0, attention="cascade")
        return PrefixKV(ids, [k[0] for k in tmp.k], [v[0] for v in tmp.v])

    def use_prefix(self, prefix: Optional[PrefixKV]) -> None:
        if prefix is not None and prefix.length == 0:
            prefix = None
        self.prefix = prefix
        self._prefix_f32 = None if prefix is None else ([k.float() for k in prefix.k], [v.float() for v in prefix.v])
        if self.cache is not None and self.cache.prefix is not prefix:
            if self.attention == "kernels" and prefix is not None and self.cache.capacity < prefix.length + 1:
                self.cache = None
            else:
                self._write_prefix()

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.length

    def move_slot(self, src: int, dst: int, own_len: int) -> None:
        p = self.prefix_len if self.attention == "kernels" else 0
        self.cache.move(src, dst, p, p + own_len)

    # -- forward -----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, slot0: int, token_lists: Sequence[Sequence[int]], starts: Sequence[int],
                return_all: bool = False) -> torch.Tensor:
        """Appends `token_lists[i]` to the row in slot `slot0 + i` (which already holds
        `starts[i]` own tokens); returns the final hidden state of each row's last new
        token `[b, hidden]` (or of every new token `[N, hidden]` with return_all)."""
        return self._forward(self.cache, self.prefix, self.prefix_len, token_lists, starts, slot0,
                             attention=self.attention, return_all=return_all)

    def _forward(self, cache: KVCache, prefix: Optional[PrefixKV], plen: int, token_lists, starts, slot0: int,
                 attention: str, return_all: bool = False) -> torch.Tensor:
        inp = StepInputs(token_lists, starts, slot0, plen, self.device)
        self._rope_table(plen + max(s + n for s, n in zip(inp.starts, inp.lens)))
        slot_plen = plen if attention == "kernels" else 0        # prefix keys each slot holds
        via_kernels = attention == "kernels" or self.cascade_kernels
        write_pos = inp.own_pos + slot_plen
        # a multi-token step through the kernels in the "kernels" layout gathers only each
        # row's own keys and reads the prefix as a shared one from slot 0's copy (every
        # slot holds the same), instead of gathering every row's copy of it
        slot0_prefix = via_kernels and attention == "kernels" and inp.T > 1 and plen > 0
        meta = self._attn_meta(inp, slot_plen, via_kernels, skip_prefix=slot0_prefix)

        shared = via_kernels and attention == "cascade" and plen > 0
        if shared and cache.prefix is not prefix:
            raise RuntimeError("cascade attention: the cache's shared prefix buffers hold another prefix")

        def attend(li: int, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
            if via_kernels:
                if shared:
                    pre = cache.prefix_args(li)
                elif slot0_prefix:
                    pre = dict(prefix_k=kc[0, :, :plen], prefix_v=vc[0, :, :plen])
                elif attention == "kernels" and inp.T == 1 and self.row0_reads:
                    pre = dict(row0_prefix_len=cache.row0_len)     # every row reads the first slot's copy
                else:
                    pre = {}
                return self._attn_kernels(q, kc, vc, inp, meta, pre)
            pk = pv = None
            if plen:
                if prefix is self.prefix and self._prefix_f32 is not None:
                    pk, pv = self._prefix_f32[0][li], self._prefix_f32[1][li]
                else:
                    pk, pv = prefix.k[li].float(), prefix.v[li].float()
            return self._attn_cascade(q, kc, vc, pk, pv, inp, meta)

        h = self.layers_forward(self.embed[inp.tokens], inp.abs_pos, cache, inp.slot, write_pos, attend)
        if not return_all:
            h = h[inp.last]
        return self.final_norm(h)

    def project(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A layer projection of the rows `x` [N, in]: `w` is [out, in] (F.linear), or [in, out]
        on CPU (`weights_in_out`); through `kernels.linear` for at most `projection_rows` rows."""
        if x.shape[0] <= self.projection_rows:
            return kernels.linear(x, w, b)
        if self.weights_in_out:
            return torch.addmm(b, x, w) if b is not None else x @ w
        return F.linear(x, w, b)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return kernels.add_rms_norm(h, None, self.norm, self.eps)[0]

    def layers_forward(self, h: torch.Tensor, rope_pos: torch.Tensor, cache: KVCache, slot: torch.Tensor,
                       write_pos: torch.Tensor, attend) -> torch.Tensor:
        """The decoder layers over `N` new tokens (embeddings `h` [N, hidden], rotary
        positions `rope_pos`): each token's K/V is written to `cache` at (`slot`,
        `write_pos`), then `attend(layer, q, k_cache, v_cache)` gives its attention output
        [N, Hq, D]. Returns the last layer's output (before the final norm).

        The elementwise work goes through `qpfast.kernels` (add_rms_norm,
        qk_norm_rope_store, silu_mul): three fused Triton kernels a layer on CUDA, the
        torch references (Hugging Face's arithmetic) on CPU."""
        return self.layer_span(None, h, 0, len(self.layers), rope_pos, cache, slot, write_pos, attend)[1]

    def layer_span(self, x: Optional[torch.Tensor], h: torch.Tensor, lo: int, hi: int, rope_pos: torch.Tensor,
                   cache: KVCache, slot: torch.Tensor, write_pos: torch.Tensor, attend
                   ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """Layers `lo..hi-1` of `layers_forward` (a piece of a captured decode step): `h` is
        the residual stream entering layer `lo` and `x` its normalized input (None at layer
        0: computed here). Returns `(x, h)` entering layer `hi`, or `(None, output)` after
        the last layer."""
        hq, d = self.hq, self.d
        N = h.shape[0]
        layers = self.layers
        if N <= self.projection_rows and self.act is F.silu:
            return None, self._fused_layer_span(h, lo, hi, rope_pos, cache, slot, write_pos, attend)
        if lo == 0 or x is None:
            x, h = kernels.add_rms_norm(h, None, layers[lo].ln1, self.eps)
        for li in range(lo, hi):
            L = layers[li]
            kc, vc = cache.k[li], cache.v[li]
            qkv = self.project(x, L.wqkv, L.bqkv)
            q = kernels.qk_norm_rope_store(qkv, L.qn, L.kn, self._cos, self._sin, rope_pos, kc, vc, slot,
                                           write_pos, hq, self.hkv, self.eps)
            o = attend(li, q, kc, vc)
            a = self.project(o.reshape(N, hq * d).to(h.dtype), L.wo, L.bo)
            x, h = kernels.add_rms_norm(a, h, L.ln2, self.eps)
            gu = self.project(x, L.wgu)
            if self.act is F.silu:
                y = kernels.silu_mul(gu)
            else:
                g, u = gu.chunk(2, dim=-1)
                y = self.act(g) * u
            m = self.project(y, L.wd)
            if li + 1 < len(layers):
                x, h = kernels.add_rms_norm(m, h, layers[li + 1].ln1, self.eps)
            else:
                x, h = None, h + m
        return x, h

    def _fused_layer_span(self, h: torch.Tensor, lo: int, hi: int, rope_pos: torch.Tensor, cache: KVCache,
                          slot: torch.Tensor, write_pos: torch.Tensor, attend) -> torch.Tensor:
        """`layer_span` with every projection through `kernels.linear` and the layer's norms
        and residual adds fused into them (`set_projection_rows`): the qkv and gate/up
        projections normalize their input rows, o_proj and down_proj add their product to the
        residual stream and leave its rows' sums of squares for the next norm. Four kernels a
        layer besides the attention's two. Returns the residual stream after layer `hi - 1`."""
        hq, d, eps = self.hq, self.d, self.eps
        N = h.shape[0]
        sumsq = None                    # the stream's sums of squares, from the call that wrote it
        for li in range(lo, hi):
            L = self.layers[li]
            kc, vc = cache.k[li], cache.v[li]
            qkv = kernels.linear(h, L.wqkv, L.bqkv, norm_weight=L.ln1, eps=eps, row_sumsq=sumsq)
            q = kernels.qk_norm_rope_store(qkv, L.qn, L.kn, self._cos, self._sin, rope_pos, kc, vc, slot,
                                           write_pos, hq, self.hkv, eps)
            o = attend(li, q, kc, vc)
            h, sumsq = kernels.linear(o.reshape(N, hq * d).to(h.dtype), L.wo, L.bo, residual=h, sumsq_out=True)
            y = kernels.linear(h, L.wgu, swiglu=True, norm_weight=L.ln2, eps=eps, row_sumsq=sumsq)
            h, sumsq = kernels.linear(y, L.wd, residual=h, sumsq_out=True)
        return h

    # -- attention ---------------------------------------------------------------------
    def _attn_meta(self, inp: StepInputs, plen: int, via_kernels: bool, skip_prefix: bool = False) -> dict:
        """Index tensors of one step's attention: for the kernels (`plen` = prefix keys each
        slot holds before its own; with `skip_prefix` a multi-token step gathers only the
        keys after them), or for the torch cascade path."""
        meta: dict[str, Any] = {}
        own_after = inp.starts_t + inp.lens_t
        if via_kernels:
            if inp.T == 1:
                meta["seq_lens"] = (own_after + plen).to(torch.int32)
            else:
                skip = plen if skip_prefix else 0
                kl = (own_after + plen - skip).tolist()
                cu_k = [0]
                for x in kl:
                    cu_k.append(cu_k[-1] + x)
                cu_q = [0]
                for x in inp.lens:
                    cu_q.append(cu_q[-1] + x)
                meta["cu_q"] = torch.tensor(cu_q, dtype=torch.int32, device=self.device)
                meta["cu_k"] = torch.tensor(cu_k, dtype=torch.int32, device=self.device)
                slots = torch.cat([torch.full((n,), inp.slot0 + i, dtype=torch.long) for i, n in enumerate(kl)])
                pos = torch.cat([torch.arange(skip, skip + n) for n in kl])
                meta["k_slot"], meta["k_pos"] = slots.to(self.device), pos.to(self.device)
        else:
            lmax = int(own_after.max())
            j = torch.arange(lmax, device=self.device)
            t = torch.arange(inp.T, device=self.device)
            meta["lmax"] = lmax
            # key j is visible to new token t of row b iff j <= start_b + t
            meta["mask"] = j[None, None, :] <= (inp.starts_t[:, None, None] + t[None, :, None])
        return meta

    def _attn_kernels(self, q, kc, vc, inp: StepInputs, meta, pre: dict) -> torch.Tensor:
        """Attention through `qpfast.kernels` over the slots' cached keys, plus the shared
        prefix (`pre`: `KVCache.prefix_args`, slot 0's prefix copy, or for one token a row
        `row0_prefix_len`; empty without one)."""
        s0, b = inp.slot0, inp.b
        if inp.T == 1:
            return kernels.decode_attention(q.to(kc.dtype), kc[s0:s0 + b], vc[s0:s0 + b], meta["seq_lens"],
                                            self.scale, **pre)
        kp = kc[meta["k_slot"], :, meta["k_pos"]]
        vp = vc[meta["k_slot"], :, meta["k_pos"]]
        return kernels.prefill_attention(q.to(kc.dtype), kp, vp, meta["cu_q"], meta["cu_k"], self.scale, **pre)

    def _attn_cascade(self, q, kc, vc, pk, pv, inp: StepInputs, meta) -> torch.Tensor:
        N, hq, d = q.shape
        hkv, g = self.hkv, self.hq // self.hkv
        b, T, lmax = inp.b, inp.T, meta["lmax"]
        qf = q.float().view(N, hkv, g, d)
        # own tokens: rows padded to T new tokens, keys = the slot's first lmax positions
        if T == 1:
            qp = qf.permute(0, 1, 2, 3).reshape(b, hkv, g, d)
        else:
            qp = qf.new_zeros(b * T, hkv, g, d)
            qp[inp.pad_index] = qf
            qp = qp.view(b, T, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * T, d)
        s0 = inp.slot0
        ko = kc[s0:s0 + b, :, :lmax].float()
        vo = vc[s0:s0 + b, :, :lmax].float()
        s2 = torch.matmul(qp.view(b, hkv, g * T, d), ko.transpose(-1, -2)) * self.scale
        s2 = s2.view(b, hkv, g, T, lmax).masked_fill(~meta["mask"][:, None, None], float("-inf"))
        m2 = s2.amax(-1, keepdim=True)
        p2 = torch.exp(s2 - m2)
        l2 = p2.sum(-1, keepdim=True)
        o2 = torch.matmul(p2.view(b, hkv, g * T, lmax), vo).view(b, hkv, g, T, d)
        if T == 1:
            o2, m2, l2 = (x.view(b, hkv, g, x.shape[-1]) for x in (o2, m2, l2))
        else:
            def flat(x):
                return x.permute(0, 3, 1, 2, 4).reshape(b * T, hkv, g, x.shape[-1])[inp.pad_index]
            o2, m2, l2 = flat(o2), flat(m2), flat(l2)
        if pk is None:
            return (o2 / l2).view(N, hq, d)
        # shared prefix: every new token of every row against the one prefix copy
        qg = qf.permute(1, 0, 2, 3).reshape(hkv, N * g, d)
        s1 = torch.bmm(qg, pk.transpose(1, 2)) * self.scale          # [hkv, N*g, P]
        m1 = s1.amax(-1, keepdim=True)
        p1 = torch.exp(s1 - m1)
        l1 = p1.sum(-1, keepdim=True)
        o1 = torch.bmm(p1, pv)
        o1, m1, l1 = (x.view(hkv, N, g, x.shape[-1]).permute(1, 0, 2, 3) for x in (o1, m1, l1))
        m = torch.maximum(m1, m2)
        a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
        return ((o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)).reshape(N, hq, d)

    # -- logits ------------------------------------------------------------------------
    @torch.no_grad()
    def full_logits(self, states: torch.Tensor) -> torch.Tensor:
        return F.linear(states, self.lm_head, self.lm_bias).float()

    @torch.no_grad()
    def sparse_logits(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits of `ids` only ([rows, K], padding -1 -> any row; masked by the caller)."""
        w = self.lm_head[ids.clamp_min(0)]                                 # [rows, K, H]
        out = torch.bmm(w, states[:, :, None])[:, :, 0]
        if self.lm_bias is not None:
            out = out + self.lm_bias[ids.clamp_min(0)]
        return out.float()


class HFRunner:
    """Generic fallback: any causal LM object called through its own forward.

    Rows run one at a time. With a model that returns a cache, each row keeps its own copy
    (starting from a copy of the prefix cache); otherwise every call recomputes the row's
    whole sequence. Slower than `NativeRunner`, but it needs nothing from the model beyond
    `model(input_ids=...) -> .logits`.
    """

    kind = "hf"
    # the model computes full logits anyway; "sparse" picks here only skip the full-vocab
    # mask expansion (gather the allowed ids' logits, argmax over a handful)
    supports_sparse = True

    def __init__(self, model: Any, device: torch.device, vocab_size: int):
        self.model = model
        self.device = canonical_device(device)
        self.vocab_size = vocab_size
        self.prefix: Optional[PrefixKV] = None
        self.rows: dict[int, list] = {}     # slot -> [ids, cache or None]
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError, AttributeError):
            params = {}
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._accepts_cache = self._cache_kw in params or any(
            p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.length

    def _call(self, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        kw: dict[str, Any] = {}
        if self._accepts_cache:
            kw["use_cache"] = True
            if cache is not None:
                kw[self._cache_kw] = cache
        out = self.model(input_ids=x, **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            new_cache = getattr(out, "cache", None)
        return logits[0, -1], new_cache

    @torch.no_grad()
    def compute_prefix(self, ids: Sequence[int]) -> PrefixKV:
        ids = tuple(int(i) for i in ids)
        if not ids:
            return PrefixKV((), [], [])
        cache = None
        if self._accepts_cache:
            _, cache = self._call(list(ids), None)
        return PrefixKV(ids, [], [], extra=cache)

    def use_prefix(self, prefix: Optional[PrefixKV]) -> None:
        self.prefix = None if prefix is None or prefix.length == 0 else prefix

    def reserve(self, slots: int, own_capacity: int) -> None:
        pass

    def move_slot(self, src: int, dst: int, own_len: int) -> None:
        if src != dst:
            self.rows[dst] = self.rows.pop(src)

    @torch.no_grad()
    def forward(self, slot0: int, token_lists, starts, return_all: bool = False) -> torch.Tensor:
        outs = []
        for i, (toks, start) in enumerate(zip(token_lists, starts)):
            slot = slot0 + i
            toks = [int(t) for t in toks]
            if start == 0 or slot not in self.rows:
                pre = self.prefix
                cache = copy.deepcopy(pre.extra) if pre is not None and pre.extra is not None else None
                self.rows[slot] = [list(pre.ids) if pre is not None else [], cache]
            state = self.rows[slot]
            state[0] = state[0] + toks
            if state[1] is not None:      # the row's cache covers everything before toks
                logits, state[1] = self._call(toks, state[1])
            else:                         # no cache yet (or a model without one): whole sequence
                logits, state[1] = self._call(state[0], None)
            outs.append(logits.float())
        return torch.stack(outs) if outs else torch.empty(0, self.vocab_size)

    def full_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def sparse_logits(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return states.gather(1, ids.clamp_min(0))
