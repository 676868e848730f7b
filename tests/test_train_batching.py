"""Length-bucketed batches in random order (`qpfast.train.batching.LengthBucketSampler`)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from qpfast.train.batching import LengthBucketSampler


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=400), st.integers(1, 9), st.integers(1, 6), st.integers(0, 3))
def test_every_index_once_in_full_batches_of_similar_length(lengths, batch_size, bucket_batches, seed):
    s = LengthBucketSampler(lengths, batch_size, bucket_batches=bucket_batches, seed=seed)
    flat = list(s)
    assert sorted(flat) == list(range(len(lengths))) and len(s) == len(lengths)
    batches = [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    assert batches == s.batches(0)                       # a DataLoader's cuts are the sampler's batches
    assert all(len(b) == batch_size for b in batches[:-1])
    # one bucket holding everything: the batches are consecutive runs of the sorted lengths
    one = LengthBucketSampler(lengths, batch_size, bucket_batches=max(1, -(-len(lengths) // batch_size)), seed=seed)
    spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in one.batches(0)]
    assert all(ha <= lb or hb <= la for k, (la, ha) in enumerate(spans) for lb, hb in spans[k + 1:])


def test_batches_are_length_sorted_buckets_in_shuffled_order():
    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(3200)]
    s = LengthBucketSampler(lengths, 32, bucket_batches=50, seed=1)
    batches = s.batches(0)
    assert len(batches) == 100 and all(len(b) == 32 for b in batches)
    padded = sum(32 * max(lengths[i] for i in b) for b in batches) / sum(lengths)
    assert padded < 1.1                                   # random batches of 32 here: ~1.8
    maxima = [max(lengths[i] for i in b) for b in batches]
    # shuffled: consecutive steps do not walk down the lengths (an unshuffled megabatch would)
    descents = sum(a >= b for a, b in zip(maxima, maxima[1:]))
    assert 30 < descents < 70
    assert s.batches(0) == batches and s.batches(1) != batches
    assert LengthBucketSampler(lengths, 32, seed=2).batches(0) != batches
    assert list(s) == [i for b in batches for i in b] and list(s) == [i for b in s.batches(1) for i in b]


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        LengthBucketSampler([1, 2], 0)
    with pytest.raises(ValueError, match="bucket_batches"):
        LengthBucketSampler([1, 2], 2, bucket_batches=0)
