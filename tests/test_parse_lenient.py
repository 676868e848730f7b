"""Lenient qpfast.parse (strict=False): never raises on any str/bytes, always returns a
result whose parts are grounded and valid, and recovers what it can from unconstrained
model output, listing what it dropped in `result.error`."""
from __future__ import annotations

import json
import random
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import hostile_queries, schema_and_result, to_obj, valid_results

from qpfast import DEFAULT_SCHEMA, Entity, QPResult, Schema, Term, normalize, parse, render

Q = "兰蔻小黑瓶适合什么肤质"
OBJ = {"ner": [["兰蔻", "品牌"], ["小黑瓶", "产品"]], "seg": ["兰蔻", "小黑瓶", "适合", "什么", "肤质"],
       "weight": [3, 3, 1, 0, 2], "cat": "美妆>护肤", "intent": "想了解兰蔻小黑瓶适合哪些肤质"}
GOOD = json.dumps(OBJ, ensure_ascii=False, separators=(",", ":"))
FULL = parse(GOOD, Q)


def lenient(text, query=Q, schema: Schema = DEFAULT_SCHEMA) -> QPResult:
    """Lenient parse plus every invariant a lenient result must satisfy."""
    r = parse(text, query, schema, strict=False)
    assert isinstance(r, QPResult)
    nq = normalize(query, schema)
    assert r.query == query and r.normalized == nq and r.truncated == nq.truncated
    assert r.error is None or (isinstance(r.error, str) and r.error)
    q = r.normalized
    prev = 0
    if "ner" not in schema.fields:
        assert r.entities == []
    for e in r.entities:
        assert isinstance(e, Entity) and e.type in schema.entity_types
        assert e.text and q[e.start:e.end] == e.text and e.text.strip(" ") == e.text
        assert e.start >= prev
        assert q.find(e.text, prev) == e.start  # leftmost after the previous entity
        prev = e.end
    if r.terms:
        assert "seg" in schema.fields
        assert "".join(t.text for t in r.terms) == q.replace(" ", "")
        for t in r.terms:
            assert isinstance(t, Term) and t.text and " " not in t.text
            assert q[t.start:t.end].replace(" ", "") == t.text
        ws = [t.weight for t in r.terms]
        assert all(w is None for w in ws) or all(type(w) is int and 0 <= w < schema.weight_levels for w in ws)
        if "weight" not in schema.fields:
            assert all(w is None for w in ws)
    if r.category is not None:
        assert "cat" in schema.fields and r.category in schema.categories
    if r.intent is not None:
        assert "intent" in schema.fields and 1 <= len(r.intent) <= schema.intent_max_chars
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in r.intent)
    str(r), repr(r), r.to_dict()
    return r


# -- never raises -------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)  # surrogates included


@settings(max_examples=250, deadline=None)
@given(st.one_of(ANY_TEXT, st.binary(max_size=200)), hostile_queries())
def test_never_raises_on_random_input(text, query):
    lenient(text, query)


FRAGMENTS = ['{', '}', '[', ']', ',', ':', '"', '\\', '\\"', '\\u', '\\ud83d', '\\ude00', '\\ud800', '\\u00',
             '"ner"', '"seg"', '"weight"', '"cat"', '"intent"', 'true', 'false', 'null', '-', '1e999', '-0',
             '99999999999999999999', '3.0', '0', '4', ' ', '\n', '\t', '```json', '[[', ']]', '""', '"],["',
             '兰蔻', '品牌', '美妆>护肤', '\x00', '\xff', '😀', '{"', '":', '","', '"]', '],"']


@st.composite
def jsonish(draw):
    """Text built from fragments of valid targets and JSON punctuation."""
    schema, raw, res = draw(schema_and_result())
    target = render(res, schema)
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|.', target) + FRAGMENTS
    idx = draw(st.lists(st.integers(0, len(tokens) - 1), max_size=60))
    text = "".join(tokens[i] for i in idx)
    if draw(st.booleans()):  # start like a valid target, then go astray
        text = target[:draw(st.integers(0, len(target)))] + text
    return schema, raw, text


