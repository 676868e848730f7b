"""The recipe's configuration: one TOML (or JSON) file, every field with a default.

    cfg = RecipeConfig.load("python/qpfast/train/configs/default.toml")
    cfg = RecipeConfig.from_dict({"seed": 1, "stage1": {"lr": 1e-3}})

Sections (see ``configs/default.toml`` for the values the shipped model was trained with):
``data``, ``tokenizer``, ``model`` (`ModelSpec`), ``stage1``/``stage2`` (`SFTStageConfig`),
``stage3`` (`GRPOStageConfig`), ``rewards`` (task weights), ``eval``. Unknown keys are
errors (a typo never silently falls back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .model_init import ModelSpec

#: Target fields an SFT stage can leave out of its loss or weigh (`SFTStageConfig.mask_fields`,
#: `field_weights`): every field of qp-json/1.
MASKABLE_FIELDS = ("ner", "seg", "weight", "cat", "intent")

__all__ = ["DataConfig", "TokenizerConfig", "SFTStageConfig", "GRPOStageConfig", "EvalConfig", "RecipeConfig",
           "CONFIG_DIR", "config_path"]

#: Where the checked-in configs live (``default.toml``, ``tiny.toml``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file path; a bare name such as ``default`` or ``tiny`` means ``configs/NAME.toml``."""
    p = Path(name_or_path)
    if p.exists():
        return p
    name = str(name_or_path)
    for cand in (CONFIG_DIR / f"{name}.toml", CONFIG_DIR / f"{name}.json", CONFIG_DIR / name):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"config: {name_or_path!r} is neither a file nor one of "
                            f"{sorted(x.stem for x in CONFIG_DIR.glob('*.toml'))}")


@dataclass
class DataConfig:
    """The generated data (`qpfast.data`): gold train/dev/test and the unlabelled stream."""

    n_train: int = 30000          # gold train examples (stage 1's gold share, stage 2, stage 3 prompts)
    n_dev: int = 500
    n_test: int = 2000            # the held-out test split every stage is evaluated on
    n_unlabelled: int = 60000     # stage-1 stream, pseudo-labelled by the legacy pipeline
    seed: int = 0                 # sampling seed of `qpfast data`
    split_seed: int = 0           # train/dev/test partition seed
    perturb: float = 0.3          # perturbation probability of the stream
    splice: float = 0.0           # probability that a stream query joins the head and tail of two drafts
    keyword_share: float = 0.0    # share of bare keyword queries (legacy keyword table) in the stream
    word_share: float = 0.0       # share of the other stream queries with words swapped for dictionary words
    dict_words: int = 10000       # ... drawn from jieba's this many most frequent Han words (√freq)
    keyword_plant: float = 0.0    # share of the other stream queries with one word replaced by a keyword-table word
    keyword_context: float = 0.0  # share of bare keyword queries with dictionary words (and another category's keyword) around
    n_synth: int = 0              # gold train examples with synthetic entity values (train_synth.jsonl)
    synth_values: float = 0.7     # in those, the probability that a slot's value is synthetic
    n_aug: int = 0                # rewritten gold train examples (train_aug.jsonl, `qpfast.data.augment`)


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000        # a cap: character-level Chinese ("han") stops at ~3.8k on QP text
    pretokenize: str = "han"      # "han": one token per Han character; "chars": and per letter; "qwen": Qwen2's split
    instruction_token: bool = True  # the schema's instruction as one special token (a 13-token prefix)
    min_frequency: int = 2
    instruction_copies: int = 50  # copies of the prompt instruction in the tokenizer corpus
    max_texts: int = 200000       # at most this many corpus texts (queries + targets)


@dataclass
class SFTStageConfig:
    """One supervised stage (loss on target tokens only)."""

    n_examples: int = 0           # examples drawn for the stage (0: all available)
    gold_share: float = 1.0       # stage 1: share of gold examples in the mix; stage 2: 1.0
    synth_share: float = 0.0      # share of the stage's examples from train_synth.jsonl (stage 2)
    aug_share: float = 0.0        # share of the stage's examples from train_aug.jsonl (stage 2)
    epochs: float = 1.0
    max_steps: int = -1           # > 0 overrides epochs
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1     # cosine decay to lr * min_lr_ratio
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    share_prefix: bool = True     # compute the shared prompt prefix once per batch (exact, ~3x faster)
    group_by_length: bool = False # batches of similar length in random order (`qpfast.train.batching`; padding
                                  # ~1.6x -> ~1.02x the real tokens), the loss over a fixed tokens-per-row count
    bucket_batches: int = 50      # ... each batch cut from a length-sorted random bucket of this many batches
                                  # (measured: ~1.7x faster a step, a worse stage 1; off in default.toml)
    logging_steps: int = 50
    mask_fields: list = field(default_factory=list)  # target fields whose value tokens carry no loss
    gold_mask_fields: list = field(default_factory=list)  # stage 1: ... in its gold examples only
    field_weights: dict = field(default_factory=dict)  # field -> loss weight of its value tokens (others 1)
    freeze_layers: int = 0        # the lowest N decoder layers stay as the previous stage left them
    anchor_decay: float = 0.0     # after each step p -= lr * anchor_decay * (p - p at the stage's start)


