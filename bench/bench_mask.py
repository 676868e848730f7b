"""Constrained-decoding mask benchmark: qpfast vs xgrammar vs llguidance, one process, the
same real Qwen vocabulary (151,643 BPE tokens + specials, lm_head 151,936) for all three.

    python bench/bench_mask.py [--reps 20] [--json OUT]     # prints a table (DESIGN.md §4)
    python -m pytest bench/bench_mask.py                    # pytest-benchmark entries

What is measured (DESIGN.md §4, issue 3):
- per-token mask: each engine decodes the canonical token sequence of every target,
  `tokenizer.encode(target, add_special_tokens=False) + [<|im_end|>]`, token by token;
  only the mask call is timed (qpfast `Matcher.fill_bitmask`, xgrammar
  `GrammarMatcher.fill_next_token_bitmask`, llguidance `llguidance.numpy.fill_next_token_bitmask`
  on an `LLMatcher`), then the token is accepted (untimed). Every step also checks that the
  canonical token's bit is set in the mask and that the engine accepts it; a miss or a
  rejection is reported as an anomaly (for xgrammar/llguidance it would be a bench-setup bug,
  for qpfast a decoder bug).
- per-query setup: qpfast `Matcher(vocab, raw_query)` (normalization included); xgrammar
  `GrammarMatcher(compiled_grammar)`; llguidance `LLMatcher(tokenizer, grammar)` (and, for
  reference, `deep_copy()` of a fresh matcher).
- one-time per-schema compile: qpfast's first `vocab.grammar(schema)` (vocab x schema),
  xgrammar `GrammarCompiler.compile_json_schema` with the cache off (and the cached call).
- vocabulary ingest: qpfast `Vocab.from_tokenizer`, xgrammar `TokenizerInfo.from_huggingface`,
  llguidance `llguidance.hf.from_tokenizer` (the HF tokenizer itself is loaded once, untimed).
- qpfast batch: `qpfast.fill_bitmasks` over 64 matchers decoding in lock step (per-row time).

Targets: the DESIGN.md example plus ~50 hand-made realistic Chinese QP results (brands, models,
Latin letters, digits, spaces, full-width input, a backslash, book-title marks), rendered with
`qpfast.render` (which validates them against their query).

xgrammar and llguidance get the equivalent JSON schema (object with the keys in order,
compact separators, no whitespace; ner: array of [non-empty string, entity-type enum] pairs;
seg: non-empty array of non-empty strings; weight: array of integers 0..levels-1; cat: enum of
the categories; intent: string of 1..intent_max_chars). They cannot express the query
grounding (seg spelling out the query, entities as in-order spans of it, one weight per seg
item), so their masks allow much more than qpfast's: qpfast enforces strictly more.
xgrammar gets the ner/seg strings without `minLength` (its length-limited strings reject every
JSON escape, e.g. `"c:\\"`; see `equivalent_json_schema`).

Timings on a shared machine are noisy: the script warms up, interleaves the engines query by
query with a rotating engine order (so load spikes hit all of them), disables the GC while
timing, and reports two summaries: `robust` (per (target, step) the median over the
repetitions, then mean/p50/p99 over the steps: the per-step cost without preemptions; the
headline numbers) and `pooled` (every call). It prints the load average at each phase.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Any

import numpy as np

import qpfast
from qpfast import DEFAULT_SCHEMA, Schema

VOCAB_SIZE = 151936          # Qwen2/Qwen3 lm_head rows
EOS = 151645                 # <|im_end|>
END_IDS = [151643, 151645]   # <|endoftext|>, <|im_end|>: the end tokens qpfast detects for Qwen
SEED = 20261126
TARGETS_MS = {"mask_mean_us": 10.0, "mask_p99_us": 50.0, "setup_us": 20.0, "ingest_s": 0.5}

DESIGN_QUERY = "兰蔻小黑瓶适合什么肤质"
DESIGN_TARGET = ('{"ner":[["兰蔻","品牌"],["小黑瓶","产品"]],"seg":["兰蔻","小黑瓶","适合","什么","肤质"],'
                 '"weight":[3,3,1,0,2],"cat":"美妆>护肤","intent":"想了解兰蔻小黑瓶适合哪些肤质"}')

# (raw query, ner, seg, weight, cat, intent) -- hand-made, realistic QP results.
_RESULTS: list[tuple[str, list, list, list, str, str]] = [
    (DESIGN_QUERY, [["兰蔻", "品牌"], ["小黑瓶", "产品"]], ["兰蔻", "小黑瓶", "适合", "什么", "肤质"],
     [3, 3, 1, 0, 2], "美妆>护肤", "想了解兰蔻小黑瓶适合哪些肤质"),
    ("iPhone 15 Pro Max 和 华为 Mate60 哪个好", [["iphone 15 pro max", "产品"], ["华为", "品牌"], ["mate60", "型号"]],
     ["iphone", "15", "pro", "max", "和", "华为", "mate60", "哪个", "好"], [3, 3, 2, 2, 0, 3, 3, 1, 1],
     "数码>手机", "对比iphone15promax和华为mate60选哪款"),
    ("周末上海去哪玩", [["周末", "时间"], ["上海", "地点"]], ["周末", "上海", "去", "哪", "玩"], [2, 3, 1, 1, 2],
     "旅行>国内", "周末在上海游玩的推荐地点"),
    ("油皮夏天粉底液推荐", [["油皮", "人群"], ["夏天", "时间"], ["粉底液", "品类"]], ["油皮", "夏天", "粉底液", "推荐"],
     [2, 1, 3, 1], "美妆>彩妆", "适合油皮夏天用的粉底液推荐"),
    ("小米SU7值得买吗", [["小米", "品牌"], ["su7", "型号"]], ["小米", "su7", "值得", "买", "吗"], [3, 3, 1, 1, 0],
     "汽车>选购", "评估小米su7是否值得购买"),
    ("学生党平价口红推荐", [["学生党", "人群"], ["口红", "品类"]], ["学生党", "平价", "口红", "推荐"], [2, 2, 3, 1],
     "美妆>彩妆", "适合学生的便宜口红推荐"),
    ("雅思7分怎么准备", [], ["雅思", "7", "分", "怎么", "准备"], [3, 2, 2, 0, 1], "教育>考试", "雅思考到7分的备考方法"),
    ("猫咪不吃东西怎么办", [], ["猫咪", "不吃", "东西", "怎么办"], [3, 3, 1, 0], "宠物>猫", "猫咪食欲不振的原因和处理"),
    ("北京三里屯咖啡探店", [["北京", "地点"], ["三里屯", "地点"]], ["北京", "三里屯", "咖啡", "探店"], [2, 3, 3, 2],
     "美食>探店", "北京三里屯咖啡店打卡推荐"),
    ("New Balance 574 尺码偏大吗", [["new balance", "品牌"], ["574", "型号"]],
     ["new", "balance", "574", "尺码", "偏大", "吗"], [3, 3, 3, 2, 2, 0], "时尚>鞋包", "询问newbalance574鞋码是否偏大"),
    ("宝宝发烧38度怎么办", [["宝宝", "人群"]], ["宝宝", "发烧", "38", "度", "怎么办"], [2, 3, 2, 1, 0],
     "母婴>育儿", "婴儿发烧38度的处理方法"),
    ("三亚亲子酒店推荐", [["三亚", "地点"], ["酒店", "品类"]], ["三亚", "亲子", "酒店", "推荐"], [3, 2, 3, 1],
     "旅行>住宿", "三亚适合带孩子入住的酒店"),
    ("减脂期晚餐吃什么", [["减脂期", "人群"]], ["减脂期", "晚餐", "吃", "什么"], [3, 2, 1, 0], "运动>减脂",
     "减脂期间晚餐的饮食建议"),
    ("周杰伦新歌", [["周杰伦", "人物"]], ["周杰伦", "新歌"], [3, 2], "娱乐>音乐", "周杰伦最新发布的歌曲"),
    ("原神 新手 攻略", [["原神", "作品"], ["新手", "人群"]], ["原神", "新手", "攻略"], [3, 2, 2], "游戏>手游",
     "原神新手入门玩法攻略"),
    ("小户型客厅装修效果图", [], ["小户型", "客厅", "装修", "效果图"], [2, 3, 3, 1], "家居>装修", "小户型客厅装修设计参考图"),
    ("戴森吹风机HD15和HD08区别", [["戴森", "品牌"], ["吹风机", "品类"], ["hd15", "型号"], ["hd08", "型号"]],
     ["戴森", "吹风机", "hd15", "和", "hd08", "区别"], [3, 3, 3, 0, 3, 1], "家居>家电", "对比戴森吹风机hd15与hd08的差异"),
    ("macbook air m3 写代码够用吗", [["macbook air", "产品"], ["m3", "型号"]],
     ["macbook", "air", "m3", "写代码", "够用", "吗"], [3, 3, 3, 2, 1, 0], "数码>电脑", "询问macbookairm3能否满足编程需求"),
    ("上海租房 靠谱中介", [["上海", "地点"]], ["上海", "租房", "靠谱", "中介"], [3, 3, 1, 2], "生活>租房",
     "在上海租房时找可靠的中介"),
    ("孕早期能喝咖啡吗", [["孕早期", "时间"]], ["孕早期", "能", "喝", "咖啡", "吗"], [3, 1, 1, 3, 0], "母婴>孕产",
     "怀孕早期是否可以喝咖啡"),
    ("露营帐篷推荐 三人", [["帐篷", "品类"]], ["露营", "帐篷", "推荐", "三人"], [2, 3, 1, 2], "运动>户外",
     "适合三人露营使用的帐篷推荐"),
    ("考研英语一作文模板", [], ["考研", "英语一", "作文", "模板"], [2, 3, 3, 2], "教育>考试", "考研英语一写作的万能模板"),
    ("应届生简历怎么写", [["应届生", "人群"]], ["应届生", "简历", "怎么", "写"], [2, 3, 0, 1], "职场>求职",
     "应届毕业生撰写简历的方法"),
    ("Excel数据透视表教程", [["excel", "产品"]], ["excel", "数据透视表", "教程"], [3, 3, 1], "职场>技能",
     "学习excel数据透视表的使用"),
    ("特斯拉Model Y冬天续航", [["特斯拉", "品牌"], ["model y", "型号"], ["冬天", "时间"]],
     ["特斯拉", "model", "y", "冬天", "续航"], [3, 3, 3, 2, 3], "汽车>用车", "特斯拉modely冬季续航表现"),
    ("狂飙 大结局 解析", [["狂飙", "作品"]], ["狂飙", "大结局", "解析"], [3, 2, 1], "娱乐>影视", "电视剧狂飙结局的剧情解读"),
    ("金毛掉毛严重怎么办", [["金毛", "品类"]], ["金毛", "掉毛", "严重", "怎么办"], [3, 3, 1, 0], "宠物>狗",
     "解决金毛犬大量掉毛的问题"),
    ("失眠 吃什么 调理", [], ["失眠", "吃", "什么", "调理"], [3, 1, 0, 2], "健康>养生", "通过饮食调理失眠的方法"),
    ("胃疼挂哪个科", [], ["胃疼", "挂", "哪个", "科"], [3, 2, 0, 2], "健康>医疗", "胃痛应该去医院哪个科室就诊"),
    ("日本签证 2024 新政策", [["日本", "地点"], ["2024", "时间"]], ["日本", "签证", "2024", "新", "政策"],
     [3, 3, 2, 1, 2], "旅行>出境", "2024年日本签证的最新政策"),
    ("奶茶 低卡 推荐 喜茶", [["奶茶", "品类"], ["喜茶", "品牌"]], ["奶茶", "低卡", "推荐", "喜茶"], [3, 2, 1, 3],
     "美食>饮品", "喜茶低热量奶茶推荐"),
    ("红烧肉的家常做法", [["红烧肉", "品类"]], ["红烧肉", "的", "家常", "做法"], [3, 0, 1, 2], "美食>菜谱",
     "家常红烧肉的烹饪步骤"),
    ("衣柜收纳神器", [["衣柜", "品类"]], ["衣柜", "收纳", "神器"], [3, 3, 1], "家居>收纳", "整理衣柜的实用收纳工具"),
    ("梨形身材穿搭", [["梨形身材", "人群"]], ["梨形身材", "穿搭"], [3, 3], "时尚>穿搭", "适合梨形身材的穿衣搭配"),
    ("祖玛珑香水 哪款好闻", [["祖玛珑", "品牌"], ["香水", "品类"]], ["祖玛珑", "香水", "哪款", "好闻"], [3, 3, 0, 2],
     "美妆>香水", "祖玛珑香水中好闻的款式推荐"),
    ("索尼WH-1000XM5降噪怎么样", [["索尼", "品牌"], ["wh-1000xm5", "型号"]], ["索尼", "wh-1000xm5", "降噪", "怎么样"],
     [3, 3, 2, 0], "数码>影音", "评价索尼wh-1000xm5耳机的降噪效果"),
    ("switch 塞尔达 王国之泪 多少钱", [["switch", "产品"], ["塞尔达 王国之泪", "作品"]],
     ["switch", "塞尔达", "王国之泪", "多少钱"], [2, 3, 3, 1], "游戏>主机", "查询switch版塞尔达王国之泪的价格"),
    ("富士相机 人像 参数", [["富士", "品牌"], ["相机", "品类"]], ["富士", "相机", "人像", "参数"], [3, 2, 2, 2],
     "生活>摄影", "富士相机拍人像的参数设置"),
    ("手工皂制作方法", [["手工皂", "品类"]], ["手工皂", "制作", "方法"], [3, 2, 1], "生活>手工", "自制手工皂的步骤和材料"),
    ("异地恋怎么维持", [], ["异地恋", "怎么", "维持"], [3, 0, 2], "生活>情感", "维系异地恋感情的方法"),
    ("健身房 练背 动作 新手", [["健身房", "机构"], ["新手", "人群"]], ["健身房", "练背", "动作", "新手"], [1, 3, 2, 2],
     "运动>健身", "健身新手练背部的训练动作"),
    ("LV Neverfull 中号尺寸", [["lv", "品牌"], ["neverfull", "产品"]], ["lv", "neverfull", "中号", "尺寸"], [3, 3, 2, 2],
     "时尚>鞋包", "查询lvneverfull中号包的尺寸"),
    ("潘多拉手链 串珠搭配", [["潘多拉", "品牌"], ["手链", "品类"]], ["潘多拉", "手链", "串珠", "搭配"], [3, 3, 2, 1],
     "时尚>配饰", "潘多拉手链的串珠组合推荐"),
    ("零基础学日语 N2 要多久", [["零基础", "人群"]], ["零基础", "学", "日语", "n2", "要", "多久"], [2, 1, 3, 3, 0, 1],
     "教育>语言", "零基础学到日语n2所需的时间"),
    ("杭州 民宿 西湖边 性价比", [["杭州", "地点"], ["民宿", "品类"], ["西湖边", "地点"]], ["杭州", "民宿", "西湖边", "性价比"],
     [3, 3, 2, 1], "旅行>住宿", "杭州西湖附近性价比高的民宿"),
    ("清华大学 强基计划 分数线", [["清华大学", "机构"]], ["清华大学", "强基计划", "分数线"], [3, 3, 2], "教育>升学",
     "清华大学强基计划的录取分数线"),
    ("海底捞 自助 小料 配方", [["海底捞", "机构"]], ["海底捞", "自助", "小料", "配方"], [3, 1, 3, 2], "美食>菜谱",
     "海底捞蘸料的调配方法"),
    ("比亚迪 汉 EV 保养费用", [["比亚迪", "品牌"], ["汉 ev", "产品"]], ["比亚迪", "汉", "ev", "保养", "费用"],
     [3, 3, 2, 3, 2], "汽车>用车", "比亚迪汉ev的日常保养花费"),
    ("什么是量子计算", [], ["什么", "是", "量子计算"], [0, 0, 3], "其他", "了解量子计算的基本概念"),
    ("刘德华 演唱会 2025 门票", [["刘德华", "人物"], ["2025", "时间"]], ["刘德华", "演唱会", "2025", "门票"], [3, 3, 2, 2],
     "娱乐>明星", "刘德华2025年演唱会门票信息"),
    ("C:\\ 盘 满了 怎么 清理", [], ["c:\\", "盘", "满了", "怎么", "清理"], [3, 3, 2, 0, 2], "数码>电脑",
     "清理电脑c盘空间的方法"),
    ("电影《流浪地球2》 影评", [["流浪地球2", "作品"]], ["电影", "《", "流浪地球2", "》", "影评"], [1, 0, 3, 0, 2],
     "娱乐>影视", "电影流浪地球2的观众评价"),
    ("30岁 油痘肌 敏感肌 夏天 控油 不闷痘 的 平价 国货 防晒霜 推荐 学生党 也能 买得起",
     [["30岁", "人群"], ["油痘肌", "人群"], ["敏感肌", "人群"], ["夏天", "时间"], ["防晒霜", "品类"], ["学生党", "人群"]],
     ["30岁", "油痘肌", "敏感肌", "夏天", "控油", "不闷痘", "的", "平价", "国货", "防晒霜", "推荐", "学生党", "也能", "买得起"],
     [1, 2, 2, 1, 2, 2, 0, 2, 1, 3, 1, 1, 0, 1], "美妆>护肤", "适合油痘敏感肌学生党的平价国货防晒推荐"),
    ("ＡＰＰＬＥ　Ｗａｔｃｈ 表带", [["apple watch", "产品"], ["表带", "品类"]], ["apple", "watch", "表带"], [3, 3, 3],
     "时尚>配饰", "applewatch表带推荐"),
]


def make_targets(schema: Schema = DEFAULT_SCHEMA) -> list[tuple[str, str]]:
    """[(raw query, canonical target text)], the DESIGN.md example first."""
    out = []
    for q, ner, seg, weight, cat, intent in _RESULTS:
        d = {"ner": ner, "seg": seg, "weight": weight, "cat": cat, "intent": intent}
        out.append((q, qpfast.render(d, schema, query=q)))
    assert out[0][1] == DESIGN_TARGET, out[0][1]
    return out


def equivalent_json_schema(schema: Schema = DEFAULT_SCHEMA, *, min_length: bool = True) -> dict[str, Any]:
    r"""The closest plain JSON Schema to qp-json/1 (everything but the query grounding).

    min_length=False drops `minLength: 1` from the ner text and seg item strings: xgrammar
    0.2.8 compiles a length-limited JSON string to repetitions of one character that is not a
    quote, backslash, CR or LF, i.e. with no escape sequences at all, so the JSON string `"c:\\"`
    (query `C:\ 盘 ...`) would be rejected (seen with this very target set).
    """
    text = {"type": "string", "minLength": 1} if min_length else {"type": "string"}
    props = {
        "ner": {"type": "array", "items": {
            "type": "array",
            "prefixItems": [text, {"type": "string", "enum": list(schema.entity_types)}],
            "items": False, "minItems": 2, "maxItems": 2}},
        "seg": {"type": "array", "items": text, "minItems": 1},
        "weight": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": schema.weight_levels - 1}},
        "cat": {"type": "string", "enum": list(schema.categories)},
        "intent": {"type": "string", "minLength": 1, "maxLength": schema.intent_max_chars},
    }
    keys = [schema.keys[f] for f in schema.fields]
    return {"type": "object", "properties": {schema.keys[f]: props[f] for f in schema.fields},
            "required": keys, "additionalProperties": False}


def xgr_schema_json() -> str:
    return json.dumps(equivalent_json_schema(min_length=False), ensure_ascii=False)


# -- shared state --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tokenizer():
    from qpfast.testing import qwen_tokenizer
    return qwen_tokenizer()


@functools.lru_cache(maxsize=1)
def cases() -> list[tuple[str, str, list[int]]]:
    """[(raw query, target, canonical ids + [EOS])]."""
    tok = tokenizer()
    return [(q, t, tok.encode(t, add_special_tokens=False) + [EOS]) for q, t in make_targets()]


@functools.lru_cache(maxsize=1)
def qp_vocab():
    v = qpfast.Vocab.from_tokenizer(tokenizer(), vocab_size=VOCAB_SIZE)
    v.grammar(DEFAULT_SCHEMA)
    return v


@functools.lru_cache(maxsize=1)
def xgr_compiled():
    import xgrammar as xgr
    info = xgr.TokenizerInfo.from_huggingface(tokenizer(), vocab_size=VOCAB_SIZE, stop_token_ids=END_IDS)
    comp = xgr.GrammarCompiler(info)
    return comp.compile_json_schema(xgr_schema_json(), any_whitespace=False, separators=(",", ":"),
                                    strict_mode=True)


def llg_grammar() -> str:
    import llguidance
    return llguidance.LLMatcher.grammar_from_json_schema(
        equivalent_json_schema(),
        overrides={"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"})


@functools.lru_cache(maxsize=1)
def llg_tokenizer():
    import llguidance.hf
    return llguidance.hf.from_tokenizer(tokenizer(), n_vocab=VOCAB_SIZE, eos_token=END_IDS)


def _bit(row: np.ndarray, tok: int) -> bool:
    return bool((int(row[tok >> 5]) >> (tok & 31)) & 1)


def _popcount(row: np.ndarray) -> int:
    return int(np.bitwise_count(row.view(np.uint32)).sum())


# -- one decode of one target per engine: returns per-step mask times (ns) -------------------------

class Checks:
    """Correctness counters gathered while timing (a miss/rejection is an anomaly)."""

    def __init__(self) -> None:
        self.steps = 0
        self.not_in_mask: list[str] = []
        self.rejected: list[str] = []
        self.not_finished: list[str] = []
        self.allowed: list[int] = []          # popcount per step (first repetition only)
        self.extra: dict[str, Any] = {}

    def miss(self, kind: str, q: str, i: int, ids: list[int], what: str = "") -> None:
        tok = tokenizer()
        msg = (f"query {q!r} step {i}/{len(ids)}: token {ids[i]} {tok.convert_ids_to_tokens(ids[i])!r} "
               f"after {tok.decode(ids[:i])[-24:]!r} {what}")
        getattr(self, kind).append(msg)


def decode_qpfast(vocab, q: str, ids: list[int], buf: np.ndarray, times: list[int], chk: Checks,
                  stats: bool) -> None:
    m = qpfast.Matcher(vocab, q)
    row = buf[0]
    pc = time.perf_counter_ns
    for i, t in enumerate(ids):
        t0 = pc()
        m.fill_bitmask(buf, 0)
        t1 = pc()
        times.append(t1 - t0)
        if not _bit(row, t):
            chk.miss("not_in_mask", q, i, ids)
        if stats:
            chk.allowed.append(_popcount(row))
            forced = m.forced_tokens()
            if forced:
                chk.extra.setdefault("forced_steps", 0)
                chk.extra["forced_steps"] += 1
                if forced != ids[i:i + len(forced)]:
                    chk.extra.setdefault("forced_mismatch", []).append(
                        f"query {q!r} step {i}: forced {forced} vs canonical {ids[i:i + len(forced)]}")
        if not m.accept(t):
            chk.miss("rejected", q, i, ids)
            break
    chk.steps += len(ids)
    if not m.is_finished():
        chk.not_finished.append(q)


def decode_qpfast_raw(vocab, q: str, ids: list[int], buf: np.ndarray, times: list[int], chk: Checks,
                      stats: bool) -> None:
    """The same, calling the pybind11 object directly (no Python wrapper checks)."""
    m = qpfast.Matcher(vocab, q)
    c = m._m
    words = vocab.words
    pc = time.perf_counter_ns
    for i, t in enumerate(ids):
        t0 = pc()
        c.fill_bitmask(buf, 0, words)
        t1 = pc()
        times.append(t1 - t0)
        if not c.accept(t):
            chk.miss("rejected", q, i, ids)
            break
    chk.steps += len(ids)


def decode_xgrammar(compiled, q: str, ids: list[int], buf, times: list[int], chk: Checks, stats: bool) -> None:
    import xgrammar as xgr
    m = xgr.GrammarMatcher(compiled)
    row = buf.numpy()[0]
    pc = time.perf_counter_ns
    for i, t in enumerate(ids):
        t0 = pc()
        m.fill_next_token_bitmask(buf, 0)
        t1 = pc()
        times.append(t1 - t0)
        if not _bit(row, t):
            chk.miss("not_in_mask", q, i, ids)
        if stats:
            chk.allowed.append(_popcount(row))
        if not m.accept_token(t):
            chk.miss("rejected", q, i, ids)
            break
    chk.steps += len(ids)
    if not m.is_terminated():
        chk.not_finished.append(q)


def decode_llguidance(lltok, grammar: str, q: str, ids: list[int], buf: np.ndarray, times: list[int],
                      chk: Checks, stats: bool) -> None:
    import llguidance
    from llguidance.numpy import fill_next_token_bitmask
    m = llguidance.LLMatcher(lltok, grammar)
    row = buf[0]
    pc = time.perf_counter_ns
    for i, t in enumerate(ids):
        t0 = pc()
        fill_next_token_bitmask(m, buf, 0)
        t1 = pc()
        times.append(t1 - t0)
        if not _bit(row, t):
            chk.miss("not_in_mask", q, i, ids)
        if stats:
            chk.allowed.append(_popcount(row))
        if not m.consume_token(t):
            chk.miss("rejected", q, i, ids, m.get_error())
            break
    chk.steps += len(ids)
    if not m.is_stopped() or m.is_error():
        chk.not_finished.append(q)


# -- statistics ------------------------------------------------------------------------------------

def summarize_ns(times: list[int]) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64) / 1e3
    return {"n": int(a.size), "mean_us": float(a.mean()), "p50_us": float(np.percentile(a, 50)),
            "p90_us": float(np.percentile(a, 90)), "p99_us": float(np.percentile(a, 99)),
            "max_us": float(a.max()), "min_us": float(a.min())}


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _git_state() -> str:
    """HEAD and whether csrc/ or python/qpfast/ differ from it (the qpfast being measured)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "csrc", "python/qpfast"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return f"{head}{' + uncommitted changes in csrc/ or python/qpfast/' if dirty else ''}" if head else "n/a"


