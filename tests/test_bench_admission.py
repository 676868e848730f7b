"""`bench/bench_admission.py` on a tiny random checkpoint: both admission orders and the
eager-prefill variant run, give each query the same tokens, and the JSON holds a row per
configuration. Timings are not checked."""
from __future__ import annotations

import json

import pytest

from bench_scripts import bench_module, tiny_qwen3_checkpoint


@pytest.mark.usefixtures("one_torch_thread")
def test_admission_benchmark_runs_both_orders(tmp_path, capsys):
    model = tiny_qwen3_checkpoint(str(tmp_path / "tiny"))
    out = tmp_path / "adm.json"
    rc = bench_module("bench_admission").main(["--model", model, "--queries", "12", "--batch-size", "4",
                                               "--graph-step", "--prefill-ab", "--threads", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["same_tokens"] is True
    assert [r["config"] for r in res["rows"]] == ["in_order", "longest_first", "longest_first/eager_prefill"]
    a, b, c = res["rows"]
    assert a["output_tokens"] == b["output_tokens"] == c["output_tokens"] > 0
    assert all(r["decode_passes"] + r["prefill_passes"] >= r["floor_passes"] for r in res["rows"])
    assert all(r["same_rows"] == 12 and r["graph_positions"] >= r["row_passes"] for r in res["rows"])
    assert b["prefill_passes"] == 1 < c["prefill_passes"]
    assert "the same tokens in every configuration: True" in capsys.readouterr().out
