"""Stage 3: multi-reward GRPO on TRL's `GRPOTrainer`, with rollouts decoded under qpfast's
constraints and task-isolated sampling.

Rollouts
    `ConstrainedRollout` is the trainer's ``rollout_func``. For each prompt (a raw query) it
    samples candidates with `qpfast.Engine` on the current policy weights (temperature
    `T`, top-p, seeded per call): every candidate is a valid qp-json/1 line for its query,
    the exact text and token ids the engine would serve. A fresh engine is built per call,
    so no KV (the shared prefix's included) outlives a weight update.

Task-isolated sampling (`select_isolated`)
    With ``oversample`` > 1 it samples M = ceil(G·oversample) candidates per prompt, scores
    each on every task (r_k, `qpfast.train.rewards`), and keeps G of them for the GRPO
    group, preferring a group whose rollouts disagree on exactly one task k while agreeing
    (equal r_j) on every other task: the group's advantages then come from task k alone,
    so the credit lands on the decisions that changed task k. Among the candidate classes
    (candidates equal on all tasks but k, at least two different r_k) it takes the largest
    (then the widest r_k spread; then task order); a class larger than G is thinned evenly
    along r_k (its best and worst kept), a smaller one is filled by drawing its members again
    (seeded), so the group stays isolated. When no class exists (all candidates agree on
    everything, or every pair differs on several tasks) the group is the first G candidates,
    as in plain GRPO. ``isolate = false`` (or ``oversample = 1``) is plain GRPO.

How the constrained distribution enters the loss
    The policy GRPO optimizes is the distribution the engine samples from and serves: the
    model's softmax renormalized over the tokens the matcher allows,

        log π_c(a | s) = z_a / T − log Σ_{b ∈ A(s)} exp(z_b / T),   a ∈ A(s),

    with z the logits and A(s) the allowed set at step s (the matcher's bitmask: schema,
    query grounding and token budget). `ConstrainedGRPOTrainer` recomputes A(s) for every
    completion token by replaying the completion through a fresh `qpfast.Matcher` (the
    same masks the engine applied) and uses log π_c everywhere TRL uses a token log-prob:
    the importance ratio and its clipping, the KL to a reference (``beta`` > 0) and the
    entropy. Consequences: sampling is exactly on-policy (the ratio is 1 at the first
    iteration); a token the matcher forces (|A(s)| = 1: JSON punctuation, keys,
    jump-forward literals) has log π_c = 0 and no gradient, so the advantage is spent on
    the real decisions (boundaries, labels, weights, category, intent words); and the
    probability the model puts on disallowed tokens gets no policy gradient at all (the
    decoder removes it at serving time; stages 1-2 train the unconstrained softmax).

The forward passes share the prompt prefix (`qpfast.train.prefix`), as in the SFT stages.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")   # rollout_func is marked experimental in TRL

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from ..matcher import Matcher  # noqa: E402
from ..prompt import prompt_template  # noqa: E402
from ..schema import DEFAULT_SCHEMA, Schema  # noqa: E402
from .config import GRPOStageConfig  # noqa: E402
from .prefix import backbone, cache_kwarg, prefix_cache  # noqa: E402
from .rewards import QPReward  # noqa: E402

# transformers 5 renamed TrainingArguments.gradient_checkpointing, which TRL still sets (off here).
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["ConstrainedGRPOTrainer", "ConstrainedRollout", "GRPOResult", "constrained_logps", "replay_masks",
           "run_grpo", "select_isolated", "unpack_bitmask"]

_BITS = torch.arange(32, dtype=torch.int32)


# ---------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------
def unpack_bitmask(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 bitmask words ``[..., W]`` (bit set = allowed) -> bool ``[..., vocab_size]``."""
    bits = (words.unsqueeze(-1) >> _BITS.to(words.device)) & 1
    return bits.reshape(*words.shape[:-1], words.shape[-1] * 32)[..., :vocab_size].bool()


def replay_masks(vocab: Any, query: str, token_ids: Sequence[int], schema: Schema | None = None,
                 max_tokens: Optional[int] = None) -> np.ndarray:
    """The matcher's bitmask before each of `token_ids` (``[len, W]`` int32): the allowed
    sets the engine sampled them from. Raises if a token is not allowed."""
    m = Matcher(vocab, query, schema, max_tokens=max_tokens)
    out = np.zeros((len(token_ids), vocab.words), dtype=np.int32)
    for j, t in enumerate(token_ids):
        m.fill_bitmask(out, j)
        if not m.accept(int(t)):
            raise ValueError(f"token {t} at position {j} is not allowed for query {query!r}")
    return out


