"""Strict qpfast.parse: every grounding rule rejects a violating text, with the position of
the first offending character as the byte automaton sees it.

Each case is written with a marker `⟪` in front of the offending character; `pos` must be
its code-point offset in the text and `byte_pos` the byte the automaton rejected (the
character's first byte, or a later byte of it when a multi-byte character shares its first
bytes with the expected one: `mid` says how many bytes in).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from bench_scripts import bench_module
from strategies import schema_and_result, valid_results

from qpfast import DEFAULT_SCHEMA, Entity, ParseError, Schema, Term, parse, render

MARK = "⟪"
Q = "兰蔻小黑瓶适合什么肤质"
NER = '"ner":[["兰蔻","品牌"],["小黑瓶","产品"]]'
SEG = '"seg":["兰蔻","小黑瓶","适合","什么","肤质"]'
W = '"weight":[3,3,1,0,2]'
CAT = '"cat":"美妆>护肤"'
INTENT = '"intent":"想了解兰蔻小黑瓶适合哪些肤质"'
GOOD = "{" + ",".join([NER, SEG, W, CAT, INTENT]) + "}"


def target(ner=NER, seg=SEG, weight=W, cat=CAT, intent=INTENT, close="}"):
    return "{" + ",".join([ner, seg, weight, cat, intent]) + close


BENCH = bench_module("bench_parse")
py_parse = BENCH.py_parse


def rejects(marked: str, query: str = Q, schema: Schema | None = None, reason: str = "", mid: int = 0):
    """Assert strict parse rejects `marked` (without its marker) at the marker."""
    assert marked.count(MARK) == 1
    pos = marked.index(MARK)
    text = marked.replace(MARK, "")
    byte_pos = len(text[:pos].encode("utf-8", "surrogatepass")) + mid
    for inp in (text, text.encode("utf-8", "surrogatepass")):
        with pytest.raises(ParseError) as info:
            parse(inp, query, schema)
        e = info.value
        assert (e.pos, e.byte_pos) == (pos, byte_pos), (e, text[pos:pos + 5])
        assert reason in e.reason, e.reason
        assert e.text == (text if isinstance(inp, str) else inp.decode("utf-8", "replace"))
        assert str(pos) in str(e) and e.reason in str(e)
    # the independent Python reference rejects it too
    with pytest.raises(BENCH.PyParseError):
        py_parse(text, query, schema or DEFAULT_SCHEMA)
    return info.value


def test_good_target_parses():
    r = parse(GOOD, Q)
    assert r.ok and r.entities[1] == Entity("小黑瓶", "产品", 2, 5)
    assert py_parse(GOOD, Q) == r


# -- ner ------------------------------------------------------------------------------------

def test_entity_not_a_span():
    rejects(target(ner='"ner":[["兰⟪X","品牌"]]'), reason="not a span")
    # 雅 (E9 9B 85) shares its first byte with 黑 (E9 BB 91): rejected at its 2nd byte
    rejects(target(ner='"ner":[["⟪雅诗","品牌"]]'), reason="not a span", mid=1)
    rejects(target(ner='"ner":[["兰蔻小黑瓶适合什么肤质⟪啊","品牌"]]'), reason="not a span")


def test_entity_overlaps_or_out_of_order():
    # each entity must lie after the previous one's end
    # 小 (E5 B0 8F) shares its first byte with 合 (E5 90 88), a later character
    rejects(target(ner='"ner":[["兰蔻小","品牌"],["⟪小黑瓶","产品"]]'), reason="after the previous entity", mid=1)
    # 兰 (E5 85 B0) shares its first byte with 合 (E5 90 88), a later character
    rejects(target(ner='"ner":[["小黑瓶","产品"],["⟪兰蔻","品牌"]]'), reason="after the previous entity", mid=1)
    rejects(target(ner='"ner":[["兰蔻","品牌"],["⟪兰蔻","品牌"]]'), reason="after the previous entity", mid=1)


def test_entity_leftmost_occurrence_after_previous():
    q = "ab ab ab"
    t = '{"ner":[["ab","品牌"],["ab","品牌"]],"seg":["ababab"],"weight":[1],"cat":"其他","intent":"x"}'
    assert [(e.start, e.end) for e in parse(t, q).entities] == [(0, 2), (3, 5)]
    t = '{"ner":[["b a","品牌"],["b","品牌"]],"seg":["ababab"],"weight":[1],"cat":"其他","intent":"x"}'
    assert [(e.start, e.end) for e in parse(t, q).entities] == [(1, 4), (4, 5)]
    # after the last character is used, no entity may start
    rejects('{"ner":[["ab ab ab","品牌"]⟪,["ab","品牌"]],"seg":["ababab"],"weight":[1],"cat":"其他","intent":"x"}',
            q, reason="no query text is left")
    rejects('{"ner":[["ab","品牌"],["ab","品牌"],["ab","品牌"]⟪,["ab","品牌"]],"seg":["ababab"],"weight":[1],'
            '"cat":"其他","intent":"x"}', q, reason="no query text is left")


def test_entity_space_edges():
    q = "兰蔻 小黑瓶"
    seg = '"seg":["兰蔻","小黑瓶"]'
    w = '"weight":[3,3]'
    ok = target(ner='"ner":[["蔻 小","品牌"]]', seg=seg, weight=w)
    assert parse(ok, q).entities == [Entity("蔻 小", "品牌", 1, 4)]  # inner spaces are fine
    # leading space: rejected at the space itself
    rejects(target(ner='"ner":[["⟪ 小黑瓶","产品"]]', seg=seg, weight=w), q, reason="starts or ends with a space")
    # trailing space: rejected at the closing quote
    rejects(target(ner='"ner":[["兰蔻 ⟪","品牌"]]', seg=seg, weight=w), q, reason="starts or ends with a space")


def test_empty_entity():
    rejects(target(ner='"ner":[["⟪","品牌"]]'), reason="empty")
    rejects(target(ner='"ner":[["兰蔻","品牌"],["⟪","产品"]]'), reason="empty")


def test_unknown_entity_type():
    # 种 (E7 A7 8D) vs 牌 (E7 89 8C) and 类 (E7 B1 BB): rejected at its 2nd byte
    rejects(target(ner='"ner":[["兰蔻","品⟪种"]]'), reason="entity_types", mid=1)
    rejects(target(ner='"ner":[["兰蔻","⟪brand"]]'), reason="entity_types")
    rejects(target(ner='"ner":[["兰蔻","品⟪"]]'), reason="entity_types")  # a prefix of a label
    rejects(target(ner='"ner":[["兰蔻","品牌⟪x"]]'), reason="entity_types")
    rejects(target(ner='"ner":[["兰蔻","⟪"]]'), reason="entity_types")  # empty type


def test_ner_shape():
    rejects(target(ner='"ner":[⟪"兰蔻"]'))
    rejects(target(ner='"ner":[["兰蔻","品牌"⟪,"x"]]'))
    rejects(target(ner='"ner":⟪null'))
    rejects(target(ner='"ner":[["兰蔻","品牌"],⟪]'))


# -- seg ------------------------------------------------------------------------------------

def test_seg_item_does_not_continue_query():
    rejects(target(seg='"seg":["兰蔻","小⟪白瓶","适合","什么","肤质"]'), reason="does not continue")
    # 小 (E5 B0 8F) vs 兰 (E5 85 B0): rejected at its 2nd byte
    rejects(target(seg='"seg":["⟪小黑瓶","兰蔻","适合","什么","肤质"]'), reason="does not continue", mid=1)
    # a space inside a segment
    rejects('{"seg":["ab⟪ c"]}', "ab c", Schema(fields=("seg",)), reason="does not continue")


def test_seg_spans_a_space_when_the_schema_breaks_at_spaces():
    s = Schema(fields=("seg",), seg_breaks_at_spaces=True)
    rejects('{"seg":["ab⟪c"]}', "ab c", s, reason="spans a space")
    rejects('{"seg":["x","ab⟪cd"]}', "x ab  cd", s, reason="spans a space")
    rejects('{"seg":["三星⟪galaxy","s24"]}', "三星 galaxy s24", s, reason="spans a space")
    assert [t.text for t in parse('{"seg":["ab","c"]}', "ab c", s).terms] == ["ab", "c"]
    assert [t.text for t in parse('{"seg":["a","b","c"]}', "a b c", s).terms] == ["a", "b", "c"]
    # without the flag (DESIGN.md §1) a segment may span a space of q; never one inside q'
    assert [t.text for t in parse('{"seg":["abc"]}', "ab c", Schema(fields=("seg",))).terms] == ["abc"]
    # the default-schema example (no spaces) is unaffected
    assert parse(GOOD, Q, Schema(seg_breaks_at_spaces=True)) == parse(GOOD, Q)


def test_empty_seg_item():
    rejects(target(seg='"seg":["兰蔻","⟪","小黑瓶","适合","什么","肤质"]'), reason="segment is empty")
    rejects(target(seg='"seg":["⟪"]'), reason="segment is empty")
    rejects(target(seg='"seg":[⟪]'))


def test_seg_does_not_cover_query():
    rejects(target(seg='"seg":["兰蔻","小黑瓶"⟪]', weight='"weight":[3,3]'), reason="before covering")
    rejects(target(seg='"seg":["兰蔻","小黑瓶","适合","什么","肤"⟪]'), reason="before covering")


def test_seg_extra_item():
    rejects(target(seg='"seg":["兰蔻","小黑瓶","适合","什么","肤质"⟪,"啊"]'), reason="already covers")
    rejects(target(seg='"seg":["兰蔻","小黑瓶","适合","什么","肤质⟪啊"]'), reason="already covers")


# -- weight ---------------------------------------------------------------------------------

def test_weight_out_of_range():
    rejects(target(weight='"weight":[3,3,1,0,⟪4]'), reason="weight")
    rejects(target(weight='"weight":[3,3,1,0,⟪9]'), reason="weight")
    rejects(target(weight='"weight":[⟪-1,3,1,0,2]'))
    rejects(target(weight='"weight":[3,3,1,0,2⟪0]'), reason="weight")  # two digits
    rejects(target(weight='"weight":[3,3,1,0,⟪"2"]'))
    rejects(target(weight='"weight":[3,3,1,0,2⟪.0]'))
    ten = Schema(weight_levels=10)
    t = target(weight='"weight":[9,9,9,9,9]')
    assert parse(t, Q, ten).weights == [9] * 5
    rejects(target(weight='"weight":[9,1⟪0,9,9,9]'), schema=ten, reason="weight")
    two = Schema(weight_levels=2)
    rejects(target(weight='"weight":[1,1,1,0,⟪2]'), schema=two, reason="weight")


def test_weight_count_mismatch():
    rejects(target(weight='"weight":[3,3,1,0⟪]'), reason="fewer weights")
    rejects(target(weight='"weight":[3⟪]'), reason="fewer weights")
    rejects(target(weight='"weight":[3,3,1,0,2⟪,1]'), reason="more weights")
    rejects(target(weight='"weight":[⟪]'))


# -- cat ------------------------------------------------------------------------------------

def test_category_not_in_set():
    # 发 (E5 8F 91) vs 肤 (E8 82 A4): first byte differs
    rejects(target(cat='"cat":"美妆>护⟪发"'), reason="categories")
    rejects(target(cat='"cat":"美妆⟪"'), reason="categories")  # a prefix of labels
    rejects(target(cat='"cat":"美妆>⟪"'), reason="categories")
    rejects(target(cat='"cat":"⟪"'), reason="categories")
    rejects(target(cat='"cat":"其他⟪>"'), reason="categories")
    rejects(target(cat='"cat":"⟪Other"'), reason="categories")
    # 猪 (E7 8C AA) vs 猫 (E7 8C AB): shares two bytes with a label, rejected at the 3rd
    rejects(target(cat='"cat":"宠物>⟪猪"'), reason="categories", mid=2)
    rejects(target(cat='"cat":⟪["其他"]'))


# -- intent ---------------------------------------------------------------------------------

def test_empty_intent():
    rejects(target(intent='"intent":"⟪"'), reason="intent is empty")


def test_intent_too_long():
    assert parse(target(intent='"intent":"' + "意" * 32 + '"'), Q).intent == "意" * 32
    rejects(target(intent='"intent":"' + "意" * 32 + '⟪意"'), reason="longer than")
    rejects(target(intent='"intent":"' + "\\\\" * 32 + '⟪a"'), reason="longer than")  # escapes count once
    rejects(target(intent='"intent":"' + "😀" * 32 + '⟪\\""'), reason="longer than")
    small = Schema(intent_max_chars=2)
    assert parse(target(intent='"intent":"\\"\\\\"'), Q, small).intent == '"\\'
    rejects(target(intent='"intent":"ab⟪c"'), schema=small, reason="longer than")


def test_control_character_in_intent():
    rejects(target(intent='"intent":"a⟪\x01b"'), reason="control")
    rejects(target(intent='"intent":"a⟪\nb"'), reason="control")
    rejects(target(intent='"intent":"a⟪\x7fb"'), reason="control")
    # json.dumps would write a control character as an escape: not canonical here (the
    # escape is rejected at its letter)
    rejects(target(intent='"intent":"a\\⟪u0001b"'), reason="escape")
    rejects(target(intent='"intent":"a\\⟪nb"'), reason="escape")
    rejects(target(intent='"intent":"a\\⟪tb"'), reason="escape")


def test_c1_control_in_intent_position():
    # U+0085 is C2 85: rejected at its 2nd byte
    e = rejects(target(intent='"intent":"a⟪\x85b"'), mid=1)
    assert "intent" in e.reason


def test_c1_control_in_intent_reason():
    rejects(target(intent='"intent":"a⟪\x85b"'), mid=1, reason="control")


def test_invalid_utf8_and_surrogates_in_intent():
    text = target(intent='"intent":"a\udcffb"')  # a lone surrogate (surrogatepass: ED B3 BF)
    with pytest.raises(ParseError) as info:
        parse(text, Q)
    pre = text.index("\udcff")
    assert info.value.pos == pre and info.value.byte_pos == len(text[:pre].encode()) + 1
    pre = (GOOD[:GOOD.index('"intent":"')] + '"intent":"a').encode()
    data = pre + b"\xff" + b'b"}'
    with pytest.raises(ParseError) as info:
        parse(data, Q)
    assert info.value.byte_pos == data.index(b"\xff") and "UTF-8" in info.value.reason
    assert info.value.text[info.value.pos] == "\ufffd"
    data = pre + b"\xe4\xb8" + b'"}'  # a cut character
    with pytest.raises(ParseError) as info:
        parse(data, Q)
    assert info.value.byte_pos == len(pre) + 2
    assert info.value.text[info.value.pos] == "\ufffd"


# -- non-canonical JSON ---------------------------------------------------------------------------

def test_non_canonical_escapes():
    rejects(target(intent='"intent":"\\⟪u4e2d"'), reason="escape")
    rejects(target(intent='"intent":"a\\⟪/b"'), reason="escape")
    rejects(target(seg='"seg":["⟪\\u5170蔻","小黑瓶","适合","什么","肤质"]'))
    rejects(target(ner='"ner":[["⟪\\u5170蔻","品牌"]]'))
    rejects(target(cat='"cat":"⟪\\u7f8e妆>护肤"'))
    rejects(target(ner='"ner":[["兰蔻","⟪\\u54c1牌"]]'))
    # the whole target with ensure_ascii=True
    ascii_text = json.dumps(json.loads(GOOD), ensure_ascii=True, separators=(",", ":"))
    first = ascii_text.index("\\u")
    rejects(ascii_text[:first] + MARK + ascii_text[first:])


def test_escaped_quote_and_backslash_in_query():
    q = 'a"b\\c'
    t = ('{"ner":[["a\\"b","品牌"],["\\\\","品类"]],"seg":["a\\"","b\\\\c"],"weight":[1,2],"cat":"其他",'
         '"intent":"\\"\\\\"}')
    r = parse(t, q)
    assert r.entities == [Entity('a"b', "品牌", 0, 3), Entity("\\", "品类", 3, 4)]
    assert r.terms == [Term('a"', 1, 0, 2), Term("b\\c", 2, 2, 5)]
    assert r.intent == '"\\'
    assert render(r) == t
    # an unescaped quote ends the string early; a lone backslash escapes the next character
    rejects('{"ner":[["a"⟪b","品牌"]],"seg":["a\\"b\\\\c"],"weight":[1],"cat":"其他","intent":"x"}', q)
    rejects('{"ner":[],"seg":["a\\"b\\⟪c"],"weight":[1],"cat":"其他","intent":"x"}', q)


def test_whitespace_in_json():
    rejects("{" + MARK + " " + GOOD[1:])
    rejects('{"ner":' + MARK + " " + GOOD[len('{"ner":'):])
    rejects(GOOD.replace(',"seg"', "," + MARK + '\n"seg"'))
    rejects(GOOD[:-1] + MARK + " }")
    rejects(MARK + " " + GOOD)
    rejects(target(weight='"weight":[3,⟪ 3,1,0,2]'))


def test_wrong_key_order():
    rejects("{" + ",".join(['"⟪seg":["兰蔻","小黑瓶","适合","什么","肤质"]', NER, W, CAT, INTENT]) + "}")
    rejects("{" + ",".join([NER, SEG, W, '"⟪intent":"想了解"', CAT]) + "}")
    # custom key names and order
    s = Schema(fields=("cat", "seg"), keys={"cat": "类目"})
    assert parse('{"类目":"其他","seg":["ab"]}', "ab", s).category == "其他"
    rejects('{"⟪cat":"其他","seg":["ab"]}', "ab", s)
    rejects('{"⟪seg":["ab"],"类目":"其他"}', "ab", s)


def test_missing_and_extra_fields():
    rejects("{" + ",".join([NER, SEG, CAT, INTENT]).replace('"cat"', '"⟪cat"') + "}")
    rejects(GOOD[:-1] + MARK + ',"extra":1}', reason="")
    rejects("{" + MARK + "}")


def test_trailing_text():
    for tail in (" ", "\n", "x", "}", "<|im_end|>", GOOD):
        rejects(GOOD + MARK + tail, reason="after the closing brace")


def test_truncated_text_position_is_the_end():
    for cut in (0, 1, 5, len(GOOD) // 2, len(GOOD) - 1):
        text = GOOD[:cut]
        with pytest.raises(ParseError) as info:
            parse(text, Q)
        assert (info.value.pos, info.value.byte_pos) == (len(text), len(text.encode()))
        assert "end of text" in info.value.reason


def test_empty_query_after_normalization():
    for q in ("", "   ", "\x00\x01", "\t\n\u3000", "\ud800"):
        with pytest.raises(ParseError) as info:
            parse(GOOD, q)
        assert (info.value.pos, info.value.byte_pos) == (0, 0)
        assert "empty" in info.value.reason
        r = parse(GOOD, q, strict=False)
        assert "empty" in r.error and r.entities == [] and r.terms == []


def test_argument_types():
    with pytest.raises(TypeError, match="text"):
        parse(None, Q)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="query"):
        parse(GOOD, b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schema"):
        parse(GOOD, Q, {"fields": ["ner"]})  # type: ignore[arg-type]


def test_parse_error_pickles():
    import pickle
    with pytest.raises(ParseError) as info:
        parse(GOOD + " ", Q)
    back = pickle.loads(pickle.dumps(info.value))
    assert isinstance(back, ParseError) and isinstance(back, ValueError)
    assert (back.reason, back.pos, back.byte_pos, back.text, str(back)) == \
        (info.value.reason, info.value.pos, info.value.byte_pos, info.value.text, str(info.value))


def test_truncated_query_grounds_against_the_cut():
    raw = "a" * 70
    t = '{"ner":[],"seg":["' + "a" * 64 + '"],"weight":[1],"cat":"其他","intent":"x"}'
    r = parse(t, raw)
    assert r.truncated and r.normalized == "a" * 64
    rejects('{"ner":[],"seg":["' + "a" * 64 + '⟪a"],"weight":[1],"cat":"其他","intent":"x"}', raw)


# -- properties -------------------------------------------------------------------------------

def _first_error(data: bytes, query: str, schema: Schema):
    try:
        parse(data, query, schema)
    except ParseError as e:
        return e
    return None


@settings(max_examples=150, deadline=None)
@given(schema_and_result(), st.data())
def test_error_position_is_the_first_offending_byte(triple, data):
    """Corrupt a valid target after byte k: the error is at or after k, the bytes before it
    are a viable prefix (parsing them fails only at their end), and adding the offending
    byte makes it fail there."""
    schema, raw, res = triple
    good = render(res, schema).encode("utf-8")
    k = data.draw(st.integers(0, len(good)), label="k")
    junk = data.draw(st.one_of(st.binary(min_size=1, max_size=4),
                               st.sampled_from([b" ", b"\n", b'"', b"\\", b",", b"]", b"}", b"\xe4\xb8", b"0"])),
                     label="junk")
    bad = good[:k] + junk + good[k:] if data.draw(st.booleans()) else good[:k] + junk
    e = _first_error(bad, raw, schema)
    if e is None:
        return  # the corruption happened to be valid
    b = e.byte_pos
    assert k <= b <= len(bad)
    if b < len(bad):
        before = _first_error(bad[:b], raw, schema)
        if e.reason.startswith("text after the closing brace"):
            assert before is None
        else:
            assert before is not None and before.byte_pos == b and "end of text" in before.reason
        again = _first_error(bad[:b + 1], raw, schema)
        assert again is not None and again.byte_pos == b and again.reason == e.reason
    else:
        assert "end of text" in e.reason
    # pos is the code point that contains the byte
    text = bad.decode("utf-8", "replace")
    assert 0 <= e.pos <= len(text)


MUTATIONS = ["delete", "insert", "replace", "swap", "dup", "truncate"]
JUNK = ['"', "\\", " ", ",", "[", "]", "{", "}", ":", "0", "4", "a", "中", "品牌", "其他", "\\u4e2d",
        "\x01", "😀", '","', '"],["', "\u0301"]


@settings(max_examples=250, deadline=None)
@given(schema_and_result(), st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6),
                                               st.integers(0, 10**6), st.sampled_from(JUNK)),
                                     min_size=1, max_size=3))
def test_agrees_with_python_reference(triple, edits):
    """C++ strict parse and the pure-Python reference (json.loads + the rules, in
    bench/bench_parse.py) accept exactly the same mutated texts, with the same results."""
    schema, raw, res = triple
    text = render(res, schema)
    for op, i, j, junk in edits:
        n = len(text)
        i, j = i % (n + 1), j % (n + 1)
        if op == "delete" and n:
            text = text[:min(i, n - 1)] + text[min(i, n - 1) + 1:]
        elif op == "insert":
            text = text[:i] + junk + text[i:]
        elif op == "replace" and n:
            text = text[:min(i, n - 1)] + junk + text[min(i, n - 1) + 1:]
        elif op == "swap":
            a, b = sorted((i, j))
            text = text[:a] + text[b:] + text[a:b] if a < b else text
        elif op == "dup":
            a, b = sorted((i, j))
            text = text[:b] + text[a:b] + text[b:]
        elif op == "truncate":
            text = text[:i]
    try:
        want = py_parse(text, raw, schema)
    except BENCH.PyParseError:
        want = None
    try:
        got = parse(text, raw, schema)
    except ParseError:
        got = None
    assert (got is None) == (want is None), (text, got, want)
    if got is not None:
        assert got == want


@settings(max_examples=50, deadline=None)
@given(valid_results())
def test_every_prefix_is_truncated(pair):
    raw, res = pair
    text = render(res)
    data = text.encode()
    for cut in range(len(data)):
        e = _first_error(data[:cut], raw, DEFAULT_SCHEMA)
        assert e is not None and e.byte_pos == cut and "end of text" in e.reason
        # the position of the cut, in code points of what was given
        assert e.pos == len(data[:cut].decode("utf-8", "ignore"))
    assert parse(data, raw) == res


def test_python_reference_matches_on_valid_targets():
    # the bench's own targets: the C++ and Python parsers return the same results
    targets = BENCH.make_targets(200, seed=7)
    assert [parse(t, q) for q, t in targets] == [py_parse(t, q) for q, t in targets]
