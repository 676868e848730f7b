"""`qpfast.Matcher`: the query-grounded constrained decoder for one query (C++ core)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from . import _C
from .normalize import normalize
from .schema import DEFAULT_SCHEMA, Schema
from .vocab import Vocab

#: rows one `fill_bitmasks` thread takes at least: a row costs ~1 µs and starting a thread
#: tens of µs, so threads pay only from ~512 rows (2-core CPU, 2026-11-28: 64 rows 49 µs on
#: one thread, 93-127 µs on two; 512 rows 389 vs 316 µs; in an engine run at batch 64 the
#: old rule, a second thread from 64 rows, made the calls 3.7x slower: 21 vs 5.7 ms)
ROWS_PER_THREAD = 256
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(rows: int) -> int:
    """Threads `fill_bitmasks` uses for `rows` matchers when not told."""
    return max(1, min(rows // ROWS_PER_THREAD, _CPUS))


def _as_mask_array(bitmask: Any, name: str = "bitmask"):
    """A writable int32 numpy view of a numpy array or a CPU torch tensor (no copy)."""
    if isinstance(bitmask, np.ndarray):
        if bitmask.dtype != np.int32:
            raise TypeError(f"{name}: expected dtype int32, got {bitmask.dtype}")
        return bitmask
    mod = type(bitmask).__module__
    if mod.startswith("torch"):
        import torch
        if bitmask.dtype != torch.int32:
            raise TypeError(f"{name}: expected dtype torch.int32, got {bitmask.dtype}")
        if bitmask.device.type != "cpu":
            raise ValueError(f"{name}: must be a CPU tensor (fill on CPU, then copy to {bitmask.device})")
        if not bitmask.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")
        return bitmask.numpy()
    raise TypeError(f"{name}: expected a numpy int32 array or a CPU torch.int32 tensor, got {type(bitmask).__name__}")


class Matcher:
    """Walks one query's output token by token and says which tokens may come next.

    The output is always valid qp-json/1 for *this* query: segments spell out the query,
    entities are spans of it in order, labels come from the schema, and with `max_tokens`
    only choices that can still finish within the budget (end token included) are allowed.
    """

    def __init__(self, vocab: Vocab, query: str, schema: Schema | None = None, max_tokens: int | None = None):
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab: expected qpfast.Vocab, got {type(vocab).__name__}")
        schema = schema or DEFAULT_SCHEMA
        if not isinstance(schema, Schema):
            raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens: expected a positive int or None, got {max_tokens!r}")
        self.query = query
        self.normalized = normalize(query, schema)
        if not self.normalized:
            raise ValueError(f"query: empty after normalization ({query!r})")
        self.vocab = vocab
        self.schema = schema
        self._m = _C.Matcher(vocab.grammar(schema), self.normalized.encode("utf-8"),
                             -1 if max_tokens is None else max_tokens)

    @property
    def max_tokens(self) -> int | None:
        b = self._m.max_tokens
        return None if b < 0 else b

    @property
    def num_tokens(self) -> int:
        return self._m.num_tokens

    def fill_bitmask(self, bitmask: Any, row: int = 0) -> None:
        """Writes the allowed-token bitmask into `bitmask[row]` (int32, ceil(V/32) words)."""
        self._m.fill_bitmask(_as_mask_array(bitmask), int(row), self.vocab.words)

    def accept(self, token_id: int) -> bool:
        """Advances by one token; returns False (and changes nothing) if it is not allowed."""
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise TypeError(f"token_id: expected int, got {type(token_id).__name__}")
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab.vocab_size:
            raise ValueError(f"token_id: {token_id} is not in [0, {self.vocab.vocab_size})")
        return self._m.accept(token_id)

    def rollback(self, n: int) -> None:
        self._m.rollback(int(n))

    def forced_tokens(self) -> list[int]:
        """Tokens that are the only choice at each of the next steps (canonical literal tokens)."""
        return self._m.forced_tokens()

    def is_finished(self) -> bool:
        """The end token has been accepted."""
        return self._m.is_finished()

    def is_complete(self) -> bool:
        """The JSON is complete; only an end token may follow."""
        return self._m.is_complete()

    def remaining_min_tokens(self) -> int:
        """Fewest tokens (end token included) that can still finish the output."""
        return self._m.remaining_min_tokens()

    def text(self) -> str:
        return self._m.text_bytes().decode("utf-8", "replace")

    def text_bytes(self) -> bytes:
        return self._m.text_bytes()


def mask_rows(bitmask: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a filled bitmask (int32 ``[rows, words]``, or one row ``[words]``): how many
    tokens it allows, ``k + 1`` standing for "more than k" (int64 ``[rows]``), and the
    allowed ids in ascending order for the rows that allow at most ``k`` (int64 ``[rows,
    k]``, padded with -1; all -1 for the others).  One pass over the words in C++ (GIL
    released), stopping at a row's ``k + 1``-th allowed token."""
    arr = _as_mask_array(bitmask)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected an int >= 0, got {k!r}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"bitmask: expected [rows, words] or [words], got shape {arr.shape}")
    rows = 1 if arr.ndim == 1 else arr.shape[0]
    counts = np.empty(rows, dtype=np.int64)
    ids = np.empty((rows, int(k)), dtype=np.int64)
    if rows:
        _C.mask_rows(arr, arr.shape[-1], int(k), counts, ids)
    return counts, ids