@settings(max_examples=150, deadline=None)
@given(jsonish())
def test_never_raises_on_jsonish_text(triple):
    schema, raw, text = triple
    lenient(text, raw, schema)
    lenient(text.encode("utf-8", "surrogatepass"), raw, schema)


@settings(max_examples=25, deadline=None)
@given(schema_and_result())
def test_every_truncation_of_a_valid_target(triple):
    schema, raw, res = triple
    text = render(res, schema)
    data = text.encode("utf-8")
    for cut in range(len(text) + 1):  # code-point cuts
        r = lenient(text[:cut], raw, schema)
        if cut < len(text):
            assert r.error and ("truncated" in r.error or r.error == "no JSON object in the output")
        # what was recovered is what the full text says
        assert r.entities == res.entities[:len(r.entities)]
        if r.terms:
            assert [t.text for t in r.terms] == [t.text for t in res.terms]
        assert r.category in (None, res.category)
    for cut in range(0, len(data) + 1, 3):  # byte cuts, also inside a character
        lenient(data[:cut], raw, schema)
    assert lenient(text, raw, schema) == res


@settings(max_examples=150, deadline=None)
@given(valid_results(), st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=3)),
                                 min_size=1, max_size=4))
def test_never_raises_on_invalid_utf8(pair, inserts):
    raw, res = pair
    data = render(res).encode("utf-8")
    for at, junk in inserts:
        at %= len(data) + 1
        data = data[:at] + junk + data[at:]
    r = lenient(data, raw)
    assert r.error is None or r.error.encode("utf-8")  # the error text is valid


def test_never_raises_on_hostile_inputs():
    cases = [
        "", "{", "}", "[", '"', "\\", "{{{{", "[" * 100_000, "{" * 100_000, '{"a":' * 50_000,
        '{"ner":' + "[" * 10_000, '{"intent":"' + "\\" * 10_001, '{"ner":[["\\ud800","品牌"]]}',
        '{"ner":[["\ud800","品牌"]]}', '{"weight":[1e999,-1,99999999999999999999,3.5]}',
        '{"seg":[null,true,{},[]]}', "\x00" * 1000, "{" + "\xff" * 10 + "}",
        '{"ner":[[' + '"兰蔻","' * 1000, "😀" * 10_000,
    ]
    for text in cases:
        lenient(text)
        lenient(text.encode("utf-8", "surrogatepass"))
    for data in (b"\xff\xfe{", b'{"ner":[["\xff","\xe5\x93\x81\xe7\x89\x8c"]]}', b'{"ner":[["a","\xff"]]}',
                 b'{"intent":"\xed\xa0\x80"}', b'{"cat":"\xe7\xbe"}', b'{"seg":["\xe5\x85"]}'):
        lenient(data)


def test_empty_query_is_an_error_not_an_exception():
    r = lenient(GOOD, "  \x00 ")
    assert r.error == "query is empty after normalization" and r.entities == [] and r.intent is None


# -- recovery -------------------------------------------------------------------------------------

def test_valid_text_same_as_strict():
    r = lenient(GOOD)
    assert r == FULL and r.error is None


def test_truncated_json():
    cut = GOOD[:GOOD.index(',"seg"')]
    r = lenient(cut)
    assert r.entities == FULL.entities and r.terms == [] and r.category is None
    assert "truncated" in r.error and "missing 'seg'" in r.error and "missing 'intent'" in r.error
    cut = GOOD[:GOOD.index('"cat"') + len('"cat":"美妆>')]
    r = lenient(cut)
    assert r.terms == FULL.terms and r.category is None and "category" in r.error
    cut = GOOD[:-5]  # inside the intent: keep what was written
    r = lenient(cut)
    assert r.category == "美妆>护肤" and r.intent == FULL.intent[:-3] and "truncated" in r.error
    cut = GOOD[:GOOD.index("小黑瓶", GOOD.index('"seg"')) + 1]  # inside the seg list
    r = lenient(cut)
    assert r.entities == FULL.entities and r.terms == [] and "seg" in r.error
    cut = GOOD[:GOOD.index('"产品"') + 2]  # inside an entity type: dropped
    r = lenient(cut)
    assert r.entities == FULL.entities[:1] and "cut type '产'" in r.error
    cut = GOOD[:GOOD.index('"产品"') + 3]  # a whole label, no other label starts with it: kept
    assert lenient(cut).entities == FULL.entities


