"""`LegacyPipeline`: the discriminative QP pipeline that qpfast's model replaces.

It is the stage-1 teacher (pseudo-labels for the unlabelled stream) and the baseline every
model must beat. Steps, on the normalized query q:

1. gazetteer NER: longest-match gazetteer tagging (`Lexicon.tag`);
2. segmentation: the gazetteer hits are segments (split at their spaces); the gaps between
   them are cut by a private jieba tokenizer (POS mode) whose user dictionary is the
   gazetteer, with two merge rules (audience suffixes 党/族/肌/皮, number + unit);
3. POS-based NER on the jieba tokens: nr -> 人物, ns -> 地点, nt -> 机构, t -> 时间,
   Latin+digit tokens -> 型号, audience-suffix words -> 人群, nouns with a product-kind
   suffix (霜, 鞋, 机 ...) -> 品类;
4. weights: entities by type (3 for names and kinds, 2 audiences, 1 times); function words
   and particles (by word list and POS) 0; verbs, adjectives, adverbs, numbers 1; other
   nouns 2, or 1 when their IDF (jieba's table) says they are very common; when nothing
   is core, the rarest noun becomes 3;
5. category: keyword rules plus gazetteer-domain votes (`category_rules.classify`);
6. intent: a template chosen by cue words, filled with the core terms.

Any non-empty query gets a valid result: the target is rendered through `qpfast.render`,
and an entity that would break the leftmost-match rule is dropped (kept as a segment).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass

from ..normalize import normalize
from ..parse import parse
from ..render import render
from ..result import QPResult
from ..schema import DEFAULT_SCHEMA, Schema
from ..data.splits import split_plan
from .category_rules import classify
from .lexicon import Lexicon

_POS_TYPES = {"nr": "人物", "nrfg": "人物", "nrt": "人物", "ns": "地点", "nt": "机构", "t": "时间"}
_TYPE_WEIGHTS = {"品牌": 3, "产品": 3, "品类": 3, "型号": 3, "人物": 3, "地点": 3, "机构": 3, "作品": 3,
                 "时间": 1, "人群": 2}
_STOPWORDS = set("""的 了 吗 呢 啊 呀 吧 嘛 么 什么 怎么 怎么样 咋 咋样 如何 哪个 哪些 哪里 哪儿 哪 哪家 哪款
    有 有没有 求 请问 一下 和 与 跟 还是 或 是 是不是 能 能不能 可以 会 要 都 也 就 在 去 到 给 把 被 对
    姐妹们 宝子们 家人们 谁懂 救命 真的 到底 啥 多少 几 该 还 又 很 太 一个 这个 那个 谁 vs 怎么办
    有无 谢谢 呜呜 急 蹲 求助 后 前 不 才 先 用""".split())
_ZERO_POS = {"u", "uj", "ul", "uz", "ud", "ug", "uv", "p", "c", "y", "e", "o", "r", "x", "w", "zg"}
_ONE_POS = {"v", "vd", "a", "ad", "an", "d", "m", "mq", "q", "f", "b", "z", "l", "i", "tg", "ag", "dg", "vg"}
_AUDIENCE_SUFFIX = set("党族肌皮")
_UNIT = set("年月天斤岁元块万寸号期次个")
_KIND_SUFFIX = set("霜乳液膏油水粉鞋靴包裙裤衣衫机器锅箱架垫茶酒奶糖药")
_LATIN_MODEL = re.compile(r"^(?=.*\d)(?=.*[a-z])[a-z0-9\-+.]+$")
_YEAR = re.compile(r"^(19|20)\d\d年?$")


@dataclass
class _Token:
    text: str
    start: int
    type: str | None = None  # entity type
    pos: str = ""

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@functools.lru_cache(maxsize=1)
def _idf_table() -> tuple[dict[str, float], float]:
    """jieba's IDF table (read directly: importing jieba.analyse would load it a second time)."""
    jieba = _import_jieba()
    path = os.path.join(os.path.dirname(jieba.__file__), "analyse", "idf.txt")
    idf: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, _, value = line.strip().partition(" ")
            if value:
                idf[word] = float(value)
    values = sorted(idf.values())
    return idf, values[len(values) // 2]


def _import_jieba():
    try:
        import jieba
        import jieba.posseg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"the legacy pipeline needs jieba (pip install jieba): {e}") from None
    return jieba


