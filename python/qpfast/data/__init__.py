"""Generated QP data: Xiaohongshu-style queries with gold qp-json/1 labels (default schema).

- `gazetteers`: entity values for the ten entity types, by domain group;
- `pattern` / `templates`: the template language and the hand-written catalog (44 categories);
- `splits`: the seeded train / dev / test partition of values and templates;
- `generator`: `QueryGenerator`, drafts -> raw queries -> targets rendered by `qpfast.render`;
- `perturb` / `stream`: the perturbed, unlabelled stage-1 query stream;
- `augment`: gold examples rewritten (function words dropped, chunks swapped, same-category
  splices) with their labels still gold;
- `dataset`: `generate_splits`, `write_splits`, JSONL files.
"""
from __future__ import annotations

from .augment import augmented_examples
from .dataset import generate_splits, read_jsonl, write_jsonl, write_splits
from .generator import Example, QueryGenerator
from .splits import SPLITS, SplitPlan, split_plan
from .stream import unlabelled_queries
from .templates import TEMPLATES

__all__ = [
    "Example", "QueryGenerator", "SPLITS", "SplitPlan", "TEMPLATES", "augmented_examples", "generate_splits", "read_jsonl",
    "split_plan", "unlabelled_queries", "write_jsonl", "write_splits",
]
