"""Draft tokens for speculative steps, looked up in a sequence's own tokens.

A QP output repeats its input: segments and entities are spans of the query, and the term
list repeats the segments. So the tokens that followed the last time a sequence's latest
1-4 tokens occurred (in its prompt suffix or its output so far) are a good guess of what
comes next (prompt-lookup decoding). The engine feeds such drafts after a row's pending
tokens and keeps the longest run of them that its greedy picks confirm, so the tokens are
the same as without drafts.

`DraftIndex` keeps, for every n-gram (n <= `max_n`) of the tokens seen so far, where the
tokens after its latest occurrence start; appending a token and proposing drafts cost
O(max_n) dictionary operations.
"""
from __future__ import annotations

from typing import Iterable


class DraftIndex:
    """The token history of one sequence and its n-gram continuations."""

    __slots__ = ("tokens", "max_n", "_next")

    def __init__(self, tokens: Iterable[int] = (), max_n: int = 4):
        if max_n < 1:
            raise ValueError(f"max_n: must be >= 1, got {max_n}")
        self.tokens: list[int] = []
        self.max_n = max_n
        self._next: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def append(self, token: int) -> None:
        toks = self.tokens
        end = len(toks)
        for n in range(1, min(self.max_n, end) + 1):
            self._next[tuple(toks[end - n:end])] = end      # the n-gram before `token` continues at `end`
        toks.append(int(token))

    def extend(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.append(t)

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the longest
        (at most `max_n`) suffix of the history seen before; [] when there is none."""
        toks = self.tokens
        end = len(toks)
        for n in range(min(self.max_n, end), 0, -1):
            start = self._next.get(tuple(toks[end - n:]))
            if start is not None:
                return toks[start:start + k]
        return []
