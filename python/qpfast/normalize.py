"""`qpfast.normalize`: the one query normalization used in training, inference, parsing and eval."""
from __future__ import annotations

import re
import unicodedata

from .schema import DEFAULT_SCHEMA, Schema

_WS_RUN = re.compile(r"\s+")


class NormalizedQuery(str):
    """A normalized query (a `str`) that also says whether it was truncated."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> "NormalizedQuery":
        obj = super().__new__(cls, text)
        obj.truncated = truncated
        return obj

    def __reduce__(self):
        return (NormalizedQuery, (str(self), self.truncated))


def _drop_controls(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs" or (cat == "Cc" and not ch.isspace()):
            continue
        out.append(ch)
    return "".join(out)


def normalize(query: str, schema: Schema | None = None, *, max_chars: int | None = None) -> NormalizedQuery:
    """Normalize a raw query exactly as DESIGN.md §1 specifies.

    NFKC, lower-case, drop non-whitespace control characters and lone surrogates, collapse
    whitespace runs into one ASCII space and trim, truncate to `schema.max_query_chars` code
    points (or `max_chars`) and trim again. The result is a `str` with a `.truncated` flag.
    """
    if not isinstance(query, str):
        raise TypeError(f"query: expected str, got {type(query).__name__}")
    limit = max_chars if max_chars is not None else (schema or DEFAULT_SCHEMA).max_query_chars
    # NFKC would choke on lone surrogates only when encoding; drop them first so that the
    # NFKC step never sees them (they are removed by step 3 anyway).
    if any("\ud800" <= ch <= "\udfff" for ch in query):
        query = "".join(ch for ch in query if not "\ud800" <= ch <= "\udfff")
    text = unicodedata.normalize("NFKC", query).lower()
    text = _drop_controls(text)
    text = _WS_RUN.sub(" ", text).strip(" ")
    truncated = len(text) > limit
    if truncated:
        text = text[:limit].strip(" ")
    return NormalizedQuery(text, truncated)
