"""Stages 1 and 2: supervised fine-tuning on TRL's `SFTTrainer`, loss on target tokens only.

- Stage 1, knowledge injection: the unlabelled query stream pseudo-labelled by the legacy
  pipeline, mixed with a small share of gold examples (`mix_stage1`).
- Stage 2, target alignment: gold examples only.

Inputs come from the one prompt builder the engine serves with:
`qpfast.prompt.encode_example(tokenizer, query, target)` gives ``input_ids`` = prompt ids
(prefix + query + template tail, exactly as `qpfast.Engine` builds them) + target ids + end
token, and ``labels`` = -100 over the prompt. The dataset is handed to `SFTTrainer`
pre-tokenized, so its labels are used as they are: the loss is the mean cross-entropy over
the target tokens (end token included) of the batch.

`PrefixSFTTrainer` computes the prompt prefix shared by every example once per batch
(`qpfast.train.prefix`): same loss, same gradients; with a long prefix (a tokenizer without
the instruction token: ~190-550 of a ~250-630-token example) about a third of the compute.
"""
from __future__ import annotations

import json
import math
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..prompt import encode_example, end_token_id, prompt_template, target_ids
from ..schema import DEFAULT_SCHEMA, Schema
from .batching import LengthBucketSampler
from .config import MASKABLE_FIELDS, SFTStageConfig
from .prefix import backbone, cache_kwarg, prefix_cache, shared_prefix_len

# transformers 5 renamed TrainingArguments.gradient_checkpointing, which TRL still sets (off here).
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["AnchorDecay", "LossWeightCollator", "PrefixSFTTrainer", "SFTResult", "freeze_lower_layers", "mix_stage1",
           "run_sft", "sft_dataset"]


def sft_dataset(tokenizer: Any, pairs: Sequence[tuple], schema: Schema | None = None,
                mask_fields: Sequence[str] = (), field_weights: Optional[Mapping[str, float]] = None):
    """A pre-tokenized `datasets.Dataset` (``input_ids``, ``labels``) from (query, target)
    pairs, or (query, target, fields) triples whose `fields` are masked in that example only.

    `mask_fields` (names from `MASKABLE_FIELDS`): the tokens of those fields' values get label
    -100, so the stage teaches everything but them (the field's key and its quotes or brackets
    still count; `field_value_tokens`).
    `field_weights` (field -> weight, names from `MASKABLE_FIELDS`): a ``loss_weights``
    column, 1.0 per token except the value tokens of those fields (masked ones excepted), which
    weigh as given in the loss (`PrefixSFTTrainer`)."""
    from datasets import Dataset

    schema = schema or DEFAULT_SCHEMA
    weighted = {f: float(w) for f, w in (field_weights or {}).items() if float(w) != 1.0}
    ids, labels, weights = [], [], []
    for item in pairs:
        q, t = item[0], item[1]
        fields = list(dict.fromkeys([*mask_fields, *(item[2] if len(item) > 2 else ())]))
        ex = encode_example(tokenizer, q, t, schema)
        ids.append(ex.input_ids)
        lab = ex.labels
        start = len(ex.prompt_ids)
        if fields:
            lab = list(lab)
            for i in field_value_tokens(tokenizer, t, fields, ids=ex.target_ids):
                lab[start + i] = -100
        labels.append(lab)
        if weighted:
            w = [1.0] * len(lab)
            for f, fw in weighted.items():
                if f not in fields:
                    for i in field_value_tokens(tokenizer, t, [f], ids=ex.target_ids):
                        w[start + i] = fw
            weights.append(w)
    cols = {"input_ids": ids, "labels": labels}
    if weighted:
        cols["loss_weights"] = weights
    return Dataset.from_dict(cols)


