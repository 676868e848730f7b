"""`bench/bench_kernels.py`'s engine benchmark, dry-run on the CPU.

The engine benchmark only runs on a lent GPU, minutes of which are scarce: a typo in it
would waste a device session. Here it runs end to end on a tiny Qwen3 checkpoint with the
CUDA-only calls stubbed (synchronize, device name, do_bench timing, graph capture): every
engine configuration generates, the token comparisons and step rows come out, and nothing
raises. Timings are meaningless here and not checked.
"""
from __future__ import annotations

import pytest
import torch

from bench_scripts import bench_module, tiny_qwen3_checkpoint
from test_engine_support import torch_threads

pytest.importorskip("triton")


def test_engine_benchmark_dry_run(monkeypatch, capsys):
    import qpfast
    from qpfast.engine import Engine
    from qpfast.engine.model_runner import NativeRunner
    bk = bench_module("bench_kernels")

    class CpuEngine(Engine):            # the benchmark asks for CUDA + bf16
        def __init__(self, model, device=None, dtype=None, **kw):
            super().__init__(model, device="cpu", dtype="float32", cuda_graphs=True, **kw)

    enable = NativeRunner.enable_graphs
    monkeypatch.setattr(NativeRunner, "enable_graphs", lambda self, capture=True: enable(self, capture=False))
    monkeypatch.setattr(qpfast, "Engine", CpuEngine)
    monkeypatch.setattr(bk, "_qwen3_06b_dir", tiny_qwen3_checkpoint)
    monkeypatch.setattr(bk, "_xgrammar_baseline", lambda eng, queries: {"skipped": "dry run"})
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H200")
    monkeypatch.setattr(bk.triton.testing, "do_bench", lambda fn, *a, **k: (fn(), 0.0)[1])
    with torch_threads(2):
        out = bk.engine_benchmark(batch=6, repeats=1)
    configs = out["configs"]
    assert set(configs) == {"graphs", "graphs_host_picks", "graphs_1tok", "eager", "cascade"}
    for name, cfg in configs.items():
        assert "error" not in cfg and cfg["errors"] == 0, (name, cfg)
    assert configs["graphs"]["stats"]["graph_pick_steps"] > 0
    assert out["warmup"]["graphs"] > 0 and out["warmup"]["cache_bytes"] > 0, out["warmup"]
    assert configs["graphs_host_picks"]["stats"]["graph_pick_steps"] == 0
    assert configs["graphs_1tok"]["forward_passes"] > configs["graphs"]["forward_passes"]
    # fp32 on the CPU: every configuration gives the same tokens
    assert out["same_tokens_graphs_vs_eager"] and out["same_rows_graphs_vs_1tok"] == 6
    assert out["cascade_same_rows_vs_graphs"] == 6
    for key in ("step_ms", "cascade_step_ms"):
        assert isinstance(out[key], list) and len(out[key]) == 4, out[key]
        assert all("graph_pick_ms" in row and row["pieces"] == 2 and "one_graph_pick_ms" in row for row in out[key])
        for name in ("pdl", "projections", "pdl_projections"):
            assert all(f"{name}_pick_ms" in row and f"{name}_ms" in row for row in out[key]), name
    sp = out["speculation"]                                  # drafts on graph steps, default model
    assert "error" not in sp and sp["spec4"]["errors"] == 0, sp
    assert sp["spec4"]["stats"]["accepted_draft_tokens"] > 0 and sp["same_rows"] == 6
    assert sp["spec4"]["stats"]["decode_forward_passes"] < sp["spec0"]["stats"]["decode_forward_passes"]
    assert "speedup" not in capsys.readouterr().out          # no baseline in a dry run
