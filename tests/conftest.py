"""Shared pytest setup: make `tests/` importable (`from strategies import ...`)."""
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a whole module (`pytestmark =
    pytest.mark.usefixtures("one_torch_thread")`): tiny matmuls only lose to thread hand-offs."""
    from test_engine_support import torch_threads
    with torch_threads(1):
        yield


def _patch_language_once_per_launch() -> None:
    """Under TRITON_INTERPRET=1: Triton's interpreter patches the `triton.language` modules
    a kernel's globals name for a launch, for the whole grid, and then again on every call
    of a `@triton.jit` function from inside the kernel (`InterpretedFunction.__call__`),
    ~0.4 ms each time. Our kernels call helpers inside their key loops
    (`online_softmax_step`, `attend_key_range`, ...), so the interpreter tests spent ~30%
    of their time patching modules the launch had already patched. Such a repeated patch
    is skipped while the launch's is in place; a call whose globals name a module the
    launch did not patch (`triton.language.core`, from Triton's own `tl.zeros`) is patched
    as before. The kernels run the same interpreted code. Where Triton's interpreter is
    laid out differently, nothing is skipped."""
    import inspect
    try:
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except ImportError:
        return
    patch = getattr(interp, "_patch_lang", None)
    if patch is None or getattr(patch, "_qpfast_once", False):
        return
    done: set[int] = set()                       # the modules patched during the launch in progress

    class _Kept:                                 # what a skipped patch returns
        @staticmethod
        def restore() -> None:
            pass

    def langs(fn) -> set[int]:
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_once(fn):
        mods = langs(fn)
        if done and mods <= done:
            return _Kept()
        launch = not done
        scope = patch(fn)
        done.update(mods)
        if launch:                               # the launch's scope: its end ends the skipping
            restore = scope.restore

            def restore_and_end() -> None:
                done.clear()
                restore()
            scope.restore = restore_and_end
        return scope

    patch_once._qpfast_once = True
    interp._patch_lang = patch_once


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_language_once_per_launch()
