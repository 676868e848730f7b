#!/usr/bin/env bash
# Builds qpfast._C with AddressSanitizer + UBSan and runs the C++-facing tests against it.
# Usage: bash .ci/asan.sh  (inside an environment where qpfast's test deps are installed)
set -euo pipefail
cd "$(dirname "$0")/.."
libasan=$(g++ -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then echo "asan: libasan not found; skipping"; exit 0; fi
build=build/asan
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQPFAST_SANITIZE=ON \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" > /dev/null
cmake --build "$build" -j 2 > /dev/null
pkg=$build/site/qpfast
rm -rf "$build/site" && mkdir -p "$pkg"
cp -r python/qpfast/. "$pkg/" && rm -f "$pkg"/_C*.so
cp -r kernels "$pkg/kernels"
cp "$build"/_C*.so "$pkg/"
# -S: no .pth processing, so an editable install's import hook cannot shadow the ASan build;
# site-packages come after it on PYTHONPATH instead.
export PYTHONPATH="$PWD/$build/site:$(python -c 'import site; print(":".join(site.getsitepackages()))')"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export QPFAST_ASAN=1
export LD_PRELOAD="$libasan $(g++ -print-file-name=libubsan.so)"
python -S -c "import qpfast, sys; assert qpfast.__file__.startswith('$PWD/$build'), qpfast.__file__"
python -S -m pytest -q -p no:cacheprovider \
  tests/test_parse_strict.py tests/test_parse_lenient.py tests/test_matcher.py \
  -k "not 100k and (walks or example or bad_arguments or hostile or budget or rollback or fill_bitmasks or mask_rows or advance_rows or strict or lenient)"
