"""Tests of the legacy pipeline (jieba + gazetteers + rules)."""
from __future__ import annotations

import pytest

import qpfast
from qpfast.data import QueryGenerator, split_plan
from qpfast.evaluate import evaluate
from qpfast.legacy import legacy_pipeline
from qpfast.legacy.category_rules import DOMAIN_CATEGORIES, KEYWORDS, classify
from qpfast.legacy.lexicon import Lexicon

jieba = pytest.importorskip("jieba")


@pytest.fixture(scope="module")
def legacy():
    return legacy_pipeline()  # train-split gazetteer, split seed 0


def _train_pair():
    """A skincare brand + line that the train gazetteer knows (the partition is seeded)."""
    pool = split_plan(0).pool("train")
    return pool.products["skincare"][0]


def test_labels_a_known_query(legacy):
    p = _train_pair()
    q = f"{p.brand}{p.line}适合什么肤质"
    r = legacy.label(q)
    assert r.error is None
    assert [(e.text, e.type) for e in r.entities][:2] == [(p.brand, "品牌"), (p.line, "产品")]
    assert r.segments[:2] == [p.brand, p.line] and r.weights[:2] == [3, 3]
    assert r.category == "美妆>护肤"
    assert "什么" in r.segments and r.weights[r.segments.index("什么")] == 0
    assert qpfast.parse(r.raw, q, strict=True) == r


@pytest.mark.parametrize("query", [
    "学生党平价粉底液推荐", "iPhone 15 Pro和华为mate60哪个好", "周末  成都去哪玩？", "🔥🔥 \"quoted\" \\ back\tslash",
    "？？？", "a", "ＹＳＬ小金条", "x" * 200, "成都" * 40, "A\x00B\x07C", "    spaced    out   ",
    "new balance 574 尺码", "1234567890", "的的的的", "😀", "<|im_end|>", "兰蔻 vs 兰蔻"])
def test_any_query_gets_a_valid_result(legacy, query):
    r = legacy.label(query)
    assert r.error is None
    again = qpfast.parse(r.raw, query, strict=True)
    assert again == r
    assert legacy.output(query) == r.raw


def test_empty_query_is_an_error_result(legacy):
    for q in ("", "   ", "\x00\t"):
        r = legacy.label(q)
        assert r.error is not None and r.normalized == ""
        assert legacy.output(q) == ""
    with pytest.raises(TypeError):
        legacy.label(3)


def test_generated_queries_all_valid_and_scored(legacy):
    train = QueryGenerator("train").examples(300, seed=21)
    test = QueryGenerator("test").examples(300, seed=21)
    outs = {}
    for name, exs in (("train", train), ("test", test)):
        qs = [e.query for e in exs]
        out = legacy(qs)
        assert all(qpfast.parse(o, q, strict=True).error is None for o, q in zip(out, qs))
        outs[name] = evaluate(qs, [e.target for e in exs], out)
    assert outs["train"]["invalid_rate"] == 0.0 and outs["test"]["invalid_rate"] == 0.0
    # it knows the train gazetteer, not the test one: a real generalization gap
    assert outs["train"]["ner_f1"] > 0.85 and outs["test"]["ner_f1"] < outs["train"]["ner_f1"] - 0.3
    assert outs["train"]["overall"] > 0.75
    assert outs["test"]["cat_acc"] > 0.4 and outs["test"]["seg_f1"] > 0.6


def test_private_tokenizer_leaves_global_jieba_alone(legacy):
    p = _train_pair()
    assert p.line not in jieba.dt.user_word_tag_tab
    assert not jieba.dt.initialized or jieba.dt.FREQ.get(p.line, 0) < 2000


def test_pipeline_is_cached():
    assert legacy_pipeline() is legacy_pipeline()
    with pytest.raises(ValueError):
        from qpfast.legacy import LegacyPipeline
        LegacyPipeline(gazetteer="test")


# -- lexicon and category rules (no jieba) ---------------------------------------------------
@pytest.fixture(scope="module")
def lexicon_all():
    return Lexicon(split_plan(0).pool("all"))


def test_lexicon_longest_match_and_boundaries(lexicon_all):
    tag = lambda q: [(m.text, m.type, m.start) for m in lexicon_all.tag(q)]  # noqa: E731
    assert tag("苹果型身材 穿搭") == [("苹果型身材", "人群", 0)]
    assert tag("iphone15pro") == [("iphone", "产品", 0), ("15pro", "型号", 6)]
    assert ("on", "品牌", 4) not in tag("iphone")  # not cut out of a longer Latin word
    assert tag("new balance 574") == [("new balance", "品牌", 0), ("574", "型号", 12)]
    assert tag("574") == []  # a short model needs its brand or line before it
    assert tag("nb574")[0] == ("nb", "品牌", 0)


def test_train_lexicon_knows_no_test_value():
    lex = Lexicon(split_plan(0).pool("train"))
    test_vals = split_plan(0).pool("test").values()
    assert not set(lex.types) & test_vals


def test_category_rules():
    cats = qpfast.DEFAULT_SCHEMA.categories
    assert set(KEYWORDS) == set(cats)
    assert all(c in cats for v in DOMAIN_CATEGORIES.values() for c in v)
    assert classify("成都攻略", [("地点", "city_cn")], cats) == "旅行>国内"
    assert classify("油皮粉底液推荐", [("人群", "skin"), ("品类", "makeup")], cats) == "美妆>彩妆"
    assert classify("随便看看", [], cats) == "其他"
