"""PrefixCache: longest-common-prefix lookup, cropping, redundancy, LRU capacity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.prefix_cache import PrefixCache, common_prefix_length


def kv_for(ids) -> torch.Tensor:
    """A recognisable kv_L2HTD (2 layers, 1 head, dim 3) whose entries hold the token ids."""
    ids_T = torch.tensor(list(ids), dtype=torch.float32)
    return ids_T[None, None, None, :, None].expand(2, 2, 1, len(ids), 3).clone()


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_common_prefix_length_matches_a_plain_loop(a, b):
    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert common_prefix_length(np.array(a), np.array(b)) == expected


def test_lookup_returns_the_longest_shared_prefix_cropped():
    cache = PrefixCache(capacity_tokens=100)
    cache.insert([1, 2, 3, 4, 5], kv_for([1, 2, 3, 4, 5]))
    cache.insert([1, 2, 9, 9], kv_for([1, 2, 9, 9]))
    length, kv = cache.longest_prefix(ids(1, 2, 3, 4, 7, 7), max_length=10)
    assert length == 4
    assert torch.equal(kv, kv_for([1, 2, 3, 4]))
    length, kv = cache.longest_prefix(ids(1, 2, 9, 9, 9), max_length=3)
    assert length == 3
    assert torch.equal(kv, kv_for([1, 2, 9]))
    assert cache.longest_prefix(ids(5, 1), max_length=10) == (0, None)


def test_an_entry_that_is_a_prefix_of_a_newer_one_is_dropped():
    cache = PrefixCache(capacity_tokens=100)
    cache.insert([1, 2, 3], kv_for([1, 2, 3]))
    cache.insert([1, 2, 3, 4, 5], kv_for([1, 2, 3, 4, 5]))
    assert len(cache) == 1 and cache.tokens == 5
    cache.insert([1, 2], kv_for([1, 2]))
    assert len(cache) == 1 and cache.tokens == 5
    assert cache.longest_prefix(ids(1, 2, 3, 4, 5, 6), max_length=10)[0] == 5


def test_least_recently_used_entries_leave_first_when_full():
    cache = PrefixCache(capacity_tokens=10)
    cache.insert([1] * 6, kv_for([1] * 6))
    cache.insert([2] * 4, kv_for([2] * 4))
    cache.longest_prefix(ids(1, 1, 1), max_length=3)
    cache.insert([3] * 3, kv_for([3] * 3))
    assert cache.tokens == 9
    assert cache.longest_prefix(ids(2, 2), max_length=2)[0] == 0
    assert cache.longest_prefix(ids(1, 1), max_length=2)[0] == 2
    cache.insert([4] * 11, kv_for([4] * 11))
    assert cache.tokens == 9
    cache.clear()
    assert len(cache) == 0 and cache.tokens == 0


def test_mismatched_keys_values_are_refused():
    with pytest.raises(ValueError, match="same sequence"):
        PrefixCache(10).insert([1, 2, 3], kv_for([1, 2]))
    with pytest.raises(ValueError, match="capacity_tokens"):
        PrefixCache(-1)
