"""The recipe end to end on the tiny config (`python -m qpfast.train --config tiny`): every
stage runs, is evaluated, and the exported model loads in qpfast's decoder and engine; config
handling; a resumed stage; reproducibility."""
from __future__ import annotations

import json
import shutil

import pytest

from bench_scripts import bench_module
from test_train_support import needs_trl, torch_threads

needs_trl()

import qpfast  # noqa: E402
from qpfast.evaluate import REPORT_KEYS  # noqa: E402
from qpfast.train.config import CONFIG_DIR, RecipeConfig, config_path  # noqa: E402
from qpfast.train.recipe import STAGES, parse_stages  # noqa: E402

SYSTEMS = ("legacy", "stage1", "stage2", "stage3")

# transformers 5 deprecates TrainingArguments.gradient_checkpointing, which TRL still sets
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from qpfast.train.__main__ import main
    out = tmp_path_factory.mktemp("tiny-recipe")
    with torch_threads(1):
        assert main(["--config", "tiny", "--out", str(out)]) == 0
    return out


def test_every_stage_ran_and_was_evaluated(tiny_run, capsys):
    m = json.loads((tiny_run / "metrics.json").read_text(encoding="utf-8"))
    for name in SYSTEMS:
        assert set(m[name]) == set(REPORT_KEYS) and m[name]["n"] == 8, name
        assert m[name]["invalid_rate"] == 0.0                 # constrained decoding: always valid
    assert set(m["timings"]) == set(STAGES) - {"export"} | {"total"}
    t = m["train"]
    assert t["stage1"]["steps"] == 3 and t["stage2"]["steps"] == 3 and t["stage3"]["steps"] == 2
    assert set(m["beats_legacy"]) == {"seg", "ner", "weight", "cat", "intent"}
    for d in ("data", "tokenizer", "stage1", "stage2", "stage3", "model", "eval"):
        assert (tiny_run / d).is_dir(), d
    assert not (tiny_run / "scratch").exists()
    for f in ("train.jsonl", "dev.jsonl", "test.jsonl", "stage1_pseudo.jsonl"):
        assert (tiny_run / "data" / f).is_file()
    assert len((tiny_run / "eval" / "stage3_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    assert "recipe qpfast-tiny" in (tiny_run / "train.log").read_text(encoding="utf-8")


def test_exported_model_loads_in_the_decoder_and_the_engine(tiny_run):
    from transformers import AutoConfig, AutoTokenizer
    model_dir = tiny_run / "model"
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "README.md", "metrics.json"):
        assert (model_dir / f).is_file(), f
    cfg = AutoConfig.from_pretrained(str(model_dir))
    assert cfg.model_type == "qwen3" and cfg.tie_word_embeddings and cfg.use_cache
    breaks = qpfast.Schema(seg_breaks_at_spaces=True)           # tiny.toml's [schema] overrides
    for d in ("stage1", "stage2", "stage3", "model"):
        assert qpfast.model_schema(tiny_run / d) == breaks, d
    assert str(cfg.dtype).endswith("bfloat16")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = qpfast.Vocab.from_tokenizer(tok, vocab_size=cfg.vocab_size)
    m = qpfast.Matcher(vocab, "兰蔻小黑瓶适合什么肤质")
    assert not m.is_finished() and m.remaining_min_tokens() > 0
    with torch_threads(1):
        from qpfast.engine import Engine
        eng = Engine(model=str(model_dir))
        assert eng.schema == breaks
        queries = ["兰蔻小黑瓶适合什么肤质", "周末 上海 去哪玩", "iphone 15 pro max 和 华为 mate60 哪个好"]
        for q, r in zip(queries, eng.generate(queries)):
            assert r.error is None
            assert qpfast.parse(r.raw, q, breaks, strict=True).to_dict() == r.to_dict()
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "| legacy pipeline" in card and "after stage 3" in card and "## Limits" in card
    assert "jieba's 2000 most frequent words" in card          # the tiny stream swaps in dictionary words
    assert "topic word of the legacy pipeline's keyword table" in card   # ... and plants keywords


def test_a_stage_can_be_rerun_alone(tiny_run, tmp_path):
    from qpfast.train.recipe import run_recipe
    out = tmp_path / "resume"
    shutil.copytree(tiny_run, out)
    before = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    with torch_threads(1):
        m = run_recipe("tiny", out, "stage1", log=lambda s: None)
    assert m["stage1"] == before["stage1"]                     # seeded: the same model, the same scores
    weights = "stage1/model.safetensors"
    assert (out / weights).read_bytes() == (tiny_run / weights).read_bytes()
    assert m["legacy"] == before["legacy"] and m["stage3"] == before["stage3"]
    shutil.rmtree(out / "stage1")
    with pytest.raises(FileNotFoundError, match="stage1"):
        run_recipe("tiny", out, "stage2", log=lambda s: None)


def test_stage1_masks_fields_in_its_gold_share_only(tiny_run, tmp_path, monkeypatch):
    """`stage1.gold_mask_fields`: the gold examples of stage 1's mix come with those fields
    masked, the pseudo-labelled ones without; `field_weights` reaches the SFT stage."""
    from qpfast.data import read_jsonl
    from qpfast.train import sft
    from qpfast.train.recipe import run_recipe

    out = tmp_path / "masked"
    shutil.copytree(tiny_run, out)
    text = (CONFIG_DIR / "tiny.toml").read_text(encoding="utf-8")
    cfg = tmp_path / "tiny_masked.toml"
    cfg.write_text(text.replace("[stage1]\n", '[stage1]\ngold_mask_fields = ["cat"]\nfield_weights = {cat = 2.5}\n'),
                   encoding="utf-8")
    seen = {}
    real = sft.run_sft

    def spy(model, tok, pairs, c, *a, **kw):
        seen["pairs"], seen["cfg"] = list(pairs), c
        return real(model, tok, pairs, c, *a, **kw)

    monkeypatch.setattr(sft, "run_sft", spy)
    with torch_threads(1):
        run_recipe(str(cfg), out, "stage1", log=lambda s: None)
    gold = {r["query"] for r in read_jsonl(out / "data" / "train.jsonl")}
    pairs = seen["pairs"]
    assert len(pairs) == 32 and seen["cfg"].field_weights == {"cat": 2.5}
    assert sum(p[0] in gold for p in pairs) == 8               # gold_share 0.25 of 32
    for p in pairs:
        assert (tuple(p[2]) if len(p) > 2 else ()) == (("cat",) if p[0] in gold else ())
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "stage 1: 32 examples (25% gold, gold ['cat'] masked, field loss weights {'cat': 2.5})" in log


def test_stage2_mixes_in_gold_with_synthetic_entity_values(tiny_run):
    from qpfast.data import read_jsonl
    synth = list(read_jsonl(tiny_run / "data" / "train_synth.jsonl"))
    assert len(synth) == 16
    for r in synth:
        qpfast.parse(r["target"], r["query"], strict=True)
    log = (tiny_run / "train.log").read_text(encoding="utf-8")
    assert "stage 2: 24 gold examples (6 with synthetic entity values, 6 rewritten)" in log
    aug = list(read_jsonl(tiny_run / "data" / "train_aug.jsonl"))
    assert len(aug) == 12 and {tuple(r["mask"]) for r in aug} <= {(), ("intent",)}
    for r in aug:
        qpfast.parse(r["target"], r["query"], strict=True)
    assert "stage 3: 8 queries (2 with synthetic entity values)" in log


def test_configs_load_and_reject_typos(tmp_path):
    assert config_path("tiny") == CONFIG_DIR / "tiny.toml"
    default = RecipeConfig.load("default")
    tiny = RecipeConfig.load(CONFIG_DIR / "tiny.toml")
    assert tiny.model.hidden < default.model.hidden
    assert default.model.dtype in ("float32", "bfloat16")
    assert RecipeConfig.from_dict({"stage1": {"lr": 1}}).stage1.lr == 1.0
    assert RecipeConfig.from_dict({}).stage1.gold_share == RecipeConfig().stage1.gold_share
    with pytest.raises(ValueError, match="unknown key"):
        RecipeConfig.from_dict({"stage1": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match="unknown task"):
        RecipeConfig.from_dict({"rewards": {"sentiment": 1.0}})
    with pytest.raises(TypeError, match="stage3.isolate"):
        RecipeConfig.from_dict({"stage3": {"isolate": "yes"}})
    with pytest.raises(ValueError, match="synth_share"):
        RecipeConfig.from_dict({"stage2": {"synth_share": 0.5}})           # no synthetic examples
    with pytest.raises(ValueError, match="synth_share"):
        RecipeConfig.from_dict({"data": {"n_synth": 10}, "stage2": {"synth_share": 2}})
    with pytest.raises(ValueError, match="stage3.synth_share"):
        RecipeConfig.from_dict({"stage3": {"synth_share": 0.5}})
    assert default.data.n_synth > 0 and 0 < default.stage2.synth_share < 1
    with pytest.raises(ValueError, match="stage2.aug_share: needs data.n_aug"):
        RecipeConfig.from_dict({"stage2": {"aug_share": 0.5}})
    with pytest.raises(ValueError, match="stage1.aug_share"):
        RecipeConfig.from_dict({"data": {"n_aug": 10}, "stage1": {"aug_share": 0.5}})
    with pytest.raises(ValueError, match="synth_share \\+ aug_share"):
        RecipeConfig.from_dict({"data": {"n_aug": 10, "n_synth": 10}, "stage2": {"aug_share": 0.6, "synth_share": 0.6}})
    with pytest.raises(ValueError, match="tokenizer.pretokenize"):
        RecipeConfig.from_dict({"tokenizer": {"pretokenize": "letters"}})
    assert RecipeConfig.from_dict({"tokenizer": {"pretokenize": "chars"}}).tokenizer.pretokenize == "chars"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="data.dict_words"):
            RecipeConfig.from_dict({"data": {"dict_words": bad}})
    for section, key in [("data", "splice"), ("data", "keyword_share"), ("data", "word_share"),
                         ("data", "keyword_plant"), ("data", "keyword_context"), ("data", "perturb"),
                         ("data", "synth_values"), ("stage1", "gold_share"), ("stage2", "aug_share")]:
        with pytest.raises(ValueError, match=rf"{section}\.{key}: must be in \[0, 1\]"):
            RecipeConfig.from_dict({section: {key: 1.5}})
    with pytest.raises(ValueError, match="stage2.bucket_batches: must be >= 1"):
        RecipeConfig.from_dict({"stage2": {"bucket_batches": 0}})
    with pytest.raises(ValueError, match="data.keyword_context: needs data.keyword_share"):
        RecipeConfig.from_dict({"data": {"keyword_context": 0.5}})
    assert RecipeConfig.from_dict({"data": {"keyword_context": 0.5, "keyword_share": 0.2}}).data.keyword_context == 0.5
    assert RecipeConfig.from_dict({}).output_schema() == qpfast.DEFAULT_SCHEMA
    assert RecipeConfig.from_dict({"schema": {"seg_breaks_at_spaces": True}}).output_schema() == \
        qpfast.Schema(seg_breaks_at_spaces=True)
    assert RecipeConfig.from_dict({"schema": {"weight_levels": 3}}).output_schema().weight_levels == 3
    with pytest.raises(ValueError, match="schema: schema JSON has unknown keys"):
        RecipeConfig.from_dict({"schema": {"seg_breaks_at_space": True}})
    with pytest.raises(ValueError, match="schema: seg_breaks_at_spaces: expected bool"):
        RecipeConfig.from_dict({"schema": {"seg_breaks_at_spaces": "yes"}})
    with pytest.raises(ValueError, match="schema: expected a table"):
        RecipeConfig.from_dict({"schema": 1})
    with pytest.raises(FileNotFoundError):
        config_path(tmp_path / "nope.toml")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"seed": 3, "model": {"layers": 2}}), encoding="utf-8")
    c = RecipeConfig.load(p)
    assert c.seed == 3 and c.model.layers == 2


