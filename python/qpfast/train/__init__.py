"""qpfast's training pipeline: the default model built from scratch in three stages.

- `tokenizer`: the model's own byte-level BPE (``tokenizers``), ChatML template;
- `model_init`: a small Qwen3-architecture model from a `ModelSpec`;
- `sft`: stages 1 and 2 on TRL's `SFTTrainer` (loss on target tokens, prompts from
  `qpfast.prompt`, shared-prefix forward passes);
- `rewards`: reward = Σ_k w_k · r_k, r_k the per-query metric of DESIGN.md §6;
- `grpo`: stage 3 on TRL's `GRPOTrainer`, rollouts under qpfast's constraints, task-isolated
  groups, log-probs of the constrained policy;
- `recipe` / ``python -m qpfast.train``: the whole run, evaluated after each stage;
- `config`: the recipe's TOML config (``configs/default.toml``, ``configs/tiny.toml``).

Needs the ``train`` extra (``trl``, ``datasets``, ``accelerate``); the submodules import it
lazily, so ``import qpfast.train`` alone does not.
"""
from __future__ import annotations

from .config import CONFIG_DIR, RecipeConfig
from .model_init import ModelSpec
from .rewards import DEFAULT_WEIGHTS, TASKS, QPReward, task_scores

__all__ = ["CONFIG_DIR", "DEFAULT_WEIGHTS", "ModelSpec", "QPReward", "RecipeConfig", "TASKS", "run_recipe",
           "task_scores"]


def run_recipe(*args, **kwargs):
    """`qpfast.train.recipe.run_recipe` (imported on first use)."""
    from .recipe import run_recipe as _run
    return _run(*args, **kwargs)
