"""The QP prompt (DESIGN.md §1): instruction I (from the schema), optional business rules R and
context C, then the query.

Everything before the query is identical for every query of a (schema, rules, context), so
the engine computes its KV cache once and reuses it for every batch. The same functions
build training inputs, so a model is trained on exactly the token ids it is served with:

    >>> ids = encode_prompt(tokenizer, "兰蔻小黑瓶")              # PromptIds
    >>> ids.prefix_ids, ids.suffix_ids                            # shared part, per-query part
    >>> ex = encode_example(tokenizer, "兰蔻小黑瓶", target_text)  # + target ids, labels

Tokenization (one rule for training and serving):
- the prompt is rendered with the tokenizer's chat template when it has one (one user
  message, generation prompt added, thinking disabled where the template supports it), else
  with a plain template (`query: ...` / `output:` lines, BOS first when the tokenizer has one);
- the rendered text is split at the query into prefix | query | trailer; each part is
  tokenized on its own. Prefix and trailer are template text (special tokens parsed); the
  query is normalized (`qpfast.normalize`) and tokenized as PLAIN text
  (`split_special_tokens=True`): `<|im_end|>` typed in a query is never a special token;
- target ids = the target tokenized as plain text (`add_special_tokens=False,
  split_special_tokens=True`; identical to `tokenizer.encode(target,
  add_special_tokens=False)` unless the target contains special-token text such as a query
  with `<|im_end|>` in it, which must stay text) + [end token], the end token being the
  end-of-turn token of chat models (`<|im_end|>`, `<|eot_id|>`, ...) else EOS.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

from .normalize import normalize
from .schema import DEFAULT_SCHEMA, Schema

__all__ = [
    "build_instruction", "build_prompt", "encode_prompt", "encode_example", "end_token_id",
    "PromptIds", "TrainingExample", "PromptTemplate", "prompt_template", "target_ids",
]

_QUERY_SLOT = "\u2063QPFAST_QUERY_SLOT\u2063"  # never produced by normalize-d text of a template

_FIELD_HELP = {
    "ner": "命名实体列表，每项为 [实体文本, 类型]；实体文本是查询中的原文片段，按出现顺序排列、互不重叠；类型取自：{types}",
    "seg": "查询的分词结果（字符串列表），去掉空格后依次拼接正好等于查询",
    "weight": "每个分词的权重（整数，与分词一一对应），取值 0..{top}：{levels}",
    "cat": "查询所属类目，取自：{cats}",
    "intent": "一句话描述用户意图，不超过 {n} 个字",
}
_LEVELS_4 = "3 核心（去掉会改变搜索对象），2 重要，1 修饰（可放宽），0 可省略（虚词）"


def _check_schema(schema: Any) -> Schema:
    if schema is None:
        return DEFAULT_SCHEMA
    if not isinstance(schema, Schema):
        raise TypeError(f"schema: expected qpfast.Schema, got {type(schema).__name__}")
    return schema


def _rules_text(rules: Any) -> Optional[str]:
    if rules is None:
        return None
    if isinstance(rules, str):
        text = rules.strip()
    elif isinstance(rules, (list, tuple)):
        for i, r in enumerate(rules):
            if not isinstance(r, str):
                raise TypeError(f"rules[{i}]: expected str, got {type(r).__name__}")
        text = "\n".join(f"- {r.strip()}" for r in rules if r.strip())
    else:
        raise TypeError(f"rules: expected str, a list of str or None, got {type(rules).__name__}")
    return text or None


def _context_text(context: Any) -> Optional[str]:
    if context is None:
        return None
    if not isinstance(context, str):
        raise TypeError(f"context: expected str or None, got {type(context).__name__}")
    return context.strip() or None


def build_instruction(schema: Schema | None = None, rules: Any = None, context: Any = None) -> str:
    """The text before the query (I, R, C), identical for every query of a schema."""
    schema = _check_schema(schema)
    rules_t, context_t = _rules_text(rules), _context_text(context)
    keys = [schema.keys[f] for f in schema.fields]
    lines = [
        "你是搜索查询理解模型。阅读用户的搜索查询，只输出一行紧凑 JSON（qp-json/1），"
        f"键依次为：{', '.join(keys)}。",
    ]
    levels = _LEVELS_4 if schema.weight_levels == 4 else f"{schema.weight_levels - 1} 最重要，0 可省略"
    for f in schema.fields:
        help_ = _FIELD_HELP[f].format(types="、".join(schema.entity_types), top=schema.weight_levels - 1,
                                      levels=levels, cats="、".join(schema.categories), n=schema.intent_max_chars)
        lines.append(f"- {schema.keys[f]}：{help_}。")
    if rules_t:
        lines += ["", "业务规则：", rules_t]
    if context_t:
        lines += ["", "上下文：", context_t]
    return "\n".join(lines)


def _chat_template_of(tokenizer: Any) -> Any:
    return getattr(tokenizer, "chat_template", None) if tokenizer is not None else None


def _render(tokenizer: Any, instruction: str, query_text: str) -> str:
    content = f"{instruction}\n\n查询：{query_text}"
    if _chat_template_of(tokenizer):
        messages = [{"role": "user", "content": content}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False)
        except TypeError:  # very old templates / tokenizers without extra kwargs
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{content}\n输出："


def build_prompt(query: str, schema: Schema | None = None, rules: Any = None, context: Any = None, *,
                 tokenizer: Any = None) -> str:
    """The full prompt text for one query (DESIGN.md §1).

    With `tokenizer` (a Hugging Face tokenizer that has a chat template) the text is the
    rendered chat; without one, or when it has no chat template, the plain template. The
    query is normalized first (`qpfast.normalize`), as the model always sees it.
    `rules`: str or list of str (one rule each); `context`: str.
    """
    if not isinstance(query, str):
        raise TypeError(f"query: expected str, got {type(query).__name__}")
    schema = _check_schema(schema)
    return _render(tokenizer, build_instruction(schema, rules, context), str(normalize(query, schema)))


def end_token_id(tokenizer: Any) -> int:
    """The token that ends a target: end-of-turn for chat models, else EOS."""
    vocab = tokenizer.get_vocab()
    if _chat_template_of(tokenizer):
        tmpl = str(tokenizer.chat_template)
        for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
            if t in tmpl and t in vocab:
                return int(vocab[t])
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        return eos
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>"):
        if t in vocab:
            return int(vocab[t])
    raise ValueError("tokenizer: no end token (EOS or end-of-turn) found")


@dataclass
class PromptIds:
    """Token ids of one prompt: `prefix_ids` (shared by every query of a schema/rules/context)
    then `suffix_ids` (the query and the template's tail up to where the output starts)."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    normalized: str = ""
    truncated: bool = False

    @property
    def prompt_ids(self) -> list[int]:
        return self.prefix_ids + self.suffix_ids


@dataclass
class TrainingExample:
    """A supervised example: `input_ids` = prompt + target; `labels` = -100 over the prompt,
    the target ids (end token included) after it."""

    prompt_ids: list[int]
    target_ids: list[int]
    prefix_len: int = 0
    input_ids: list[int] = field(init=False)
    labels: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.input_ids = self.prompt_ids + self.target_ids
        self.labels = [-100] * len(self.prompt_ids) + self.target_ids


class PromptTemplate:
    """A (tokenizer, schema, rules, context) prompt, split once into token ids.

    `prefix_ids` is computed once; `suffix_ids(query)` tokenizes only the query and appends
    the template's cached tail. `encode_prompt` / `encode_example` use this class.
    """

    def __init__(self, tokenizer: Any, schema: Schema | None = None, rules: Any = None, context: Any = None):
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.schema = _check_schema(schema)
        self.rules, self.context = rules, context
        self.instruction = build_instruction(self.schema, rules, context)
        text = _render(tokenizer, self.instruction, _QUERY_SLOT)
        if text.count(_QUERY_SLOT) != 1:
            raise ValueError("tokenizer: its chat template does not keep the user message verbatim")
        self.prefix_text, self.tail_text = text.split(_QUERY_SLOT)
        self.chat = bool(_chat_template_of(tokenizer))
        if self.chat:
            prefix = self._encode(self.prefix_text, specials=True)
        else:
            prefix = self._encode(self.prefix_text, specials=True, add_special_tokens=True)
            bos = getattr(tokenizer, "bos_token_id", None)
            if isinstance(bos, int) and (not prefix or prefix[0] != bos):
                prefix = [bos] + prefix
        self.prefix_ids: list[int] = prefix
        self.tail_ids: list[int] = self._encode(self.tail_text, specials=True)
        self.end_id = end_token_id(tokenizer)

    def _encode(self, text: str, *, specials: bool, add_special_tokens: bool = False) -> list[int]:
        if not text:
            return []
        tok = self.tokenizer
        if specials:
            return list(tok.encode(text, add_special_tokens=add_special_tokens))
        return list(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def query_ids(self, normalized_query: str) -> list[int]:
        """The normalized query's ids, tokenized as plain text (no special tokens)."""
        return self._encode(normalized_query, specials=False)

    def encode(self, query: str) -> PromptIds:
        if not isinstance(query, str):
            raise TypeError(f"query: expected str, got {type(query).__name__}")
        norm = normalize(query, self.schema)
        return PromptIds(list(self.prefix_ids), self.query_ids(str(norm)) + self.tail_ids, str(norm),
                         bool(norm.truncated))

    def suffix_ids(self, query: str) -> list[int]:
        return self.encode(query).suffix_ids

    def target_ids(self, target: str) -> list[int]:
        if not isinstance(target, str):
            raise TypeError(f"target: expected str, got {type(target).__name__}")
        return self._encode(target, specials=False) + [self.end_id]


_TEMPLATES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_TEMPLATES_LOCK = threading.Lock()


def _key(rules: Any, context: Any) -> tuple:
    r = tuple(rules) if isinstance(rules, (list, tuple)) else rules
    return (r, context)


def prompt_template(tokenizer: Any, schema: Schema | None = None, rules: Any = None,
                    context: Any = None) -> PromptTemplate:
    """A cached `PromptTemplate` per (tokenizer, schema, rules, context)."""
    schema = _check_schema(schema)
    _rules_text(rules), _context_text(context)  # type checks before hashing
    key = (schema.hash, _key(rules, context))
    try:
        with _TEMPLATES_LOCK:
            per_tok = _TEMPLATES.setdefault(tokenizer, {})
    except TypeError:  # tokenizer not weak-referenceable: no cache
        return PromptTemplate(tokenizer, schema, rules, context)
    t = per_tok.get(key)
    if t is None:
        t = PromptTemplate(tokenizer, schema, rules, context)
        per_tok[key] = t
    return t


def encode_prompt(tokenizer: Any, query: str, schema: Schema | None = None, rules: Any = None,
                  context: Any = None) -> PromptIds:
    """(prefix_ids, suffix_ids) of one query's prompt: the split the engine's prefix KV
    reuse is built on. `prefix_ids + suffix_ids` is the full prompt."""
    return prompt_template(tokenizer, schema, rules, context).encode(query)


def encode_example(tokenizer: Any, query: str, target: str, schema: Schema | None = None, rules: Any = None,
                   context: Any = None) -> TrainingExample:
    """A training example for (query, target): the prompt ids exactly as the engine builds
    them, then `tokenizer.encode(target, add_special_tokens=False) + [end token]`."""
    t = prompt_template(tokenizer, schema, rules, context)
    p = t.encode(query)
    return TrainingExample(p.prompt_ids, t.target_ids(target), prefix_len=len(p.prefix_ids))


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """Canonical target ids: the target as plain text (`add_special_tokens=False`,
    `split_special_tokens=True`: special-token text inside it stays text) + [end token]."""
    if not isinstance(target, str):
        raise TypeError(f"target: expected str, got {type(target).__name__}")
    ids = tokenizer(target, add_special_tokens=False, split_special_tokens=True)["input_ids"] if target else []
    return list(ids) + [end_token_id(tokenizer)]
