"""Shared-prefix forward passes for training.

Every training sequence starts with the same prompt prefix (the instruction built from the
schema: `qpfast.prompt.PromptIds.prefix_ids`, ~190 of the ~250 tokens of a default-model
example). The engine computes that prefix's KV once and reuses it; training does the same:
one forward pass over the prefix (batch 1, with gradients), its KV cache expanded (a view,
no copy) to the batch, then the batch's own tokens on top of it. The result is exactly the
full forward pass (same attention, same positions; tests compare the losses) at about a
third of the cost on CPU; gradients flow into the prefix pass through the cache.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["backbone", "cache_kwarg", "prefix_cache", "expand_cache", "shared_prefix_len"]


def _forward_params(model: Any) -> set[str]:
    fwd = getattr(type(model), "forward", None) or model.forward
    try:
        return set(inspect.signature(fwd).parameters)
    except (TypeError, ValueError):
        return set()


def backbone(model: Any) -> Any:
    """The decoder stack of a causal LM (``model.model`` for Llama/Qwen), which returns
    hidden states instead of logits."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "embed_tokens"):
        get = getattr(model, "get_decoder", None)
        base = get() if callable(get) else None
    if base is None:
        raise TypeError(f"model: cannot find the decoder of {type(model).__name__}")
    return base


def cache_kwarg(model: Any) -> str:
    """The forward keyword that takes a KV cache: ``cache`` (transformers >= 5.x) or
    ``past_key_values``."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def expand_cache(cache: Any, batch: int) -> Any:
    """Expands a batch-1 KV cache to `batch` rows in place (views, no copies)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            layer.values = layer.values.expand(batch, *layer.values.shape[1:])
        return cache
    if hasattr(cache, "key_cache"):                      # older DynamicCache
        cache.key_cache = [k.expand(batch, *k.shape[1:]) for k in cache.key_cache]
        cache.value_cache = [v.expand(batch, *v.shape[1:]) for v in cache.value_cache]
        return cache
    raise TypeError(f"cache: cannot expand a {type(cache).__name__}")


def prefix_cache(model: Any, prefix_ids: torch.Tensor, batch: int) -> Any:
    """Runs `model` (a causal LM or its `backbone`) over `prefix_ids` ([P] or [1, P]) and
    returns its KV cache expanded to `batch` rows. Gradients flow through the cache when
    grad is enabled."""
    if prefix_ids.dim() == 1:
        prefix_ids = prefix_ids[None]
    kw = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    out = model(input_ids=prefix_ids, use_cache=True, **kw)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError("model: returned no KV cache for the prefix (use_cache=True)")
    return expand_cache(cache, batch)


def shared_prefix_len(rows: torch.Tensor, attention_mask: torch.Tensor | None, prefix_len: int) -> int:
    """`prefix_len` when every row of `rows` ([B, L], right-padded) starts with the same
    `prefix_len` real tokens and has at least one token after them, else 0."""
    if prefix_len <= 0 or rows.shape[1] <= prefix_len:
        return 0
    head = rows[:, :prefix_len]
    if not bool((head == head[:1]).all()):
        return 0
    if attention_mask is not None and not bool(attention_mask[:, :prefix_len].all()):
        return 0
    return prefix_len
