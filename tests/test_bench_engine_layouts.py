"""`bench/bench_engine_layouts.py` (GPU: the two cache layouts end to end), run on the CPU
with tiny engines so that a device session cannot fail on it: both layouts generate,
take turns, and give the same tokens in fp32. Timings are not checked."""
from __future__ import annotations

import copy

import pytest

import qpfast
from qpfast.engine import Engine

from bench_scripts import bench_module, tiny_qwen3_checkpoint
from test_engine_support import qwen3_model

pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compare_layouts_rows(capsys):
    bl = bench_module("bench_engine_layouts")
    configs = {}
    for name in bl.LAYOUTS:
        eng = Engine(copy.deepcopy(qwen3_model()), qpfast.testing.qwen_tokenizer(), device="cpu", attention=name,
                     cuda_graphs=True)               # CPU: the graph steps run eagerly
        eng.warmup(batch_size=3)
        configs[name] = (eng, eng.runner.graphs.max_step_tokens)
        configs[name + "/4"] = (eng, 4)              # one token a row at 3 rows (a bucket of 4)
    one = Engine(copy.deepcopy(qwen3_model()), qpfast.testing.qwen_tokenizer(), device="cpu", cuda_graphs=True)
    one.runner.graphs.set_pieces([0, 2])             # each step one graph (--one-graph)
    configs["kernels/1graph"] = (one, None)
    own = Engine(copy.deepcopy(qwen3_model()), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels",
                 cuda_graphs=True)
    own.runner.row0_reads = False                    # --own-copies
    configs["kernels/own-copies"] = (own, None)
    proj = Engine(copy.deepcopy(qwen3_model()), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels",
                  cuda_graphs=True)
    proj.runner.set_projection_rows(256)             # --projections 256
    configs["kernels/projections"] = (proj, None)
    pdl = Engine(copy.deepcopy(qwen3_model()), qpfast.testing.qwen_tokenizer(), device="cpu", attention="kernels",
                 cuda_graphs=True)
    pdl.runner.graphs.set_pdl(True)                  # --pdl (the CPU launches as before)
    configs["kernels/pdl"] = (pdl, None)
    rows = bl.compare_layouts(configs, [3], reps=2, baseline_at=None)
    (row,) = rows
    assert row["batch"] == 3 and list(row["configs"]) == list(configs)
    for name, r in row["configs"].items():
        assert len(r["wall_s_all"]) == 2 and r["wall_s"] > 0 and r["errors"] == 0
        assert r["decode_passes"] > 0 and r["output_tokens"] > 0
        if name != "kernels":                     # fp32: every configuration gives the same tokens
            assert r["same_rows"] == 3, name
    # fewer tokens a step, more steps
    assert row["configs"]["kernels/4"]["decode_passes"] > row["configs"]["kernels"]["decode_passes"]
    assert "rows as the first" in capsys.readouterr().out


def test_main_builds_every_variant(monkeypatch, capsys, tmp_path):
    """`main` with every A/B flag, on the CPU (graph steps run eagerly, a tiny checkpoint):
    each variant engine is built with its setting, warmed up and timed, and the JSON lists
    them."""
    import json

    from qpfast.engine.model_runner import NativeRunner
    bl = bench_module("bench_engine_layouts")

    class CpuEngine(Engine):                         # graph steps, eagerly, as on CUDA
        def __init__(self, model, device=None, dtype=None, **kw):
            super().__init__(model, device="cpu", dtype="float32", cuda_graphs=True, **kw)

    enable = NativeRunner.enable_graphs
    monkeypatch.setattr(NativeRunner, "enable_graphs", lambda self, capture=True: enable(self, capture=False))
    monkeypatch.setattr(qpfast, "Engine", CpuEngine)
    monkeypatch.setattr(bl.bk, "_qwen3_06b_dir", tiny_qwen3_checkpoint)
    out = tmp_path / "layouts.json"
    assert bl.main(["--batches", "2", "--reps", "1", "--one-graph", "kernels", "--own-copies", "--projections", "64",
                    "--pdl", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["configs"]) == {"kernels", "cascade", "kernels/own-copies", "kernels/projections", "kernels/pdl",
                                   "kernels/pdl+projections", "kernels/1graph"}
    for name, r in row["configs"].items():          # fp32: every variant gives the first one's tokens
        assert r["errors"] == 0 and (name == "kernels" or r["same_rows"] == 2), name
