"""GrowingLayer behaves like transformers' concatenating DynamicLayer; batched_cache layout."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from at2po.rollout.kv_cache import ROOM_STEP, GrowingLayer, batched_cache, row_kv


def chunk(batch: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 2, tokens, 4, generator=generator) for _ in range(2))


def test_growing_layer_matches_concatenation_across_growth_and_row_selection():
    start_keys, start_values = chunk(3, 5, seed=0)
    growing = GrowingLayer(
        torch.cat([start_keys, torch.zeros(3, 2, 2, 4)], dim=2),
        torch.cat([start_values, torch.zeros(3, 2, 2, 4)], dim=2),
        length=5,
    )
    reference = DynamicLayer()
    reference.update(start_keys, start_values)
    sizes = [1, 1, 1, ROOM_STEP + 40, 1]
    for step, size in enumerate(sizes):
        keys, values = chunk(growing.keys.shape[0], size, seed=step + 1)
        got = growing.update(keys, values)
        want = reference.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert growing.get_seq_length() == reference.get_seq_length()
        if step == 1:
            keep = torch.tensor([2, 0])
            growing.batch_select_indices(keep)
            reference.batch_select_indices(keep)
    assert growing.key_buffer_BHCD.shape[2] >= 5 + sum(sizes)


def test_batched_cache_right_aligns_reused_prefixes_and_row_kv_reads_them_back():
    kv_a = torch.randn(3, 2, 2, 4, 6)  # 3 layers, keys/values, 2 heads, 4 tokens, dim 6
    kv_b = torch.randn(3, 2, 2, 2, 6)
    reused = [(4, kv_a), (0, None), (2, kv_b)]
    cache = batched_cache(
        reused, layers=3, kv_heads=2, head_dim=6, room=5, dtype=torch.float32, device="cpu"
    )
    assert cache.get_seq_length() == 4
    assert cache.layers[0].key_buffer_BHCD.shape == (3, 2, 9, 6)
    mask_BS = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]])
    assert torch.equal(row_kv(cache, mask_BS, 0), kv_a)
    assert torch.equal(row_kv(cache, mask_BS, 2), kv_b)
    assert torch.count_nonzero(cache.layers[1].keys[1]) == 0
    assert torch.count_nonzero(cache.layers[1].keys[2, :, :2]) == 0