def _batch_of(matchers: Sequence[Matcher], nthreads: int | None) -> tuple[list, int, int]:
    """The C++ matchers of a non-empty batch, their bitmask row width and the thread count
    (checked: qpfast.Matcher items sharing one vocabulary size)."""
    words = matchers[0].vocab.words
    for m in matchers:
        if not isinstance(m, Matcher):
            raise TypeError(f"matchers: expected qpfast.Matcher items, got {type(m).__name__}")
        if m.vocab.words != words:
            raise ValueError("matchers: all matchers must share one vocabulary size")
    return [m._m for m in matchers], words, int(default_threads(len(matchers)) if nthreads is None else nthreads)


def fill_bitmasks(matchers: Sequence[Matcher], bitmask: Any, nthreads: int | None = None) -> None:
    """Row i of `bitmask` <- matchers[i]'s mask, in one call with the GIL released."""
    if not matchers:
        return
    ms, words, nthreads = _batch_of(matchers, nthreads)
    _C.fill_bitmasks(ms, _as_mask_array(bitmask), words, nthreads)


def advance_rows(matchers: Sequence[Matcher], picks: Sequence[int], bitmask: Any, slots: Sequence[int],
                 jump_forward: bool = True, fill: bool = True, nthreads: int | None = None
                 ) -> tuple[list[list[int]], list[int], list[bool]]:
    """One decoding step's host work for a batch of rows, in one call with the GIL released.

    For each row i: accepts ``picks[i]`` (-1: none), then, with `jump_forward`, the tokens
    its matcher forces; unless it finished (or `fill` is False: then it stops here), writes
    its next mask into ``bitmask[slots[i]]``; then, with `jump_forward`, while that mask
    allows a single token, accepts it and the tokens forced after it and refills the mask.
    Returns, per row, the tokens accepted (the pick first), the token the matcher refused
    (the row stops there; -1 when none) and whether its bitmask row now holds its next mask
    (False once it finished or failed).
    Matchers and slots must be distinct."""
    picks, slots = [int(p) for p in picks], [int(s) for s in slots]
    if len(picks) != len(matchers) or len(slots) != len(matchers):
        raise ValueError(f"picks, slots: expected one per matcher ({len(matchers)}), got {len(picks)} and {len(slots)}")
    if not matchers:
        return [], [], []
    ms, words, nthreads = _batch_of(matchers, nthreads)
    if any(not -1 <= p < 1 << 31 for p in picks):
        raise ValueError(f"picks: expected token ids or -1, got {[p for p in picks if not -1 <= p < 1 << 31][:3]}")
    return _C.advance_rows(ms, picks, slots, _as_mask_array(bitmask), words, bool(jump_forward), bool(fill),
                           nthreads)
