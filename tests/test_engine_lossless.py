"""Losslessness: under greedy decoding in fp32 the generated token ids are exactly the same
with jump-forward, sparse logits, prefix reuse, speculative drafts on or off, in a batch of 16 or one query at a
time, with either attention layout, with masks filled during the forward pass, with slots
refilled mid-batch (continuous batching), and through the generic HF-forward runner."""
from __future__ import annotations

import pytest
import torch

import qpfast
from qpfast.engine import Engine
from qpfast.engine import engine as engine_module
from qpfast.engine.draft import DraftIndex

from test_engine_support import QUERIES16, engine_options, llama_engine, qwen3_engine, qwen3_model

BUDGET = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def baseline():
    eng = qwen3_engine()
    with engine_options(eng, jump_forward=True, sparse_logits=64, reuse_prefix=True, overlap_masks=False,
                        speculate=0):
        res = eng.generate(QUERIES16, max_new_tokens=BUDGET, batch_size=16)
    ids = eng.last_token_ids
    stats = dict(eng.last_stats)
    assert all(r.error is None for r in res)
    for q, r in zip(QUERIES16, res):
        qpfast.parse(r.raw, q, strict=True)
    assert all(i is not None and len(i) > 0 for i in ids)
    return ids, stats


def _ids(eng, **kw):
    kw.setdefault("max_new_tokens", BUDGET)
    kw.setdefault("batch_size", 16)
    res = eng.generate(QUERIES16, **kw)
    assert all(r.error is None for r in res)
    return eng.last_token_ids


def test_jump_forward_on_vs_off(baseline):
    ids, stats = baseline
    eng = qwen3_engine()
    with engine_options(eng, jump_forward=False, speculate=0):
        off = _ids(eng)
        st_off = eng.last_stats
    assert off == ids
    assert st_off["jump_forward_tokens"] == 0
    assert stats["jump_forward_tokens"] > 0
    assert stats["decode_forward_passes"] < st_off["decode_forward_passes"]
    assert stats["row_forward_passes"] < st_off["row_forward_passes"]


def test_sparse_logits_on_vs_off(baseline):
    ids, stats = baseline
    eng = qwen3_engine()
    with engine_options(eng, sparse_logits=0):
        off = _ids(eng)
        assert eng.last_stats["sparse_logit_steps"] == 0
    assert off == ids
    assert stats["sparse_logit_share"] > 0


def test_speculative_drafts_on_vs_off(baseline):
    """Drafts looked up in each row's own tokens, verified in the step that feeds them: the
    same tokens in fewer decode passes, at several batch sizes and draft lengths."""
    ids, stats = baseline
    eng = qwen3_engine()
    for spec, bs in ((4, 16), ("auto", 5), (1, 16), (8, 3)):
        with engine_options(eng, speculate=spec):
            assert _ids(eng, batch_size=bs) == ids, (spec, bs)
            st = eng.last_stats
        assert st["accepted_draft_tokens"] > 0 and st["draft_tokens"] >= st["accepted_draft_tokens"]
        assert st["output_tokens"] == st["picked_tokens"] + st["jump_forward_tokens"] + st["accepted_draft_tokens"]
        if bs == 16:
            assert st["decode_forward_passes"] < stats["decode_forward_passes"]
    with engine_options(eng, speculate=4, jump_forward=False):
        assert _ids(eng) == ids
    with engine_options(eng, speculate=4):                       # sampling: no drafts
        eng.generate(QUERIES16[:4], max_new_tokens=BUDGET, temperature=0.7, seed=0)
        assert eng.last_stats["draft_tokens"] == 0
    with engine_options(eng, speculate=0):
        _ids(eng)
        assert eng.last_stats["draft_tokens"] == 0


