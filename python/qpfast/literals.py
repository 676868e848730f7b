"""Canonical tokens of the schema's literals (the fixed JSON between dynamic parts).

For each literal, we ask the real tokenizer how it writes the literal in many contexts
(every kind of character that can stand before and after it) and keep the longest run of
tokens that is the same in all of them: the literal's *core*. Inside a core the decoder
allows only those tokens, so a model decodes literals exactly as the tokenizer writes the
training targets, and the decoder can append a core in one forward pass (jump-forward)
without changing the output. Bytes outside the core stay free (any tokenization).
"""
from __future__ import annotations

import json
import string
from typing import Any

from . import _C
from .schema import Schema

# Group ids and node ids as in csrc/schema.h.
G_START, G_TEXT_END, G_TYPE_END, G_SEG_MORE, G_SEG_DONE, G_NUM_MORE, G_NUM_DONE, G_CAT_END, G_INTENT_END = range(9)
N_TEXT, N_TYPE, N_SEG, N_NUM, N_CAT, N_INTENT, N_END = range(7)


def _esc(ch: str) -> str:
    return json.dumps(ch, ensure_ascii=False)[1:-1]


_QUERY_CHARS = ["a", "k", "z", "中", "的", "兰", "1", "0", "é", "😀", "ー", "ß", "α"] + \
    [_esc(c) for c in string.punctuation] + ["..", "...", "!!", "??", "--", "~~", "a.", "1.", "()", "\\\"\\\""]
_INTENT_CHARS = _QUERY_CHARS + ["A", " ", "。", "？", "！", "，", "、", " a", " -", "a ", "Z"]


def _contexts(schema: Schema, digits: list[str]):
    types, cats = list(schema.entity_types), list(schema.categories)
    lasts = lambda labels: sorted({_esc(l[-1]) for l in labels} | {_esc(l[-2:]) for l in labels if len(l) > 1})  # noqa: E731
    firsts = lambda labels: sorted({_esc(l[0]) for l in labels} | {_esc(l[:2]) for l in labels if len(l) > 1})  # noqa: E731
    before = {
        G_START: [""], G_TEXT_END: _QUERY_CHARS, G_TYPE_END: lasts(types), G_SEG_MORE: _QUERY_CHARS,
        G_SEG_DONE: _QUERY_CHARS, G_NUM_MORE: digits, G_NUM_DONE: digits, G_CAT_END: lasts(cats),
        G_INTENT_END: _INTENT_CHARS,
    }
    after = {
        N_TEXT: _QUERY_CHARS, N_TYPE: firsts(types), N_SEG: _QUERY_CHARS, N_NUM: digits, N_CAT: firsts(cats),
        N_INTENT: _INTENT_CHARS, N_END: [""],
    }
    return before, after


def _common_chain(span_sets: list[set[tuple[int, int, int]]]) -> list[tuple[int, int, int]]:
    common = set.intersection(*span_sets) if span_sets else set()
    by_start = {}
    for s in common:
        by_start.setdefault(s[0], []).append(s)
    best: list[tuple[int, int, int]] = []
    for start in sorted(by_start):
        chain, pos = [], start
        while pos in by_start and len(by_start[pos]) == 1:
            s = by_start[pos][0]
            chain.append(s)
            pos = s[1]
        if chain and (chain[-1][1] - chain[0][0]) > ((best[-1][1] - best[0][0]) if best else 0):
            best = chain
    return best


def canonical_cores(vocab: Any, grammar: "_C.Grammar", schema: Schema) -> list:
    """CoreSpecs for every literal of `grammar` (see the module docstring)."""
    tok = vocab.tokenizer
    tb = vocab.token_bytes
    glue = schema.compiled().glue()  # [(bytes, target node)] per group
    literals = grammar.literals()    # as the matcher sees them (leading space for prefix-space vocabs)
    digits = [str(d) for d in range(schema.weight_levels)]
    before, after = _contexts(schema, digits)
    jobs = []  # (group, alt, text, expected bytes, region start)
    for g, alts in enumerate(glue):
        for a, (lit_plain, target) in enumerate(alts):
            lit = literals[g][a]
            for b in before[g]:
                for c in after[target]:
                    text = b + lit_plain.decode("utf-8") + c
                    lead = b" " if vocab.prefix_space else b""
                    expect = lead + text.encode("utf-8")
                    region = len(lead) + len(b.encode("utf-8")) if g != G_START else 0
                    if g == G_START:
                        assert lit == lead + lit_plain
                    jobs.append((g, a, text, expect, region, len(lit)))
    enc = tok([j[2] for j in jobs], add_special_tokens=False)["input_ids"]
    spans: dict[tuple[int, int], list[set]] = {}
    for (g, a, _text, expect, region, L), ids in zip(jobs, enc):
        got = b"".join(tb[i] for i in ids)
        if got != expect:
            continue  # the tokenizer normalized this probe; it says nothing about the literal
        s, pos = set(), 0
        for i in ids:
            n = len(tb[i])
            if pos >= region and pos + n <= region + L:
                s.add((pos - region, pos - region + n, i))
            pos += n
        spans.setdefault((g, a), []).append(s)
    out = []
    for (g, a), sets in spans.items():
        chain = _common_chain(sets)
        if chain:
            out.append(_C.CoreSpec(g, a, [list(x) for x in chain]))
    return out
