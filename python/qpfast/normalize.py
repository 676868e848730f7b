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


# Step 3's characters: Cc that are not whitespace (Cc exists only below U+00A0) and the
# surrogates (Cs). One regex substitution instead of a per-character category lookup.
_DROP = re.compile("[" + "".join(
    re.escape(chr(c)) for c in range(0xA0)
    if unicodedata.category(chr(c)) == "Cc" and not chr(c).isspace()) + "\ud800-\udfff]")


def _drop_controls(text: str) -> str:
    return _DROP.sub("", text)


def normalize(query: str, schema: Schema | None = None, *, max_chars: int | None = None) -> NormalizedQuery:
    """Normalize a raw query exactly as DESIGN.md §1 specifies.

    NFKC, lower-case (both repeated while lower-casing un-normalizes the text), drop
    non-whitespace control characters and lone surrogates (before NFKC, so that they cannot
    block a composition), collapse whitespace runs into one ASCII space and trim, truncate to `schema.max_query_chars` code
    points (or `max_chars`) and trim again. The result is a `str` with a `.truncated` flag.
    """
    if not isinstance(query, str):
        raise TypeError(f"query: expected str, got {type(query).__name__}")
    if schema is not None and not isinstance(schema, Schema):
        raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0):
        raise ValueError(f"max_chars: expected a non-negative int, got {max_chars!r}")
    limit = max_chars if max_chars is not None else (schema or DEFAULT_SCHEMA).max_query_chars
    # Step 3 (drop non-whitespace controls and lone surrogates) runs before NFKC: the two
    # commute except that a dropped character between a letter and a combining mark would
    # block their composition, leaving a decomposed result ("e\x00\u0301" -> "e\u0301")
    # that normalizes differently a second time ("é"). Dropping them first keeps
    # normalize idempotent: normalize(normalize(q)) == normalize(q). NFKC and lower() never
    # produce Cc or Cs characters, so nothing is left to drop afterwards.
    text = _drop_controls(query)
    if text.isascii():  # NFKC leaves ASCII as it is
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKC", text).lower()
        # lower() can undo NFKC: "İ" lowers to "i\u0307", which must come after a
        # combining mark of a lower class that followed it ("İﾞ" -> "i\u0307\u3099" is not
        # in canonical order). Repeat the two steps until they change nothing, so that the
        # result is NFKC and lower-case and normalize is idempotent (in practice once more).
        for _ in range(4):
            if unicodedata.is_normalized("NFKC", text):
                break
            text = unicodedata.normalize("NFKC", text).lower()
    text = _WS_RUN.sub(" ", text).strip(" ")
    truncated = len(text) > limit
    if truncated:
        text = text[:limit].strip(" ")
    return NormalizedQuery(text, truncated)