def _timed(fn, *a, **k) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return time.perf_counter() - t0, r


# -- the benchmark sections ------------------------------------------------------------------------

def bench_ingest(reps: int) -> dict[str, dict[str, float]]:
    import llguidance.hf
    import xgrammar as xgr
    tok = tokenizer()
    fns = {
        "qpfast": lambda: qpfast.Vocab.from_tokenizer(tok, vocab_size=VOCAB_SIZE),
        "xgrammar": lambda: xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB_SIZE, stop_token_ids=END_IDS),
        "llguidance": lambda: llguidance.hf.from_tokenizer(tok, n_vocab=VOCAB_SIZE, eos_token=END_IDS),
        "hf_get_vocab": tok.get_vocab,  # reference: the HF call qpfast and xgrammar both start with
    }
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            gc.collect()
            dt, obj = _timed(fn)
            del obj
            res[k].append(dt)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "reps": len(v)} for k, v in res.items()}


def bench_compile(reps: int) -> dict[str, dict[str, float]]:
    """One-time per-schema cost (qpfast vocab x schema; xgrammar compile, cache off)."""
    import xgrammar as xgr
    vocab = qp_vocab()
    js = xgr_schema_json()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer(), vocab_size=VOCAB_SIZE, stop_token_ids=END_IDS)
    qp, xg, xg_cached = [], [], []
    cached = xgr.GrammarCompiler(info)
    cached.compile_json_schema(js, any_whitespace=False, separators=(",", ":"))
    for _ in range(reps):
        vocab._grammars.clear()  # bench-only: drop the per-schema cache to time a cold compile
        dt, _ = _timed(vocab.grammar, DEFAULT_SCHEMA)
        qp.append(dt)
        comp = xgr.GrammarCompiler(info, cache_enabled=False)
        dt, _ = _timed(comp.compile_json_schema, js, any_whitespace=False, separators=(",", ":"))
        xg.append(dt)
        dt, _ = _timed(cached.compile_json_schema, js, any_whitespace=False, separators=(",", ":"))
        xg_cached.append(dt)
    return {"qpfast": {"median_s": statistics.median(qp), "min_s": min(qp)},
            "xgrammar": {"median_s": statistics.median(xg), "min_s": min(xg)},
            "xgrammar_cached": {"median_s": statistics.median(xg_cached), "min_s": min(xg_cached)}}


