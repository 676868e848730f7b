"""qpfast: fast, query-grounded constrained generation for LLM query processing."""
from __future__ import annotations

from .normalize import NormalizedQuery, normalize
from .parse import ParseError, parse
from .render import render
from .result import Entity, QPResult, Term
from .schema import DEFAULT_SCHEMA, Schema, model_schema

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SCHEMA", "Entity", "NormalizedQuery", "ParseError", "QPResult", "Schema", "Term",
    "model_schema", "normalize", "parse", "render", "__version__",
]

from .matcher import Matcher, fill_bitmasks  # noqa: E402
from .vocab import Vocab  # noqa: E402

__all__ += ["Matcher", "Vocab", "fill_bitmasks"]

from .generate import generate  # noqa: E402  (torch is imported only when an Engine is built)
from .prompt import build_prompt  # noqa: E402


def __getattr__(name: str):
    # Engine and the transformers adapter need torch/transformers: imported on first use.
    if name == "Engine":
        from .engine import Engine
        return Engine
    if name == "hf":
        from . import hf
        return hf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += ["Engine", "build_prompt", "generate", "hf"]
