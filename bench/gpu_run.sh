#!/usr/bin/env bash
# One device session (see bench/RESULTS.md): install the prepared wheels, run the CUDA
# correctness tests, then the kernel + engine benchmark. Everything lands in $OUT.
# Env: TEST_K / TEST_ARGS (e.g. "-n 8": pytest-xdist is on the image) / TEST_TIMEOUT (tests), BENCH_ARGS / BENCH_TIMEOUT (benchmark), PROFILE=1 (engine profile).
#   carry: .whl (qpfast cp312 wheel + xgrammar and its deps), .devcache (Qwen tokenizer dir),
#   both made by `bash bench/gpu_prepare.sh` here first
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers, qpfast; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'qpfast', qpfast.__file__)" | tee -a "$OUT/gpu.txt"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider ${TEST_ARGS:-} ${TEST_K:+-k "$TEST_K"} tests/test_kernels_cuda.py tests/test_engine_cuda.py \
  2>&1 | tee "$OUT/tests.log" | tail -25
timeout ${BENCH_TIMEOUT:-330} python3 bench/bench_kernels.py --out "$OUT/kernels.json" ${PROFILE:+--profile "$OUT/profile.txt"} ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" \
  | grep -v "^\s*$" | tail -150
