"""Parse benchmark: qpfast.parse (C++ strict parser) vs json.loads + the same validation in
pure Python, on the same 1,000 qp-json/1 targets.

    python bench/bench_parse.py                      # prints a table
    python -m pytest bench/bench_parse.py            # pytest-benchmark

The targets come from a seeded generator (below) of QP-shaped queries (Chinese words,
brands, models, some English, spaces, the odd quote or emoji) and are rendered with
`qpfast.render`. Both sides start from the same inputs (target text, raw query) and return
a `QPResult`; both normalize the query. The Python side checks exactly what the strict
parser checks: canonical compact JSON (json.loads, then a json.dumps comparison), keys in
schema order, and every grounding rule of DESIGN.md §1. `py_parse` is also used by the
test suite as an independent reference of the strict language (tests/test_parse_strict.py).
"""
from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
import unicodedata
from typing import Callable

import qpfast
from qpfast import DEFAULT_SCHEMA, Entity, QPResult, Schema, Term, normalize

N_TARGETS = 1000
SEED = 20261126


# -- the pure-Python reference: json.loads + the grounding rules ------------------------------

class PyParseError(ValueError):
    pass


def py_parse(text: str, query: str, schema: Schema = DEFAULT_SCHEMA) -> QPResult:
    """json.loads + pure-Python validation of qp-json/1: accepts exactly what strict
    `qpfast.parse` accepts (no error positions), returns the same QPResult."""
    norm = normalize(query, schema)
    q = str(norm)
    if not q:
        raise PyParseError("query is empty after normalization")
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise PyParseError(f"not JSON: {e}") from None
    keys = [schema.keys[f] for f in schema.fields]
    if type(obj) is not dict or list(obj) != keys:
        raise PyParseError("not an object with the schema's keys in order")
    if json.dumps(obj, ensure_ascii=False, separators=(",", ":")) != text:
        raise PyParseError("not canonical compact JSON")
    entities: list[Entity] = []
    terms: list[Term] = []
    cat = intent = None
    for f in schema.fields:
        v = obj[schema.keys[f]]
        if f == "ner":
            if type(v) is not list:
                raise PyParseError("ner: not a list")
            prev = 0
            for item in v:
                if type(item) is not list or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
                    raise PyParseError("ner: not a [text, type] pair")
                et, ty = item
                if not et or et[0] == " " or et[-1] == " ":
                    raise PyParseError("ner: empty or space-edged entity")
                at = q.find(et, prev)
                if at < 0:
                    raise PyParseError("ner: not a span of the query after the previous entity")
                if ty not in schema.entity_types:
                    raise PyParseError("ner: unknown type")
                prev = at + len(et)
                entities.append(Entity(et, ty, at, prev))
        elif f == "seg":
            if type(v) is not list or not v:
                raise PyParseError("seg: not a non-empty list")
            qi = 0
            qs_to_q = [i for i, c in enumerate(q) if c != " "]
            qs = "".join(q[i] for i in qs_to_q)
            for s in v:
                if type(s) is not str or not s or " " in s or not qs.startswith(s, qi):
                    raise PyParseError("seg: does not continue the query")
                terms.append(Term(s, None, qs_to_q[qi], qs_to_q[qi + len(s) - 1] + 1))
                if schema.seg_breaks_at_spaces and " " in q[terms[-1].start:terms[-1].end]:
                    raise PyParseError("seg: spans a space of the query")
                qi += len(s)
            if qi != len(qs):
                raise PyParseError("seg: does not cover the query")
        elif f == "weight":
            if type(v) is not list or len(v) != len(terms):
                raise PyParseError("weight: not one per segment")
            for i, w in enumerate(v):
                if type(w) is not int or not 0 <= w < schema.weight_levels:
                    raise PyParseError("weight: out of range")
                terms[i] = Term(terms[i].text, w, terms[i].start, terms[i].end)
        elif f == "cat":
            if type(v) is not str or v not in schema.categories:
                raise PyParseError("cat: not in schema.categories")
            cat = v
        else:
            if type(v) is not str or not 1 <= len(v) <= schema.intent_max_chars:
                raise PyParseError("intent: empty or too long")
            for ch in v:
                if unicodedata.category(ch) in ("Cc", "Cs"):
                    raise PyParseError("intent: control character or surrogate")
            intent = v
    return QPResult(query=query, normalized=q, truncated=norm.truncated, entities=entities, terms=terms,
                    category=cat, intent=intent, raw=text)


# -- seeded targets ------------------------------------------------------------------------

BRANDS = ["兰蔻", "雅诗兰黛", "小米", "苹果", "华为", "耐克", "New Balance", "优衣库", "宜家", "SK-II",
          "戴森", "理想", "特斯拉", "海底捞", "喜茶", "Lululemon"]
PRODUCTS = ["小黑瓶", "su7", "iPhone 15 Pro", "574", "Air Max", "小棕瓶", "Mate60", "Model Y",
            "AirPods", "Switch", "神仙水", "V15"]
KINDS = ["粉底液", "民宿", "跑鞋", "手机壳", "洗碗机", "奶茶", "火锅", "面霜", "冲锋衣", "猫粮", "显卡", "耳机"]
PLACES = ["北京", "上海", "成都", "三亚", "大理", "日本", "东京", "杭州西湖"]
TIMES = ["周末", "夏天", "国庆", "2024", "明天", "冬季"]
PEOPLE = ["油皮", "学生党", "宝妈", "新手", "上班族", "敏感肌"]
WORKS = ["三体", "甄嬛传", "原神", "黑神话悟空", "流浪地球"]
FILLER = ["适合", "什么", "肤质", "推荐", "平价", "怎么样", "多少钱", "哪里", "攻略", "的", "和", "还是",
          "好用", "测评", "价格", "排名", "怎么", "选", "区别", "附近", "便宜", "正品", "教程"]