def bench_setup(reps_fast: int, reps_slow: int) -> dict[str, dict[str, float]]:
    """Per-query matcher construction; per query the median of its reps, then mean/p50/max
    over queries (and all samples pooled for p99)."""
    import llguidance
    import xgrammar as xgr
    vocab, compiled, lltok, grammar = qp_vocab(), xgr_compiled(), llg_tokenizer(), llg_grammar()
    fresh = llguidance.LLMatcher(lltok, grammar)
    from qpfast import _C
    g = vocab.grammar(DEFAULT_SCHEMA)
    norm = {q: str(qpfast.normalize(q)).encode("utf-8") for q, _, _ in cases()}
    engines = {
        "qpfast": (lambda q: qpfast.Matcher(vocab, q), reps_fast),
        "qpfast_normalize": (lambda q: qpfast.normalize(q), reps_fast),
        "qpfast_core": (lambda q: _C.Matcher(g, norm[q], -1), reps_fast),
        "xgrammar": (lambda q: xgr.GrammarMatcher(compiled), reps_fast),
        "llguidance": (lambda q: llguidance.LLMatcher(lltok, grammar), reps_slow),
        "llguidance_deep_copy": (lambda q: fresh.deep_copy(), reps_fast),
    }
    out = {}
    pc = time.perf_counter_ns
    for name, (fn, reps) in engines.items():
        for q, _, _ in cases()[:3]:
            fn(q)  # warmup
        per_query, pooled = [], []
        gc.disable()
        try:
            for q, _, _ in cases():
                ts = []
                for _ in range(reps):
                    t0 = pc()
                    obj = fn(q)
                    t1 = pc()
                    ts.append(t1 - t0)
                    del obj
                per_query.append(statistics.median(ts))
                pooled += ts
        finally:
            gc.enable()
        s = summarize_ns(pooled)
        s["mean_of_query_medians_us"] = statistics.mean(per_query) / 1e3
        s["max_query_median_us"] = max(per_query) / 1e3
        out[name] = s
    return out