@pytest.mark.parametrize("graph_picks", [True, False])
def test_speculative_drafts_through_the_graph_step(baseline, graph_picks):
    """Drafts on the CUDA-graph step (run eagerly on CPU): a row carries its drafts within the
    step's tokens a row, the step returns the state of every position (graph mode "every");
    the host verifies, with picks from the graph (mode "every_pick": the masked pick after
    the pending tokens, the argmax after every draft, the host picking where the argmax is
    not allowed) or all its own; the same tokens at several batch sizes, also with oracle
    drafts."""
    from qpfast.engine.cuda_graph import EVERY, EVERY_PICK
    ids, stats = baseline
    for attention in ("kernels", "cascade"):
        eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention=attention,
                     cuda_graphs=True, speculate=4, graph_picks=graph_picks)
        g = eng.runner.graphs
        for bs in (16, 5):
            assert _ids(eng, batch_size=bs) == ids, (attention, bs)
            st = eng.last_stats
            assert st["accepted_draft_tokens"] > 0
            assert st["output_tokens"] == st["picked_tokens"] + st["jump_forward_tokens"] + st["accepted_draft_tokens"]
            if graph_picks:                       # random weights: many argmaxes are not allowed
                assert st["graph_pick_steps"] > 0 and st["draft_host_picks"] > 0
            else:
                assert st["graph_pick_steps"] == st["draft_host_picks"] == 0
        assert {mode for _, _, mode in g._graphs} >= {EVERY_PICK if graph_picks else EVERY}
        with engine_options(eng, speculate="auto"):        # "auto" drafts nothing on graph steps
            assert _ids(eng) == ids and eng.last_stats["draft_tokens"] == 0
    g.max_step_tokens = 16                                  # one token a row at 9-16 rows: no room,
    assert _ids(eng) == ids                                 # so those steps pick in the graph as usual
    assert (eng.last_stats["graph_pick_steps"] > 0) == graph_picks


class _OracleDrafts(DraftIndex):
    """Proposes each sequence's known future tokens (right ones) or them with every second
    token replaced (partly wrong ones): every draft ends up accepted, the end token included,
    or the verification cuts them."""

    future: dict = {}
    wrong = False

    def __init__(self, tokens=(), max_n=4):
        super().__init__(tokens, max_n)
        self._suffix_len = len(self.tokens)
        self._future = self.future[tuple(self.tokens)]

    def propose(self, k):
        pos = len(self.tokens) - self._suffix_len
        out = list(self._future[pos:pos + k])
        if self.wrong:
            out = [t if j % 2 == 0 else (t + 1) % 1000 for j, t in enumerate(out)]
        return out


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("wrong", [False, True])
def test_speculation_with_oracle_drafts(baseline, monkeypatch, wrong, graphs):
    ids, stats = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=True) if graphs \
        else qwen3_engine()
    tmpl = qpfast.prompt.prompt_template(eng.tokenizer, eng.schema)
    future = {tuple(tmpl.encode(q).suffix_ids): i for q, i in zip(QUERIES16, ids)}
    monkeypatch.setattr(_OracleDrafts, "future", future)
    monkeypatch.setattr(_OracleDrafts, "wrong", wrong)
    monkeypatch.setattr(engine_module, "DraftIndex", _OracleDrafts)
    with engine_options(eng, speculate=8):
        assert _ids(eng, batch_size=16) == ids
        st = eng.last_stats
    if wrong:
        assert 0 < st["accepted_draft_tokens"] < st["draft_tokens"]
    else:                                    # every draft right: whole outputs in a few passes
        assert st["accepted_draft_tokens"] == st["draft_tokens"] > 0
        assert st["decode_forward_passes"] < stats["decode_forward_passes"] // (2 if graphs else 3)


def test_prefix_reuse_on_vs_off(baseline):
    ids, _ = baseline
    eng = qwen3_engine()
    with engine_options(eng, reuse_prefix=False):
        off = _ids(eng)
        assert eng.last_stats["prefix_forward_passes"] == 0
    assert off == ids


def test_batch_of_16_vs_one_at_a_time(baseline):
    ids, _ = baseline
    eng = qwen3_engine()
    one = []
    for q in QUERIES16:
        eng.generate([q], max_new_tokens=BUDGET)
        one.append(eng.last_token_ids[0])
    assert one == ids