ODD = ['"', "\\", "😀", "👩\u200d👩\u200d👧", "ＡＢＣ", "e\u0301", "  "]
TYPED = [(BRANDS, "品牌"), (PRODUCTS, "产品"), (KINDS, "品类"), (PLACES, "地点"), (TIMES, "时间"),
         (PEOPLE, "人群"), (WORKS, "作品")]


def make_targets(n: int = N_TARGETS, seed: int = SEED, schema: Schema = DEFAULT_SCHEMA) -> list[tuple[str, str]]:
    """`n` (raw query, target text) pairs, the same for a given seed."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        words: list[tuple[str, str | None]] = []
        for _ in range(rng.randint(2, 7)):
            r = rng.random()
            if r < 0.45:
                pool, ty = rng.choice(TYPED)
                words.append((rng.choice(pool), ty))
            elif r < 0.95:
                words.append((rng.choice(FILLER), None))
            else:
                words.append((rng.choice(ODD), None))
        raw = "".join(w + (" " if rng.random() < 0.25 else "") for w, _ in words)
        nq = normalize(raw, schema)
        q = str(nq)
        if not q:
            continue
        ents, prev = [], 0
        for w, ty in words:
            if ty is None:
                continue
            t = str(normalize(w)).strip(" ")
            at = q.find(t, prev) if t else -1
            if at < 0:
                continue
            ents.append([t, ty])
            prev = at + len(t)
        seg: list[str] = []
        for w, _ in words:
            seg += [p for p in str(normalize(w)).split(" ") if p]
        # keep what the (possibly truncated) query still covers
        qs, acc, keep = q.replace(" ", ""), "", []
        for s in seg:
            if not qs.startswith(acc + s):
                rest = qs[len(acc):]
                if rest:
                    keep.append(rest)
                acc = qs
                break
            keep.append(s)
            acc += s
        if acc != qs:
            keep.append(qs[len(acc):])
        obj = {
            "ner": ents,
            "seg": keep,
            "weight": [rng.randrange(schema.weight_levels) for _ in keep],
            "cat": rng.choice(schema.categories),
            "intent": ("想了解" + q.replace(" ", ""))[: rng.randint(4, schema.intent_max_chars)],
        }
        try:
            text = qpfast.render(obj, schema, query=raw)
        except ValueError:
            continue  # e.g. an entity cut by truncation
        out.append((raw, text))
    return out


# -- the timed functions ---------------------------------------------------------------------

def run_cpp(targets: list[tuple[str, str]]) -> list[QPResult]:
    parse = qpfast.parse
    return [parse(t, q) for q, t in targets]


def run_python(targets: list[tuple[str, str]]) -> list[QPResult]:
    return [py_parse(t, q) for q, t in targets]


def run_json_loads(targets: list[tuple[str, str]]) -> list:
    loads = json.loads
    return [loads(t) for _, t in targets]


def run_cpp_core(prepared) -> list:
    """The C++ parser alone: pre-normalized, pre-encoded inputs, dict results (no QPResult)."""
    cparse = qpfast._C.parse
    return [cparse(t, q, c, True) for t, q, c in prepared]


def prepare_core(targets):
    c = DEFAULT_SCHEMA.compiled()
    return [(t.encode("utf-8"), str(normalize(q)).encode("utf-8"), c) for q, t in targets]


# -- pytest-benchmark ------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the script mode needs no pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def targets():
        return make_targets()

    def test_same_results(targets):
        assert run_cpp(targets) == run_python(targets)

    def test_parse_cpp(benchmark, targets):
        benchmark.extra_info["targets"] = len(targets)
        benchmark(run_cpp, targets)

    def test_parse_python(benchmark, targets):
        benchmark.extra_info["targets"] = len(targets)
        benchmark(run_python, targets)

    def test_json_loads_only(benchmark, targets):
        benchmark(run_json_loads, targets)

    def test_parse_cpp_core(benchmark, targets):
        benchmark(run_cpp_core, prepare_core(targets))


# -- script mode -----------------------------------------------------------------------------

def _time(fn: Callable, arg, repeat: int = 15) -> tuple[float, float]:
    fn(arg)  # warm up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(arg)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def main() -> None:
    targets = make_targets()
    assert run_cpp(targets) == run_python(targets), "the two parsers disagree"
    n = len(targets)
    mean_bytes = statistics.mean(len(t.encode("utf-8")) for _, t in targets)
    rows = [
        ("qpfast.parse (C++ strict, QPResult)", run_cpp, targets),
        ("json.loads + Python validation (QPResult)", run_python, targets),
        ("json.loads only (no validation)", run_json_loads, targets),
        ("_C.parse core (no normalize, dict out)", run_cpp_core, prepare_core(targets)),
    ]
    print(f"{n} targets, mean {mean_bytes:.0f} bytes; Python {sys.version.split()[0]}, "
          f"{platform.machine()}, qpfast {qpfast.__version__}")
    print(f"{'':44s} {'median/target':>14s} {'best/target':>12s} {'total (median)':>15s}")
    res = {}
    for name, fn, arg in rows:
        med, best = _time(fn, arg)
        res[name] = (med, best)
        print(f"{name:44s} {med / n * 1e6:11.2f} µs {best / n * 1e6:9.2f} µs {med * 1e3:12.2f} ms")
    (cpp_med, cpp_best), (py_med, py_best) = res[rows[0][0]], res[rows[1][0]]
    print(f"\nratio json.loads + Python validation / qpfast.parse: {py_med / cpp_med:.2f}x (medians), "
          f"{py_best / cpp_best:.2f}x (best runs)")


if __name__ == "__main__":
    main()
