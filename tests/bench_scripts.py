"""The scripts of `bench/` (not part of the package), loaded by path for the tests that check them."""
from __future__ import annotations

import functools
import importlib.util
import pathlib
from types import ModuleType

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "bench"


@functools.lru_cache(maxsize=None)
def bench_module(name: str) -> ModuleType:
    """`bench/<name>.py` as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_qwen3_checkpoint(out_dir: str) -> str:
    """A tiny random Qwen3 checkpoint with the real Qwen vocabulary in `out_dir`, standing in
    for `bench_kernels._qwen3_06b_dir` (the benchmarks' 0.6B model) in the CPU dry runs."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from qpfast.testing import qwen_tokenizer_dir
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    cfg = Qwen3Config(vocab_size=bench_module("bench_kernels").VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
