"""Common Chinese words from jieba's dictionary, for the stage-1 stream.

The legacy pipeline segments with jieba, so it knows ~350k dictionary words; a model that
only reads queries built from a few hundred templates knows the words of those templates.
Real query logs carry the whole language. `common_words(n)` gives the `n` most frequent
dictionary words made only of Han characters (1-4 of them) with sampling weights ∝ √freq,
so the stream (`qpfast.data.stream`, `word_share`) can put them in query frames and the
legacy pipeline's pseudo-labels teach their boundaries, weights and category cues.
"""
from __future__ import annotations

import functools
import math
import os
import re

_HAN_WORD = re.compile(r"^[\u4e00-\u9fff]{1,4}$")


def _dictionary_path() -> str:
    try:
        import jieba
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"common_words needs jieba's dictionary (pip install jieba): {e}") from None
    return os.path.join(os.path.dirname(jieba.__file__), "dict.txt")


@functools.lru_cache(maxsize=4)
def common_words(n: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The `n` most frequent Han-only words (1-4 characters) of jieba's dictionary, most
    frequent first (ties in dictionary order), and their weights √freq."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    rows = []
    with open(_dictionary_path(), encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.split()
            if len(parts) >= 2 and _HAN_WORD.match(parts[0]):
                rows.append((-int(parts[1]), i, parts[0]))
    rows.sort()
    top = rows[:n]
    return tuple(w for _, _, w in top), tuple(math.sqrt(-f) for f, _, _ in top)