def test_continuous_batching_refills_slots(baseline):
    ids, _ = baseline
    eng = qwen3_engine()
    assert _ids(eng, batch_size=5) == ids
    assert eng.last_stats["prefill_forward_passes"] > 1


@pytest.mark.parametrize("admission", ["longest_first", "in_order"])
def test_admission_order_keeps_each_querys_tokens(baseline, monkeypatch, admission):
    """More queries than the batch holds: they enter longest first (the fewest output tokens
    their matcher allows, ties in the caller's order) or in the caller's order; every
    query gets the tokens it gets alone, and the results come back in the caller's order."""
    ids, _ = baseline
    eng = qwen3_engine()
    entered = []
    loop = Engine._loop

    def spy(self, seqs, *args, **kw):
        entered.extend((s.index, s.matcher.remaining_min_tokens()) for s in seqs)
        return loop(self, seqs, *args, **kw)

    monkeypatch.setattr(Engine, "_loop", spy)
    with engine_options(eng, admission=admission):
        assert _ids(eng, batch_size=5) == ids
        assert eng.last_stats["admission"] == admission
    order = [i for i, _ in entered]
    if admission == "in_order":
        assert order == list(range(len(QUERIES16)))
    else:
        assert entered == sorted(entered, key=lambda e: (-e[1], e[0]))
        assert order != list(range(len(QUERIES16)))    # QUERIES16 is not already in that order
    entered.clear()
    with engine_options(eng, admission=admission):      # all fit in the batch: the caller's order
        assert _ids(eng, batch_size=16) == ids
    assert [i for i, _ in entered] == list(range(len(QUERIES16)))


def test_admission_rejects_unknown_orders():
    with pytest.raises(ValueError, match="admission"):
        Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", admission="shortest_first")
    eng = qwen3_engine()
    with pytest.raises(ValueError, match="admission"):
        eng.admission = None
    assert eng.admission == "longest_first"


def test_kernels_attention_layout(baseline):
    ids, _ = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels")
    assert eng.runner.attention == "kernels"
    assert _ids(eng) == ids


def test_decode_graph_step_gives_the_same_tokens(baseline):
    """The CUDA-graph decode path (bucketed static buffers, padding rows on free slots,
    forced tokens fed up to 8 a step, padded to the graph's tokens per row) run eagerly on
    CPU: the same tokens, in a full batch, with slot refills (batch 5 -> buckets 1..8 as
    rows retire) and one at a time; with one token a step (the step's budget of query
    positions at 16 rows) too, in more passes."""
    ids, stats = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels",
                 cuda_graphs=True)
    g = eng.runner.graphs
    assert g is not None and not g.capture
    assert _ids(eng) == ids
    multi = eng.last_stats
    assert multi["picked_tokens"] == stats["picked_tokens"]
    assert multi["decode_forward_passes"] >= stats["decode_forward_passes"]   # at most 8 tokens a step
    assert {T for _, T, _ in g._graphs} - {1}                                   # multi-token shapes ran
    # the active rows' greedy picks come from the step itself (full logits + masked argmax)
    assert multi["graph_pick_steps"] > 0 and all(pick for _, _, pick in g._graphs)
    assert multi["graph_pick_steps"] + multi["sparse_logit_steps"] + multi["dense_logit_steps"] \
        == multi["picked_tokens"]
    assert _ids(eng, batch_size=5) == ids
    assert _ids(eng, batch_size=3) == ids
    with engine_options(eng, graph_picks=False):            # picked apart, as without graphs
        assert _ids(eng) == ids
        assert eng.last_stats["graph_pick_steps"] == 0
    g.max_step_tokens = 16
    assert g.max_tokens(16) == 1
    assert _ids(eng) == ids
    one = eng.last_stats
    assert one["picked_tokens"] == stats["picked_tokens"]
    assert one["decode_forward_passes"] > multi["decode_forward_passes"]


