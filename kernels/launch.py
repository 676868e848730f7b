"""How the Triton kernels are launched: programmatic dependent launch (PDL) on or off.

On Hopper and later GPUs a kernel launched with PDL may be scheduled before the kernel
ahead of it in the stream has finished: its programs become resident and wait (PTX
``griddepcontrol.wait``) until that kernel's writes are visible, which hides most of the
launch gap between the short kernels of a decode step. Every qpfast kernel that supports
it waits before its first memory access and then lets the next kernel launch (see
:func:`qpfast.kernels.common.grid_dependency`), so stream order holds for every byte.

The setting is per thread and off by default; the engine turns it on around the capture
of its decode-step CUDA graphs (``DecodeGraphs.pdl``), which keep it. This module imports
no triton, so the engine can use it on machines without one.
"""
from __future__ import annotations

import contextlib
import threading

_state = threading.local()


@contextlib.contextmanager
def programmatic_launch(enabled: bool = True):
    """Within this block (this thread), the kernels that support it are launched with
    programmatic dependent launch where the GPU has it (compute capability 9.0+)."""
    before = getattr(_state, "pdl", False)
    _state.pdl = bool(enabled)
    try:
        yield
    finally:
        _state.pdl = before


def programmatic_launch_on() -> bool:
    """Whether this thread is inside ``programmatic_launch(True)``."""
    return getattr(_state, "pdl", False)
