"""Token picking under the matchers' bitmasks: sparse (gathered lm_head rows) or dense.

`split_rows` reads the bitmask rows (int32, bit set = allowed) and sorts each row into
- "sparse": at most `threshold` allowed ids; their ids are returned padded into a
  `[rows, K]` array, so logits are computed only for them (K dot products instead of V);
- "dense": everything else; full logits, then `qpfast.kernels.masked_argmax/masked_sample`.

Greedy picks are identical on both paths: the same allowed set, the same scores, ties
broken towards the lowest token id (the ids of a sparse row are ascending).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import kernels
from ..matcher import mask_rows


#: the largest allowed set scored sparsely whatever `threshold` asks (the ids buffer is
#: [rows, threshold]; gathering more lm_head rows than this never beats the full product)
SPARSE_MAX = 4096


def split_rows(mask: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classifies the rows of `mask` ([n, W] int32).

    Returns (sparse_rows, sparse_ids [len(sparse_rows), K] int64 padded with -1,
    sparse_counts, dense_rows): a row allowing 1..threshold tokens (at most `SPARSE_MAX`)
    is sparse, any other (more, or none) dense. With threshold <= 0 every row is dense.
    """
    n = mask.shape[0]
    threshold = min(int(threshold), SPARSE_MAX)
    if threshold <= 0 or n == 0:
        return (np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty(0, np.int64),
                np.arange(n, dtype=np.int64))
    counts, ids = mask_rows(mask, threshold)
    ok = (counts >= 1) & (counts <= threshold)
    sparse, dense = np.flatnonzero(ok), np.flatnonzero(~ok)
    if sparse.size == 0:
        return np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty(0, np.int64), dense
    k = int(counts[sparse].max())
    return sparse, ids[sparse, :k], counts[sparse], dense


def allowed_at(bitmask: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether id `ids[k]` is allowed in bitmask row `rows[k]` (bool array like `ids`)."""
    word = bitmask[rows, ids >> 5].view(np.uint32)
    return ((word >> (ids & 31).astype(np.uint32)) & 1).astype(bool)


def pick_sparse(logits: torch.Tensor, ids: torch.Tensor, temperature: float, top_p: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """Picks from `[rows, K]` logits over candidate `ids` (padding -1); returns token ids."""
    valid = ids >= 0
    keys = logits.float().masked_fill(~valid, float("-inf"))
    if temperature > 0.0:
        scaled = keys / temperature
        if top_p < 1.0:
            scaled = scaled.masked_fill(~kernels.reference.top_p_keep(scaled, top_p), float("-inf"))
        probs = torch.softmax(scaled, dim=1)
        race = torch.empty_like(probs).exponential_(generator=generator)
        keys = torch.where(probs > 0, probs / race, float("-inf"))
    best = keys.argmax(dim=1)
    # a row whose allowed logits are all -inf: its lowest allowed id (as masked_argmax)
    best = torch.where(keys.gather(1, best[:, None])[:, 0] > float("-inf"), best, torch.zeros_like(best))
    return ids.gather(1, best[:, None])[:, 0]


def pick_dense(logits: torch.Tensor, bitmask: torch.Tensor, temperature: float, top_p: float,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    if temperature > 0.0:
        return kernels.masked_sample(logits, bitmask, temperature, top_p, generator)
    return kernels.masked_argmax(logits, bitmask)
