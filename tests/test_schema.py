"""qpfast.Schema: validation of every field, JSON round trip, stable hash, default labels."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
from hypothesis import given, settings
from strategies import schemas

import qpfast
from qpfast import DEFAULT_SCHEMA, Schema

# DESIGN.md §5, copied verbatim (labels in order).
DESIGN_ENTITY_TYPES = """
品牌 brand · 产品 named product or line (小黑瓶) · 品类 generic product or
service kind (粉底液, 民宿) · 型号 model or spec (su7, 574, 15pro) · 人物 person · 地点 place ·
机构 organization, store, school · 作品 title of a film, show, game, book, song ·
时间 time expression (周末, 夏天) · 人群 audience or condition (油皮, 学生党, 宝妈).
"""
DESIGN_CATEGORIES = """
美妆>护肤 美妆>彩妆 美妆>香水 · 时尚>穿搭 时尚>鞋包 时尚>配饰 · 美食>菜谱 美食>探店 美食>饮品 ·
旅行>国内 旅行>出境 旅行>住宿 · 数码>手机 数码>电脑 数码>影音 · 家居>装修 家居>家电 家居>收纳 ·
母婴>育儿 母婴>孕产 · 运动>健身 运动>减脂 运动>户外 · 教育>考试 教育>语言 教育>升学 ·
职场>求职 职场>技能 · 汽车>选购 汽车>用车 · 娱乐>明星 娱乐>影视 娱乐>音乐 · 游戏>手游 游戏>主机 ·
宠物>猫 宠物>狗 · 健康>医疗 健康>养生 · 生活>租房 生活>情感 生活>摄影 生活>手工 · 其他
"""

# DEFAULT_SCHEMA.hash, computed once. It must never change: caches, KV prefixes and trained
# models are keyed by it. If the default schema changes on purpose, update it here.
DEFAULT_SCHEMA_HASH = "0e0c4006113e63a1"


def _design_types():
    out = []
    for part in DESIGN_ENTITY_TYPES.replace("\n", " ").split("·"):
        out.append(part.split()[0])
    return out


def _design_categories():
    return [w for w in DESIGN_CATEGORIES.split() if w != "·"]


# -- defaults ---------------------------------------------------------------------------

def test_default_labels_match_design():
    assert list(DEFAULT_SCHEMA.entity_types) == _design_types()
    assert len(DEFAULT_SCHEMA.entity_types) == 10
    assert list(DEFAULT_SCHEMA.categories) == _design_categories()
    assert len(DEFAULT_SCHEMA.categories) == 44


def test_default_values():
    s = DEFAULT_SCHEMA
    assert s.fields == ("ner", "seg", "weight", "cat", "intent")
    assert dict(s.keys) == {f: f for f in s.fields}
    assert (s.weight_levels, s.intent_max_chars, s.max_query_chars) == (4, 32, 64)
    assert Schema() == DEFAULT_SCHEMA
    assert qpfast.DEFAULT_SCHEMA is qpfast.schema.DEFAULT_SCHEMA


# -- validation: each error is a ValueError/TypeError whose message starts with the field ---

BAD = [
    # (kwargs, exception, field named)
    (dict(fields="ner"), TypeError, "fields"),
    (dict(fields=()), ValueError, "fields"),
    (dict(fields=("ner", "bogus")), ValueError, "fields"),
    (dict(fields=("ner", "ner")), ValueError, "fields"),
    (dict(fields=("weight",)), ValueError, "fields"),  # weight without seg
    (dict(fields=("ner", "weight", "seg")), ValueError, "fields"),  # weight before seg
    (dict(fields=(1,)), ValueError, "fields"),
    (dict(keys=[("ner", "n")]), TypeError, "keys"),
    (dict(keys={"bogus": "b"}), ValueError, "keys"),
    (dict(keys={"ner": 1}), TypeError, "keys"),
    (dict(keys={"ner": ""}), ValueError, "keys"),
    (dict(keys={"ner": "a b"}), ValueError, "keys"),
    (dict(keys={"ner": "a\tb"}), ValueError, "keys"),
    (dict(keys={"ner": "a\x00"}), ValueError, "keys"),
    (dict(keys={"ner": 'a"'}), ValueError, "keys"),
    (dict(keys={"ner": "a\\"}), ValueError, "keys"),
    (dict(keys={"ner": "seg"}), ValueError, "keys"),  # two fields share a key name
    (dict(keys={"ner": "x", "seg": "x"}), ValueError, "keys"),
    (dict(entity_types="品牌"), TypeError, "entity_types"),
    (dict(entity_types=()), ValueError, "entity_types"),
    (dict(entity_types=("品牌", "品牌")), ValueError, "entity_types"),
    (dict(entity_types=("品牌", 3)), TypeError, "entity_types"),
    (dict(entity_types=("",)), ValueError, "entity_types"),
    (dict(entity_types=("a b",)), ValueError, "entity_types"),
    (dict(entity_types=(" a",)), ValueError, "entity_types"),
    (dict(entity_types=("a\u3000",)), ValueError, "entity_types"),
    (dict(entity_types=("a\x00",)), ValueError, "entity_types"),
    (dict(entity_types=("a\x7f",)), ValueError, "entity_types"),
    (dict(entity_types=("a\x85",)), ValueError, "entity_types"),  # C1 control (and whitespace)
    (dict(entity_types=("a\x9f",)), ValueError, "entity_types"),  # C1 control
    (dict(entity_types=("a\x1b",)), ValueError, "entity_types"),
    (dict(entity_types=("a\ud800",)), ValueError, "entity_types"),  # lone surrogate
    (dict(categories="其他"), TypeError, "categories"),
    (dict(categories=[]), ValueError, "categories"),
    (dict(categories=("其他", "其他")), ValueError, "categories"),
    (dict(categories=(None,)), TypeError, "categories"),
    (dict(categories=("美妆>\n护肤",)), ValueError, "categories"),
    (dict(categories=("美妆>护肤\x01",)), ValueError, "categories"),
    (dict(weight_levels=1), ValueError, "weight_levels"),
    (dict(weight_levels=11), ValueError, "weight_levels"),
    (dict(weight_levels=0), ValueError, "weight_levels"),
    (dict(weight_levels=-4), ValueError, "weight_levels"),
    (dict(weight_levels=4.0), TypeError, "weight_levels"),
    (dict(weight_levels="4"), TypeError, "weight_levels"),
    (dict(weight_levels=True), TypeError, "weight_levels"),
    (dict(weight_levels=None), TypeError, "weight_levels"),
    (dict(intent_max_chars=0), ValueError, "intent_max_chars"),
    (dict(intent_max_chars=1025), ValueError, "intent_max_chars"),
    (dict(intent_max_chars=3.5), TypeError, "intent_max_chars"),
    (dict(intent_max_chars=False), TypeError, "intent_max_chars"),
    (dict(max_query_chars=0), ValueError, "max_query_chars"),
    (dict(max_query_chars=257), ValueError, "max_query_chars"),
    (dict(max_query_chars=-1), ValueError, "max_query_chars"),
    (dict(max_query_chars="64"), TypeError, "max_query_chars"),
    (dict(max_query_chars=True), TypeError, "max_query_chars"),
    (dict(seg_breaks_at_spaces=1), TypeError, "seg_breaks_at_spaces"),
    (dict(seg_breaks_at_spaces="yes"), TypeError, "seg_breaks_at_spaces"),
    (dict(fields=("ner", "cat"), seg_breaks_at_spaces=True), ValueError, "seg_breaks_at_spaces"),
]


@pytest.mark.parametrize("kwargs,exc,name", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_argument_names_the_field(kwargs, exc, name):
    with pytest.raises(exc) as info:
        Schema(**kwargs)
    assert str(info.value).startswith(name + ":"), str(info.value)


@pytest.mark.parametrize("kwargs", [
    dict(weight_levels=2), dict(weight_levels=10), dict(intent_max_chars=1),
    dict(intent_max_chars=1024), dict(max_query_chars=1), dict(max_query_chars=256),
    dict(fields=("seg", "weight")), dict(fields=("intent",)), dict(fields=("seg", "ner", "weight")),
    dict(fields=["cat", "seg", "intent", "weight", "ner"]),
    dict(entity_types=["a"], categories=["b"]),
    dict(entity_types=('品"牌', "品\\类", "😀", "a\u200db", "x>y")),  # quotes, backslashes, emoji, ZWJ
    dict(categories=("美妆", "美妆>护肤")),  # a label that is a prefix of another one
    dict(keys={"ner": "实体", "cat": "类目"}),
    dict(keys={"cat": "intent", "intent": "cat"}),  # swapped names are still distinct
    dict(seg_breaks_at_spaces=True), dict(fields=("seg",), seg_breaks_at_spaces=True),
])
def test_valid_edge_values(kwargs):
    s = Schema(**kwargs)
    s.compiled()  # the C++ core accepts it too
    assert Schema.from_json(s.to_json()) == s


def test_fields_and_labels_are_tuples():
    s = Schema(fields=["seg", "weight"], entity_types=["a", "b"], categories=iter(["x", "y"]))
    assert s.fields == ("seg", "weight")
    assert s.entity_types == ("a", "b")
    assert s.categories == ("x", "y")
    assert dict(s.keys) == {"seg": "seg", "weight": "weight"}


def test_immutable():
    s = Schema()
    with pytest.raises(AttributeError):
        s.weight_levels = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.keys["ner"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        s.keys.update(ner="x")  # type: ignore[attr-defined]
    assert s == DEFAULT_SCHEMA


# -- serialization ------------------------------------------------------------------------

def test_json_round_trip_default():
    text = DEFAULT_SCHEMA.to_json()
    assert Schema.from_json(text) == DEFAULT_SCHEMA
    assert Schema.from_json(text.encode("utf-8")) == DEFAULT_SCHEMA
    assert Schema.from_json(DEFAULT_SCHEMA.to_dict()) == DEFAULT_SCHEMA
    assert '"format":"qp-json/1"' in text
    assert "品牌" in text  # not \u-escaped


def test_seg_breaks_at_spaces_is_serialized_only_when_on():
    on = Schema(seg_breaks_at_spaces=True)
    assert "seg_breaks_at_spaces" not in DEFAULT_SCHEMA.to_dict()   # the default hash stays pinned
    assert on.to_dict()["seg_breaks_at_spaces"] is True
    assert on != DEFAULT_SCHEMA and on.hash != DEFAULT_SCHEMA.hash
    assert Schema.from_json(on.to_json()) == on
    assert Schema.from_json({**DEFAULT_SCHEMA.to_dict(), "seg_breaks_at_spaces": False}) == DEFAULT_SCHEMA


@settings(max_examples=80, deadline=None)
@given(schemas())
def test_json_round_trip_and_hash(s):
    back = Schema.from_json(s.to_json())
    assert back == s
    assert back.hash == s.hash
    assert hash(back) == hash(s)
    assert back.to_json() == s.to_json()
    assert pickle.loads(pickle.dumps(s)) == s
    s.compiled()


@settings(max_examples=50, deadline=None)
@given(schemas(), schemas())
def test_hash_equal_iff_equal(a, b):
    assert (a == b) == (a.hash == b.hash) == (a.to_json() == b.to_json())


def test_from_json_rejects_bad_input():
    with pytest.raises(ValueError, match="format"):
        Schema.from_json('{"format":"qp-json/2"}')
    with pytest.raises(ValueError, match="unknown keys"):
        Schema.from_json('{"fields":["ner"],"colour":"red"}')
    with pytest.raises(ValueError):
        Schema.from_json("[1, 2]")
    with pytest.raises(ValueError):
        Schema.from_json("not json")
    with pytest.raises(TypeError):
        Schema.from_json(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^weight_levels"):
        Schema.from_json('{"weight_levels":1}')
    # a missing key means its default
    assert Schema.from_json("{}") == DEFAULT_SCHEMA


def test_pickle_and_copy():
    s = Schema(fields=("seg", "weight", "cat"), keys={"cat": "类目"}, categories=("a", "b"))
    for other in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert other == s and other.hash == s.hash
        assert other.keys["cat"] == "类目"


# -- the stable hash ------------------------------------------------------------------------

def test_default_hash_is_pinned():
    assert DEFAULT_SCHEMA.hash == DEFAULT_SCHEMA_HASH
    assert len(DEFAULT_SCHEMA.hash) == 16 and int(DEFAULT_SCHEMA.hash, 16) >= 0


def test_hash_is_the_same_in_another_process():
    code = ("import qpfast; s = qpfast.Schema(fields=('seg','weight','cat'), keys={'cat':'类目'}, "
            "categories=('b','a')); print(qpfast.DEFAULT_SCHEMA.hash, s.hash)")
    here = Schema(fields=("seg", "weight", "cat"), keys={"cat": "类目"}, categories=("b", "a")).hash
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split()
        assert out == [DEFAULT_SCHEMA_HASH, here]


def test_equal_schemas_equal_hashes():
    a = Schema(keys={"ner": "ner"}, fields=list(DEFAULT_SCHEMA.fields))
    assert a == DEFAULT_SCHEMA and a.hash == DEFAULT_SCHEMA.hash and hash(a) == hash(DEFAULT_SCHEMA)
    assert len({a, DEFAULT_SCHEMA}) == 1
    # every field takes part in the hash
    variants = [
        Schema(fields=("ner", "seg", "weight", "intent", "cat")),
        Schema(keys={"ner": "entities"}),
        Schema(entity_types=DEFAULT_SCHEMA.entity_types[::-1]),
        Schema(weight_levels=5),
        Schema(categories=DEFAULT_SCHEMA.categories[:-1]),
        Schema(intent_max_chars=31),
        Schema(max_query_chars=63),
    ]
    hashes = {v.hash for v in variants} | {DEFAULT_SCHEMA.hash}
    assert len(hashes) == len(variants) + 1


# -- label sets the C++ core can hold --------------------------------------------------------

def test_large_label_sets_match_every_label():
    # Over 32,768 trie nodes (the automaton once held the node in an int16_t and silently
    # stopped matching the later labels).
    labels = [f"类目{i:05d}>子类{i:05d}" for i in range(4000)]
    s = Schema(fields=("seg", "cat"), categories=labels)
    for c in labels[::50] + labels[-5:]:
        assert qpfast.parse('{"seg":["ab"],"cat":"' + c + '"}', "ab", s).category == c