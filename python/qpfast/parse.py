"""`qpfast.parse`: qp-json/1 text -> `QPResult` (C++ parser; strict or lenient)."""
from __future__ import annotations

import codecs

from . import _C
from .normalize import normalize
from .result import Entity, QPResult, Term
from .schema import DEFAULT_SCHEMA, Schema


class ParseError(ValueError):
    """A text that is not valid qp-json/1 for its query.

    `pos` is the code-point offset of the first offending character in the text, `byte_pos`
    the byte offset in its UTF-8 encoding, `reason` what rule it breaks.
    """

    def __init__(self, reason: str, text: str, byte_pos: int, pos: int):
        self.reason, self.text, self.byte_pos, self.pos = reason, text, byte_pos, pos
        snippet = text[max(0, pos - 12): pos + 12]
        super().__init__(f"{reason} at char {pos} (byte {byte_pos}): ...{snippet!r}...")

    def __reduce__(self):
        # the default would call ParseError(message): keep it picklable (multiprocessing)
        return (ParseError, (self.reason, self.text, self.byte_pos, self.pos))


def _as_utf8(text: str | bytes, name: str) -> bytes:
    if isinstance(text, bytes):
        return text
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    raise TypeError(f"{name}: expected str or bytes, got {type(text).__name__}")


def _char_pos(data: bytes, byte_pos: int, errors: str) -> int:
    """The code-point offset of the character that contains byte `byte_pos`.

    An incremental decode of the bytes before it holds back a character that the offending
    byte is in the middle of (a mismatch at the 2nd byte of 类 in 品类 vs 品牌 is at 类,
    not after it), and agrees with decoding the whole text (`errors` as for `raw`).
    """
    if byte_pos <= 0:
        return 0
    dec = codecs.getincrementaldecoder("utf-8")(errors)
    return len(dec.decode(data[:byte_pos], final=False))


def result_from_parsed(d: dict, query: str, norm, raw: str | None) -> QPResult:
    return QPResult(
        query=query, normalized=str(norm), truncated=bool(getattr(norm, "truncated", False)),
        entities=[Entity(*e) for e in d["entities"]],
        terms=[Term(*t) for t in d["terms"]],
        category=d["cat"], intent=d["intent"], raw=raw, error=d["error"],
    )


def parse(text: str | bytes, query: str, schema: Schema | None = None, strict: bool = True) -> QPResult:
    """Parse generated `text` for the raw `query`.

    strict=True accepts exactly the language the constrained decoder enforces (canonical
    JSON, keys in schema order, every grounding rule) and raises `ParseError` with the
    position of the first error. strict=False never raises on any str/bytes: it recovers
    what it can (truncated JSON, whitespace, key order, escapes) and lists what it dropped
    in `result.error`.
    """
    schema = schema or DEFAULT_SCHEMA
    if not isinstance(schema, Schema):
        raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
    if not isinstance(query, str):
        raise TypeError(f"query: expected str, got {type(query).__name__}")
    data = _as_utf8(text, "text")
    errors = "surrogatepass" if isinstance(text, str) else "replace"
    raw = text if isinstance(text, str) else data.decode("utf-8", errors)
    norm = normalize(query, schema)
    d = _C.parse(data, str(norm).encode("utf-8"), schema.compiled(), bool(strict))
    if strict and not d["ok"]:
        pos = _char_pos(data, d["err_byte"], errors)
        raise ParseError(d["error"], raw, d["err_byte"], pos)
    return result_from_parsed(d, query, norm, raw)
