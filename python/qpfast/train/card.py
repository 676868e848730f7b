"""The model card (``README.md`` of an exported model): data, recipe, metrics and limits."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

__all__ = ["metrics_table", "model_card"]

_COLS = (("seg_f1", "seg F1"), ("ner_f1", "NER F1"), ("weight_f1", "weight F1"), ("cat_acc", "category acc"),
         ("cat1_acc", "category acc (1st level)"), ("intent_f1", "intent char F1"), ("overall", "overall"),
         ("invalid_rate", "invalid"))
_ROWS = (("legacy", "legacy pipeline (jieba + gazetteers + rules)"), ("stage1", "after stage 1 (knowledge injection)"),
         ("stage2", "after stage 2 (target alignment)"),
         ("stage3_policy", "after stage 3 (multi-reward GRPO), the policy before averaging"),
         ("branch_stage2", "soup branch: after stage 2 anchored to stage 1"),
         ("branch_stage3", "soup branch: after stage 3"),
         ("stage3", "after stage 3 (multi-reward GRPO), shipped"))


_PRETOKENIZE_NOTES = {
    "han": "one token per Chinese character, Latin words and punctuation runs as in Qwen2",
    "chars": "one token per Chinese character and per letter, the JSON key names whole, punctuation runs as in Qwen2",
    "qwen": "Qwen2's split: word-level BPE",
}


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: one row per evaluated system (legacy, stage 1-3), one column per metric."""
    head = "| system | " + " | ".join(label for _, label in _COLS) + " |"
    sep = "|---|" + "---:|" * len(_COLS)
    lines = [head, sep]
    for key, label in _ROWS:
        rep = metrics.get(key)
        if not isinstance(rep, Mapping):
            continue
        cells = []
        for k, _ in _COLS:
            v = rep.get(k)
            cells.append("n/a" if v is None else f"{v:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stage_line(name: str, info: Optional[Mapping[str, Any]]) -> str:
    if not info:
        return f"- {name}: not run"
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, Mapping):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        return str(v)
    parts = ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in info.items() if v is not None)
    return f"- {name}: {parts}"