@dataclass
class GRPOStageConfig:
    """Stage 3: multi-reward GRPO with constrained rollouts (`qpfast.train.grpo`)."""

    n_queries: int = 512          # training prompts (gold train queries)
    synth_share: float = 0.0      # share of the prompts from train_synth.jsonl (unseen-looking values)
    average_stage1: float = 0.0   # export (1 - w) * stage 3 + w * stage 1 weights (WiSE-FT); 0: stage 3 as is
    average_stage1_layers: list = field(default_factory=list)  # per decoder layer, in place of w there
    num_generations: int = 8      # G, rollouts per group
    oversample: float = 2.0       # candidates sampled per group = ceil(G * oversample) (task isolation)
    isolate: bool = True          # task-isolated sampling
    queries_per_step: int = 4     # groups per optimizer step
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 2e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0             # KL to the stage-2 model (0: no reference model)
    epsilon: float = 0.2          # PPO clip
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    max_new_tokens: int = 192     # rollout token budget (end token included)
    logging_steps: int = 10


@dataclass
class SoupConfig:
    """A second stage-2/3 branch from the same stage 1 whose stage-3 policy is averaged into the
    export (a model soup): stage 2 with its own `anchor_decay` and `mask_fields`, stage 3 as the
    main branch's."""

    weight: float = 0.0           # export = (1 - w) * the main branch (after its averaging) + w * the branch; 0: none
    anchor_decay: float = 0.0     # the branch's stage-2 anchor_decay
    mask_fields: list = field(default_factory=list)  # the branch's stage-2 mask_fields
    parallel: bool = False        # train the branch in a second process beside stages 2-3 (same cores)


@dataclass
class EvalConfig:
    split: str = "test"
    n: int = 0                    # 0: the whole split
    batch_size: int = 64
    legacy: bool = True           # also score the legacy pipeline (the baseline row)


