"""The default model's own tokenizer: a byte-level BPE trained with `tokenizers` on the corpus.

Layout (Qwen2/Qwen3-compatible, so everything in qpfast that knows Qwen's tokenizer knows it):

- model: BPE over GPT-2's byte-to-unicode alphabet (every byte is a token: any text, any
  query, encodes; nothing is ever unknown);
- pre-tokenizer: a regex split, then the byte-level map without its own regex. The split
  matters to the decoder: with it `qpfast.Vocab` computes canonical tokens for the schema's
  JSON literals (jump-forward). Two splits (`pretokenize`):
  - ``"han"`` (default): Qwen2's regex with every Han character a piece of its own, so
    Chinese is character-level, and nothing glued to the front of a Latin word (digits and
    punctuation runs as in Qwen2). A segment or entity of the query is then the same token
    ids in the prompt and in the target (100% of the held-out test segments, against 84%
    with Qwen2's split: word-level BPE cuts an unseen entity differently inside the query
    and alone, and glues spaces to words), which is what a small model trained from scratch
    needs to copy and to generalize to unseen entities; the vocabulary stays small (~3.8k
    pieces on the default corpus: the cap is not reached), so the tied embedding and the LM
    head are cheap;
  - ``"chars"``: as ``"han"``, and every other letter (Latin, Greek, ...) a piece of its own
    too, so an unseen Latin name is a run of letter tokens exactly like the synthetic values
    the model practises on (with ``"han"``, BPE learns ~1.6k Latin merges on the default
    corpus, typo'd brands included, and a held-out name such as ``airpods`` becomes pieces
    ``ai|rpo|ds`` the model never saw together). `whole_words` (the schema's JSON key names)
    stay one piece where no letter touches them, so a target's keys cost one token each;
  - ``"qwen"``: Qwen2's regex as is (word-level Chinese BPE: fewer, longer tokens);
- special tokens, first ids: ``<|endoftext|>`` 0 (padding), ``<|im_start|>`` 1,
  ``<|im_end|>`` 2 (end of turn = EOS = the end token of every target);
- instruction tokens (`instruction_tokens`, last ids): the schema's whole instruction text
  (`qpfast.prompt.build_instruction`) as ONE special token. The prompt prefix of the
  default schema is then 13 tokens instead of ~550 (character-level) or ~190 (Qwen2 split).
  A small model trained from scratch gains nothing from reading the label lists (it learns
  them from the targets), while a long constant prefix slows its learning a lot (measured:
  same model, data and steps, training loss 0.48 with the short prefix against 1.18 with
  the long one, and it only started to read the query with the short one) and costs
  attention at every step. Being special, the token is never generated, and never matched
  inside a query (queries are tokenized with `split_special_tokens=True`). Prompts of
  another schema (another instruction) are tokenized normally: the default model knows only
  its own schema;
- chat template: Qwen's ChatML (`qpfast.testing.QWEN_CHAT_TEMPLATE`), so
  `qpfast.prompt.build_prompt` renders ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``
  and `qpfast.prompt.end_token_id` is ``<|im_end|>``;
- ``clean_up_tokenization_spaces`` off: ``decode(encode(text)) == text`` for every text.

    tok = train_tokenizer(texts, vocab_size=8000)            # character-level Chinese
    tok.save_pretrained(out_dir)
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

__all__ = ["CHAT_TEMPLATE", "CHARS_PRETOKENIZE_REGEX", "HAN_PRETOKENIZE_REGEX", "pretokenize_regex", "PRETOKENIZERS", "PRETOKENIZE_REGEX", "SPECIAL_TOKENS", "END_TOKEN", "PAD_TOKEN", "train_tokenizer",
           "corpus_texts", "save_tokenizer"]

#: Qwen2's pre-tokenization regex (transformers' `Qwen2Tokenizer.PRETOKENIZE_REGEX`).
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                     r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
#: Qwen2's regex with each Han character isolated (character-level Chinese) and no space or
#: punctuation glued to the front of a Latin word (" pro" is " " + "pro", as in a segment).
HAN_PRETOKENIZE_REGEX = (r"""\p{Han}|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}&&[^\p{Han}]]+|\p{N}|"""
                         r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
#: Character-level letters of every script: each letter one piece (digits were already);
#: `pretokenize_regex` puts `whole_words` in front, as alternatives no letter may touch.
CHARS_PRETOKENIZE_REGEX = (r"""\p{Han}|\p{L}|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
PRETOKENIZERS = {"han": HAN_PRETOKENIZE_REGEX, "chars": CHARS_PRETOKENIZE_REGEX, "qwen": PRETOKENIZE_REGEX}
PAD_TOKEN = "<|endoftext|>"
END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", END_TOKEN)