# ---------------------------------------------------------------------------------------
# task isolation
# ---------------------------------------------------------------------------------------
def select_isolated(scores: Sequence[dict[str, float]], group_size: int, tasks: Sequence[str],
                    rng: random.Random) -> tuple[list[int], Optional[str]]:
    """Indices of `group_size` candidates forming a task-isolated group, and that task.

    `scores[i][k]` is candidate i's r_k. Returns ``(first group_size indices, None)`` when no
    class of candidates that agree on every task but one, and differ on that one, exists.
    """
    n = len(scores)
    if group_size < 1:
        raise ValueError(f"group_size: must be >= 1, got {group_size}")
    if n < group_size:
        raise ValueError(f"scores: {n} candidates for a group of {group_size}")
    key = [tuple(round(float(s[t]), 6) for t in tasks) for s in scores]
    best = None
    for ti, task in enumerate(tasks):
        classes: dict[tuple, list[int]] = {}
        for i in range(n):
            classes.setdefault(key[i][:ti] + key[i][ti + 1:], []).append(i)
        for members in classes.values():
            vals = [key[i][ti] for i in members]
            if len(set(vals)) < 2:
                continue
            rank = (min(len(members), group_size), max(vals) - min(vals), -ti)
            if best is None or rank > best[0]:
                best = (rank, task, ti, members)
    if best is None:
        return list(range(group_size)), None
    _, task, ti, members = best
    members = sorted(members, key=lambda i: (key[i][ti], i))
    if len(members) >= group_size:
        step = (len(members) - 1) / (group_size - 1) if group_size > 1 else 0
        picks = [members[round(j * step)] for j in range(group_size)]
        # evenly spaced ranks can repeat an index when len(members) is close to group_size: top up uniquely
        seen: list[int] = []
        for i in picks:
            if i not in seen:
                seen.append(i)
        rest = [i for i in members if i not in seen]
        picks = seen + rest[:group_size - len(seen)]
    else:
        picks = members + [rng.choice(members) for _ in range(group_size - len(members))]
    return sorted(picks), task


