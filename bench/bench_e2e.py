"""End-to-end benchmark: qpfast.Engine vs `model.generate` + xgrammar's LogitsProcessor vs
unconstrained `model.generate`, on the same tiny Qwen3 (real Qwen vocabulary), the same 64
queries, the same prompts, greedy, the same max_new_tokens.

    python bench/bench_e2e.py [--threads 1] [--reps 3] [--max-new-tokens 128] [--ablations] [--markdown OUT]
    python -m pytest bench/bench_e2e.py            # pytest-benchmark entries (one round each)

Model: random-weight Qwen3 built from a config (hidden 256, 4 layers, 4 query / 2 KV heads,
head_dim 64, tied embeddings, lm_head 151,680 rows = the Qwen tokenizer padded to 64), fp32
on CPU. Random weights mean arbitrary (but valid, for the constrained methods) outputs: the
numbers measure the serving machinery, not quality.

Queries: 64 queries of the generated test split (`qpfast.data.QueryGenerator("test")`).
Prompts: `qpfast.prompt.encode_prompt` (chat template, ~405 tokens, ~390 of them the shared
prefix); the HF methods get the same ids, left-padded, in one batch of 64.

Methods:
- qpfast: `Engine.generate(queries, max_new_tokens=N, batch_size=64)`; its prefix-KV cache is
  cleared before every timed run, so the prefix forward pass is paid (and counted) each time;
- hf+xgrammar: `model.generate(..., logits_processor=[xgr.contrib.hf.LogitsProcessor(cg)])`,
  cg = xgrammar 0.2.8 `compile_json_schema` of the closest plain JSON Schema (compact
  separators, keys in order, label enums, weight 0..3, intent 1..32 chars; it cannot express
  the query grounding). Compile is done once, untimed (xgrammar caches it);
- hf: unconstrained `model.generate` (runs to max_new_tokens: random weights never say EOS).

Reported per method: wall time (median over --reps interleaved repetitions), per query, per
output token; output tokens (each row's tokens up to and including its end token); forward
passes (batched model calls: a hook on the HF model, `last_stats` for qpfast) per output
token, and row-forwards per output token (how many forward passes a sequence took part in
per token it produced; 1.0 for HF; below 1 for qpfast thanks to jump-forward); JSON validity
and strict (query-grounded) validity. Ratios: hf+xgrammar / qpfast and hf / qpfast, of the
median wall times and within each repetition (the three runs of a repetition follow each
other, so they see similar machine load). --ablations adds qpfast runs with one feature off
(jump-forward, sparse logits, prefix reuse, the bf16 logit screen, speculative drafts) or masks
filled during the forward pass, and checks that they produce the same token ids.

Torch runs with --threads intra-op threads (default 1: on a shared 2-core machine two
threads per process mostly wait for each other; pass --threads 2 on an idle machine).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

import qpfast

# the same plain JSON Schema as the mask benchmark (without minLength, which xgrammar 0.2.8
# compiles without escape sequences)
from bench_mask import xgr_schema_json  # noqa: E402  (bench/ is the script's directory)

N_QUERIES = 64
MAX_NEW_TOKENS = 128
HIDDEN, LAYERS, HEADS, KV_HEADS = 256, 4, 4, 2
SEED = 0


# -- shared setup -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tokenizer():
    from qpfast.testing import qwen_tokenizer
    return qwen_tokenizer()


@functools.lru_cache(maxsize=1)
def model():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = tokenizer()
    cfg = Qwen3Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      head_dim=HIDDEN // HEADS, max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(SEED)
    m = Qwen3ForCausalLM(cfg).eval()
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


@functools.lru_cache(maxsize=1)
def queries() -> list[str]:
    from qpfast.data import QueryGenerator
    return [ex.query for ex in QueryGenerator("test").examples(N_QUERIES, seed=2026)]


@functools.lru_cache(maxsize=1)
def engine():
    from qpfast.engine import Engine
    return Engine(model(), tokenizer(), device="cpu")


@functools.lru_cache(maxsize=1)
def end_ids() -> list[int]:
    return list(engine().vocab.end_ids)


def batch_inputs(qs: list[str]):
    from qpfast.prompt import encode_prompt
    tok = tokenizer()
    prompts = [encode_prompt(tok, q).prompt_ids for q in qs]
    n = max(map(len, prompts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    return ids, att


@functools.lru_cache(maxsize=1)
def xgr_compiled():
    import xgrammar as xgr
    info = xgr.TokenizerInfo.from_huggingface(tokenizer(), vocab_size=model().config.vocab_size,
                                              stop_token_ids=end_ids())
    comp = xgr.GrammarCompiler(info)
    return comp.compile_json_schema(xgr_schema_json(), any_whitespace=False,
                                    separators=(",", ":"), strict_mode=True)


# -- the three methods --------------------------------------------------------------------------

def run_qpfast(qs: list[str], max_new_tokens: int, **options: Any) -> dict[str, Any]:
    """options: Engine attributes set for this run only (jump_forward, sparse_logits, ...)."""
    eng = engine()
    old = {k: getattr(eng, k) for k in options}
    for k, v in options.items():
        setattr(eng, k, v)
    try:
        eng.clear_prefix_cache()
        t0 = time.perf_counter()
        res = eng.generate(qs, max_new_tokens=max_new_tokens, batch_size=len(qs))
        wall = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            setattr(eng, k, v)
    st = eng.last_stats
    valid = sum(1 for r in res if r.error is None)
    return dict(wall=wall, output_tokens=st["output_tokens"], forward_passes=st["forward_passes"],
                row_forwards=st["row_forward_passes"] + st["prefix_forward_passes"], valid=valid,
                json_valid=_json_valid([r.raw for r in res]), n=len(qs), stats=dict(st), texts=[r.raw for r in res],
                token_ids=list(eng.last_token_ids))


def _json_valid(texts: list[str]) -> int:
    n = 0
    for t in texts:
        try:
            json.loads(t)
            n += 1
        except (ValueError, TypeError):
            pass
    return n


class _Counter:
    def __init__(self, m):
        self.n = 0
        self.h = m.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self):
        self.h.remove()


def run_hf(qs: list[str], max_new_tokens: int, constrained: bool) -> dict[str, Any]:
    m = model()
    ids, att = batch_inputs(qs)
    procs = []
    if constrained:
        import xgrammar as xgr
        procs = [xgr.contrib.hf.LogitsProcessor(xgr_compiled())]
    cnt = _Counter(m)
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = m.generate(input_ids=ids, attention_mask=att, logits_processor=procs, do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=end_ids(),
                             pad_token_id=tokenizer().pad_token_id)
        wall = time.perf_counter() - t0
    finally:
        cnt.close()
    gen = out[:, ids.shape[1]:].tolist()
    ends = set(end_ids())
    out_tokens, valid, texts = 0, 0, []
    tok = tokenizer()
    for q, row in zip(qs, gen):
        cut = next((i for i, t in enumerate(row) if t in ends), None)
        n = len(row) if cut is None else cut + 1
        out_tokens += n
        text = tok.decode(row[: (cut if cut is not None else len(row))], skip_special_tokens=False)
        texts.append(text)
        try:
            qpfast.parse(text, q, strict=True)
            valid += 1
        except (qpfast.ParseError, ValueError):
            pass
    return dict(wall=wall, output_tokens=out_tokens, forward_passes=cnt.n, row_forwards=out_tokens, valid=valid,
                json_valid=_json_valid(texts), n=len(qs), texts=texts)


METHODS = {
    "qpfast": lambda qs, n: run_qpfast(qs, n),
    "hf+xgrammar": lambda qs, n: run_hf(qs, n, True),
    "hf": lambda qs, n: run_hf(qs, n, False),
}

#: qpfast with one feature changed (--ablations): same token ids, different cost.
ABLATIONS = {
    "qpfast, no jump-forward": lambda qs, n: run_qpfast(qs, n, jump_forward=False),
    "qpfast, no sparse logits": lambda qs, n: run_qpfast(qs, n, sparse_logits=0),
    "qpfast, no prefix reuse": lambda qs, n: run_qpfast(qs, n, reuse_prefix=False),
    "qpfast, masks filled during forward": lambda qs, n: run_qpfast(qs, n, overlap_masks=True),
    "qpfast, no bf16 logit screen": lambda qs, n: run_qpfast(qs, n, screen_logits=False),
    "qpfast, no speculative drafts": lambda qs, n: run_qpfast(qs, n, speculate=0),
}


# -- the table ------------------------------------------------------------------------------------

def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def run_all(reps: int, max_new_tokens: int, threads: int, verbose: bool = True,
            ablations: bool = False) -> dict[str, Any]:
    torch.set_num_threads(threads)
    qs = queries()
    t0 = time.perf_counter()
    engine(), xgr_compiled(), model()
    setup = time.perf_counter() - t0
    methods = dict(METHODS, **(ABLATIONS if ablations else {}))
    for name, fn in methods.items():          # warm-up (lazy imports, allocator, first-call paths)
        fn(qs[:4], 16)
    runs: dict[str, list[dict]] = {k: [] for k in methods}
    order = list(methods)
    for r in range(reps):
        for name in order[r % len(order):] + order[: r % len(order)]:   # rotate: spread load spikes
            res = methods[name](qs, max_new_tokens)
            runs[name].append(res)
            if verbose:
                print(f"  rep {r + 1} {name:36s} {res['wall']:7.2f} s  (load {_loadavg()})", file=sys.stderr)
    lossless = {name: rs[-1]["token_ids"] == runs["qpfast"][-1]["token_ids"]
                for name, rs in runs.items() if name.startswith("qpfast,")}
    summary = {}
    for name, rs in runs.items():
        walls = [x["wall"] for x in rs]
        last = rs[-1]
        wall = statistics.median(walls)
        summary[name] = dict(
            wall_s=wall, wall_min_s=min(walls), per_query_ms=wall / last["n"] * 1e3,
            output_tokens=last["output_tokens"], per_output_token_ms=wall / last["output_tokens"] * 1e3,
            forward_passes=last["forward_passes"],
            forward_passes_per_output_token=last["forward_passes"] / last["output_tokens"],
            row_forwards_per_output_token=last["row_forwards"] / last["output_tokens"],
            valid=last["valid"], json_valid=last["json_valid"], n=last["n"])
        if name.startswith("qpfast"):
            st = last["stats"]
            summary[name]["jump_forward_share"] = st["jump_forward_tokens"] / st["output_tokens"]
            summary[name]["sparse_logit_share"] = st["sparse_logit_share"]
            summary[name]["single_choice_steps"] = st["single_choice_steps"]
            summary[name]["time_split_s"] = {k: round(v, 3) for k, v in st.items() if k.startswith("time_")}
    q = summary["qpfast"]["wall_s"]
    ratios = {"hf+xgrammar / qpfast": summary["hf+xgrammar"]["wall_s"] / q, "hf / qpfast": summary["hf"]["wall_s"] / q}
    # the same ratios within each repetition (its runs follow each other: similar load)
    paired = {k: [runs[a][r]["wall"] / runs["qpfast"][r]["wall"] for r in range(reps)]
              for k, a in (("hf+xgrammar / qpfast", "hf+xgrammar"), ("hf / qpfast", "hf"))}
    return dict(summary=summary, ratios=ratios, paired_ratios=paired, lossless=lossless, setup_s=setup, reps=reps,
                threads=threads,
                max_new_tokens=max_new_tokens, queries=len(qs), load=_loadavg(),
                machine=f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}")


def format_table(res: dict[str, Any]) -> str:
    s = res["summary"]
    lines = [
        f"qpfast end-to-end, tiny Qwen3 (hidden {HIDDEN}, {LAYERS} layers, real Qwen vocab), "
        f"{res['queries']} queries, greedy, max_new_tokens={res['max_new_tokens']}, "
        f"torch threads={res['threads']}, median of {res['reps']} (load avg at end: {res['load']}; {res['machine']})",
        "",
        "| method | wall s | ms / query | ms / output token | output tokens | batched forward passes | "
        "batched fwd / out token | row fwds / out token | JSON-valid | strict-valid (grounded) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in s.items():
        lines.append(f"| {name} | {x['wall_s']:.2f} | {x['per_query_ms']:.1f} | {x['per_output_token_ms']:.3f} | "
                     f"{x['output_tokens']} | {x['forward_passes']} | {x['forward_passes_per_output_token']:.3f} | "
                     f"{x['row_forwards_per_output_token']:.3f} | {x['json_valid']}/{x['n']} | {x['valid']}/{x['n']} |")
    lines.append("")
    lines.append("Ratios of median wall times: " + ", ".join(f"{k} = {v:.1f}x" for k, v in res["ratios"].items()))
    lines.append("Ratios within each repetition: " + "; ".join(
        f"{k}: " + ", ".join(f"{v:.1f}x" for v in vs) for k, vs in res["paired_ratios"].items()))
    if res["lossless"]:
        lines.append("Ablations give the same token ids as qpfast: " + ", ".join(
            f"{k.split(', ', 1)[1]}: {'yes' if v else 'NO'}" for k, v in res["lossless"].items()))
    qp = s["qpfast"]
    lines.append(f"qpfast: jump-forward tokens {qp['jump_forward_share']:.0%} of output, sparse-logit picks "
                 f"{qp['sparse_logit_share']:.0%} of logit picks, single-choice picks {qp['single_choice_steps']}, "
                 f"time split {qp['time_split_s']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--json", default=None, help="write the raw results as JSON")
    ap.add_argument("--markdown", default=None, help="write the table as Markdown")
    ap.add_argument("--ablations", action="store_true",
                    help="also run qpfast without jump-forward / sparse logits / prefix reuse, and with overlap")
    args = ap.parse_args(argv)
    res = run_all(args.reps, args.max_new_tokens, args.threads, ablations=args.ablations)
    table = format_table(res)
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, ensure_ascii=False, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


# -- pytest-benchmark ------------------------------------------------------------------------------

def _bench(benchmark, name: str) -> None:
    torch.set_num_threads(1)
    qs = queries()
    METHODS[name](qs[:4], 16)                 # warm-up
    res = benchmark.pedantic(METHODS[name], args=(qs, MAX_NEW_TOKENS), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in res.items() if k not in ("texts", "stats", "token_ids")})
    if name != "hf":
        assert res["valid"] >= (res["n"] if name == "qpfast" else 0)


def test_e2e_qpfast(benchmark):
    _bench(benchmark, "qpfast")


def test_e2e_hf_xgrammar(benchmark):
    _bench(benchmark, "hf+xgrammar")


def test_e2e_hf_unconstrained(benchmark):
    _bench(benchmark, "hf")


if __name__ == "__main__":
    sys.exit(main())