#: ChatML, as Qwen writes it (one user message, then the assistant's turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def pretokenize_regex(pretokenize: str, whole_words: Sequence[str] = ()) -> str:
    """The split regex of `pretokenize` (see the module docstring); `whole_words` (ASCII
    letters only, e.g. JSON key names) are used by ``"chars"`` only."""
    if pretokenize not in PRETOKENIZERS:
        raise ValueError(f"pretokenize: expected one of {sorted(PRETOKENIZERS)}, got {pretokenize!r}")
    words = sorted(dict.fromkeys(whole_words), key=lambda w: (-len(w), w))
    for w in words:
        if not (isinstance(w, str) and w.isascii() and w.isalpha()):
            raise ValueError(f"whole_words: expected ASCII letters only, got {w!r}")
    if pretokenize != "chars" or not words:
        return PRETOKENIZERS[pretokenize]
    return r"(?<!\p{L})(?:" + "|".join(words) + r")(?!\p{L})|" + CHARS_PRETOKENIZE_REGEX


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, *, min_frequency: int = 2,
                    pretokenize: str = "han", instruction_tokens: Sequence[str] = (),
                    whole_words: Sequence[str] = (), model_max_length: int = 2048):
    """Trains the byte-level BPE on `texts` and returns a `PreTrainedTokenizerFast`.

    `vocab_size` is a cap counting everything: the 256 byte tokens, the merges and the 3
    special tokens (with ``pretokenize="han"`` the merges run out well before 8000 on QP
    text); `instruction_tokens` are added after it; `whole_words`: see `pretokenize_regex`.
    Training is deterministic for the same texts in the same order.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}")
    regex = pretokenize_regex(pretokenize, whole_words)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_strings(texts), trainer)
    from tokenizers import AddedToken
    instr = [t for t in dict.fromkeys(instruction_tokens) if t]
    for i, t in enumerate(instr):
        if not isinstance(t, str):
            raise TypeError(f"instruction_tokens[{i}]: expected str, got {type(t).__name__}")
    if instr:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in instr])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=END_TOKEN, pad_token=PAD_TOKEN,
                                  additional_special_tokens=[SPECIAL_TOKENS[1], END_TOKEN, *instr],
                                  clean_up_tokenization_spaces=False, model_max_length=model_max_length)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"   # generation-style batches (GRPO prompts); SFT collates its own padding
    return tok


def save_tokenizer(tokenizer, out_dir) -> None:
    """`save_pretrained`, with ``tokenizer_class`` written as ``PreTrainedTokenizerFast``
    (the class every transformers version loads a plain ``tokenizer.json`` with) and the
    extra special tokens also under their pre-5.0 key."""
    import json
    from pathlib import Path

    tokenizer.save_pretrained(str(out_dir))
    p = Path(out_dir) / "tokenizer_config.json"
    cfg = json.loads(p.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list) and "additional_special_tokens" not in cfg:
        cfg["additional_special_tokens"] = extra
    p.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _strings(texts: Iterable[str]) -> Iterator[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__}")
        yield t


def corpus_texts(queries: Sequence[str], targets: Sequence[str], instruction: str | None = None,
                 instruction_copies: int = 50) -> list[str]:
    """The tokenizer's training texts: normalized queries, target lines and the prompt's
    instruction (repeated so its words get merges: it is in every training sequence)."""
    from ..normalize import normalize
    out = [str(normalize(q)) for q in queries]
    out += list(targets)
    if instruction:
        out += [instruction] * instruction_copies
    return out
