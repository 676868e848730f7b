"""Reusable hypothesis strategies for qpfast tests (format, parser, decoder).

Import them from any test module (`tests/` is on `sys.path`, see conftest.py):

    from strategies import hostile_queries, normalized_queries, valid_results, schemas

Strategies
----------
hostile_queries(max_atoms=40)
    Raw query strings built to break normalization, JSON escaping and grounding: quotes and
    backslashes (also their full-width forms, which NFKC maps to `"` and `\\`), emoji, ZWJ
    sequences, skin-tone modifiers and flags, combining marks, full-width text, ligatures,
    every kind of whitespace (tab, newline, U+3000, NBSP, U+2028, U+001C..U+001F, U+0085),
    control characters, lone surrogates, case-changing letters (İ, ẞ, Σ), repeated text
    (so entities have several occurrences), and lengths around the 64-code-point limit
    (exactly 64 and 65 normalized code points, and far longer). Some normalize to "".
normalized_queries(schema=DEFAULT_SCHEMA)
    Non-empty outputs of `qpfast.normalize(q, schema)` for hostile queries (plain `str`).
valid_results(schema=DEFAULT_SCHEMA, as_dict=False)
    `(raw_query, result)` pairs where `result` is valid for the query under `schema`:
    a `QPResult` with exact offsets (what `parse(render(result), raw_query, schema)`
    must return), or with `as_dict=True` the JSON object keyed by the schema's key names
    in schema order (what `json.loads(render(...))` returns). Entities are drawn as spans
    of the normalized query and placed at their leftmost occurrence after the previous
    entity (the grounding rule), segmentations cut q' anywhere, intents use any code
    points but controls and surrogates, up to exactly `schema.intent_max_chars`.
    Hypothesis draws the raw query and the intent; the structure (spans, cuts, levels,
    labels) comes from a seeded RNG drawn once (per-choice draws made it 5x slower).
    A raw query that would normalize to "" gets a "Q" appended.
schemas()
    Valid non-default `qpfast.Schema`s: field subsets in any order (weight after seg),
    custom key names, small hostile label sets (quotes, backslashes, emoji, labels that
    are prefixes of other labels), any weight_levels, small intent_max_chars and
    max_query_chars.
any_schema()
    A schema from `SCHEMA_POOL` (hand-picked: reordered, subset, renamed, tiny and hostile
    label sets, limits at their edges) two times in three, else from `schemas()`.
schema_and_result(as_dict=False)
    `(schema, raw_query, result)` triples over `any_schema()`.

Constants: HOSTILE_ATOMS (the pieces of hostile queries), SCHEMA_POOL.

Helpers
-------
to_obj(result, schema)  the JSON object (schema keys, schema order) of a QPResult.
canonical(obj)          `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`.
"""
from __future__ import annotations

import functools
import itertools
import json
import random
from typing import Any

from hypothesis import strategies as st

from qpfast import DEFAULT_SCHEMA, Entity, QPResult, Schema, Term, normalize
from qpfast.schema import FIELD_NAMES

__all__ = [
    "HOSTILE_ATOMS", "SCHEMA_POOL", "any_schema", "canonical", "hostile_queries", "label_text", "normalized_queries",
    "schema_and_result", "schemas", "to_obj", "valid_results",
]

