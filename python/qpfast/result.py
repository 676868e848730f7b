"""Typed results: `QPResult` with its `Entity` and `Term` parts (DESIGN.md §3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Entity:
    """A named entity: `text` is `normalized[start:end]` (code-point offsets)."""

    text: str
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class Term:
    """A segment with its weight level; `start:end` spans it in the normalized query
    (a segment may straddle a space of the query: `text` never contains one)."""

    text: str
    weight: Optional[int]
    start: int
    end: int


@dataclass
class QPResult:
    """One query's parsed QP output.

    `error` is None for a complete, valid result. It is set when the query could not be
    processed (empty after normalization, ...) or, for lenient parses, to what was dropped.
    `raw` is the generated text the result was parsed from.
    """

    query: str
    normalized: str
    truncated: bool = False
    entities: list[Entity] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    category: Optional[str] = None
    intent: Optional[str] = None
    raw: Optional[str] = field(default=None, compare=False)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def segments(self) -> list[str]:
        return [t.text for t in self.terms]

    @property
    def weights(self) -> list[Optional[int]]:
        return [t.weight for t in self.terms]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["entities"] = [asdict(e) for e in self.entities]
        d["terms"] = [asdict(t) for t in self.terms]
        return d

    def __repr__(self) -> str:
        ents = ", ".join(f"{e.text}/{e.type}" for e in self.entities)
        terms = " ".join(t.text if t.weight is None else f"{t.text}:{t.weight}" for t in self.terms)
        parts = [f"query={self.query!r}"]
        if self.normalized != self.query:
            parts.append(f"normalized={self.normalized!r}")
        if self.truncated:
            parts.append("truncated=True")
        parts += [f"entities=[{ents}]", f"terms=[{terms}]", f"category={self.category!r}",
                  f"intent={self.intent!r}"]
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        return "QPResult(" + ", ".join(parts) + ")"
