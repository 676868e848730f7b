"""Hand-computed checks of the DESIGN.md §6 metrics (`qpfast.evaluate`)."""
from __future__ import annotations

import pytest

import qpfast
from qpfast.evaluate import REPORT_KEYS, Counts, evaluate, report, score_example

Q = "兰蔻小黑瓶适合什么肤质"
GOLD = dict(ner=[["兰蔻", "品牌"], ["小黑瓶", "产品"]], seg=["兰蔻", "小黑瓶", "适合", "什么", "肤质"],
            weight=[3, 3, 1, 0, 2], cat="美妆>护肤", intent="想了解兰蔻小黑瓶")


def tgt(query: str, **fields) -> str:
    d = {**GOLD, **fields}
    return qpfast.render(d, query=query)


def test_perfect_prediction():
    g = tgt(Q)
    rep = evaluate([Q], [g], [g])
    assert list(rep) == list(REPORT_KEYS)
    assert {k: rep[k] for k in REPORT_KEYS if k != "n"} == {
        "seg_f1": 1.0, "ner_f1": 1.0, "weight_f1": 1.0, "cat_acc": 1.0, "cat1_acc": 1.0, "intent_f1": 1.0,
        "overall": 1.0, "invalid_rate": 0.0}
    assert rep["n"] == 1


def test_partial_segment_and_weight_overlap():
    # gold spans on q': (0,2)(2,5)(5,7)(7,9)(9,11); predicted (0,5)(5,7)(7,11): one match
    pred = tgt(Q, ner=[["兰蔻小黑瓶", "产品"]], seg=["兰蔻小黑瓶", "适合", "什么肤质"], weight=[3, 1, 2])
    rep = evaluate([Q], [tgt(Q)], [pred])
    assert rep["seg_f1"] == pytest.approx(2 * 1 / (3 + 5))
    assert rep["weight_f1"] == pytest.approx(2 * 1 / (3 + 5))  # (5,7,1) right
    assert rep["ner_f1"] == 0.0  # (0,5,产品) is neither gold span
    # right boundaries but a wrong level earns nothing
    pred2 = tgt(Q, weight=[3, 3, 2, 0, 2])
    rep2 = evaluate([Q], [tgt(Q)], [pred2])
    assert rep2["seg_f1"] == 1.0 and rep2["weight_f1"] == pytest.approx(2 * 4 / 10)


def test_ner_type_must_match():
    pred = tgt(Q, ner=[["兰蔻", "品牌"], ["小黑瓶", "品类"]])
    assert evaluate([Q], [tgt(Q)], [pred])["ner_f1"] == pytest.approx(2 * 1 / 4)


def test_duplicate_substrings_use_leftmost_spans():
    q = "小米手机和小米汽车"
    seg = ["小米", "手机", "和", "小米", "汽车"]
    base = dict(seg=seg, weight=[3, 3, 0, 3, 3], cat="数码>手机", intent="对比小米手机和汽车")
    gold = tgt(q, ner=[["小米", "品牌"], ["手机", "品类"]], **base)          # spans (0,2) (2,4)
    # "小米" first then "小米" again: the second lands on (5,7), not a gold span
    p1 = tgt(q, ner=[["小米", "品牌"], ["小米", "品牌"]], **base)
    assert evaluate([q], [gold], [p1])["ner_f1"] == pytest.approx(2 * 1 / (2 + 2))
    # "手机" first moves the following "小米" to (5,7): the text is a gold entity text, the span is not
    p2 = tgt(q, ner=[["手机", "品类"], ["小米", "品牌"]], **base)
    assert evaluate([q], [gold], [p2])["ner_f1"] == pytest.approx(2 * 1 / (2 + 2))
    p3 = tgt(q, ner=[["小米", "品牌"]], **base)
    assert evaluate([q], [gold], [p3])["ner_f1"] == pytest.approx(2 * 1 / (1 + 2))


def test_spaces_in_the_query():
    # q = "兰蔻 小黑瓶": entity spans are on q (with the space), segments on q' (without)
    q = "兰蔻  小黑瓶 "
    gold = tgt(q, ner=[["兰蔻 小黑瓶", "产品"]], seg=["兰蔻", "小黑瓶"], weight=[3, 3])
    pred = tgt(q, ner=[["小黑瓶", "产品"]], seg=["兰蔻小黑瓶"], weight=[3])
    c = score_example(q, gold, pred)
    assert (c.ner_tp, c.ner_pred, c.ner_gold) == (0, 1, 1)
    assert (c.seg_tp, c.seg_pred, c.seg_gold) == (0, 1, 2)
    r = qpfast.parse(gold, q)
    assert (r.entities[0].start, r.entities[0].end) == (0, 6)


