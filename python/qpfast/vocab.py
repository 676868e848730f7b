"""`qpfast.Vocab`: a model's token ids as bytes, for the C++ constrained decoder."""
from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

from . import _C
from .schema import DEFAULT_SCHEMA, Schema

# End-of-generation tokens of common chat models (used when the tokenizer has them).
_END_TOKEN_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<end_of_turn>",
                    "<|end|>", "<|eos|>")


def _splits_on_punctuation(tokenizer: Any) -> bool:
    """True when the tokenizer pre-splits text with a regex (GPT-2/Qwen/Llama-3 style), so no
    token can merge a JSON literal's inner punctuation run with the letters next to it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = str(getattr(backend, "pre_tokenizer", "")) if backend is not None else ""
    return "Split" in desc or "use_regex=True" in desc


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = str(getattr(backend, "decoder", "")) if backend is not None else ""
    if "ByteLevel" in desc:
        return "byte_level"
    if "ByteFallback" in desc or "Metaspace" in desc or "▁" in desc:
        return "sentencepiece"
    return "raw"


class Vocab:
    """Token id -> bytes for one model, with the byte trie and token classes the decoder uses.

    Build it once per model with `Vocab.from_tokenizer` and share it across matchers (it is
    immutable and thread-safe). Compiled grammars (vocabulary x schema) are cached on it.
    """

    def __init__(self, token_bytes: Sequence[bytes], special: Sequence[bool], end_ids: Iterable[int],
                 vocab_size: int | None = None, prefix_space: bool = False, tokenizer: Any = None,
                 canonical_literals: bool = False):
        token_bytes = list(token_bytes)
        if vocab_size is None:
            vocab_size = len(token_bytes)
        if not isinstance(vocab_size, int) or vocab_size < len(token_bytes):
            raise ValueError(f"vocab_size: must be an int >= the tokenizer's {len(token_bytes)} tokens, got {vocab_size!r}")
        ends = sorted(set(int(i) for i in end_ids))
        if not ends:
            raise ValueError("end_ids: no end-of-generation token (pass end_token_ids=...)")
        self._c = _C.Vocab(token_bytes, [1 if s else 0 for s in special], ends, vocab_size, bool(prefix_space))
        self.token_bytes = token_bytes
        self.special = list(special)
        self.end_ids = ends
        self.vocab_size = vocab_size
        self.prefix_space = bool(prefix_space)
        self.tokenizer = tokenizer
        # Literal cores (canonical tokens, jump-forward) need the tokenizer and a regex
        # pre-tokenizer; without one, literals stay free (any tokenization, nothing forced).
        self.canonical_literals = bool(canonical_literals and tokenizer is not None)
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def words(self) -> int:
        """int32 words per bitmask row: ceil(vocab_size / 32)."""
        return (self.vocab_size + 31) // 32

    def __len__(self) -> int:
        return self.vocab_size

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None,
                       end_token_ids: Iterable[int] | None = None) -> "Vocab":
        """Reads every token's bytes from a Hugging Face tokenizer (byte-level BPE such as
        Qwen/Llama-3, SentencePiece with `▁` pieces and `<0xNN>` byte fallback such as
        Llama-2/Mistral, plus added and special tokens).

        vocab_size: the model's lm_head rows (>= len(tokenizer)); ids past the tokenizer are
        never allowed. end_token_ids: overrides the detected end tokens (EOS, end-of-turn).
        """
        if not hasattr(tokenizer, "get_vocab"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        vocab = tokenizer.get_vocab()
        n = max(len(tokenizer), max(vocab.values()) + 1 if vocab else 0)
        kind = _decoder_kind(tokenizer)
        token_bytes: list[bytes] = [b""] * n
        special = [True] * n
        added = {int(i): t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        base = [(p, i) for p, i in vocab.items() if i not in added and i < n]
        decoded = _C.decode_pieces([p for p, _ in base], kind)
        for (_, i), b in zip(base, decoded):
            token_bytes[i] = b
            special[i] = False
        for i, t in added.items():
            if i >= n:
                continue
            token_bytes[i] = str(t.content).encode("utf-8")
            special[i] = bool(getattr(t, "special", True))
        if end_token_ids is None:
            ends = set()
            eos = getattr(tokenizer, "eos_token_id", None)
            if isinstance(eos, int):
                ends.add(eos)
            for text in _END_TOKEN_TEXTS:
                i = vocab.get(text)
                if i is not None and special[i]:
                    ends.add(i)
            end_token_ids = ends
        for i in end_token_ids:
            if 0 <= i < n:
                special[i] = True
        prefix_space = False
        if kind == "sentencepiece":
            ids = tokenizer.encode("{", add_special_tokens=False)
            prefix_space = bool(ids) and token_bytes[ids[0]].startswith(b" ")
        return cls(token_bytes, special, end_token_ids, vocab_size=vocab_size or n, prefix_space=prefix_space,
                   tokenizer=tokenizer, canonical_literals=_splits_on_punctuation(tokenizer))

    def grammar(self, schema: Schema | None = None):
        """The compiled (vocabulary x schema) grammar, cached per schema."""
        schema = schema or DEFAULT_SCHEMA
        key = schema.hash
        g = self._grammars.get(key)
        if g is None:
            with self._lock:
                g = self._grammars.get(key)
                if g is None:
                    from .literals import canonical_cores
                    cschema = schema.compiled()
                    plain = _C.Grammar(self._c, cschema, [])
                    cores = canonical_cores(self, plain, schema) if self.canonical_literals else []
                    g = _C.Grammar(self._c, cschema, cores) if cores else plain
                    self._grammars[key] = g
        return g
