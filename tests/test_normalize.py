"""qpfast.normalize, exactly as DESIGN.md §1: NFKC, lower, drop non-whitespace Cc and lone
surrogates, whitespace runs -> one space, trim, truncate to max_query_chars code points,
trim again; `.truncated` says whether it cut."""
from __future__ import annotations

import pickle
import re
import sys
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import hostile_queries, normalized_queries

from qpfast import DEFAULT_SCHEMA, NormalizedQuery, Schema, normalize


def reference(query: str, limit: int = 64) -> tuple[str, bool]:
    """DESIGN.md §1 written out character by character (no regex).

    Two deliberate departures from the letter of DESIGN §1, both needed for idempotence
    (normalize(normalize(q)) == normalize(q)):
    - step 3 (dropping non-whitespace controls and lone surrogates) is done before NFKC: the
      design's order lets a dropped control block a composition ("e\\x00\\u0301" ->
      "e\\u0301"); see test_control_between_composing_chars;
    - NFKC + lower are repeated until stable: lower() can un-normalize ("İﾞ" -> "i\\u0307\\u3099",
      not in canonical order); see test_lower_then_nfkc.
    """
    kept = "".join(ch for ch in query
                   if unicodedata.category(ch) != "Cs"
                   and not (unicodedata.category(ch) == "Cc" and not ch.isspace()))
    text = unicodedata.normalize("NFKC", kept).lower()
    for _ in range(4):  # lower() may un-normalize: repeat until stable (see test_lower_then_nfkc)
        again = unicodedata.normalize("NFKC", text).lower()
        if again == text:
            break
        text = again
    out: list[str] = []
    for ch in text:
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
            elif not out:
                continue
        else:
            out.append(ch)
    while out and out[-1] == " ":
        out.pop()
    truncated = len(out) > limit
    if truncated:
        out = out[:limit]
        while out and out[-1] == " ":
            out.pop()
    return "".join(out), truncated


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)  # surrogates included


# -- hand cases --------------------------------------------------------------------------

