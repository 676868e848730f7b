"""The unlabelled query stream for training stage 1 (knowledge injection).

Stage 1 of the source paper trains on ~10^7 historical queries labelled by the legacy
pipeline. Here the "historical" queries come from the same generator with the labels
discarded, and a share of them perturbed (`qpfast.data.perturb`) so the stream is noisier
than the templates. By default the stream draws from the *train* split only, so stage 1
never sees a test entity value or template.
"""
from __future__ import annotations

import random
from typing import Iterator

from ..normalize import normalize
from .generator import QueryGenerator, compose
from .perturb import PERTURBATIONS


def unlabelled_queries(n: int, seed: int = 0, *, split: str = "train", split_seed: int = 0,
                       perturb: float = 0.3) -> Iterator[str]:
    """`n` raw queries, deterministic per seed; each perturbation applies with prob `perturb`."""
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if not 0.0 <= perturb <= 1.0:
        raise ValueError(f"perturb: must be in [0, 1], got {perturb}")
    gen = QueryGenerator(split, split_seed=split_seed)
    rng = random.Random(f"qpfast.stream:{seed}:{split}")
    produced = 0
    while produced < n:
        pieces = gen.draft(rng).pieces
        for f in PERTURBATIONS:
            if rng.random() < perturb:
                pieces = f(pieces, rng)
        raw, _, _ = compose(pieces, rng)
        if not str(normalize(raw)):
            continue
        produced += 1
        yield raw
