"""The batched key/value cache the engine decodes with: buffers with room to grow.

transformers' ``DynamicLayer`` concatenates every new token's keys/values onto the old ones, which
copies the whole cache at every step; with contexts of a thousand tokens that copy costs several
times the forward itself on CPU. :class:`GrowingLayer` keeps keys/values in a buffer
``[batch, kv_heads, capacity, head_dim]`` and writes new tokens into its spare room; when the room
runs out it moves to a buffer ``max(room_step, length / 4)`` tokens larger, so the copying per
token is constant. Attention reads the filled part ``buffer[:, :, :length]`` as a view.

Rows follow the engine's slot layout (see :mod:`at2po.rollout.hf_engine`): a row's cached
prefix sits right-aligned in the first ``width`` slots; padding slots hold zeros and are masked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM_STEP = 256
"""Smallest growth of a buffer, in tokens."""


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into preallocated room instead of concatenating.

    ``keys``/``values`` are always views of the filled part of the buffers, so every reader of a
    ``DynamicLayer`` sees the usual tensors. The engine uses ``update`` (through the model) and
    ``batch_select_indices``; both keep the buffers and the views in step.
    """

    def __init__(self, key_buffer_BHCD: torch.Tensor, value_buffer_BHCD: torch.Tensor, length: int):
        super().__init__()
        self.key_buffer_BHCD, self.value_buffer_BHCD = key_buffer_BHCD, value_buffer_BHCD
        self.dtype, self.device = key_buffer_BHCD.dtype, key_buffer_BHCD.device
        self.is_initialized = True
        self._expose(length)

    def _expose(self, length: int) -> None:
        self.keys = self.key_buffer_BHCD[:, :, :length]
        self.values = self.value_buffer_BHCD[:, :, :length]

    def _grow(self, needed: int) -> None:
        capacity = needed + max(ROOM_STEP, needed // 4)
        length = self.keys.shape[-2]
        for name in ("key_buffer_BHCD", "value_buffer_BHCD"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, :length] = old[:, :, :length]
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.key_buffer_BHCD.shape[-2]:
            self._grow(end)
        self.key_buffer_BHCD[:, :, start:end] = key_states
        self.value_buffer_BHCD[:, :, start:end] = value_states
        self._expose(end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.keys.shape[-2]
        self.key_buffer_BHCD = self.key_buffer_BHCD[indices]
        self.value_buffer_BHCD = self.value_buffer_BHCD[indices]
        self._expose(length)


def batched_cache(
    reused: Sequence[tuple[int, torch.Tensor | None]],
    *,
    layers: int,
    kv_heads: int,
    head_dim: int,
    room: int,
    dtype: torch.dtype,
    device: torch.device,
) -> DynamicCache:
    """A cache holding each row's reused prefix right-aligned in the first ``max(n)`` slots.

    Args:
        reused: per row, the number of reused tokens and their ``kv_L2HTD`` (``None`` when 0).
        room: free slots to allocate after them (more are added when needed).
    """
    width = max(n for n, _ in reused)
    shape = (len(reused), kv_heads, width + room, head_dim)
    buffers = [
        tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in ("keys", "values"))
        for _ in range(layers)
    ]
    for row, (n, kv_L2HTD) in enumerate(reused):
        if n:
            for (keys, values), kv_2HTD in zip(buffers, kv_L2HTD, strict=True):
                keys[row, :, width - n : width] = kv_2HTD[0]
                values[row, :, width - n : width] = kv_2HTD[1]
    cache = DynamicCache()
    cache.layers = [GrowingLayer(keys, values, width) for keys, values in buffers]
    return cache


def row_kv(cache: DynamicCache, mask_BS: torch.Tensor, row: int) -> torch.Tensor:
    """Keys/values of one row's real (unmasked) slots, as a new tensor ``kv_L2HTD``."""
    slots = mask_BS[row].nonzero().squeeze(1)
    return torch.stack(
        [
            torch.stack((layer.keys[row][:, slots], layer.values[row][:, slots]))
            for layer in cache.layers
        ]
    )