def test_extra_whitespace_and_escapes():
    for text in (json.dumps(OBJ, ensure_ascii=False, indent=2),
                 json.dumps(OBJ, ensure_ascii=True),
                 json.dumps(OBJ, ensure_ascii=False, indent="\t") + "\n",
                 GOOD.replace(",", " ,\r\n ").replace(":", " : ")):
        r = lenient(text)
        assert r == FULL and r.error is None, text


def test_wrong_key_order():
    shuffled = {k: OBJ[k] for k in ("intent", "cat", "weight", "seg", "ner")}
    r = lenient(json.dumps(shuffled, ensure_ascii=False))
    assert r == FULL and r.error is None


def test_text_around_the_object():
    for text in ("Sure! Here it is:\n```json\n" + GOOD + "\n```", GOOD + "<|im_end|>", GOOD + GOOD,
                 "<think>\n</think>\n\n" + GOOD):
        r = lenient(text)
        assert r == FULL and r.error is None
    r = lenient("I cannot help with that.")
    assert r.error == "no JSON object in the output" and r.entities == [] and r.terms == []


def test_ungrounded_entities_dropped_and_recorded():
    obj = dict(OBJ, ner=[["雅诗兰黛", "品牌"], ["兰蔻", "品牌"], ["小黑瓶", "产品"], ["兰蔻", "品牌"]])
    r = lenient(json.dumps(obj, ensure_ascii=False))
    assert r.entities == FULL.entities
    assert "dropped ungrounded entity '雅诗兰黛'" in r.error
    assert "dropped ungrounded entity '兰蔻'" in r.error  # the second one: nothing left after 小黑瓶
    assert r.terms == FULL.terms and r.category == FULL.category  # the rest is untouched
    obj = dict(OBJ, ner=[["小黑瓶", "产品"], ["兰蔻", "品牌"]])  # out of order
    r = lenient(json.dumps(obj, ensure_ascii=False))
    assert r.entities == [Entity("小黑瓶", "产品", 2, 5)] and "'兰蔻'" in r.error


def test_entity_repairs_and_drops():
    obj = dict(OBJ, ner=[[" 兰蔻 ", "品牌"], ["小黑瓶", "brand"], ["小黑瓶"], "x", ["", "品牌"]])
    r = lenient(json.dumps(obj, ensure_ascii=False))
    assert r.entities == [Entity("兰蔻", "品牌", 0, 2)]  # spaces at the edges trimmed
    assert "unknown or cut type 'brand'" in r.error and "malformed entity" in r.error
    assert "ungrounded entity ''" in r.error
    r = lenient(json.dumps(dict(OBJ, ner="兰蔻"), ensure_ascii=False))
    assert r.entities == [] and "ner is not a list" in r.error