# ---------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------
class ConstrainedRollout:
    """TRL ``rollout_func``: constrained, task-isolated rollouts with `qpfast.Engine`.

    `gold`: raw query -> gold target. The trainer passes the prompts of a generation batch,
    each prompt `num_generations` times in a row; one completion is returned per entry.
    """

    def __init__(self, tokenizer: Any, gold: dict[str, str], reward: QPReward, *, schema: Schema | None = None,
                 oversample: float = 2.0, isolate: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 192, seed: int = 0):
        self.tokenizer = tokenizer
        self.gold = dict(gold)
        self.reward = reward
        self.schema = schema or DEFAULT_SCHEMA
        self.oversample = float(oversample) if isolate else 1.0
        self.isolate = bool(isolate)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.calls = 0
        self.stats: dict[str, Any] = {"groups": 0, "isolated": 0, "by_task": {}}
        self.template = prompt_template(tokenizer, self.schema)

    def _engine(self, model: Any, device: Any):
        from ..engine import Engine
        return Engine(model, tokenizer=self.tokenizer, schema=self.schema, device=device, dtype=None,
                      max_new_tokens=self.max_new_tokens)

    def generate(self, model: Any, queries: Sequence[str], per_query: int, device: Any = "cpu"):
        """`per_query` sampled (text, token ids) per query, grouped per query."""
        was_training = model.training
        try:
            engine = self._engine(model, device)
            flat = [q for q in queries for _ in range(per_query)]
            results = engine.generate(flat, temperature=self.temperature, top_p=self.top_p,
                                      seed=self.seed * 1_000_003 + self.calls)
            ids = engine.last_token_ids
            vocab = engine.vocab
        finally:
            model.train(was_training)
        self.calls += 1
        end = self.template.end_id
        out = []
        for g in range(len(queries)):
            group = []
            for k in range(g * per_query, (g + 1) * per_query):
                r, t = results[k], ids[k]
                if r.error is None and t is not None:
                    group.append((r.raw, list(t)))
                else:
                    group.append((None, [end]))
            out.append(group)
        return out, vocab

    def __call__(self, prompts: list, trainer: Any) -> dict[str, Any]:
        g_size = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        if len(prompts) % g_size:
            raise ValueError(f"rollout: {len(prompts)} prompts is not a multiple of num_generations={g_size}")
        queries = [prompts[i] for i in range(0, len(prompts), g_size)]
        for j, q in enumerate(queries):
            if any(p != q for p in prompts[j * g_size:(j + 1) * g_size]):
                raise ValueError("rollout: the prompts of a group differ (expected each prompt num_generations times)")
            if q not in self.gold:
                raise KeyError(f"rollout: no gold target for prompt {q!r}")
        per_query = max(g_size, math.ceil(g_size * self.oversample))
        model = trainer.accelerator.unwrap_model(trainer.model)
        groups, vocab = self.generate(model, queries, per_query, trainer.accelerator.device)
        rng = random.Random(f"qpfast.train.grpo:{self.seed}:{self.calls}")
        prompt_ids, completion_ids, outputs, masks = [], [], [], []
        isolated = 0
        for q, cands in zip(queries, groups):
            gold = self.gold[q]
            if per_query > g_size:
                scores = [self.reward.scores(q, gold, text) for text, _ in cands]
                picks, task = select_isolated(scores, g_size, self.reward.tasks, rng)
            else:
                picks, task = list(range(g_size)), None
            self.stats["groups"] += 1
            if task is not None:
                isolated += 1
                self.stats["isolated"] += 1
                self.stats["by_task"][task] = self.stats["by_task"].get(task, 0) + 1
            p_ids = self.template.encode(q).prompt_ids
            for i in picks:
                text, ids = cands[i]
                prompt_ids.append(list(p_ids))
                completion_ids.append(ids)
                outputs.append(text if text is not None else "")
                if text is None:
                    masks.append(None)
                else:
                    masks.append(replay_masks(vocab, q, ids, self.schema, self.max_new_tokens))
        trainer._qp_rollout_masks = masks
        metrics = getattr(trainer, "_metrics", None)
        if metrics is not None:
            metrics["train"]["qp/isolated_groups"].append(isolated / max(1, len(queries)))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "qp_output": outputs}


