# Sourced by the device-call scripts (gpu_run.sh, gpu_layouts.sh): installs the carried
# wheels (.whl: the qpfast cp312 wheel + xgrammar and its deps) into /tmp/site, points the
# tests at the carried Qwen tokenizer (.devcache) and sets OUT (the folder that comes back).
# Both folders are made here, on the CPU machine, by bench/gpu_prepare.sh.
set -u
export PYTHONUNBUFFERED=1 QPFAST_TEST_CACHE=$PWD/.devcache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed (made by bench/gpu_prepare.sh?)"; exit 1; }
export PYTHONPATH=/tmp/site
