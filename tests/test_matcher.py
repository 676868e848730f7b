"""The constrained decoder (qpfast.Matcher): canonical acceptance, soundness, budgets, errors.

Runs with the real Qwen vocabulary (byte-level BPE, 151,936 lm_head rows) and with a
Llama-2-style SentencePiece vocabulary (`▁` pieces, `<0xNN>` byte fallback, dummy prefix).
"""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qpfast
from qpfast import _C, Matcher, Schema, Vocab, fill_bitmasks, normalize, parse, render
from qpfast.testing import qwen_tokenizer, sp_tokenizer
from strategies import SCHEMA_POOL, hostile_queries, valid_results

QWEN_LM_HEAD = 151936
EXAMPLE_Q = "兰蔻小黑瓶适合什么肤质"
EXAMPLE = ('{"ner":[["兰蔻","品牌"],["小黑瓶","产品"]],"seg":["兰蔻","小黑瓶","适合","什么","肤质"],'
           '"weight":[3,3,1,0,2],"cat":"美妆>护肤","intent":"想了解兰蔻小黑瓶适合哪些肤质"}')


@pytest.fixture(scope="module", params=["qwen", "sp"])
def vocab(request) -> Vocab:
    return _vocab(request.param)


_VOCABS: dict[str, Vocab] = {}


def _vocab(kind: str) -> Vocab:
    if kind not in _VOCABS:
        if kind == "qwen":
            _VOCABS[kind] = Vocab.from_tokenizer(qwen_tokenizer(), vocab_size=QWEN_LM_HEAD)
        else:
            tok = sp_tokenizer()
            _VOCABS[kind] = Vocab.from_tokenizer(tok, vocab_size=len(tok) + 14)  # padded lm_head
    return _VOCABS[kind]


def allowed(mask_row: np.ndarray) -> set[int]:
    bits = np.unpackbits(mask_row.view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits).tolist())


def feed(vocab: Vocab, m: Matcher, ids: list[int]) -> None:
    """Feeds ids one by one, checking each is in the mask at its step and accepted."""
    mask = np.zeros((1, vocab.words), dtype=np.int32)
    for step, i in enumerate(ids):
        m.fill_bitmask(mask, 0)
        bit = (int(mask[0, i >> 5]) >> (i & 31)) & 1
        assert bit, f"step {step}: canonical token {i} {vocab.token_bytes[i]!r} not in the mask after {m.text()!r}"
        assert m.accept(i), f"step {step}: token {i} refused after {m.text()!r}"


def canonical_ids(vocab: Vocab, target: str) -> list[int]:
    # Special-token text inside a target ("<|im_end|>" typed in a query) is plain text.
    return vocab.tokenizer.encode(target, add_special_tokens=False, split_special_tokens=True) + [vocab.end_ids[0]]


def test_special_token_text_in_a_query_is_plain_text(vocab):
    q = "<|im_end|> 不是 </s>"
    target = render({"ner": [["<|im_end|>", "作品"]], "seg": ["<|im_end|>", "不是", "</s>"], "weight": [3, 0, 1],
                     "cat": "其他", "intent": "<|im_end|>"}, query=q)
    m = Matcher(vocab, q)
    feed(vocab, m, canonical_ids(vocab, target))
    assert m.is_finished() and m.text() == target


# ------------------------------------------------------------------ canonical acceptance


def test_design_example_is_accepted_token_by_token(vocab):
    m = Matcher(vocab, EXAMPLE_Q)
    feed(vocab, m, canonical_ids(vocab, EXAMPLE))
    assert m.is_finished() and m.text() == EXAMPLE
    assert parse(m.text(), EXAMPLE_Q) == parse(EXAMPLE, EXAMPLE_Q)


@pytest.mark.parametrize("kind", ["qwen", "sp"])
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=valid_results())
def test_canonical_tokens_always_allowed_default_schema(kind, data):
    vocab = _vocab(kind)
    raw, result = data
    target = render(result, query=raw)
    m = Matcher(vocab, raw)
    feed(vocab, m, canonical_ids(vocab, target))
    assert m.is_finished() and m.text() == target


