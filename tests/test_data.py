"""Tests of the generated data: gazetteers, templates, splits, generator, stream, files."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

import qpfast
from qpfast.data import (SPLITS, TEMPLATES, QueryGenerator, generate_splits, read_jsonl, split_plan,
                         unlabelled_queries, write_splits)
from qpfast.data import gazetteers as gz
from qpfast.data.generator import Piece, RejectedDraw
from qpfast.data.pattern import compile_template
from qpfast.data.perturb import drop_function_words, latin_typo, swap_order
from qpfast.schema import DEFAULT_CATEGORIES, DEFAULT_ENTITY_TYPES

SCHEMA = qpfast.DEFAULT_SCHEMA


# -- gazetteers and catalog ---------------------------------------------------------------
def test_gazetteers_cover_every_type_with_hundreds_of_values():
    values = gz.all_values()
    assert set(values) == set(DEFAULT_ENTITY_TYPES)
    assert len(values["品牌"]) >= 300 and len(values["品类"]) >= 300
    for etype, vals in values.items():
        assert len(vals) >= 100, etype
    assert sum(len(v) for v in values.values()) >= 2500


def test_gazetteer_values_are_normalized_and_typed_once():
    seen: dict[str, str] = {}
    for etype, vals in gz.all_values().items():
        for v in vals:
            assert str(qpfast.normalize(v)) == v, v
            assert v == v.strip() and "  " not in v
            assert len(v) >= 2 or etype == "型号", v
            assert seen.setdefault(v, etype) == etype, f"{v!r} is both {seen[v]} and {etype}"


def test_catalog_covers_all_categories():
    per_cat = Counter(t.category for t in TEMPLATES)
    assert set(per_cat) == set(DEFAULT_CATEGORIES)
    assert min(per_cat.values()) >= 8
    assert len(TEMPLATES) >= 400
    assert len({t.id for t in TEMPLATES}) == len(TEMPLATES)
    used_types = {ty for t in TEMPLATES for s in t.slots for ty in s.types}
    assert used_types == set(DEFAULT_ENTITY_TYPES)


def test_template_literals_are_never_entity_values():
    # A literal equal to a gazetteer value would be an entity in one record and plain text
    # in another: inconsistent gold labels.
    all_vals = set().union(*gz.all_values().values())
    clashes = sorted({lit for t in TEMPLATES for lit in t.literals if lit in all_vals})
    assert clashes == []


def test_catalog_has_the_issue_query_shapes():
    patterns = " ".join(t.pattern for t in TEMPLATES)
    for cue in ("同款", "平替", "攻略", " vs ", " 和 ", "吗", "怎么", "闭眼入", "citywalk", "256g"):
        assert cue in patterns, cue
    assert any(all(isinstance(p, type(t.slots[0])) for p in t.parts) for t in TEMPLATES if t.slots), \
        "no bare keyword template (slots only)"


def test_pattern_language():
    t = compile_template("美妆>护肤", "{a=品牌+产品.skincare} 和 ?的 好用/1|好不好用/1 {人群.skin/3}",
                         "对比{a}与{产品}|给{人群}")
    lit = [p for p in t.parts if not hasattr(p, "types")]
    assert lit[0].options == (("和", 0),) and not lit[0].optional
    assert lit[1].options == (("的", 0),) and lit[1].optional
    assert lit[2].options == (("好用", 1), ("好不好用", 1))
    slots = t.slots
    assert slots[0].name == "a" and slots[0].types == ("品牌", "产品") and slots[0].weight is None
    assert slots[1].weight == 3 and t.intents == ("对比{a}与{产品}", "给{人群}")
    bad = [("美妆>护肤", "{品牌.skincare}", "{品类}"),            # unknown intent reference
           ("美妆>护肤", "{车.skincare}", "x"),                    # unknown type
           ("美妆>护肤", "{人物+品牌.skincare}", "x"),             # types that cannot be linked
           ("美妆>护肤", "Lancome/3", "x"),                        # literal not normalized
           ("美妆>护肤", "?的", "x"),                              # can produce an empty query
           ("美妆>不存在", "护肤", "x"),                            # unknown category
           ("美妆>护肤", "{品牌.skincare} {品牌.skincare}", "x"),   # two slots, one name
           ("美妆>护肤", "护肤/7", "x")]                            # weight out of range
    for args in bad:
        with pytest.raises(ValueError):
            compile_template(*args)


# -- generated records ----------------------------------------------------------------------
def _check_example(ex) -> None:
    r = qpfast.parse(ex.target, ex.query, SCHEMA, strict=True)
    assert r.error is None
    assert qpfast.render(r) == ex.target  # canonical text
    q = r.normalized
    assert "".join(t.text for t in r.terms) == q.replace(" ", "")
    assert all(0 <= t.weight <= 3 for t in r.terms)
    assert r.category == ex.category and r.category in SCHEMA.categories
    assert 1 <= len(r.intent) <= SCHEMA.intent_max_chars
    assert [(e.text, e.type) for e in r.entities] == list(ex.entities)
    assert not r.truncated and len(q) <= SCHEMA.max_query_chars


def test_every_generated_record_reparses_strictly():
    exs = QueryGenerator("all").examples(3000, seed=11)
    for ex in exs:
        _check_example(ex)
    cats = Counter(ex.category for ex in exs)
    assert set(cats) == set(DEFAULT_CATEGORIES)
    # the raw queries carry the variation normalize() removes
    assert any(ex.query != str(qpfast.normalize(ex.query)) for ex in exs)
    assert any(" " in str(qpfast.normalize(ex.query)) for ex in exs)
    types = Counter(t for ex in exs for _, t in ex.entities)
    assert set(types) == set(DEFAULT_ENTITY_TYPES)


def test_every_template_can_be_generated():
    gen = QueryGenerator("all")
    rng = random.Random(5)
    for t in TEMPLATES:
        for _ in range(2):
            ex = gen.example(rng, template=t)
            assert ex.template == t.id
            _check_example(ex)


def test_entities_are_at_their_leftmost_occurrence():
    # the generator's own offsets agree with the parser's leftmost-match offsets
    gen = QueryGenerator("all")
    rng = random.Random(2)
    for _ in range(500):
        draft = gen.draft(rng)
        try:
            ex = gen.label(draft, rng)
        except RejectedDraw:  # a rejected draw is fine; a bad label is never emitted
            continue
        r = qpfast.parse(ex.target, ex.query)
        prev = 0
        for e in r.entities:
            assert r.normalized.find(e.text, prev) == e.start
            prev = e.end


def test_generation_is_deterministic_per_seed():
    a = QueryGenerator("train").examples(400, seed=7)
    b = QueryGenerator("train").examples(400, seed=7)
    c = QueryGenerator("train").examples(400, seed=8)
    assert a == b
    assert [e.query for e in a] != [e.query for e in c]


def _digest_in_subprocess(hashseed: str) -> str:
    code = ("import hashlib,qpfast.data as d;"
            "s=d.generate_splits(150,30,30,seed=3);"
            "print(hashlib.sha256(repr({k:[(e.query,e.target) for e in v] for k,v in s.items()})"
            ".encode()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_generation_is_deterministic_across_processes():
    assert _digest_in_subprocess("1") == _digest_in_subprocess("2")


# -- splits ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_split_pools_are_disjoint(split_seed):
    plan = split_plan(split_seed)
    pools = {s: plan.pool(s) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not pools[a].values() & pools[b].values(), (a, b)
            assert not {t.id for t in pools[a].templates} & {t.id for t in pools[b].templates}
    for s in SPLITS:  # every split covers every category
        assert {t.category for t in pools[s].templates} == set(DEFAULT_CATEGORIES)
    # the partition is a partition: every value and template has exactly one split
    assert set().union(*(p.values() for p in pools.values())) == set().union(*gz.all_values().values())
    assert sum(len(p.templates) for p in pools.values()) == len(TEMPLATES)


def test_generated_splits_are_disjoint_in_values_and_templates():
    data = generate_splits(2000, 300, 1000, seed=1)
    ents = {s: {text for ex in exs for text, _ in ex.entities} for s, exs in data.items()}
    tmpl = {s: {ex.template for ex in exs} for s, exs in data.items()}
    for a, b in (("train", "test"), ("train", "dev"), ("dev", "test")):
        assert not ents[a] & ents[b], sorted(ents[a] & ents[b])[:5]
        assert not tmpl[a] & tmpl[b]
    assert len(ents["test"]) > 150 and len(tmpl["test"]) >= 80


def test_split_partition_depends_on_the_split_seed():
    a, b = split_plan(0), split_plan(1)
    assert a.template_split != b.template_split
    assert a.value_split != b.value_split


# -- stream, perturbations, files ----------------------------------------------------------
def _pieces():
    return [Piece("兰蔻", 3, "品牌", chunk=1), Piece("lancome", 3, "品牌", chunk=1), Piece("适合", 1, None, chunk=2),
            Piece("什么", 0, None, chunk=3), Piece("肤质", 2, None, chunk=4), Piece("的", 0, None, chunk=5)]


def test_drop_function_words():
    rng = random.Random(0)
    out = [drop_function_words(_pieces(), rng) for _ in range(50)]
    content = ["兰蔻", "lancome", "适合", "肤质"]
    for o in out:  # content always kept, in order; only weight-0 literals go
        assert [p.text for p in o if p.weight > 0] == content
    assert any(len(o) == 4 for o in out) and any(len(o) > 4 for o in out)
    only_fn = [Piece("的", 0, None), Piece("吗", 0, None)]
    assert all(drop_function_words(only_fn, random.Random(i)) for i in range(20))  # never empties


def test_swap_order_keeps_the_pieces():
    rng = random.Random(0)
    base = _pieces()
    seen_change = False
    for _ in range(20):
        out = swap_order(base, rng)
        assert Counter(p.text for p in out) == Counter(p.text for p in base)
        seen_change |= [p.text for p in out] != [p.text for p in base]
    assert seen_change


def test_latin_typo_edits_one_latin_entity():
    rng = random.Random(0)
    for _ in range(30):
        out = latin_typo(_pieces(), rng)
        changed = [(a.text, b.text) for a, b in zip(_pieces(), out) if a.text != b.text]
        assert len(changed) == 1 and changed[0][0] == "lancome"
        assert abs(len(changed[0][1]) - len("lancome")) <= 1
    assert latin_typo([Piece("兰蔻", 3, "品牌")], rng)[0].text == "兰蔻"


def test_unlabelled_stream():
    a = list(unlabelled_queries(500, seed=2, perturb=0.5))
    assert a == list(unlabelled_queries(500, seed=2, perturb=0.5))
    assert len(a) == 500 and all(str(qpfast.normalize(q)) for q in a)
    clean = set(unlabelled_queries(500, seed=2, perturb=0.0))
    assert len(set(a) - clean) > 100  # perturbations change many queries
    # stage 1 draws from train only
    test_vals = split_plan(0).pool("test").values()
    train_text = "".join(unlabelled_queries(300, seed=4, perturb=0.0)).lower()
    assert sum(v in train_text for v in test_vals if len(v) >= 4) < 10
    with pytest.raises(ValueError):
        list(unlabelled_queries(1, perturb=2.0))


def test_unlabelled_stream_splice_and_keyword_queries():
    from qpfast.data.stream import KEYWORD_ASKS, keyword_query, splice
    kw = {"美妆>护肤": ["保湿", "控油"], "数码>手机": ["续航"]}
    a = list(unlabelled_queries(400, seed=3, splice_prob=0.5, keywords=kw, keyword_share=0.4))
    assert a == list(unlabelled_queries(400, seed=3, splice_prob=0.5, keywords=kw, keyword_share=0.4))
    assert len(a) == 400 and all(str(qpfast.normalize(q)) for q in a)
    words = [w for ws in kw.values() for w in ws]
    with_kw = sum(any(w in str(qpfast.normalize(q)) for w in words) for q in a)
    assert 100 < with_kw < 300          # about the keyword share (templates rarely hold these words)
    plain = list(unlabelled_queries(400, seed=3))
    assert len(set(a) - set(plain)) > 200
    rng = random.Random(0)
    head = [Piece("兰蔻", 3, "品牌", chunk=1), Piece("小黑瓶", 3, "产品", chunk=1), Piece("怎么样", 0, chunk=2)]
    tail = [Piece("上海", 3, "地点", chunk=1), Piece("去哪玩", 1, chunk=2)]
    for _ in range(50):
        out = splice(head, tail, rng)
        texts = [p.text for p in out]
        assert texts[:2] == ["兰蔻", "小黑瓶"]                 # a linked chunk stays whole
        assert set(texts[2:]) <= {"怎么样", "上海", "去哪玩"}
        q = keyword_query(head, kw, rng)
        texts = [p.text for p in q]
        assert sum(t in words for t in texts) in (1, 2)
        assert "兰蔻" in texts and texts.index("小黑瓶") == texts.index("兰蔻") + 1
        assert set(texts) <= set(words) | {"兰蔻", "小黑瓶"} | {t for t, _ in KEYWORD_ASKS}
    with pytest.raises(ValueError, match="keywords"):
        list(unlabelled_queries(1, keyword_share=0.5))
    with pytest.raises(ValueError, match="splice_prob"):
        list(unlabelled_queries(1, splice_prob=-0.1))


def test_common_words_from_jieba_dictionary():
    from qpfast.data.dictionary import common_words
    words, weights = common_words(500)
    assert len(words) == len(weights) == 500 and len(set(words)) == 500
    assert all(1 <= len(w) <= 4 and all("\u4e00" <= ch <= "\u9fff" for ch in w) for w in words)
    assert list(weights) == sorted(weights, reverse=True) and weights[-1] > 0
    assert "的" in words[:10] and common_words(50)[0] == words[:50]
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="n:"):
            common_words(bad)


def test_unlabelled_stream_word_swaps():
    from qpfast.data.stream import swap_words
    rng = random.Random(0)
    pieces = [Piece("兰蔻", 3, "品牌", chunk=1), Piece("小黑瓶", 3, "产品", chunk=1), Piece("适合", 1, chunk=2),
              Piece("什么", 0, chunk=3), Piece("肤质", 2, chunk=4)]
    words = ["苹果", "香蕉", "梨"]
    swapped = 0
    for _ in range(200):
        out = swap_words(pieces, words, [1.0, 1.0, 3.0], rng)      # cumulative: 香蕉 never drawn
        assert [p.text for p in out[:2]] == ["兰蔻", "小黑瓶"]       # entities kept
        assert [p.chunk for p in out] == [p.chunk for p in pieces]
        for old, new in zip(pieces[2:], out[2:]):
            assert new.text == old.text or new.text in ("苹果", "梨")
            assert new.type is None and new.surface == new.text
            swapped += new.text != old.text
    assert 200 < swapped < 400                                     # p = 1/2 of 3 literals x 200
    assert all(p.text in words for p in swap_words(pieces[2:], words, None, rng, p=1.0))
    # the stream: deterministic, a share of queries carry dictionary words, entities survive
    dict_words = ["鹦鹉螺", "蒲公英"]
    a = list(unlabelled_queries(400, seed=5, perturb=0.0, words=dict_words, word_share=0.5))
    assert a == list(unlabelled_queries(400, seed=5, perturb=0.0, words=dict_words, word_share=0.5))
    with_words = sum(any(w in q for w in dict_words) for q in a)
    assert 100 < with_words < 250
    b = list(unlabelled_queries(400, seed=5, perturb=0.0, words=dict_words, word_weights=[0.0, 1.0], word_share=1.0))
    assert not any("鹦鹉螺" in q for q in b) and sum("蒲公英" in q for q in b) > 250
    assert list(unlabelled_queries(50, seed=5, perturb=0.0, word_share=0.0)) == \
        list(unlabelled_queries(50, seed=5, perturb=0.0))            # off: the stream is unchanged
    with pytest.raises(ValueError, match="words"):
        list(unlabelled_queries(1, word_share=0.5))
    with pytest.raises(ValueError, match="word_share"):
        list(unlabelled_queries(1, words=dict_words, word_share=1.5))
    with pytest.raises(ValueError, match="word_weights"):
        list(unlabelled_queries(1, words=dict_words, word_weights=[1.0], word_share=0.5))
    with pytest.raises(ValueError, match="word_weights"):
        list(unlabelled_queries(1, words=dict_words, word_weights=[0.0, -1.0], word_share=0.5))


def test_unlabelled_stream_keyword_plants():
    from qpfast.data.stream import plant_keyword
    rng = random.Random(1)
    pieces = [Piece("兰蔻", 3, "品牌", chunk=1), Piece("适合", 1, chunk=2), Piece("什么", 0, chunk=3)]
    keywords = {"美妆>护肤": ["保湿"], "宠物>猫": ["猫粮", "猫砂"]}
    seen = set()
    for _ in range(200):
        out = plant_keyword(pieces, keywords, rng)
        assert out[0] == pieces[0] and len(out) == 3                # the entity kept, one literal replaced
        changed = [(old, new) for old, new in zip(pieces, out) if old.text != new.text]
        assert len(changed) == 1
        old, new = changed[0]
        assert new.text in ("保湿", "猫粮", "猫砂") and new.type is None and new.surface == new.text
        assert new.chunk == old.chunk and new.weight == old.weight
        seen.add(new.text)
    assert seen == {"保湿", "猫粮", "猫砂"}
    only_entity = [Piece("兰蔻", 3, "品牌", chunk=1)]
    out = plant_keyword(only_entity, keywords, rng)                # nothing to replace: appended
    assert out[0] == only_entity[0] and out[1].text in ("保湿", "猫粮", "猫砂") and len(out) == 2
    # the stream: deterministic, about the planted share carries a keyword, off = unchanged
    kw = {"宠物>猫": ["鹦鹉螺猫粮"]}                                 # a word no template holds
    a = list(unlabelled_queries(400, seed=6, perturb=0.0, keywords=kw, keyword_plant=0.5))
    assert a == list(unlabelled_queries(400, seed=6, perturb=0.0, keywords=kw, keyword_plant=0.5))
    assert 140 < sum("鹦鹉螺猫粮" in q for q in a) < 260
    assert list(unlabelled_queries(50, seed=6, perturb=0.0, keywords=kw, keyword_plant=0.0)) == \
        list(unlabelled_queries(50, seed=6, perturb=0.0))
    with pytest.raises(ValueError, match="keywords"):
        list(unlabelled_queries(1, keyword_plant=0.5))
    with pytest.raises(ValueError, match="keyword_plant"):
        list(unlabelled_queries(1, keywords=kw, keyword_plant=-0.1))


def test_write_splits_files(tmp_path):
    paths = write_splits(tmp_path, 40, 10, 12, seed=5, n_unlabelled=15)
    counts = {k: sum(1 for _ in read_jsonl(p)) for k, p in paths.items()}
    assert counts == {"train": 40, "dev": 10, "test": 12, "unlabelled": 15}
    for split in SPLITS:
        for rec in read_jsonl(paths[split]):
            assert set(rec) == {"query", "target"}
            qpfast.parse(rec["target"], rec["query"], strict=True)
    assert all(set(r) == {"query"} for r in read_jsonl(paths["unlabelled"]))
    first = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first)["target"] == json.loads(first)["target"].strip()
    # same seed -> byte-identical files
    again = write_splits(tmp_path / "again", 40, 10, 12, seed=5)
    for split in SPLITS:
        assert paths[split].read_bytes() == again[split].read_bytes()


@pytest.mark.slow
def test_100k_generation_deterministic():
    import time
    t0 = time.perf_counter()
    a = QueryGenerator("train").examples(100_000, seed=0)
    elapsed = time.perf_counter() - t0
    b = QueryGenerator("train").examples(100_000, seed=0)
    digest = lambda xs: hashlib.sha256("\n".join(e.query + "\t" + e.target for e in xs).encode()).hexdigest()  # noqa
    assert digest(a) == digest(b)
    print(f"100k examples in {elapsed:.1f} s")


# -- synthetic entity values (training augmentation) --------------------------------------------

def test_synthetic_values_keep_labels_valid_and_shape_but_are_new():
    gen = QueryGenerator("train", synth_values=1.0)
    plan = split_plan(0)
    known = set().union(*(plan.pool(s).values() for s in SPLITS))
    new = total = 0
    for ex in gen.examples(400, seed=3):
        qpfast.parse(ex.target, ex.query, strict=True)              # labels still check out
        for value, _ in ex.entities:
            total += 1
            new += value not in known
    assert total > 300 and new / total > 0.9                         # values no split contains


def test_synthetic_mutation_preserves_the_shape():
    from qpfast.data.synthetic import SyntheticValues
    sv = SyntheticValues(split_plan(0).pool("train"))
    rng = random.Random(0)
    for value in ("兰蔻", "iphone 15pro", "su7", "x-100 ultra", "小黑瓶"):
        out = sv.mutate(value, rng)
        assert len(out) == len(value)
        for a, b in zip(value, out):
            assert (a.isdigit(), a.isascii() and a.isalpha(), "\u4e00" <= a <= "\u9fff") == \
                   (b.isdigit(), b.isascii() and b.isalpha(), "\u4e00" <= b <= "\u9fff")
            if not (a.isalnum() or "\u4e00" <= a <= "\u9fff"):
                assert a == b                                         # spaces, punctuation kept
    line = gz.ProductLine("兰蔻", "小黑瓶")
    m = sv.item(line, rng)
    assert isinstance(m, gz.ProductLine) and len(m.brand) == 2 and len(m.line) == 3


def test_synthetic_values_off_draws_exactly_as_before():
    plain = QueryGenerator("train").examples(80, seed=5)
    off = QueryGenerator("train", synth_values=0.0).examples(80, seed=5)
    assert [e.target for e in plain] == [e.target for e in off]
    with pytest.raises(ValueError, match="synth_values"):
        QueryGenerator("train", synth_values=1.5)


def test_augmented_examples_keep_gold_labels():
    from qpfast.data import augmented_examples
    from qpfast.parse import parse
    gen = QueryGenerator("train")
    cats = {t.category for t in gen.pool.templates}
    a = list(augmented_examples(300, seed=5))
    assert [(e.query, e.target, m) for e, m in a] == [(e.query, e.target, m) for e, m in augmented_examples(300, seed=5)]
    plain = {e.query for e in gen.examples(300, seed=5)}
    assert sum(e.query in plain for e, _ in a) < 10
    masks = Counter(m for _, m in a)
    assert set(masks) == {(), ("intent",)} and min(masks.values()) > 50
    train_values = split_plan(0).pool("train").values()
    for e, mask in a:
        r = parse(e.target, query=e.query)            # strict: segments partition the query, entities are spans
        assert r.ok and r.category == e.category in cats
        assert all(ent.text in train_values for ent in r.entities)
    with pytest.raises(ValueError, match="swap"):
        next(augmented_examples(1, swap=1.5))
    with pytest.raises(ValueError, match="at least one"):
        next(augmented_examples(1, drop=0, swap=0, splice_prob=0))


def test_same_category_splices_join_two_templates_of_one_category():
    from qpfast.data import augmented_examples
    n = 0
    for e, mask in augmented_examples(200, seed=1, drop=0.0, swap=0.0, splice_prob=1.0):
        assert mask == ("intent",)
        n += 1
    assert n == 200


def test_unlabelled_stream_keywords_in_context():
    from qpfast.data.stream import keyword_in_context
    rng = random.Random(2)
    pieces = [Piece("兰蔻", 3, "品牌", chunk=1), Piece("小黑瓶", 3, "产品", chunk=1), Piece("保湿", 2, chunk=-10)]
    keywords = {"美妆>护肤": ["保湿"], "宠物>猫": ["猫粮"]}
    words = ["苹果", "香蕉", "梨"]
    assert all("猫粮" not in [p.text for p in keyword_in_context(pieces, {"美妆>护肤": ["保湿", "猫粮"]}, words, None, rng)]
               for _ in range(50))                                 # the second keyword is another category's
    n_extra, second = [], 0
    for _ in range(300):
        out = keyword_in_context(pieces, keywords, words, [1.0, 1.0, 3.0], rng)     # 香蕉 never drawn
        texts = [p.text for p in out]
        assert texts.index("小黑瓶") == texts.index("兰蔻") + 1                    # a chunk stays whole
        kept = [p for p in out if p.chunk in (1, -10)]
        assert kept == pieces                                                      # in order, unchanged
        added = [p for p in out if p.chunk not in (1, -10)]
        assert all(p.type is None and p.surface == p.text for p in added)
        assert all(p.text in ("苹果", "梨", "猫粮") for p in added)
        dict_added = sum(p.text in words for p in added)
        assert 1 <= dict_added <= 3 and len(added) - dict_added in (0, 1)
        n_extra.append(dict_added)
        second += len(added) > dict_added
    assert set(n_extra) == {1, 2, 3} and 100 < second < 200
    # the stream: deterministic; bare keyword queries carry dictionary words; off = unchanged
    kw = {"宠物>猫": ["鹦鹉螺猫粮"]}
    dict_words = ["蒲公英"]
    a = list(unlabelled_queries(400, seed=7, perturb=0.0, keywords=kw, keyword_share=0.5, words=dict_words,
                                keyword_context=1.0))
    assert a == list(unlabelled_queries(400, seed=7, perturb=0.0, keywords=kw, keyword_share=0.5, words=dict_words,
                                        keyword_context=1.0))
    bare = [q for q in a if "鹦鹉螺猫粮" in q]
    assert 150 < len(bare) < 250 and all("蒲公英" in q for q in bare)
    assert not any("蒲公英" in q for q in a if q not in bare)                    # only keyword queries
    assert list(unlabelled_queries(50, seed=7, perturb=0.0, keywords=kw, keyword_share=0.5, words=dict_words,
                                   keyword_context=0.0)) == \
        list(unlabelled_queries(50, seed=7, perturb=0.0, keywords=kw, keyword_share=0.5))
    with pytest.raises(ValueError, match="words"):
        list(unlabelled_queries(1, keywords=kw, keyword_share=0.5, keyword_context=0.5))
    with pytest.raises(ValueError, match="keyword_context"):
        list(unlabelled_queries(1, keywords=kw, words=dict_words, keyword_context=1.5))
