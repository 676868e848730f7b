"""`DecodeGraphs`: how the decode step is launched and what it reads.

On CPU the graph step runs eagerly (`cuda_graphs=True`, no capture), through the same code
as a capture: the pieces a step is launched as, and the "kernels" layout's rows reading the
prompt prefix from slot 0's copy.
"""
from __future__ import annotations

import pytest
import torch

import qpfast
from qpfast.engine import Engine
from qpfast.engine.model_runner import NativeRunner

from test_engine_support import QUERIES16, qwen3_model

BUDGET = 96

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_piece_bounds():
    from qpfast.engine.cuda_graph import piece_bounds
    assert piece_bounds(28) == [0, 1, 4, 13, 28]          # the 0.6B model: 1, 3, 9, 15 layers
    assert piece_bounds(2) == [0, 1, 2] and piece_bounds(1) == [0, 1]
    assert piece_bounds(5, first=5) == [0, 5] and piece_bounds(7, first=2, growth=1) == [0, 2, 4, 6, 7]
    for bad in [(0,), (3, 0), (3, 1, 0)]:
        with pytest.raises(ValueError, match="piece_bounds"):
            piece_bounds(*bad)


def test_graph_steps_launched_in_pieces_give_the_same_tokens():
    """A captured step is launched as several graphs over runs of layers (the GPU starts on
    the first while the host launches the rest); on CPU the same pieces run eagerly. Any
    split gives the tokens of the plain forward."""
    plain = Engine(qwen3_model(layers=5), qpfast.testing.qwen_tokenizer(), device="cpu")
    plain.generate(QUERIES16[:6], max_new_tokens=BUDGET)
    eng = Engine(qwen3_model(layers=5), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=True)
    g = eng.runner.graphs
    assert g.pieces == [0, 1, 4, 5]
    for bounds in ([0, 1, 4, 5], [0, 5], [0, 2, 3, 5], [0, 1, 2, 3, 4, 5]):
        g.set_pieces(bounds)
        assert g.pieces == bounds and not g._graphs
        eng.generate(QUERIES16[:6], max_new_tokens=BUDGET)
        assert eng.last_token_ids == plain.last_token_ids, bounds
        assert eng.last_stats["graph_pick_steps"] > 0
    for bad in ([0, 4], [1, 5], [0, 3, 3, 5], [0], [0, 6]):
        with pytest.raises(ValueError, match="pieces"):
            g.set_pieces(bad)
    assert g.pieces == [0, 1, 2, 3, 4, 5]


def test_kernels_layout_steps_read_the_prefix_from_slot_0():
    """Every slot of the "kernels" layout holds a copy of the prompt prefix; decode steps
    (graph and plain) read it from slot 0 for all rows (`row0_prefix_len`: one copy
    streamed from memory, the rest from the L2). Other slots' copies are never read: the
    step gives the same states with them garbled."""
    r = NativeRunner(qwen3_model(), "cpu", "kernels")
    r.enable_graphs(capture=False)
    r.use_prefix(r.compute_prefix([11, 12, 13, 14, 15, 16, 17, 18, 19]))
    r.reserve(4, 32)
    assert int(r.cache.row0_len[0]) == 9
    r.forward(0, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], [0, 0, 0])
    saved = r.cache._k.clone(), r.cache._v.clone()

    def steps():
        r.cache._k.copy_(saved[0])
        r.cache._v.copy_(saved[1])
        return (r.decode_step([20, 21, 22], [3, 2, 4]), r.decode_step([[23, 24], [25], [26, 27]], [4, 3, 5]),
                r.forward(0, [[28], [29], [30]], [6, 4, 7]))

    want = steps()
    r.row0_reads = False                      # each row reading its own (equal) copy: the same bits
    for a, b in zip(want, steps()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    r.row0_reads = True
    g = torch.Generator().manual_seed(0)
    saved[0][:, 1:, :, :9] = torch.randn(saved[0][:, 1:, :, :9].shape, generator=g) * 50
    saved[1][:, 1:, :, :9] = torch.randn(saved[1][:, 1:, :, :9].shape, generator=g) * 50
    got = steps()
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    r.use_prefix(None)
    assert int(r.cache.row0_len[0]) == 0


def test_set_pdl_drops_the_graphs():
    """`DecodeGraphs.set_pdl` (capture with programmatic dependent launch) drops the captured
    steps, like `set_pieces`: the next step records its graphs again under the new setting."""
    r = NativeRunner(qwen3_model(), "cpu", "kernels")
    r.enable_graphs(capture=False)
    g = r.graphs
    assert g.pdl is False
    r.use_prefix(r.compute_prefix([11, 12, 13]))
    r.reserve(2, 16)
    r.forward(0, [[1, 2], [3]], [0, 0])
    want = r.decode_step([4, 5], [2, 1]).clone()
    assert g._graphs
    g.set_pdl(True)
    assert g.pdl is True and not g._graphs
    torch.testing.assert_close(r.decode_step([4, 5], [2, 1]), want, rtol=0, atol=0)   # CPU: launches as before


def test_step_indices_cross_in_one_contiguous_copy(monkeypatch):
    """Each step's index rows (tokens, K/V write and rotary positions, lengths, pick rows)
    reach the device in one copy between contiguous buffers (pinned on CUDA: asynchronous;
    a strided slice would be staged through a pageable temporary and an extra kernel).
    Steps of different shapes share the buffer's front, each writing its whole block:
    alternating shapes give the plain forward's states."""
    r = NativeRunner(qwen3_model(), "cpu", "kernels")
    r.enable_graphs(capture=False)
    r.reserve(3, 32)
    r.forward(0, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], [0, 0, 0])
    saved = r.cache._k.clone(), r.cache._v.clone()
    feeds = [([[20], [21], [22]], [3, 2, 4]), ([[23, 24], [25], [26, 27, 28]], [4, 3, 5]),
             ([[29], [30]], [6, 4]), ([[31, 32], [33], [34]], [7, 5, 8])]

    def run(step):
        r.cache._k.copy_(saved[0])
        r.cache._v.copy_(saved[1])
        return [step(t, s) for t, s in feeds]

    want = run(lambda t, s: r.forward(0, t, s))      # the plain forward: each row's last state
    g = r.graphs
    copies = []
    real_copy = torch.Tensor.copy_

    def spy(dst, src, *a, **k):
        copies.append((dst, src))
        return real_copy(dst, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", spy)
    got = run(lambda t, s: r.decode_step(t, s).clone())
    monkeypatch.undo()
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    base = g._idx.data_ptr()
    into_idx = [(d, s) for d, s in copies if d.data_ptr() == base]
    assert len(into_idx) == len(feeds)
    widths = []
    for d, s in into_idx:
        assert d.is_contiguous() and s.is_contiguous() and d.shape == s.shape and d.shape[0] == 5
        assert s.data_ptr() == g._host.data_ptr()
        widths.append(d.shape[1])
    assert widths == [3, 12, 2, 6]         # bucket (3 slots) x token width: 3 x 1, 3 x 4, 2 x 1, 3 x 2