def field_value_tokens(tokenizer: Any, target: str, fields: Sequence[str],
                       ids: Optional[Sequence[int]] = None) -> list[int]:
    """Indices of the target tokens that overlap the value of any of `fields` of a qp-json/1
    target: inside the quotes of a string field (``"cat":"美妆>护肤"`` -> the tokens of
    美妆>护肤), inside the brackets of a list field (``"seg":["兰蔻","小黑瓶"]`` -> the tokens
    of ``"兰蔻","小黑瓶"``, separators included). `ids`: the target's canonical ids
    (`qpfast.prompt.target_ids`) when the caller has them."""
    bad = [f for f in fields if f not in MASKABLE_FIELDS]
    if bad:
        raise ValueError(f"fields: {bad} cannot be masked; maskable: {list(MASKABLE_FIELDS)}")
    spans = [_value_span(target, f) for f in fields]
    enc = tokenizer(target, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    if ids is None:
        ids = target_ids(tokenizer, target)
    if list(enc["input_ids"]) + [end_token_id(tokenizer)] != list(ids):
        raise RuntimeError("tokenizer: offsets do not describe the canonical target ids")
    return [i for i, (a, b) in enumerate(enc["offset_mapping"])
            if any(a < e and s < b for s, e in spans)]


_LIST_FIELDS = ("ner", "seg", "weight")
_JSON = json.JSONDecoder()


def _value_span(target: str, f: str) -> tuple[int, int]:
    """[start, end) of field `f`'s value in `target` without its quotes or brackets. A key
    pattern ``"f":`` cannot occur inside a JSON string (its quotes would be escaped)."""
    kind = "list" if f in _LIST_FIELDS else "string"
    m = re.search(r'"%s":' % re.escape(f), target)
    try:
        value, end = _JSON.raw_decode(target, m.end()) if m else (None, 0)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list if kind == "list" else str):
        raise ValueError(f"target: no {kind} field {f!r} in {target[:80]!r}")
    return m.end() + 1, end - 1


def mix_stage1(pseudo: Sequence[tuple[str, str]], gold: Sequence[tuple[str, str]], n_examples: int,
               gold_share: float, seed: int) -> list[tuple[str, str]]:
    """Stage 1's training mix: round(n·gold_share) gold pairs and the rest pseudo-labelled
    pairs, each drawn without replacement (as many as exist), shuffled; deterministic per seed.
    `n_examples` 0 means every pseudo-labelled pair plus the matching share of gold."""
    if n_examples <= 0:
        n_gold = round(len(pseudo) * gold_share / max(1e-9, 1.0 - gold_share)) if gold_share < 1 else len(gold)
        n_pseudo = len(pseudo) if gold_share < 1 else 0
    else:
        n_gold = round(n_examples * gold_share)
        n_pseudo = n_examples - n_gold
    rng = random.Random(f"qpfast.train.stage1:{seed}")
    g = list(gold)
    p = list(pseudo)
    rng.shuffle(g)
    rng.shuffle(p)
    mix = g[:min(n_gold, len(g))] + p[:min(n_pseudo, len(p))]
    rng.shuffle(mix)
    return mix