# Pieces a hostile query is made of. Each is a str of one or more code points.
HOSTILE_ATOMS: tuple[str, ...] = (
    # JSON-significant ASCII
    '"', "\\", '\\"', '"\\', "'", "{", "}", "[", "]", ",", ":", "/", "\\u4e2d", "\\n",
    # plain words, upper case, digits
    "a", "b", "ab", "abc", "Su7", "iPhone", "15PRO", "574", "x", "A", "Z", "0", "9",
    # CJK, incl. label text (so entity text may look like a type or category)
    "兰蔻", "小黑瓶", "适合", "什么", "肤质", "品牌", "美妆>护肤", "的", "中", "丰", "类", "牌",
    # full-width letters, digits, punctuation, quote, backslash, space (NFKC -> ASCII)
    "ＡＢＣ", "ｓｕ７", "１２３", "＂", "＼", "（", "）", "\u3000", "！",
    # emoji, ZWJ sequences, modifiers, flags, variation selectors
    "😀", "👍🏽", "👩\u200d👩\u200d👧", "🏳️\u200d🌈", "🇨🇳", "❤️", "\u200d", "\ufe0f",
    # combining marks (composing and not), Hangul jamo
    "e\u0301", "a\u0308\u0323", "x\u0301", "\u0301", "\u1100\u1161", "\u1161",
    # compatibility characters
    "ﬁ", "①", "㍻", "Ⅻ", "µ", "ｶ", "ﾞ", "Ω", "K",
    # case mapping oddities
    "İ", "ẞ", "Σ", "ΑΣ", "Ǆ",
    # whitespace of every kind (all become one ASCII space)
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2028", "\u2029", "\u1680", "\u2003", "\x1c", "\x1f",
    "\x85", "\x0b", "\x0c",
    # controls (dropped), format characters (kept), noncharacters, lone surrogates (dropped)
    "\x00", "\x07", "\x1b", "\x7f", "\x9f", "\u200b", "\u200e", "\ufeff", "\ufffe", "\ud800", "\udfff",
    # astral CJK, private use
    "𠀀", "\ue000",
)

_MAX_ATOMS = 40
_ATOM_BASE = 0xF0000  # atom i is drawn as code point _ATOM_BASE + i (one draw per string)

# Characters that normalize to exactly one code point, whatever their neighbours.
_ONE_CP = ("a", "b", "c", "中", '"', "\\", "😀", "\u200d", "①", ",")
_INTENT_HOSTILE = ('"', "\\", " ", "/", "\u2028", "\u200d", "😀", "中", "a", "b", "1", "{", "}",
                   "[", "]", ",", ":", "\ufeff", "\u0301", "\xa0", "~", "\x7e")
_LABEL_HOSTILE = ('"', "\\", ">", "a", "品", "牌", "类", "😀", "\u200d", "é", "/", "{", "}", ":", ",")

# Structural choices are drawn through a few shared strategies (building strategies inside
# a composite is what makes hypothesis slow).
_U32 = st.integers(0, 2**32 - 1)
_BOOL = st.booleans()


@functools.lru_cache(maxsize=None)
def _atom_strings(min_size: int = 0, max_size: int = _MAX_ATOMS,
                  atoms: tuple[str, ...] = HOSTILE_ATOMS) -> st.SearchStrategy[str]:
    """Concatenations of `min_size..max_size` of `atoms`, drawn as one string choice."""
    alphabet = st.characters(min_codepoint=_ATOM_BASE, max_codepoint=_ATOM_BASE + len(atoms) - 1)
    return st.text(alphabet, min_size=min_size, max_size=max_size).map(
        lambda s: "".join(atoms[ord(c) - _ATOM_BASE] for c in s))


def _exact_length_query(n: int) -> st.SearchStrategy[str]:
    """Raw queries whose normalization is exactly `n` code points before truncation."""
    return _atom_strings(n, n, _ONE_CP)


@st.composite
def _mixed(draw, max_atoms: int) -> str:
    atoms = draw(_atom_strings(0, max_atoms))
    rnd = draw(_ANY_TEXT)  # any code points (no surrogates)
    k = draw(_U32) % (len(atoms) + 1)
    return atoms[:k] + rnd + atoms[k:]


_ANY_TEXT = st.text(max_size=8)


@functools.lru_cache(maxsize=None)
def hostile_queries(max_atoms: int = _MAX_ATOMS) -> st.SearchStrategy[str]:
    """Raw query strings (see the module docstring). May normalize to the empty string."""
    repeated = st.tuples(_atom_strings(1, 4), st.integers(2, 6), st.sampled_from(["", " ", "\t", "的"])).map(
        lambda t: t[2].join([t[0]] * t[1]))
    around_limit = st.one_of(_exact_length_query(64), _exact_length_query(65),
                             _exact_length_query(63),
                             # a space right at the cut (trimmed after truncation)
                             st.integers(0, 3).map(lambda k: "a" * (63 - k) + " " * (k + 1) + "b" * 5),
                             _atom_strings(60, 120))
    return st.one_of(_mixed(max_atoms), _mixed(max_atoms), repeated, around_limit, st.text(max_size=30))


def normalized_queries(schema: Schema = DEFAULT_SCHEMA) -> st.SearchStrategy[str]:
    """Non-empty normalized queries (plain str) under `schema.max_query_chars`."""
    return hostile_queries().map(lambda q: str(normalize(q, schema))).filter(bool)


