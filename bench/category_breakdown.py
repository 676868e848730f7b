"""Where a model's category wins and loses against the legacy pipeline.

    python bench/category_breakdown.py --data runs/l3/data/test.jsonl \
        --predictions runs/l3/eval/stage1_predictions.jsonl

The legacy pipeline picks a category from keyword tables (`qpfast.legacy.category_rules`) and
entity domains, so its accuracy splits sharply on whether a table keyword occurs in the query.
Prints category accuracy (DESIGN.md §6, exact label) and top-level accuracy (the part before
``>``) of the predictions and of the legacy pipeline on three query classes — keywords of one
category occur in the query, keywords of several categories (the legacy keyword weights decide),
or none — then the model's most frequent confusions (gold -> predicted)
in each class. `--predictions` is the JSONL that ``python -m qpfast eval --predictions`` or the
training recipe (``runs/NAME/eval/*_predictions.jsonl``) writes.
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from qpfast.evaluate import (first_level, legacy_predictor, load_data, load_predictions, parse_gold,
                             parse_prediction)
from qpfast.legacy.category_rules import KEYWORDS

KEYWORD = "keywords of 1 category"
KEYWORDS_MIXED = "keywords of 2+ categories"
NO_KEYWORD = "no legacy keyword"
CLASSES = (KEYWORD, KEYWORDS_MIXED, NO_KEYWORD)


def query_class(query: str) -> str:
    """`KEYWORD` when words of one category of the legacy keyword tables occur in `query` (spaces
    removed), `KEYWORDS_MIXED` when words of several categories do, else `NO_KEYWORD`."""
    text = query.replace(" ", "")
    cats = {cat for cat, words in KEYWORDS.items() if any(w in text for w, _ in words)}
    return NO_KEYWORD if not cats else KEYWORD if len(cats) == 1 else KEYWORDS_MIXED


def _category(output: str | None, query: str) -> str | None:
    """The category of a prediction; None when it does not parse."""
    res = parse_prediction(output, query)
    return res.category if res else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="JSONL with query and target")
    ap.add_argument("--predictions", required=True, help="JSONL with query and output")
    ap.add_argument("--confusions", type=int, default=8, help="confusions to print per class")
    args = ap.parse_args(argv)
    queries, targets = load_data(args.data)
    preds = load_predictions(args.predictions)
    legacy = legacy_predictor()(queries)
    # class -> [n, model exact, model top, legacy exact, legacy top]
    agg: dict[str, list[int]] = defaultdict(lambda: [0] * 5)
    confusions: dict[str, Counter] = defaultdict(Counter)
    for q, target, leg in zip(queries, targets, legacy):
        gold = parse_gold(target, q).category
        mc, lc = _category(preds.get(q), q), _category(leg, q)
        cls = query_class(q)
        hits = (1, mc == gold, first_level(mc) == first_level(gold), lc == gold, first_level(lc) == first_level(gold))
        agg[cls] = [t + int(v) for t, v in zip(agg[cls], hits)]
        if mc != gold:
            confusions[cls][(gold, mc)] += 1
    agg["all"] = [sum(col) for col in zip(*(agg[c] for c in CLASSES))]
    print(f"{'queries':26s} {'n':>6s} {'model':>7s} {'legacy':>7s} {'model top':>10s} {'legacy top':>10s}")
    for cls in CLASSES + ("all",):
        a = agg[cls]
        n = max(a[0], 1)
        print(f"{cls:26s} {a[0]:6d} {a[1] / n:7.3f} {a[3] / n:7.3f} {a[2] / n:10.3f} {a[4] / n:10.3f}")
    for cls in CLASSES:
        print(f"\nmodel confusions, {cls} (gold -> predicted):")
        for (g, p), n in confusions[cls].most_common(args.confusions):
            print(f"  {n:5d}  {g} -> {p}")


if __name__ == "__main__":
    main()
