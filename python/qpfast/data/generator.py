"""The query generator: templates + gazetteers -> raw SNS-style queries with gold qp-json/1.

A draw goes through three steps:

1. `QueryGenerator.draft`: pick a category, one of its templates and values for its slots;
   the result is a `Draft`, a list of `Piece` s (normalized text, raw surface form, weight
   level, entity type) plus the category and the filled-in intent.
2. `compose`: join the pieces into a raw query (random spaces at piece boundaries, random
   casing and the odd full-width character, all of which `qpfast.normalize` undoes) and
   its normalized form, with each piece's offset.
3. `QueryGenerator.example`: check the labels against the normalized query (length limit,
   each entity found at its leftmost occurrence after the previous one, DESIGN.md §1) and
   render the gold target with `qpfast.render`, which re-parses it in strict mode, so an
   invalid target can never be emitted. A draw that fails a check is redrawn.

Everything is driven by a `random.Random` the caller seeds, so output is deterministic per
seed.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Iterator

from ..normalize import normalize
from ..render import render
from ..schema import DEFAULT_SCHEMA, Schema
from .pattern import ENTITY_WEIGHTS, Literal, Slot, Template
from .splits import Pool, draw_kind, split_plan

#: Colloquial particles the generator may put around a query (text, weight level).
SNS_PREFIXES = (("姐妹们", 0), ("救命", 0), ("谁懂", 0), ("求助", 0), ("家人们", 0), ("宝子们", 0),
                ("蹲", 0), ("请问", 0))
SNS_SUFFIXES = (("yyds", 1), ("绝绝子", 1), ("真香", 1), ("求推荐", 1), ("急", 0), ("在线等", 0),
                ("有无", 0), ("求告知", 0), ("谢谢", 0), ("呜呜", 0))

_MAX_ATTEMPTS = 200
_REF = re.compile(r"\{([^{}]+)\}")


@dataclass
class Piece:
    """One unit of a query: a literal segment or one entity value (several segments if it
    contains spaces). `text` is normalized, `surface` is what the raw query shows."""

    text: str
    weight: int
    type: str | None = None  # entity type; None for a literal
    surface: str = ""
    chunk: int = 0  # pieces drawn by the same slot share a chunk id (they move together)

    def __post_init__(self) -> None:
        if not self.surface:
            self.surface = self.text


@dataclass
class Draft:
    """A filled-in template before it is joined into a query string."""

    template: Template
    pieces: list[Piece]
    intent: str
    category: str = field(default="")

    def __post_init__(self) -> None:
        self.category = self.category or self.template.category


@dataclass(frozen=True)
class Example:
    """One generated query with its gold target (DESIGN.md §3 data record)."""

    query: str
    target: str
    template: str  # template id
    category: str
    entities: tuple[tuple[str, str], ...]  # (text, type), in order

    def to_record(self) -> dict[str, str]:
        """The JSONL record: ``{"query": ..., "target": ...}``."""
        return {"query": self.query, "target": self.target}


class RejectedDraw(ValueError):
    """A draw whose labels do not fit its query (too long, entity not leftmost)."""


# ---------------------------------------------------------------------------------------
# surface forms
# ---------------------------------------------------------------------------------------
def _has_latin(text: str) -> bool:
    return any("a" <= ch <= "z" for ch in text)


def _casing(text: str, rng: random.Random) -> str:
    """A raw spelling of a lower-case Latin value (``ysl`` -> ``YSL``, ``iphone`` -> ``iPhone``)."""
    if not _has_latin(text):
        return text
    r = rng.random()
    if r < 0.6:
        return text
    if r < 0.8:
        return text.upper() if len(text) <= 5 else text.title()
    if r < 0.9:
        return text[:1].upper() + text[1:]
    return "i" + text[1:].capitalize() if text.startswith("i") and len(text) > 2 else text.title()


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def compose(pieces: list[Piece], rng: random.Random) -> tuple[str, str, list[int]]:
    """Join pieces into (raw query, its expected normalized form, each piece's start in it).

    Piece boundaries get a space at random (more often next to entities and in "keyword
    style" queries); two ASCII letters/digits from different pieces are always separated,
    so pieces never fuse into a different-looking token.
    """
    spacey = rng.random() < 0.3
    full_width = rng.random() < 0.03
    raw: list[str] = []
    norm: list[str] = []
    starts: list[int] = []
    pos = 0
    for i, p in enumerate(pieces):
        if i:
            prev = pieces[i - 1]
            a, b = prev.text[-1], p.text[0]
            if _alnum(a) and _alnum(b) and (prev.chunk != p.chunk or a.isalpha() == b.isalpha()):
                space = True
            elif _alnum(a) and _alnum(b):
                space = rng.random() < 0.5
            elif prev.type or p.type:
                space = rng.random() < (0.6 if spacey else 0.2)
            else:
                space = rng.random() < (0.3 if spacey else 0.04)
            if space:
                r = rng.random()
                raw.append("  " if r < 0.02 else "\u3000" if r < 0.03 else " ")
                norm.append(" ")
                pos += 1
        surface = _full_width(p.surface) if full_width else p.surface
        raw.append(surface)
        norm.append(p.text)
        starts.append(pos)
        pos += len(p.text)
    r = rng.random()
    text = "".join(raw)
    if r < 0.01:
        text = " " + text
    elif r < 0.02:
        text = text + " "
    return text, "".join(norm), starts


# ---------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------
class QueryGenerator:
    """Draws labelled queries from one split's `Pool` of templates and gazetteer values.

    split: ``"train"``, ``"dev"``, ``"test"`` or ``"all"``; split_seed: the seed of the
    partition (`qpfast.data.splits`), independent of the sampling seed; synth_values: the
    probability that a slot gets a synthetic value (`qpfast.data.synthetic`) instead of one
    of the split's own (training augmentation; 0 draws exactly as without it).
    """

    def __init__(self, split: str = "train", *, split_seed: int = 0, schema: Schema | None = None,
                 synth_values: float = 0.0):
        if not 0.0 <= synth_values <= 1.0:
            raise ValueError(f"synth_values: must be in [0, 1], got {synth_values}")
        self.split = split
        self.synth_values = synth_values
        self.schema = schema or DEFAULT_SCHEMA
        self.pool: Pool = split_plan(split_seed).pool(split)
        by_cat: dict[str, list[Template]] = {}
        for t in self.pool.templates:
            by_cat.setdefault(t.category, []).append(t)
        self._categories = sorted(by_cat)
        self._by_category = {c: tuple(ts) for c, ts in by_cat.items()}
        self._candidates: dict[tuple[str, str], tuple] = {}
        self._synth = None
        if synth_values > 0.0:
            from .synthetic import SyntheticValues
            self._synth = SyntheticValues(self.pool)

    def templates_of(self, category: str) -> tuple[Template, ...]:
        """The split's templates of `category` (empty for a category it has none of)."""
        return self._by_category.get(category, ())

    # -- drawing ---------------------------------------------------------------------
    def _choices(self, slot: Slot) -> tuple:
        kind = draw_kind(slot.types, slot.group)
        if kind not in self._candidates:
            if kind[0] == "产品+型号":
                cands = tuple(m for m in self.pool.models[slot.group] if m.line)
            elif kind[0] == "型号":
                cands = self.pool.models[slot.group]
            elif kind[0] == "产品":
                cands = self.pool.products[slot.group]
            else:
                cands = self.pool.plain[kind[0]][slot.group]
            if not cands:
                raise RuntimeError(f"split {self.split!r} has no values for {kind}")
            self._candidates[kind] = cands
        return self._candidates[kind]

    @staticmethod
    def _slot_values(slot: Slot, item) -> list[tuple[str, str]]:
        if isinstance(item, str):
            return [(item, slot.types[0])]
        field_of = {"品牌": "brand", "产品": "line", "型号": "model"}
        return [(getattr(item, field_of[t]), t) for t in slot.types]

    def draft(self, rng: random.Random, template: Template | None = None) -> Draft:
        """One filled-in template (not yet checked against its query string)."""
        for _ in range(_MAX_ATTEMPTS):
            t = template or rng.choice(self._by_category[rng.choice(self._categories)])
            pieces: list[Piece] = []
            refs: dict[str, str] = {}
            type_refs: dict[str, str] = {}
            drawn: dict[tuple, set] = {}
            duplicate = False
            for chunk, part in enumerate(t.parts, start=1):
                if isinstance(part, Literal):
                    if part.optional and rng.random() < 0.5:
                        continue
                    text, w = rng.choice(part.options) if len(part.options) > 1 else part.options[0]
                    surface = ("？" if text == "?" and rng.random() < 0.5 else _casing(text, rng))
                    pieces.append(Piece(text, w, None, surface, chunk))
                    continue
                item = rng.choice(self._choices(part))
                if self._synth is not None and rng.random() < self.synth_values:
                    item = self._synth.item(item, rng)     # a value no split contains
                key = draw_kind(part.types, part.group)
                if item in drawn.setdefault(key, set()):
                    duplicate = True
                    break
                drawn[key].add(item)
                values = self._slot_values(part, item)
                for text, etype in values:
                    w = part.weight if part.weight is not None else ENTITY_WEIGHTS[etype]
                    pieces.append(Piece(text, w, etype, _casing(text, rng), chunk))
                    type_refs[etype] = text
                refs[part.name] = _join_values([v for v, _ in values])
            if duplicate:
                continue
            refs = {**type_refs, **refs}
            intent = _fill_intent(rng.choice(t.intents), refs)
            if len(intent) > self.schema.intent_max_chars:
                continue
            self._add_particles(pieces, rng)
            return Draft(t, pieces, intent)
        raise RuntimeError(f"template {t.category} {t.pattern!r}: no valid draw in {_MAX_ATTEMPTS} attempts")

    @staticmethod
    def _add_particles(pieces: list[Piece], rng: random.Random) -> None:
        r = rng.random()
        if r < 0.06:
            text, w = rng.choice(SNS_PREFIXES)
            pieces.insert(0, Piece(text, w, None, text, -1))
        elif r < 0.12:
            text, w = rng.choice(SNS_SUFFIXES)
            pieces.append(Piece(text, w, None, _casing(text, rng), -2))
        elif r < 0.16 and pieces[-1].type is None and pieces[-1].weight == 0 and pieces[-1].text != "?":
            pieces.append(Piece("?", 0, None, "？" if rng.random() < 0.5 else "?", -3))

    def label(self, draft: Draft, rng: random.Random) -> Example:
        """Compose the draft into a query and render its gold target; raises `RejectedDraw`."""
        raw, expected, starts = compose(draft.pieces, rng)
        norm = normalize(raw, self.schema)
        if norm.truncated:
            raise RejectedDraw(f"query longer than {self.schema.max_query_chars} chars")
        if str(norm) != expected:
            raise RuntimeError(f"generator bug: normalize({raw!r}) = {str(norm)!r}, expected {expected!r}")
        prev_end = 0
        ner = []
        seg: list[str] = []
        weight: list[int] = []
        for p, start in zip(draft.pieces, starts):
            if p.type is not None:
                if norm.find(p.text, prev_end) != start:
                    raise RejectedDraw(f"entity {p.text!r} is not at its leftmost occurrence")
                prev_end = start + len(p.text)
                ner.append([p.text, p.type])
            for part in p.text.split(" "):
                seg.append(part)
                weight.append(p.weight)
        target = render({"ner": ner, "seg": seg, "weight": weight, "cat": draft.category,
                         "intent": draft.intent}, self.schema, query=raw)
        return Example(raw, target, draft.template.id, draft.category, tuple(map(tuple, ner)))

    def example(self, rng: random.Random, template: Template | None = None) -> Example:
        """One labelled query (redrawn until its labels check out)."""
        for _ in range(_MAX_ATTEMPTS):
            try:
                return self.label(self.draft(rng, template), rng)
            except RejectedDraw:
                continue
        raise RuntimeError(f"no valid example in {_MAX_ATTEMPTS} attempts"
                           + (f" for template {template.pattern!r}" if template else ""))

    def iter_examples(self, n: int, seed: int = 0) -> Iterator[Example]:
        """`n` examples, deterministic for (`seed`, split, split_seed)."""
        if n < 0:
            raise ValueError(f"n: must be >= 0, got {n}")
        rng = random.Random(f"qpfast.data:{seed}:{self.split}")
        for _ in range(n):
            yield self.example(rng)

    def examples(self, n: int, seed: int = 0) -> list[Example]:
        """`iter_examples` as a list."""
        return list(self.iter_examples(n, seed))


def _fill_intent(template: str, refs: dict[str, str]) -> str:
    """Substitute ``{name}`` references; two adjacent Latin/digit values get a space between."""
    out = ""
    pos = 0
    for m in _REF.finditer(template):
        out += template[pos:m.start()]
        value = refs[m.group(1)]
        if m.start() == pos and out and _alnum(out[-1]) and _alnum(value[0]):
            out += " "
        out += value
        pos = m.end()
    return out + template[pos:]


def _join_values(values: list[str]) -> str:
    out = values[0]
    for v in values[1:]:
        out += (" " if _alnum(out[-1]) and _alnum(v[0]) else "") + v
    return out


__all__ = ["Draft", "Example", "Piece", "QueryGenerator", "RejectedDraw", "SNS_PREFIXES", "SNS_SUFFIXES",
           "compose"]