def test_parse_stages():
    assert parse_stages(None) == list(STAGES[:-1]) == parse_stages("all") and STAGES[-1] == "export"
    assert parse_stages("3,1") == ["stage1", "stage3"]
    assert parse_stages("export") == ["export"] and parse_stages("3,export") == ["stage3"]
    assert parse_stages(["tokenizer", "data"]) == ["data", "tokenizer"]
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("stage4")


def test_cli_errors(capsys):
    from qpfast.train.__main__ import main
    assert main(["--config", "no-such-config"]) == 2
    assert "no-such-config" in capsys.readouterr().err
    assert main(["--config", "tiny", "--stages", "bogus"]) == 2


def test_export_stage_averages_stage3_toward_stage1(tiny_run, tmp_path):
    """``--stages export`` with ``stage3.average_stage1``: the shipped weights are the
    interpolation, the policy before averaging is evaluated too, the card shows both."""
    import torch
    from safetensors.torch import load_file
    from qpfast.train.__main__ import main
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = RecipeConfig.load(config_path("tiny")).to_dict()
    cfg["stage3"]["average_stage1"] = 0.25
    cfg_path = tmp_path / "tiny-avg.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    with torch_threads(1):
        assert main(["--config", str(cfg_path), "--out", str(run), "--stages", "export"]) == 0
    m = json.loads((run / "model" / "metrics.json").read_text(encoding="utf-8"))
    assert set(m["stage3_policy"]) == set(REPORT_KEYS) and m["stage3_policy"]["n"] == 8
    s1, s3 = load_file(str(run / "stage1" / "model.safetensors")), load_file(str(run / "stage3" / "model.safetensors"))
    out = load_file(str(run / "model" / "model.safetensors"))
    dtype = next(iter(out.values())).dtype
    for k, v in out.items():
        want = (0.75 * s3[k].float() + 0.25 * s1[k].float()).to(dtype)
        torch.testing.assert_close(v, want, msg=k)
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    assert "before averaging" in card and "shipped" in card
    with pytest.raises(ValueError, match="average_stage1"):
        RecipeConfig.from_dict({"stage3": {"average_stage1": 1.0}})
    with pytest.raises(ValueError, match="average_stage1_layers"):
        RecipeConfig.from_dict({"model": {"layers": 2}, "stage3": {"average_stage1_layers": [0.1]}})
    with pytest.raises(ValueError, match="average_stage1_layers"):
        RecipeConfig.from_dict({"model": {"layers": 2}, "stage3": {"average_stage1_layers": [0.1, 1.0]}})


