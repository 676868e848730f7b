"""Shared fixtures of the training tests (`test_train_*.py`): a tiny corpus, its tokenizer and
tiny Qwen3 models. No test functions here. Tests that need TRL call `needs_trl()` first."""
from __future__ import annotations

import functools

import pytest

from qpfast.data import generate_splits
from qpfast.prompt import build_instruction
from qpfast.train.model_init import ModelSpec, init_model
from qpfast.train.tokenizer import corpus_texts, train_tokenizer
from test_engine_support import torch_threads  # noqa: F401  (re-exported to the training tests)


def needs_trl() -> None:
    """Skips the calling test module when the train extra (TRL) is not installed."""
    pytest.importorskip("trl", reason="the training stages need the train extra: pip install 'qpfast[train]'")


TINY_SPEC = ModelSpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)


@functools.lru_cache(maxsize=1)
def tiny_pairs() -> tuple[tuple[str, str], ...]:
    """200 generated gold (query, target) pairs of the train split."""
    ex = generate_splits(200, 0, 0, seed=3)["train"]
    return tuple((e.query, e.to_record()["target"]) for e in ex)


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(pretokenize: str = "han"):
    """The default kind of tokenizer (character-level Chinese, the instruction as one token)
    trained on the tiny corpus; ``pretokenize="chars"``: letters one token each too, the
    default schema's keys whole."""
    pairs = tiny_pairs()
    texts = corpus_texts([q for q, _ in pairs], [t for _, t in pairs], build_instruction(), 20)
    return train_tokenizer(texts, vocab_size=1200, instruction_tokens=[build_instruction()], pretokenize=pretokenize,
                           whole_words=["ner", "seg", "weight", "cat", "intent"])


def tiny_model(seed: int = 0, spec: ModelSpec = TINY_SPEC):
    return init_model(spec, tiny_tokenizer(), seed=seed)