def test_empty_predictions():
    pred = tgt(Q, ner=[])
    rep = evaluate([Q], [tgt(Q)], [pred])
    assert rep["ner_f1"] == 0.0 and rep["seg_f1"] == 1.0
    # no gold entity and no predicted entity anywhere: nothing to miss, F1 = 1
    g0, p0 = tgt(Q, ner=[]), tgt(Q, ner=[])
    assert evaluate([Q], [g0], [p0])["ner_f1"] == 1.0
    # predicted entities where the gold has none: precision 0
    assert evaluate([Q], [g0], [tgt(Q)])["ner_f1"] == 0.0


def test_unparsable_prediction_scores_zero_everywhere():
    for bad in ("not json", "", None, tgt(Q)[:-1], tgt(Q).replace("美妆>护肤", "美妆>不存在"),
                tgt("别的查询", seg=["别的查询"], weight=[3], ner=[])):
        rep = evaluate([Q], [tgt(Q)], [bad])
        assert rep["invalid_rate"] == 1.0
        for k in ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "cat1_acc", "intent_f1", "overall"):
            assert rep[k] == 0.0, (bad, k)


def test_mixed_corpus_counts_failed_parses_in_recall():
    g = tgt(Q)
    rep = evaluate([Q, Q], [g, g], [g, "garbage"])
    # one perfect query + one invalid: tp = 5, pred = 5, gold = 10 -> 2*5/15
    assert rep["seg_f1"] == pytest.approx(10 / 15)
    assert rep["ner_f1"] == pytest.approx(4 / 6)
    assert rep["cat_acc"] == 0.5 and rep["invalid_rate"] == 0.5 and rep["n"] == 2
    assert rep["overall"] == pytest.approx((10 / 15 + 4 / 6 + 10 / 15 + 0.5) / 4)
    # a task with nothing on either side: F1 is the share of predictions that parsed
    g0 = tgt(Q, ner=[])
    assert evaluate([Q, Q], [g0, g0], [g0, "garbage"])["ner_f1"] == 0.5


def test_category_levels():
    rep = evaluate([Q], [tgt(Q)], [tgt(Q, cat="美妆>彩妆")])
    assert rep["cat_acc"] == 0.0 and rep["cat1_acc"] == 1.0
    rep = evaluate([Q], [tgt(Q, cat="其他")], [tgt(Q, cat="美妆>彩妆")])
    assert rep["cat_acc"] == 0.0 and rep["cat1_acc"] == 0.0
    rep = evaluate([Q], [tgt(Q, cat="其他")], [tgt(Q, cat="其他")])
    assert rep["cat_acc"] == 1.0 and rep["cat1_acc"] == 1.0


def test_intent_char_f1_is_multiset_overlap():
    rep = evaluate([Q], [tgt(Q, intent="想了解兰蔻")], [tgt(Q, intent="了解兰蔻小黑瓶")])
    assert rep["intent_f1"] == pytest.approx(2 * 4 / (7 + 5))
    rep = evaluate([Q], [tgt(Q, intent="哈哈哈")], [tgt(Q, intent="哈")])
    assert rep["intent_f1"] == pytest.approx(2 * 1 / (1 + 3))
    # micro-averaged: long intents weigh more
    rep = evaluate([Q, Q], [tgt(Q, intent="ab"), tgt(Q, intent="cdef")],
                   [tgt(Q, intent="ab"), tgt(Q, intent="xyzw")])
    assert rep["intent_f1"] == pytest.approx(2 * 2 / (6 + 6))


def test_counts_add_up():
    a = score_example(Q, tgt(Q), tgt(Q))
    b = score_example(Q, tgt(Q), None)
    s = a + b
    assert s.n == 2 and s.invalid == 1 and s.seg_gold == 10 and s.seg_tp == 5
    acc = Counts()
    acc += a
    acc += b
    assert acc == s


def test_bad_inputs():
    with pytest.raises(ValueError, match="gold"):
        evaluate([Q], ["garbage"], [tgt(Q)])
    with pytest.raises(ValueError, match="lengths"):
        evaluate([Q], [tgt(Q)], [])
    with pytest.raises(ValueError):
        report(Counts())


def test_schema_without_some_fields():
    schema = qpfast.Schema(fields=("seg", "weight", "cat"))
    g = qpfast.render({"seg": GOLD["seg"], "weight": GOLD["weight"], "cat": "美妆>护肤"}, schema, query=Q)
    p = qpfast.render({"seg": GOLD["seg"], "weight": GOLD["weight"], "cat": "美妆>彩妆"}, schema, query=Q)
    rep = evaluate([Q], [g], [p], schema)
    assert rep["ner_f1"] is None and rep["intent_f1"] is None
    assert rep["overall"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
