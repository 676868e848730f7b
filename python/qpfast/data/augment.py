"""Gold examples in new word orders and new template mixes, with their labels still gold.

A model that sees each train template many times learns the template's frame ("X 值得买吗"
-> the category of its training draws) instead of the words that carry the label, and the
test split's templates are all new frames. These rewrites of a drafted gold query break the
frames while keeping every label the pieces carry (entity type, weight, segment) true:

- ``drop``: function words (weight 0 literals) left out, as users type them
  (`qpfast.data.perturb.drop_function_words`): every label still holds;
- ``swap``: two content chunks trade places (`qpfast.data.perturb.swap_order`): every
  label still holds (segments follow the new order, the intent does not depend on it);
- ``splice``: the head of one draft joined to the tail of a draft of *another template of
  the same category* (`qpfast.data.stream.splice`): segments, entities, weights and the
  category still hold, the intent (written for one template's slots) does not, so the
  example says its intent is not to be learned (``mask``).

`augmented_examples` yields ``(Example, mask)`` pairs: `mask` names the target fields whose
value is not a label (``("intent",)`` for splices), for `qpfast.train.sft` to leave out of
the loss. Deterministic per seed; draws from one split only.
"""
from __future__ import annotations

import random
from typing import Iterator

from .generator import Draft, Example, QueryGenerator, RejectedDraw
from .perturb import drop_function_words, swap_order
from .stream import splice

__all__ = ["augmented_examples"]

_MAX_ATTEMPTS = 200


def _rewrite(gen: QueryGenerator, rng: random.Random, probs: dict[str, float]) -> tuple[Draft, tuple[str, ...]] | None:
    draft = gen.draft(rng)
    pieces, mask, changed = list(draft.pieces), (), False
    if rng.random() < probs["splice_prob"]:
        others = [t for t in gen.templates_of(draft.category) if t is not draft.template]
        if others:
            tail = gen.draft(rng, rng.choice(others)).pieces
            pieces, mask, changed = splice(pieces, tail, rng), ("intent",), True
    for name, f in (("swap", swap_order), ("drop", drop_function_words)):
        if rng.random() < probs[name]:
            new = f(pieces, rng)
            changed = changed or [p.text for p in new] != [p.text for p in pieces]
            pieces = new
    if not changed:
        return None
    return Draft(draft.template, pieces, draft.intent, draft.category), mask


def augmented_examples(n: int, seed: int = 0, *, split: str = "train", split_seed: int = 0,
                       drop: float = 0.5, swap: float = 0.3, splice_prob: float = 0.5,
                       synth_values: float = 0.0) -> Iterator[tuple[Example, tuple[str, ...]]]:
    """`n` rewritten gold examples of `split`, each with its masked fields (see the module
    doc); every example differs from its draft by at least one rewrite. `drop`, `swap`,
    `splice_prob`: each rewrite's probability; `synth_values` as in `QueryGenerator`."""
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    probs = {"drop": drop, "swap": swap, "splice_prob": splice_prob}
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {p}")
    if n and not any(probs.values()):
        raise ValueError("drop, swap, splice_prob: at least one must be > 0")
    gen = QueryGenerator(split, split_seed=split_seed, synth_values=synth_values)
    rng = random.Random(f"qpfast.augment:{seed}:{split}")
    for _ in range(n):
        for _ in range(_MAX_ATTEMPTS):
            got = _rewrite(gen, rng, probs)
            if got is None:
                continue
            try:
                yield gen.label(got[0], rng), got[1]
                break
            except RejectedDraw:
                continue
        else:
            raise RuntimeError(f"no valid rewritten example in {_MAX_ATTEMPTS} attempts")