@dataclass
class RecipeConfig:
    seed: int = 0
    threads: int = 0              # torch threads (0: all cores)
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    stage1: SFTStageConfig = field(default_factory=lambda: SFTStageConfig(gold_share=0.1))
    stage2: SFTStageConfig = field(default_factory=SFTStageConfig)
    stage3: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    soup: SoupConfig = field(default_factory=SoupConfig)
    rewards: dict[str, float] = field(default_factory=lambda: {"seg": 1.0, "ner": 1.0, "weight": 1.0, "cat": 1.0,
                                                               "intent": 0.2})
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Overrides of DEFAULT_SCHEMA's fields (e.g. seg_breaks_at_spaces = true): the schema the
    # model is trained, evaluated and served with (saved beside each checkpoint).
    schema: dict = field(default_factory=dict)
    name: str = "qpfast-default"

    def output_schema(self):
        """DEFAULT_SCHEMA with `schema`'s overrides (a clear error naming a bad one)."""
        from ..schema import DEFAULT_SCHEMA, Schema
        if not self.schema:
            return DEFAULT_SCHEMA
        try:
            return Schema.from_json({**DEFAULT_SCHEMA.to_dict(), **self.schema})
        except (TypeError, ValueError) as e:
            raise ValueError(f"schema: {e}") from None

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecipeConfig":
        return _build(cls, dict(d), "")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RecipeConfig":
        p = config_path(path)
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            d = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise RuntimeError(f"config: reading {p} needs Python >= 3.11 or the tomli package") from None
            d = tomllib.loads(text)
        cfg = cls.from_dict(d)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "RecipeConfig":
        from .rewards import TASKS
        self.output_schema()
        bad = set(self.rewards) - set(TASKS)
        if bad:
            raise ValueError(f"rewards: unknown task(s) {sorted(bad)}; tasks are {list(TASKS)}")
        if not any(float(w) > 0 for w in self.rewards.values()):
            raise ValueError("rewards: at least one task weight must be > 0")
        shares = {"stage1.gold_share": self.stage1.gold_share, "data.synth_values": self.data.synth_values,
                  "data.perturb": self.data.perturb, "data.splice": self.data.splice,
                  "data.keyword_share": self.data.keyword_share, "data.word_share": self.data.word_share,
                  "data.keyword_plant": self.data.keyword_plant, "data.keyword_context": self.data.keyword_context}
        shares.update({f"{name}.synth_share": getattr(self, name).synth_share for name in ("stage1", "stage2", "stage3")})
        shares.update({f"{name}.aug_share": getattr(self, name).aug_share for name in ("stage1", "stage2")})
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {share}")
        from .tokenizer import PRETOKENIZERS
        if self.tokenizer.pretokenize not in PRETOKENIZERS:
            raise ValueError(f"tokenizer.pretokenize: expected one of {sorted(PRETOKENIZERS)}, "
                             f"got {self.tokenizer.pretokenize!r}")
        for name in ("stage1", "stage2"):
            if getattr(self, name).bucket_batches < 1:
                raise ValueError(f"{name}.bucket_batches: must be >= 1, got {getattr(self, name).bucket_batches}")
        if self.data.dict_words < 1:
            raise ValueError(f"data.dict_words: must be a positive int, got {self.data.dict_words!r}")
        for name in ("stage1", "stage2", "soup"):       # the soup's branch overrides stage 2's two
            sec = getattr(self, name)
            bad = [f for f in sec.mask_fields if f not in MASKABLE_FIELDS]
            if bad:
                raise ValueError(f"{name}.mask_fields: unknown field(s) {bad}; maskable: {list(MASKABLE_FIELDS)}")
            if name == "soup":
                continue
            bad = [f for f in (*sec.gold_mask_fields, *sec.field_weights) if f not in MASKABLE_FIELDS]
            if bad:
                raise ValueError(f"{name}.gold_mask_fields / field_weights: unknown field(s) {bad}; "
                                 f"known: {list(MASKABLE_FIELDS)}")
            if name == "stage2" and sec.gold_mask_fields:
                raise ValueError("stage2.gold_mask_fields: stage 2 is all gold; use stage2.mask_fields")
            neg = {f: w for f, w in sec.field_weights.items() if not w >= 0}
            if neg:
                raise ValueError(f"{name}.field_weights: weights must be >= 0, got {neg}")
            if not sec.anchor_decay >= 0:
                raise ValueError(f"{name}.anchor_decay: must be >= 0, got {sec.anchor_decay}")
        for name in ("stage1", "stage2"):
            n = getattr(self, name).freeze_layers
            if not 0 <= n <= self.model.layers:
                raise ValueError(f"{name}.freeze_layers: must be in [0, model.layers={self.model.layers}], got {n}")
        if not 0.0 <= self.soup.weight < 1.0:
            raise ValueError(f"soup.weight: must be in [0, 1), got {self.soup.weight}")
        for name in ("stage2", "stage3"):
            if getattr(self, name).synth_share and not self.data.n_synth:
                raise ValueError(f"{name}.synth_share: needs data.n_synth > 0 (the synthetic-value examples)")
        if self.data.keyword_context and not self.data.keyword_share:
            raise ValueError("data.keyword_context: needs data.keyword_share > 0 (the bare keyword queries it widens)")
        if self.stage2.aug_share and not self.data.n_aug:
            raise ValueError("stage2.aug_share: needs data.n_aug > 0 (the rewritten gold examples)")
        if self.stage1.aug_share:
            raise ValueError("stage1.aug_share: stage 1 mixes pseudo-labels with plain gold; rewritten gold is for stage 2")
        if self.stage2.synth_share + self.stage2.aug_share > 1.0:
            raise ValueError("stage2: synth_share + aug_share must be <= 1")
        if not 0.0 <= self.stage3.average_stage1 < 1.0:
            raise ValueError(f"stage3.average_stage1: must be in [0, 1), got {self.stage3.average_stage1}")
        lw = self.stage3.average_stage1_layers
        if lw and (len(lw) != self.model.layers or not all(isinstance(x, (int, float)) and 0.0 <= x < 1.0 for x in lw)):
            raise ValueError(f"stage3.average_stage1_layers: expected {self.model.layers} weights (one per layer) "
                             f"in [0, 1), got {lw}")
        if self.stage3.num_generations < 2:
            raise ValueError("stage3.num_generations: GRPO needs at least 2 rollouts per group")
        if self.stage3.oversample < 1.0:
            raise ValueError(f"stage3.oversample: must be >= 1, got {self.stage3.oversample}")
        if self.eval.split not in ("train", "dev", "test"):
            raise ValueError(f"eval.split: expected train, dev or test, got {self.eval.split!r}")
        return self


def _build(cls: type, d: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"config{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        f = fields[name]
        factory = f.default_factory  # type: ignore[misc]
        default = factory() if factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            base = dataclasses.asdict(default)
            base.update(value)
            kwargs[name] = _build(type(default), base, f"{where}.{name}" if where else f".{name}")
        elif name == "schema" and cls is RecipeConfig:
            if not isinstance(value, Mapping):
                raise ValueError(f"schema: expected a table of DEFAULT_SCHEMA overrides, got {value!r}")
            kwargs[name] = dict(value)
        elif isinstance(default, dict) and isinstance(value, Mapping):
            kwargs[name] = {str(k): float(v) for k, v in value.items()}
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    return obj.validate() if hasattr(obj, "validate") and cls is RecipeConfig else obj


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"config {name}: expected a bool, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and not isinstance(value, type(default)):
        raise TypeError(f"config {name}: expected {type(default).__name__}, got {value!r}")
    return value
