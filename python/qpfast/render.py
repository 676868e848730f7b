"""`qpfast.render`: a result -> its canonical qp-json/1 target text (validated)."""
from __future__ import annotations

import json
from typing import Any, Mapping

from .normalize import normalize
from .result import QPResult
from .schema import DEFAULT_SCHEMA, Schema


def _fields_from_result(r: QPResult, schema: Schema) -> dict[str, Any]:
    vals = {
        "ner": [[e.text, e.type] for e in r.entities],
        "seg": [t.text for t in r.terms],
        "weight": [t.weight for t in r.terms],
        "cat": r.category,
        "intent": r.intent,
    }
    return {f: vals[f] for f in schema.fields}


def _fields_from_dict(d: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    out = {}
    for f in schema.fields:
        k = schema.keys[f]
        if k in d:
            out[f] = d[k]
        elif f in d:
            out[f] = d[f]
        else:
            raise ValueError(f"result_or_dict: missing field {k!r}")
    return out


def _check_types(vals: dict[str, Any]) -> None:
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    for f, v in vals.items():
        if f == "ner":
            if not isinstance(v, (list, tuple)) or not all(
                    isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in v):
                raise ValueError("ner: expected a list of [text, type] string pairs")
        elif f == "seg":
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ValueError("seg: expected a list of strings")
        elif f == "weight":
            if not isinstance(v, (list, tuple)) or not all(is_int(x) for x in v):
                raise ValueError("weight: expected a list of integers")
        elif not isinstance(v, str):
            raise ValueError(f"{f}: expected a string, got {type(v).__name__}")


def render(result_or_dict: QPResult | Mapping[str, Any], schema: Schema | None = None, *,
           query: str | None = None) -> str:
    """The canonical target text: `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`
    with keys in schema order.

    The text is validated with the strict parser against the query (from the QPResult, the
    `query` argument, or a dict's "query" key; without one, against the concatenated
    segmentation), so an invalid target is never returned: `ValueError` says what is wrong.
    """
    schema = DEFAULT_SCHEMA if schema is None else schema
    if not isinstance(schema, Schema):
        raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
    if query is not None and not isinstance(query, str):
        raise TypeError(f"query: expected str, got {type(query).__name__}")
    if isinstance(result_or_dict, QPResult):
        vals = _fields_from_result(result_or_dict, schema)
        q = query if query is not None else result_or_dict.query
    elif isinstance(result_or_dict, Mapping):
        vals = _fields_from_dict(result_or_dict, schema)
        q = query if query is not None else result_or_dict.get("query")
        if q is None and "seg" in vals and isinstance(vals["seg"], (list, tuple)):
            q = "".join(x for x in vals["seg"] if isinstance(x, str))
    else:
        raise TypeError(f"result_or_dict: expected QPResult or dict, got {type(result_or_dict).__name__}")
    _check_types(vals)
    obj = {schema.keys[f]: (list(map(list, vals[f])) if f == "ner" else
                            list(vals[f]) if f in ("seg", "weight") else vals[f]) for f in schema.fields}
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if q is None:
        raise ValueError("query: render needs the query to check grounding (pass query=...)")
    from .parse import ParseError, parse
    try:
        parsed = parse(text, q, schema, strict=True)
    except ParseError as e:
        raise ValueError(f"invalid qp-json/1 target for query {str(normalize(q, schema))!r}: {e}") from None
    if isinstance(result_or_dict, QPResult):
        _check_offsets(result_or_dict, parsed, schema)
    return text


def _check_offsets(r: QPResult, parsed: QPResult, schema: Schema) -> None:
    """A QPResult's offsets must be where the text puts them: the format can only name an
    entity's leftmost occurrence after the previous entity, so an entity annotated at a later
    occurrence would silently move (a corrupted training label). Raise instead."""
    if "ner" in schema.fields:
        for want, got in zip(r.entities, parsed.entities):
            if (want.start, want.end) != (got.start, got.end):
                raise ValueError(
                    f"ner: entity {want.text!r} at [{want.start}, {want.end}) cannot be expressed: "
                    f"qp-json/1 places it at its leftmost occurrence after the previous entity, "
                    f"[{got.start}, {got.end}) of {parsed.normalized!r}")
    if "seg" in schema.fields:
        for want, got in zip(r.terms, parsed.terms):
            if (want.start, want.end) != (got.start, got.end):
                raise ValueError(f"seg: segment {want.text!r} at [{want.start}, {want.end}) does not match "
                                 f"its position [{got.start}, {got.end}) in {parsed.normalized!r}")