@pytest.mark.parametrize("attention", ["kernels", "cascade"])
def test_chunked_prefill_through_the_graph_steps(baseline, attention):
    """Rows that join a running batch feed their prompt suffix through the graph steps (a
    step's tokens a row at a time) instead of an eager prefill pass: the same tokens, one
    prefill pass a call (its first rows'), with drafts too; off, every refill is a pass."""
    ids, _ = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention=attention,
                 cuda_graphs=True, speculate=0)
    assert eng.chunked_prefill is True
    assert _ids(eng, batch_size=5) == ids
    on = eng.last_stats
    assert on["prefill_forward_passes"] == 1 and on["chunked_prefill"] is True
    assert on["graph_positions"] >= on["row_forward_passes"] - 5 > 0    # the steps' positions, padding included
    with engine_options(eng, chunked_prefill=False):
        assert _ids(eng, batch_size=5) == ids
        off = eng.last_stats
    assert off["prefill_forward_passes"] > 1
    # here 173 decode passes + 1 against 171 + 12: the joining rows take a few steps each
    assert on["decode_forward_passes"] + on["prefill_forward_passes"] \
        < off["decode_forward_passes"] + off["prefill_forward_passes"]
    with engine_options(eng, speculate=4):
        assert _ids(eng, batch_size=5) == ids
        assert eng.last_stats["prefill_forward_passes"] == 1
        assert eng.last_stats["accepted_draft_tokens"] > 0


def test_decode_graph_step_cascade_layout(baseline):
    """The graph step in the cascade layout (own tokens in the slots, the prompt prefix in
    the cache's shared buffers with its length on the device), run eagerly on CPU through
    the kernels' references: the same tokens, full batch and with slot refills."""
    ids, _ = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="cascade",
                 cuda_graphs=True)
    assert eng.runner.graphs is not None and eng.runner.attention == "cascade"
    assert _ids(eng) == ids
    cache = eng.runner.cache
    assert cache.shared_capacity == eng.runner.prefix_len > 0
    assert int(cache.shared_len[0]) == eng.runner.prefix_len
    assert _ids(eng, batch_size=5) == ids


def test_cascade_graph_step_with_a_new_shorter_prefix():
    """A shorter prefix is copied into the same shared buffers (no new tensors, so captured
    graphs stay valid) and the step attends to its length only; a longer one grows them."""
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="cascade",
                 cuda_graphs=True)
    r = eng.runner
    r.use_prefix(r.compute_prefix([1, 2, 3, 4, 5, 6]))
    r.reserve(4, 20)
    buf = r.cache.shared_k[0]
    keys = []
    for prefix_ids in ([7, 8, 9], [1, 2, 3, 4, 5, 6], [11, 12, 13, 14, 15, 16, 17, 18]):
        r.use_prefix(r.compute_prefix(prefix_ids))
        r.reserve(4, 20)
        assert int(r.cache.shared_len[0]) == len(prefix_ids)
        assert (r.cache.shared_k[0] is buf) == (len(prefix_ids) <= 6)
        r.forward(0, [[5, 6, 7]] * 3, [0, 0, 0])
        before = [k.clone() for k in r.cache.k]
        plain = r.forward(0, [[8], [9], [10]], [3, 3, 3])        # torch cascade path
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        stepped = r.decode_step([8, 9, 10], [3, 3, 3])             # bucket 4, shared buffers
        torch.testing.assert_close(stepped, plain, rtol=1e-5, atol=1e-5)
        keys.append(r.graphs._key)
        last = r.cache.capacity - 1
        for k, b in zip(r.cache.k, before):
            changed = (k != b).any(dim=(1, 3)).nonzero().tolist()
            assert all(pos == last or (slot < 3 and pos == 3) for slot, pos in changed), changed
    # the graphs are kept while the prefix fits the buffers and dropped when they grow
    assert keys[0] == keys[1] != keys[2]