@functools.lru_cache(maxsize=None)
def _intent(size: int) -> st.SearchStrategy[str]:
    """Intent texts of exactly `size` code points (no Cc, no Cs)."""
    return st.one_of(
        st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=size, max_size=size),
        _atom_strings(size, size, _INTENT_HOSTILE),
    )


@functools.lru_cache(maxsize=None)
def _nonempty_queries(max_query_chars: int) -> st.SearchStrategy[str]:
    # a query that normalizes to "" gets a letter appended (cheaper than a filter)
    return hostile_queries().map(lambda q: q if normalize(q, max_chars=max_query_chars) else q + "Q")


@st.composite
def _valid(draw, schema: Schema, as_dict: bool):
    raw = draw(_nonempty_queries(schema.max_query_chars))
    nq = normalize(raw, schema)
    q = str(nq)
    n = len(q)
    # The structure (spans, cuts, levels, labels) comes from one seeded RNG: drawing each
    # choice through hypothesis costs more than all the checks of a round trip.
    rng = random.Random(draw(_U32))

    entities: list[Entity] = []
    if "ner" in schema.fields:
        prev_end = 0
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4, 6])):
            starts = [i for i in range(prev_end, n) if q[i] != " "]
            if not starts:
                break
            a = rng.choice(starts[:rng.choice([1, 3, len(starts)])])
            b = rng.choice([b for b in range(a + 1, min(n, a + 12) + 1) if q[b - 1] != " "])
            text = q[a:b]
            start = q.find(text, prev_end)  # the grounding rule: leftmost after prev_end
            entities.append(Entity(text, rng.choice(schema.entity_types), start, start + len(text)))
            prev_end = start + len(text)

    terms: list[Term] = []
    if "seg" in schema.fields:
        idx = [i for i, c in enumerate(q) if c != " "]  # q' char i is q char idx[i]
        p_cut = rng.choice([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
        i = 0
        for j in range(1, len(idx) + 1):
            at_space = schema.seg_breaks_at_spaces and j < len(idx) and idx[j] != idx[j - 1] + 1
            if j == len(idx) or at_space or rng.random() < p_cut:
                text = "".join(q[k] for k in idx[i:j])
                w = rng.randrange(schema.weight_levels) if "weight" in schema.fields else None
                terms.append(Term(text, w, idx[i], idx[j - 1] + 1))
                i = j

    category = rng.choice(schema.categories) if "cat" in schema.fields else None
    intent = None
    if "intent" in schema.fields:
        m = schema.intent_max_chars
        size = m if rng.random() < 0.3 else rng.randint(1, m)
        intent = draw(_intent(size))

    res = QPResult(query=raw, normalized=q, truncated=nq.truncated, entities=entities, terms=terms,
                   category=category, intent=intent)
    return raw, (to_obj(res, schema) if as_dict else res)


def valid_results(schema: Schema = DEFAULT_SCHEMA, as_dict: bool = False):
    """`(raw_query, QPResult | dict)` pairs valid under `schema` (see the module docstring)."""
    return _valid(schema, as_dict)


def _no_space(s: str) -> str:
    return "".join(c for c in s if not c.isspace()) or "x"


@functools.lru_cache(maxsize=None)
def label_text(min_size: int = 1, max_size: int = 6) -> st.SearchStrategy[str]:
    """Text that is a valid label: no whitespace, no Cc/Cs characters."""
    return st.one_of(
        _atom_strings(min_size, max_size, _LABEL_HOSTILE),
        st.text(st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
                min_size=min_size, max_size=max_size).map(_no_space),
    )


def _valid_order(fields: tuple[str, ...]) -> bool:
    return "weight" not in fields or ("seg" in fields and fields.index("seg") < fields.index("weight"))


# every valid field order (ordered subsets of the five fields, weight after seg)
_FIELD_ORDERS = tuple(p for k in range(1, 6) for p in itertools.permutations(FIELD_NAMES, k) if _valid_order(p))
_FIELDS = st.one_of(st.sampled_from(_FIELD_ORDERS), st.just(FIELD_NAMES))
_KEY_TEXT = st.one_of(label_text(1, 5).map(lambda k: k.replace('"', "q").replace("\\", "b")),
                      st.sampled_from(["ner", "seg", "weight", "cat", "intent", "名", "k"]))
_KEY_LISTS = {n: st.lists(_KEY_TEXT, min_size=n, max_size=n, unique=True) for n in range(1, 6)}
_LABEL_SETS = st.lists(label_text(), min_size=1, max_size=5, unique=True)
_LEVELS = st.integers(2, 10)
_INTENT_MAX = st.sampled_from([1, 2, 3, 5, 32])
_QUERY_MAX = st.sampled_from([1, 2, 5, 16, 64, 80])


def _label_set(draw) -> tuple[str, ...]:
    labels = draw(_LABEL_SETS)
    if draw(_BOOL):  # a label that is a prefix of another one
        extra = labels[0] + draw(label_text(1, 3))
        if extra not in labels:
            labels.append(extra)
    if draw(_BOOL):
        labels.reverse()
    return tuple(labels)


@st.composite
def schemas(draw) -> Schema:
    """Valid non-default schemas (see the module docstring)."""
    fields = draw(_FIELDS)
    keys: dict[str, str] = {}
    if draw(_BOOL):
        keys = dict(zip(fields, draw(_KEY_LISTS[len(fields)])))
    return Schema(
        fields=fields, keys=keys,
        entity_types=_label_set(draw),
        weight_levels=draw(_LEVELS),
        categories=_label_set(draw),
        intent_max_chars=draw(_INTENT_MAX),
        max_query_chars=draw(_QUERY_MAX),
        seg_breaks_at_spaces="seg" in fields and draw(_BOOL),
    )


#: Hand-picked non-default schemas: drawn more often than random ones (cheap, compiled once).
SCHEMA_POOL: tuple[Schema, ...] = (
    DEFAULT_SCHEMA,
    Schema(fields=("intent", "cat", "weight", "ner", "seg")[::-1]),  # seg, ner, weight, cat, intent
    Schema(fields=("cat", "intent")),
    Schema(fields=("seg", "weight"), weight_levels=2),
    Schema(fields=("ner",), entity_types=("x",)),
    Schema(fields=("seg",), max_query_chars=5),
    Schema(keys={"ner": "实体", "seg": "分词", "weight": "权重", "cat": "类目", "intent": "意图"}),
    Schema(keys={"cat": "intent", "intent": "cat"}, intent_max_chars=1),
    Schema(fields=("intent", "seg", "ner"), entity_types=('"', "\\", '"\\', "a", "ab", "😀"),
           intent_max_chars=3),
    Schema(fields=("cat", "ner", "seg", "weight"), categories=("美妆", "美妆>护肤", 'q"', "\\x", "😀\u200d"),
           entity_types=("品", "品牌"), weight_levels=10, max_query_chars=16),
    Schema(fields=("ner", "seg", "weight", "cat", "intent"), max_query_chars=256, intent_max_chars=64),
    Schema(fields=("seg", "intent", "weight"), intent_max_chars=2, weight_levels=3),
    Schema(seg_breaks_at_spaces=True),
    Schema(fields=("seg", "weight"), seg_breaks_at_spaces=True, max_query_chars=24),
)


def any_schema() -> st.SearchStrategy[Schema]:
    """A schema from SCHEMA_POOL (two times in three) or from `schemas()`."""
    pool = st.sampled_from(SCHEMA_POOL)
    return st.one_of(pool, pool, schemas())


@st.composite
def schema_and_result(draw, as_dict: bool = False):
    """`(schema, raw_query, result)` with `schema` drawn from `any_schema()`."""
    schema = draw(any_schema())
    raw, res = draw(valid_results(schema, as_dict))
    return schema, raw, res


def to_obj(result: QPResult, schema: Schema = DEFAULT_SCHEMA) -> dict[str, Any]:
    """The JSON object of `result` under `schema` (keys and order of the schema)."""
    vals = {
        "ner": [[e.text, e.type] for e in result.entities],
        "seg": [t.text for t in result.terms],
        "weight": [t.weight for t in result.terms],
        "cat": result.category,
        "intent": result.intent,
    }
    return {schema.keys[f]: vals[f] for f in schema.fields}


def canonical(obj: Any) -> str:
    """The canonical qp-json/1 rendering of a JSON object."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
