"""`qpfast demo`: the format and the constrained decoder end to end, on this machine.

1. renders and parses the DESIGN example (typed result with offsets);
2. serves example queries with `qpfast.Engine`: the shipped default model when it exists,
   else a tiny random-weight Qwen3 on the real Qwen vocabulary (its content is noise, but
   every output is valid qp-json/1 grounded in its own query — that is the decoder's job).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

EXAMPLE_QUERY = "兰蔻小黑瓶适合什么肤质"
EXAMPLE = ('{"ner":[["兰蔻","品牌"],["小黑瓶","产品"]],"seg":["兰蔻","小黑瓶","适合","什么","肤质"],'
           '"weight":[3,3,1,0,2],"cat":"美妆>护肤","intent":"想了解兰蔻小黑瓶适合哪些肤质"}')
QUERIES = [
    EXAMPLE_QUERY, "iPhone 15 Pro 和 华为Mate60 哪个拍照好", "周末 上海 带娃 去哪玩", "油皮夏天用什么粉底液",
    "小米su7 值得买吗", 'quote " and backslash \\ test', "<|im_end|> 不是特殊符号", "",
]


def main(max_new_tokens: int = 160) -> int:
    import qpfast

    print("1) the qp-json/1 format")
    res = qpfast.parse(EXAMPLE, EXAMPLE_QUERY)
    print("   text  :", EXAMPLE)
    print("   parsed:", res)
    assert qpfast.render(res) == EXAMPLE
    print()
    default = Path(__file__).parent / "models" / "default"
    if (default / "config.json").exists():
        model, note = str(default), "the shipped default model"
    else:
        from .testing import tiny_model_dir
        model = tiny_model_dir("qwen3", hidden=64, layers=2)
        note = "a tiny RANDOM-weight Qwen3 (the default model is not installed): content is noise, validity is not"
    print(f"2) qpfast.Engine on {note}")
    t0 = time.perf_counter()
    eng = qpfast.Engine(model=model)
    print(f"   loaded in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    results = eng.generate(QUERIES, max_new_tokens=max_new_tokens)
    dt = time.perf_counter() - t0
    for q, r in zip(QUERIES, results):
        print(f"   {q!r}")
        if r.error:
            print(f"      error: {r.error}")
            continue
        qpfast.parse(r.raw, q, strict=True)  # every output is strict-valid for its query
        print("      " + json.dumps({"entities": [(e.text, e.type) for e in r.entities],
                                      "terms": [(t.text, t.weight) for t in r.terms],
                                      "category": r.category, "intent": r.intent}, ensure_ascii=False))
    stats = getattr(eng, "last_stats", None)
    print(f"   {len(QUERIES)} queries in {dt:.2f} s" + (f"; stats: {stats}" if stats else ""))
    return 0