def step_fields(ids: list[int], target: str) -> list[str]:
    """For each step, the field whose value (or key) the token starts in: 'ner', ..., or
    'end' for the end token (after the closing brace)."""
    vocab = qp_vocab()
    tb = target.encode("utf-8")
    starts = sorted((tb.find(f'"{DEFAULT_SCHEMA.keys[f]}":'.encode()), f) for f in DEFAULT_SCHEMA.fields)
    out, pos = [], 0
    for t in ids:
        if pos >= len(tb):
            out.append("end")
        else:
            out.append(next((f for st, f in reversed(starts) if 0 <= st <= pos), starts[0][1]))
        pos += len(vocab.token_bytes[t])
    return out


def bench_mask(reps: int, warmup: int = 2, include_raw: bool = True) -> tuple[dict, dict[str, Checks]]:
    """All engines decode every target `reps` times, interleaved query by query (engine order
    rotating, query order shuffled per repetition).

    Two summaries per engine: `pooled` = every timed call of every repetition (includes the
    preemptions of a loaded machine); `robust` = for each (target, step) the median over the
    repetitions, then mean/p50/p99 over the steps -- the cost of each step with scheduler noise
    removed. `by_field` is the robust per-step cost grouped by the field being generated.
    """
    import llguidance  # noqa: F401
    import xgrammar as xgr
    vocab, compiled, lltok, grammar = qp_vocab(), xgr_compiled(), llg_tokenizer(), llg_grammar()
    words = vocab.words
    np_buf = np.zeros((1, words), dtype=np.int32)
    xg_buf = xgr.allocate_token_bitmask(1, VOCAB_SIZE)
    assert tuple(xg_buf.shape) == (1, words)
    runners = {
        "qpfast": lambda q, ids, tm, ck, st: decode_qpfast(vocab, q, ids, np_buf, tm, ck, st),
        "xgrammar": lambda q, ids, tm, ck, st: decode_xgrammar(compiled, q, ids, xg_buf, tm, ck, st),
        "llguidance": lambda q, ids, tm, ck, st: decode_llguidance(lltok, grammar, q, ids, np_buf, tm, ck, st),
    }
    if include_raw:
        runners["qpfast_raw"] = lambda q, ids, tm, ck, st: decode_qpfast_raw(vocab, q, ids, np_buf, tm, ck, st)
    cs = cases()
    # times[engine][target] = [reps][steps] in ns
    times: dict[str, list[list[list[int]]]] = {k: [[] for _ in cs] for k in runners}
    checks = {k: Checks() for k in runners}
    for _ in range(warmup):
        for q, _, ids in cs:
            for k, fn in runners.items():
                fn(q, ids, [], Checks(), False)
    rng = random.Random(SEED)
    names = list(runners)
    for rep in range(reps):
        order = list(range(len(cs)))
        rng.shuffle(order)
        gc.collect()
        gc.disable()
        try:
            for j, qi in enumerate(order):
                q, _, ids = cs[qi]
                rot = names[j % len(names):] + names[:j % len(names)]
                for k in rot:
                    tm: list[int] = []
                    runners[k](q, ids, tm, checks[k] if rep == 0 else Checks(), rep == 0)
                    if len(tm) == len(ids):  # a rejection (anomaly, counted in rep 0) ends a decode early
                        times[k][qi].append(tm)
        finally:
            gc.enable()
    fields = [step_fields(ids, t) for _, t, ids in cs]
    res = {}
    for k in runners:
        pooled = [x for per_t in times[k] for tm in per_t for x in tm]
        robust, design, first = [], [], []
        by_field: dict[str, list[float]] = {}
        for qi, per_t in enumerate(times[k]):
            if not per_t:
                continue
            med = np.median(np.asarray(per_t, dtype=np.float64), axis=0)
            robust += med.tolist()
            first.append(med[0])
            if qi == 0:
                design = med.tolist()
            for f, x in zip(fields[qi], med):
                by_field.setdefault(f, []).append(x)
        s = {"pooled": summarize_ns(pooled), "robust": summarize_ns(robust),
             "design_example": summarize_ns(design) if design else {},
             "first_step": summarize_ns(first) if first else {},
             "by_field": {f: summarize_ns(v) for f, v in by_field.items()}}
        if checks[k].allowed:
            s["allowed_tokens_mean"] = float(np.mean(checks[k].allowed))
            s["allowed_tokens_median"] = float(np.median(checks[k].allowed))
        res[k] = s
    return res, checks