CASES = [
    ("", ""),
    ("   ", ""),
    ("兰蔻小黑瓶适合什么肤质", "兰蔻小黑瓶适合什么肤质"),
    ("ＡＢＣ１２３", "abc123"),  # full-width letters and digits
    ("ｉＰｈｏｎｅ　１５　Ｐｒｏ", "iphone 15 pro"),  # U+3000 ideographic space (NFKC -> space)
    ("（＂ａ＼ｂ＂）", '("a\\b")'),  # full-width punctuation, quote, backslash
    ("Hello\tWorld\n", "hello world"),
    ("  a \t\n\r\n b  ", "a b"),
    ("a\u00a0\u2003\u2028\u2029\u1680b", "a b"),
    ("a\x1c\x1d\x1e\x1fb", "a b"),  # information separators are whitespace (str.isspace)
    ("a\x85b", "a b"),  # NEL: a Cc that is whitespace -> space
    ("a\x0b\x0cb", "a b"),
    ("a\x00b\x07c\x1b\x7fd\x80\x9fe", "abcde"),  # non-whitespace Cc dropped
    ("a\ud800b\udfffc", "abc"),  # lone surrogates dropped
    ("\x00 a \x00", "a"),
    ("a \x00 b", "a b"),  # the dropped control leaves one whitespace run
    ("a\u200bb\u200dc\ufeffd", "a\u200bb\u200dc\ufeffd"),  # format characters (Cf) stay
    ("SU7 Pro", "su7 pro"),
    ("İ", "i\u0307"),  # lower() of dotted I is two code points
    ("ΑΣ ΑΣΑ", "ας ασα"),  # final sigma
    ("ẞ", "ß"),
    ("ﬁ①㍻Ⅻµ", "fi1平成xiiμ"),
    ("e\u0301", "\xe9"),  # NFKC composes
    ("\u1100\u1161", "\uac00"),  # Hangul jamo compose
    ("ｶﾞ", "ガ"),  # half-width katakana + voiced mark compose
    ("Ω K Å", "ω k å"),  # ohm, kelvin, angstrom signs
    ("👩\u200d👩\u200d👧 👍🏽", "👩\u200d👩\u200d👧 👍🏽"),  # emoji untouched
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_hand_cases(raw, expected):
    got = normalize(raw)
    assert got == expected
    assert isinstance(got, str) and isinstance(got, NormalizedQuery)
    assert got.truncated is False
    assert reference(raw) == (expected, False)


def test_control_between_composing_chars():
    # Dropping a control must not leave a decomposed sequence behind: the result is
    # normalized once and for all (idempotent).
    for raw, expected in [("e\x00\u0301", "\xe9"), ("e\x7f\u0301", "\xe9"), ("a\x9f\u0308", "\xe4"),
                          ("\u1100\x01\u1161", "\uac00"), ("e\ud800\u0301", "\xe9")]:
        got = normalize(raw)
        assert got == expected, ascii(got)
        assert normalize(got) == got
    # a whitespace control separates: it becomes a space and composition does not happen
    assert normalize("e\t\u0301") == "e \u0301"


def test_lower_then_nfkc():
    # İ lowers to i + U+0307 (class 230), which must then move after U+3099 (class 8)
    for raw, expected in [("İﾞ", "i\u3099\u0307"), ("İ\u3099", "i\u3099\u0307"),
                          ("İ\u0323", "\u1ecb\u0307")]:
        got = normalize(raw)
        assert got == expected, ascii(got)
        assert normalize(got) == got and unicodedata.is_normalized("NFKC", got)


# Characters whose case mapping or composition interact: cased letters with special lower
# mappings, combining marks of several classes, compatibility characters, Hangul.
CASE_MIX = st.text(st.sampled_from(
    list("İIiΣσςΑΆẞßǄǅǆﬃÅKΩΐΰϴϹᾈᾼ\u1e9eⅠⅰⒶⓐＡｶﾞﾟ") +
    ["\u0307", "\u0301", "\u0323", "\u0345", "\u3099", "\u309a", "\u05b0", "\u0f71", "\u0e48", "\u0308",
     "\u0342", "\u1100", "\u1161", "\u11a8", "\u13a0", "\uab70", "\u1d2c", "\u1fbe", "e", " ", "\x00", "\t"]),
    max_size=12)


@settings(max_examples=800, deadline=None)
@given(CASE_MIX)
@example("İﾞ")
def test_idempotent_on_case_and_mark_mixes(raw):
    got = normalize(raw)
    assert normalize(got) == got, ascii(got)
    assert (str(got), got.truncated) == reference(raw)
    assert unicodedata.is_normalized("NFKC", got) and got.lower() == got


# -- truncation --------------------------------------------------------------------------

def test_truncation_at_64_code_points():
    assert normalize("a" * 64) == "a" * 64 and not normalize("a" * 64).truncated
    t = normalize("a" * 65)
    assert t == "a" * 64 and t.truncated
    t = normalize("😀" * 70)  # code points, not UTF-16 units or bytes
    assert t == "😀" * 64 and t.truncated
    t = normalize("中" * 64 + " ")  # trailing space is trimmed before the limit applies
    assert t == "中" * 64 and not t.truncated
    t = normalize("a" * 63 + " b")  # the cut leaves a trailing space: trimmed again
    assert t == "a" * 63 and t.truncated
    t = normalize("a" * 63 + "\t\t\n b")  # the run collapses first, then the cut
    assert t == "a" * 63 and t.truncated
    t = normalize("a" * 62 + " b")  # 64 code points exactly
    assert t == "a" * 62 + " b" and not t.truncated
    t = normalize("Ａ" * 65)  # the limit applies after NFKC
    assert t == "a" * 64 and t.truncated
    t = normalize("ﬁ" * 40)  # NFKC makes it 80 code points
    assert t == "fi" * 32 and t.truncated
    t = normalize("\x00" * 100 + "a" * 64)  # controls are dropped before counting
    assert t == "a" * 64 and not t.truncated
    zwj = "👩\u200d👩\u200d👧"  # 5 code points: a ZWJ sequence may be cut in the middle
    t = normalize(zwj * 13)
    assert t == (zwj * 13)[:64] and t.truncated


def test_schema_and_max_chars_limits():
    s = Schema(max_query_chars=3)
    assert normalize("abcd", s) == "abc" and normalize("abcd", s).truncated
    assert normalize("ab cd", s) == "ab" and normalize("ab cd", s).truncated
    assert normalize("abc", s) == "abc" and not normalize("abc", s).truncated
    assert normalize("abcd", max_chars=2) == "ab"
    assert normalize("a" * 300, Schema(max_query_chars=256)) == "a" * 256
    assert normalize("a" * 100, DEFAULT_SCHEMA) == "a" * 64


def test_type_errors_name_the_argument():
    for bad in (b"abc", None, 3, ["a"]):
        with pytest.raises(TypeError, match="^query"):
            normalize(bad)  # type: ignore[arg-type]


def test_bad_schema_and_limit_arguments():
    with pytest.raises(TypeError, match="^schema"):
        normalize("abc", {"max_query_chars": 3})  # type: ignore[arg-type]
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="^max_chars"):
            normalize("abc", max_chars=bad)  # type: ignore[arg-type]
    assert normalize("abc", max_chars=0) == "" and normalize("abc", max_chars=0).truncated


