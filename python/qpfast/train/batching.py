"""Length-bucketed batches in random order, for SFT on CPU.

Right-padding a batch of 32 random examples to its longest row costs ~1.6x the real tokens
on the default recipe's stream; batches of examples of about the same length cost ~1.02x.
transformers' `LengthGroupedSampler` forms such batches but yields each megabatch longest
first, so ~50 consecutive optimizer steps walk from the longest examples to the shortest, and
the model learns markedly slower per step (session 9, bench/RESULTS.md). Here the batches are
formed the same way (sort a random bucket of `bucket_batches` batches by length, cut it into
batches) and then shuffled, so consecutive steps are independent draws again.

Even so, a batch of rows of one length (mostly one kind of query) teaches less per step than a
random batch: session 9's stage 1 with these batches took 47 min instead of ~72 but ended at
0.431 overall on the test split against 0.504, so the default recipe keeps random batches.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

__all__ = ["LengthBucketSampler"]


class LengthBucketSampler(torch.utils.data.Sampler):
    """Dataset indices, `batch_size` at a time, in batches of similar length in random order.

    `lengths`: one length per example. Every batch is full except possibly the last one
    yielded, so a DataLoader cutting the stream every `batch_size` indices gets exactly these
    batches. Deterministic per `seed`; each new iteration (epoch) draws a new order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, bucket_batches: int = 50, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches: must be >= 1, got {bucket_batches}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.bucket_batches = int(bucket_batches)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of `epoch`, in the order they are yielded."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.bucket_batches
        full, partial = [], []
        for i in range(0, len(perm), size):
            bucket = sorted(perm[i:i + size], key=lambda j: -self.lengths[j])
            for k in range(0, len(bucket), self.batch_size):
                b = bucket[k:k + self.batch_size]
                (full if len(b) == self.batch_size else partial).append(b)
        order = torch.randperm(len(full), generator=g).tolist()
        return [full[i] for i in order] + partial

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for b in self.batches(epoch):
            yield from b
