"""Stages 1-2 (SFT on TRL): the loss falls on repeated examples, only target tokens are learned,
the shared-prefix forward is exact, the stage-1 mix is what the config says."""
from __future__ import annotations

import pytest
import torch

from test_train_support import needs_trl, tiny_model, tiny_pairs, tiny_tokenizer, torch_threads

needs_trl()

from qpfast.prompt import encode_example, prompt_template  # noqa: E402
from qpfast.train.config import SFTStageConfig  # noqa: E402
from qpfast.train.prefix import cache_kwarg, prefix_cache, shared_prefix_len  # noqa: E402
from qpfast.train.sft import field_value_tokens, mix_stage1, run_sft, sft_dataset  # noqa: E402

# transformers 5 deprecates TrainingArguments.gradient_checkpointing, which TRL still sets
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def _cfg(**kw) -> SFTStageConfig:
    base = dict(batch_size=4, lr=3e-3, warmup_ratio=0.0, logging_steps=1, max_steps=4)
    base.update(kw)
    return SFTStageConfig(**base)


def test_loss_decreases_on_repeated_examples(tmp_path):
    model = tiny_model(seed=1)
    pairs = list(tiny_pairs()[:4]) * 10                     # a handful of examples, seen again and again
    res = run_sft(model, tiny_tokenizer(), pairs, _cfg(max_steps=10), str(tmp_path), seed=0, log=lambda s: None)
    assert res.steps == 10 and len(res.losses) == 10
    assert res.losses[-1] < res.losses[0] - 0.3, res.losses
    assert sum(res.losses[5:]) < sum(res.losses[:5])
    assert "forward" not in vars(model)                     # TRL's fused-head patch is removed


def test_shared_prefix_training_is_exact(tmp_path):
    pairs = list(tiny_pairs()[4:12])
    runs = []
    for share in (True, False):
        model = tiny_model(seed=2)
        res = run_sft(model, tiny_tokenizer(), pairs, _cfg(max_steps=3, share_prefix=share), str(tmp_path / str(share)),
                      seed=0, log=lambda s: None)
        runs.append((res.losses, model.state_dict()))
    (la, sa), (lb, sb) = runs
    assert la == pytest.approx(lb, abs=1e-5)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=2e-5, rtol=1e-4)


def test_logged_loss_is_the_mean_target_cross_entropy(tmp_path):
    """The first logged loss is Hugging Face's own causal-LM loss over the batch's target tokens."""
    tok, model = tiny_tokenizer(), tiny_model(seed=4)
    pairs = list(tiny_pairs()[20:24])
    exs = [encode_example(tok, q, t) for q, t in pairs]
    n = max(len(e.input_ids) for e in exs)
    ids = torch.zeros((4, n), dtype=torch.long)
    att = torch.zeros((4, n), dtype=torch.long)
    lab = torch.full((4, n), -100)
    for i, e in enumerate(exs):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        att[i, :len(e.input_ids)] = 1
        lab[i, :len(e.labels)] = torch.tensor(e.labels)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=att, labels=lab).loss.item()
    res = run_sft(model, tok, pairs, _cfg(max_steps=1, batch_size=4), str(tmp_path), seed=0, log=lambda s: None)
    assert res.losses[0] == pytest.approx(want, abs=1e-4)


def test_grouped_batches_weigh_every_target_token_the_same(tmp_path, monkeypatch):
    """With `group_by_length` the loss is the batch's summed target cross-entropy over
    rows x the dataset's mean target tokens per row, not over the batch's own token count."""
    from qpfast.train import sft

    tok, model = tiny_tokenizer(), tiny_model(seed=6)
    pairs = list(tiny_pairs()[30:38])
    exs = [encode_example(tok, q, t) for q, t in pairs]
    n_tgt = [sum(x != -100 for x in e.labels) for e in exs]
    nll = []
    with torch.no_grad():
        for e in exs:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
            lab = torch.tensor(e.labels[1:])
            nll.append(torch.nn.functional.cross_entropy(logits[lab != -100], lab[lab != -100], reduction="sum").item())
    first: list[int] = []
    real = sft.PrefixSFTTrainer.compute_loss

    def spy(self, model, inputs, *a, **kw):
        if not first:
            for row, n in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].sum(1).tolist()):
                first.append([e.input_ids for e in exs].index(row[:n]))
        return real(self, model, inputs, *a, **kw)

    monkeypatch.setattr(sft.PrefixSFTTrainer, "compute_loss", spy)
    res = run_sft(model, tok, pairs, _cfg(max_steps=1, batch_size=4, group_by_length=True), str(tmp_path), seed=0,
                  log=lambda s: None)
    assert len(first) == 4 and len(set(first)) == 4
    assert res.losses[0] == pytest.approx(sum(nll[i] for i in first) / (4 * sum(n_tgt) / 8), abs=1e-4)
    own = sum(nll[i] for i in first) / sum(n_tgt[i] for i in first)             # the batch's own count
    assert abs(res.losses[0] - own) > 1e-3


