"""A small Qwen3-architecture causal LM, built from scratch for a tokenizer.

    cfg = ModelSpec(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=768)
    model = init_model(cfg, tokenizer, seed=0)

The embedding rows are the tokenizer's size rounded up to a multiple of 64 (as real
checkpoints pad their lm_head); input and output embeddings are tied, so the vocabulary
costs its parameters once. `saved_megabytes` estimates the safetensors size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ModelSpec", "init_model", "model_config", "parameter_count", "saved_megabytes"]


@dataclass
class ModelSpec:
    """Sizes of the Qwen3 model (`Qwen3Config` fields in parentheses)."""

    hidden: int = 256            # hidden_size
    layers: int = 6              # num_hidden_layers
    heads: int = 4               # num_attention_heads
    kv_heads: int = 2            # num_key_value_heads (grouped-query attention)
    head_dim: int | None = None  # default hidden // heads
    intermediate: int = 768      # intermediate_size (SwiGLU)
    max_positions: int = 1024    # max_position_embeddings
    rope_theta: float = 10000.0
    init_std: float = 0.02       # initializer_range
    dtype: str = "float32"       # the dtype the checkpoint is saved in ("float32" or "bfloat16")

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "max_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.{name}: expected a positive int, got {v!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.heads ({self.heads}) must be a multiple of model.kv_heads ({self.kv_heads})")
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"model.hidden ({self.hidden}) must be a multiple of model.heads ({self.heads})")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _padded_vocab(tokenizer: Any) -> int:
    return (len(tokenizer) + 63) // 64 * 64


def model_config(spec: ModelSpec, tokenizer: Any):
    """The `Qwen3Config` for `spec` and `tokenizer` (its EOS is the end-of-turn token)."""
    from transformers import Qwen3Config

    vocab = tokenizer.get_vocab()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ends = [eos] + [vocab[t] for t in ("<|endoftext|>",) if t in vocab and vocab[t] != eos]
    return Qwen3Config(
        vocab_size=_padded_vocab(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim or spec.hidden // spec.heads, max_position_embeddings=spec.max_positions,
        rope_theta=spec.rope_theta, initializer_range=spec.init_std, tie_word_embeddings=True,
        attention_dropout=0.0, use_sliding_window=False, bos_token_id=None, eos_token_id=ends if len(ends) > 1 else eos,
        pad_token_id=pad,
    )


def init_model(spec: ModelSpec, tokenizer: Any, seed: int = 0):
    """A freshly initialized `Qwen3ForCausalLM` (float32), deterministic per `seed`."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    cfg = model_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                                               do_sample=False)
    return model.float()


def parameter_count(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def saved_megabytes(model: Any, dtype: str = "float32") -> float:
    """Approximate safetensors size in MB (10^6 bytes) when saved in `dtype`."""
    per = 2 if dtype == "bfloat16" else 4
    return parameter_count(model) * per / 1e6
