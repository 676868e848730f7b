"""`qpfast.Engine`: batched, query-grounded constrained decoding over a Hugging Face model.

The decode loop (one iteration = one batched forward pass, plus one more when new queries
join):

1. **admit** waiting queries into free KV slots (longest first: `admission`); their pending
   tokens are the prompt suffix (query + template tail) plus the output tokens the matcher
   forces from the start;
2. **forward** every active row's pending tokens in one call, on top of the shared-prefix
   KV and the row's own cached tokens; the result is one hidden state per row (new rows get
   a prefill pass of their own, or with CUDA graphs, once a batch runs, join the graph steps
   a few tokens at a time: `chunked_prefill`);
3. **pick** one token per row under its bitmask (filled before the forward): rows with one
   allowed token take it without logits; rows with a few allowed tokens get logits for just
   those ids (gathered lm_head rows: *sparse logits*); the rest get full logits and
   `qpfast.kernels.masked_argmax` (or `masked_sample`);
4. **accept** the picks; **jump-forward**: append every token the matcher forces next
   (`Matcher.forced_tokens()`, then any step whose mask allows a single token) to the row's
   pending list, so they all enter the next forward pass together; fill the masks of the
   rows' next step. One C++ call does this for all rows (`qpfast.matcher.advance_rows`,
   GIL released);
5. **retire** finished rows (end token accepted): parse the text, free the slot (the last
   active slot moves into it, so active rows stay contiguous).

Everything it does is lossless under greedy decoding: the token ids are the same with
jump-forward, sparse logits or prefix reuse on or off, and in any batch size (tests check
exact equality in fp32).

`max_new_tokens` is each matcher's token budget (end token included): the mask only allows
tokens after which the output can still finish in budget, so every result is complete.
Default: `default_max_new_tokens(schema)` = 4 x max_query_chars + 2 x intent_max_chars + 64
(384 for the default schema; generated gold targets of 10-20 character queries take ~50-85
Qwen tokens).
"""
from __future__ import annotations

import concurrent.futures
import numbers
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from ..matcher import Matcher, advance_rows, fill_bitmasks
from ..normalize import normalize
from ..parse import ParseError, parse
from ..prompt import prompt_template
from ..result import QPResult
from ..schema import Schema, model_schema
from ..vocab import Vocab
from .model_runner import HFRunner, NativeRunner, lm_head_rows, native_support
from .sampler import allowed_at, pick_dense, pick_sparse, split_rows
from .cuda_graph import EVERY, EVERY_PICK
from .kv_cache import canonical_device
from .draft import DraftIndex
from .screen import LogitScreen, cpu_has_bf16_dot
from .sequence import Sequence

__all__ = ["Engine", "default_max_new_tokens", "resolve_device", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}

_VOCABS: "weakref.WeakKeyDictionary[Any, dict[int, Vocab]]" = weakref.WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()

#: the orders queries may enter the batch in (`Engine.admission`)
ADMISSIONS = ("longest_first", "in_order")
#: speculate="auto": drafts a row, and the most rows a step may have for them (CPU, eager;
#: bench/RESULTS.md: drafts pay at 64 rows, 1.05-1.16x, and break even at 128)
SPEC_DRAFTS = 4
SPEC_MAX_ROWS = 64
#: a row's pick in a speculative step when an accepted draft ended its output
_FINISHED_BY_DRAFT = -2


class _SpecStep:
    """One speculative step: each active row's drafts, how many of them a pick follows
    (all but an ending one), and those picks' bitmasks, row after row."""

    __slots__ = ("drafts", "masked", "masks")

    def __init__(self, drafts: list[list[int]], masked: list[int], masks: np.ndarray):
        self.drafts, self.masked, self.masks = drafts, masked, masks

    def state_index(self, feeds: list[list[int]], rows: list[int], stride: Optional[int] = None) -> np.ndarray:
        """Where the states that pick are among the new tokens of a pass over `feeds[i] +
        drafts[i]` per row (packed, or `stride` positions a row: the graph step's layout): for
        each of `rows`, its last fed token and the drafts a pick follows."""
        starts = np.arange(len(self.drafts)) * stride if stride is not None else \
            np.concatenate([[0], np.cumsum([len(f) + len(d) for f, d in zip(feeds, self.drafts)])])
        idx: list[int] = []
        for i in rows:
            last = int(starts[i]) + len(feeds[i]) - 1
            idx.extend(range(last, last + self.masked[i] + 1))
        return np.asarray(idx, dtype=np.int64)


def default_max_new_tokens(schema: Schema) -> int:
    """The default token budget of one output (end token included)."""
    return 4 * schema.max_query_chars + 2 * schema.intent_max_chars + 64


def resolve_device(device: Any, model: Any = None) -> torch.device:
    if device is None or device == "auto":
        if model is not None and hasattr(model, "parameters"):
            try:
                return next(model.parameters()).device
            except StopIteration:
                pass
        return canonical_device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return canonical_device(device)
    if isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device: {device!r} is not a torch device ({e})") from None
        return canonical_device(parsed)
    raise TypeError(f"device: expected 'auto', a str or a torch.device, got {type(device).__name__}")