def test_bad_fields_dropped_and_recorded():
    r = lenient(json.dumps(dict(OBJ, seg=["兰蔻", "小黑瓶"]), ensure_ascii=False))
    assert r.terms == [] and "seg" in r.error and "weight" in r.error
    r = lenient(json.dumps(dict(OBJ, seg=["兰蔻", "小黑 瓶", "适合什么", "肤质"], weight=[1, 2, 3, 0]),
                           ensure_ascii=False))
    assert r.segments == ["兰蔻", "小黑瓶", "适合什么", "肤质"] and r.weights == [1, 2, 3, 0] and r.error is None
    r = lenient(json.dumps(dict(OBJ, weight=[3, 3, 1, 0, 7]), ensure_ascii=False))
    assert r.segments == FULL.segments and r.weights == [None] * 5 and "weight" in r.error
    r = lenient(json.dumps(dict(OBJ, weight=[3, 3, 1, 0]), ensure_ascii=False))
    assert r.weights == [None] * 5 and "weight" in r.error
    r = lenient(json.dumps(dict(OBJ, weight=[3, 3, 1, 0, True]), ensure_ascii=False))
    assert r.weights == [None] * 5
    r = lenient(json.dumps(dict(OBJ, cat="美妆>护发"), ensure_ascii=False))
    assert r.category is None and "category" in r.error
    r = lenient(json.dumps(dict(OBJ, intent="a\x01b\nc"), ensure_ascii=False))
    assert r.intent == "abc" and "control" in r.error
    r = lenient(json.dumps(dict(OBJ, intent="意" * 40), ensure_ascii=False))
    assert r.intent == "意" * 32 and "truncated intent" in r.error
    r = lenient(json.dumps(dict(OBJ, intent=""), ensure_ascii=False))
    assert r.intent is None and "empty intent" in r.error
    r = lenient(json.dumps(dict(OBJ, intent=3), ensure_ascii=False))
    assert r.intent is None and "intent" in r.error
    r = lenient('{"ner":[],"ner":[["兰蔻","品牌"]]}')  # duplicate key: the first one counts
    assert r.entities == []


def test_escapes_decoded():
    r = lenient('{"ner":[["\\u5170\\u853b","\\u54c1\\u724c"]],"intent":"\\ud83d\\ude00\\/x\\ud800"}')
    assert r.entities == [Entity("兰蔻", "品牌", 0, 2)]
    assert r.intent == "😀/x\ufffd"


def test_cut_label_only_when_unambiguous():
    s = Schema(fields=("cat", "ner"), categories=("美妆", "美妆>护肤", "其他"), entity_types=("品", "品牌"))
    assert lenient('{"cat":"美妆', "ab", s).category is None  # could be 美妆>护肤
    assert lenient('{"cat":"其他', "ab", s).category == "其他"
    assert lenient('{"cat":"美妆"', "ab", s).category == "美妆"  # the string was closed
    assert lenient('{"cat":"美妆>护肤', "ab", s).category == "美妆>护肤"
    assert lenient('{"cat":"其他","ner":[["a","品', "ab", s).entities == []
    assert lenient('{"cat":"其他","ner":[["a","品牌', "ab", s).entities == [Entity("a", "品牌", 0, 1)]


@settings(max_examples=150, deadline=None)
@given(schema_and_result(), st.integers(0, 2**32 - 1))
def test_non_canonical_renderings_recover_everything(triple, seed):
    schema, raw, res = triple
    obj = to_obj(res, schema)
    rng = random.Random(seed)
    items = list(obj.items())
    rng.shuffle(items)
    text = json.dumps(dict(items), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 0, 1, 2, "\t"]))
    r = lenient(text, raw, schema)
    assert r == res, text


def test_bytes_and_str_agree():
    for text in (GOOD, GOOD[:40], GOOD.replace("兰蔻", "雅诗")):
        assert lenient(text) == lenient(text.encode("utf-8"))


@pytest.mark.parametrize("strict", [True, False])
def test_raw_is_kept(strict):
    r = parse(GOOD, Q, strict=strict)
    assert r.raw == GOOD
    r = parse(GOOD.encode(), Q, strict=strict)
    assert r.raw == GOOD


def test_segments_over_a_space_dropped_when_the_schema_breaks_at_spaces():
    from qpfast import Schema
    breaks = Schema(fields=("seg", "weight"), seg_breaks_at_spaces=True)
    text = '{"seg":["ab","cd"],"weight":[1,2]}'
    r = parse('{"seg":["abc","d"],"weight":[1,2]}', "ab cd", breaks, strict=False)
    assert r.terms == [] and "spans a space" in r.error
    r = parse(text, "ab cd", breaks, strict=False)
    assert r.segments == ["ab", "cd"] and r.weights == [1, 2] and r.error is None
    r = parse('{"seg":["abc","d"],"weight":[1,2]}', "ab cd", Schema(fields=("seg", "weight")), strict=False)
    assert r.segments == ["abc", "d"] and r.error is None          # the default: q' is all that counts