def test_branch_stage_exports_a_soup(tiny_run, tmp_path):
    """``--stages branch`` with ``soup.weight``: a second stage 2 (anchored, category masked)
    and stage 3 from the same stage 1, both evaluated; the export = (1 - w) * stage 3 (after
    its own averaging toward stage 1) + w * the branch's stage 3."""
    import torch
    from safetensors.torch import load_file
    from qpfast.train.__main__ import main
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = RecipeConfig.load(config_path("tiny")).to_dict()
    cfg["stage3"]["average_stage1"] = 0.25
    cfg["soup"] = {"weight": 0.4, "anchor_decay": 5.0, "mask_fields": ["cat"]}
    cfg_path = tmp_path / "tiny-soup.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    with torch_threads(1):
        assert main(["--config", str(cfg_path), "--out", str(run), "--stages", "branch"]) == 0
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for name in ("branch_stage2", "branch_stage3", "stage3_policy", "stage3"):
        assert set(m[name]) == set(REPORT_KEYS) and m[name]["n"] == 8, name
    assert m["train"]["branch_stage2"]["steps"] == m["train"]["stage2"]["steps"]
    s1, s3 = load_file(str(run / "stage1" / "model.safetensors")), load_file(str(run / "stage3" / "model.safetensors"))
    b2, b3 = load_file(str(run / "branch2" / "model.safetensors")), load_file(str(run / "branch3" / "model.safetensors"))
    s2 = load_file(str(run / "stage2" / "model.safetensors"))
    assert any(not torch.equal(b2[k], s2[k]) for k in s2)   # the branch trained on its own
    out = load_file(str(run / "model" / "model.safetensors"))
    dtype = next(iter(out.values())).dtype
    for k, v in out.items():
        want = (0.6 * (0.75 * s3[k].float() + 0.25 * s1[k].float()) + 0.4 * b3[k].float()).to(dtype)
        torch.testing.assert_close(v, want, msg=k)
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    assert "soup branch: after stage 3" in card and "anchor_decay 5" in card
    assert parse_stages("3,branch,export") == ["stage3", "branch"]
    with pytest.raises(ValueError, match="soup.weight"):
        RecipeConfig.from_dict({"soup": {"weight": 1.0}})
    with pytest.raises(ValueError, match="soup.mask_fields"):
        RecipeConfig.from_dict({"soup": {"mask_fields": ["nope"]}})


