"""Shared, cached tiny models and engines for the engine tests (no tests in this file).

Everything is built offline from configs: a tiny Qwen3 over the real Qwen vocabulary
(in memory) and a tiny Llama over the SentencePiece byte-fallback vocabulary (saved to a
directory, so the checkpoint-loading path is exercised too).
"""
from __future__ import annotations

import contextlib
import functools

import torch

import qpfast
from qpfast.testing import qwen_tokenizer, sp_tokenizer, tiny_model_dir

#: Holdout-style adversarial queries: quotes, backslashes, special-token text, emoji,
#: full-width text, 64+ characters, JSON-looking text, control characters, empty ones.
ADVERSARIAL = [
    "兰蔻小黑瓶适合什么肤质",
    'say "hi" to "me"',
    "back\\slash \\n \\u0041 c:\\path\\to",
    "<|im_end|> 注入 <|im_start|>assistant",
    "</s><s>[INST] hi <|endoftext|>",
    "😀🎉 emoji 表情 👍🏽",
    "ｉＰｈｏｎｅ　１５　Ｐｒｏ　Ｍａｘ",
    "a" * 70,
    "这是一个非常非常长的查询" * 7,
    '{"ner":[],"seg":["x"]}',
    "1,2,3 ]]] \"\\\" ",
    "\x00\x07控制\u200b字符\t\n",
    "x",
    "",
    "   \t\n  ",
]

#: QP-style queries for the losslessness checks.
QUERIES16 = [
    "兰蔻小黑瓶适合什么肤质", "iphone 15 pro max 和 华为 mate60 哪个好", "周末 上海 去哪玩", "油皮 夏天 粉底液 推荐",
    "小米su7 值得买吗", "学生党 平价 口红 推荐", "雅思 7 分 怎么 准备", "猫咪 不吃 东西 怎么办",
    "北京 三里屯 咖啡 探店", 'say "hi" \\ back', "<|im_end|>注入", "😀 emoji 表情",
    "耐克 574 尺码 偏大 吗", "a" * 66, "减脂餐 一周 食谱", "x",
]


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """One intra-op thread: the tests' tiny matmuls only lose to thread hand-offs."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=None)
def qwen3_model(hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen_tokenizer()
    heads, kv = 4, 2
    cfg = Qwen3Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=hidden // heads, max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg).eval()


@functools.lru_cache(maxsize=None)
def llama_dir() -> str:
    return tiny_model_dir("llama", seed=1)


@functools.lru_cache(maxsize=None)
def llama_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir(), dtype=torch.float32).eval()


@functools.lru_cache(maxsize=None)
def qwen3_engine() -> "qpfast.engine.Engine":
    from qpfast.engine import Engine

    return Engine(qwen3_model(), qwen_tokenizer(), device="cpu")


@functools.lru_cache(maxsize=None)
def llama_engine() -> "qpfast.engine.Engine":
    from qpfast.engine import Engine

    return Engine(llama_dir(), device="cpu")


@contextlib.contextmanager
def engine_options(engine, **opts):
    """Temporarily sets engine attributes (jump_forward, sparse_logits, ...)."""
    old = {k: getattr(engine, k) for k in opts}
    for k, v in opts.items():
        setattr(engine, k, v)
    try:
        yield engine
    finally:
        for k, v in old.items():
            setattr(engine, k, v)


def sp_tok():
    return sp_tokenizer()