def resolve_dtype(dtype: Any, device: torch.device, checkpoint_dtype: Any = None) -> Optional[torch.dtype]:
    """'auto': float32 on CPU; on GPUs the checkpoint's half dtype, else bfloat16 (float16
    where bf16 is unsupported). None means 'keep the loaded model's dtype'."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        if isinstance(checkpoint_dtype, str):
            checkpoint_dtype = _DTYPES.get(checkpoint_dtype)
        if checkpoint_dtype in (torch.bfloat16, torch.float16):
            return checkpoint_dtype
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"dtype: expected 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
        return _DTYPES[dtype.lower()]
    raise TypeError(f"dtype: expected 'auto', a str or a torch.dtype, got {type(dtype).__name__}")


def _vocab_for(tokenizer: Any, vocab_size: int) -> Vocab:
    """One Vocab per (tokenizer object, lm_head rows), shared by engines and processors."""
    try:
        with _VOCABS_LOCK:
            per = _VOCABS.setdefault(tokenizer, {})
    except TypeError:
        return Vocab.from_tokenizer(tokenizer, vocab_size=vocab_size)
    v = per.get(vocab_size)
    if v is None:
        v = Vocab.from_tokenizer(tokenizer, vocab_size=vocab_size)
        per[vocab_size] = v
    return v


def _check_positive_int(name: str, x: Any, allow_none: bool = True) -> Optional[int]:
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int{' or None' if allow_none else ''}, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{name}: must be >= 1, got {x}")
    return int(x)


def _check_queries(queries: Any) -> list[str]:
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries: expected a list of str, got a single "
                        f"{type(queries).__name__} (wrap one query in a list)")
    if not isinstance(queries, Iterable):
        raise TypeError(f"queries: expected a list of str, got {type(queries).__name__}")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}]: expected str, got {type(q).__name__}")
    return out


class Engine:
    """Loads a causal LM once and turns search queries into parsed `QPResult`s.

    model: a checkpoint directory (loaded offline with AutoModelForCausalLM/AutoTokenizer) or
        an already-loaded model (then pass its `tokenizer` too, unless the model's
        `name_or_path` is a local directory holding one).
    schema: the output schema; None: the checkpoint directory's own (`qpfast_schema.json`, also
        read from a loaded model's ``name_or_path``: `qpfast.model_schema`) when it has one,
        else `qpfast.DEFAULT_SCHEMA`.
    device: "auto" (CUDA when available; a loaded model's own device), "cpu", "cuda:0", ...
    dtype: "auto" (float32 on CPU, the checkpoint's bf16/fp16 on GPUs), "float32", "bfloat16",
        "float16".

    Options (also attributes; changing them between calls is allowed):
    batch_size (64 on CPU, 128 on GPUs), max_new_tokens (`default_max_new_tokens(schema)`),
    jump_forward (True), sparse_logits (64: the largest allowed set that gets gathered-row
    logits, at most 4096; 0 or False disables), reuse_prefix (True), overlap_masks (False: fill the masks
    in a worker thread during the forward pass instead of before it; cheaper fills, but
    single-choice steps then cost a forward pass each), attention ("auto": "kernels" on
    CUDA, "cascade" elsewhere; "kernels": every cache slot holds a copy of the shared prompt
    prefix; "cascade": the prefix is stored once and read once per step), runner ("auto":
    the own forward for Llama/Qwen2/Qwen3, else "hf": the model's own forward), cuda_graphs
    ("auto": on for the native runner on CUDA, in either attention layout; the decode step
    is replayed from CUDA graphs, one per batch bucket and number of tokens a row appends
    (1, 2, 4 or 8, fewer at large batches: `DecodeGraphs.max_tokens`), so rows take their
    forced tokens a few per step instead of all in one eager multi-token pass; True on CPU
    runs the same bucketed step without capture, for tests), graph_picks (True: with graphs,
    greedy decoding and masks filled before the forward pass, the graph also computes the
    full logits and each row's masked argmax, so a step costs one copy back instead of
    the sparse/dense pick's launches and synchronizations), chunked_prefill (True: with
    graphs, queries that join a running batch feed their prompt suffix through the graph
    steps, up to the step's tokens a row at a time, beside the other rows' decoding, instead
    of in an eager multi-token pass of their own; the first rows of a call still get one),
    screen_logits ("auto": on CPU with
    fp32 weights and a CPU with native bf16 dot products, greedy picks over large allowed
    sets compute the logits from a bf16 copy of the lm_head and recheck in fp32 only the ids
    within a rigorous error bound of the best: `qpfast.engine.screen`; True/False force it),
    speculate ("auto": on CPU, greedy, eager steps of at most 64 rows feed up to 4 draft tokens
    a row after its pending ones, looked up in its own tokens (`qpfast.engine.draft`); the
    step's picks verify them and the longest confirmed run is kept, so the tokens are the
    same in fewer passes; an int: that many drafts a row at any batch size, CUDA-graph steps
    included (within their tokens a row; "auto" drafts nothing there: on an H200 the host
    picks at every draft position cost more than the passes saved); 0: off), admission
    ("longest_first": when a call has more queries than the batch holds, they enter it in
    decreasing order of the fewest output tokens their matcher allows,
    `Matcher.remaining_min_tokens`, ties in the caller's order, so the long ones do not start
    last and leave a tail of near-empty steps; "in_order": the caller's order. Results
    always come back in the caller's order, and each query's tokens are the same either way).

    After each `generate`, `last_stats` holds counters and timings and `last_token_ids` the
    output token ids of each query (None for a query that got an error result).
    """

    def __init__(self, model: Any, tokenizer: Any = None, schema: Optional[Schema] = None, device: Any = "auto",
                 dtype: Any = "auto", *, batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
                 jump_forward: bool = True, sparse_logits: int | bool = 64, reuse_prefix: bool = True,
                 overlap_masks: bool = False, attention: str = "auto", runner: str = "auto",
                 cuda_graphs: bool | str = "auto", graph_picks: bool = True, chunked_prefill: bool = True,
                 screen_logits: bool | str = "auto",
                 speculate: int | str = "auto", admission: str = "longest_first"):
        if schema is None:
            schema = model_schema(model)
        if not isinstance(schema, Schema):
            raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
        if runner not in ("auto", "native", "hf"):
            raise ValueError(f"runner: expected 'auto', 'native' or 'hf', got {runner!r}")
        if attention not in ("auto", "cascade", "kernels"):
            raise ValueError(f"attention: expected 'auto', 'cascade' or 'kernels', got {attention!r}")
        if cuda_graphs not in ("auto", True, False):
            raise ValueError(f"cuda_graphs: expected 'auto', True or False, got {cuda_graphs!r}")
        if screen_logits not in ("auto", True, False):
            raise ValueError(f"screen_logits: expected 'auto', True or False, got {screen_logits!r}")
        self.schema = schema
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.max_new_tokens = _check_positive_int("max_new_tokens", max_new_tokens)
        self.jump_forward = bool(jump_forward)
        self.sparse_logits = sparse_logits
        self.reuse_prefix = bool(reuse_prefix)
        self.overlap_masks = bool(overlap_masks)
        self.graph_picks = bool(graph_picks)
        self.chunked_prefill = bool(chunked_prefill)
        self.screen_logits = screen_logits
        self.speculate = speculate
        self.admission = admission
        self._screen: Optional[LogitScreen] = None
        self._spec_mask: Optional[np.ndarray] = None

        self.model, self.tokenizer, self.device = self._load(model, tokenizer, device, dtype)
        self.model_name = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        self.vocab_size = lm_head_rows(self.model, self.tokenizer)
        if runner == "auto":
            runner = "native" if native_support(self.model) is None else "hf"
        if runner == "native":
            self.runner: Any = NativeRunner(self.model, self.device, attention)
        else:
            self.runner = HFRunner(self.model, self.device, self.vocab_size)
        graphs_ok = runner == "native"
        if cuda_graphs is True and not graphs_ok:
            raise ValueError(f"cuda_graphs: needs the native runner (runner={self.runner.kind!r})")
        if cuda_graphs is True or (cuda_graphs == "auto" and graphs_ok and self.device.type == "cuda"):
            self.runner.enable_graphs(capture=self.device.type == "cuda")
        self.vocab = _vocab_for(self.tokenizer, self.vocab_size)
        self.vocab.grammar(schema)                   # compile (vocabulary x schema) once, now
        self._prefixes: "OrderedDict[tuple, Any]" = OrderedDict()
        self._mask: Optional[np.ndarray] = None
        self._mask_t: Optional[torch.Tensor] = None  # the same memory as a tensor (pinned on CUDA)
        self._lock = threading.Lock()
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.last_stats: dict[str, Any] = {}
        self.last_token_ids: list[Optional[list[int]]] = []

    # -- loading -------------------------------------------------------------------------
    def _load(self, model: Any, tokenizer: Any, device: Any, dtype: Any):
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isdir(path):
                raise ValueError(f"model: {path!r} is not a directory (pass a local Hugging Face checkpoint "
                                 "directory or a loaded model)")
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
            dev = resolve_device(device)
            cfg = AutoConfig.from_pretrained(path, local_files_only=True)
            ck = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
            dt = resolve_dtype(dtype, dev, ck)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            m = AutoModelForCausalLM.from_pretrained(path, dtype=dt, local_files_only=True)
            m = m.to(dev).eval()
            return m, tokenizer, dev
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a checkpoint directory or a loaded torch model, got "
                            f"{type(model).__name__}")
        if tokenizer is None:
            src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
            if isinstance(src, str) and os.path.isdir(src):
                from transformers import AutoTokenizer
                tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
            else:
                raise TypeError("tokenizer: required when model is a loaded model (pass tokenizer=...)")
        if not hasattr(tokenizer, "get_vocab") or not hasattr(tokenizer, "encode"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        dev = resolve_device(device, model)
        if dtype is not None and dtype != "auto":
            model = model.to(resolve_dtype(dtype, dev))
        model = model.to(dev).eval()
        return model, tokenizer, dev

    # -- helpers -------------------------------------------------------------------------
    def _sparse_threshold(self) -> int:
        s = self.sparse_logits
        if s is True:
            s = 64
        if not s or not self.runner.supports_sparse:
            return 0
        return int(s)

    def _mask_buffer(self, rows: int) -> np.ndarray:
        if self._mask is None or self._mask.shape[0] < rows:
            # pinned on CUDA: the graph step copies mask rows to the device asynchronously
            self._mask_t = torch.zeros((rows, self.vocab.words), dtype=torch.int32,
                                       pin_memory=self.device.type == "cuda")
            self._mask = self._mask_t.numpy()
        return self._mask

    def _prefix_for(self, template: Any, stats: dict) -> Any:
        key = (id(template), tuple(template.prefix_ids))
        pk = self._prefixes.get(key)
        if pk is None:
            t0 = time.perf_counter()
            pk = self.runner.compute_prefix(template.prefix_ids)
            stats["prefix_forward_passes"] += 1
            stats["time_prefix"] += time.perf_counter() - t0
            self._prefixes[key] = pk
            while len(self._prefixes) > 8:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        return pk

    def clear_prefix_cache(self) -> None:
        self._prefixes.clear()

    def warmup(self, *, batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
               rules: Any = None, context: Any = None, sampling: bool = False,
               query: str = "兰蔻小黑瓶适合什么肤质") -> dict[str, Any]:
        """Pays the one-time costs of serving before the first request: the shared prompt
        prefix's KV (for `rules`/`context`), a KV cache of `batch_size` slots big enough for
        any query of the schema with `max_new_tokens` (defaults: the engine's), every CUDA
        graph a step of 1 to `batch_size` rows can replay (greedy; `sampling=True` adds the
        steps that leave the pick to the host), and one `generate([query])` for the eager
        paths (prefill, the picks, the matcher; a sampled one too with `sampling=True`).
        Later `generate` calls with the same or smaller settings then allocate no cache and
        capture no graph; a larger batch, budget or prompt prefix grows the cache, and the
        graphs are recorded again as steps need them.

        Returns what it did: `{"seconds", "graphs" (new graph shapes recorded),
        "cache_slots", "cache_positions", "cache_bytes"}`.
        """
        if not isinstance(query, str) or not normalize(query, self.schema):
            raise ValueError(f"query: expected a non-empty query string, got {query!r}")
        budget = _check_positive_int("max_new_tokens", max_new_tokens)
        bs = _check_positive_int("batch_size", batch_size)
        template, budget, bs = self._call_settings(budget, bs, rules, context)
        t0 = time.perf_counter()
        graphs = 0
        with self._lock, torch.inference_mode():
            stats = self._new_stats()
            self.runner.use_prefix(self._prefix_for(template, stats) if self.reuse_prefix else None)
            # the longest suffix: every query character as up to 4 byte tokens (+1: a leading
            # word-boundary token), then the template's tail
            own = (len(template.tail_ids) + 4 * self.schema.max_query_chars + 1
                   + (0 if self.reuse_prefix else len(template.prefix_ids)))
            self.runner.reserve(bs, own + budget + 1)
            g = getattr(self.runner, "graphs", None)
            if g is not None:
                modes = sorted({self.graph_picks and not self.overlap_masks} | ({False} if sampling else set()))
                if self._speculation_possible():       # with graphs: an int speculate > 0
                    # the speculative steps' graphs (greedy only), picking like the others
                    modes.append(EVERY_PICK if self.graph_picks and not self.overlap_masks else EVERY)
                graphs = g.warmup(bs, modes, mask_words=self.vocab.words)
        for temperature in (0.0, 1.0) if sampling else (0.0,):
            r = self.generate([query], max_new_tokens=budget, batch_size=bs, rules=rules, context=context,
                              temperature=temperature, seed=0)[0]
            if r.error is not None:
                raise ValueError(f"query: the warm-up query {query!r} was not served ({r.error})")
        cache = getattr(self.runner, "cache", None)
        return {"seconds": time.perf_counter() - t0, "graphs": graphs,
                "cache_slots": cache.slots if cache is not None else 0,
                "cache_positions": cache.capacity if cache is not None else 0,
                "cache_bytes": cache.nbytes() if cache is not None else 0}

    def _call_settings(self, budget: Optional[int], bs: Optional[int], rules: Any, context: Any):
        """(prompt template, token budget, batch size) of one call: its checked arguments, else
        the engine's options, else the defaults."""
        template = prompt_template(self.tokenizer, self.schema, rules, context)   # checks rules/context
        budget = budget or self.max_new_tokens or default_max_new_tokens(self.schema)
        return template, budget, bs or self.batch_size or self._default_batch_size()

    def _default_batch_size(self) -> int:
        return 128 if self.device.type == "cuda" else 64

    # -- generation ----------------------------------------------------------------------
    def generate(self, queries: Iterable[str], *, max_new_tokens: Optional[int] = None,
                 batch_size: Optional[int] = None, rules: Any = None, context: Any = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None,
                 progress: Optional[Callable[[int], Any]] = None) -> list[QPResult]:
        """Parsed results, one per query, in input order.

        A query that is empty after normalization (or cannot fit `max_new_tokens`) gets a
        result with `error` set; the others are unaffected. temperature 0 (default) is
        greedy; temperature > 0 samples (top_p nucleus), reproducibly with `seed`.
        `progress(n)` is called with the number of queries finished since the last call.
        """
        queries = _check_queries(queries)
        budget = _check_positive_int("max_new_tokens", max_new_tokens)
        bs = _check_positive_int("batch_size", batch_size)
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature: expected a float, got {type(temperature).__name__}")
        if not (float(temperature) >= 0.0 and np.isfinite(temperature)):
            raise ValueError(f"temperature: must be a finite number >= 0, got {temperature}")
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
            raise TypeError(f"top_p: expected a float, got {type(top_p).__name__}")
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if progress is not None and not callable(progress):
            raise TypeError(f"progress: expected a callable or None, got {type(progress).__name__}")
        template, budget, bs = self._call_settings(budget, bs, rules, context)
        with self._lock, torch.inference_mode():
            return self._generate(queries, template, budget, bs, float(temperature), float(top_p), seed, progress)

    def _new_stats(self) -> dict[str, Any]:
        return dict(queries=0, errors=0, forward_passes=0, prefix_forward_passes=0, prefill_forward_passes=0,
                    decode_forward_passes=0, row_forward_passes=0, output_tokens=0, picked_tokens=0,
                    jump_forward_tokens=0, single_choice_steps=0, sparse_logit_steps=0, dense_logit_steps=0,
                    screened_logit_steps=0, graph_pick_steps=0, draft_tokens=0, accepted_draft_tokens=0,
                    draft_host_picks=0, graph_positions=0,
                    time_total=0.0, time_setup=0.0, time_prefix=0.0, time_forward=0.0, time_logits=0.0,
                    time_masks=0.0, time_finish=0.0)

    def _generate(self, queries, template, budget, bs, temperature, top_p, seed, progress) -> list[QPResult]:
        t_start = time.perf_counter()
        stats = self._new_stats()
        stats.update(queries=len(queries), max_new_tokens=budget, batch_size=bs, runner=self.runner.kind,
                     attention=getattr(self.runner, "attention", None), jump_forward=self.jump_forward,
                     sparse_threshold=self._sparse_threshold(), reuse_prefix=self.reuse_prefix,
                     speculate=self.speculate, admission=self.admission,
                     chunked_prefill=self.chunked_prefill)
        schema = self.schema
        results: list[Optional[QPResult]] = [None] * len(queries)
        token_ids: list[Optional[list[int]]] = [None] * len(queries)
        seqs: list[Sequence] = []
        spec = temperature == 0.0 and self._speculation_possible()
        for i, q in enumerate(queries):
            norm = normalize(q, schema)
            if not norm:
                results[i] = QPResult(query=q, normalized=str(norm), truncated=norm.truncated,
                                      error="query: empty after normalization")
                continue
            try:
                m = Matcher(self.vocab, q, schema, max_tokens=budget)
            except ValueError as e:
                msg = str(e)
                if "max_tokens" in msg:
                    msg = f"max_new_tokens={budget} is too small for this query ({msg})"
                results[i] = QPResult(query=q, normalized=str(norm), truncated=norm.truncated, error=msg)
                continue
            p = template.encode(q)
            suffix = p.suffix_ids if self.reuse_prefix else p.prefix_ids + p.suffix_ids
            seqs.append(Sequence(i, q, m, suffix, drafts=DraftIndex(suffix) if spec else None))
        stats["time_setup"] = time.perf_counter() - t_start
        if seqs:
            prefix = self._prefix_for(template, stats) if self.reuse_prefix else None
            self.runner.use_prefix(prefix)
            bs = min(bs, len(seqs))
            own_cap = max(len(s.suffix_ids) for s in seqs) + budget + 1
            self.runner.reserve(bs, own_cap)
            gen = None
            if temperature > 0.0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
            graphs = getattr(self.runner, "graphs", None)
            at = graphs.positions if graphs is not None else 0
            self._loop(self._admission_order(seqs, bs), bs, temperature, top_p, gen, stats, results, token_ids,
                       progress)
            stats["graph_positions"] = graphs.positions - at if graphs is not None else 0
        stats["errors"] = sum(1 for r in results if r is not None and r.error is not None)
        stats["forward_passes"] = (stats["prefix_forward_passes"] + stats["prefill_forward_passes"]
                                   + stats["decode_forward_passes"])
        picks = stats["sparse_logit_steps"] + stats["dense_logit_steps"] + stats["graph_pick_steps"]
        stats["sparse_logit_share"] = stats["sparse_logit_steps"] / picks if picks else 0.0
        out_tok = stats["output_tokens"]
        stats["forward_passes_per_output_token"] = stats["forward_passes"] / out_tok if out_tok else 0.0
        stats["row_forward_passes_per_output_token"] = stats["row_forward_passes"] / out_tok if out_tok else 0.0
        stats["time_total"] = time.perf_counter() - t_start
        self.last_stats = stats
        self.last_token_ids = token_ids
        return results  # type: ignore[return-value]

    # -- the loop ------------------------------------------------------------------------
    def _advance(self, rows: list[tuple[int, Sequence, int]], mask: np.ndarray, stats: dict) -> None:
        """For each (slot, sequence, pick): accepts the pick (-1: none), jumps forward and
        fills the row's next mask in mask[slot] (`qpfast.matcher.advance_rows`, one C++
        call); with `overlap_masks` the masks are filled during the next forward pass instead."""
        t0 = time.perf_counter()
        live = [r for r in rows if not r[1].finished]
        if live:
            toks, rejected, _ = advance_rows([s.matcher for _, s, _ in live], [p for _, _, p in live], mask,
                                             [slot for slot, _, _ in live], jump_forward=self.jump_forward,
                                             fill=not self.overlap_masks)
            jumped = 0
            for (_, s, p), got, bad in zip(live, toks, rejected):
                if got:
                    s.accepted(got)
                    n = len(got) - (p >= 0)
                    s.jumped += n
                    jumped += n
                if bad >= 0:
                    s.error = f"decoder rejected token {bad} (internal error)"
            stats["jump_forward_tokens"] += jumped
        stats["time_masks"] += time.perf_counter() - t0

    def _pick(self, states: torch.Tensor, mask: np.ndarray, temperature: float, top_p: float,
              gen: Optional[torch.Generator], stats: dict) -> np.ndarray:
        """One token per row of `states` under the bitmask row of the same index."""
        n = states.shape[0]
        out = np.full(n, -1, dtype=np.int64)
        sparse_rows, ids, counts, dense_rows = split_rows(mask[:n], self._sparse_threshold())
        dev = self.device
        if sparse_rows.size:
            one = counts == 1
            if one.any():
                out[sparse_rows[one]] = ids[one, 0]
                stats["single_choice_steps"] += int(one.sum())
            rest = ~one
            if rest.any():
                rows = sparse_rows[rest]
                idt = torch.from_numpy(ids[rest][:, : int(counts[rest].max())]).to(dev)
                lg = self.runner.sparse_logits(states[torch.from_numpy(rows).to(dev)], idt)
                out[rows] = pick_sparse(lg, idt, temperature, top_p, gen).cpu().numpy()
                stats["sparse_logit_steps"] += int(rows.size)
        if dense_rows.size:
            rows_t = torch.from_numpy(dense_rows).to(dev)
            stats["dense_logit_steps"] += int(dense_rows.size)
            screen = self._logit_screen() if temperature == 0.0 else None
            got = screen.argmax(states[rows_t], mask[dense_rows]) if screen is not None else None
            if got is not None:
                out[dense_rows] = got
                stats["screened_logit_steps"] += int(dense_rows.size)
                return out
            lg = self.runner.full_logits(states[rows_t])
            todo = np.arange(dense_rows.size)
            if temperature == 0.0:
                # Greedy over a large allowed set: the unmasked argmax (lowest index among
                # equal maxima, like masked_argmax) is the answer whenever it is allowed;
                # only the other rows pay for expanding their bitmask.
                best = lg.argmax(dim=1).cpu().numpy()
                ok = allowed_at(mask, dense_rows, best)
                out[dense_rows[ok]] = best[ok]
                todo = np.flatnonzero(~ok)
            if todo.size:
                sel = torch.from_numpy(todo).to(dev) if todo.size < dense_rows.size else None
                bm = torch.from_numpy(mask[dense_rows[todo]]).to(dev)
                picked = pick_dense(lg if sel is None else lg[sel], bm, temperature, top_p, gen)
                out[dense_rows[todo]] = picked.cpu().numpy()
        return out

    @property
    def admission(self) -> str:
        """The order queries enter the batch in ("longest_first" or "in_order"; checked when set)."""
        return self._admission

    @admission.setter
    def admission(self, value: str) -> None:
        if value not in ADMISSIONS:
            raise ValueError(f"admission: expected one of {', '.join(map(repr, ADMISSIONS))}, got {value!r}")
        self._admission = value

    def _admission_order(self, seqs: list[Sequence], bs: int) -> list[Sequence]:
        """The order `seqs` enter a batch of `bs` rows in (see `admission`). Measured on CPU
        (bench/bench_admission.py, bench/RESULTS.md session 20): 256 shuffled test queries,
        batch 64, the default model: the CPU step 180 -> 169 decode passes (4.32 -> 3.87 s),
        the CUDA-graph step run on the CPU 269 -> 235; the same tokens."""
        if self.admission == "in_order" or len(seqs) <= bs:
            return seqs
        return sorted(seqs, key=lambda s: -s.matcher.remaining_min_tokens())

    # -- speculation -------------------------------------------------------------------
    @property
    def speculate(self) -> int | str:
        """Draft tokens a row ("auto", or an int >= 0; checked when set)."""
        return self._speculate

    @speculate.setter
    def speculate(self, value: int | str) -> None:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
            raise ValueError(f"speculate: expected 'auto' or an int >= 0 (drafts a row), got {value!r}")
        self._speculate = value if value == "auto" else int(value)

    def _speculation_possible(self) -> bool:
        """Whether any greedy step can carry drafts: the native runner with masks filled
        before the forward pass, and `speculate` an int > 0 (CUDA-graph steps included), or
        "auto" on CPU eager steps (a CPU step's cost grows with the positions it feeds, so
        drafts pay only where a step is mostly fixed cost; on CUDA "auto" drafts nothing:
        timed on an H200, bench/RESULTS.md run 13, they lost 0.110 -> 0.149 s). Otherwise no
        row keeps a `DraftIndex` (its upkeep was ~10% of a CUDA run that drafts nothing)."""
        if self.speculate == 0 or self.runner.kind != "native" or self.overlap_masks:
            return False
        if self.speculate == "auto":
            return self.device.type == "cpu" and getattr(self.runner, "graphs", None) is None
        return True

    def _spec_drafts(self, n_rows: int, temperature: float) -> int:
        """Drafts a row this step: `speculate` (an int; with CUDA graphs within the step's
        tokens a row), or with "auto" `SPEC_DRAFTS` at steps of at most `SPEC_MAX_ROWS` rows;
        none unless greedy and `_speculation_possible`."""
        if temperature > 0.0 or not self._speculation_possible():
            return 0
        if self.speculate == "auto":
            return SPEC_DRAFTS if n_rows <= SPEC_MAX_ROWS else 0
        return self.speculate

    def _draft(self, rows: list[Sequence], limits: list[int]) -> "_SpecStep":
        """Each row's drafts (up to `limits[i]` tokens from its `DraftIndex`, cut before the
        first one its matcher refuses and after one that ends the output) and the bitmask that
        follows each draft but an ending one (the matcher walks the drafts, then rolls back)."""
        need = sum(limits)
        if self._spec_mask is None or self._spec_mask.shape[0] < need:
            self._spec_mask = np.zeros((max(need, 1), self.vocab.words), dtype=np.int32)
        buf = self._spec_mask
        drafts: list[list[int]] = []
        masked: list[int] = []
        n = 0
        for s, k in zip(rows, limits):
            proposal = s.drafts.propose(k) if s.drafts is not None and k > 0 else []
            m = s.matcher
            ok: list[int] = []
            filled = 0
            for t in proposal:
                if not m.accept(t):
                    break
                ok.append(t)
                if m.is_finished():
                    break
                m.fill_bitmask(buf, n + filled)
                filled += 1
            if ok:
                m.rollback(len(ok))
            drafts.append(ok)
            masked.append(filled)
            n += filled
        return _SpecStep(drafts, masked, buf[:n])

    def _verify(self, active: list[Sequence], spec_rows: list[int], spec: "_SpecStep", states: torch.Tensor,
                mask: np.ndarray, new: list[Sequence], gen: Optional[torch.Generator], stats: dict) -> np.ndarray:
        """Picks every position of a speculative step (`states`: those of `spec.state_index`
        for the active rows `spec_rows`, then one per new row), accepts each of those rows'
        drafts up to the first its picks contradict, and returns one pick per picking row
        (`spec_rows`: the pick after the last accepted draft, or `_FINISHED_BY_DRAFT`; new rows:
        their pick)."""
        n_old, n = len(active), len(active) + len(new)
        first = np.concatenate([[0], np.cumsum(spec.masked)]).astype(np.int64)   # each row's draft bitmasks
        idx: list[int] = []                        # bitmask row of each state, in `states` order
        for i in spec_rows:                        # the drafts' bitmasks follow the rows' own
            idx.append(i)
            idx.extend(range(n + int(first[i]), n + int(first[i + 1])))
        idx.extend(range(n_old, n))
        both = np.concatenate([mask[:n], spec.masks])
        got = self._pick(states, both[idx], 0.0, 1.0, gen, stats)
        out = np.empty(len(spec_rows) + len(new), dtype=np.int64)
        pos = 0
        for r, i in enumerate(spec_rows):
            s, d, nm = active[i], spec.drafts[i], spec.masked[i]
            p = got[pos:pos + nm + 1]
            pos += nm + 1
            acc = 0
            while acc < len(d) and acc <= nm and p[acc] == d[acc]:
                acc += 1
            self._accept_drafts(s, d, acc, stats)
            out[r] = p[acc] if acc <= nm else _FINISHED_BY_DRAFT
        out[len(spec_rows):] = got[pos:]
        return out

    def _verify_graph(self, active: list[Sequence], spec_rows: list[int], spec: "_SpecStep", feeds: list[list[int]],
                      states: torch.Tensor, graph_picks: torch.Tensor, gen: Optional[torch.Generator],
                      stats: dict) -> np.ndarray:
        """`_verify` for a speculative graph step that picked (`DecodeGraphs.step` with
        `every` and a mask): `graph_picks[i, 0]` is row i's greedy pick after its pending
        tokens, `graph_picks[i, 1 + t]` the unmasked argmax after position t. The pick after
        an accepted draft is that argmax when the draft's bitmask allows it (then it is the
        masked argmax too: the lowest index among the allowed maxima); otherwise the host
        picks that position from `states` `[b, T, hidden]` (a batched `_pick` per round of
        such rows). Accepts each row's drafts up to the first its picks contradict; returns
        one pick per row of `spec_rows` (or `_FINISHED_BY_DRAFT`)."""
        got = graph_picks.cpu().numpy()
        stats["graph_pick_steps"] += len(spec_rows)
        first = np.concatenate([[0], np.cumsum(spec.masked)]).astype(np.int64)
        # whether the argmax after each draft is allowed by that draft's bitmask (spec.masks
        # row first[i] + j - 1 follows draft j - 1 of row i)
        mrow, argmax = [], []
        for i in spec_rows:
            base = len(feeds[i])
            mrow.extend(range(int(first[i]), int(first[i + 1])))
            argmax.extend(got[i, base + 1:base + 1 + spec.masked[i]])
        ok = allowed_at(spec.masks, np.asarray(mrow, dtype=np.int64), np.asarray(argmax, dtype=np.int64))
        allowed = np.zeros(len(spec.masks), dtype=bool)
        allowed[mrow] = ok
        out = np.empty(len(spec_rows), dtype=np.int64)
        todo = [(r, i, 0, int(got[i, 0])) for r, i in enumerate(spec_rows)]   # (row, slot, position, its pick)
        while todo:
            host: list[tuple[int, int, int]] = []
            for r, i, acc, pick in todo:
                d, nm, base = spec.drafts[i], spec.masked[i], len(feeds[i]) - 1
                to_host = False
                while acc < len(d) and acc <= nm and pick == d[acc]:
                    acc += 1
                    if acc > nm:                       # the accepted draft ended the output
                        break
                    pick = int(got[i, 1 + base + acc])
                    if not allowed[first[i] + acc - 1]:
                        to_host = True                 # not allowed: the host picks this position
                        break
                if to_host:
                    host.append((r, i, acc))
                    continue
                self._accept_drafts(active[i], d, acc, stats)
                out[r] = pick if acc <= nm else _FINISHED_BY_DRAFT
            todo = []
            if host:
                stats["draft_host_picks"] += len(host)
                at = torch.tensor([i * states.shape[1] + len(feeds[i]) - 1 + acc for _, i, acc in host],
                                  device=states.device)
                rows = np.stack([spec.masks[first[i] + acc - 1] for _, i, acc in host])
                picked = self._pick(states.reshape(-1, states.shape[-1])[at], rows, 0.0, 1.0, gen, stats)
                todo = [(r, i, acc, int(p)) for (r, i, acc), p in zip(host, picked)]
        return out

    @staticmethod
    def _accept_drafts(s: Sequence, drafts: list[int], n: int, stats: dict) -> None:
        """Row `s` keeps its first `n` drafts (their KV is in the cache already)."""
        for t in drafts[:n]:
            s.accept(t, fed=True)
        stats["draft_tokens"] += len(drafts)
        stats["accepted_draft_tokens"] += n

    def _logit_screen(self) -> Optional[LogitScreen]:
        """The bf16 screen of the lm_head for greedy dense picks, when it applies: the
        native runner on CPU with fp32 weights, `screen_logits` True, or "auto" on a CPU with
        native bf16 dot products."""
        mode = self.screen_logits
        if mode is False or self.runner.kind != "native" or self.device.type != "cpu":
            return None
        lm = self.runner.lm_head
        if lm.dtype != torch.float32 or (mode == "auto" and not cpu_has_bf16_dot()):
            return None
        if self._screen is None or self._screen.weight is not lm:
            self._screen = LogitScreen(lm, self.runner.lm_bias)
        return self._screen

    def _finish(self, s: Sequence, results: list, token_ids: list) -> None:
        raw = s.matcher.text()
        norm = s.matcher.normalized
        if s.error is not None:
            results[s.index] = QPResult(query=s.query, normalized=str(norm), truncated=norm.truncated, raw=raw,
                                        error=s.error)
            return
        try:
            r = parse(raw, s.query, self.schema, strict=True)
            r.raw = raw
        except ParseError as e:   # never expected: the matcher only allows valid outputs
            r = QPResult(query=s.query, normalized=str(norm), truncated=norm.truncated, raw=raw,
                         error=f"output does not parse: {e}")
        results[s.index] = r
        token_ids[s.index] = list(s.out_ids)

    def _loop(self, seqs: list[Sequence], bs: int, temperature: float, top_p: float,
              gen: Optional[torch.Generator], stats: dict, results: list, token_ids: list,
              progress: Optional[Callable[[int], Any]]) -> None:
        runner = self.runner
        graphs = getattr(runner, "graphs", None) is not None   # the CUDA-graph step (or its CPU run)
        mask = self._mask_buffer(bs)
        waiting = deque(seqs)
        active: list[Sequence] = []          # active[i] lives in KV slot i
        refill = max(1, bs // 4)
        if self.overlap_masks and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qpfast-masks")
        while waiting or active:
            # 1. admit
            n_old = len(active)
            free = bs - n_old
            new: list[Sequence] = []
            if waiting and free and (not active or free >= refill or len(waiting) <= free):
                for _ in range(min(free, len(waiting))):
                    s = waiting.popleft()
                    s.pending = list(s.suffix_ids)
                    new.append(s)
                self._advance([(n_old + j, s, -1) for j, s in enumerate(new)], mask, stats)
                if active and self.chunked_prefill and graphs:
                    # chunked prefill: the new rows' suffixes go through the graph steps
                    active, new = active + new, []
                    n_old = len(active)
            rows = active + new
            # 2. forward (masks of this step filled by _advance, or now, in parallel)
            fut = None
            if self.overlap_masks:
                fut = self._pool.submit(fill_bitmasks, [s.matcher for s in rows], mask[:len(rows)])
            t0 = time.perf_counter()
            # with CUDA graphs, active rows take at most runner.step_tokens pending tokens a
            # step (the graphs' shapes); a row with more forced tokens left skips the pick
            # until they are in
            cap = runner.step_tokens(n_old) if graphs and active else None
            feeds = [s.pending[:cap] for s in active] + [s.pending for s in new]
            parts = []
            graph_picks = None                  # the active rows' picks, from the graph step
            k = self._spec_drafts(n_old, temperature) if active else 0
            spec = None
            spec_picks = spec_states = None     # a speculative graph step's picks and states
            limits = [k if cap is None else max(0, min(k, cap - len(s.pending))) for s in active] if k else []
            if any(limits):
                # drafts for the rows whose pending tokens all go in this step, within the
                # graph step's tokens a row; a step where no row got one runs as usual (the
                # matchers are back where they were)
                spec = self._draft(active, limits)
                if not any(spec.drafts):
                    spec = None
                t_draft = time.perf_counter()   # the matchers' walk over the drafts is mask work
                stats["time_masks"] += t_draft - t0
                t0 = t_draft
            if active:
                if spec is not None:
                    # drafts after the pending tokens; the states of the last pending token and
                    # of every draft a pick follows, for the rows that pick this step
                    fed = [f + d for f, d in zip(feeds, spec.drafts)]
                    starts = [s.own_len for s in active]
                    spec_rows = [i for i, s in enumerate(active) if len(s.pending) == len(feeds[i])]
                    if graphs and self.graph_picks and not self.overlap_masks:
                        # the graph picks: each row's greedy pick after its pending tokens and
                        # the argmax after every position (`_verify_graph`)
                        spec_states, spec_picks = runner.decode_step(
                            fed, starts, mask=self._mask_t[:n_old], every=True,
                            pick_at=[len(f) - 1 for f in feeds[:n_old]])
                        parts.append(spec_states[:, 0])     # (the active rows pick from spec_picks)
                    else:
                        stride = runner.graphs.step_width(fed) if graphs else None
                        at = torch.from_numpy(spec.state_index(feeds, spec_rows, stride)).to(self.device)
                        if graphs:
                            out = runner.decode_step(fed, starts, every=True)          # [b, T, hidden]
                            flat = out.reshape(-1, out.shape[-1])
                        else:
                            flat = runner.forward(0, fed, starts, return_all=True)
                        parts.append(flat[at])
                elif graphs:
                    pick_mask = None
                    if self.graph_picks and temperature == 0.0 and not self.overlap_masks:
                        pick_mask = self._mask_t[:n_old]
                    out = runner.decode_step(feeds[:n_old], [s.own_len for s in active], mask=pick_mask)
                    if pick_mask is not None:
                        out, graph_picks = out
                    parts.append(out)
                else:
                    parts.append(runner.forward(0, feeds[:n_old], [s.own_len for s in active]))
                stats["decode_forward_passes"] += 1
            if new:
                parts.append(runner.forward(n_old, feeds[n_old:], [0] * len(new)))
                stats["prefill_forward_passes"] += 1
            states = parts[0] if len(parts) == 1 else torch.cat(parts)
            t1 = time.perf_counter()
            stats["time_forward"] += t1 - t0
            if fut is not None:
                fut.result()
                stats["time_masks"] += time.perf_counter() - t1
            for s, fed in zip(rows, feeds):
                s.own_len += len(fed)
                del s.pending[:len(fed)]
                s.forwards += 1
            stats["row_forward_passes"] += len(rows)
            # 3. pick, 4. accept + jump forward + next masks (rows with no pending tokens)
            ready = [i for i, s in enumerate(rows) if not s.pending]
            t2 = time.perf_counter()
            picks = np.empty(len(ready), dtype=np.int64)
            rest = ready                        # rows picked here, not by the graph
            if spec_picks is not None:          # the ready rows: spec_rows, then the new ones
                picks[:len(spec_rows)] = self._verify_graph(active, spec_rows, spec, feeds, spec_states,
                                                            spec_picks, gen, stats)
                rest = [i for i in ready if i >= n_old]
            elif spec is not None:
                rest = []
                picks[:] = self._verify(active, spec_rows, spec, states, mask, new, gen, stats)
            if graph_picks is not None:
                got = graph_picks.cpu().numpy()
                done_old = [j for j, i in enumerate(ready) if i < n_old]
                picks[done_old] = got[[ready[j] for j in done_old]]
                stats["graph_pick_steps"] += len(done_old)
                rest = [i for i in ready if i >= n_old]
            if rest:
                if len(rest) == len(rows):
                    pick_states, pick_mask = states, mask[:len(rows)]
                else:
                    pick_states = states[torch.tensor(rest, dtype=torch.long, device=states.device)]
                    pick_mask = mask[rest]
                picks[len(ready) - len(rest):] = self._pick(pick_states, pick_mask, temperature, top_p, gen, stats)
            stats["time_logits"] += time.perf_counter() - t2
            stats["picked_tokens"] += len(ready) - int((picks == _FINISHED_BY_DRAFT).sum())
            todo = []
            for i, t in zip(ready, picks.tolist()):
                if t == _FINISHED_BY_DRAFT:
                    continue
                if t < 0:
                    rows[i].error = "no allowed token (internal error)"
                else:
                    todo.append((i, rows[i], t))
            self._advance(todo, mask, stats)
            # 5. retire finished rows; the last active row moves into each hole
            t3 = time.perf_counter()
            done = 0
            for slot in range(len(rows) - 1, -1, -1):
                s = rows[slot]
                if not s.finished:
                    continue
                stats["output_tokens"] += len(s.out_ids)
                self._finish(s, results, token_ids)
                done += 1
                last = len(rows) - 1
                if slot != last:
                    runner.move_slot(last, slot, rows[last].own_len)
                    mask[slot] = mask[last]
                    rows[slot] = rows[last]
                rows.pop()
            active = rows
            stats["time_finish"] += time.perf_counter() - t3
            if done and progress is not None:
                progress(done)

    def __repr__(self) -> str:
        return (f"Engine(model={self.model_name!r}, runner={self.runner.kind!r}, device={str(self.device)!r}, "
                f"schema={self.schema.hash})")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
