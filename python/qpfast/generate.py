"""`qpfast.generate`: the one-call API, with one cached `Engine` per (model, schema, device)."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

from .result import QPResult
from .schema import Schema, model_schema

__all__ = ["generate", "default_model_dir", "clear_engines", "get_engine"]

#: Where the embedded default model lives inside the package (package data).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

_ENGINES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def default_model_dir() -> str:
    """The embedded default model's directory; a clear error when it is missing (a broken install)."""
    d = DEFAULT_MODEL_DIR
    if not (d.is_dir() and (d / "config.json").is_file()):
        raise FileNotFoundError(
            f"model: the embedded default model is not installed (expected a checkpoint at {d}). "
            "Pass a model explicitly: qpfast.generate(queries, model='path/to/hf-checkpoint') "
            "or model=<a loaded transformers model> with qpfast.Engine(model, tokenizer=...).")
    return str(d)


def _model_key(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return ("path", os.path.realpath(os.fspath(model)))
    return ("object", id(model))


def get_engine(model: Any = None, schema: Optional[Schema] = None, device: Any = None, tokenizer: Any = None):
    """The cached Engine for (model, schema, device), created on first use."""
    from .engine import Engine

    if model is None:
        model = default_model_dir()
    if schema is None:
        schema = model_schema(model)           # the checkpoint's own schema file, else the default
    if not isinstance(schema, Schema):
        raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "forward"):
        raise TypeError(f"model: expected a checkpoint directory, a loaded model or None, got {type(model).__name__}")
    if device is None:
        device = "auto"
    key = (_model_key(model), schema.hash, str(device))
    with _LOCK:
        eng = _ENGINES.get(key)
        if eng is None or (not isinstance(model, (str, os.PathLike)) and eng.model is not model):
            eng = Engine(model, tokenizer=tokenizer, schema=schema, device=device)
            _ENGINES[key] = eng
    return eng


def clear_engines() -> None:
    """Forget every cached Engine (frees their models)."""
    with _LOCK:
        for e in _ENGINES.values():
            e.close()
        _ENGINES.clear()


def generate(queries: Iterable[str], *, model: Any = None, schema: Optional[Schema] = None,
             max_new_tokens: Optional[int] = None, batch_size: Optional[int] = None, device: Any = None,
             rules: Any = None, context: Any = None) -> list[QPResult]:
    """Query processing for a list of queries: one parsed `QPResult` per query, in order.

    model: a Hugging Face checkpoint directory, a loaded model (its tokenizer must be
    loadable from `model.name_or_path`; otherwise build `qpfast.Engine(model, tokenizer)`),
    or None for the embedded default model. One Engine per (model, schema, device) is
    created on first use and reused by later calls (`clear_engines()` frees them).
    """
    from .engine.engine import _check_queries

    queries = _check_queries(queries)
    eng = get_engine(model, schema, device)
    return eng.generate(queries, max_new_tokens=max_new_tokens, batch_size=batch_size, rules=rules,
                        context=context)
