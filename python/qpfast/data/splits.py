"""Train / dev / test partition of the gazetteers and the templates, by a seeded hash.

The test split must measure generalization, not recall: no entity value and no template of
the test split occurs in train (or dev), and dev is disjoint from both in the same way.

Entity values are partitioned as *components*: values that the gazetteers link (a product
line with its brand, a model with its brand and line) and identical texts under several
groups always land in the same split, so a linked draw never mixes splits. Each component
gets a split from a seeded hash, after a first pass that guarantees every gazetteer group
(and every kind of linked draw) has at least one component in every split. Templates are
partitioned per category, so every split covers all 44 categories.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Mapping

from . import gazetteers as gz
from .templates import TEMPLATES
from .pattern import Template

SPLITS = ("train", "dev", "test")
#: Share of the hash-assigned components (and of each category's templates) per held-out split.
HELD_OUT_FRACTION = 0.15


def unit_hash(seed: int, *key: str) -> float:
    """A stable pseudo-random number in [0, 1) for `key` under `seed` (process-independent)."""
    h = hashlib.blake2b("\x1f".join((str(seed),) + key).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2.0 ** 64


@dataclass(frozen=True)
class Pool:
    """What one split may draw from: its templates and its part of every gazetteer table."""

    split: str
    templates: tuple[Template, ...]
    plain: Mapping[str, Mapping[str, tuple[str, ...]]]  # type -> group -> values
    products: Mapping[str, tuple[gz.ProductLine, ...]]  # group -> lines
    models: Mapping[str, tuple[gz.Model, ...]]  # group -> models

    def values(self) -> set[str]:
        """Every entity value this pool can emit."""
        out = {v for table in self.plain.values() for vals in table.values() for v in vals}
        for items in self.products.values():
            out.update(x for p in items for x in (p.brand, p.line))
        for items in self.models.values():
            out.update(x for m in items for x in (m.brand, m.line, m.model) if x)
        return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def draw_kind(types: tuple[str, ...], group: str) -> tuple[str, str]:
    """The gazetteer table a slot of `types` in `group` draws from."""
    if "型号" in types:
        return ("产品+型号" if "产品" in types else "型号", group)
    if "产品" in types:
        return ("产品", group)
    return (types[0], group)


def _coverage_groups(uf: _UnionFind) -> dict[tuple[str, str], set[str]]:
    """Every kind of draw the templates make -> the components it draws from."""
    used = {draw_kind(s.types, s.group) for t in TEMPLATES for s in t.slots}
    groups: dict[tuple[str, str], set[str]] = {}
    for etype, table in gz.PLAIN_TABLES.items():
        for group, vals in table.items():
            groups[(etype, group)] = {uf.find(v) for v in vals}
    for group, items in gz.PRODUCTS.items():
        groups[("产品", group)] = {uf.find(p.brand) for p in items}
    for group, items in gz.MODELS.items():
        groups[("型号", group)] = {uf.find(m.brand) for m in items}
        lined = {uf.find(m.brand) for m in items if m.line}
        if lined:
            groups[("产品+型号", group)] = lined
    missing = used - set(groups)
    if missing:
        raise RuntimeError(f"templates draw from unknown gazetteer groups: {sorted(missing)}")
    return {k: v for k, v in groups.items() if k in used}


class SplitPlan:
    """The partition for one `seed`: `value_split[value]` and `template_split[template id]`."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        uf = _UnionFind()
        for table in gz.PLAIN_TABLES.values():
            for vals in table.values():
                for v in vals:
                    uf.find(v)
        for items in gz.PRODUCTS.values():
            for p in items:
                uf.union(p.brand, p.line)
        for items in gz.MODELS.values():
            for m in items:
                uf.union(m.brand, m.model)
                if m.line:
                    uf.union(m.brand, m.line)

        comp_split: dict[str, str] = {}
        h = lambda root: unit_hash(seed, "component", root)  # noqa: E731
        groups = _coverage_groups(uf)
        # Coverage pass: the most constrained groups first, each gets one component per split.
        for key in sorted(groups, key=lambda k: (len(groups[k]), k)):
            comps = sorted(groups[key], key=h)
            for split in ("test", "dev", "train"):
                if any(comp_split.get(c) == split for c in comps):
                    continue
                free = [c for c in comps if c not in comp_split]
                if free:
                    comp_split[free[0]] = split
        for root in sorted({uf.find(v) for v in list(uf.parent)}):
            if root not in comp_split:
                u = h(root)
                comp_split[root] = ("test" if u < HELD_OUT_FRACTION else
                                    "dev" if u < 2 * HELD_OUT_FRACTION else "train")
        for key, comps in groups.items():
            missing = set(SPLITS) - {comp_split[c] for c in comps}
            if missing:
                raise RuntimeError(f"gazetteer group {key} has no value in split(s) {sorted(missing)}")
        self.value_split: dict[str, str] = {v: comp_split[uf.find(v)] for v in list(uf.parent)}

        self.template_split: dict[str, str] = {}
        by_cat: dict[str, list[Template]] = {}
        for t in TEMPLATES:
            by_cat.setdefault(t.category, []).append(t)
        for cat, items in by_cat.items():
            if len(items) < 3:
                raise RuntimeError(f"category {cat} needs at least 3 templates, has {len(items)}")
            items = sorted(items, key=lambda t: unit_hash(seed, "template", t.id))
            n_held = max(1, round(HELD_OUT_FRACTION * len(items)))
            for i, t in enumerate(items):
                self.template_split[t.id] = ("test" if i < n_held else
                                             "dev" if i < 2 * n_held else "train")

    def pool(self, split: str) -> Pool:
        """The templates and gazetteer values of `split` (``"all"``: everything)."""
        if split != "all" and split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS + ('all',)}, got {split!r}")
        keep = (lambda v: True) if split == "all" else (lambda v: self.value_split[v] == split)  # noqa: E731
        plain = {t: {g: tuple(v for v in vals if keep(v)) for g, vals in table.items()}
                 for t, table in gz.PLAIN_TABLES.items()}
        products = {g: tuple(p for p in items if keep(p.brand)) for g, items in gz.PRODUCTS.items()}
        models = {g: tuple(m for m in items if keep(m.brand)) for g, items in gz.MODELS.items()}
        templates = tuple(t for t in TEMPLATES if split == "all" or self.template_split[t.id] == split)
        return Pool(split, templates, plain, products, models)


@functools.lru_cache(maxsize=8)
def split_plan(seed: int = 0) -> SplitPlan:
    """The (cached) partition for `seed`."""
    return SplitPlan(seed)
