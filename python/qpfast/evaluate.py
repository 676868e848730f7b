"""Evaluation of qp-json/1 predictions, exactly as DESIGN.md §6 defines it, and the driver
behind ``qpfast eval``.

Definitions (micro-averaged over the whole set: true positives, predicted and gold counts
are summed over queries before precision, recall and F1 are computed):

- seg F1: every segment is a character span ``[start, end)`` of ``q'`` (the normalized
  query without spaces); a predicted span is correct when the gold has the same span.
- NER F1: entities as ``(start, end, type)`` spans of ``q`` (the normalized query), with
  the offsets the strict parser assigns (leftmost occurrence after the previous entity);
  exact match.
- weight F1: terms as ``(start, end, level)`` on ``q'``: correct only when boundaries and
  level are both right.
- category accuracy: exact path; first-level accuracy compares the part before ``>``
  (``其他`` is its own first level).
- intent F1: character-level, as multiset overlap: a query's true positives are
  ``sum(min(count_pred(c), count_gold(c)))`` over characters c, its predicted and gold
  counts the two lengths in code points; micro-averaged like the others.
- overall: the mean of seg F1, NER F1, weight F1 and category accuracy.

Predictions are parsed with ``qpfast.parse(strict=True)``. A prediction that does not
parse (or is missing) scores zero on every task for that query: it contributes no true
positives and no predicted items, its gold items still count in every recall
denominator, its category counts as wrong, and it is counted in ``invalid_rate``.
F1 = 2·tp / (pred + gold); in the degenerate case where a task has no gold and no
predicted item at all, F1 is the share of predictions that parsed (1.0 when all did).

The JSON report has exactly the keys ``seg_f1, ner_f1, weight_f1, cat_acc, cat1_acc,
intent_f1, overall, invalid_rate, n``. For a schema without some field, that field's
metric is None and overall averages the ones present.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, fields
from typing import Callable, Sequence

from .parse import ParseError, parse
from .result import QPResult
from .schema import DEFAULT_SCHEMA, Schema

REPORT_KEYS = ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "cat1_acc", "intent_f1", "overall",
               "invalid_rate", "n")

Predictor = Callable[[list[str]], list[str]]
"""Raw queries -> one output text per query (the model's generated qp-json/1 line)."""


@dataclass
class Counts:
    """Summable per-task counts for a set of (gold, prediction) pairs."""

    seg_tp: int = 0
    seg_pred: int = 0
    seg_gold: int = 0
    ner_tp: int = 0
    ner_pred: int = 0
    ner_gold: int = 0
    weight_tp: int = 0
    weight_pred: int = 0
    weight_gold: int = 0
    cat_correct: int = 0
    cat1_correct: int = 0
    intent_tp: int = 0
    intent_pred: int = 0
    intent_gold: int = 0
    n: int = 0
    invalid: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __iadd__(self, other: "Counts") -> "Counts":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def seg_spans(result: QPResult) -> set[tuple[int, int]]:
    """Segments as [start, end) spans of q' (spaces removed)."""
    out, pos = set(), 0
    for t in result.terms:
        out.add((pos, pos + len(t.text)))
        pos += len(t.text)
    return out


def weight_spans(result: QPResult) -> set[tuple[int, int, int]]:
    """Terms as (start, end, level) on q'."""
    out, pos = set(), 0
    for t in result.terms:
        if t.weight is not None:
            out.add((pos, pos + len(t.text), t.weight))
        pos += len(t.text)
    return out


def ner_spans(result: QPResult) -> set[tuple[int, int, str]]:
    """Entities as (start, end, type) on q."""
    return {(e.start, e.end, e.type) for e in result.entities}


def first_level(category: str | None) -> str | None:
    """``美妆>护肤`` -> ``美妆``."""
    return None if category is None else category.split(">", 1)[0]


def _overlap(pred: str, gold: str) -> int:
    return sum((Counter(pred) & Counter(gold)).values())


def parse_gold(target: str, query: str, schema: Schema | None = None) -> QPResult:
    """A gold target, parsed strictly; a gold that does not parse is a data error (ValueError)."""
    try:
        return parse(target, query, schema or DEFAULT_SCHEMA, strict=True)
    except ParseError as e:
        raise ValueError(f"gold target for query {query!r} is not valid qp-json/1: {e}") from None


def parse_prediction(output: str | None, query: str, schema: Schema | None = None) -> QPResult | None:
    """A prediction parsed strictly, or None when it does not parse (or is missing)."""
    if output is None:
        return None
    try:
        return parse(output, query, schema or DEFAULT_SCHEMA, strict=True)
    except ParseError:
        return None


def score_pair(gold: QPResult, pred: QPResult | None) -> Counts:
    """Counts for one query: `gold` parsed, `pred` parsed or None (unparsable)."""
    g_seg, g_ner, g_w = seg_spans(gold), ner_spans(gold), weight_spans(gold)
    c = Counts(seg_gold=len(g_seg), ner_gold=len(g_ner), weight_gold=len(g_w),
               intent_gold=len(gold.intent or ""), n=1)
    if pred is None:
        c.invalid = 1
        return c
    p_seg, p_ner, p_w = seg_spans(pred), ner_spans(pred), weight_spans(pred)
    c.seg_tp, c.seg_pred = len(g_seg & p_seg), len(p_seg)
    c.ner_tp, c.ner_pred = len(g_ner & p_ner), len(p_ner)
    c.weight_tp, c.weight_pred = len(g_w & p_w), len(p_w)
    c.cat_correct = int(pred.category is not None and pred.category == gold.category)
    c.cat1_correct = int(pred.category is not None and first_level(pred.category) == first_level(gold.category))
    pi, gi = pred.intent or "", gold.intent or ""
    c.intent_tp, c.intent_pred = _overlap(pi, gi), len(pi)
    return c


def score_example(query: str, gold_target: str, output: str | None, schema: Schema | None = None) -> Counts:
    """Counts for one (query, gold target, predicted output) triple (e.g. for RL rewards)."""
    gold = parse_gold(gold_target, query, schema)
    return score_pair(gold, parse_prediction(output, query, schema))


def _f1(tp: int, pred: int, gold: int, valid_share: float) -> float:
    if pred + gold == 0:
        return valid_share
    return 2.0 * tp / (pred + gold)


def report(counts: Counts, schema: Schema | None = None) -> dict:
    """The DESIGN §6 report (`REPORT_KEYS`) from summed counts."""
    schema = schema or DEFAULT_SCHEMA
    n = counts.n
    if n == 0:
        raise ValueError("report: no examples were scored")
    valid = (n - counts.invalid) / n
    has = set(schema.fields)
    out = {
        "seg_f1": _f1(counts.seg_tp, counts.seg_pred, counts.seg_gold, valid) if "seg" in has else None,
        "ner_f1": _f1(counts.ner_tp, counts.ner_pred, counts.ner_gold, valid) if "ner" in has else None,
        "weight_f1": (_f1(counts.weight_tp, counts.weight_pred, counts.weight_gold, valid)
                      if "weight" in has else None),
        "cat_acc": counts.cat_correct / n if "cat" in has else None,
        "cat1_acc": counts.cat1_correct / n if "cat" in has else None,
        "intent_f1": (_f1(counts.intent_tp, counts.intent_pred, counts.intent_gold, valid)
                      if "intent" in has else None),
    }
    parts = [out[k] for k in ("seg_f1", "ner_f1", "weight_f1", "cat_acc") if out[k] is not None]
    out["overall"] = sum(parts) / len(parts) if parts else None
    out["invalid_rate"] = counts.invalid / n
    out["n"] = n
    return out


def evaluate(queries: Sequence[str], gold_targets: Sequence[str], outputs: Sequence[str | None],
             schema: Schema | None = None) -> dict:
    """Score predicted `outputs` against `gold_targets` for raw `queries` (DESIGN §6 report)."""
    if not (len(queries) == len(gold_targets) == len(outputs)):
        raise ValueError(f"evaluate: lengths differ (queries {len(queries)}, gold {len(gold_targets)}, "
                         f"outputs {len(outputs)})")
    total = Counts()
    for q, g, o in zip(queries, gold_targets, outputs):
        total += score_example(q, g, o, schema)
    return report(total, schema)


# ---------------------------------------------------------------------------------------
# the eval driver
# ---------------------------------------------------------------------------------------
def _string_pairs(path: str | os.PathLike, key: str):
    """(query, record[key]) of each line of a JSONL file whose records hold both as strings."""
    from .data.dataset import numbered_jsonl
    for lineno, obj in numbered_jsonl(path):
        if not isinstance(obj.get("query"), str) or not isinstance(obj.get(key), str):
            raise ValueError(f'{path}:{lineno}: expected {{"query": str, "{key}": str}}')
        yield obj["query"], obj[key]


def load_data(path: str | os.PathLike, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Queries and gold targets of a ``{"query", "target"}`` JSONL data file."""
    queries, targets = [], []
    for query, target in _string_pairs(path, "target"):
        queries.append(query)
        targets.append(target)
        if limit is not None and len(queries) >= limit:
            break
    return queries, targets


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Query -> output of a ``{"query", "output"}`` JSONL predictions file (what `run_eval`'s
    `predictions_path` and ``python -m qpfast eval --predictions`` write)."""
    return dict(_string_pairs(path, "output"))


def legacy_predictor(gazetteer: str = "train", split_seed: int = 0) -> Predictor:
    """The legacy pipeline as a predictor (`qpfast.legacy`)."""
    from .legacy import legacy_pipeline
    return legacy_pipeline(gazetteer, split_seed)


def model_predictor(model_dir: str, **engine_kwargs) -> Predictor:
    """A checkpoint served by ``qpfast.Engine(model=DIR).generate`` as a predictor."""
    try:
        from .engine import Engine as engine_cls
    except ImportError as e:
        raise RuntimeError(f"--model needs qpfast.Engine, which is not available here ({e}); "
                           "install the engine extra (pip install 'qpfast[engine]') or use --legacy") from None
    engine = engine_cls(model=model_dir, **engine_kwargs)

    def predict(queries: list[str]) -> list[str]:
        results = engine.generate(queries)
        return [r.raw if isinstance(r, QPResult) and r.raw is not None else "" for r in results]

    return predict


def run_eval(data: str | os.PathLike, predictor: Predictor, *, schema: Schema | None = None,
             limit: int | None = None, predictions_path: str | os.PathLike | None = None) -> dict:
    """Predict every query of a data file, optionally write ``{"query", "output"}`` lines,
    and return the DESIGN §6 report."""
    queries, targets = load_data(data, limit)
    if not queries:
        raise ValueError(f"{data}: no records")
    outputs = list(predictor(queries))
    if len(outputs) != len(queries):
        raise RuntimeError(f"predictor returned {len(outputs)} outputs for {len(queries)} queries")
    if predictions_path is not None:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for q, o in zip(queries, outputs):
                f.write(json.dumps({"query": q, "output": o}, ensure_ascii=False, separators=(",", ":")) + "\n")
    return evaluate(queries, targets, outputs, schema)


def format_table(rep: dict, title: str = "") -> str:
    """The report as one aligned text table."""
    labels = {"seg_f1": "seg F1", "ner_f1": "NER F1", "weight_f1": "weight F1", "cat_acc": "category acc",
              "cat1_acc": "category acc (1st level)", "intent_f1": "intent char F1", "overall": "overall",
              "invalid_rate": "invalid output rate", "n": "queries"}
    width = max(len(v) for v in labels.values())
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  value")
    lines.append(f"{'-' * width}  ------")
    for k in REPORT_KEYS:
        v = rep[k]
        s = "n/a" if v is None else str(v) if k == "n" else f"{v:.4f}"
        lines.append(f"{labels[k]:<{width}}  {s}")
    return "\n".join(lines)


def write_report(rep: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON (keys in `REPORT_KEYS` order)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: rep[k] for k in REPORT_KEYS}, f, ensure_ascii=False, indent=2)
        f.write("\n")