def test_prefix_cache_matches_the_full_forward():
    tok, model = tiny_tokenizer(), tiny_model(seed=3)
    exs = [encode_example(tok, q, t) for q, t in tiny_pairs()[:3]]
    p = exs[0].prefix_len
    assert p == len(prompt_template(tok).prefix_ids) and all(e.prefix_len == p for e in exs)
    n = max(len(e.input_ids) for e in exs)
    ids = torch.zeros((3, n), dtype=torch.long)
    att = torch.zeros((3, n), dtype=torch.long)
    for i, e in enumerate(exs):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        att[i, :len(e.input_ids)] = 1
    assert shared_prefix_len(ids, att, p) == p
    assert shared_prefix_len(ids, att, n) == 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=att).logits[:, p:]
        cache = prefix_cache(model, ids[:1, :p], 3)
        kw = {cache_kwarg(model): cache}
        part = model(input_ids=ids[:, p:], attention_mask=att, position_ids=torch.arange(p, n)[None].expand(3, -1),
                     **kw).logits
    mask = att[:, p:].bool()
    torch.testing.assert_close(part[mask], full[mask], atol=1e-4, rtol=1e-4)


def test_labels_cover_exactly_the_target_tokens():
    tok = tiny_tokenizer()
    pairs = list(tiny_pairs()[:5])
    ds = sft_dataset(tok, pairs)
    for row, (q, t) in zip(ds, pairs):
        ex = encode_example(tok, q, t)
        assert row["input_ids"] == ex.input_ids
        learned = [x for x in row["labels"] if x != -100]
        assert learned == ex.target_ids and learned[-1] == 2
        assert row["labels"][:len(ex.prompt_ids)] == [-100] * len(ex.prompt_ids)


def test_masked_fields_drop_exactly_their_value_tokens():
    import json
    tok = tiny_tokenizer()
    pairs = list(tiny_pairs()[:20])
    full = sft_dataset(tok, pairs)
    for fields in (["cat"], ["intent"], ["cat", "intent"]):
        masked = sft_dataset(tok, pairs, mask_fields=fields)
        for a, b, (q, t) in zip(full, masked, pairs):
            assert a["input_ids"] == b["input_ids"]
            start = len(encode_example(tok, q, t).prompt_ids)
            dropped = [i - start for i, (x, y) in enumerate(zip(a["labels"], b["labels"])) if x != y]
            assert all(y == -100 for x, y in zip(a["labels"], b["labels"]) if x != y)
            # the dropped tokens decode to exactly the fields' values, in target order
            values = "".join(json.loads(t)[f] for f in sorted(fields, key=t.index))
            assert tok.decode([a["labels"][start + i] for i in dropped]) == values
            assert dropped == field_value_tokens(tok, t, fields)
    with pytest.raises(ValueError, match="maskable"):
        field_value_tokens(tok, pairs[0][1], ["query"])
    with pytest.raises(ValueError, match="no string field"):
        field_value_tokens(tok, '{"cat":1}', ["cat"])
    with pytest.raises(ValueError, match="no list field 'seg'"):
        field_value_tokens(tok, '{"seg":"ab"}', ["seg"])
    with pytest.raises(ValueError, match="no list field 'ner'"):
        field_value_tokens(tok, '{"ner":[["a"', ["ner"])
    from qpfast.train.config import RecipeConfig
    with pytest.raises(ValueError, match="stage2.mask_fields"):
        RecipeConfig.from_dict({"stage2": {"mask_fields": ["query"]}})
    assert RecipeConfig.from_dict({"stage2": {"mask_fields": ["cat"]}}).stage2.mask_fields == ["cat"]
    assert RecipeConfig.from_dict({"stage1": {"field_weights": {"seg": 2.0}}}).stage1.field_weights == {"seg": 2.0}


