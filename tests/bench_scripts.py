"""The scripts of `bench/` (not part of the package), loaded by path for the tests that check them."""
from __future__ import annotations

import functools
import importlib.util
import pathlib
from types import ModuleType

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "bench"


@functools.lru_cache(maxsize=None)
def bench_module(name: str) -> ModuleType:
    """`bench/<name>.py` as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
