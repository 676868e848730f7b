"""`bench/bench_projections.py` (GPU: kernels.linear against torch's GEMMs), run on the CPU in
Triton's interpreter (fp16: it has no bf16) with a stand-in timer, so that a device session
cannot fail on it: every variant is checked against the reference and gets a time, the
table prints. Timings are not checked."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

CODE = """
import sys, torch
sys.path[:0] = ["bench", "tests"]
from bench_scripts import bench_module
m = bench_module("bench_projections")
sizes = []
def timer(make, nbytes):
    make(0)(); make(1)()
    sizes.append(nbytes)
    return 0.001 * len(sizes)
row = m._measure("o", 1, 132, device="cpu", cold_timer=timer, dt=torch.float16)
m.print_projections([row])
assert row["rel_err"] < 2e-3 and row["torch_rel_err"] < 2e-3, row
assert row["plan"] == "16x64x128/s8/st4/w4", row["plan"]
assert all(isinstance(v, float) for v in row["ms_by_variant"].values()), row["ms_by_variant"]
assert len(sizes) == 3 + len(row["ms_by_variant"]) and set(sizes) == {row["bytes"]}
assert row["bytes"] == 2 * (1024 * 2048 + 2048 + 1024) and row["x_torch"] == 0.5 and row["pdl_ms"] == 0.003
print("ok")
"""


def test_projection_rows_in_the_interpreter(request):
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", CODE], cwd=request.config.rootpath, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert res.stdout.strip().endswith("ok")
    assert "decode projections" in res.stdout
