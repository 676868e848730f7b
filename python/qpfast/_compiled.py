"""Caches of compiled C++ objects keyed by schema hash."""
from __future__ import annotations

import functools

from . import _C
from .schema import Schema


@functools.lru_cache(maxsize=64)
def _compile(schema_json: str) -> "_C.CompiledSchema":
    s = Schema.from_json(schema_json)
    return _C.CompiledSchema(list(s.fields), [s.keys[f] for f in s.fields], list(s.entity_types),
                             s.weight_levels, list(s.categories), s.intent_max_chars, s.max_query_chars,
                             s.seg_breaks_at_spaces)


def compiled_schema(schema: Schema) -> "_C.CompiledSchema":
    return _compile(schema.to_json())