def test_torch_cascade_path_keeps_no_shared_buffers():
    # without the kernels and without graphs nothing reads the cache's prefix buffers
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="cascade")
    r = eng.runner
    assert not r.cascade_kernels and r.graphs is None
    r.use_prefix(r.compute_prefix([1, 2, 3]))
    r.reserve(2, 8)
    assert r.cache.prefix is r.prefix and r.cache.shared_capacity == 0


def test_decode_graph_buckets_and_padding_rows_leave_real_rows_alone():
    from qpfast.engine.cuda_graph import BUCKETS
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels",
                 cuda_graphs=True)
    r = eng.runner
    r.use_prefix(r.compute_prefix([1, 2, 3, 4]))
    r.reserve(10, 20)
    g = r.graphs
    assert [g.bucket(b) for b in (1, 2, 3, 5, 9, 10)] == [1, 2, 4, 8, 10, 10]
    assert all(b in BUCKETS for b in (1, 2, 4, 8))
    # rows 0..2 hold 3 own tokens; the padded step (bucket 4) must give the plain forward's
    # states and must not write into any real position of slots 0..9
    r.forward(0, [[5, 6, 7]] * 3, [0, 0, 0])
    before = [k.clone() for k in r.cache.k]
    plain = r.forward(0, [[8], [9], [10]], [3, 3, 3])
    for k, b in zip(r.cache.k, before):               # undo: the graph step writes the same K/V
        k.copy_(b)
    stepped = r.decode_step([8, 9, 10], [3, 3, 3])
    torch.testing.assert_close(stepped, plain, rtol=1e-5, atol=1e-5)   # 4 rows vs 3 in the matmuls
    last = r.cache.capacity - 1
    for k, b in zip(r.cache.k, before):
        changed = (k != b).any(dim=(1, 3)).nonzero().tolist()      # (slot, position) pairs
        assert all(pos == last or (slot < 3 and pos == 4 + 3) for slot, pos in changed), changed
    with pytest.raises(ValueError, match="decode step"):
        r.decode_step([1] * 11, [0] * 11)