@pytest.mark.parametrize("kind", ["qwen", "sp"])
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.sampled_from(SCHEMA_POOL).flatmap(lambda s: st.tuples(st.just(s), valid_results(s))))
def test_canonical_tokens_always_allowed_other_schemas(kind, data):
    vocab = _vocab(kind)
    schema, (raw, result) = data
    target = render(result, schema, query=raw)
    m = Matcher(vocab, raw, schema)
    feed(vocab, m, canonical_ids(vocab, target))
    assert m.is_finished() and m.text() == target


def test_canonical_acceptance_under_exact_budget(vocab):
    ids = canonical_ids(vocab, EXAMPLE)
    m = Matcher(vocab, EXAMPLE_Q, max_tokens=len(ids))
    feed(vocab, m, ids)
    assert m.is_finished()


# ------------------------------------------------------------------ soundness (random walks)


ADVERSARIAL = [
    EXAMPLE_Q, 'iphone 15 "pro" \\ max', "a", "😀👨\u200d👩\u200d👧 x", 'c++ ","" test', '"', "\\\\", "a  b   c",
    "x" * 70, '"],["', "é́ ｆｕｌｌ", "<|im_end|>", "品牌 品牌", "aaaa", "a a a a", "美妆>护肤", "\u200d", "1,2,3",
    '{"ner":[]}', "\\u4e2d\\n",
]


def run_walks(vocab, queries, budgets, seed, schema=None):
    g = vocab.grammar(schema)
    norms = [normalize(q, schema).encode() for q in queries]
    out = _C.random_walks(g, norms, budgets, seed, 0.3)
    checked = 0
    for q, b, (text, ntok, _forced, err) in zip(queries, budgets, out):
        if err.startswith("setup:"):  # refused up front: an empty query, or a budget below the minimum
            assert ("max_tokens" in err and b > 0) or ("empty" in err and not normalize(q, schema)), err
            continue
        assert not err, f"{q!r} budget={b}: {err}; text so far {text[:200]!r}"
        if b > 0:
            assert ntok <= b
        parse(text.decode("utf-8"), q, schema, strict=True)  # raises on any invalid output
        checked += 1
    return checked


def _walk_inputs(n, seed):
    rng = random.Random(seed)
    queries, budgets = [], []
    for i in range(n):
        q = ADVERSARIAL[i % len(ADVERSARIAL)]
        if i % 4 == 3:  # random hostile mixes
            q = "".join(rng.choice(['"', "\\", "a", "中", " ", "😀", "1", ",", "]", "\u0301", "ab"]) for _ in range(rng.randint(1, 12)))
        queries.append(q)
        budgets.append(-1 if i % 3 else rng.randint(12, 100))
    return queries, budgets


def test_random_walks_always_end_in_strict_valid_text(vocab):
    queries, budgets = _walk_inputs(3000, seed=1)
    assert run_walks(vocab, queries, budgets, seed=1) > 2000


@pytest.mark.parametrize("schema", SCHEMA_POOL[1:], ids=lambda s: ",".join(s.fields))
def test_random_walks_other_schemas(schema):
    for kind in ("qwen", "sp"):
        queries, budgets = _walk_inputs(150, seed=2)
        run_walks(_vocab(kind), queries, budgets, seed=2, schema=schema)


@pytest.mark.slow
def test_random_walks_100k(vocab):
    queries, budgets = _walk_inputs(100_000, seed=3)
    assert run_walks(vocab, queries, budgets, seed=3) > 60_000


# ------------------------------------------------------------------ budgets and forced tokens


def test_budget_minimum_is_enforced_and_exact(vocab):
    m = Matcher(vocab, EXAMPLE_Q)
    need = m.remaining_min_tokens()
    assert need >= 5
    with pytest.raises(ValueError, match="max_tokens"):
        Matcher(vocab, EXAMPLE_Q, max_tokens=need - 1)
    # Exactly the minimum still finishes, whatever the (random) choices.
    for seed in range(20):
        out = _C.random_walks(vocab.grammar(), [normalize(EXAMPLE_Q).encode()], [need], seed, 0.0)
        text, ntok, _, err = out[0]
        assert not err and ntok <= need
        parse(text.decode(), EXAMPLE_Q)