def model_card(cfg: Any, metrics: Mapping[str, Any], *, params: int, size_mb: float, vocab_size: int) -> str:
    """The card text for an exported model trained with `cfg` (a `RecipeConfig`)."""
    m = cfg.model
    d = cfg.data
    train = metrics.get("train", {})
    n_eval = (metrics.get("stage3") or metrics.get("stage2") or metrics.get("stage1") or {}).get("n", "?")
    weights = ", ".join(f"{k} {v:g}" for k, v in cfg.rewards.items())
    instr_note = ("; the default schema's instruction is one special token, so the prompt prefix is a few tokens"
                  if cfg.tokenizer.instruction_token else "")
    beats = metrics.get("beats_legacy")
    beat_line = ""
    if isinstance(beats, Mapping) and beats:
        won = [k for k, v in beats.items() if v]
        lost = [k for k, v in beats.items() if not v]
        beat_line = (f"\nAgainst the legacy pipeline the shipped model is better on {', '.join(won) or 'no task'}"
                     + (f" and not better on {', '.join(lost)}." if lost else "."))
    synth_note = ""
    if d.n_synth and (cfg.stage2.synth_share or cfg.stage3.synth_share):
        synth_note = (f", plus {d.n_synth} gold examples whose entity values are synthetic (shape-preserving "
                      f"random strings, per slot with probability {d.synth_values}: `qpfast.data.synthetic`) as "
                      f"{cfg.stage2.synth_share:.0%} of stage 2 and {cfg.stage3.synth_share:.0%} of stage 3")
    stream_note = ""
    if d.splice or d.keyword_share:
        stream_note = (f" {d.splice:.0%} of the stream queries join the head of one drafted query to the tail of "
                       f"another and {d.keyword_share:.0%} are bare keyword queries (an entity with one or two topic "
                       f"words of the legacy pipeline's keyword table, `qpfast.data.stream`), so the legacy "
                       f"pipeline's word and category knowledge reaches the model outside the training templates.")
    if d.word_share:
        stream_note += (f" In {d.word_share:.0%} of the other stream queries each literal word is swapped, with "
                        f"probability 1/2, for one of jieba's {d.dict_words} most frequent words "
                        f"(`qpfast.data.dictionary`), so the language's words, not only the templates', reach the "
                        f"model with the legacy pipeline's segmentation of them.")
    if d.keyword_plant:
        stream_note += (f" In {d.keyword_plant:.0%} of the stream queries that are not bare keyword queries one "
                        f"literal word is replaced by a topic word of the legacy pipeline's keyword table (a random "
                        f"category), so its category rules meet their keywords inside whole query frames.")
    if d.keyword_share and d.keyword_context:
        stream_note += (f" {d.keyword_context:.0%} of the bare keyword queries get one to three of jieba's "
                        f"{d.dict_words} most frequent words around them and, half the time, a topic word of another "
                        f"category, so the keywords decide the pseudo-label in contexts no template has, conflicts "
                        f"included.")
    aug_note = ""
    if d.n_aug and cfg.stage2.aug_share:
        aug_note = (f" {cfg.stage2.aug_share:.0%} of stage 2 are gold examples rewritten so that no template's "
                    f"frame is seen alone (function words dropped, two content chunks swapped, or the head of one "
                    f"template's draft joined to the tail of another template of the same category, whose intent "
                    f"is then left out of the loss: `qpfast.data.augment`).")
    s1, s2 = cfg.stage1, cfg.stage2
    s1_note = ""
    if s1.gold_mask_fields:
        s1_note += (f"\n- stage 1's gold share carries no loss on {', '.join(s1.gold_mask_fields)}: there the model "
                    f"learns only the legacy pipeline's pseudo-labels (its keyword rules), not the gold label, which "
                    f"the template alone decides and which a template never seen in training cannot show")
    if s1.field_weights:
        s1_note += ("\n- stage 1 weighs the value tokens of " + ", ".join(f"{f} x{w:g}" for f, w in s1.field_weights.items())
                    + " in its loss (every other target token x1)")
    s2_note = ""
    if s2.mask_fields:
        s2_note = (f"\n- stage 2 carries no loss on {', '.join(s2.mask_fields)}: that field stays what stage 1 "
                    f"learned (stage 3's reward still scores it)")
    if s2.field_weights:
        s2_note += ("\n- stage 2 (and the soup branch's) weighs the value tokens of "
                    + ", ".join(f"{f} x{w:g}" for f, w in s2.field_weights.items()) + " in its loss")
    freeze_note = ""
    if cfg.stage2.freeze_layers:
        freeze_note = (f"\n- stage 2 trains only the decoder layers above the lowest {cfg.stage2.freeze_layers} "
                       f"(and the tied embedding): the lower layers keep what stage 1 learned of words the gold "
                       f"templates never show")
    w, lw = cfg.stage3.average_stage1, list(cfg.stage3.average_stage1_layers)
    per_layer = (f"; per decoder layer, bottom to top, the stage-1 weight is {', '.join(f'{x:g}' for x in lw)} "
                 f"(the embedding and final norm: {w:g})") if lw else ""
    avg_note = (f"\n- export: the shipped weights are {1 - w:g} x stage 3 + {w:g} x stage 1{per_layer} (weight "
                f"averaging toward the earlier checkpoint, as in WiSE-FT: it keeps part of stage 1's category and "
                f"word knowledge that stages 2-3 overwrite); the table shows the stage-3 policy before and after"
                ) if (w or any(lw)) else ""
    sp = cfg.soup
    soup_note = (f"\n- soup: a second stage 2 from stage 1, with weight decay toward stage 1's weights "
                 f"(anchor_decay {sp.anchor_decay:g}){' and no loss on ' + ', '.join(sp.mask_fields) if sp.mask_fields else ''}, "
                 f"then stage 3 as above; the shipped weights are {1 - sp.weight:g} x the averaged model + "
                 f"{sp.weight:g} x that branch's stage 3") if sp.weight else ""
    schema_note = ""
    if cfg.schema:
        schema_note = ("\n\nServed (and trained in stage 3, and evaluated) with the default schema plus "
                       + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in cfg.schema.items())
                       + " (`qpfast_schema.json` in this directory: the engine reads it when no schema is given)"
                       + ("; a space the user typed always ends a segment" if cfg.schema.get("seg_breaks_at_spaces")
                          else "") + ".")
    return f"""---
language: zh
library_name: transformers
tags: [qpfast, query-processing, qwen3]
---
# {cfg.name}

The default model of qpfast: a small Qwen3-architecture causal LM, trained
from scratch, that reads a Chinese search query and writes one `qp-json/1` line (entities, segmentation,
term weights, category, intent). Serve it with qpfast's constrained decoder, which guarantees a valid,
query-grounded output:

```python
import qpfast
qpfast.generate(["兰蔻小黑瓶适合什么肤质"])     # model=None loads this model
```{schema_note}

## Model
- Architecture: `Qwen3ForCausalLM`, hidden size {m.hidden}, layers {m.layers}, attention heads {m.heads}
  (KV heads {m.kv_heads}),
  SwiGLU width {m.intermediate}, tied embeddings, {params / 1e6:.2f} M parameters, saved as {m.dtype}
  ({size_mb:.1f} MB).
- Tokenizer: byte-level BPE trained with `tokenizers` on the training corpus, {vocab_size} tokens,
  pre-tokenization `{cfg.tokenizer.pretokenize}` ({_PRETOKENIZE_NOTES.get(cfg.tokenizer.pretokenize, "")}){instr_note},
  ChatML template (`<|im_start|>`, `<|im_end|>` = end of turn).

## Data
Generated by `qpfast.data` (seed {d.seed}, partition seed {d.split_seed}): Xiaohongshu-style queries from
templates and gazetteers with gold labels. The test split uses entity values and templates that never
occur in training. Stage 1 reads {d.n_unlabelled} unlabelled stream queries (perturbed with probability
{d.perturb}) pseudo-labelled by the legacy pipeline, mixed with gold; stream queries draw only on
the train split's templates and values.{stream_note} Stages 2 and 3 read the
{d.n_train} gold training examples{synth_note}.{aug_note}

## Recipe (`python -m qpfast.train`, config `{cfg.name}`)
{_stage_line("stage 1, knowledge injection (SFT, TRL SFTTrainer, loss on target tokens)", train.get("stage1"))}{s1_note}
{_stage_line("stage 2, target alignment (SFT on gold)", train.get("stage2"))}{s2_note}{freeze_note}
{_stage_line("stage 3, multi-reward GRPO (TRL GRPOTrainer, constrained rollouts, task-isolated groups)",
             train.get("stage3"))}{avg_note}{soup_note}

Reward weights: {weights}. Stage 3 samples its rollouts with qpfast's engine under the constraints
the model is served with, and its loss uses the log-probs of that constrained policy (the softmax
renormalized over the tokens the decoder allows; tokens the decoder forces carry no gradient).
Seed {cfg.seed}; the run is deterministic for a fixed seed and thread count.

## Evaluation
The generated test split ({n_eval} queries; held-out entities and templates), DESIGN.md §6 metrics,
greedy decoding under qpfast's constraints:

{metrics_table(metrics)}
{beat_line}

## Limits
- Trained only on synthetic queries of one style and domain mix; real traffic will have other entities,
  spellings and intents. Scores on the generated test split are not scores on real queries.
- Only the default schema's fields, entity types, categories and limits (`qpfast.DEFAULT_SCHEMA`).
- The intent is a short paraphrase learned from templates: a rough signal, not a faithful summary.
- Outputs are always valid (the decoder enforces the schema and the query), not always right.
"""