def test_normalized_query_pickles():
    t = normalize("x" * 70)
    back = pickle.loads(pickle.dumps(t))
    assert back == t and back.truncated is True and isinstance(back, NormalizedQuery)


# -- properties -----------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.one_of(hostile_queries(), ANY_TEXT), st.sampled_from([1, 2, 5, 64, 256]))
@example("e\x00\u0301", 64)
@example("a" * 63 + " " + "b", 64)
def test_matches_reference_and_is_idempotent(raw, limit):
    got = normalize(raw, max_chars=limit)
    assert (str(got), got.truncated) == reference(raw, limit)
    again = normalize(got, max_chars=limit)
    assert again == got and not again.truncated
    # the shape every consumer relies on
    assert len(got) <= limit
    assert got == got.strip(" ") and "  " not in got
    assert not any(ch.isspace() and ch != " " for ch in got)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in got)
    assert unicodedata.normalize("NFKC", got) == got
    assert got.lower() == got
    got.encode("utf-8")  # strict: no surrogates


@settings(max_examples=100, deadline=None)
@given(normalized_queries(Schema(max_query_chars=16)))
def test_normalized_queries_are_fixed_points(q):
    assert q and normalize(q, max_chars=16) == q and len(q) <= 16


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_truncated_flag(raw):
    full = normalize(raw, max_chars=10_000)
    cut = normalize(raw, max_chars=8)
    assert cut.truncated == (len(full) > 8)
    assert cut == full[:8].rstrip(" ")


def test_regex_whitespace_is_str_isspace():
    # normalize collapses runs with re `\s`: it must be exactly str.isspace (DESIGN §1 step 4)
    ws = re.compile(r"\s")
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        assert bool(ws.match(ch)) == ch.isspace(), hex(cp)


def test_every_single_code_point():
    # Dropping controls before NFKC is only equivalent to DESIGN's order (after NFKC and
    # lower) because neither step ever produces a Cc or Cs character, nor removes one. And
    # normalize is idempotent for every single code point (incl. lower() expansions).
    nfkc = unicodedata.normalize
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        out = nfkc("NFKC", ch).lower()
        cat = unicodedata.category(ch)
        if out == ch and cat != "Cc" and not ch.isspace():
            continue  # normalize(ch) == ch trivially
        has_ctrl = any(unicodedata.category(c) in ("Cc", "Cs") for c in out)
        assert has_ctrl == (cat == "Cc"), hex(cp)
        got = normalize(ch)
        assert normalize(got) == got, hex(cp)