class PrefixSFTTrainer(SFTTrainer):
    """`SFTTrainer` with the loss computed on the target tokens only, and the prompt prefix
    shared by every row run once per batch.

    The loss is the summed cross-entropy of the labelled (target) tokens divided by their
    count over the whole gradient-accumulation batch (`num_items_in_batch`), as TRL's; but
    the LM head runs on the labelled positions only (not on the prompt or the query), which
    on CPU is most of the head's cost. `prefix_len`: the number of leading tokens every
    example shares (the prompt template's `prefix_ids`); 0 disables sharing, and a batch
    whose rows do not all start with the same `prefix_len` tokens is computed in full.

    `group_by_length`: batches of similar length (`LengthBucketSampler`, buckets of
    `bucket_batches` batches), and the summed cross-entropy divided by ``rows × tokens_per_row``
    (the dataset's mean target tokens per row) instead of the batch's own target-token count:
    with short rows together and long rows together the per-batch count would weigh a short
    row's tokens several times a long row's; this way every token weighs the same, as in
    randomly mixed batches.

    A batch with ``loss_weights`` (`sft_dataset`'s `field_weights`, `LossWeightCollator`) sums
    each token's cross-entropy times its weight; the divisor stays the token count.
    """

    loss_is_scaled_for_ga = True          # compute_loss normalizes over the accumulated batch

    def __init__(self, *args: Any, prefix_len: int = 0, group_by_length: bool = False, bucket_batches: int = 50,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefix_len = int(prefix_len)
        self.group_by_length = bool(group_by_length)
        self.bucket_batches = int(bucket_batches)
        self.tokens_per_row = 0.0         # > 0: the loss's fixed per-row token count (grouped batches)
        if self.group_by_length:
            labels = self.train_dataset["labels"]
            self.tokens_per_row = sum(sum(x != -100 for x in lab) for lab in labels) / max(1, len(labels))
        self._cache_kw: Optional[str] = None

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        ds = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthBucketSampler([len(x) for x in ds["input_ids"]],
                                   self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                   bucket_batches=self.bucket_batches, seed=seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:                # evaluation with outputs: TRL's own path
            return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        ids, att, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"]
        weights = inputs.get("loss_weights")
        lm = self.accelerator.unwrap_model(model)
        base, head = backbone(lm), lm.get_output_embeddings()
        kw: dict[str, Any] = {}
        p = shared_prefix_len(ids, att, self.prefix_len)
        if p:
            if self._cache_kw is None:
                self._cache_kw = cache_kwarg(base)
            b, length = ids.shape
            kw[self._cache_kw] = prefix_cache(base, ids[:1, :p], b)
            kw["position_ids"] = torch.arange(p, length, device=ids.device)[None].expand(b, -1)
            ids, labels = ids[:, p:], labels[:, p:]
            weights = weights[:, p:] if weights is not None else None
        hidden = base(input_ids=ids, attention_mask=att, use_cache=False, **kw).last_hidden_state
        tgt = labels[:, 1:]
        sel = tgt != -100
        logits = head(hidden[:, :-1][sel]).float()
        tgt = tgt[sel]
        if weights is None:
            nll = torch.nn.functional.cross_entropy(logits, tgt, reduction="sum")
        else:
            per_token = torch.nn.functional.cross_entropy(logits, tgt, reduction="none")
            nll = (per_token * weights[:, 1:][sel].to(per_token.dtype)).sum()
        if self.tokens_per_row > 0:
            loss = nll / (labels.shape[0] * self.tokens_per_row * self.current_gradient_accumulation_steps)
        elif num_items_in_batch is not None:
            loss = nll / torch.as_tensor(num_items_in_batch, device=nll.device).clamp(min=1)
        else:
            loss = nll / sel.sum().clamp(min=1) / self.current_gradient_accumulation_steps
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            n = int(tgt.numel())
            self._metrics[mode]["mean_token_accuracy"].append(
                float((logits.argmax(-1) == tgt).float().mean()) if n else 0.0)
        return loss


@dataclass
class SFTResult:
    """What a stage did: steps, examples, seconds, and the logged training losses."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)      # one per logging step
    first_loss: float = math.nan
    last_loss: float = math.nan

    def to_dict(self) -> dict:
        return {"steps": self.steps, "examples": self.examples, "seconds": round(self.seconds, 1),
                "first_loss": self.first_loss, "last_loss": self.last_loss}


def _sft_args(cfg: SFTStageConfig, out_dir: str, seed: int, device: str):
    kw: dict[str, Any] = dict(
        output_dir=out_dir, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_ratio, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0, max_length=None, use_cpu=(device == "cpu"), bf16=False, fp16=False,
        gradient_checkpointing=False,   # TRL defaults it on; it breaks the prefix cache and costs a recompute
        shuffle_dataset=False,   # the Trainer's sampler shuffles (seeded by data_seed)
    )
    return SFTConfig(**kw)


def run_sft(model: Any, tokenizer: Any, pairs: Sequence[tuple], cfg: SFTStageConfig, out_dir: str, *,
            seed: int = 0, schema: Schema | None = None, device: str = "cpu",
            log: Callable[[str], Any] = print) -> SFTResult:
    """Trains `model` in place on (query, target[, masked fields]) `pairs` (`sft_dataset`);
    returns what happened.

    The caller saves the model. `out_dir` holds the trainer's scratch files only.
    """
    from transformers import PrinterCallback, set_seed

    if not pairs:
        raise ValueError("pairs: no training examples")
    schema = schema or DEFAULT_SCHEMA
    set_seed(seed)
    t0 = time.perf_counter()
    ds = sft_dataset(tokenizer, pairs, schema, mask_fields=cfg.mask_fields, field_weights=cfg.field_weights)
    prefix_len = len(prompt_template(tokenizer, schema).prefix_ids) if cfg.share_prefix else 0
    result = SFTResult(examples=len(pairs))

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                result.losses.append(float(logs["loss"]))
                log(f"  step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                    f"lr {logs.get('learning_rate', 0):.2e}  ({time.perf_counter() - t0:.0f} s)")

    frozen = freeze_lower_layers(model, cfg.freeze_layers)
    if frozen:
        log(f"  frozen: the lowest {cfg.freeze_layers} decoder layers ({frozen / 1e6:.2f} M parameters)")
    try:
        callbacks = [_Log()]
        if cfg.anchor_decay:
            callbacks.append(AnchorDecay(model, cfg.anchor_decay))
        args = _sft_args(cfg, out_dir, seed, device)
        weighted = "loss_weights" in ds.column_names
        if weighted:
            args.remove_unused_columns = False        # the Trainer would drop the column the model does not take
        trainer = PrefixSFTTrainer(model=model, args=args, train_dataset=ds,
                                   processing_class=tokenizer, callbacks=callbacks, prefix_len=prefix_len,
                                   group_by_length=cfg.group_by_length, bucket_batches=cfg.bucket_batches)
        trainer.remove_callback(PrinterCallback)      # our _Log prints one line per logging step
        if weighted:
            trainer.data_collator = LossWeightCollator(trainer.data_collator)
        out = trainer.train()
    finally:                                          # the model leaves as it came, also on an error
        _unpatch(model)
        freeze_lower_layers(model, 0)
    result.steps = int(out.global_step)
    result.seconds = time.perf_counter() - t0
    if result.losses:
        result.first_loss, result.last_loss = result.losses[0], result.losses[-1]
    return result


class LossWeightCollator:
    """Wraps a collator of ``input_ids`` / ``labels`` rows: the ``loss_weights`` column
    (`sft_dataset`'s `field_weights`) comes back as one float tensor shaped like the padded
    labels, 0 on the padding."""

    def __init__(self, inner: Callable[[list], dict]):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        out = self.inner([{k: v for k, v in ex.items() if k != "loss_weights"} for ex in examples])
        w = torch.zeros(out["labels"].shape, dtype=torch.float32)
        for i, ex in enumerate(examples):
            row = torch.as_tensor(ex["loss_weights"], dtype=torch.float32)
            w[i, :row.numel()] = row
        out["loss_weights"] = w
        return out


class AnchorDecay(TrainerCallback):
    """Weight decay toward the weights a stage started from (L2-SP), not toward zero: after
    each optimizer step every trainable parameter moves ``lr * rate`` of the way back to its
    value at the start, ``lr`` the step's learning rate.

    Stage 2 learns the gold targets while staying near stage 1, which alone has seen the
    words and cue words of the pseudo-labelled stream; unlike averaging the weights after
    training, the pull acts during training, so the rest of the network adapts to it."""

    def __init__(self, model: Any, rate: float):
        if not rate >= 0:
            raise ValueError(f"rate: must be >= 0, got {rate}")
        self.rate = float(rate)
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kw):
        if model is None or lr_scheduler is None:
            return
        shrink = min(1.0, lr_scheduler.get_last_lr()[0] * self.rate)
        with torch.no_grad():
            for n, p in model.named_parameters():
                a = self.anchor.get(n)
                if a is not None:
                    p.sub_(p - a, alpha=shrink)


def freeze_lower_layers(model: Any, n: int) -> int:
    """Freezes the lowest `n` decoder layers of `model` (and unfreezes the others); returns
    the number of frozen parameters. The embedding stays trainable: it is tied to the LM head.

    Fine-tuning only the upper layers keeps what the lower ones learned in an earlier stage
    (stage 1's knowledge of words the gold templates never show) while the stage still moves
    the output toward its own targets."""
    layers = backbone(model).layers
    if not 0 <= n <= len(layers):
        raise ValueError(f"n: must be in [0, {len(layers)}] (the model's decoder layers), got {n}")
    frozen = 0
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(i >= n)
            frozen += p.numel() if i < n else 0
    return frozen


def _unpatch(model: Any) -> None:
    """Removes the instance-level forward TRL patches in (its fused LM head), so the model
    behaves as loaded from its checkpoint (`generate`, later trainers)."""
    if "forward" in vars(model):
        del model.forward
