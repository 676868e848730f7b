"""Stage-3 rewards: reward = Σ_k w_k · r_k over the QP tasks (DESIGN.md §6, per query).

r_k is task k's metric of ONE parsed rollout against its gold target, computed from
`qpfast.evaluate.score_example` (the counts every report is built from), so the reward is
exactly the evaluation metric restricted to one query:

- ``seg``: F1 of the segments as character spans of q' = 2·tp / (pred + gold);
- ``ner``: F1 of the entities as (start, end, type) spans of q;
- ``weight``: F1 of the terms as (start, end, level);
- ``cat``: 1 when the category path is exactly right, else 0;
- ``intent``: character-level F1 of the intent against the gold description.

As in the evaluation, an F1 with no gold and no predicted item (a query without entities,
answered without entities) is 1. A rollout that does not parse strictly (or is missing)
scores 0 on every task, so its reward is 0. Tasks whose field is not in the schema are
skipped. Weights are configurable; the default (config ``[rewards]``) weighs the four tasks
of the overall score 1 and intent 0.2 (a rough signal, DESIGN §6: report, do not optimize
alone).

    rw = QPReward({"seg": 1, "ner": 1, "weight": 1, "cat": 1, "intent": 0.2})
    rw.scores(query, gold_target, output)   # {"seg": 0.8, "ner": 1.0, ...}
    rw.reward(query, gold_target, output)   # Σ w_k r_k
    rw.task_functions()                     # one TRL reward function per task (+ weights)
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional, Sequence

from ..evaluate import Counts, score_example
from ..schema import DEFAULT_SCHEMA, Schema

__all__ = ["TASKS", "DEFAULT_WEIGHTS", "QPReward", "task_scores"]

#: Reward tasks and the schema field each one needs.
TASKS = ("seg", "ner", "weight", "cat", "intent")
_FIELD = {"seg": "seg", "ner": "ner", "weight": "weight", "cat": "cat", "intent": "intent"}
DEFAULT_WEIGHTS = {"seg": 1.0, "ner": 1.0, "weight": 1.0, "cat": 1.0, "intent": 0.2}


def _f1(tp: int, pred: int, gold: int) -> float:
    return 1.0 if pred + gold == 0 else 2.0 * tp / (pred + gold)


def _from_counts(c: Counts, tasks: Sequence[str]) -> dict[str, float]:
    if c.invalid:
        return {t: 0.0 for t in tasks}
    vals = {
        "seg": lambda: _f1(c.seg_tp, c.seg_pred, c.seg_gold),
        "ner": lambda: _f1(c.ner_tp, c.ner_pred, c.ner_gold),
        "weight": lambda: _f1(c.weight_tp, c.weight_pred, c.weight_gold),
        "cat": lambda: float(c.cat_correct),
        "intent": lambda: _f1(c.intent_tp, c.intent_pred, c.intent_gold),
    }
    return {t: vals[t]() for t in tasks}


def task_scores(query: str, gold_target: str, output: Optional[str], schema: Schema | None = None,
                tasks: Sequence[str] | None = None) -> dict[str, float]:
    """r_k for each task of the schema (or `tasks`): one rollout against its gold target."""
    schema = schema or DEFAULT_SCHEMA
    if tasks is None:
        tasks = [t for t in TASKS if _FIELD[t] in schema.fields]
    return _from_counts(score_example(query, gold_target, output, schema), tasks)


class QPReward:
    """Weighted multi-task reward. `weights`: task -> w_k (missing tasks weigh 0).

    Scores are cached per (query, gold, output) (a small LRU), so the per-task TRL reward
    functions of one rollout parse it once.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, schema: Schema | None = None,
                 cache_size: int = 4096):
        self.schema = schema or DEFAULT_SCHEMA
        if not isinstance(self.schema, Schema):
            raise TypeError(f"schema: expected qpfast.Schema, got {type(self.schema).__name__}")
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        bad = set(weights) - set(TASKS)
        if bad:
            raise ValueError(f"weights: unknown task(s) {sorted(bad)}; tasks are {list(TASKS)}")
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"weights[{k!r}]: expected a number >= 0, got {v!r}")
        self.tasks = tuple(t for t in TASKS if _FIELD[t] in self.schema.fields and float(weights.get(t, 0.0)) > 0)
        if not self.tasks:
            raise ValueError("weights: no task of the schema has a weight > 0")
        self.weights = {t: float(weights[t]) for t in self.tasks}
        self._cache: "OrderedDict[tuple, dict[str, float]]" = OrderedDict()
        self._cache_size = cache_size

    def scores(self, query: str, gold_target: str, output: Optional[str]) -> dict[str, float]:
        """r_k of every weighted task."""
        key = (query, gold_target, output)
        hit = self._cache.get(key)
        if hit is None:
            hit = task_scores(query, gold_target, output, self.schema, self.tasks)
            self._cache[key] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return dict(hit)

    def reward(self, query: str, gold_target: str, output: Optional[str]) -> float:
        """Σ_k w_k · r_k."""
        s = self.scores(query, gold_target, output)
        return sum(self.weights[t] * s[t] for t in self.tasks)

    def __call__(self, queries: Sequence[str], gold_targets: Sequence[str],
                 outputs: Sequence[Optional[str]]) -> list[float]:
        if not (len(queries) == len(gold_targets) == len(outputs)):
            raise ValueError(f"lengths differ: {len(queries)} queries, {len(gold_targets)} gold targets, "
                             f"{len(outputs)} outputs")
        return [self.reward(q, g, o) for q, g, o in zip(queries, gold_targets, outputs)]

    # -- TRL ---------------------------------------------------------------------------------
    def task_functions(self) -> tuple[list[Callable[..., list[float]]], list[float]]:
        """One TRL reward function per weighted task, and their weights (`GRPOConfig.reward_weights`).

        TRL sums them as Σ_k w_k · r_k (`multi_objective_aggregation="sum_then_normalize"`)
        and logs each task's mean reward under ``rewards/qp_<task>``. Each function reads
        the dataset's ``prompt`` (raw query) and ``target`` columns, and the exact output
        text from the ``qp_output`` rollout field when present (else the decoded completion).
        """
        funcs = []
        for t in self.tasks:
            funcs.append(self._task_function(t))
        return funcs, [self.weights[t] for t in self.tasks]

    def _task_function(self, task: str) -> Callable[..., list[float]]:
        def fn(prompts: Sequence[Any], completions: Sequence[Any], target: Sequence[str] | None = None,
               qp_output: Sequence[str] | None = None, query: Sequence[str] | None = None, **_: Any) -> list[float]:
            if target is None:
                raise ValueError("reward: the dataset needs a 'target' column (the gold qp-json/1 line)")
            queries = query if query is not None else prompts
            outs = qp_output if qp_output is not None else [_completion_text(c) for c in completions]
            return [self.scores(q, g, o)[task] for q, g, o in zip(queries, target, outs)]

        fn.__name__ = f"qp_{task}"
        fn.__qualname__ = fn.__name__
        return fn


def _completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):   # conversational completions
        return str(c[-1].get("content", ""))
    return str(c)
