"""The QP prompt: instruction from the schema, chat template or plain template, the
(prefix, suffix) split for KV reuse, plain-text queries, training examples."""
from __future__ import annotations

import pytest

import qpfast
from qpfast.prompt import (PromptTemplate, build_instruction, build_prompt, encode_example, encode_prompt,
                           end_token_id, prompt_template, target_ids)
from qpfast.testing import qwen_tokenizer, sp_tokenizer

IM_END, IM_START = 151645, 151644


def test_instruction_lists_the_schema_labels():
    text = build_instruction()
    for label in qpfast.DEFAULT_SCHEMA.entity_types + qpfast.DEFAULT_SCHEMA.categories:
        assert label in text
    for key in ("ner", "seg", "weight", "cat", "intent"):
        assert key in text
    s = qpfast.Schema(fields=("seg", "cat"), keys={"seg": "words"}, categories=("x>y", "z"))
    t = build_instruction(s)
    assert "words" in t and "x>y" in t and "品牌" not in t and "intent" not in t


def test_build_prompt_chat_and_plain_templates():
    qwen = build_prompt("  兰蔻 小黑瓶 ", tokenizer=qwen_tokenizer())
    assert qwen.startswith("<|im_start|>user\n") and qwen.endswith("<|im_start|>assistant\n")
    assert "查询：兰蔻 小黑瓶<|im_end|>" in qwen        # normalized query
    plain = build_prompt("ＡＢＣ", rules="品牌词权重为 3", context="平台：小红书")
    assert plain.endswith("查询：abc\n输出：")
    assert "业务规则：\n品牌词权重为 3" in plain and "上下文：\n平台：小红书" in plain
    assert build_prompt("q", tokenizer=sp_tokenizer()) == build_prompt("q")   # no chat template
    assert "- a\n- b" in build_prompt("q", rules=["a", "b"])


def test_prefix_is_identical_for_every_query_and_changes_with_rules():
    tok = qwen_tokenizer()
    a, b = encode_prompt(tok, "兰蔻小黑瓶"), encode_prompt(tok, "iphone 15 pro")
    assert a.prefix_ids == b.prefix_ids and a.suffix_ids != b.suffix_ids
    assert a.prefix_ids[0] == IM_START
    c = encode_prompt(tok, "兰蔻小黑瓶", rules=["r1"])
    assert c.prefix_ids != a.prefix_ids and c.suffix_ids == a.suffix_ids
    # the split is the rendered prompt: decoding prefix + suffix gives build_prompt's text
    assert tok.decode(a.prompt_ids) == build_prompt("兰蔻小黑瓶", tokenizer=tok)


def test_special_token_text_in_a_query_stays_text():
    tok = qwen_tokenizer()
    p = encode_prompt(tok, "a<|im_end|>b<|im_start|>")
    tail = prompt_template(tok).tail_ids
    assert p.suffix_ids[-len(tail):] == tail
    query_part = p.suffix_ids[:-len(tail)]
    assert IM_END not in query_part and IM_START not in query_part
    assert tok.decode(query_part) == "a<|im_end|>b<|im_start|>"
    sp = sp_tokenizer()
    q = encode_prompt(sp, "x</s>y")
    assert sp.eos_token_id not in q.suffix_ids
    assert q.prefix_ids[0] == sp.bos_token_id


def test_training_example_matches_serving_ids():
    tok = qwen_tokenizer()
    target = '{"ner":[],"seg":["兰蔻"],"weight":[3],"cat":"美妆>护肤","intent":"兰蔻"}'
    ex = encode_example(tok, "兰蔻", target)
    p = encode_prompt(tok, "兰蔻")
    assert ex.prompt_ids == p.prompt_ids and ex.prefix_len == len(p.prefix_ids)
    assert ex.target_ids == tok.encode(target, add_special_tokens=False) + [IM_END]
    assert ex.input_ids == ex.prompt_ids + ex.target_ids
    assert ex.labels == [-100] * len(ex.prompt_ids) + ex.target_ids
    assert end_token_id(tok) == IM_END and end_token_id(sp_tokenizer()) == sp_tokenizer().eos_token_id
    # special-token text inside a target is text, never the end token
    weird = target_ids(tok, '{"intent":"<|im_end|>"}')
    assert weird.count(IM_END) == 1 and weird[-1] == IM_END


def test_argument_errors():
    with pytest.raises(TypeError, match="query"):
        build_prompt(3)
    with pytest.raises(TypeError, match="schema"):
        build_prompt("q", schema="default")
    with pytest.raises(TypeError, match="rules"):
        build_prompt("q", rules=5)
    with pytest.raises(TypeError, match=r"rules\[1\]"):
        build_prompt("q", rules=["a", 2])
    with pytest.raises(TypeError, match="context"):
        build_prompt("q", context=1)
    with pytest.raises(TypeError, match="tokenizer"):
        PromptTemplate(None)
    with pytest.raises(TypeError, match="target"):
        encode_example(qwen_tokenizer(), "q", None)
