"""Where a model's segmentation wins and loses against the legacy pipeline.

    python bench/seg_breakdown.py --data runs/k1/data/test.jsonl \
        --predictions runs/k1/eval/stage3_predictions.jsonl

Prints seg F1 (DESIGN.md §6) of the predictions and of the legacy pipeline on two query classes
(only Chinese; with ASCII letters or digits), then, on the second class, the boundary decisions
between a letter (L), a digit (D) and a Chinese character or other symbol (H) that the
predictions get wrong: a boundary the gold has and the prediction lacks (``joined``), or the
reverse (``split``). `--predictions` is the JSONL that ``python -m qpfast eval --predictions``
or the training recipe (``runs/NAME/eval/*_predictions.jsonl``) writes.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

from qpfast.evaluate import (legacy_predictor, load_data, load_predictions, parse_gold, parse_prediction,
                             seg_spans)

_ALNUM = re.compile(r"[A-Za-z0-9]")


def _kind(ch: str) -> str:
    if ch.isascii() and ch.isalpha():
        return "L"
    if ch.isascii() and ch.isdigit():
        return "D"
    return "H"


def _bounds(spans: set[tuple[int, int]]) -> set[int]:
    """Segment ends (`seg_spans` of a result)."""
    return {end for _, end in spans}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="JSONL with query and target")
    ap.add_argument("--predictions", required=True, help="JSONL with query and output")
    args = ap.parse_args(argv)
    queries, targets = load_data(args.data)
    preds = load_predictions(args.predictions)
    legacy = legacy_predictor()(queries)
    # class -> [model tp, model pred, legacy tp, legacy pred, gold, queries]
    agg: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    errors: Counter = Counter()
    for q, target, leg in zip(queries, targets, legacy):
        gold = parse_gold(target, q)
        model = parse_prediction(preds.get(q), q)
        g = seg_spans(gold)
        m = seg_spans(model) if model else set()
        leg_res = parse_prediction(leg, q)
        lg = seg_spans(leg_res) if leg_res else set()
        cls = "with letters or digits" if _ALNUM.search(q) else "only Chinese"
        a = agg[cls]
        for i, v in enumerate((len(g & m), len(m), len(g & lg), len(lg), len(g), 1)):
            a[i] += v
        if cls == "only Chinese" or model is None:
            continue
        text = "".join(t.text for t in gold.terms)
        gb, mb = _bounds(g), _bounds(m)
        for i in range(1, len(text)):
            pair = _kind(text[i - 1]) + _kind(text[i])
            if pair != "HH" and (i in gb) != (i in mb):
                errors[(pair, "joined" if i in gb else "split")] += 1
    print(f"{'queries':24s} {'n':>6s} {'model':>7s} {'legacy':>7s}")
    for cls in ("only Chinese", "with letters or digits"):
        tp, mp, ltp, lp, gold_n, n = agg[cls]
        f1 = lambda t, p: 2 * t / (p + gold_n) if p + gold_n else 0.0  # noqa: E731
        print(f"{cls:24s} {n:6d} {f1(tp, mp):7.3f} {f1(ltp, lp):7.3f}")
    print("\nboundary errors in queries with letters or digits (L letter, D digit, H other):")
    for (pair, kind), n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {pair} {kind:6s} {n:5d}")


if __name__ == "__main__":
    main()