def bench_batch(reps: int, batch: int = 64, nthreads_list=(None, 1)) -> dict[str, Any]:
    """qpfast.fill_bitmasks over `batch` matchers decoding in lock step (queries cycled; the
    batch shrinks as the shorter outputs finish). Per-row time = call time / rows in the call;
    `robust` takes each step's median over the repetitions first (as in bench_mask)."""
    vocab = qp_vocab()
    words = vocab.words
    cs = cases()
    assign = [cs[i % len(cs)] for i in range(batch)]
    steps = max(len(ids) for _, _, ids in assign)
    buf = np.zeros((batch, words), dtype=np.int32)
    single = np.zeros((1, words), dtype=np.int32)
    out: dict[str, Any] = {}
    mismatches: list[str] = []
    pc = time.perf_counter_ns
    for nthreads in nthreads_list:
        calls: list[list[int]] = []   # [rep][step] ns
        rows = [sum(1 for _, _, ids in assign if s < len(ids)) for s in range(steps)]
        for rep in range(reps + 1):  # rep 0 = warmup + correctness checks
            ms = [qpfast.Matcher(vocab, q) for q, _, _ in assign]
            tm: list[int] = []
            gc.collect()
            gc.disable()
            try:
                for s in range(steps):
                    act = [(m, ids[s]) for m, (_, _, ids) in zip(ms, assign) if s < len(ids)]
                    view = buf[:len(act)]
                    t0 = pc()
                    qpfast.fill_bitmasks([m for m, _ in act], view, nthreads=nthreads)
                    t1 = pc()
                    tm.append(t1 - t0)
                    if rep == 0:
                        for r, (m, t) in enumerate(act):
                            if not _bit(view[r], t):
                                mismatches.append(f"batch row {r} step {s}: canonical token {t} not in mask")
                            if r % 8 == 0:
                                m.fill_bitmask(single, 0)
                                if not np.array_equal(single[0], view[r]):
                                    mismatches.append(f"batch row {r} step {s}: differs from Matcher.fill_bitmask")
                    for m, t in act:
                        if not m.accept(t):
                            mismatches.append(f"batch step {s}: token {t} rejected")
            finally:
                gc.enable()
            if rep > 0:
                calls.append(tm)
        a = np.asarray(calls, dtype=np.float64)                 # [reps, steps]
        n = np.asarray(rows, dtype=np.float64)
        full = n == batch
        med = np.median(a, axis=0)
        key = f"nthreads={nthreads if nthreads is not None else 'default'}"
        out[key] = {
            "pooled_per_row": summarize_ns((a / n).ravel().tolist()),
            "robust_per_row": summarize_ns((med / n).tolist()),
            "robust_per_row_weighted_mean_us": float(med.sum() / n.sum() / 1e3),
            "robust_full_call": summarize_ns(med[full].tolist()),
            "full_steps": int(full.sum()), "steps": steps,
        }
    out["mismatches"] = mismatches[:20]
    out["n_mismatches"] = len(mismatches)
    out["batch"] = batch
    return out