def test_multi_token_graph_step_matches_the_forward_and_writes_only_past_real_rows():
    """A graph step appending 1-3 tokens to each row (bucket 4 x 4 tokens: row padding and
    padding rows) gives the plain multi-token forward's states at each row's last token; it
    writes the rows' real positions, positions past their new length (padding tokens, within
    the scratch the runner reserves) and the last cache position, nothing else."""
    from qpfast.engine.cuda_graph import SCRATCH
    for attention in ("kernels", "cascade"):
        eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention=attention,
                     cuda_graphs=True)
        r = eng.runner
        r.use_prefix(r.compute_prefix([1, 2, 3, 4]))
        r.reserve(10, 20)
        p = 4 if attention == "kernels" else 0
        assert r.cache.capacity == p + 20 + SCRATCH
        g = r.graphs
        assert r.step_tokens(3) == 8 and g.max_tokens(10) == 8
        g.max_step_tokens = 20                    # query positions a step: bucket x tokens per row
        assert [g.max_tokens(b) for b in (1, 3, 10)] == [8, 4, 2]
        g.max_step_tokens = 5
        assert g.max_tokens(8) == 1               # always at least one
        g.max_step_tokens = 128
        r.forward(0, [[5, 6, 7]] * 3, [0, 0, 0])
        feeds = [[8, 9], [10], [11, 12, 13]]
        before = [k.clone() for k in r.cache.k]
        plain = r.forward(0, feeds, [3, 3, 3])
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        stepped = r.decode_step(feeds, [3, 3, 3])
        assert (4, 4, False) in r.graphs._graphs
        torch.testing.assert_close(stepped, plain, rtol=1e-5, atol=1e-5)
        # the same step with picks: each row's masked argmax over the full logits
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        words = -(-r.vocab_size // 32)
        mask = torch.zeros(3, words, dtype=torch.int32)
        allowed = [[5, 77, 1000], [9], list(range(0, r.vocab_size, 7))]
        for row, toks in enumerate(allowed):
            for t in toks:
                mask[row, t // 32] |= 1 << (t % 32)
        mask[1] = 0                                          # a row allowing nothing: -1
        states, picks = r.decode_step(feeds, [3, 3, 3], mask=mask)
        assert (4, 4, True) in r.graphs._graphs
        torch.testing.assert_close(states, plain, rtol=1e-5, atol=1e-5)
        logits = r.full_logits(plain)
        want = [max(toks, key=lambda t: (logits[row, t].item(), -t)) for row, toks in enumerate(allowed)]
        assert picks.tolist() == [want[0], -1, want[2]]
        last = r.cache.capacity - 1
        for k, b in zip(r.cache.k, before):
            changed = (k != b).any(dim=(1, 3)).nonzero().tolist()
            assert changed and all(pos == last or (slot < 3 and p + 3 <= pos < p + 3 + 4)
                                   for slot, pos in changed), changed
        # the speculative mode: the state of every position, each row's real ones equal to
        # the plain forward's (return_all)
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        every = r.decode_step(feeds, [3, 3, 3], every=True)
        assert every.shape == (3, 4, plain.shape[1]) and (4, 4, "every") in r.graphs._graphs
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        want_all = r.forward(0, feeds, [3, 3, 3], return_all=True)
        got_all = torch.cat([every[i, :len(f)] for i, f in enumerate(feeds)])
        torch.testing.assert_close(got_all, want_all, rtol=1e-5, atol=1e-5)
        # ... and with picks: each row's masked argmax after its token pick_at[i], the
        # argmax after every position
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        pick_at = [0, 0, len(feeds[2]) - 1]
        every2, picks = r.decode_step(feeds, [3, 3, 3], mask=mask, every=True, pick_at=pick_at)
        assert (4, 4, "every_pick") in r.graphs._graphs and picks.shape == (3, 5)
        torch.testing.assert_close(every2, every, rtol=0, atol=0)
        logits = r.full_logits(every.reshape(-1, every.shape[-1])).view(3, 4, -1)
        assert picks[:, 1:].tolist() == logits.argmax(dim=-1).tolist()
        want = [max(toks, key=lambda t: (logits[row, pick_at[row], t].item(), -t)) for row, toks in enumerate(allowed)]
        assert picks[:, 0].tolist() == [want[0], -1, want[2]]
        with pytest.raises(ValueError, match="pick_at"):
            r.decode_step(feeds, [3, 3, 3], mask=mask, every=True, pick_at=[0, 1, 0])   # row 1 has one token
        with pytest.raises(ValueError, match="pick_at"):
            r.decode_step(feeds, [3, 3, 3], every=True, pick_at=pick_at)
        with pytest.raises(ValueError, match="each row appends 1 to 8 tokens"):
            r.decode_step([[1] * 9, [2], [3]], [3, 3, 3])
        with pytest.raises(ValueError, match="each row appends 1 to 8 tokens"):
            r.decode_step([[], [2], [3]], [3, 3, 3])
        with pytest.raises(ValueError, match="past the cache"):
            r.decode_step([[1, 2], [2], [3]], [19, 3, 3])     # a real token past the row's 20


def test_decode_step_takes_numpy_token_ids():
    import numpy as np
    for graphs in (False, True):
        eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=graphs)
        r = eng.runner
        r.use_prefix(r.compute_prefix([1, 2, 3]))
        r.reserve(2, 8)
        r.forward(0, [[4, 5], [6, 7]], [0, 0])
        before = [k.clone() for k in r.cache.k]
        plain = r.decode_step([9, 10], [2, 2])
        for k, b in zip(r.cache.k, before):
            k.copy_(b)
        torch.testing.assert_close(r.decode_step(np.array([9, 10]), np.array([2, 2])), plain)


def test_cuda_graphs_argument_errors():
    with pytest.raises(ValueError, match="cuda_graphs"):
        Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs="yes")
    with pytest.raises(ValueError, match="cuda_graphs: needs the native runner"):
        Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", runner="hf", cuda_graphs=True)
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu")
    assert eng.runner.graphs is None              # "auto" is off on CPU


