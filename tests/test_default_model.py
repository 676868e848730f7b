"""The embedded default model (python/qpfast/models/default): shipped, small, loadable through
`qpfast.generate(queries)` with no model argument, and every output strict-valid."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import qpfast
from qpfast.data.dataset import generate_splits
from qpfast.generate import DEFAULT_MODEL_DIR, clear_engines, default_model_dir

from test_engine_support import ADVERSARIAL, torch_threads

CAP_BYTES = 25 * 1024 * 1024
SERVED = qpfast.model_schema(DEFAULT_MODEL_DIR)      # what qpfast.generate() serves the default model with


@pytest.fixture(scope="module")
def results():
    # held-out test-split queries (unseen entity values and templates) + adversarial ones
    queries = [ex.query for ex in generate_splits(0, 0, 100 - len(ADVERSARIAL), seed=7)["test"]] + ADVERSARIAL
    assert len(queries) == 100
    with torch_threads(2):
        try:
            res = qpfast.generate(queries, device="cpu")
        finally:
            clear_engines()
    return queries, res


def test_the_default_model_is_shipped_and_small():
    d = Path(DEFAULT_MODEL_DIR)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                 "metrics.json", "qpfast_schema.json"):
        assert (d / name).is_file(), name
    assert sum(f.stat().st_size for f in d.iterdir() if f.is_file()) <= CAP_BYTES
    assert default_model_dir() == str(d)


def test_default_model_returns_strict_valid_results_for_100_queries(results):
    queries, res = results
    assert len(res) == len(queries)
    empty = {q for q in queries if not qpfast.normalize(q)}
    for q, r in zip(queries, res):
        if q in empty:
            assert r.error and "empty" in r.error
            continue
        assert r.error is None, (q, r.error)
        strict = qpfast.parse(r.raw, q, strict=True)          # raises if not strict-valid
        assert strict.to_dict() == r.to_dict()
        assert qpfast.parse(r.raw, q, SERVED, strict=True).to_dict() == r.to_dict()
        assert all(" " not in r.normalized[t.start:t.end] for t in r.terms), r.raw


def test_the_default_model_is_served_with_its_own_schema():
    # the default schema's fields and labels, plus: a space of the query always ends a segment
    assert SERVED == qpfast.Schema(seg_breaks_at_spaces=True)
    assert SERVED.to_dict() == {**qpfast.DEFAULT_SCHEMA.to_dict(), "seg_breaks_at_spaces": True}


def test_model_card_holds_the_metrics_table():
    d = Path(DEFAULT_MODEL_DIR)
    card = (d / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    for system in ("legacy", "stage1", "stage2", "stage3"):
        assert system in metrics, system
        assert metrics[system]["invalid_rate"] == 0.0
    assert "legacy" in card and "stage 3" in card.lower()
    for system in ("legacy", "stage1", "stage2", "stage3_policy", "branch_stage2", "branch_stage3",
                   "stage3"):                                                   # the card's table is metrics.json's
        if system in metrics:
            assert f"| {metrics[system]['seg_f1']:.4f} | {metrics[system]['ner_f1']:.4f} |" in card, system


def test_shipped_model_beats_legacy_on_every_task():
    metrics = json.loads((Path(DEFAULT_MODEL_DIR) / "metrics.json").read_text(encoding="utf-8"))
    for task in ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "intent_f1"):
        assert metrics["stage3"][task] > metrics["legacy"][task], task