def test_remaining_min_tokens_along_the_canonical_path(vocab):
    ids = canonical_ids(vocab, EXAMPLE)
    m = Matcher(vocab, EXAMPLE_Q)
    for k, i in enumerate(ids):
        left = m.remaining_min_tokens()
        assert left >= 1
        if vocab.canonical_literals:  # pieces split where the tokenizer splits: never above the real rest
            assert left <= len(ids) - k
        assert m.accept(i)
    assert m.remaining_min_tokens() == 0


SPACED = ["三星 galaxy z flip6 值得买吗", "a b c", "switch oled 还是 steam deck", "ab  cd e", "x", "兰蔻 小黑瓶",
          'c++ "pro" \\ x', "😀 👨\u200d👩 x1"]
BREAKS = Schema(seg_breaks_at_spaces=True)


def test_segments_break_at_spaces_in_the_mask():
    vocab = _vocab("qwen")
    tok = vocab.tokenizer
    m = Matcher(vocab, "ab cd", Schema(fields=("seg",), seg_breaks_at_spaces=True))
    for t in tok.encode('{"seg":["ab', add_special_tokens=False):
        assert m.accept(t)
    mask = np.zeros((1, vocab.words), dtype=np.int32)
    m.fill_bitmask(mask)
    texts = {tok.decode([i]) for i in allowed(mask[0])}
    assert texts and all(t.startswith('"') for t in texts) and '","' in texts   # only the quote that closes it
    assert not m.accept(tok.encode("c", add_special_tokens=False)[0])
    # without the flag the segment may run on into "cd"
    m2 = Matcher(vocab, "ab cd", Schema(fields=("seg",)))
    for t in tok.encode('{"seg":["ab', add_special_tokens=False):
        assert m2.accept(t)
    assert m2.accept(tok.encode("c", add_special_tokens=False)[0])


@pytest.mark.parametrize("q", SPACED)
def test_segments_break_at_spaces_budget_minimum_is_exact(vocab, q):
    """The minimum counts one segment per space-free piece: with exactly that budget every
    random walk still finishes, strict-valid, with no segment across a space."""
    need = Matcher(vocab, q, BREAKS).remaining_min_tokens()
    assert need > Matcher(vocab, q).remaining_min_tokens() or " " not in normalize(q)
    with pytest.raises(ValueError, match="max_tokens"):
        Matcher(vocab, q, BREAKS, max_tokens=need - 1)
    out = _C.random_walks(vocab.grammar(BREAKS), [normalize(q).encode()] * 30, [need] * 30, 5, 0.3)
    for text, ntok, _, err in out:
        assert not err and ntok <= need, err
        res = parse(text.decode(), q, BREAKS)
        assert all(" " not in res.normalized[t.start:t.end] for t in res.terms)


def test_segments_break_at_spaces_random_walks(vocab):
    queries, budgets = _walk_inputs(1500, seed=4)
    assert run_walks(vocab, queries, budgets, seed=4, schema=BREAKS) > 1000


def test_forced_tokens_are_the_canonical_literal_tokens():
    vocab = _vocab("qwen")
    tok = vocab.tokenizer
    m = Matcher(vocab, EXAMPLE_Q)
    forced = m.forced_tokens()
    assert forced and tok.decode(forced) == '{"ner":['
    ids = canonical_ids(vocab, EXAMPLE)
    assert ids[: len(forced)] == forced
    # Jump-forward over every forced run reproduces the canonical ids exactly.
    m, out, jumped = Matcher(vocab, EXAMPLE_Q), [], 0
    it = iter(ids)
    while not m.is_finished():
        f = m.forced_tokens()
        if f:
            for t in f:
                assert m.accept(t)
            out += f
            jumped += len(f)
            for _ in f:
                next(it)
            continue
        t = next(it)
        assert m.accept(t)
        out.append(t)
    assert out == ids and jumped >= 8


