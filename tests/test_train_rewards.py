"""Stage-3 rewards: exact hand-computed values of r_k and Σ_k w_k · r_k on hand-made rollouts."""
from __future__ import annotations

import json

import pytest

import qpfast
from qpfast.train.rewards import DEFAULT_WEIGHTS, TASKS, QPReward, task_scores

Q = "兰蔻小黑瓶适合什么肤质"
GOLD = ('{"ner":[["兰蔻","品牌"],["小黑瓶","产品"]],"seg":["兰蔻","小黑瓶","适合","什么","肤质"],'
        '"weight":[3,3,1,0,2],"cat":"美妆>护肤","intent":"想了解兰蔻小黑瓶适合哪些肤质"}')


def _out(ner, seg, weight, cat, intent) -> str:
    return json.dumps({"ner": ner, "seg": seg, "weight": weight, "cat": cat, "intent": intent},
                      ensure_ascii=False, separators=(",", ":"))


# One brand right, one product missed; first two segments merged; wrong category; short intent.
PARTIAL = _out([["兰蔻", "品牌"]], ["兰蔻小黑瓶", "适合", "什么", "肤质"], [3, 1, 0, 2], "美妆>彩妆", "想了解兰蔻")


def test_hand_made_outputs_are_valid():
    for text in (GOLD, PARTIAL):
        qpfast.parse(text, Q, strict=True)


def test_perfect_rollout():
    s = task_scores(Q, GOLD, GOLD)
    assert s == {"seg": 1.0, "ner": 1.0, "weight": 1.0, "cat": 1.0, "intent": 1.0}
    assert QPReward().reward(Q, GOLD, GOLD) == pytest.approx(4.2)          # 1+1+1+1+0.2


def test_partial_rollout_exact_values():
    s = task_scores(Q, GOLD, PARTIAL)
    # ner: gold {兰蔻/品牌, 小黑瓶/产品}, pred {兰蔻/品牌}: tp 1 -> 2·1/(1+2)
    assert s["ner"] == pytest.approx(2 / 3)
    # seg spans of q': gold (0,2)(2,5)(5,7)(7,9)(9,11), pred (0,5)(5,7)(7,9)(9,11): tp 3 -> 6/9
    assert s["seg"] == pytest.approx(2 / 3)
    # weight: pred (0,5,3)(5,7,1)(7,9,0)(9,11,2) vs gold (0,2,3)(2,5,3)(5,7,1)(7,9,0)(9,11,2): tp 3
    assert s["weight"] == pytest.approx(2 / 3)
    assert s["cat"] == 0.0
    # intent: "想了解兰蔻" (5 chars) vs 14 gold chars, all 5 shared -> 2·5/(5+14)
    assert s["intent"] == pytest.approx(10 / 19)
    assert QPReward().reward(Q, GOLD, PARTIAL) == pytest.approx(2 / 3 * 3 + 0.0 + 0.2 * 10 / 19)


def test_unparsable_rollouts_score_zero():
    rw = QPReward()
    for bad in ("not json", "", None, GOLD[:-1], GOLD.replace("肤质\"]", "肤\"]"),
                _out([], ["兰蔻小黑瓶适合什么肤质"], [3], "美妆>不存在", "x")):
        assert task_scores(Q, GOLD, bad) == {t: 0.0 for t in TASKS}
        assert rw.reward(Q, GOLD, bad) == 0.0


def test_no_entities_on_both_sides_is_full_ner_credit():
    q = "周末去哪玩"
    gold = _out([], ["周末", "去", "哪", "玩"], [2, 1, 0, 3], "旅行>国内", "想知道周末去哪里玩")
    pred = _out([], ["周末", "去哪玩"], [2, 3], "旅行>国内", "周末")
    s = task_scores(q, gold, pred)
    assert s["ner"] == 1.0
    assert s["seg"] == pytest.approx(2 * 1 / (2 + 4))        # (0,2) shared
    assert s["weight"] == pytest.approx(2 * 1 / (2 + 4))     # (0,2,2) shared
    assert s["cat"] == 1.0
    assert s["intent"] == pytest.approx(2 * 2 / (2 + 9))
    # a spurious entity where gold has none: ner F1 = 0
    spurious = _out([["周末", "时间"]], ["周末", "去哪玩"], [2, 3], "旅行>国内", "周末")
    assert task_scores(q, gold, spurious)["ner"] == 0.0


def test_intent_overlap_is_a_multiset():
    q = "好物"
    gold = _out([], ["好物"], [3], "其他", "好")
    pred = _out([], ["好物"], [3], "其他", "好好好")
    assert task_scores(q, gold, pred)["intent"] == pytest.approx(2 * 1 / (3 + 1))


def test_custom_weights_and_task_subset():
    rw = QPReward({"cat": 2.0, "seg": 0.5})
    assert rw.tasks == ("seg", "cat")
    assert rw.reward(Q, GOLD, PARTIAL) == pytest.approx(0.5 * 2 / 3 + 2.0 * 0.0)
    assert rw.reward(Q, GOLD, GOLD) == pytest.approx(2.5)
    assert rw([Q, Q], [GOLD, GOLD], [GOLD, None]) == pytest.approx([2.5, 0.0])
    assert QPReward({"seg": 1.0, "intent": 0.0}).tasks == ("seg",)


def test_trl_task_functions_sum_to_the_reward():
    rw = QPReward(DEFAULT_WEIGHTS)
    funcs, weights = rw.task_functions()
    assert [f.__name__ for f in funcs] == [f"qp_{t}" for t in TASKS]
    assert weights == [DEFAULT_WEIGHTS[t] for t in TASKS]
    outs = [GOLD, PARTIAL, "garbage"]
    kw = dict(prompts=[Q] * 3, completions=["ignored"] * 3, target=[GOLD] * 3, qp_output=outs, trainer_state=None)
    per_task = [f(**kw) for f in funcs]
    total = [sum(w * v[i] for w, v in zip(weights, per_task)) for i in range(3)]
    assert total == pytest.approx([rw.reward(Q, GOLD, o) for o in outs])
    # without qp_output, the decoded completions are scored
    kw2 = dict(prompts=[Q], completions=[PARTIAL], target=[GOLD])
    assert [f(**kw2)[0] for f in funcs] == pytest.approx([task_scores(Q, GOLD, PARTIAL)[t] for t in TASKS])


def test_bad_weights_and_gold():
    with pytest.raises(ValueError, match="unknown task"):
        QPReward({"sentiment": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        QPReward({"seg": -1.0})
    with pytest.raises(ValueError, match="weight > 0"):
        QPReward({"seg": 0.0})
    with pytest.raises(ValueError, match="gold target"):
        task_scores(Q, "not a gold line", GOLD)