# -- pytest-benchmark entry points -----------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script mode needs no pytest
    pytest = None

if pytest is not None:
    def _decode_all(fn):
        for q, _, ids in cases():
            fn(q, ids)

    def test_bench_qpfast_mask_design_example(benchmark):
        vocab = qp_vocab()
        buf = np.zeros((1, vocab.words), dtype=np.int32)
        q, _, ids = cases()[0]

        def run():
            m = qpfast.Matcher(vocab, q)
            for t in ids:
                m.fill_bitmask(buf, 0)
                m.accept(t)
            return m
        m = benchmark(run)
        assert m.is_finished()
        benchmark.extra_info["tokens"] = len(ids)

    def test_bench_qpfast_mask_all_targets(benchmark):
        vocab = qp_vocab()
        buf = np.zeros((1, vocab.words), dtype=np.int32)

        def one(q, ids):
            m = qpfast.Matcher(vocab, q)
            for t in ids:
                m.fill_bitmask(buf, 0)
                assert m.accept(t)
        benchmark(_decode_all, one)
        benchmark.extra_info["tokens"] = sum(len(ids) for _, _, ids in cases())

    def test_bench_xgrammar_mask_all_targets(benchmark):
        xgr = pytest.importorskip("xgrammar")
        compiled = xgr_compiled()
        buf = xgr.allocate_token_bitmask(1, VOCAB_SIZE)

        def one(q, ids):
            m = xgr.GrammarMatcher(compiled)
            for t in ids:
                m.fill_next_token_bitmask(buf, 0)
                assert m.accept_token(t)
        benchmark.pedantic(_decode_all, args=(one,), rounds=5, warmup_rounds=1)
        benchmark.extra_info["tokens"] = sum(len(ids) for _, _, ids in cases())

    def test_bench_llguidance_mask_all_targets(benchmark):
        llguidance = pytest.importorskip("llguidance")
        from llguidance.numpy import fill_next_token_bitmask
        lltok, grammar = llg_tokenizer(), llg_grammar()
        buf = np.zeros((1, qp_vocab().words), dtype=np.int32)

        def one(q, ids):
            m = llguidance.LLMatcher(lltok, grammar)
            for t in ids:
                fill_next_token_bitmask(m, buf, 0)
                assert m.consume_token(t)
        benchmark.pedantic(_decode_all, args=(one,), rounds=5, warmup_rounds=1)
        benchmark.extra_info["tokens"] = sum(len(ids) for _, _, ids in cases())

    def test_bench_qpfast_setup(benchmark):
        vocab = qp_vocab()
        q = cases()[0][0]
        benchmark(qpfast.Matcher, vocab, q)

    def test_bench_xgrammar_setup(benchmark):
        xgr = pytest.importorskip("xgrammar")
        benchmark(xgr.GrammarMatcher, xgr_compiled())

    def test_bench_llguidance_setup(benchmark):
        llguidance = pytest.importorskip("llguidance")
        benchmark(llguidance.LLMatcher, llg_tokenizer(), llg_grammar())

    def test_bench_qpfast_fill_bitmasks_64(benchmark):
        vocab = qp_vocab()
        cs = cases()
        assign = [cs[i % len(cs)] for i in range(64)]
        buf = np.zeros((64, vocab.words), dtype=np.int32)
        steps = min(len(ids) for _, _, ids in assign)

        def run():
            ms = [qpfast.Matcher(vocab, q) for q, _, _ in assign]
            for s in range(steps):
                qpfast.fill_bitmasks(ms, buf)
                for m, (_, _, ids) in zip(ms, assign):
                    m.accept(ids[s])
        benchmark.pedantic(run, rounds=10, warmup_rounds=1)
        benchmark.extra_info["rows"] = 64 * steps

    def test_bench_qpfast_vocab_ingest(benchmark):
        tok = tokenizer()
        benchmark.pedantic(qpfast.Vocab.from_tokenizer, args=(tok,), kwargs={"vocab_size": VOCAB_SIZE}, rounds=3)


