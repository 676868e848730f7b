"""The legacy pipeline's lexicon: gazetteer values with their type and domain, and a
longest-match gazetteer tagger over a normalized query.

The lexicon is built from one split's `qpfast.data.splits.Pool` (by default the train
split: the legacy system only knows the entities it has seen, so its test scores measure
what it does on unseen names).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.splits import Pool


@dataclass(frozen=True)
class Match:
    """A gazetteer hit: `text` = q[start:end]."""

    text: str
    type: str
    start: int
    end: int


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _same_class(a: str, b: str) -> bool:
    """Both ASCII letters or both ASCII digits."""
    return a.isascii() and b.isascii() and ((a.isalpha() and b.isalpha()) or (a.isdigit() and b.isdigit()))


class Lexicon:
    """value -> entity type, value -> (type, group) domains, and the gazetteer tagger."""

    def __init__(self, pool: Pool):
        self.types: dict[str, str] = {}
        self.domains: dict[str, set[tuple[str, str]]] = {}
        self.models: set[str] = set()

        def add(value: str, etype: str, group: str) -> None:
            self.types.setdefault(value, etype)
            self.domains.setdefault(value, set()).add((etype, group))

        for etype, table in pool.plain.items():
            for group, vals in table.items():
                for v in vals:
                    add(v, etype, group)
        for group, items in pool.products.items():
            for p in items:
                add(p.brand, "品牌", group)
                add(p.line, "产品", group)
        for group, items in pool.models.items():
            for m in items:
                add(m.brand, "品牌", group)
                if m.line:
                    add(m.line, "产品", group)
                add(m.model, "型号", group)
                self.models.add(m.model)
        # Short Latin/digit models ("6", "s7", "001") are only trusted right after a
        # product line or brand; everything else (of 2+ characters) is matched anywhere.
        self._free = {v for v in self.types if not (self.types[v] == "型号" and self._needs_anchor(v))}
        self._max_len = max((len(v) for v in self.types), default=1)

    @staticmethod
    def _needs_anchor(value: str) -> bool:
        return len(value) <= 3 and all(_ascii_alnum(c) for c in value)

    def _fits(self, q: str, start: int, end: int) -> bool:
        """A Latin/digit value must not be cut out of a longer run of letters or of digits
        (a letter/digit change is a boundary: ``iphone`` in ``iphone15``, not ``on`` in it)."""
        if start > 0 and _same_class(q[start - 1], q[start]):
            return False
        if end < len(q) and _same_class(q[end - 1], q[end]):
            return False
        return True

    def _longest(self, q: str, i: int, allowed) -> int:
        for length in range(min(self._max_len, len(q) - i), 0, -1):
            v = q[i:i + length]
            if v in allowed and v[-1] != " " and self._fits(q, i, i + length):
                return length
        return 0

    def tag(self, q: str) -> list[Match]:
        """Non-overlapping gazetteer matches, left to right, longest first at each position."""
        out: list[Match] = []
        i = 0
        while i < len(q):
            if q[i] == " ":
                i += 1
                continue
            anchored = out and out[-1].type in ("品牌", "产品") and out[-1].end in (i, i - 1)
            length = self._longest(q, i, self._free)
            if not length and anchored:
                length = self._longest(q, i, self.models)
            if length:
                v = q[i:i + length]
                etype = "型号" if (anchored and v in self.models and v not in self._free) else self.types[v]
                out.append(Match(v, etype, i, i + length))
                i += length
            else:
                i += 1
        return out