@pytest.mark.parametrize("field", ["ner", "seg", "weight"])
def test_list_field_value_tokens_cover_the_list_and_nothing_else(field):
    """A list field's value tokens: every token overlapping the text between its brackets
    (the items and their separators), a contiguous run; tokens wholly outside stay."""
    import json
    tok = tiny_tokenizer()
    for q, t in tiny_pairs()[:40]:
        ids = field_value_tokens(tok, t, [field])
        inner = json.dumps(json.loads(t)[field], ensure_ascii=False, separators=(",", ":"))[1:-1]
        if not inner:  # an empty list: no value tokens
            assert ids == []
            continue
        assert ids == list(range(ids[0], ids[-1] + 1))
        enc = tok(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        a, b = enc[ids[0]][0], enc[ids[-1]][1]
        start = t.index('"%s":[' % field) + len(field) + 4
        assert t[start:start + len(inner)] == inner
        assert a <= start and b >= start + len(inner) and inner in t[a:b]
        # the neighbours lie wholly outside the value
        if ids[0] > 0:
            assert enc[ids[0] - 1][1] <= start
        if ids[-1] + 1 < len(enc):
            assert enc[ids[-1] + 1][0] >= start + len(inner)


def test_stage1_mix():
    pseudo = [(f"p{i}", "x") for i in range(100)]
    gold = [(f"g{i}", "y") for i in range(50)]
    mix = mix_stage1(pseudo, gold, 40, 0.25, seed=7)
    assert len(mix) == 40 and sum(q.startswith("g") for q, _ in mix) == 10
    assert mix == mix_stage1(pseudo, gold, 40, 0.25, seed=7)
    assert mix != mix_stage1(pseudo, gold, 40, 0.25, seed=8)
    allp = mix_stage1(pseudo, gold, 0, 0.2, seed=0)             # every pseudo pair + a 20% gold share
    assert sum(q.startswith("p") for q, _ in allp) == 100 and sum(q.startswith("g") for q, _ in allp) == 25
    assert len(mix_stage1(pseudo, gold, 10, 0.0, seed=0)) == 10


def test_per_example_masks_add_to_the_stage_mask():
    tok = tiny_tokenizer()
    pairs = list(tiny_pairs()[:6])
    triples = [(q, t, ("intent",) if i % 2 else ()) for i, (q, t) in enumerate(pairs)]
    got = sft_dataset(tok, triples, mask_fields=["cat"])
    for i, (row, (q, t)) in enumerate(zip(got, pairs)):
        want = sft_dataset(tok, [(q, t)], mask_fields=["cat", "intent"] if i % 2 else ["cat"])[0]
        assert row == want
    with pytest.raises(ValueError, match="maskable"):
        sft_dataset(tok, [(pairs[0][0], pairs[0][1], ("query",))])


def test_field_weights_weigh_exactly_their_value_tokens():
    tok = tiny_tokenizer()
    pairs = list(tiny_pairs()[:12])
    triples = [(q, t, ("cat",) if i % 3 == 0 else ()) for i, (q, t) in enumerate(pairs)]
    plain = sft_dataset(tok, triples)
    assert "loss_weights" not in plain.column_names
    assert "loss_weights" not in sft_dataset(tok, triples, field_weights={"cat": 1.0}).column_names
    got = sft_dataset(tok, triples, field_weights={"cat": 3.0, "intent": 0.5})
    for i, (a, b, (q, t)) in enumerate(zip(plain, got, pairs)):
        assert a["labels"] == b["labels"] and a["input_ids"] == b["input_ids"]
        w = b["loss_weights"]
        assert len(w) == len(b["labels"])
        start = len(encode_example(tok, q, t).prompt_ids)
        cat = {start + j for j in field_value_tokens(tok, t, ["cat"])}
        intent = {start + j for j in field_value_tokens(tok, t, ["intent"])}
        for k, x in enumerate(w):
            if k in intent:
                assert x == 0.5
            elif k in cat and i % 3:                         # a masked field keeps weight 1 (its label is -100)
                assert x == 3.0
            else:
                assert x == 1.0
    # a list field weighs the same way: exactly its value tokens
    for row, (q, t) in zip(sft_dataset(tok, pairs[:4], field_weights={"seg": 2.0}), pairs):
        start = len(encode_example(tok, q, t).prompt_ids)
        seg = {start + j for j in field_value_tokens(tok, t, ["seg"])}
        assert seg and {k for k, x in enumerate(row["loss_weights"]) if x == 2.0} == seg
        assert all(x in (1.0, 2.0) for x in row["loss_weights"])
    with pytest.raises(ValueError, match="maskable"):
        sft_dataset(tok, pairs[:1], field_weights={"query": 2.0})


def test_weighted_loss_is_the_weighted_target_cross_entropy(tmp_path, monkeypatch):
    """With `field_weights` the first logged loss is sum(w_i * nll_i) / (target tokens), the
    weights reaching the loss through `LossWeightCollator`."""
    from qpfast.train import sft

    tok, model = tiny_tokenizer(), tiny_model(seed=5)
    pairs = list(tiny_pairs()[40:44])
    exs = [encode_example(tok, q, t) for q, t in pairs]
    total, count = 0.0, 0
    with torch.no_grad():
        for (q, t), e in zip(pairs, exs):
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
            lab = torch.tensor(e.labels[1:])
            nll = torch.nn.functional.cross_entropy(logits, lab.clamp(min=0), reduction="none")
            w = torch.ones_like(nll)
            for j in field_value_tokens(tok, t, ["cat"]):
                w[len(e.prompt_ids) + j - 1] = 4.0
            sel = lab != -100
            total += float((nll * w)[sel].sum())
            count += int(sel.sum())
    seen: list[bool] = []
    real = sft.PrefixSFTTrainer.compute_loss

    def spy(self, model, inputs, *a, **kw):
        w = inputs.get("loss_weights")
        seen.append(w is not None and w.shape == inputs["labels"].shape and bool((w == 4.0).any()))
        return real(self, model, inputs, *a, **kw)

    monkeypatch.setattr(sft.PrefixSFTTrainer, "compute_loss", spy)
    res = run_sft(model, tok, pairs, _cfg(max_steps=1, batch_size=4, field_weights={"cat": 4.0}), str(tmp_path),
                  seed=0, log=lambda s: None)
    assert seen == [True]
    assert res.losses[0] == pytest.approx(total / count, abs=1e-4)
    unweighted = run_sft(tiny_model(seed=5), tok, pairs, _cfg(max_steps=1, batch_size=4), str(tmp_path / "u"),
                         seed=0, log=lambda s: None)
    assert res.losses[0] > unweighted.losses[0] + 1e-3


def test_loss_weight_collator_pads_with_zero():
    from qpfast.train.sft import LossWeightCollator

    def inner(rows):
        n = max(len(r["labels"]) for r in rows)
        assert all("loss_weights" not in r for r in rows)
        return {"labels": torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in rows])}

    out = LossWeightCollator(inner)([{"labels": [1, 2, 3], "loss_weights": [1.0, 2.0, 1.0]},
                                     {"labels": [4], "loss_weights": [5.0]}])
    assert out["loss_weights"].tolist() == [[1.0, 2.0, 1.0], [5.0, 0.0, 0.0]]