# ---------------------------------------------------------------------------------------
# the constrained policy's log-probs
# ---------------------------------------------------------------------------------------
def constrained_logps(model: Any, prefix_ids: Sequence[int], prompts: Sequence[Sequence[int]],
                      completions: Sequence[Sequence[int]], allowed: Optional[torch.Tensor] = None,
                      temperature: float = 1.0, compute_entropy: bool = False,
                      completion_width: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log π_c of each completion given its prompt: ``[B, C]`` (0 past the end).

    `prompts[i]` must start with `prefix_ids` (computed once, shared); `allowed`:
    ``[B, C', W]`` int32 bitmask words per completion position (None: unconstrained
    softmax; positions past C' are unconstrained). Entropies (``[B, C]``) are those of the
    same constrained distributions.
    """
    dev = next(model.parameters()).device
    b = len(prompts)
    width = completion_width or max(len(c) for c in completions)
    p = len(prefix_ids)
    pre = torch.tensor(list(prefix_ids), dtype=torch.long, device=dev)
    if p and not all(len(r) > p and list(r[:p]) == list(prefix_ids) for r in prompts):
        p, pre = 0, pre[:0]
    rows = [list(r[p:]) + list(c) for r, c in zip(prompts, completions)]
    s = max(len(r) for r in rows)
    ids = torch.zeros((b, s), dtype=torch.long, device=dev)
    att = torch.zeros((b, p + s), dtype=torch.long, device=dev)
    att[:, :p] = 1
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        att[i, p:p + len(r)] = 1
    base = backbone(model)
    kw: dict[str, Any] = {}
    if p:
        kw[cache_kwarg(base)] = prefix_cache(base, pre, b)
    pos = torch.arange(p, p + s, device=dev)[None].expand(b, -1)
    hidden = base(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False, **kw).last_hidden_state
    q_len = torch.tensor([len(r) - p for r in prompts], device=dev)
    c_len = torch.tensor([len(c) for c in completions], device=dev)
    t_idx = torch.arange(width, device=dev)[None]
    valid = t_idx < c_len[:, None]
    gather = (q_len[:, None] - 1 + t_idx).clamp(max=s - 1)
    h = hidden.gather(1, gather[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.get_output_embeddings()(h).float() / float(temperature)
    if allowed is not None:
        a = allowed[:, :width].to(dev)
        ok = unpack_bitmask(a, logits.shape[-1])
        if a.shape[1] < width:
            ok = torch.cat([ok, ok.new_ones((b, width - a.shape[1], logits.shape[-1]))], 1)
        ok = ok | ~valid[..., None]                      # padding positions: anything goes
        logits = logits.masked_fill(~ok, float("-inf"))
    tgt = torch.zeros((b, width), dtype=torch.long, device=dev)
    for i, c in enumerate(completions):
        tgt[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
    logp_all = torch.log_softmax(logits, dim=-1)
    logps = logp_all.gather(-1, tgt[..., None])[..., 0]
    if bool(torch.isinf(logps[valid]).any()):
        raise RuntimeError("a completion token is outside its allowed set (masks and completions disagree)")
    logps = logps.masked_fill(~valid, 0.0)
    ent = None
    if compute_entropy:
        prob = logp_all.exp()
        ent = -torch.where(prob > 0, prob * logp_all, torch.zeros_like(prob)).sum(-1)
        ent = ent.masked_fill(~valid, 0.0)
    return logps, ent


class ConstrainedGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose token log-probs are those of the constrained policy π_c.

    The rollout function leaves each completion's bitmasks in ``_qp_rollout_masks``; they
    travel with the batch as ``qp_allowed`` (``[B, C, W]`` int32, shuffled and split with
    it) and are applied in every log-prob computation (policy, old policy, reference).
    `prefix_ids`: the prompt prefix all prompts share (computed once per forward pass).
    """

    def __init__(self, *args: Any, prefix_ids: Sequence[int] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.qp_prefix_ids = list(prefix_ids)
        self._qp_rollout_masks: Optional[list] = None
        self._qp_allowed: Optional[torch.Tensor] = None

    @staticmethod
    def _pad_masks(masks: list, width: int, words: int) -> torch.Tensor:
        out = torch.full((len(masks), width, words), -1, dtype=torch.int32)    # -1: every bit set
        for i, m in enumerate(masks):
            if m is not None and len(m):
                n = min(width, m.shape[0])
                out[i, :n] = torch.from_numpy(m[:n])
        return out

    def _words(self) -> int:
        rows = self.accelerator.unwrap_model(self.model).get_output_embeddings().weight.shape[0]
        return (rows + 31) // 32

    def _generate_and_score_completions(self, inputs):
        self._qp_rollout_masks = None
        self._qp_allowed = None
        try:
            out = super()._generate_and_score_completions(inputs)
            if self._qp_rollout_masks is not None:
                out["qp_allowed"] = self._pad_masks(self._qp_rollout_masks, out["completion_ids"].shape[1],
                                                    self._words())
            return out
        finally:
            self._qp_rollout_masks = None

    def _compute_loss(self, model, inputs):
        self._qp_allowed = inputs.get("qp_allowed")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._qp_allowed = None

    def _current_allowed(self, rows: int, width: int) -> Optional[torch.Tensor]:
        if self._qp_allowed is not None and self._qp_allowed.shape[0] == rows:
            return self._qp_allowed
        if self._qp_rollout_masks is not None and len(self._qp_rollout_masks) == rows:
            return self._pad_masks(self._qp_rollout_masks, width, self._words())
        return None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **mm: Any):
        if any(v is not None for v in mm.values()):
            raise ValueError("ConstrainedGRPOTrainer: multimodal inputs are not supported")
        c = logits_to_keep
        allowed = self._current_allowed(input_ids.shape[0], c)
        prompt_part, pmask = input_ids[:, :-c], attention_mask[:, :-c]
        comp, cmask = input_ids[:, -c:], attention_mask[:, -c:]
        unwrapped = self.accelerator.unwrap_model(model)
        bs = batch_size or input_ids.shape[0]
        logps, ents = [], []
        for s in range(0, input_ids.shape[0], bs):
            e = min(s + bs, input_ids.shape[0])
            prompts = [prompt_part[i][pmask[i].bool()].tolist() for i in range(s, e)]
            comps = [comp[i][: int(cmask[i].sum())].tolist() for i in range(s, e)]
            lp, en = constrained_logps(unwrapped, self.qp_prefix_ids, prompts, comps,
                                       None if allowed is None else allowed[s:e], self.temperature,
                                       compute_entropy, completion_width=c)
            logps.append(lp)
            ents.append(en)
        return (torch.cat(logps), torch.cat(ents) if compute_entropy else None, None)


# ---------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------
@dataclass
class GRPOResult:
    steps: int = 0
    queries: int = 0
    seconds: float = 0.0
    rewards: list[float] = field(default_factory=list)     # mean reward per logged step
    isolated_share: float = 0.0                            # groups that were task-isolated
    isolated_by_task: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "queries": self.queries, "seconds": round(self.seconds, 1),
                "first_reward": self.rewards[0] if self.rewards else None,
                "last_reward": self.rewards[-1] if self.rewards else None,
                "isolated_share": round(self.isolated_share, 4), "isolated_by_task": self.isolated_by_task}


def grpo_args(cfg: GRPOStageConfig, out_dir: str, seed: int, device: str, weights: Sequence[float]) -> GRPOConfig:
    g, k = cfg.num_generations, cfg.queries_per_step
    return GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=g, gradient_accumulation_steps=k, steps_per_generation=k,
        num_generations=g, learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="constant_with_warmup", num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, reward_weights=list(weights),
        max_completion_length=cfg.max_new_tokens, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        use_cpu=(device == "cpu"), bf16=False, fp16=False, gradient_checkpointing=False,
        remove_unused_columns=False, log_completions=False, dataloader_num_workers=0,
    )


