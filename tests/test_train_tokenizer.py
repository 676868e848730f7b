"""The default model's tokenizer trainer: ids round-trip the corpus, special tokens and the chat
template match the prompt builder, and the constrained decoder accepts the training targets."""
from __future__ import annotations

import json

import pytest

from test_train_support import tiny_pairs, tiny_tokenizer

import qpfast
from qpfast.prompt import build_instruction, encode_example, encode_prompt, end_token_id
from qpfast.train.tokenizer import SPECIAL_TOKENS, corpus_texts, save_tokenizer, train_tokenizer

ODD = ["iphone 15 pro max 和 华为 mate60 哪个好", "  spaces\tand\nnewlines  ", "emoji 😀🚀 and ñ é ß",
       '"quotes" \\ backslash {json}:[1,2]', "<|im_end|> typed in a query", "全角ＡＢＣ１２３，。！", "\u2063", "x" * 300]


def test_ids_round_trip_the_corpus():
    tok = tiny_tokenizer()
    pairs = tiny_pairs()
    texts = corpus_texts([q for q, _ in pairs], [t for _, t in pairs], build_instruction(), 1)
    for t in texts + ODD:
        ids = tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.decode(ids) == t
    # the corpus actually got merges: targets are much shorter in tokens than in bytes
    q, target = pairs[0]
    assert len(tok.encode(target, add_special_tokens=False)) < len(target.encode("utf-8")) / 2


def test_special_tokens_and_chat_template():
    tok = tiny_tokenizer()
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert end_token_id(tok) == 2
    text = qpfast.prompt.build_prompt("兰蔻小黑瓶", tokenizer=tok)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    p = encode_prompt(tok, "兰蔻小黑瓶")
    assert p.prefix_ids[0] == 1                                 # <|im_start|>
    assert tok.decode(p.prefix_ids + p.suffix_ids) == text
    ex = encode_example(tok, *tiny_pairs()[0])
    assert ex.target_ids[-1] == 2 and ex.labels.count(-100) == len(ex.prompt_ids)


def test_the_instruction_is_one_special_token():
    tok = tiny_tokenizer()
    instr = build_instruction()
    tid = tok.convert_tokens_to_ids(instr)
    assert tid == len(tok) - 1 and instr in tok.all_special_tokens
    p = encode_prompt(tok, "兰蔻小黑瓶")
    assert tid in p.prefix_ids and len(p.prefix_ids) < 20            # not ~550 character tokens
    # typed inside a query it is plain text, and the decoder never emits it
    typed = encode_prompt(tok, instr[:60]).suffix_ids
    assert tid not in typed
    vocab = qpfast.Vocab.from_tokenizer(tok, vocab_size=(len(tok) + 63) // 64 * 64)
    assert vocab.special[tid]
    # another schema's instruction is tokenized normally
    q = encode_prompt(tok, "兰蔻", schema=qpfast.Schema(categories=["美妆>护肤", "其他"]))
    assert tid not in q.prefix_ids and len(q.prefix_ids) > 100


def test_training_is_deterministic_and_sized():
    texts = [t for _, t in tiny_pairs()[:50]]
    a, b = train_tokenizer(texts, vocab_size=500), train_tokenizer(texts, vocab_size=500)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) <= 500
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)
    with pytest.raises(ValueError, match="pretokenize"):
        train_tokenizer(texts, vocab_size=300, pretokenize="words")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_tokenizer(["a", 3], vocab_size=300)


@pytest.mark.parametrize("pretokenize", ["han", "chars"])
def test_query_pieces_are_the_target_pieces(pretokenize):
    """Character-level Chinese: every entity, and every segment that occurs verbatim in the
    query (not a multi-word Latin segment, whose spaces the segmentation drops), is token for
    token a run of the query's own tokens (what the model copies)."""
    tok = tiny_tokenizer(pretokenize)

    def ids(text):
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def inside(sub, seq):
        return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))

    n = 0
    for q, target in tiny_pairs():
        p = encode_prompt(tok, q)
        qids = p.suffix_ids
        obj = json.loads(target)
        for piece in [s for s in obj["seg"] if s in p.normalized] + [e[0] for e in obj["ner"]]:
            assert inside(ids(piece), qids), (q, piece)
            n += 1
    assert n > 500
    assert len(ids("推荐")) == 2 and ids(" pro") == ids(" ") + ids("pro")


@pytest.mark.parametrize("pretokenize", ["han", "chars", "qwen"])
def test_decoder_accepts_every_training_target(tmp_path, pretokenize):
    if pretokenize != "qwen":
        tok = tiny_tokenizer(pretokenize)
    else:
        pairs = tiny_pairs()
        texts = corpus_texts([q for q, _ in pairs], [t for _, t in pairs], build_instruction(), 20)
        tok = train_tokenizer(texts, vocab_size=1500, pretokenize="qwen")
    save_tokenizer(tok, tmp_path)
    from transformers import AutoTokenizer
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.get_vocab() == tok.get_vocab() and loaded.chat_template == tok.chat_template
    vocab = qpfast.Vocab.from_tokenizer(loaded, vocab_size=(len(loaded) + 63) // 64 * 64)
    assert vocab.canonical_literals                             # Qwen-style regex pre-tokenizer
    assert set(vocab.end_ids) == {0, 2}
    for q, target in tiny_pairs()[:60]:
        ids = encode_example(loaded, q, target).target_ids
        m = qpfast.Matcher(vocab, q)
        for t in ids:
            assert m.accept(t), (q, target, loaded.convert_ids_to_tokens(ids))
        assert m.is_finished() and m.text() == target


def test_chars_mode_splits_every_letter_but_the_keys():
    """``pretokenize="chars"``: a Latin word is one token per letter wherever it stands (so an
    unseen name looks like the synthetic values), the schema's key names are one token each
    where no letter touches them, and no token anywhere holds two letters of a query word."""
    tok = tiny_tokenizer("chars")

    def pieces(text):
        return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    assert pieces("airpods") == list("airpods")
    assert pieces("小米buds连接")[2:6] == list("buds")
    for key in ("ner", "seg", "weight", "cat", "intent"):
        assert pieces(f'"{key}":') == ['"', key, '":']
    assert pieces("catwalk") == list("catwalk") and pieces("cat粮")[:3] == list("cat")
    assert pieces("cat 粮")[0] == "cat"                 # a whole word in the query: the same piece as in a target
    keys = {"ner", "seg", "weight", "cat", "intent"}
    letters = set("abcdefghijklmnopqrstuvwxyz")
    for q, target in tiny_pairs():
        for text in (q.lower(), target):
            for p in pieces(text):
                assert p in keys or sum(ch in letters for ch in p) <= 1, (text, p)
    # no BPE merge joins letters but the keys' own (and the steps to them)
    assert not [t for t in tok.get_vocab() if t.isascii() and t.isalpha() and len(t) > 1
                and not any(t in k for k in keys)]


def test_pretokenize_regex_checks_its_arguments():
    from qpfast.train.tokenizer import pretokenize_regex
    with pytest.raises(ValueError, match="pretokenize"):
        pretokenize_regex("letters")
    with pytest.raises(ValueError, match="whole_words"):
        pretokenize_regex("chars", ["seg", "a|b"])
    assert pretokenize_regex("han", ["seg"]) == pretokenize_regex("han")     # whole_words: "chars" only
    assert "(?:weight|seg)" in pretokenize_regex("chars", ["seg", "weight", "seg"])
