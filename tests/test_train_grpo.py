"""Stage 3 (GRPO on TRL): constrained rollouts, task-isolated groups, the constrained policy's
log-probs, and a GRPO step that moves the policy towards the higher-reward rollouts."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from test_train_support import needs_trl, tiny_model, tiny_pairs, tiny_tokenizer, torch_threads

needs_trl()

import qpfast  # noqa: E402
from qpfast.prompt import encode_example, encode_prompt, prompt_template  # noqa: E402
from qpfast.train.config import GRPOStageConfig  # noqa: E402
from qpfast.train.grpo import (ConstrainedRollout, constrained_logps, replay_masks, run_grpo,  # noqa: E402
                               select_isolated, unpack_bitmask)
from qpfast.train.rewards import DEFAULT_WEIGHTS, QPReward  # noqa: E402

BUDGET = 96

# transformers 5 deprecates TrainingArguments.gradient_checkpointing, which TRL still sets
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def _vocab(tok, model):
    return qpfast.Vocab.from_tokenizer(tok, vocab_size=model.get_output_embeddings().weight.shape[0])


# -- masks ----------------------------------------------------------------------------------
def test_unpack_bitmask():
    words = torch.tensor([[0b1011, -1], [0, -(1 << 31)]], dtype=torch.int32)   # -1: all bits; bit 31 alone
    ok = unpack_bitmask(words, 40)
    assert ok.shape == (2, 40)
    assert ok[0].nonzero().flatten().tolist() == [0, 1, 3] + list(range(32, 40))
    assert ok[1].nonzero().flatten().tolist() == []
    assert unpack_bitmask(words, 64)[1].nonzero().flatten().tolist() == [63]


def test_replay_masks_allow_each_token_and_reject_others():
    tok, model = tiny_tokenizer(), tiny_model()
    vocab = _vocab(tok, model)
    q, t = tiny_pairs()[0]
    ids = encode_example(tok, q, t).target_ids
    masks = replay_masks(vocab, q, ids)
    ok = unpack_bitmask(torch.from_numpy(masks), vocab.vocab_size)
    assert all(ok[j, i] for j, i in enumerate(ids))
    assert ok.sum(1).min() >= 1
    bad = list(ids)
    bad[0] = 2                                                     # the end token first: never allowed
    with pytest.raises(ValueError, match="not allowed"):
        replay_masks(vocab, q, bad)


# -- task isolation -------------------------------------------------------------------------
TASKS4 = ("seg", "ner", "weight", "cat")


def _s(seg, ner, weight, cat):
    return {"seg": seg, "ner": ner, "weight": weight, "cat": cat}


def test_select_isolated_prefers_one_task_disagreement():
    scores = [_s(.5, 1, .5, 1), _s(.8, 1, .5, 1), _s(.5, 0, .2, 0), _s(.3, 1, .5, 1), _s(.5, 1, .5, 0), _s(.1, 0, 0, 0)]
    picks, task = select_isolated(scores, 3, TASKS4, random.Random(0))
    assert (picks, task) == ([0, 1, 3], "seg")             # agree on ner/weight/cat, differ on seg
    picks, task = select_isolated(scores, 2, ("cat", "ner"), random.Random(0))
    # on (cat, ner): {0,1,3} share ner=1 and differ... no: they agree on both; {0,4} differ on cat only
    assert task in ("cat", "ner") and len(picks) == 2
    vals = {(scores[i]["cat"], scores[i]["ner"]) for i in picks}
    assert len(vals) == 2


def test_select_isolated_thins_evenly_and_fills_with_replacement():
    big = [_s(v, 1, 1, 1) for v in (.9, .1, .5, .3, .7, .2)] + [_s(.4, 0, 0, 0)]
    picks, task = select_isolated(big, 3, TASKS4, random.Random(0))
    assert task == "seg" and len(set(picks)) == 3
    got = sorted(big[i]["seg"] for i in picks)
    assert got[0] == .1 and got[-1] == .9                  # extremes kept
    small = [_s(1, 1, 1, 1), _s(1, 1, 1, 0), _s(0, 0, 1, 1), _s(.5, .5, .5, .5)]
    picks, task = select_isolated(small, 4, TASKS4, random.Random(3))
    assert task == "cat" and len(picks) == 4 and set(picks) == {0, 1}
    assert picks == select_isolated(small, 4, TASKS4, random.Random(3))[0]       # seeded


def test_select_isolated_falls_back_to_plain_groups():
    same = [_s(.5, .5, .5, .5)] * 5
    assert select_isolated(same, 3, TASKS4, random.Random(0)) == ([0, 1, 2], None)
    multi = [_s(0, 0, 0, 0), _s(1, 1, 0, 0), _s(0, 1, 1, 0), _s(1, 0, 0, 1)]     # every pair differs on 2+ tasks
    assert select_isolated(multi, 2, TASKS4, random.Random(0)) == ([0, 1], None)
    with pytest.raises(ValueError):
        select_isolated(same[:2], 3, TASKS4, random.Random(0))


# -- rollouts and the constrained policy ----------------------------------------------------------
def _rollouts(tok, model, queries, per_query, seed=0):
    gold = dict(tiny_pairs())
    r = ConstrainedRollout(tok, gold, QPReward(), oversample=1.0, isolate=False, max_new_tokens=BUDGET, seed=seed)
    return r.generate(model, queries, per_query)


def test_rollouts_are_valid_and_replayable():
    tok, model = tiny_tokenizer(), tiny_model(seed=5)
    queries = [q for q, _ in tiny_pairs()[:3]]
    model.train()
    groups, vocab = _rollouts(tok, model, queries, 3)
    assert model.training                                   # the engine's eval() is undone
    for q, group in zip(queries, groups):
        assert len(group) == 3
        for text, ids in group:
            qpfast.parse(text, q, strict=True)
            assert ids[-1] in vocab.end_ids and len(ids) <= BUDGET
            replay_masks(vocab, q, ids, max_tokens=BUDGET)
    again, _ = _rollouts(tok, model, queries, 3)
    assert again == groups                                  # seeded sampling


def test_constrained_logps_match_brute_force():
    tok, model = tiny_tokenizer(), tiny_model(seed=6)
    queries = [q for q, _ in tiny_pairs()[3:5]]
    groups, vocab = _rollouts(tok, model, queries, 2, seed=1)
    prompts, comps, masks = [], [], []
    for q, group in zip(queries, groups):
        for _, ids in group:
            prompts.append(encode_prompt(tok, q).prompt_ids)
            comps.append(ids)
            masks.append(replay_masks(vocab, q, ids, max_tokens=BUDGET))
    width = max(len(c) for c in comps)
    allowed = torch.full((len(comps), width, vocab.words), -1, dtype=torch.int32)
    for i, m in enumerate(masks):
        allowed[i, :len(m)] = torch.from_numpy(m)
    prefix = prompt_template(tok).prefix_ids
    with torch.no_grad():
        lp, ent = constrained_logps(model, prefix, prompts, comps, allowed, temperature=0.7, compute_entropy=True)
        free, _ = constrained_logps(model, prefix, prompts, comps, None)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            ids = torch.tensor([p + c])
            logits = model(input_ids=ids).logits[0, len(p) - 1:len(p) - 1 + len(c)].float()
            ok = unpack_bitmask(torch.from_numpy(masks[i]), logits.shape[-1])
            want = torch.log_softmax((logits / 0.7).masked_fill(~ok, float("-inf")), -1)
            tgt = torch.tensor(c)
            torch.testing.assert_close(lp[i, :len(c)], want.gather(1, tgt[:, None])[:, 0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(free[i, :len(c)], torch.log_softmax(logits, -1).gather(1, tgt[:, None])[:, 0],
                                       atol=1e-4, rtol=1e-4)
            forced = ok.sum(1) == 1                          # a forced token has log π_c = 0 and entropy 0
            assert forced.any()
            assert lp[i, :len(c)][forced].abs().max() < 1e-5 and ent[i, :len(c)][forced].abs().max() < 1e-5
            assert (lp[i, :len(c)] >= free[i, :len(c)] - 1e-5).all()   # renormalizing never lowers a prob
            assert (lp[i, len(c):] == 0).all()


# -- a GRPO step ---------------------------------------------------------------------------------
def _capture(store: list):
    def hook(trainer):
        orig = trainer._generate_and_score_completions

        def wrapped(inputs):
            out = orig(inputs)
            store.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()})
            return out
        trainer._generate_and_score_completions = wrapped
    return hook


def _rows(batch):
    prompts = [r[m.bool()].tolist() for r, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
    comps = [r[m.bool()].tolist() for r, m in zip(batch["completion_ids"], batch["completion_mask"])]
    return prompts, comps


def test_grpo_step_moves_the_policy_towards_higher_reward(tmp_path):
    """After one GRPO step, Σ_i A_i · Δ log π_c(completion_i) > 0 on the step's own rollouts:
    the completions with positive advantage became more likely relative to the others (the
    first-order guarantee of a policy-gradient step; small lr so it holds exactly)."""
    tok, model = tiny_tokenizer(), tiny_model(seed=7)
    before = copy.deepcopy(model)
    store: list = []
    cfg = GRPOStageConfig(max_steps=1, num_generations=4, queries_per_step=2, oversample=2.0, lr=1e-4,
                          logging_steps=1, max_new_tokens=BUDGET)
    res = run_grpo(model, tok, list(tiny_pairs()[:2]), cfg, DEFAULT_WEIGHTS, str(tmp_path), seed=0,
                   trainer_hook=_capture(store), log=lambda s: None)
    assert res.steps == 1 and len(store) == 1 and len(res.rewards) == 1
    batch = store[0]
    prompts, comps = _rows(batch)
    assert len(comps) == 8
    adv = batch["advantages"].float()
    assert adv.abs().sum() > 0.5
    prefix = prompt_template(tok).prefix_ids
    with torch.no_grad():
        lp0, _ = constrained_logps(before, prefix, prompts, comps, batch["qp_allowed"])
        lp1, _ = constrained_logps(model, prefix, prompts, comps, batch["qp_allowed"])
    delta = (lp1 - lp0).sum(1)
    assert delta.abs().max() > 0                            # the step changed the policy
    assert float((adv * delta).sum()) > 0, (adv.tolist(), delta.tolist())
    assert res.isolated_share >= 0.5


def test_grpo_trainer_logps_are_the_constrained_ones(tmp_path):
    """The log-probs inside TRL's loss are log π_c: with a zero learning rate the trainer's
    logged entropy and our constrained entropy agree, and masks travel with shuffled rows."""
    tok, model = tiny_tokenizer(), tiny_model(seed=8)
    store: list = []
    seen: list = []
    cfg = GRPOStageConfig(max_steps=1, num_generations=2, queries_per_step=2, oversample=1.0, isolate=False,
                          lr=0.0, logging_steps=1, max_new_tokens=BUDGET)

    def hook(trainer):
        _capture(store)(trainer)
        orig = trainer._get_per_token_logps_and_entropies

        def spy(model_, input_ids, attention_mask, logits_to_keep, **kw):
            out = orig(model_, input_ids, attention_mask, logits_to_keep, **kw)
            seen.append((input_ids.clone(), attention_mask.clone(), logits_to_keep, out[0].detach().clone(),
                         None if trainer._qp_allowed is None else trainer._qp_allowed.clone()))
            return out
        trainer._get_per_token_logps_and_entropies = spy

    run_grpo(model, tok, list(tiny_pairs()[5:7]), cfg, DEFAULT_WEIGHTS, str(tmp_path), seed=0,
             trainer_hook=hook, log=lambda s: None)
    assert seen and all(s[4] is not None for s in seen)     # every loss call had the masks
    prefix = prompt_template(tok).prefix_ids
    for input_ids, att, c, logps, allowed in seen:
        prompts = [r[m.bool()].tolist() for r, m in zip(input_ids[:, :-c], att[:, :-c])]
        comps = [r[m.bool()].tolist() for r, m in zip(input_ids[:, -c:], att[:, -c:])]
        with torch.no_grad():
            want, _ = constrained_logps(model, prefix, prompts, comps, allowed, completion_width=c)
        torch.testing.assert_close(logps, want, atol=1e-5, rtol=1e-5)
        # and they are not the unconstrained ones
        with torch.no_grad():
            free, _ = constrained_logps(model, prefix, prompts, comps, None, completion_width=c)
        assert (logps - free).abs().max() > 1e-3


def test_grpo_raises_the_reward_on_an_easy_setup(tmp_path):
    """Segmentation-only reward, four queries seen again and again, 20 GRPO steps from a
    random tiny model: the mean reward of the last ten steps is above that of the first ten
    (seeded: the same numbers every run)."""
    tok, model = tiny_tokenizer(), tiny_model(seed=9)
    pairs = list(tiny_pairs()[:4])
    cfg = GRPOStageConfig(max_steps=20, num_generations=8, queries_per_step=2, oversample=1.0, isolate=False,
                          lr=5e-3, epochs=100.0, logging_steps=1, max_new_tokens=BUDGET)
    res = run_grpo(model, tok, pairs, cfg, {"seg": 1.0}, str(tmp_path), seed=0, log=lambda s: None)
    r = res.rewards
    assert len(r) == 20
    assert np.mean(r[10:]) > np.mean(r[:10]) + 0.05, r
