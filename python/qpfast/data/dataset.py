"""The generated data set: train / dev / test examples and their JSONL files (DESIGN.md §3).

A data file holds one ``{"query": str, "target": str}`` object a line, the target in
qp-json/1; the unlabelled stage-1 file holds ``{"query": str}`` lines.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .generator import Example, QueryGenerator
from .splits import SPLITS
from .stream import unlabelled_queries


def generate_splits(n_train: int, n_dev: int, n_test: int, *, seed: int = 0,
                    split_seed: int = 0) -> dict[str, list[Example]]:
    """Examples for each split, deterministic per (`seed`, `split_seed`).

    The test (and dev) examples use entity values and templates disjoint from train's,
    partitioned by `split_seed` (`qpfast.data.splits`).
    """
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    return {s: QueryGenerator(s, split_seed=split_seed).examples(sizes[s], seed=seed) for s in SPLITS}


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping | Example]) -> int:
    """Write records (dicts, or `Example` s as their ``{"query", "target"}`` record); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            obj = r.to_record() if isinstance(r, Example) else dict(r)
            f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def numbered_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line of a JSONL file; errors name the line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); errors name the line."""
    for _, obj in numbered_jsonl(path):
        yield obj


def write_splits(out_dir: str | os.PathLike, n_train: int, n_dev: int, n_test: int, *,
                 seed: int = 0, split_seed: int = 0, n_unlabelled: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (and ``unlabelled.jsonl`` when
    `n_unlabelled` > 0, drawn from the train split) into `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split in SPLITS:
        gen = QueryGenerator(split, split_seed=split_seed)
        paths[split] = out / f"{split}.jsonl"
        write_jsonl(paths[split], gen.iter_examples(sizes[split], seed=seed))
    if n_unlabelled:
        paths["unlabelled"] = out / "unlabelled.jsonl"
        write_jsonl(paths["unlabelled"], ({"query": q} for q in
                                          unlabelled_queries(n_unlabelled, seed, split_seed=split_seed)))
    return paths