def _tokenizer(words: dict[str, str]):
    """A private jieba POS tokenizer with `words` (word -> POS) as its user dictionary.

    The global jieba tokenizer is left untouched. Pure Latin/digit words are not added: the
    gazetteer tagger matches those with word-boundary checks, while in jieba they would cut
    longer Latin words apart ("on" inside "iphone").
    """
    jieba = _import_jieba()

    class _POSTokenizer(jieba.posseg.POSTokenizer):
        # jieba.posseg.POSTokenizer.__init__ re-reads the default dictionary's POS tags
        # (seconds); the module-level tokenizer has already read them, so share its table.
        def __init__(self, tokenizer, word_tag_tab):
            self.tokenizer = tokenizer
            self.word_tag_tab = dict(word_tag_tab)

    logger = logging.getLogger("jieba")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        tk = jieba.Tokenizer()
        tk.initialize()
        for w, tag in words.items():
            if " " not in w and not w.isascii():
                tk.add_word(w, 2000, tag)
        pos = _POSTokenizer(tk, jieba.posseg.dt.word_tag_tab)
        list(pos.cut("初始化"))  # load the user-dictionary tags now, not on the first query
    finally:
        logger.setLevel(level)
    return pos


_USER_TAGS = {"品牌": "nz", "产品": "nz", "型号": "eng", "人物": "nr", "地点": "ns", "机构": "nt", "作品": "nz",
              "时间": "t", "人群": "n", "品类": "n"}


