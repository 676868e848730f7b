"""The query-template language: one template = one hand-written query pattern with its labels.

A pattern is a whitespace-separated list of parts. Each part is one or more *segments* of
the gold segmentation, in order:

- a literal ``text`` or ``text/w``: one segment with weight level ``w`` (0..3). Without
  ``/w`` the weight comes from `DEFAULT_LITERAL_WEIGHTS` (function words 0), else 2.
  ``a/1|b/1`` picks one of several literals; a leading ``?`` makes the part optional.
- a slot ``{[name=]TYPES.group[/w]}``: entity values drawn from the gazetteers
  (`qpfast.data.gazetteers`). ``TYPES`` is one entity type (``品牌``) or linked types joined
  by ``+`` (``品牌+产品``, ``产品+型号``, ``品牌+产品+型号``) that are drawn together so a line
  always comes with its own brand. Each value is one entity; a value with spaces is
  several segments. Without ``/w`` the weight is `ENTITY_WEIGHTS` of the type.

Weight levels follow DESIGN.md §1 by role: 3 core (what is searched: the entity or head
noun), 2 important (attribute, content kind), 1 modifier (may be relaxed), 0 droppable.

The intent template references slots by ``{name}``: a slot's explicit name (its values
joined), or an entity type used once in the template (``{品牌}``). Several intent variants
are separated by ``|``; the generator picks one.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Union

from ..normalize import normalize
from ..schema import DEFAULT_CATEGORIES, DEFAULT_ENTITY_TYPES

#: Weight level of an entity by type, unless the template says otherwise.
ENTITY_WEIGHTS = {
    "品牌": 3, "产品": 3, "品类": 3, "型号": 3, "人物": 3, "地点": 3, "机构": 3, "作品": 3,
    "时间": 1, "人群": 2,
}

_FUNCTION_WORDS = """的 了 吗 呢 啊 呀 吧 嘛 么 什么 怎么 怎么样 咋 咋样 如何 哪个 哪些 哪里 哪儿 哪 哪家 哪款
    有 有没有 求 请问 一下 和 与 跟 还是 或 是 是不是 能 能不能 可以 可以吗 会 会不会 要 都 也 就 在
    去 到 给 把 被 对 ? 姐妹们 宝子们 家人们 谁懂 救命 真的 到底 啥 多少 几 怎样 该 还 又 很 太
    一个 这个 那个 大家 蹲 求助 急 的话 时候 为什么 为啥 谁 后 前 vs 怎么办 在线等 有无 求告知
    谢谢 呜呜 不 才 先""".split()

#: Default weight of a literal segment without ``/w`` (anything not listed here is 2).
DEFAULT_LITERAL_WEIGHTS = {w: 0 for w in _FUNCTION_WORDS}

LINKED_TYPES = (("品牌", "产品"), ("品牌", "型号"), ("产品", "型号"), ("品牌", "产品", "型号"))
"""The linked slot type tuples the generator knows how to draw."""


@dataclass(frozen=True)
class Literal:
    """A literal segment (or one of several alternatives), possibly optional."""

    options: tuple[tuple[str, int], ...]
    optional: bool = False


@dataclass(frozen=True)
class Slot:
    """Entity values drawn from a gazetteer group; `weight` None means by type."""

    name: str
    types: tuple[str, ...]
    group: str
    weight: int | None = None


Part = Union[Literal, Slot]


@dataclass(frozen=True)
class Template:
    """A compiled query template: its parts, its category and its intent variants."""

    id: str
    category: str
    pattern: str
    parts: tuple[Part, ...]
    intents: tuple[str, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(p for p in self.parts if isinstance(p, Slot))

    @property
    def literals(self) -> tuple[str, ...]:
        """Every literal segment text the template can produce."""
        return tuple(t for p in self.parts if isinstance(p, Literal) for t, _ in p.options)


_SLOT = re.compile(r"^\{(?:(?P<name>[a-z][a-z0-9]*)=)?(?P<types>[^.{}/=]+)\.(?P<group>[a-z_]+)(?:/(?P<w>\d))?\}$")
_REF = re.compile(r"\{([^{}]+)\}")


def _weight(text: str, w: str | None, where: str) -> int:
    if w is None:
        return DEFAULT_LITERAL_WEIGHTS.get(text, 2)
    level = int(w)
    if not 0 <= level <= 3:
        raise ValueError(f"{where}: weight {level} out of 0..3")
    return level


def _literal(token: str, where: str) -> Literal:
    optional = token.startswith("?") and len(token) > 1
    body = token[1:] if optional else token
    options = []
    for alt in body.split("|"):
        text, _, w = alt.partition("/")
        if not text or text != str(normalize(text)) or " " in text:
            raise ValueError(f"{where}: literal {text!r} is empty or not normalized")
        options.append((text, _weight(text, w or None, where)))
    return Literal(tuple(options), optional)


def _slot(token: str, where: str) -> Slot:
    m = _SLOT.match(token)
    if not m:
        raise ValueError(f"{where}: bad slot {token!r}")
    types = tuple(m["types"].split("+"))
    for t in types:
        if t not in DEFAULT_ENTITY_TYPES:
            raise ValueError(f"{where}: unknown entity type {t!r}")
    if len(types) > 1 and types not in LINKED_TYPES:
        raise ValueError(f"{where}: types {types} cannot be linked (allowed: {LINKED_TYPES})")
    w = m["w"]
    weight = None if w is None else _weight("", w, where)
    return Slot(m["name"] or "+".join(types), types, m["group"], weight)


def _intent_names(slots: tuple[Slot, ...]) -> set[str]:
    names = {s.name for s in slots}
    counts: dict[str, int] = {}
    for s in slots:
        for t in s.types:
            counts[t] = counts.get(t, 0) + 1
    names.update(t for t, c in counts.items() if c == 1)
    return names


def compile_template(category: str, pattern: str, intent: str) -> Template:
    """Parse one template; raises ValueError naming the template when it is malformed."""
    where = f"template {category} {pattern!r}"
    if category not in DEFAULT_CATEGORIES:
        raise ValueError(f"{where}: unknown category {category!r}")
    parts: list[Part] = []
    for token in pattern.split():
        parts.append(_slot(token, where) if token.startswith("{") else _literal(token, where))
    if not any(not (isinstance(p, Literal) and p.optional) for p in parts):
        raise ValueError(f"{where}: the pattern can produce an empty query")
    slots = tuple(p for p in parts if isinstance(p, Slot))
    if len({s.name for s in slots}) != len(slots):
        raise ValueError(f"{where}: two slots share a name; name them ({{a=TYPE.group}})")
    intents = tuple(x.strip() for x in intent.split("|"))
    known = _intent_names(slots)
    for it in intents:
        if not it:
            raise ValueError(f"{where}: empty intent variant")
        for ref in _REF.findall(it):
            if ref not in known:
                raise ValueError(f"{where}: intent references unknown slot {{{ref}}}")
    tid = hashlib.blake2b(f"{category}\t{pattern}".encode(), digest_size=6).hexdigest()
    return Template(tid, category, pattern, tuple(parts), intents)
