"""The recipe: build the default model from scratch through all three stages.

    python -m qpfast.train --config default --out runs/default
    python -m qpfast.train --config tiny --out /tmp/tiny --stages stage2,stage3   # resume

Stages, in order (each reads what the previous ones wrote under OUT):

1. ``data``: the generated gold train/dev/test splits, the unlabelled stage-1 stream and
   its pseudo-labels by the legacy pipeline (``data/``); the legacy pipeline is scored on
   the eval split (the baseline row).
2. ``tokenizer``: the byte-level BPE trained on the training corpus (``tokenizer/``).
3. ``stage1``: a Qwen3 model initialized from scratch, SFT on pseudo-labels + a gold share
   (``stage1/``), then evaluated.
4. ``stage2``: SFT on gold (``stage2/``), evaluated.
5. ``stage3``: GRPO (``stage3/``); the result is exported in the shipping dtype with its
   model card (``model/``) and that exported model is evaluated.

Every evaluation is qpfast's own (`qpfast.evaluate.run_eval` over `qpfast.Engine`, greedy,
constrained): what ``qpfast eval --model DIR`` prints. ``metrics.json`` gathers the reports,
the training summaries and timings; ``config.json`` the resolved config. Seeded and
deterministic for a fixed seed and thread count.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..evaluate import REPORT_KEYS
from ..schema import save_model_schema
from .config import RecipeConfig, SFTStageConfig

__all__ = ["STAGES", "Recipe", "export_model", "run_recipe", "parse_stages"]

STAGES = ("data", "tokenizer", "stage1", "stage2", "stage3", "branch", "export")
#: The most the embedded default model's weights may weigh (MB).
MAX_SHIPPED_MB = 25.0
_ALIASES = {"1": "stage1", "2": "stage2", "3": "stage3", "all": None, "tok": "tokenizer"}
_TASK_KEYS = {"seg": "seg_f1", "ner": "ner_f1", "weight": "weight_f1", "cat": "cat_acc", "intent": "intent_f1"}


def parse_stages(spec: Optional[str | Sequence[str]]) -> list[str]:
    """``"stage2,stage3"`` / ``["2", "3"]`` / ``"all"`` / None -> stage names in recipe order.
    ``export`` (re-export stage 3's checkpoint) runs only when asked for, and not with stage 3
    or the branch, which export anyway."""
    everything = [s for s in STAGES if s != "export"]          # stage 3 / the branch export
    if spec is None:
        return everything
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: set[str] = set()
    for raw in items:
        s = raw.strip().lower()
        if not s:
            continue
        s = _ALIASES.get(s, s)
        if s is None:
            return everything
        if s not in STAGES:
            raise ValueError(f"stages: unknown stage {raw!r}; stages are {', '.join(STAGES)} (or all)")
        out.add(s)
    if not out:
        raise ValueError("stages: none given")
    if "stage3" in out or "branch" in out:
        out.discard("export")                           # stage 3 / the branch export anyway
    return [s for s in STAGES if s in out]


class Recipe:
    """One run of the recipe in `out_dir` (`run(stages)`)."""

    def __init__(self, cfg: RecipeConfig, out_dir: str | os.PathLike, *, log: Optional[Callable[[str], Any]] = None,
                 export_to: Optional[str | os.PathLike] = None, export: bool = True):
        self.cfg = cfg.validate()
        self.export = export              # False: the branch stage trains and evaluates only
        self.out = Path(out_dir)
        self.schema = cfg.output_schema()
        self.export_to = Path(export_to) if export_to is not None else None
        self._t0 = time.perf_counter()
        self._print = log if log is not None else (lambda s: print(s, flush=True))
        self._logfile = None

    # -- paths and bookkeeping ----------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self._t0:7.1f}s] {msg}"
        self._print(line)
        if self._logfile is not None:
            self._logfile.write(line + "\n")
            self._logfile.flush()

    def _metrics(self) -> dict:
        p = self.path("metrics.json")
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}

    def _save_metrics(self, m: dict) -> None:
        p = self.path("metrics.json")
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, p)

    @contextlib.contextmanager
    def _metrics_lock(self):
        """metrics.json is read, changed and written under this lock: the soup's branch may run
        in a second process (`soup.parallel`)."""
        import fcntl
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.path("metrics.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _update(self, **kv: Any) -> dict:
        with self._metrics_lock():
            m = self._metrics()
            for k, v in kv.items():
                if isinstance(v, dict) and isinstance(m.get(k), dict):
                    m[k].update(v)
                else:
                    m[k] = v
            self._save_metrics(m)
        return m

    def _require(self, *parts: str) -> Path:
        p = self.path(*parts)
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: run the stage that writes it first (stages: {', '.join(STAGES)})")
        return p

    # -- run ----------------------------------------------------------------------------
    def run(self, stages: Optional[Sequence[str]] = None) -> dict:
        """Runs `stages` (default: all) and returns metrics.json's content."""
        import torch

        stages = parse_stages(stages)
        self.out.mkdir(parents=True, exist_ok=True)
        _quiet_transformers()
        threads = torch.get_num_threads()
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        self.path("config.json").write_text(json.dumps(self.cfg.to_dict(), ensure_ascii=False, indent=2) + "\n",
                                            encoding="utf-8")
        child = None                      # the soup branch's process (soup.parallel)
        with open(self.path("train.log"), "a", encoding="utf-8") as f:
            self._logfile = f
            try:
                self.log(f"recipe {self.cfg.name}: stages {', '.join(stages)} -> {self.out} "
                         f"(torch threads {torch.get_num_threads()})")
                parallel = bool(self.cfg.soup.weight and self.cfg.soup.parallel and self.export
                                and "branch" in stages and "stage2" in stages)
                if parallel:
                    stages = [s for s in stages if s != "branch"]   # trained by a second process instead
                for s in stages:
                    if parallel and s == "stage2":
                        child = self._start_branch_process()        # stage 1 is done: the branch starts from it
                    t = time.perf_counter()
                    self.log(f"== {s}")
                    getattr(self, f"stage_{s}")()
                    dt = time.perf_counter() - t
                    self._update(timings={s: round(dt, 1)})
                    self.log(f"== {s} done in {dt:.1f} s")
                if child is not None:
                    self._finish_branch_process(child)
                with self._metrics_lock():
                    m = self._metrics()
                    m["timings"]["total"] = round(sum(v for k, v in m["timings"].items() if k in STAGES), 1)
                    self._save_metrics(m)
                self.log(f"done: {m['timings']}")
                return m
            finally:
                if child is not None and child.poll() is None:   # a stage failed: stop the branch too
                    child.kill()
                    child.wait()
                self._logfile = None
                torch.set_num_threads(threads)

    # -- stages -------------------------------------------------------------------------
    def stage_data(self) -> None:
        from ..data import unlabelled_queries, write_jsonl, write_splits
        from ..data.dictionary import common_words
        from ..evaluate import legacy_predictor, run_eval
        from ..legacy import legacy_pipeline

        d = self.cfg.data
        data = self.path("data")
        write_splits(data, d.n_train, d.n_dev, d.n_test, seed=d.seed, split_seed=d.split_seed)
        self.log(f"gold: train {d.n_train}, dev {d.n_dev}, test {d.n_test} -> {data}")
        if d.n_synth:
            from ..data import QueryGenerator
            gen = QueryGenerator("train", split_seed=d.split_seed, synth_values=d.synth_values)
            write_jsonl(data / "train_synth.jsonl", gen.iter_examples(d.n_synth, seed=d.seed + 1))
            self.log(f"gold with synthetic entity values: {d.n_synth} (slot probability {d.synth_values})")
        if d.n_aug:
            from ..data import augmented_examples
            write_jsonl(data / "train_aug.jsonl", ({**ex.to_record(), "mask": list(mask)} for ex, mask in
                                                   augmented_examples(d.n_aug, d.seed + 2, split_seed=d.split_seed)))
            self.log(f"rewritten gold (function words dropped, chunks swapped, same-category splices): {d.n_aug}")
        from ..legacy.category_rules import KEYWORDS
        keywords = {cat: [w for w, _ in words] for cat, words in KEYWORDS.items()}
        words, weights = common_words(d.dict_words) if d.word_share or d.keyword_context else (None, None)
        queries = list(unlabelled_queries(d.n_unlabelled, d.seed, split_seed=d.split_seed, perturb=d.perturb,
                                          splice_prob=d.splice, keywords=keywords, keyword_share=d.keyword_share,
                                          words=words, word_weights=weights, word_share=d.word_share,
                                          keyword_plant=d.keyword_plant, keyword_context=d.keyword_context))
        legacy = legacy_pipeline("train", d.split_seed)
        t = time.perf_counter()
        pseudo = []
        for q in queries:
            out = legacy.output(q)
            if out:
                pseudo.append({"query": q, "target": out})
        write_jsonl(data / "stage1_pseudo.jsonl", pseudo)
        self.log(f"stream: {len(queries)} queries, {len(pseudo)} pseudo-labelled by the legacy pipeline "
                 f"({time.perf_counter() - t:.1f} s)")
        if self.cfg.eval.legacy:
            rep = run_eval(self._eval_file(), legacy_predictor("train", d.split_seed), schema=self.schema,
                           limit=self.cfg.eval.n or None)
            self._report("legacy", rep)

    def stage_tokenizer(self) -> None:
        from ..prompt import build_instruction
        from .tokenizer import corpus_texts, save_tokenizer, train_tokenizer

        tc = self.cfg.tokenizer
        gold = self._pairs("train.jsonl")
        pseudo = self._pairs("stage1_pseudo.jsonl")
        rng = random.Random(f"qpfast.train.tokenizer:{self.cfg.seed}")
        both = gold + pseudo
        if len(both) > tc.max_texts // 2:
            both = rng.sample(both, tc.max_texts // 2)
        texts = corpus_texts([q for q, _ in both], [t for _, t in both], build_instruction(self.schema),
                             tc.instruction_copies)
        t = time.perf_counter()
        instr = [build_instruction(self.schema)] if tc.instruction_token else []
        keys = [k for k in self.schema.keys.values() if k.isascii() and k.isalpha()]   # whole in "chars"
        tok = train_tokenizer(texts, tc.vocab_size, min_frequency=tc.min_frequency, pretokenize=tc.pretokenize,
                              instruction_tokens=instr, whole_words=keys)
        save_tokenizer(tok, self.path("tokenizer"))
        self.log(f"tokenizer: {len(tok)} tokens from {len(texts)} texts ({time.perf_counter() - t:.1f} s)")

    def stage_stage1(self) -> None:
        from .model_init import init_model, parameter_count, saved_megabytes
        from .sft import mix_stage1, run_sft

        c = self.cfg.stage1
        tok = self._tokenizer(self._require("tokenizer"))
        model = init_model(self.cfg.model, tok, seed=self.cfg.seed)
        self.log(f"model: Qwen3 {self.cfg.model.to_dict()}, {parameter_count(model) / 1e6:.2f} M parameters "
                 f"(~{saved_megabytes(model, self.cfg.model.dtype):.1f} MB as {self.cfg.model.dtype})")
        gold: list[tuple] = self._pairs("train.jsonl")
        if c.gold_mask_fields:                        # masked in the gold examples only
            gold = [(q, t, tuple(c.gold_mask_fields)) for q, t in gold]
        pairs = mix_stage1(self._pairs("stage1_pseudo.jsonl"), gold, c.n_examples, c.gold_share, self.cfg.seed)
        extra = f", gold {list(c.gold_mask_fields)} masked" if c.gold_mask_fields else ""
        extra += f", field loss weights {c.field_weights}" if c.field_weights else ""
        self.log(f"stage 1: {len(pairs)} examples ({c.gold_share:.0%} gold{extra})")
        res = run_sft(model, tok, pairs, c, str(self.path("scratch", "stage1")), seed=self.cfg.seed,
                      schema=self.schema, device=self.cfg.device, log=self.log)
        self._save_model(model, tok, "stage1")
        self._update(train={"stage1": res.to_dict()})
        self._evaluate("stage1", self.path("stage1"))

    def stage_stage2(self) -> None:
        self._sft_stage2(self.cfg.stage2, "stage2", "stage2", "stage 2")

    def stage_stage3(self) -> None:
        model, tok = self._load("stage2")
        self._grpo_stage3(model, tok, "stage3", "stage3", "stage 3")
        if not self.cfg.soup.weight:
            self._export()
        else:
            self.log("export: after the branch (soup.weight > 0)")

    def _start_branch_process(self):
        """`python -m qpfast.train --stages branch --no-export` on this run directory, now."""
        import subprocess
        import sys
        cmd = [sys.executable, "-m", "qpfast.train", "--config", str(self.path("config.json")), "--out",
               str(self.out), "--stages", "branch", "--no-export", "--threads", str(self.cfg.threads)]
        self.log(f"soup branch: started in a second process beside stages 2-3 ({' '.join(cmd[1:])})")
        return subprocess.Popen(cmd)

    def _finish_branch_process(self, child) -> None:
        """Waits for the branch process, then exports the soup (what the branch stage does last)."""
        self.log("soup branch: waiting for the second process")
        rc = child.wait()
        if rc != 0:
            raise RuntimeError(f"the soup branch's process (--stages branch) exited with status {rc}; "
                               f"see {self.path('train.log')}")
        t = time.perf_counter()
        self._export()
        self._update(timings={"export": round(time.perf_counter() - t, 1)})

    def stage_branch(self) -> None:
        """The soup's second branch: stage 2 from stage 1 with ``soup.anchor_decay`` and
        ``soup.mask_fields`` (``branch2/``), stage 3 on it (``branch3/``), both evaluated; then
        the export. Nothing when ``soup.weight`` is 0."""
        from dataclasses import replace

        s = self.cfg.soup
        if not s.weight:
            self.log("no branch (soup.weight = 0)")
            return
        c2 = replace(self.cfg.stage2, anchor_decay=s.anchor_decay, mask_fields=list(s.mask_fields))
        model, tok = self._sft_stage2(c2, "branch2", "branch_stage2", "branch stage 2")
        self._grpo_stage3(model, tok, "branch3", "branch_stage3", "branch stage 3")
        self._evaluate("branch_stage3", self.path("branch3"))
        if self.export:
            self._export()

    def _sft_stage2(self, c: SFTStageConfig, out: str, key: str, label: str):
        """Stage 2 (config `c`) from stage 1 into `out/`, recorded and evaluated as `key`;
        returns the trained model and tokenizer."""
        from .sft import run_sft

        model, tok = self._load("stage1")
        pairs, n_synth, n_aug = self._gold_mix(c.n_examples, c.synth_share, "stage2", aug_share=c.aug_share)
        extra = f", anchor_decay {c.anchor_decay:g}" if c.anchor_decay else ""
        extra += f", masked fields {list(c.mask_fields)}" if c.mask_fields else ""
        extra += f", field loss weights {c.field_weights}" if c.field_weights else ""
        self.log(f"{label}: {len(pairs)} gold examples ({n_synth} with synthetic entity values, {n_aug} rewritten)"
                 f"{extra}")
        res = run_sft(model, tok, pairs, c, str(self.path("scratch", out)), seed=self.cfg.seed,
                      schema=self.schema, device=self.cfg.device, log=self.log)
        self._save_model(model, tok, out)
        self._update(train={key: res.to_dict()})
        self._evaluate(key, self.path(out))
        return model, tok

    def _grpo_stage3(self, model: Any, tok: Any, out: str, key: str, label: str) -> None:
        """Stage 3 on `model` into `out/`, recorded as `key` (the export evaluates it)."""
        from .grpo import run_grpo

        c = self.cfg.stage3
        pairs, n_synth, _ = self._gold_mix(c.n_queries, c.synth_share, "stage3")
        self.log(f"{label}: {len(pairs)} queries ({n_synth} with synthetic entity values), G={c.num_generations}, "
                 f"oversample {c.oversample}, isolate {c.isolate}, rewards {self.cfg.rewards}")
        res = run_grpo(model, tok, pairs, c, self.cfg.rewards, str(self.path("scratch", out)),
                       seed=self.cfg.seed, schema=self.schema, device=self.cfg.device, log=self.log)
        self._save_model(model, tok, out)
        self._update(train={key: res.to_dict()})

    def stage_export(self) -> None:
        """Re-export ``stage3/`` (e.g. with another ``stage3.average_stage1``) without training."""
        self._export()

    # -- helpers ------------------------------------------------------------------------
    def _eval_file(self) -> Path:
        return self._require("data", f"{self.cfg.eval.split}.jsonl")

    def _pairs(self, name: str) -> list[tuple[str, str]]:
        from ..data import read_jsonl
        return [(r["query"], r["target"]) for r in read_jsonl(self._require("data", name))]

    def _gold_sample(self, n: int, salt: str) -> list[tuple[str, str]]:
        gold = self._pairs("train.jsonl")
        rng = random.Random(f"qpfast.train.{salt}:{self.cfg.seed}")
        rng.shuffle(gold)
        return gold[:n] if n > 0 else gold

    def _gold_mix(self, n: int, synth_share: float, salt: str,
                  aug_share: float = 0.0) -> tuple[list[tuple], int, int]:
        """`n` gold pairs of which a `synth_share` comes from train_synth.jsonl and an
        `aug_share` from train_aug.jsonl (as (query, target, masked fields) triples); and
        the synthetic and rewritten counts."""
        from ..data import read_jsonl
        n_synth, n_aug = round(n * synth_share), round(n * aug_share)
        pairs: list[tuple] = list(self._gold_sample(n - n_synth - n_aug, salt))
        if n_synth:
            pairs = self._mix_in(pairs, self._pairs("train_synth.jsonl"), n_synth, f"{salt}.synth")
        if n_aug:
            aug = [(r["query"], r["target"], tuple(r.get("mask", ())))
                   for r in read_jsonl(self._require("data", "train_aug.jsonl"))]
            pairs = self._mix_in(pairs, aug, n_aug, f"{salt}.aug")
        return pairs, n_synth, n_aug

    def _mix_in(self, pairs: list[tuple], rows: list[tuple], n: int, salt: str) -> list[tuple]:
        """`pairs` plus `n` of `rows` drawn at random, shuffled together (seeded by `salt`)."""
        rng = random.Random(f"qpfast.train.{salt}:{self.cfg.seed}")
        rng.shuffle(rows)
        out = pairs + rows[:n]
        rng.shuffle(out)
        return out

    @staticmethod
    def _tokenizer(path: Path):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def _load(self, stage: str):
        import torch
        from transformers import AutoModelForCausalLM
        p = self._require(stage)
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, local_files_only=True)
        return model, self._tokenizer(p)

    def _save_model(self, model: Any, tok: Any, stage: str) -> None:
        from .tokenizer import save_tokenizer
        p = self.path(stage)
        if p.exists():
            shutil.rmtree(p)
        model.config.use_cache = True            # the trainers turn it off; generation wants it
        model.save_pretrained(str(p), safe_serialization=True)
        save_tokenizer(tok, p)
        save_model_schema(self.schema, p)        # the engine serves (and evaluates) it with this schema
        shutil.rmtree(self.path("scratch", stage), ignore_errors=True)
        try:
            self.path("scratch").rmdir()
        except OSError:
            pass

    def _export(self) -> None:
        """stage3/ -> model/ in the shipping dtype, with the model card; then evaluated."""
        from .card import model_card
        from .model_init import parameter_count

        src = self._require("stage3")
        dst = self.path("model")
        if dst.exists():
            shutil.rmtree(dst)
        from .tokenizer import save_tokenizer
        w, lw = self.cfg.stage3.average_stage1, list(self.cfg.stage3.average_stage1_layers)
        averaged, ws = bool(w > 0 or any(lw)), self.cfg.soup.weight
        if averaged:
            self._evaluate("stage3_policy", src)
        model = export_model(src, stage1=self._require("stage1") if averaged else None, w=w, layer_weights=lw,
                             branch3=self._require("branch3") if ws else None, soup=ws, dtype=self.cfg.model.dtype)
        if averaged:
            per_layer = f" (decoder layers: stage-1 weights {', '.join(f'{x:g}' for x in lw)})" if lw else ""
            self.log(f"exported weights = {1 - w:g} * stage 3 + {w:g} * stage 1{per_layer}")
        if ws:
            self.log(f"exported weights = {1 - ws:g} * the above + {ws:g} * the branch's stage 3 (a soup)")
        model.save_pretrained(str(dst), safe_serialization=True)
        tok = self._tokenizer(src)
        save_tokenizer(tok, dst)
        save_model_schema(self.schema, dst)
        size = sum(f.stat().st_size for f in dst.glob("*.safetensors")) / 1e6
        self.log(f"exported {dst} ({self.cfg.model.dtype}, {size:.1f} MB of weights)")
        if size > MAX_SHIPPED_MB:
            self.log(f"WARNING: {size:.1f} MB of weights is over the {MAX_SHIPPED_MB} MB the package may ship")
        self._evaluate("stage3", dst)
        m = self._update(export={"dir": str(dst), "dtype": self.cfg.model.dtype, "weights_mb": round(size, 2),
                                 "params": parameter_count(model)})
        m = self._update(beats_legacy=self._beats(m))
        (dst / "README.md").write_text(model_card(self.cfg, m, params=parameter_count(model), size_mb=size,
                                                  vocab_size=len(tok)), encoding="utf-8")
        (dst / "metrics.json").write_text(json.dumps({k: m.get(k) for k in ("legacy", "stage1", "stage2", "stage3",
                                                                             "stage3_policy", "branch_stage2",
                                                                             "branch_stage3",
                                                                             "train", "beats_legacy")},
                                                     ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if self.export_to is not None:
            if self.export_to.exists():
                shutil.rmtree(self.export_to)
            shutil.copytree(dst, self.export_to)
            self.log(f"copied the exported model to {self.export_to}")

    def _beats(self, m: dict) -> dict:
        legacy, final = m.get("legacy"), m.get("stage3")
        if not isinstance(legacy, dict) or not isinstance(final, dict):
            return {}
        return {t: bool(final[k] is not None and legacy[k] is not None and final[k] > legacy[k])
                for t, k in _TASK_KEYS.items()}

    def _evaluate(self, name: str, model_dir: Path) -> dict:
        from ..evaluate import model_predictor, run_eval

        t = time.perf_counter()
        predictor = model_predictor(str(model_dir), device=self.cfg.device, batch_size=self.cfg.eval.batch_size)
        self.path("eval").mkdir(exist_ok=True)
        rep = run_eval(self._eval_file(), predictor, schema=self.schema, limit=self.cfg.eval.n or None,
                       predictions_path=self.path("eval", f"{name}_predictions.jsonl"))
        self._report(name, rep, time.perf_counter() - t)
        return rep

    def _report(self, name: str, rep: dict, seconds: Optional[float] = None) -> None:
        rep = {k: rep[k] for k in REPORT_KEYS}
        self._update(**{name: rep})
        took = f" ({seconds:.0f} s)" if seconds is not None else ""
        self.log(f"eval {name} on {self.cfg.eval.split} ({rep['n']}){took}: " + "  ".join(
            f"{k} {rep[k]:.4f}" for k in ("seg_f1", "ner_f1", "weight_f1", "cat_acc", "intent_f1", "overall",
                                          "invalid_rate")))


def export_model(stage3: str | os.PathLike, *, stage1: str | os.PathLike | None = None, w: float = 0.0,
                 layer_weights: Sequence[float] = (), branch3: str | os.PathLike | None = None, soup: float = 0.0,
                 dtype: str = "bfloat16") -> Any:
    """The shipped model from a run's checkpoints: ``stage3`` averaged toward ``stage1`` (`w`,
    `layer_weights`: `average_weights_`; skipped when all are 0), then toward the soup branch's
    ``branch3`` by `soup` (skipped at 0), cast to `dtype` ("float32" or "bfloat16") with the KV
    cache on. Loads in float32 and averages there; the caller saves it."""
    import torch
    from transformers import AutoModelForCausalLM

    def load(path: str | os.PathLike) -> Any:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)

    model = load(stage3)
    if w > 0 or any(layer_weights):
        if stage1 is None:
            raise ValueError("stage1: required when w or layer_weights average toward stage 1")
        average_weights_(model, load(stage1), w, layer_weights)
    if soup:
        if branch3 is None:
            raise ValueError("branch3: required when soup > 0")
        average_weights_(model, load(branch3), soup)
    model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    model.config.use_cache = True
    return model


def average_weights_(model: Any, anchor: Any, w: float, layer_weights: Sequence[float] = ()) -> None:
    """``model``'s parameters and buffers become ``(1 - w) * model + w * anchor`` (same
    architecture), in place. Interpolating a fine-tuned model back toward an earlier
    checkpoint of the same run (WiSE-FT, Wortsman et al. 2022) keeps some of what the earlier
    stage generalized; here stage 1's knowledge of the legacy pipeline's categories.

    `layer_weights`: one weight per decoder layer (``model.layers.{i}.*``) in place of `w`,
    which then weighs the rest (embedding = LM head, final norm). Lower layers closer to the
    anchor keep more of its word knowledge while the upper ones keep the fine-tuned output."""
    import torch
    for name, x in [("w", w)] + [(f"layer_weights[{i}]", x) for i, x in enumerate(layer_weights)]:
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {x}")
    ours, theirs = model.state_dict(), anchor.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ValueError("anchor: not the same architecture as model")
    layer_of = {k: int(k.split(".")[2]) for k in ours if k.startswith("model.layers.")}
    n_layers = 1 + max(layer_of.values(), default=-1)
    if layer_weights and len(layer_weights) != n_layers:
        raise ValueError(f"layer_weights: expected one weight per decoder layer ({n_layers}), "
                         f"got {len(layer_weights)}")
    seen: set[int] = set()                          # tied weights (embedding = lm_head) once
    with torch.no_grad():
        for k, v in ours.items():
            if v.is_floating_point() and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                a = layer_weights[layer_of[k]] if layer_weights and k in layer_of else w
                v.mul_(1.0 - a).add_(theirs[k].to(v.dtype), alpha=a)


def _quiet_transformers() -> None:
    """No per-file progress bars (loading/saving weights) in the recipe's log."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def run_recipe(cfg: RecipeConfig | str | os.PathLike, out_dir: str | os.PathLike,
               stages: Optional[str | Sequence[str]] = None, *, log: Optional[Callable[[str], Any]] = None,
               export_to: Optional[str | os.PathLike] = None, export: bool = True) -> dict:
    """Runs the recipe; `cfg` is a `RecipeConfig`, a config file or a checked-in config name.
    `export=False`: the branch stage does not export (the parallel soup's second process)."""
    if not isinstance(cfg, RecipeConfig):
        cfg = RecipeConfig.load(cfg)
    return Recipe(cfg, out_dir, log=log, export_to=export_to, export=export).run(stages)