def test_field_weight_and_gold_mask_validation():
    from qpfast.train.config import RecipeConfig
    cfg = RecipeConfig.from_dict({"stage1": {"gold_mask_fields": ["cat"], "field_weights": {"cat": 3}}})
    assert cfg.stage1.gold_mask_fields == ["cat"] and cfg.stage1.field_weights == {"cat": 3.0}
    with pytest.raises(ValueError, match="stage1.gold_mask_fields / field_weights"):
        RecipeConfig.from_dict({"stage1": {"field_weights": {"weights": 2.0}}})
    with pytest.raises(ValueError, match="stage1.gold_mask_fields / field_weights"):
        RecipeConfig.from_dict({"stage1": {"gold_mask_fields": ["query"]}})
    with pytest.raises(ValueError, match=">= 0"):
        RecipeConfig.from_dict({"stage2": {"field_weights": {"cat": -1.0}}})
    with pytest.raises(ValueError, match="stage2.gold_mask_fields"):
        RecipeConfig.from_dict({"stage2": {"gold_mask_fields": ["cat"]}})


def test_frozen_layers_do_not_move_and_the_rest_does(tmp_path):
    from qpfast.train.sft import freeze_lower_layers
    model = tiny_model(seed=5)
    n = len(model.model.layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_sft(model, tiny_tokenizer(), list(tiny_pairs()[:8]), _cfg(max_steps=3, freeze_layers=1), str(tmp_path),
            seed=0, log=lambda s: None)
    after = model.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if k.startswith("model.layers.0."):
            assert not moved, k
        elif k.startswith("model.layers.") and "weight" in k and "norm" not in k:
            assert moved, k
    assert after["model.embed_tokens.weight"].ne(before["model.embed_tokens.weight"]).any()
    assert all(p.requires_grad for p in model.parameters())          # unfrozen after the stage
    assert freeze_lower_layers(model, n) == sum(p.numel() for p in model.model.layers.parameters())
    assert freeze_lower_layers(model, 0) == 0
    with pytest.raises(ValueError, match="n: must be in"):
        freeze_lower_layers(model, n + 1)
    from qpfast.train.config import RecipeConfig
    with pytest.raises(ValueError, match="stage2.freeze_layers"):
        RecipeConfig.from_dict({"model": {"layers": 2}, "stage2": {"freeze_layers": 3}})


def _distance(model, start) -> float:
    return sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters()) ** 0.5


