"""`qpfast.Schema`: what a `qp-json/1` output contains (fields, key names, label sets, limits).

A schema is plain data: it serializes to JSON, has a stable hash, and is compiled once into
the C++ core (`Schema.compiled()`), where the parser and the constrained decoder use it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

FIELD_NAMES = ("ner", "seg", "weight", "cat", "intent")

DEFAULT_ENTITY_TYPES = ("品牌", "产品", "品类", "型号", "人物", "地点", "机构", "作品", "时间", "人群")

DEFAULT_CATEGORIES = (
    "美妆>护肤", "美妆>彩妆", "美妆>香水",
    "时尚>穿搭", "时尚>鞋包", "时尚>配饰",
    "美食>菜谱", "美食>探店", "美食>饮品",
    "旅行>国内", "旅行>出境", "旅行>住宿",
    "数码>手机", "数码>电脑", "数码>影音",
    "家居>装修", "家居>家电", "家居>收纳",
    "母婴>育儿", "母婴>孕产",
    "运动>健身", "运动>减脂", "运动>户外",
    "教育>考试", "教育>语言", "教育>升学",
    "职场>求职", "职场>技能",
    "汽车>选购", "汽车>用车",
    "娱乐>明星", "娱乐>影视", "娱乐>音乐",
    "游戏>手游", "游戏>主机",
    "宠物>猫", "宠物>狗",
    "健康>医疗", "健康>养生",
    "生活>租房", "生活>情感", "生活>摄影", "生活>手工",
    "其他",
)

#: The largest `max_query_chars` the C++ core supports (it tracks entity candidates in a
#: fixed-size bitset so that a matcher step never allocates).
MAX_QUERY_CHARS_LIMIT = 256
MAX_INTENT_CHARS_LIMIT = 1024
def _check_label(name: str, label: Any) -> None:
    if not isinstance(label, str):
        raise TypeError(f"{name}: labels must be str, got {type(label).__name__}")
    if not label:
        raise ValueError(f"{name}: empty label")
    if label != label.strip() or any(ch.isspace() for ch in label):
        raise ValueError(f"{name}: label {label!r} contains whitespace")
    for ch in label:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs"):
            raise ValueError(f"{name}: label {label!r} contains a control character {ch!r}")


def _labels(name: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{name}: expected a sequence of str, got a single str")
    out = tuple(values)
    if not out:
        raise ValueError(f"{name}: must not be empty")
    seen: set[str] = set()
    for v in out:
        _check_label(name, v)
        if v in seen:
            raise ValueError(f"{name}: duplicate label {v!r}")
        seen.add(v)
    return out


@dataclass(frozen=True)
class Schema:
    """The `qp-json/1` output contract (DESIGN.md §1, §5).

    fields: which fields the output has, in order (subset of ner, seg, weight, cat, intent;
        `weight` needs `seg` earlier).
    keys: JSON key name per field (defaults to the field name).
    entity_types, categories: label sets.
    weight_levels: number of term-weight levels (2..10; levels are 0..weight_levels-1).
    intent_max_chars: code-point limit of the intent description.
    max_query_chars: queries are truncated to this many code points by `normalize`.
    seg_breaks_at_spaces: a space of the normalized query always ends a segment (no segment
        spans one), as in jieba, LAC and the gold data; the strict parser and the constrained
        decoder both enforce it. Off by default (DESIGN.md §1 only asks that the segments
        spell out ``q'``); serialized only when on, so the default schema's hash is unchanged.
    """

    fields: tuple[str, ...] = FIELD_NAMES
    keys: Mapping[str, str] = field(default_factory=dict)
    entity_types: tuple[str, ...] = DEFAULT_ENTITY_TYPES
    weight_levels: int = 4
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    intent_max_chars: int = 32
    max_query_chars: int = 64
    seg_breaks_at_spaces: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if isinstance(self.fields, str):
            raise TypeError("fields: expected a sequence of field names, got a single str")
        fields = tuple(self.fields)
        if not fields:
            raise ValueError("fields: must not be empty")
        for f in fields:
            if f not in FIELD_NAMES:
                raise ValueError(f"fields: unknown field {f!r} (allowed: {', '.join(FIELD_NAMES)})")
        if len(set(fields)) != len(fields):
            raise ValueError("fields: duplicate field")
        if "weight" in fields and ("seg" not in fields or fields.index("seg") > fields.index("weight")):
            raise ValueError("fields: 'weight' needs 'seg' earlier in the field order")
        set_("fields", fields)

        if not isinstance(self.keys, Mapping):
            raise TypeError("keys: expected a mapping field -> key name")
        keys = {}
        for f, k in dict(self.keys).items():
            if f not in FIELD_NAMES:
                raise ValueError(f"keys: unknown field {f!r}")
            _check_label("keys", k)
            if '"' in k or "\\" in k:
                raise ValueError(f"keys: key name {k!r} must not contain quotes or backslashes")
            keys[f] = k
        full = {f: keys.get(f, f) for f in fields}
        if len(set(full.values())) != len(full):
            raise ValueError("keys: two fields share a key name")
        set_("keys", _FrozenDict(full))

        set_("entity_types", _labels("entity_types", self.entity_types))
        set_("categories", _labels("categories", self.categories))
        for name, lo, hi in (("weight_levels", 2, 10), ("intent_max_chars", 1, MAX_INTENT_CHARS_LIMIT),
                             ("max_query_chars", 1, MAX_QUERY_CHARS_LIMIT)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise ValueError(f"{name}: must be in [{lo}, {hi}], got {v}")
        if not isinstance(self.seg_breaks_at_spaces, bool):
            raise TypeError(f"seg_breaks_at_spaces: expected bool, got {type(self.seg_breaks_at_spaces).__name__}")
        if self.seg_breaks_at_spaces and "seg" not in fields:
            raise ValueError("seg_breaks_at_spaces: the schema has no 'seg' field")

    # -- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "qp-json/1",
            "fields": list(self.fields),
            "keys": dict(self.keys),
            "entity_types": list(self.entity_types),
            "weight_levels": self.weight_levels,
            "categories": list(self.categories),
            "intent_max_chars": self.intent_max_chars,
            "max_query_chars": self.max_query_chars,
            **({"seg_breaks_at_spaces": True} if self.seg_breaks_at_spaces else {}),
        }

    def to_json(self) -> str:
        # A schema is immutable: its canonical JSON (also the key of __eq__, hash and the
        # compiled-schema cache) is computed once.
        cached = self.__dict__.get("_json")
        if cached is None:
            cached = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_json", cached)
        return cached

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> "Schema":
        if isinstance(text, Mapping):
            d = dict(text)
        elif isinstance(text, (str, bytes, bytearray)):
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError(f"schema JSON must be an object, got {type(d).__name__}")
        else:
            raise TypeError(f"text: expected a JSON str/bytes or a mapping, got {type(text).__name__}")
        fmt = d.pop("format", "qp-json/1")
        if fmt != "qp-json/1":
            raise ValueError(f"format: unsupported schema format {fmt!r}")
        known = {"fields", "keys", "entity_types", "weight_levels", "categories",
                 "intent_max_chars", "max_query_chars", "seg_breaks_at_spaces"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"schema JSON has unknown keys: {sorted(extra)}")
        return cls(**d)

    @property
    def hash(self) -> str:
        """Stable hex digest of the schema's canonical JSON (same across processes and runs)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]
            object.__setattr__(self, "_hash", cached)
        return cached

    def __hash__(self) -> int:
        return int(self.hash, 16)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_json() == other.to_json()

    def key(self, field_name: str) -> str:
        return self.keys[field_name]

    def compiled(self):
        """The C++ form of this schema (cached per schema)."""
        cached = self.__dict__.get("_compiled")
        if cached is None:
            from ._compiled import compiled_schema
            cached = compiled_schema(self)
            object.__setattr__(self, "_compiled", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        # the caches (canonical JSON, the C++ schema) are rebuilt on demand
        return {k: v for k, v in self.__dict__.items() if k not in ("_json", "_compiled", "_hash")}


class _FrozenDict(dict):
    """A read-only dict, so a frozen Schema stays immutable."""

    def _ro(self, *a, **k):
        raise TypeError("Schema.keys is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _ro  # type: ignore
    __ior__ = _ro  # type: ignore

    def __reduce__(self):
        # pickle/copy would rebuild a dict subclass item by item through __setitem__.
        return (_FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # pragma: no cover - not used for lookup
        return hash(tuple(sorted(self.items())))


DEFAULT_SCHEMA = Schema()

#: A checkpoint directory may carry the schema it was trained for under this name; the engine
#: (`qpfast.generate`, `qpfast.Engine`, ``qpfast eval --model``, ``qpfast run``) then serves it
#: with that schema when none is given.
MODEL_SCHEMA_FILE = "qpfast_schema.json"


def model_schema(model: Any) -> Schema:
    """The schema to serve `model` with when the caller gives none: the checkpoint
    directory's `MODEL_SCHEMA_FILE` when it has one, else `DEFAULT_SCHEMA`. `model` is a
    directory, or a loaded model or tokenizer (its ``name_or_path`` directory is read). A file
    that is not a valid schema is a clear ValueError naming it."""
    if not isinstance(model, (str, os.PathLike)):
        model = getattr(model, "name_or_path", None)
    if isinstance(model, (str, os.PathLike)) and os.fspath(model):
        path = os.path.join(os.fspath(model), MODEL_SCHEMA_FILE)
        try:
            st = os.stat(path)
        except OSError:
            return DEFAULT_SCHEMA
        if stat.S_ISREG(st.st_mode):
            return _schema_file(path, st.st_mtime_ns, st.st_size)
    return DEFAULT_SCHEMA


@functools.lru_cache(maxsize=32)
def _schema_file(path: str, mtime_ns: int, size: int) -> Schema:
    """A schema file read once per version (`qpfast.generate` asks for it on every call)."""
    try:
        with open(path, encoding="utf-8") as f:
            return Schema.from_json(f.read())
    except (ValueError, TypeError) as e:
        raise ValueError(f"model: {path} is not a valid qpfast schema ({e})") from None


def save_model_schema(schema: Schema, model_dir: Any) -> None:
    """Writes `schema` into a checkpoint directory (`MODEL_SCHEMA_FILE`), so that the engine
    serves the model with it; for `DEFAULT_SCHEMA` removes the file instead (nothing to say)."""
    path = os.path.join(os.fspath(model_dir), MODEL_SCHEMA_FILE)
    if schema == DEFAULT_SCHEMA:
        if os.path.isfile(path):
            os.remove(path)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(schema.to_json() + "\n")
