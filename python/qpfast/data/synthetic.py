"""Synthetic entity values: new strings shaped like a split's real ones.

A small model trained on the gold data learns the entity values it saw, not the skill of
reading a new one: on held-out values its segmentation and NER collapse while the same
templates with seen values stay near perfect. Gold examples whose slots hold *synthetic*
values teach the skill: the template, the labels and the intent stay right, but the value
is a string the model cannot have memorized.

`SyntheticValues.mutate` keeps a real value's shape and replaces its content: each Chinese
character by one drawn from the split's own entity characters (so the tokenizer knows it),
each Latin letter by a random letter, each digit by a random digit; spaces, punctuation and
length stay. Linked values (a brand with its product line and model) are mutated field by
field, so they stay linked.
"""
from __future__ import annotations

import dataclasses
import random
import string
from typing import Any

from .splits import Pool


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


class SyntheticValues:
    """Shape-preserving mutations of a pool's entity values."""

    def __init__(self, pool: Pool):
        chars = sorted({ch for v in pool.values() for ch in v if _is_han(ch)})
        if not chars:
            raise ValueError("pool: no Chinese characters to draw synthetic values from")
        self._han = chars

    def mutate(self, value: str, rng: random.Random) -> str:
        out = []
        for ch in value:
            if _is_han(ch):
                out.append(rng.choice(self._han))
            elif ch in string.ascii_lowercase:
                out.append(rng.choice(string.ascii_lowercase))
            elif ch in string.ascii_uppercase:
                out.append(rng.choice(string.ascii_uppercase))
            elif ch in string.digits:
                out.append(rng.choice(string.digits))
            else:
                out.append(ch)
        return "".join(out)

    def item(self, item: Any, rng: random.Random) -> Any:
        """A synthetic stand-in for a drawn slot item (a value, or a linked dataclass)."""
        if isinstance(item, str):
            return self.mutate(item, rng)
        fields = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
        return dataclasses.replace(item, **{k: self.mutate(v, rng) if v else v for k, v in fields.items()})