# -- script mode ------------------------------------------------------------------------------------

def _fmt_ratio(other: float, mine: float) -> str:
    return f"{other / mine:.1f}x" if mine > 0 and other == other else "-"


def _fmt_num(x: float, width: int) -> str:
    return f"{x:{width}.3f}" if x == x else f"{'-':>{width}s}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="decodes of every target per engine (default 20)")
    ap.add_argument("--ingest-reps", type=int, default=3)
    ap.add_argument("--compile-reps", type=int, default=3)
    ap.add_argument("--setup-reps", type=int, default=200,
                    help="constructions per query (llguidance LLMatcher: a tenth of it, at least 5)")
    ap.add_argument("--batch-reps", type=int, default=10)
    ap.add_argument("--json", metavar="OUT", help="also write all numbers as JSON")
    args = ap.parse_args(argv)

    loads = {"start": _loadavg()}
    t_start = time.time()
    import llguidance  # noqa: F401
    import xgrammar  # noqa: F401
    from importlib.metadata import version
    versions = {"qpfast": qpfast.__version__, "xgrammar": version("xgrammar"), "llguidance": version("llguidance"),
                "python": sys.version.split()[0], "numpy": np.__version__, "qpfast_git": _git_state()}
    dt_tok, tok = _timed(tokenizer)
    cs = cases()
    n_tok = [len(ids) for _, _, ids in cs]
    print(f"qpfast {versions['qpfast']}, xgrammar {versions['xgrammar']}, llguidance {versions['llguidance']}; "
          f"Python {versions['python']}, numpy {versions['numpy']}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average at start {loads['start']}")
    print(f"qpfast source: {versions['qpfast_git']}; _C built {time.ctime(os.path.getmtime(qpfast._C.__file__))}")
    print(f"Qwen vocabulary: {len(tok)} tokenizer ids, lm_head {VOCAB_SIZE}; tokenizer load {dt_tok:.1f} s (untimed)")
    print(f"{len(cs)} targets (DESIGN example first, {n_tok[0]} tokens); tokens/target incl. EOS: "
          f"mean {statistics.mean(n_tok):.1f}, min {min(n_tok)}, max {max(n_tok)}, total {sum(n_tok)}")
    print("xgrammar/llguidance get the equivalent JSON schema (compact, keys in order; xgrammar without minLength "
          "on ner/seg strings, see equivalent_json_schema). They cannot express the query grounding (seg spells "
          "the query, entities are in-order spans of it, one weight per seg item): their masks allow more.")
    sys.stdout.flush()

    ingest = bench_ingest(args.ingest_reps)
    compile_ = bench_compile(args.compile_reps)
    setup = bench_setup(args.setup_reps, max(args.setup_reps // 10, 5))
    loads["before_mask"] = _loadavg()
    mask, checks = bench_mask(args.reps)
    loads["after_mask"] = _loadavg()
    batch = bench_batch(args.batch_reps)
    loads["end"] = _loadavg()

    E = ["qpfast", "xgrammar", "llguidance"]
    label = {"qpfast": "qpfast", "xgrammar": "xgrammar", "llguidance": "llguidance",
             "qpfast_raw": "qpfast (_C, no wrapper)"}
    nsteps = mask["qpfast"]["robust"]["n"]
    print(f"\nPer-token mask, µs: {args.reps} decodes of each target per engine, {nsteps} steps per decode set.")
    print("robust = per (target, step) median over the decodes, then stats over steps; pooled = all calls.")
    print(f"{'engine':24s} {'mean':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>9s} | {'pooled mean':>11s} "
          f"{'p50':>7s} {'p99':>8s} | {'DESIGN ex.':>10s} {'1st step':>9s} {'allowed/step':>12s}")
    for k in E + ["qpfast_raw"]:
        r, pl = mask[k]["robust"], mask[k]["pooled"]
        al = f"{mask[k]['allowed_tokens_mean']:.0f}" if "allowed_tokens_mean" in mask[k] else "-"
        de = mask[k]["design_example"].get("mean_us", float("nan"))
        fs = mask[k]["first_step"].get("mean_us", float("nan"))
        print(f"{label[k]:24s} {r['mean_us']:8.2f} {r['p50_us']:8.2f} {r['p90_us']:8.2f} {r['p99_us']:8.2f} "
              f"{r['max_us']:9.1f} | {pl['mean_us']:11.2f} {pl['p50_us']:7.2f} {pl['p99_us']:8.1f} | "
              f"{de:10.2f} {fs:9.1f} {al:>12s}")
    fields = list(DEFAULT_SCHEMA.fields) + ["end"]
    print("\nrobust per-step mask by field being generated, µs, mean / max over steps:")
    print(f"{'engine':12s} " + " ".join(f"{f:>15s}" for f in fields))
    for k in E:
        bf = mask[k]["by_field"]
        print(f"{k:12s} " + " ".join(
            f"{bf[f]['mean_us']:7.1f} /{bf[f]['max_us']:6.0f}" if f in bf else f"{'-':>15s}" for f in fields))
    bf = mask["qpfast"]["by_field"]
    print(f"{'steps':12s} " + " ".join(f"{bf[f]['n'] if f in bf else 0:15d}" for f in fields))

    rs = max(args.setup_reps // 10, 5)
    print(f"\nPer-query setup, µs (per query the median of {args.setup_reps} constructions, llguidance "
          f"LLMatcher {rs}; then over the {len(cs)} queries; pooled = all constructions)")
    print(f"{'':40s} {'mean':>9s} {'max':>9s} | {'pooled p50':>10s} {'pooled p99':>10s}")
    for k, lab in (("qpfast", "qpfast Matcher(vocab, raw query)"),
                   ("qpfast_normalize", "  of which: qpfast.normalize(query)"),
                   ("qpfast_core", "  of which: _C.Matcher(grammar, q, -1)"),
                   ("xgrammar", "xgrammar GrammarMatcher(compiled)"),
                   ("llguidance", "llguidance LLMatcher(tokenizer, grammar)"),
                   ("llguidance_deep_copy", "llguidance fresh_matcher.deep_copy()")):
        s = setup[k]
        print(f"{lab:40s} {s['mean_of_query_medians_us']:9.2f} {s['max_query_median_us']:9.2f} | "
              f"{s['p50_us']:10.2f} {s['p99_us']:10.2f}")
    print(f"\nOne-time per-schema compile, s (median of {args.compile_reps}): "
          f"qpfast vocab.grammar(schema) {compile_['qpfast']['median_s']:.3f} (min {compile_['qpfast']['min_s']:.3f}); "
          f"xgrammar compile_json_schema, cache off {compile_['xgrammar']['median_s']:.3f} "
          f"(min {compile_['xgrammar']['min_s']:.3f}), cached {compile_['xgrammar_cached']['median_s'] * 1e6:.0f} µs; "
          f"llguidance compiles in LLMatcher() (per-query setup above)")
    print(f"Vocabulary ingest, s (median of {args.ingest_reps}): " + ", ".join(
        f"{k} {ingest[k]['median_s']:.3f} (min {ingest[k]['min_s']:.3f})" for k in E)
        + f"; reference: tokenizer.get_vocab() alone {ingest['hf_get_vocab']['median_s']:.3f}")
    print(f"\nqpfast.fill_bitmasks, {batch['batch']} matchers in lock step ({args.batch_reps} reps), robust µs per row:")
    for key in ("nthreads=default", "nthreads=1"):
        b = batch[key]
        r, fc = b["robust_per_row"], b["robust_full_call"]
        print(f"  {key:17s} per row mean {b['robust_per_row_weighted_mean_us']:.2f} (rows weighted), "
              f"p50 {r['p50_us']:.2f}, p99 {r['p99_us']:.2f}; full {batch['batch']}-row call "
              f"({b['full_steps']} steps) mean {fc.get('mean_us', float('nan')):.0f}, "
              f"p99 {fc.get('p99_us', float('nan')):.0f}; pooled per row mean {b['pooled_per_row']['mean_us']:.2f}")

    qm, xm, lm = mask["qpfast"]["robust"], mask["xgrammar"]["robust"], mask["llguidance"]["robust"]
    sq = {k: setup[k]["mean_of_query_medians_us"] for k in setup}
    print("\nSummary (robust statistics) vs DESIGN.md §4 targets; ratio = other / qpfast")
    print(f"{'':22s} {'xgrammar':>11s} {'llguidance':>11s} {'qpfast':>10s} {'target':>13s} {'vs xgr':>8s} {'vs llg':>8s}")
    rows = [
        ("mask mean (µs)", xm["mean_us"], lm["mean_us"], qm["mean_us"], TARGETS_MS["mask_mean_us"]),
        ("mask p50 (µs)", xm["p50_us"], lm["p50_us"], qm["p50_us"], None),
        ("mask p99 (µs)", xm["p99_us"], lm["p99_us"], qm["p99_us"], TARGETS_MS["mask_p99_us"]),
        ("setup/query (µs)", sq["xgrammar"], sq["llguidance"], sq["qpfast"], TARGETS_MS["setup_us"]),
        ("ingest (s)", ingest["xgrammar"]["median_s"], ingest["llguidance"]["median_s"],
         ingest["qpfast"]["median_s"], TARGETS_MS["ingest_s"]),
        ("compile once (s)", compile_["xgrammar"]["median_s"], float("nan"), compile_["qpfast"]["median_s"], None),
    ]
    verdicts = {}
    for name, x, l, q, tgt in rows:
        tg = ""
        if tgt is not None:
            verdicts[name] = "ok" if q <= tgt else "MISSED"
            tg = f"≤{tgt:g} {verdicts[name]}"
        print(f"{name:22s} {_fmt_num(x, 11)} {_fmt_num(l, 11)} {q:10.3f} {tg:>13s} {_fmt_ratio(x, q):>8s} {_fmt_ratio(l, q):>8s}")
    pm = mask["qpfast"]["pooled"]
    print(f"(pooled, preemptions included: qpfast mask mean {pm['mean_us']:.2f}, p99 {pm['p99_us']:.1f} µs)")

    anomalies: list[str] = []
    for k in E + ["qpfast_raw"]:
        c = checks[k]
        for kind in ("not_in_mask", "rejected"):
            lst = getattr(c, kind)
            if lst:
                anomalies.append(f"{k}: {len(lst)} canonical tokens {kind.replace('_', ' ')} (first: {lst[0]})")
        if c.not_finished and k != "qpfast_raw":
            anomalies.append(f"{k}: {len(c.not_finished)} decodes did not finish (first: {c.not_finished[0]!r})")
    fm = checks["qpfast"].extra.get("forced_mismatch", [])
    if fm:
        anomalies.append(f"qpfast: forced_tokens() differs from the canonical ids at {len(fm)} steps (first: {fm[0]})")
    if batch["n_mismatches"]:
        anomalies.append(f"qpfast.fill_bitmasks: {batch['n_mismatches']} problems (first: {batch['mismatches'][0]})")
    for name, v in verdicts.items():
        if v == "MISSED":
            anomalies.append(f"qpfast misses the DESIGN.md §4 target for {name}")
    forced = checks["qpfast"].extra.get("forced_steps", 0)
    print(f"\nqpfast forced_tokens() non-empty at {forced} of {checks['qpfast'].steps} canonical steps "
          f"({forced / max(checks['qpfast'].steps, 1):.0%}: jump-forward candidates)")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in loads.items())
          + f"; wall {time.time() - t_start:.0f} s")
    print("\nAnomalies:" if anomalies else
          "\nAnomalies: none (every canonical token in every engine's mask and accepted; targets met)")
    for a in anomalies:
        print("  - " + a)

    result = {"date": time.strftime("%Y-%m-%d"), "loadavg": loads, "versions": versions,
              "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
              "targets": len(cs), "tokens_per_target": {"mean": statistics.mean(n_tok), "min": min(n_tok),
                                                        "max": max(n_tok), "total": sum(n_tok)},
              "mask": mask, "setup": setup, "compile": compile_, "ingest": ingest, "batch": batch,
              "qpfast_forced_steps": forced, "verdicts": verdicts, "anomalies": anomalies, "args": vars(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, ensure_ascii=False, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