def test_after_the_json_only_end_tokens(vocab):
    m = Matcher(vocab, EXAMPLE_Q)
    ids = canonical_ids(vocab, EXAMPLE)
    for i in ids[:-1]:
        assert m.accept(i)
    assert m.is_complete() and not m.is_finished()
    mask = np.zeros((1, vocab.words), dtype=np.int32)
    m.fill_bitmask(mask)
    assert allowed(mask[0]) == set(vocab.end_ids)
    assert m.accept(ids[-1]) and m.is_finished()
    assert not m.accept(ids[-1])


def test_grounding_examples():
    vocab = _vocab("qwen")
    tok = vocab.tokenizer
    m = Matcher(vocab, "兰蔻 小黑瓶")
    for piece in ['{"ner":[["', "兰"]:
        for t in tok.encode(piece, add_special_tokens=False):
            assert m.accept(t)
    mask = np.zeros((1, vocab.words), dtype=np.int32)
    m.fill_bitmask(mask)
    texts = {tok.decode([i]) for i in allowed(mask[0])}
    assert "蔻" in texts and "黑" not in texts and '","' in texts  # "兰" alone is a span too
    assert m.accept(tok.encode("蔻", add_special_tokens=False)[0])
    m.fill_bitmask(mask)
    texts = {tok.decode([i]) for i in allowed(mask[0])}
    assert '","' in texts and " " in texts and "小" not in texts  # the span may go on over the space


def test_rollback_restores_state(vocab):
    ids = canonical_ids(vocab, EXAMPLE)
    m = Matcher(vocab, EXAMPLE_Q)
    mask_a = np.zeros((1, vocab.words), dtype=np.int32)
    mask_b = np.zeros_like(mask_a)
    for i in ids[:20]:
        assert m.accept(i)
    m.fill_bitmask(mask_a)
    for i in ids[20:30]:
        assert m.accept(i)
    m.rollback(10)
    m.fill_bitmask(mask_b)
    assert (mask_a == mask_b).all() and m.num_tokens == 20
    with pytest.raises(ValueError, match="n:"):
        m.rollback(21)


# ------------------------------------------------------------------ mask summaries


