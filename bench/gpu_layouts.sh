#!/usr/bin/env bash
# A device call for the engine's A/Bs end to end: with ADMISSION_ARGS, first
# bench_admission.py on the GPU (batches that refill: admission order, chunked prefill);
# then the cache layouts and step variants (bench_engine_layouts.py); then the engine's
# CUDA tests. carry: .whl (the qpfast wheel + xgrammar and its deps), .devcache (the Qwen
# tokenizer), both made by `bash bench/gpu_prepare.sh` here first. Env: ADMISSION_ARGS, ADMISSION_TIMEOUT, LAYOUT_ARGS, LAYOUT_TIMEOUT, TEST_ARGS, TEST_TIMEOUT.
source "$(dirname "$0")/gpu_setup.sh"
if [ -n "${ADMISSION_ARGS:-}" ]; then
  timeout ${ADMISSION_TIMEOUT:-120} python3 bench/bench_admission.py --device cuda --json "$OUT/admission.json" \
    ${ADMISSION_ARGS} 2>&1 | grep -v "it/s\]" | tee "$OUT/admission.log"
fi
timeout ${LAYOUT_TIMEOUT:-240} python3 bench/bench_engine_layouts.py --out "$OUT/layouts.json" ${LAYOUT_ARGS:-} 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/layouts.log"
timeout ${TEST_TIMEOUT:-90} python3 -m pytest -q -p no:cacheprovider ${TEST_ARGS:-} tests/test_engine_cuda.py 2>&1 \
  | tee "$OUT/tests.log" | tail -15