def test_anchor_decay_pulls_toward_the_stage_start(tmp_path):
    pairs = list(tiny_pairs()[:8])
    moved = {}
    for rate in (0.0, 30.0, 1e12):
        model = tiny_model(seed=6)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        run_sft(model, tiny_tokenizer(), pairs, _cfg(max_steps=4, anchor_decay=rate), str(tmp_path / str(rate)),
                seed=0, log=lambda s: None)
        moved[rate] = _distance(model, start)
    assert moved[0.0] > 0.1
    assert 0 < moved[30.0] < 0.95 * moved[0.0], moved      # lr 3e-3 x 30: 9% of the way back each step
    assert moved[1e12] < 1e-5, moved                         # all the way back: the stage changes nothing


def test_anchor_decay_validation():
    from qpfast.train.config import RecipeConfig
    from qpfast.train.sft import AnchorDecay
    with pytest.raises(ValueError, match="stage2.anchor_decay"):
        RecipeConfig.from_dict({"stage2": {"anchor_decay": -1.0}})
    with pytest.raises(ValueError, match="rate"):
        AnchorDecay(tiny_model(seed=0), float("nan"))


def test_a_failed_stage_leaves_the_model_unfrozen_and_unpatched(tmp_path, monkeypatch):
    from qpfast.train import sft
    model = tiny_model(seed=7)

    def boom(self, *a, **kw):
        raise RuntimeError("out of memory, say")
    monkeypatch.setattr(sft.PrefixSFTTrainer, "train", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_sft(model, tiny_tokenizer(), list(tiny_pairs()[:4]), _cfg(freeze_layers=1), str(tmp_path),
                seed=0, log=lambda s: None)
    assert all(p.requires_grad for p in model.parameters())
    assert "forward" not in vars(model)


def test_group_by_length_batches_examples_of_similar_length(tmp_path, monkeypatch):
    """`group_by_length`: batches hold examples of about the same length (little padding),
    every example is still seen once per epoch, and the stage still learns."""
    from qpfast.train import sft

    tok = tiny_tokenizer()
    n_ids = {p: len(encode_example(tok, *p).input_ids) for p in tiny_pairs()}
    by_len = sorted(n_ids, key=n_ids.get)
    pairs = by_len[:64] + by_len[-64:]                      # 64 short and 64 long examples
    cut = n_ids[by_len[64]]
    assert cut < n_ids[by_len[-64]]

    def batches(group: bool, bucket_batches: int = 50):
        seen: list[list[int]] = []
        real = sft.PrefixSFTTrainer.compute_loss

        def spy(self, model, inputs, *a, **kw):
            seen.append([int(n) for n in inputs["attention_mask"].sum(1).tolist()])
            return real(self, model, inputs, *a, **kw)

        monkeypatch.setattr(sft.PrefixSFTTrainer, "compute_loss", spy)
        cfg = _cfg(max_steps=-1, epochs=1.0, batch_size=2, group_by_length=group, bucket_batches=bucket_batches)
        res = run_sft(tiny_model(seed=5), tok, pairs, cfg, str(tmp_path / f"{group}{bucket_batches}"), seed=0,
                      log=lambda s: None)
        monkeypatch.setattr(sft.PrefixSFTTrainer, "compute_loss", real)
        assert res.steps == 64 and sorted(n for b in seen for n in b) == sorted(n_ids[p] for p in pairs)
        assert sum(res.losses[-16:]) < sum(res.losses[:16])
        return seen

    mixed = lambda bs: sum(min(b) < cut <= max(b) for b in bs)                  # noqa: E731
    padded = lambda bs: sum(max(b) * len(b) for b in bs) / sum(map(sum, bs))  # noqa: E731
    grouped, shuffled = batches(True), batches(False)
    assert batches(True) == grouped                                           # the grouped order is seeded
    assert mixed(grouped) <= mixed(batches(True, bucket_batches=4)) <= 16        # buckets of 4 batches: <= 1 each
    # sorted within buckets of 50 batches: at most one mixed batch per bucket
    assert mixed(grouped) <= 4 < mixed(shuffled), (grouped, shuffled)
    assert padded(grouped) < padded(shuffled)
