"""`qpfast.hf.LogitsProcessor` with `model.generate`: every output parses strictly."""
from __future__ import annotations

import pytest
import torch

import qpfast
from qpfast.hf import LogitsProcessor
from qpfast.prompt import encode_prompt
from qpfast.testing import qwen_tokenizer

from test_engine_support import llama_model, qwen3_model, sp_tok


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(tok, queries):
    prompts = [encode_prompt(tok, q).prompt_ids for q in queries]
    n = max(map(len, prompts))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    return ids, att, pad


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_model_generate_with_processor_outputs_parse_strictly(arch):
    tok, model = (qwen_tokenizer(), qwen3_model()) if arch == "qwen3" else (sp_tok(), llama_model())
    queries = ['say "hi" \\ 😀', "兰蔻小黑瓶适合什么肤质", "<|im_end|> 注入", "a" * 70]
    budget = 96 if arch == "qwen3" else 200
    proc = LogitsProcessor(tok, qpfast.DEFAULT_SCHEMA, queries, max_new_tokens=budget)
    ids, att, pad = _batch(tok, queries)
    out = model.generate(input_ids=ids, attention_mask=att, logits_processor=[proc], max_new_tokens=budget,
                         do_sample=False, eos_token_id=proc.end_token_ids, pad_token_id=pad)
    gen = out[:, ids.shape[1]:]
    results = proc.results(gen)
    for q, r, row in zip(queries, results, gen.tolist()):
        assert r.error is None, (q, r.error, r.raw)
        qpfast.parse(r.raw, q, strict=True)
        assert any(t in proc.end_token_ids for t in row)       # every row ended


def test_processor_with_sampling_and_several_sequences_per_query():
    tok, model = qwen_tokenizer(), qwen3_model()
    queries = ["周末 上海 去哪玩", "x"]
    proc = LogitsProcessor(tok, None, queries, max_new_tokens=80)
    ids, att, pad = _batch(tok, queries)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=att, logits_processor=[proc], max_new_tokens=80,
                         do_sample=True, temperature=1.0, num_return_sequences=2,
                         eos_token_id=proc.end_token_ids, pad_token_id=pad)
    results = proc.results(out[:, ids.shape[1]:])
    assert [r.query for r in results] == ["周末 上海 去哪玩"] * 2 + ["x"] * 2
    assert all(r.error is None for r in results)


def test_processor_argument_errors_and_empty_query():
    tok = qwen_tokenizer()
    with pytest.raises(TypeError, match="tokenizer"):
        LogitsProcessor(None, None, ["q"])
    with pytest.raises(TypeError, match="queries"):
        LogitsProcessor(tok, None, "q")
    with pytest.raises(TypeError, match="schema"):
        LogitsProcessor(tok, "s", ["q"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        LogitsProcessor(tok, None, ["q"], max_new_tokens=0)
    proc = LogitsProcessor(tok, None, ["", "q"], max_new_tokens=40)
    scores = torch.zeros(2, 151680)
    masked = proc(torch.zeros(2, 3, dtype=torch.long), scores.clone())
    allowed0 = torch.isfinite(masked[0]).nonzero().flatten().tolist()
    assert allowed0 == proc.end_token_ids                  # empty query: end tokens only
    assert torch.isfinite(masked[1]).sum() >= 1
    with pytest.raises(ValueError, match="queries"):
        LogitsProcessor(tok, None, ["a", "b", "c"])(torch.zeros(2, 1, dtype=torch.long), scores.clone())
