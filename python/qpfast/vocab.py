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
        c = _C.Vocab(token_bytes, [1 if s else 0 for s in special], ends, vocab_size, bool(prefix_space))
        self._setup(c, tokenizer, canonical_literals)

    def _setup(self, c: "_C.Vocab", tokenizer: Any, canonical_literals: bool) -> None:
        self._c = c
        self.end_ids = sorted(c.end_ids)
        self.vocab_size = c.vocab_size
        self.prefix_space = c.prefix_space
        self.tokenizer = tokenizer
        # Literal cores (canonical tokens, jump-forward) need the tokenizer and a regex
        # pre-tokenizer; without one, literals stay free (any tokenization, nothing forced).
        self.canonical_literals = bool(canonical_literals and tokenizer is not None)
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._bytes: list[bytes] | None = None
        self._special: list[bool] | None = None

    @property
    def token_bytes(self) -> list[bytes]:
        """The bytes of every token id below the tokenizer's size (b"" for holes)."""
        if self._bytes is None:
            self._bytes = self._c.all_token_bytes()
        return self._bytes

    @property
    def special(self) -> list[bool]:
        """Per token id: a special/control token (never text)."""
        if self._special is None:
            self._special = self._c.special_flags()
        return self._special

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
        added = {int(i): t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        base = dict(vocab)
        for t in added.values():
            base.pop(str(t.content), None)
        if end_token_ids is None:
            ends = set()
            eos = getattr(tokenizer, "eos_token_id", None)
            if isinstance(eos, int):
                ends.add(eos)
            for text in _END_TOKEN_TEXTS:
                i = vocab.get(text)
                if i is not None and i in added and getattr(added[i], "special", True):
                    ends.add(i)
            end_token_ids = ends
        end_token_ids = sorted(set(int(i) for i in end_token_ids))
        if not end_token_ids:
            raise ValueError("end_token_ids: the tokenizer has no end-of-generation token; pass end_token_ids=...")
        vocab_size = vocab_size or n
        if not isinstance(vocab_size, int) or vocab_size < n:
            raise ValueError(f"vocab_size: must be an int >= the tokenizer's {n} tokens, got {vocab_size!r}")
        prefix_space = False
        if kind == "sentencepiece":
            ids = tokenizer.encode("{", add_special_tokens=False)
            prefix_space = bool(ids) and str(tokenizer.convert_ids_to_tokens(ids[0])).startswith("▁")
        c = _C.Vocab.from_pieces(list(base), list(base.values()), kind,
                                 [(i, str(t.content).encode("utf-8"), bool(getattr(t, "special", True)))
                                  for i, t in added.items()],
                                 n, end_token_ids, vocab_size, prefix_space)
        obj = cls.__new__(cls)
        obj._setup(c, tokenizer, _splits_on_punctuation(tokenizer))
        return obj

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