def test_parallel_soup_branch_matches_the_serial_one(tiny_run, tmp_path):
    """``soup.parallel``: stages 2-3 here while a second process (``--stages branch
    --no-export``) trains the branch from the same stage 1; then one export. The branch's
    weights equal a serial run's (same seed and threads), and metrics.json holds both."""
    import torch
    from safetensors.torch import load_file
    from qpfast.train.__main__ import main
    cfg = RecipeConfig.load(config_path("tiny")).to_dict()
    cfg["threads"] = 1
    cfg["soup"] = {"weight": 0.5, "anchor_decay": 5.0, "mask_fields": ["cat"]}
    runs = {}
    for mode in ("serial", "parallel"):
        run = tmp_path / mode
        shutil.copytree(tiny_run, run)
        cfg["soup"]["parallel"] = mode == "parallel"
        cfg_path = tmp_path / f"{mode}.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        with torch_threads(1):
            assert main(["--config", str(cfg_path), "--out", str(run), "--stages", "stage2,stage3,branch"]) == 0
        runs[mode] = run
    m = json.loads((runs["parallel"] / "metrics.json").read_text(encoding="utf-8"))
    for name in ("stage2", "branch_stage2", "branch_stage3", "stage3"):
        assert set(m[name]) == set(REPORT_KEYS), name
    assert {"stage2", "stage3", "branch", "export"} <= set(m["timings"])
    assert "second process" in (runs["parallel"] / "train.log").read_text(encoding="utf-8")
    for part in ("branch3", "stage3", "model"):
        a = load_file(str(runs["serial"] / part / "model.safetensors"))
        b = load_file(str(runs["parallel"] / part / "model.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    assert RecipeConfig.from_dict({"soup": {"parallel": True}}).soup.parallel is True


def test_parallel_soup_branch_process_stops_when_a_stage_fails(tiny_run, tmp_path, monkeypatch):
    """A failing stage 2 must not leave the branch's process running on the cores."""
    import subprocess
    import sys
    from qpfast.train.recipe import Recipe
    procs = []

    def start(self):
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return procs[-1]

    def fail(self):
        raise RuntimeError("stage 2 broke")

    monkeypatch.setattr(Recipe, "_start_branch_process", start)
    monkeypatch.setattr(Recipe, "stage_stage2", fail)
    cfg = RecipeConfig.load(config_path("tiny"))
    cfg.soup.weight, cfg.soup.parallel = 0.5, True
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(RuntimeError, match="stage 2 broke"):
        Recipe(cfg, run, log=lambda s: None).run(["stage2", "stage3", "branch"])
    assert len(procs) == 1 and procs[0].poll() is not None      # killed and reaped


def test_average_weights_per_layer():
    import torch
    from test_train_support import tiny_model
    from qpfast.train.recipe import average_weights_
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    n = len(a.model.layers)
    sa, sb = {k: v.clone() for k, v in a.state_dict().items()}, b.state_dict()
    lw = [0.1 * (i + 1) for i in range(n)]
    average_weights_(a, b, 0.5, lw)
    for k, v in a.state_dict().items():
        x = lw[int(k.split(".")[2])] if k.startswith("model.layers.") else 0.5
        torch.testing.assert_close(v, (1 - x) * sa[k] + x * sb[k], msg=k)
    with pytest.raises(ValueError, match="one weight per decoder layer"):
        average_weights_(a, b, 0.5, lw + [0.1])
    with pytest.raises(ValueError, match=r"layer_weights\[0\]"):
        average_weights_(a, b, 0.5, [1.5] * n)


def test_average_weights_counts_tied_weights_once():
    import torch
    from test_train_support import tiny_model
    from qpfast.train.recipe import average_weights_
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    assert a.get_input_embeddings().weight.data_ptr() == a.get_output_embeddings().weight.data_ptr()
    ea, eb = a.get_input_embeddings().weight.clone(), b.get_input_embeddings().weight.clone()
    na = a.model.norm.weight.clone()
    average_weights_(a, b, 0.5)
    torch.testing.assert_close(a.get_input_embeddings().weight, 0.5 * ea + 0.5 * eb)
    torch.testing.assert_close(a.model.norm.weight, 0.5 * na + 0.5 * b.model.norm.weight)
    with pytest.raises(ValueError, match="w"):
        average_weights_(a, b, 1.5)


def test_export_sweep_builds_the_recipe_average_and_scores_it(tiny_run, tmp_path, capsys):
    """bench/export_sweep.py: the candidate it builds is the recipe's own average of the
    run's checkpoints, and each candidate gets one scored row per data file."""
    import torch
    from safetensors.torch import load_file
    sweep = bench_module("export_sweep")
    assert sweep.parse_w("0.5") == (0.5, []) and sweep.parse_w("0.2/0.3,0.1") == (0.2, [0.3, 0.1])
    out = sweep.build(tiny_run, 0.25, [], 0.0, tmp_path / "m")
    s1, s3 = load_file(str(tiny_run / "stage1" / "model.safetensors")), load_file(str(tiny_run / "stage3" / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    for k, v in got.items():
        torch.testing.assert_close(v, (0.75 * s3[k].float() + 0.25 * s1[k].float()).to(v.dtype), msg=k)
    from qpfast.train.recipe import export_model
    with pytest.raises(ValueError, match="stage1: required"):
        export_model(tiny_run / "stage3", w=0.25)
    with pytest.raises(ValueError, match="branch3: required"):
        export_model(tiny_run / "stage3", soup=0.5)
    dev = str(tiny_run / "data" / "dev.jsonl")
    with torch_threads(1):
        assert sweep.main(["--run", str(tiny_run), "--data", dev, "--w", "0", "0.5", "--soup", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| dev.jsonl |" in line]
    assert len(rows) == 2 and rows[0].startswith("| 0 | - | 0 |") and rows[1].startswith("| 0.5 | - | 0 |")