class LegacyPipeline:
    """The legacy QP labeler. `gazetteer`: ``"train"`` (the train split's values under
    `split_seed`: an honest baseline on the test split) or ``"all"`` (every value)."""

    def __init__(self, *, gazetteer: str = "train", split_seed: int = 0, schema: Schema | None = None):
        if gazetteer not in ("train", "all"):
            raise ValueError(f"gazetteer: expected 'train' or 'all', got {gazetteer!r}")
        self.schema = schema or DEFAULT_SCHEMA
        self.lexicon = Lexicon(split_plan(split_seed).pool(gazetteer))
        words = {w: "y" for w in _STOPWORDS if len(w) > 1}  # keep particles (宝子们) whole
        words.update({w: _USER_TAGS[t] for w, t in self.lexicon.types.items()})
        self._pos = _tokenizer(words)
        self._idf, self._idf_median = _idf_table()

    # -- steps ------------------------------------------------------------------------
    def _cut(self, q: str, start: int, end: int) -> list[_Token]:
        out: list[_Token] = []
        pos = start
        for pair in self._pos.cut(q[start:end]):
            word, flag = pair.word, pair.flag
            if not word.strip():
                pos += len(word)
                continue
            out.append(_Token(word, pos, None, flag))
            pos += len(word)
        return out

    @staticmethod
    def _merge(toks: list[_Token]) -> list[_Token]:
        """Merge audience suffixes (学生+党 -> 学生党, a 人群) and number + unit (10+斤)."""
        out: list[_Token] = []
        for t in toks:
            prev = out[-1] if out else None
            adjacent = prev is not None and prev.type is None and prev.end == t.start and t.type is None
            if adjacent and t.text in _AUDIENCE_SUFFIX and prev.pos[:1] in ("n", "a", "v"):
                out[-1] = _Token(prev.text + t.text, prev.start, "人群", "n")
            elif adjacent and t.text in _UNIT and prev.text.isdigit():
                out[-1] = _Token(prev.text + t.text, prev.start, None, "m")
            else:
                out.append(t)
        return out

    def _pos_entity(self, t: _Token) -> str | None:
        if t.type is not None:
            return t.type
        if t.text in self.lexicon.types:
            return self.lexicon.types[t.text]
        if _YEAR.match(t.text):
            return "时间"
        if _LATIN_MODEL.match(t.text):
            return "型号"
        if t.pos in _POS_TYPES and len(t.text) >= 2:
            return _POS_TYPES[t.pos]
        if t.pos.startswith("n") and len(t.text) >= 2 and t.text[-1] in _KIND_SUFFIX:
            return "品类"
        if t.pos == "eng" and len(t.text) >= 2 and t.text.isalpha():
            return "品牌"
        return None

    def _weight(self, t: _Token) -> int:
        if t.type is not None:
            return _TYPE_WEIGHTS[t.type]
        if t.text in _STOPWORDS or t.pos in _ZERO_POS or not any(ch.isalnum() for ch in t.text):
            return 0
        idf = self._idf.get(t.text, self._idf_median)
        if t.pos in _ONE_POS or t.pos.startswith("v"):
            return 2 if idf > 10.5 else 1
        return 1 if idf < 6.0 else 2

    def _tokens(self, q: str) -> list[_Token]:
        toks: list[_Token] = []
        pos = 0
        for m in self.lexicon.tag(q):
            toks += self._cut(q, pos, m.start)
            toks.append(_Token(m.text, m.start, m.type, "gaz"))
            pos = m.end
        toks += self._cut(q, pos, len(q))
        toks = self._merge(toks)
        prev_end = 0
        for t in toks:  # POS NER, keeping entities at their leftmost occurrence (DESIGN §1)
            etype = self._pos_entity(t)
            if etype is not None and etype in self.schema.entity_types and q.find(t.text, prev_end) == t.start:
                t.type = etype
                prev_end = t.end
            else:
                t.type = None
        return toks

    def _intent(self, q: str, toks: list[_Token], weights: list[int]) -> str:
        flat = q.replace(" ", "")
        core = [t.text for t, w in zip(toks, weights) if w == 3]
        core = core or [t.text for t, w in zip(toks, weights) if w == 2] or [flat]
        ents = [t.text for t in toks if t.type is not None and t.type not in ("时间", "人群")]
        subject = "".join(core)
        if len(ents) >= 2 and any(w in flat for w in ("和", "还是", "vs", "对比", "哪个")):
            text = f"对比{ents[0]}和{ents[1]}"
        elif "平替" in flat:
            text = f"寻找{subject}的平价替代"
        elif "同款" in flat:
            text = f"寻找{subject}同款"
        elif "攻略" in flat:
            text = f"寻找{subject}攻略"
        elif "推荐" in flat or "哪个" in flat:
            text = f"寻找{subject}推荐"
        elif any(w in flat for w in ("怎么", "如何", "教程", "做法")):
            text = f"想学{subject}的方法"
        elif flat.endswith("吗") or "是否" in flat:
            text = f"想知道{subject}怎么样"
        else:
            text = f"想了解{subject}"
        limit = self.schema.intent_max_chars
        return text[:limit] if len(text) > limit else text

    # -- API --------------------------------------------------------------------------
    def label(self, query: str) -> QPResult:
        """The legacy result for one raw query (always strictly valid unless the query is
        empty after normalization, where `error` is set)."""
        if not isinstance(query, str):
            raise TypeError(f"query: expected str, got {type(query).__name__}")
        norm = normalize(query, self.schema)
        q = str(norm)
        if not q:
            return QPResult(query=query, normalized="", truncated=norm.truncated,
                            error="empty query after normalization")
        toks = self._tokens(q)
        weights = [self._weight(t) for t in toks]
        if 3 not in weights:
            nouns = [i for i, t in enumerate(toks) if t.pos.startswith("n") and weights[i] > 0]
            if nouns:
                best = max(nouns, key=lambda i: self._idf.get(toks[i].text, self._idf_median))
                weights[best] = 3
        seg: list[str] = []
        wts: list[int] = []
        for t, w in zip(toks, weights):
            for part in t.text.split(" "):
                seg.append(part)
                wts.append(min(w, self.schema.weight_levels - 1))
        domains = [d for t in toks if t.type is not None for d in self.lexicon.domains.get(t.text, ())]
        cat = classify(q.replace(" ", ""), domains, self.schema.categories)
        labels = {"ner": [[t.text, t.type] for t in toks if t.type is not None], "seg": seg, "weight": wts,
                  "cat": cat, "intent": self._intent(q, toks, weights)}
        try:
            text = render(labels, self.schema, query=query)
        except ValueError:  # never expected; keep the contract with the plainest valid labels
            flat = q.replace(" ", "")
            text = render({"ner": [], "seg": [flat], "weight": [self.schema.weight_levels - 1],
                           "cat": cat, "intent": flat[:self.schema.intent_max_chars]}, self.schema, query=query)
        return parse(text, query, self.schema, strict=True)

    def output(self, query: str) -> str:
        """The target text for one query ("" for a query that is empty after normalization)."""
        r = self.label(query)
        return r.raw if r.error is None and r.raw is not None else ""

    def __call__(self, queries: list[str]) -> list[str]:
        """Target texts for many queries (the `qpfast eval` predictor interface)."""
        return [self.output(q) for q in queries]


@functools.lru_cache(maxsize=4)
def legacy_pipeline(gazetteer: str = "train", split_seed: int = 0) -> LegacyPipeline:
    """A cached `LegacyPipeline` for the default schema (jieba setup costs about a second)."""
    return LegacyPipeline(gazetteer=gazetteer, split_seed=split_seed)


__all__ = ["LegacyPipeline", "legacy_pipeline"]
