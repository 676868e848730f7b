"""`qpfast.hf.LogitsProcessor`: qpfast's constraints for users of `model.generate`.

    proc = qpfast.hf.LogitsProcessor(tokenizer, schema, queries, max_new_tokens=128)
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=128,
                         eos_token_id=proc.end_token_ids, pad_token_id=...)
    results = proc.results(out[:, inputs["input_ids"].shape[1]:])

Batch row i of `input_ids` belongs to query `i // (rows // len(queries))` (so
`num_return_sequences` / beams work: their rows are contiguous). A processor can be reused
for another `generate` call over the same queries (a shorter input starts over). Each row has its own
`qpfast.Matcher`, fed the tokens generated so far at every call; rows whose tokens change
between calls (beam reordering) are re-synchronized with `rollback`. Pass the same
`max_new_tokens` to the processor and to `generate` so every output is complete.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from .matcher import Matcher, fill_bitmasks
from .normalize import normalize
from .parse import ParseError, parse
from .result import QPResult
from .schema import Schema, model_schema

__all__ = ["LogitsProcessor"]

try:  # a real subclass when transformers is installed (model.generate checks nothing, but be nice)
    from transformers import LogitsProcessor as _HFBase
except Exception:  # pragma: no cover
    _HFBase = object


class LogitsProcessor(_HFBase):
    """Masks every token that would make a row's output invalid qp-json/1 for its query.

    tokenizer: the model's Hugging Face tokenizer; schema: `qpfast.Schema` (None: the schema the
    engine would serve, `qpfast.model_schema(tokenizer)`: its checkpoint's, else the default);
    queries: the raw queries, one per prompt in the batch (in batch order);
    max_new_tokens: the token budget (end token included) passed to each matcher.
    A query that is empty after normalization gets no matcher: its row may only emit an end
    token (its result says so).
    """

    def __init__(self, tokenizer: Any, schema: Optional[Schema] = None, queries: Sequence[str] = (),
                 max_new_tokens: Optional[int] = None):
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if schema is None:
            schema = model_schema(tokenizer)     # its checkpoint's qpfast_schema.json, else the default
        if not isinstance(schema, Schema):
            raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise TypeError(f"queries: expected a list of str, got {type(queries).__name__}")
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"queries[{i}]: expected str, got {type(q).__name__}")
        if not queries:
            raise ValueError("queries: must not be empty")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens: expected a positive int or None, got {max_new_tokens!r}")
        self.tokenizer, self.schema, self.queries = tokenizer, schema, list(queries)
        self.max_new_tokens = max_new_tokens
        self.vocab = None
        self._matchers: list[Optional[Matcher]] = []
        self._errors: list[Optional[str]] = []
        self._history: list[list[int]] = []
        self._prompt_len: Optional[int] = None
        self._last_len = 0
        self._mask: Optional[torch.Tensor] = None

    def reset(self) -> None:
        """Forget the current generation (the next call starts a new one; also detected
        automatically when the input gets shorter)."""
        self._prompt_len = None
        self._last_len = 0

    @property
    def end_token_ids(self) -> list[int]:
        """The end tokens the matchers accept (pass them to generate as eos_token_id)."""
        if self.vocab is None:
            return _end_ids(self.tokenizer)
        return list(self.vocab.end_ids)

    def _setup(self, rows: int, vocab_size: int) -> None:
        from .engine.engine import _vocab_for
        n = len(self.queries)
        if rows % n != 0:
            raise ValueError(f"queries: the batch has {rows} rows, not a multiple of the {n} queries")
        per = rows // n
        self.vocab = _vocab_for(self.tokenizer, max(vocab_size, len(self.tokenizer)))
        self._matchers, self._errors = [], []
        for r in range(rows):
            q = self.queries[r // per]
            try:
                self._matchers.append(Matcher(self.vocab, q, self.schema, max_tokens=self.max_new_tokens))
                self._errors.append(None)
            except ValueError as e:
                self._matchers.append(None)
                self._errors.append(str(e))
        self._history = [[] for _ in range(rows)]
        self._mask = torch.zeros((rows, self.vocab.words), dtype=torch.int32)
        self._ends = torch.zeros(self.vocab.words, dtype=torch.int32)
        ends = np.zeros(self.vocab.words * 32, dtype=bool)
        ends[self.vocab.end_ids] = True
        self._ends = torch.from_numpy(np.packbits(ends, bitorder="little").view(np.int32).copy())

    def _sync(self, r: int, generated: list[int]) -> None:
        m, h = self._matchers[r], self._history[r]
        c = 0
        while c < len(h) and c < len(generated) and h[c] == generated[c]:
            c += 1
        if c < len(h):
            m.rollback(len(h) - c)
            del h[c:]
        for t in generated[c:]:
            if m.is_finished():
                break          # padding after the end token
            if not m.accept(int(t)):
                self._errors[r] = f"token {t} is not allowed here (was the processor skipped?)"
                break
            h.append(int(t))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab_size = scores.shape
        length = input_ids.shape[1]
        if (self._prompt_len is None or len(self._matchers) != rows or length <= self._last_len):
            self._prompt_len = length          # a new generate() call: start over
            self._setup(rows, vocab_size)
        self._last_len = length
        gen = input_ids[:, self._prompt_len:].tolist()
        live = []
        for r in range(rows):
            if self._matchers[r] is not None:
                self._sync(r, gen[r])
                if not self._matchers[r].is_finished():
                    live.append(r)
        mask = self._mask
        mask[:] = self._ends            # finished / matcher-less rows: end tokens only
        if live:
            if len(live) == rows:
                fill_bitmasks(self._matchers, mask)
            else:
                tmp = torch.empty((len(live), mask.shape[1]), dtype=torch.int32)
                fill_bitmasks([self._matchers[r] for r in live], tmp)
                mask[live] = tmp
        from . import kernels
        bm = mask.to(scores.device)
        if bm.shape[1] * 32 < vocab_size:
            raise ValueError(f"scores: {vocab_size} columns but the vocabulary has {self.vocab.vocab_size}")
        return kernels.apply_bitmask_(scores, bm)

    def results(self, generated_ids: Any) -> list[QPResult]:
        """Parsed results for the generated part of `generate`'s output (rows in batch
        order; `[rows, new_tokens]`), end and padding tokens stripped."""
        rows = generated_ids.tolist() if hasattr(generated_ids, "tolist") else list(generated_ids)
        per = max(1, len(rows) // len(self.queries))
        ends = set(self.vocab.end_ids if self.vocab is not None else _end_ids(self.tokenizer))
        out = []
        for r, ids in enumerate(rows):
            q = self.queries[min(r // per, len(self.queries) - 1)]
            cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
            if r < len(self._matchers) and self._matchers[r] is not None:
                self._sync(r, ids[:cut])
                text = self._matchers[r].text()       # the exact output bytes
            else:
                text = self.tokenizer.decode(ids[:cut], skip_special_tokens=False)
            norm = normalize(q, self.schema)
            try:
                res = parse(text, q, self.schema, strict=True)
                res.raw = text
            except ParseError as e:
                res = QPResult(query=q, normalized=str(norm), truncated=norm.truncated, raw=text,
                               error=f"output does not parse: {e}")
            if not norm:
                res = QPResult(query=q, normalized="", truncated=norm.truncated, raw=text,
                               error="query: empty after normalization")
            out.append(res)
        return out


def _end_ids(tokenizer: Any) -> list[int]:
    from .vocab import _END_TOKEN_TEXTS
    vocab = tokenizer.get_vocab()
    ends = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ends.add(eos)
    for t in _END_TOKEN_TEXTS:
        if t in vocab and t in {str(x.content) for x in getattr(tokenizer, "added_tokens_decoder", {}).values()}:
            ends.add(vocab[t])
    return sorted(ends)