def _naive_mask_rows(mask, k):
    counts, ids = [], []
    for row in mask:
        allowed = [32 * w + j for w, x in enumerate(row.tolist()) for j in range(32) if (x >> j) & 1]
        counts.append(min(len(allowed), k + 1))
        ids.append(allowed + [-1] * (k - len(allowed)) if len(allowed) <= k else [-1] * k)
    return counts, ids


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(0, 6), words=st.integers(1, 70), k=st.integers(0, 40), density=st.sampled_from([0.0, 0.02, 0.2, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_mask_rows_matches_a_naive_count(rows, words, k, density, seed):
    from qpfast.matcher import mask_rows
    rng = np.random.default_rng(seed)
    bits = rng.random((rows, words, 32)) < density
    mask = (bits.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(axis=2).astype(np.uint32).view(np.int32)
    mask = np.ascontiguousarray(mask.reshape(rows, words))
    counts, ids = mask_rows(mask, k)
    want_counts, want_ids = _naive_mask_rows(mask.view(np.uint32), k)
    assert counts.tolist() == want_counts
    assert ids.shape == (rows, k) and ids.tolist() == want_ids


def test_mask_rows_on_matcher_masks_views_and_bad_input(vocab):
    from qpfast.matcher import mask_rows
    ms = [Matcher(vocab, q) for q in ADVERSARIAL[:5]]
    ids_ex = canonical_ids(vocab, EXAMPLE)
    for n in (10, len(ids_ex) - 6):                # mid-way through an output; inside the free-text intent
        m = Matcher(vocab, EXAMPLE_Q)
        for i in ids_ex[:n]:
            m.accept(i)
        ms.append(m)
    mask = np.zeros((len(ms) + 2, vocab.words), dtype=np.int32)
    fill_bitmasks(ms, mask[:len(ms)])
    counts, ids = mask_rows(mask, 8)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little").reshape(len(mask), -1)
    assert counts.tolist() == np.minimum(bits.sum(axis=1), 9).tolist()
    assert (counts == 9).any() and (counts < 9).any()              # both kinds of rows
    for r in np.flatnonzero(counts <= 8):
        assert ids[r, :counts[r]].tolist() == np.flatnonzero(bits[r]).tolist()
    ro = mask.copy()
    ro.flags.writeable = False                       # read-only input is fine
    assert mask_rows(ro[1:3], 8)[0].tolist() == counts[1:3].tolist()
    assert mask_rows(mask[0], 8)[0].tolist() == [counts[0]]      # one row
    with pytest.raises(ValueError, match="k: expected an int >= 0"):
        mask_rows(mask, -1)
    with pytest.raises(TypeError, match="int32"):
        mask_rows(mask.astype(np.int64), 4)
    with pytest.raises(ValueError, match="contiguous"):
        mask_rows(np.asfortranarray(mask), 4)


# ------------------------------------------------------------------ batch and threads


def test_fill_bitmasks_threads_only_for_hundreds_of_rows(monkeypatch):
    """A row's mask takes ~1 µs and a thread tens: batches of an engine step (up to a few
    hundred rows) stay on one thread, more rows split up to the CPU count."""
    import qpfast.matcher as qm
    monkeypatch.setattr(qm, "_CPUS", 16)
    assert [qm.default_threads(n) for n in (0, 1, 64, 128, 511)] == [1, 1, 1, 1, 1]
    assert [qm.default_threads(n) for n in (512, 1024, 10_000)] == [2, 4, 16]
    monkeypatch.setattr(qm, "_CPUS", 2)
    assert qm.default_threads(10_000) == 2


def test_fill_bitmasks_matches_rows_and_threads(vocab):
    rng = random.Random(0)
    queries = [rng.choice(ADVERSARIAL) for _ in range(24)]
    ms = [Matcher(vocab, q) for q in queries]
    ids = canonical_ids(vocab, EXAMPLE)
    m0 = Matcher(vocab, EXAMPLE_Q)  # one mid-way through a text
    for i in ids[:40]:
        m0.accept(i)
    ms.append(m0)
    single = np.zeros((len(ms), vocab.words), dtype=np.int32)
    for r, m in enumerate(ms):
        m.fill_bitmask(single, r)
    for nthreads in (1, 2, 4):
        batch = np.full((len(ms), vocab.words), -1, dtype=np.int32)
        fill_bitmasks(ms, batch, nthreads=nthreads)
        assert (batch == single).all()
    # Many Python threads filling concurrently give the same rows.
    results = [None] * 4

    def work(k):
        b = np.zeros_like(single)
        for _ in range(5):
            fill_bitmasks(ms, b, nthreads=2)
        results[k] = b

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all((r == single).all() for r in results)


def test_torch_tensor_buffers(vocab):
    torch = pytest.importorskip("torch")
    m = Matcher(vocab, EXAMPLE_Q)
    t = torch.zeros((2, vocab.words), dtype=torch.int32)
    m.fill_bitmask(t, 1)
    a = np.zeros((2, vocab.words), dtype=np.int32)
    m.fill_bitmask(a, 1)
    assert (t.numpy() == a).all() and a[1].any() and not a[0].any()


# ------------------------------------------------------------------ bad input


def test_hostile_raw_queries_are_normalized_and_decode():
    vocab = _vocab("qwen")
    for raw in ["a\x00b", "x\ud800y\udfff", "中" * 10_000, "  \t混合\nＦＵＬＬ  "]:
        m = Matcher(vocab, raw)
        assert m.normalized == normalize(raw)
        out = _C.random_walks(vocab.grammar(), [m.normalized.encode()], [-1], 0, 0.5)
        assert not out[0][3]
        parse(out[0][0].decode(), raw)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=hostile_queries())
def test_any_raw_query_decodes_or_is_rejected_clearly(raw):
    vocab = _vocab("qwen")
    norm = normalize(raw)
    if not norm:
        with pytest.raises(ValueError, match="query"):
            Matcher(vocab, raw)
        return
    out = _C.random_walks(vocab.grammar(), [norm.encode()], [-1], len(raw), 0.5)
    assert not out[0][3], out[0][3]
    parse(out[0][0].decode(), raw)


def test_bad_arguments_raise_clear_errors():
    vocab = _vocab("qwen")
    with pytest.raises(ValueError, match="query"):
        Matcher(vocab, " \t\x00 ")
    with pytest.raises(TypeError, match="vocab"):
        Matcher("not a vocab", "q")
    with pytest.raises(TypeError, match="query"):
        Matcher(vocab, 123)
    with pytest.raises(TypeError, match="schema"):
        Matcher(vocab, "q", schema={"fields": []})
    with pytest.raises(ValueError, match="max_tokens"):
        Matcher(vocab, "q", max_tokens=0)
    m = Matcher(vocab, "q")
    with pytest.raises(ValueError, match="token_id"):
        m.accept(QWEN_LM_HEAD)
    with pytest.raises(ValueError, match="token_id"):
        m.accept(-1)
    with pytest.raises(TypeError, match="token_id"):
        m.accept("7")
    assert not m.accept(151900)  # an lm_head row past the tokenizer: never allowed
    with pytest.raises(ValueError, match="bitmask"):
        m.fill_bitmask(np.zeros((1, vocab.words + 1), dtype=np.int32))
    with pytest.raises(TypeError, match="bitmask"):
        m.fill_bitmask(np.zeros((1, vocab.words), dtype=np.int64))
    with pytest.raises(ValueError, match="bitmask"):
        m.fill_bitmask(np.zeros((vocab.words, 2), dtype=np.int32).T)  # not C-contiguous rows
    with pytest.raises(IndexError, match="row"):
        m.fill_bitmask(np.zeros((2, vocab.words), dtype=np.int32), 2)
    with pytest.raises(ValueError, match="bitmask"):
        fill_bitmasks([m, m, m], np.zeros((2, vocab.words), dtype=np.int32))
    with pytest.raises(ValueError, match="vocab_size"):
        Vocab.from_tokenizer(qwen_tokenizer(), vocab_size=1000)
    with pytest.raises(TypeError, match="tokenizer"):
        Vocab.from_tokenizer(object())


def test_vocab_bytes_match_the_tokenizer():
    for kind in ("qwen", "sp"):
        vocab = _vocab(kind)
        tok = vocab.tokenizer
        text = '兰蔻 "小黑瓶" \\ é😀 abc 123 {"ner":[]}'
        ids = tok.encode(text, add_special_tokens=False)
        got = b"".join(vocab.token_bytes[i] for i in ids)
        assert got.decode("utf-8").lstrip(" ") == text
        assert vocab.prefix_space == (kind == "sp")
    q = _vocab("qwen")
    assert q.vocab_size == QWEN_LM_HEAD and q.words == (QWEN_LM_HEAD + 31) // 32
    assert {151643, 151645} <= set(q.end_ids)


def _advance_reference(vocab, m, pick, jump_forward=True, fill=True):
    """The engine's per-row step in plain Python (what `advance_rows` does in C++):
    (tokens accepted, refused token or -1, next mask row or None)."""
    got, row = [], np.zeros((1, vocab.words), dtype=np.int32)

    def take(t):
        if not m.accept(t):
            return False
        got.append(t)
        return True

    def forced():
        while not m.is_finished():
            f = m.forced_tokens()
            if not f:
                return -1
            for t in f:
                if not take(t):
                    return t
                if m.is_finished():
                    return -1
        return -1

    if pick >= 0 and not take(pick):
        return got, pick, None
    if jump_forward and (bad := forced()) >= 0:
        return got, bad, None
    while fill and not m.is_finished():
        m.fill_bitmask(row)
        ok = allowed(row[0])
        if not jump_forward or len(ok) != 1:
            return got, -1, row[0]
        (t,) = ok
        if not take(t):
            return got, t, None
        if (bad := forced()) >= 0:
            return got, bad, None
    return got, -1, None


@pytest.mark.parametrize("jump_forward,fill", [(True, True), (False, True), (True, False)])
def test_advance_rows_matches_the_step_in_python(vocab, jump_forward, fill):
    """Random walks of many rows at once: each step picks an allowed token per row (now and
    then a refused one, or none), and `advance_rows` (rows in shuffled bitmask slots, on 1
    or 2 threads) gives the tokens, refusals and masks of the Python step on twin matchers."""
    rng = random.Random(7)
    queries, budgets = _walk_inputs(48, seed=3)
    pairs = []
    for q, b in zip(queries, budgets):
        try:
            pairs.append((Matcher(vocab, q, max_tokens=None if b < 0 else b), Matcher(vocab, q, max_tokens=None if b < 0 else b)))
        except ValueError:               # empty after normalization, or a budget below the minimum
            continue
    picks = {id(a): -1 for a, _ in pairs}
    steps = 0
    while pairs and steps < 400:
        steps += 1
        slots = rng.sample(range(len(pairs) + 3), len(pairs))
        mask = np.full((len(pairs) + 3, vocab.words), -7, dtype=np.int32)
        toks, rejected, filled = qpfast.matcher.advance_rows(
            [a for a, _ in pairs], [picks[id(a)] for a, _ in pairs], mask, slots,
            jump_forward=jump_forward, fill=fill, nthreads=rng.choice([1, 2]))
        unused = sorted(set(range(len(pairs) + 3)) - set(slots))
        assert (mask[unused] == -7).all()
        keep = []
        for (a, b), slot, got, bad, was_filled in zip(pairs, slots, toks, rejected, filled):
            want, want_bad, want_row = _advance_reference(vocab, b, picks[id(a)], jump_forward, fill)
            assert (got, bad, was_filled) == (want, want_bad, want_row is not None), a.query
            assert a.text_bytes() == b.text_bytes() and a.is_finished() == b.is_finished()
            if was_filled:
                assert (mask[slot] == want_row).all()
            if bad >= 0 or a.is_finished():
                continue
            if not fill:                   # the caller fills the mask
                a.fill_bitmask(mask, slot)
            ok = sorted(allowed(mask[slot]))
            if not ok:
                continue
            r = rng.random()
            picks[id(a)] = -1 if r < 0.05 else rng.randrange(vocab.vocab_size) if r < 0.08 else rng.choice(ok)
            keep.append((a, b))
        pairs = keep
    assert steps > 20


def test_advance_rows_bad_arguments():
    vocab = _vocab("qwen")
    a, b = Matcher(vocab, "q"), Matcher(vocab, "r")
    mask = np.zeros((2, vocab.words), dtype=np.int32)
    adv = qpfast.matcher.advance_rows
    assert adv([], [], mask, []) == ([], [], [])
    with pytest.raises(ValueError, match="slots.*twice"):
        adv([a, b], [-1, -1], mask, [1, 1])
    with pytest.raises(ValueError, match="matchers.*twice"):
        adv([a, a], [-1, -1], mask, [0, 1])
    with pytest.raises(IndexError, match="slots"):
        adv([a], [-1], mask, [2])
    with pytest.raises(ValueError, match="picks"):
        adv([a, b], [-1], mask, [0, 1])
    with pytest.raises(ValueError, match="picks"):
        adv([a], [-3], mask, [0])
    with pytest.raises(ValueError, match="picks"):
        adv([a], [1 << 40], mask, [0])
    with pytest.raises(ValueError, match="slots"):
        adv([a], [-1], mask, [0, 1])
    with pytest.raises(ValueError, match="bitmask"):
        adv([a], [-1], np.zeros((2, vocab.words + 1), dtype=np.int32), [0])
    with pytest.raises(TypeError, match="matchers"):
        adv([a, "b"], [-1, -1], mask, [0, 1])
    with pytest.raises(ValueError, match="picks, slots"):
        adv([], [-1], mask, [])
    # the C++ entry points check each matcher's row width against the bitmask's
    sp = Matcher(_vocab("sp"), "q")
    assert sp.vocab.words != vocab.words
    with pytest.raises(ValueError, match="words"):
        _C.advance_rows([sp._m], [-1], [0], mask, vocab.words, True, True, 1)
    with pytest.raises(ValueError, match="words"):
        _C.fill_bitmasks([sp._m], mask, vocab.words, 1)
    # nothing changed by the refused calls; a refused pick is reported, not raised
    assert a.num_tokens == 0 and b.num_tokens == 0
    toks, rejected, filled = adv([a], [vocab.end_ids[0]], mask, [0])
    assert (toks, rejected, filled) == ([[]], [vocab.end_ids[0]], [False]) and a.num_tokens == 0
