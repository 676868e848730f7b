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