def test_masks_filled_during_the_forward_pass(baseline):
    ids, stats = baseline
    eng = qwen3_engine()
    with engine_options(eng, overlap_masks=True):
        assert _ids(eng) == ids
        assert eng.last_stats["decode_forward_passes"] >= stats["decode_forward_passes"]
    eng.close()


def test_generic_hf_runner_gives_the_same_tokens(baseline):
    ids, _ = baseline
    eng = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", runner="hf")
    assert eng.runner.kind == "hf"
    pick = [0, 9, 10, 15]       # greedy ids do not depend on the batch: a subset is enough
    res = eng.generate([QUERIES16[i] for i in pick], max_new_tokens=BUDGET)
    assert all(r.error is None for r in res)
    assert eng.last_token_ids == [ids[i] for i in pick]


def test_llama_all_switches_off_vs_on():
    eng = llama_engine()
    qs = [QUERIES16[9], QUERIES16[11], QUERIES16[0]]
    on = eng.generate(qs, max_new_tokens=128, batch_size=3)
    ids_on = eng.last_token_ids
    assert all(r.error is None for r in on)
    with engine_options(eng, jump_forward=False, sparse_logits=0, reuse_prefix=False):
        one = []
        for q in qs:
            eng.generate([q], max_new_tokens=128)
            one.append(eng.last_token_ids[0])
    assert one == ids_on


@pytest.mark.slow
def test_triton_kernels_in_the_interpreter_give_the_same_tokens():
    """Both attention layouts with the real Triton kernels (TRITON_INTERPRET=1, set before
    triton is imported, hence a subprocess; the cascade layout then runs the shared-prefix
    kernels, plain and in the bucketed graph step; the kernels layout's graph step reads the
    prefix from slot 0, in pieces; and with its projections through kernels.linear, the
    layers' norms and residual adds fused in; both graph steps at batch 2, where the third
    query joins through chunked prefill) == the torch cascade path here."""
    import json
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    qs = [QUERIES16[0], QUERIES16[9], QUERIES16[15]]
    ref = Engine(qwen3_model(), qpfast.testing.qwen_tokenizer(), device="cpu", attention="cascade")
    assert not ref.runner.cascade_kernels
    ref.generate(qs, max_new_tokens=48)
    code = (
        "import json, os, sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "torch.set_num_threads(1)\n"
        "from qpfast import kernels\n"
        "from qpfast.engine import Engine\n"
        "from qpfast.testing import qwen_tokenizer\n"
        "from test_engine_support import qwen3_model, QUERIES16\n"
        "assert kernels.backend(torch.zeros(1)) == 'interpreter'\n"
        "qs = [QUERIES16[0], QUERIES16[9], QUERIES16[15]]\n"
        "want = json.loads(sys.argv[2])\n"
        "for kw in (dict(attention='kernels'), dict(attention='cascade'), dict(attention='cascade', cuda_graphs=True),\n"
        "           dict(attention='kernels', cuda_graphs=True), dict(attention='kernels', cuda_graphs=True, proj=64),\n"
        "           dict(attention='kernels', cuda_graphs=True, bs=2), dict(attention='cascade', cuda_graphs=True, bs=2)):\n"
        "    args = {k: v for k, v in kw.items() if k not in ('proj', 'bs')}\n"
        "    e = Engine(qwen3_model(), qwen_tokenizer(), device='cpu', **args)\n"
        "    if kw.get('proj'):\n"
        "        e.runner.set_projection_rows(kw['proj'])\n"
        "    assert e.runner.cascade_kernels == (kw['attention'] == 'cascade')\n"
        "    e.generate(qs, max_new_tokens=48, batch_size=kw.get('bs'))\n"
        "    assert e.last_token_ids == want, kw\n"
        "    if kw.get('bs'):\n"
        "        assert e.last_stats['prefill_forward_passes'] == 1, kw   # the third query prefilled in graph steps\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", code, tests_dir, json.dumps(ref.last_token_ids)], env=env,
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
