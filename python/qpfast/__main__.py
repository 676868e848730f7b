"""``python -m qpfast``: the same as the ``qpfast`` command (`qpfast.cli`)."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
