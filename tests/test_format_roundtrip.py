"""render -> parse round trip of qp-json/1, and render's validation.

For random valid results over hostile queries (default and random schemas):
`parse(render(r), q) == r`, and `render` is byte-equal to
`json.dumps(obj, ensure_ascii=False, separators=(",", ":"))` with keys in schema order.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from strategies import canonical, schema_and_result, to_obj, valid_results

import qpfast
from qpfast import DEFAULT_SCHEMA, Entity, QPResult, Schema, Term, normalize, parse, render

EXAMPLE_QUERY = "兰蔻小黑瓶适合什么肤质"
EXAMPLE = ('{"ner":[["兰蔻","品牌"],["小黑瓶","产品"]],"seg":["兰蔻","小黑瓶","适合","什么","肤质"],'
           '"weight":[3,3,1,0,2],"cat":"美妆>护肤","intent":"想了解兰蔻小黑瓶适合哪些肤质"}')


def check_round_trip(raw: str, res: QPResult, schema: Schema) -> str:
    text = render(res, schema)
    assert text == canonical(to_obj(res, schema))
    assert text.encode("utf-8") == json.dumps(to_obj(res, schema), ensure_ascii=False,
                                              separators=(",", ":")).encode("utf-8")
    assert list(json.loads(text)) == [schema.keys[f] for f in schema.fields]
    back = parse(text, raw, schema)
    assert back == res, (text, back, res)
    assert back.raw == text and back.error is None and back.ok
    # bytes in, same result; lenient mode agrees on valid text
    assert parse(text.encode("utf-8"), raw, schema) == res
    assert parse(text, raw, schema, strict=False) == res
    # the normalized query is a fixed point: parsing against it gives the same spans
    again = parse(text, res.normalized, schema)
    assert (again.entities, again.terms, again.category, again.intent) == \
        (res.entities, res.terms, res.category, res.intent)
    # grounding invariants of the result itself
    q = res.normalized
    for e in res.entities:
        assert q[e.start:e.end] == e.text
    for t in res.terms:
        assert q[t.start:t.end].replace(" ", "") == t.text
    return text


@settings(max_examples=1500, deadline=None)
@given(valid_results())
def test_round_trip_default_schema(pair):
    raw, res = pair
    check_round_trip(raw, res, DEFAULT_SCHEMA)


@settings(max_examples=500, deadline=None)
@given(schema_and_result())
def test_round_trip_random_schemas(triple):
    schema, raw, res = triple
    check_round_trip(raw, res, schema)


@settings(max_examples=150, deadline=None)
@given(schema_and_result(as_dict=True))
def test_round_trip_from_dict(triple):
    schema, raw, obj = triple
    text = render(obj, schema, query=raw)
    assert text == canonical(obj)
    assert json.loads(text) == obj
    back = parse(text, raw, schema)
    assert to_obj(back, schema) == obj
    # the query may also come from the dict itself
    assert render({**obj, "query": raw}, schema) == text if "query" not in obj else True


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(schema_and_result())
def test_round_trip_many(triple):
    """The same, far longer (run with `pytest -m slow`)."""
    schema, raw, res = triple
    check_round_trip(raw, res, schema)


# -- hand cases -----------------------------------------------------------------------------

def test_design_example():
    r = parse(EXAMPLE, EXAMPLE_QUERY)
    assert r.entities == [Entity("兰蔻", "品牌", 0, 2), Entity("小黑瓶", "产品", 2, 5)]
    assert r.terms == [Term("兰蔻", 3, 0, 2), Term("小黑瓶", 3, 2, 5), Term("适合", 1, 5, 7),
                       Term("什么", 0, 7, 9), Term("肤质", 2, 9, 11)]
    assert (r.category, r.intent, r.error, r.truncated) == ("美妆>护肤", "想了解兰蔻小黑瓶适合哪些肤质", None, False)
    assert render(r) == EXAMPLE
    assert render(json.loads(EXAMPLE), query=EXAMPLE_QUERY) == EXAMPLE
    assert render(json.loads(EXAMPLE)) == EXAMPLE  # query defaults to the joined segments
    d = r.to_dict()
    assert d["entities"][0] == {"text": "兰蔻", "type": "品牌", "start": 0, "end": 2}
    assert d["terms"][1] == {"text": "小黑瓶", "weight": 3, "start": 2, "end": 5}
    assert "兰蔻/品牌" in repr(r) and "小黑瓶:3" in repr(r)


def test_escapes_and_spaces():
    raw = 'Say "Hi" \\ 世界  😀\u200d'
    q = normalize(raw)
    assert q == 'say "hi" \\ 世界 😀\u200d'
    res = QPResult(query=raw, normalized=q,
                   entities=[Entity('"hi" \\', "作品", 4, 10), Entity("😀\u200d", "人群", 14, 16)],
                   terms=[Term('say"hi"', 1, 0, 8), Term("\\世界", 2, 9, 13), Term("😀\u200d", 0, 14, 16)],
                   category="其他", intent='说 "hi" \\ 的意思')
    text = check_round_trip(raw, res, DEFAULT_SCHEMA)
    assert '["\\"hi\\" \\\\","作品"]' in text


def test_64_and_65_code_points():
    raw64 = "中" * 32 + "a" * 32
    r = QPResult(query=raw64, normalized=raw64, terms=[Term(raw64, 3, 0, 64)], category="其他", intent="x")
    check_round_trip(raw64, r, DEFAULT_SCHEMA)
    raw65 = raw64 + "b"
    r65 = QPResult(query=raw65, normalized=raw64, truncated=True, terms=[Term(raw64, 3, 0, 64)],
                   category="其他", intent="x")
    text = check_round_trip(raw65, r65, DEFAULT_SCHEMA)
    assert parse(text, raw65).truncated is True
    with pytest.raises(ValueError):  # the cut-off "b" cannot be segmented
        render({"ner": [], "seg": [raw64 + "b"], "weight": [3], "cat": "其他", "intent": "x"}, query=raw65)


def test_custom_schema_order_keys_and_subset():
    s = Schema(fields=("cat", "seg", "intent", "weight"), keys={"cat": "类目", "weight": "w"},
               categories=("a>b", 'q"uote', "back\\slash"), weight_levels=2, intent_max_chars=3)
    obj = {"类目": 'q"uote', "seg": ["ab", "c"], "intent": "abc", "w": [1, 0]}
    text = render(obj, s, query="ab c")
    assert text == '{"类目":"q\\"uote","seg":["ab","c"],"intent":"abc","w":[1,0]}'
    r = parse(text, "AB C", s)
    assert r.category == 'q"uote' and r.entities == [] and r.weights == [1, 0]
    assert r.terms == [Term("ab", 1, 0, 2), Term("c", 0, 3, 4)]
    with pytest.raises(ValueError, match="intent"):
        render({**obj, "intent": "abcd"}, s, query="ab c")
    with pytest.raises(ValueError):
        render({**obj, "w": [2, 0]}, s, query="ab c")


def test_ner_only_schema():
    s = Schema(fields=("ner",), entity_types=("x",))
    assert render({"ner": []}, s, query="abc") == '{"ner":[]}'
    assert render({"ner": [["b", "x"], ["c", "x"]]}, s, query="abc") == '{"ner":[["b","x"],["c","x"]]}'
    r = parse('{"ner":[["b","x"]]}', "abc", s)
    assert r.entities == [Entity("b", "x", 1, 2)] and r.terms == [] and r.category is None and r.intent is None


def test_render_accepts_field_names_for_custom_keys():
    s = Schema(fields=("seg", "cat"), keys={"cat": "类目"}, categories=("c",))
    assert render({"seg": ["ab"], "cat": "c"}, s) == '{"seg":["ab"],"类目":"c"}'


# -- render never emits an invalid target -------------------------------------------------------

GOOD = json.loads(EXAMPLE)


def bad(**changes):
    d = dict(GOOD)
    d.update(changes)
    return d


INVALID = {
    "unknown entity type": bad(ner=[["兰蔻", "品种"]]),
    "entity type from another schema": bad(ner=[["兰蔻", "brand"]]),
    "entity not in query": bad(ner=[["雅诗兰黛", "品牌"]]),
    "entity out of order": bad(ner=[["小黑瓶", "产品"], ["兰蔻", "品牌"]]),
    "entities overlap": bad(ner=[["兰蔻小", "品牌"], ["小黑瓶", "产品"]]),
    "empty entity": bad(ner=[["", "品牌"]]),
    "entity with control char": bad(ner=[["兰\x00蔻", "品牌"]]),
    "category not in set": bad(cat="美妆>护发"),
    "category prefix": bad(cat="美妆"),
    "category with space": bad(cat="美妆>护肤 "),
    "empty category": bad(cat=""),
    "seg does not cover": bad(seg=["兰蔻", "小黑瓶"], weight=[3, 3]),
    "seg extra": bad(seg=["兰蔻", "小黑瓶", "适合", "什么", "肤质", "啊"], weight=[3, 3, 1, 0, 2, 0]),
    "seg wrong text": bad(seg=["兰蔻", "小白瓶", "适合", "什么", "肤质"]),
    "empty seg item": bad(seg=["兰蔻", "", "小黑瓶", "适合", "什么", "肤质"], weight=[3, 0, 3, 1, 0, 2]),
    "empty seg": bad(seg=[], weight=[]),
    "weight out of range": bad(weight=[3, 3, 1, 0, 4]),
    "negative weight": bad(weight=[3, 3, 1, 0, -1]),
    "fewer weights": bad(weight=[3, 3, 1, 0]),
    "more weights": bad(weight=[3, 3, 1, 0, 2, 1]),
    "bool weight": bad(weight=[3, 3, 1, 0, True]),
    "float weight": bad(weight=[3, 3, 1, 0, 2.0]),
    "empty intent": bad(intent=""),
    "long intent": bad(intent="意" * 33),
    "control in intent": bad(intent="a\nb"),
    "DEL in intent": bad(intent="a\x7fb"),
    "C1 control in intent": bad(intent="a\x85b"),
    "surrogate in intent": bad(intent="a\ud800b"),
    "intent not str": bad(intent=3),
    "cat None": bad(cat=None),
    "ner not pairs": bad(ner=[["兰蔻"]]),
    "ner triple": bad(ner=[["兰蔻", "品牌", "x"]]),
    "seg not list": bad(seg="兰蔻小黑瓶适合什么肤质"),
}


@pytest.mark.parametrize("obj", INVALID.values(), ids=INVALID.keys())
def test_render_rejects_invalid_labels(obj):
    with pytest.raises(ValueError):
        render(obj, query=EXAMPLE_QUERY)


def test_render_rejects_missing_fields_and_bad_arguments():
    d = dict(GOOD)
    del d["cat"]
    with pytest.raises(ValueError, match="cat"):
        render(d, query=EXAMPLE_QUERY)
    with pytest.raises(TypeError, match="result_or_dict"):
        render(EXAMPLE, query=EXAMPLE_QUERY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="result_or_dict"):
        render([("ner", [])], query=EXAMPLE_QUERY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query"):  # no seg to default the query from
        render({"cat": "其他"}, Schema(fields=("cat",)))
    with pytest.raises(ValueError):  # query empty after normalization
        render(GOOD, query=" \x00 ")
    with pytest.raises(TypeError, match="^schema"):
        render(GOOD, {"fields": ["ner"]})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^query"):
        render(GOOD, query=b"abc")  # type: ignore[arg-type]


def test_render_rejects_entity_at_a_later_occurrence():
    # "苹果" annotated at its second occurrence cannot be written: the text would put it at
    # the first one. render refuses rather than move the label.
    q = "苹果手机和苹果"
    ok = QPResult(query=q, normalized=q, entities=[Entity("苹果", "品牌", 0, 2)],
                  terms=[Term(q, 3, 0, 7)], category="其他", intent="x")
    render(ok)
    moved = QPResult(query=q, normalized=q, entities=[Entity("苹果", "品牌", 5, 7)],
                     terms=[Term(q, 3, 0, 7)], category="其他", intent="x")
    with pytest.raises(ValueError, match="leftmost"):
        render(moved)
    wrong_term = QPResult(query=q, normalized=q, terms=[Term(q, 3, 0, 6)], category="其他", intent="x")
    with pytest.raises(ValueError, match="seg"):
        render(wrong_term)


def test_render_of_qpresult_with_missing_weight():
    r = parse(EXAMPLE, EXAMPLE_QUERY)
    r.terms[0] = Term("兰蔻", None, 0, 2)
    with pytest.raises(ValueError, match="weight"):
        render(r)


def test_render_validates_with_each_schema():
    r = parse(EXAMPLE, EXAMPLE_QUERY)
    s = Schema(fields=("seg", "cat"), categories=("其他",))
    with pytest.raises(ValueError):  # 美妆>护肤 is not one of s.categories
        render(r, s)
    r.category = "其他"
    assert render(r, s) == '{"seg":["兰蔻","小黑瓶","适合","什么","肤质"],"cat":"其他"}'


def test_public_names():
    for name in ("Schema", "DEFAULT_SCHEMA", "normalize", "render", "parse", "ParseError",
                 "QPResult", "Entity", "Term"):
        assert hasattr(qpfast, name)
    assert issubclass(qpfast.ParseError, ValueError)