def run_grpo(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], cfg: GRPOStageConfig,
             weights: dict[str, float], out_dir: str, *, seed: int = 0, schema: Schema | None = None,
             device: str = "cpu", log: Callable[[str], Any] = print,
             trainer_hook: Optional[Callable[[Any], Any]] = None) -> GRPOResult:
    """Trains `model` in place with GRPO on (query, gold target) `pairs`.

    `trainer_hook(trainer)` is called before training (tests use it to inspect batches).
    """
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    schema = schema or DEFAULT_SCHEMA
    gold: dict[str, str] = {}
    for q, t in pairs:
        gold.setdefault(q, t)                      # one target per query: rollouts look it up
    if not gold:
        raise ValueError("pairs: no training examples")
    set_seed(seed)
    t0 = time.perf_counter()
    reward = QPReward(weights, schema)
    funcs, wts = reward.task_functions()
    rollout = ConstrainedRollout(tokenizer, gold, reward, schema=schema, oversample=cfg.oversample,
                                 isolate=cfg.isolate, temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_new_tokens, seed=seed)
    ds = Dataset.from_dict({"prompt": list(gold), "target": list(gold.values())})
    result = GRPOResult(queries=len(gold))

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                result.rewards.append(float(logs["reward"]))
                parts = "  ".join(f"{t} {logs.get(f'rewards/qp_{t}/mean', float('nan')):.3f}" for t in reward.tasks)
                log(f"  step {state.global_step}/{state.max_steps}  reward {logs['reward']:.4f}  [{parts}]  "
                    f"isolated {logs.get('qp/isolated_groups', float('nan')):.2f}  ({time.perf_counter() - t0:.0f} s)")

    trainer = ConstrainedGRPOTrainer(model=model, reward_funcs=funcs, args=grpo_args(cfg, out_dir, seed, device, wts),
                                     train_dataset=ds, processing_class=tokenizer, rollout_func=rollout,
                                     callbacks=[_Log()], prefix_ids=prompt_template(tokenizer, schema).prefix_ids)
    _quiet(trainer)
    if trainer_hook is not None:
        trainer_hook(trainer)
    out = trainer.train()
    result.steps = int(out.global_step)
    result.seconds = time.perf_counter() - t0
    st = rollout.stats
    result.isolated_share = st["isolated"] / st["groups"] if st["groups"] else 0.0
    result.isolated_by_task = dict(st["by_task"])
    if "forward" in vars(model):      # TRL's fused-LM-head patch
        del model.forward
    return result


def _quiet(trainer: Any) -> None:
    from transformers import PrinterCallback
    trainer.remove_callback(PrinterCallback)
